"""``LitInverse``: trains an :class:`InverseModule` under a Lightning ``Trainer``."""

import warnings
from contextlib import ExitStack
from typing import Any, Dict, Iterable, List, Literal, Optional, Union, cast

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.core.optimizer import LightningOptimizer
from torch import Tensor

from gdinv_modules.core.deprecation import warn_renamed
from gdinv_modules.core.errors import InvalidOptionError
from gdinv_modules.core.functional import Formulation, default_tol
from gdinv_modules.core.report import ConvergenceReport
from gdinv_modules.core.validation import check_positive_float, check_positive_int
from gdinv_modules.engine.precision import cuda_matmul_precision
from gdinv_modules.engine.sharding import ShardMode
from gdinv_modules.engine.stepper import HeavyBallStepper
from gdinv_modules.nn.inverse_module import Init, InverseModule
from gdinv_modules.nn.metric import IdentityMSE
from gdinv_modules.training.callbacks import ConvergenceMonitor, StepLogger
from gdinv_modules.training.compat import count_optimizer_steps
from gdinv_modules.training.progress import StepProgressBar
from gdinv_modules.training.ticks import window_ticks

__all__ = ["LitInverse"]


class LitInverse(pl.LightningModule):
    r"""Trains X to the inverse of M with ``torch.optim.SGD`` and momentum, under a ``Trainer``.

    The steps are :class:`HeavyBallStepper`'s (heavy ball on the closed-form gradient of
    :math:`L(X) = \lVert E - I\rVert_F^2 / k^2`); each ``training_step`` runs a window of
    ``steps_per_window`` of them with no host sync, so ``trainer.global_step`` and
    ``max_steps`` count optimizer steps. After each window it logs ``loss`` (the loss averaged
    over the batch), ``mse`` (the :class:`IdentityMSE` metric of E) and ``residual`` (the
    largest relative residual in the batch), which the loggers get at the optimizer step
    (:class:`StepLogger`); a :class:`ConvergenceMonitor` stops the run at ``tol`` and refuses
    divergence, and the progress bar counts optimizer steps (:class:`StepProgressBar`).
    :attr:`losses` holds the loss of every step, :math:`L(X_t)` before step :math:`t`'s update,
    kept on the device and in checkpoints.

    Args:
        matrix: M, shape ``(..., n, n)`` or ``(..., m, n)``. Leave it out to take M from the
            ``datamodule``'s ``matrix`` (:class:`MatrixDataModule`) or from a checkpoint.
        lr: the learning rate :math:`\eta > 0`, or ``"auto"`` (:class:`HeavyBallTuner`).
        momentum: the heavy-ball momentum :math:`0 \le \beta < 1`, or ``"auto"``.
        formulation: ``"left"`` (:math:`XM`), ``"right"`` (:math:`MX`) or ``"symmetric"``.
        init: ``"random"`` (the post's first guess) or ``"zeros"``.
        seed: the seed of the random first guess.
        steps_per_window: optimizer steps per ``training_step``.
        loss_every: keep the loss of every ``loss_every``-th step only (:class:`LossHistory`).
        tol: stop once every matrix's relative residual is at most ``tol``; ``"auto"``: the
            dtype's default (1e-5 for float32, 1e-10 for float64, as :func:`invert`); ``None``
            runs to ``max_steps`` (as the post does), and reports judge convergence by the
            dtype's default.
        ridge: the Tikhonov weight :math:`\lambda \ge 0` of the loss; the residual checked
            against ``tol`` becomes the bound on the relative distance to its minimiser.
        check_rank: one SVD of M at the start; a rank-deficient M gets a
            :class:`SingularMatrixWarning`, and its residual is measured against the projector.
        shard: how a distributed run splits the work: ``"batch"`` (each rank a slice of the
            batch; the columns where there are fewer matrices than ranks), ``"columns"`` or
            ``"none"`` (:class:`Sharding`).
        tf32: let CUDA float32 matrix products run in TF32 during ``fit`` (faster, but about
            1e-3 relative error per product). Off by default: full float32 whatever the global
            setting, which is restored after ``fit``.
        cuda_graph: on a CUDA device, replay each window from a CUDA graph (:class:`StepGraph`);
            Lightning's ``on_before_optimizer_step`` hooks do not run for replayed steps.
        steps_per_batch: deprecated name of ``steps_per_window``.

    Example:
        >>> m = torch.tensor([[2.0, 1.0], [0.0, 1.0]])
        >>> model = LitInverse(m)
        >>> trainer = pl.Trainer(max_steps=300, logger=False, enable_progress_bar=False,
        ...                      enable_checkpointing=False, enable_model_summary=False)
        >>> trainer.fit(model)
        >>> torch.allclose(model.inverse, torch.linalg.inv(m), atol=1e-5)
        True
    """

    def __init__(
        self,
        matrix: Optional[Tensor] = None,
        *,
        lr: Union[float, Literal["auto"]] = 0.9,
        momentum: Union[float, Literal["auto"]] = 0.9,
        formulation: Formulation = "left",
        init: Init = "random",
        seed: int = 314,
        steps_per_window: int = 100,
        loss_every: int = 1,
        tol: Union[float, Literal["auto"], None] = None,
        ridge: float = 0.0,
        check_rank: bool = True,
        shard: Union[ShardMode, Literal["auto"]] = "batch",
        tf32: bool = False,
        cuda_graph: bool = False,
        steps_per_batch: Optional[int] = None,
    ) -> None:
        super().__init__()
        if steps_per_batch is not None:
            warn_renamed("LitInverse(steps_per_batch=...)", "steps_per_window")
            steps_per_window = steps_per_batch
        if shard == "auto":
            warn_renamed("shard='auto'", "shard='batch', which it equals")
            shard = "batch"
        check_positive_int(steps_per_window, name="steps_per_window")
        if tol is not None and tol != "auto":
            check_positive_float(tol, name="tol")
        HeavyBallStepper.check_options(lr, momentum, ridge, loss_every, shard)
        self.save_hyperparameters(ignore=["matrix", "steps_per_batch"])
        self.automatic_optimization = False
        self.metric = IdentityMSE()
        self.inverse_module: Optional[InverseModule] = None
        self._stepper: Optional[HeavyBallStepper] = None
        self._fit_context = ExitStack()
        if matrix is not None:
            self._build(matrix)

    def _build(self, matrix: Tensor) -> None:
        """The one place the module and its stepper are built: from the matrix given here, the
        datamodule's (at ``setup``) or a checkpoint's (at ``on_load_checkpoint``)."""
        hparams = self.hparams
        self.inverse_module = InverseModule(
            matrix, formulation=hparams.formulation, init=hparams.init, seed=hparams.seed
        )
        self._stepper = HeavyBallStepper(
            self.inverse_module,
            **{key: hparams[key] for key in HeavyBallStepper.OPTIONS},
        )

    @property
    def module(self) -> InverseModule:
        """The trained :class:`InverseModule` (an error if there is no matrix yet)."""
        if self.inverse_module is None:
            raise InvalidOptionError(
                "LitInverse has no matrix: pass one, fit with a MatrixDataModule, "
                "or load a checkpoint"
            )
        return self.inverse_module

    @property
    def stepper(self) -> HeavyBallStepper:
        """The :class:`HeavyBallStepper` that takes the steps."""
        self.module  # noqa: B018  (raises, naming where to give M, if there is none)
        assert self._stepper is not None
        return self._stepper

    @property
    def matrix(self) -> Tensor:  # shape: (..., m, n)
        """M, the matrix being inverted."""
        return self.module.resolve_matrix()

    @property
    def inverse(self) -> Tensor:  # shape: (..., n, m)
        """X, the current approximate inverse, detached."""
        return self.module.inverse.detach()

    @property
    def losses(self) -> Tensor:  # shape: (kept, ...)
        """The loss of every optimizer step so far (of steps 0, k, 2k, ... with
        ``loss_every=k``), one column per matrix of the batch."""
        losses = self.stepper.history.losses
        if not len(losses):
            return losses.new_empty((0, *self.module.batch_shape)).to(self.inverse.dtype)
        return losses

    @property
    def loss_steps(self) -> Tensor:  # shape: (kept,)
        """The step of each row of :attr:`losses`."""
        return self.stepper.history.steps

    @property
    def tol(self) -> Optional[float]:
        """The tolerance the run stops at: ``tol``, the dtype's default for ``"auto"``, or
        ``None`` (no stop before ``max_steps``)."""
        if self.hparams.tol == "auto":
            return default_tol(self.module.inverse.dtype)
        return self.hparams.tol

    def report(self) -> ConvergenceReport:
        """The convergence report of the run so far (host syncs: call it at the end)."""
        return self.stepper.report(self.tol or default_tol(self.module.inverse.dtype))

    def forward(self, matrix: Optional[Tensor] = None) -> Tensor:  # shape: (..., k, k)
        """The product E (see :meth:`InverseModule.forward`)."""
        return self.module(matrix)

    def setup(self, stage: str) -> None:
        matrix = getattr(self.trainer.datamodule, "matrix", None)
        if matrix is None:
            self.module  # noqa: B018  (raises, naming where to give M, if there is none)
        elif self.inverse_module is None:
            self._build(matrix)
        elif not (
            matrix.shape == self.matrix.shape and torch.equal(matrix.to(self.matrix), self.matrix)
        ):
            raise InvalidOptionError(
                "LitInverse holds a matrix already and the datamodule serves another: give one"
            )
        if stage == "fit":  # last, so that an error above leaves the global setting alone
            self._fit_context.enter_context(cuda_matmul_precision(tf32=self.hparams.tf32))
            # Lightning warns when an epoch has fewer training_steps than log_every_n_steps;
            # StepLogger counts that interval in optimizer steps, so the warning does not apply.
            self._fit_context.enter_context(warnings.catch_warnings())
            warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")

    def teardown(self, stage: str) -> None:
        self._fit_context.close()
        if self._stepper is not None and self._stepper.step_graph is not None:
            self._stepper.step_graph.release()

    def train_dataloader(self) -> Iterable[int]:
        return window_ticks()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.stepper.optimizer

    def configure_callbacks(self) -> List[pl.Callback]:
        """The stop at ``tol``, the loggers' writes at optimizer steps (:class:`StepLogger`) and,
        in place of Lightning's default progress bar, one counting optimizer steps."""
        callbacks: List[pl.Callback] = [ConvergenceMonitor(), StepLogger()]
        if type(self.trainer.progress_bar_callback) is TQDMProgressBar:
            callbacks.append(StepProgressBar())
        return callbacks

    def on_train_start(self) -> None:
        # A value is synced over the ranks only where there are several.
        self.metric.dist_sync_on_step = self.trainer.world_size > 1
        self.stepper.start(world=self.trainer.world_size, rank=self.trainer.global_rank)

    def on_train_epoch_end(self) -> None:
        self.metric.reset()  # as Lightning does for a logged Metric object

    def training_step(self, batch: Any, batch_idx: int) -> None:
        stepper, steps = self.stepper, self.hparams.steps_per_window
        if self.trainer.max_steps >= 0:
            steps = min(steps, self.trainer.max_steps - self.trainer.global_step)
        optimizer = cast(LightningOptimizer, self.optimizers())
        stepper.run(steps, step=optimizer.step)
        if stepper.replayed:
            count_optimizer_steps(optimizer, steps)
        product = stepper.measure()
        assert stepper.loss is not None and stepper.residual is not None
        mse = self.metric(stepper.sharding.local_part(product))  # over every rank
        values = {"loss": stepper.loss.mean(), "residual": stepper.residual.max()}
        self.log_dict(values, on_step=True, on_epoch=False, prog_bar=True, logger=False)
        self.log("mse", mse, on_step=True, on_epoch=False, logger=False)
        if stepper.tuner is not None:
            group = stepper.optimizer.param_groups[0]
            tuned = {"lr": group["lr"], "momentum": group["momentum"]}
            self.log_dict(tuned, on_step=True, on_epoch=False, logger=False)

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        state = self.stepper.state_dict()
        del state["optimizer"]  # Lightning saves it under optimizer_states
        checkpoint.update(state)

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        if self.inverse_module is None:
            weights = checkpoint["state_dict"]
            self._build(weights["inverse_module.matrix"])
        self.stepper.load_state_dict({k: v for k, v in checkpoint.items() if k != "optimizer"})
