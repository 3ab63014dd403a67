"""``LitInverse``: trains an :class:`InverseModule` under a Lightning ``Trainer``."""

import atexit
import functools
import warnings
from contextlib import ExitStack, contextmanager
from typing import (
    Any,
    ClassVar,
    Dict,
    Iterable,
    Iterator,
    List,
    Literal,
    Mapping,
    NamedTuple,
    Optional,
    Union,
    cast,
)

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import RichProgressBar, TQDMProgressBar
from pytorch_lightning.core.optimizer import LightningOptimizer
from torch import Tensor

from gdinv_modules.core.errors import (
    ConvergenceWarning,
    InvalidOptionError,
    MatrixDtypeError,
    NotReadyError,
    warn_user,
)
from gdinv_modules.core.formulation import FormulationName
from gdinv_modules.core.functional import Tol, default_tol, identity_mse, resolve_tol
from gdinv_modules.core.report import ConvergenceReport
from gdinv_modules.core.validation import STEP_DTYPES, check_positive_int
from gdinv_modules.engine.options import StepOptions
from gdinv_modules.engine.policy import Outcome, Stop, StoppingPolicy, Window
from gdinv_modules.engine.sharding import ShardMode
from gdinv_modules.engine.stepper import HeavyBallStepper
from gdinv_modules.nn.inverse_module import Init, InverseModule
from gdinv_modules.nn.metric import IdentityMSE
from gdinv_modules.training.compat import checkpoint_step_intervals, count_optimizer_steps
from gdinv_modules.training.datamodule import window_ticks
from gdinv_modules.training.lit_callbacks import ConvergenceMonitor, StepLogger
from gdinv_modules.training.progress import StepProgressBar, StepRichProgressBar, as_step_bar

__all__ = ["LitInverse", "cuda_matmul_precision"]


@contextmanager
def cuda_matmul_precision(*, tf32: bool) -> Iterator[None]:
    """Set whether CUDA float32 matrix products may use TF32, and restore the setting after.

    Example:
        >>> with cuda_matmul_precision(tf32=False):
        ...     pass
    """
    matmul = torch.backends.cuda.matmul
    previous = matmul.fp32_precision
    matmul.fp32_precision = "tf32" if tf32 else "ieee"
    try:
        yield
    finally:
        matmul.fp32_precision = previous


class LitInverseMixin:
    """The hooks and methods of :class:`LitInverse`, for either Lightning package."""

    lightning_kit: ClassVar["LightningKit"]

    def __init__(
        self,
        matrix: Optional[Tensor] = None,
        *,
        lr: Union[float, Literal["auto"]] = 0.9,
        momentum: Union[float, Literal["auto"]] = 0.9,
        formulation: FormulationName = "left",
        init: Init = "random",
        seed: int = 314,
        steps_per_window: Window = 100,
        loss_every: int = 1,
        tol: Tol = None,
        refine: bool = False,
        ridge: float = 0.0,
        check_rank: Union[bool, Literal["auto"]] = True,
        shard: ShardMode = "batch",
        tf32: bool = False,
        cuda_graph: bool = False,
    ) -> None:
        super().__init__()
        if steps_per_window != "auto":
            check_positive_int(steps_per_window, name="steps_per_window ('auto', or a number)")
        resolve_tol(tol, torch.float64)  # checks the value
        self.options = StepOptions(lr, momentum, ridge, loss_every, check_rank, shard, cuda_graph)
        self.save_hyperparameters(ignore=["matrix"])
        self.automatic_optimization = False
        self.metric = IdentityMSE()
        self.inverse_module: Optional[InverseModule] = None
        self._stepper: Optional[HeavyBallStepper] = None
        self._policy: Optional[StoppingPolicy] = None
        self._save_every: List[int] = []  # the Trainer's every_n_train_steps
        self._stop: Optional[Stop] = None
        self.outcome: Optional[Outcome] = None  # how the last fit ended
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
        self._stepper = HeavyBallStepper(self.inverse_module, self.options)

    @property
    def module(self) -> InverseModule:
        """The trained :class:`InverseModule` (an error if there is no matrix yet)."""
        if self.inverse_module is None:
            raise NotReadyError(
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
        return resolve_tol(self.hparams.tol, self.module.inverse.dtype)

    def report(self) -> ConvergenceReport:
        """The convergence report of the run so far, with the refinement and the stop once a
        fit has ended (host syncs: call it at the end)."""
        outcome = self.outcome
        if outcome is not None and outcome.report.steps == self.stepper.steps:
            return outcome.report
        return self.stepper.report(self.tol or default_tol(self.module.inverse.dtype))

    def forward(self, matrix: Optional[Tensor] = None) -> Tensor:  # shape: (..., k, k)
        """The product E (see :meth:`InverseModule.forward`)."""
        return self.module(matrix)

    def setup(self, stage: str) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            _destroy_process_group_at_exit()  # the Trainer's strategy has set it up by now
        matrix = getattr(self.trainer.datamodule, "matrix", None)
        if matrix is None:
            pass  # M is ours already, or comes from ckpt_path (at on_load_checkpoint), or
            # configure_optimizers names where to give it
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
            # Lightning warns when an epoch has fewer training_steps than log_every_n_steps
            # (StepLogger counts that interval in optimizer steps), and that a checkpoint under
            # manual optimization holds the state after the steps (for LitInverse exactly the
            # state of global_step): neither applies.
            self._fit_context.enter_context(warnings.catch_warnings())
            warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
            warnings.filterwarnings("ignore", message=".*no pre-optimization state was saved.*")

    def on_fit_start(self) -> None:
        """Refuse what cannot give a right answer, before any step: a dtype the steps do not
        run in (``precision="bf16-true"`` or ``"16-true"``, ``.half()``), and Lightning's tools
        that assume a loss of batches (``lr_find``, ``StochasticWeightAveraging``)."""
        dtype = self.module.inverse.dtype
        if dtype not in STEP_DTYPES:
            raise MatrixDtypeError(
                f"LitInverse's X is {str(dtype).replace('torch.', '')} (a Trainer's precision "
                f"{self.trainer.precision!r}, or .half()/.bfloat16()): its rounding stops descent "
                "far from an inverse; the steps run in float32, float64, complex64 or "
                "complex128: use precision '32-true', '64-true', 'bf16-mixed' or '16-mixed' "
                "(the mixed ones step in M's dtype)"
            )
        for callback in self.trainer.callbacks:
            name = type(callback).__name__
            if name in REFUSED_CALLBACKS:
                raise InvalidOptionError(
                    f"LitInverse cannot run under {name}: {REFUSED_CALLBACKS[name]}"
                )
            if name in WINDOW_COUNTED_CALLBACKS:
                warn_user(
                    f"{name} logs at Lightning's count of training_step calls, which under "
                    "LitInverse are windows of optimizer steps: its rows' step is the window's "
                    f"index, not the optimizer step of loss; {WINDOW_COUNTED_CALLBACKS[name]}",
                    UserWarning,
                )
        self.stepper.follow_module()

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
        kit = self.lightning_kit
        callbacks: List[pl.Callback] = [kit.monitor(), kit.logger()]
        bar = self.trainer.progress_bar_callback
        step_bar = kit.step_bars.get(type(bar))  # Lightning's bars, not a subclass of yours
        if bar is not None and step_bar is not None:
            callbacks.append(as_step_bar(bar, step_bar))
        return callbacks

    def on_train_start(self) -> None:
        trainer = self.trainer
        # A value is synced over the processes only where there are several.
        self.metric.dist_sync_on_step = trainer.world_size > 1
        self._policy = StoppingPolicy(
            self.stepper,
            tol=self.tol,
            # the steps still to take, counted from the stepper's (a module loaded from a
            # checkpoint into a new Trainer carries its steps, global_step starts at 0)
            max_steps=(
                self.stepper.steps + trainer.max_steps - trainer.global_step
                if trainer.max_steps >= 0
                else None
            ),
            refine=self.hparams.refine,
            window=self.hparams.steps_per_window,
        )
        # it starts the stepper: a rank check it runs at once comes before the tuner's sigma_max
        self._policy.begin(world_size=trainer.world_size, global_rank=trainer.global_rank)
        self._stop = self.outcome = None
        self._save_every = checkpoint_step_intervals(trainer)

    def after_window(self) -> bool:
        """Whether the fit stops after this window (the policy's one host sync)."""
        if self._policy is None:
            raise NotReadyError("LitInverse.after_window runs during fit only")
        self._stop = self._policy.after_window()
        return self._stop is not None

    def finish_fit(self) -> None:
        """At the end of training (:class:`ConvergenceMonitor`, before the loggers' last write):
        refine where ``refine`` is on, write the report, and warn where a matrix missed
        ``tol`` (the warning :func:`invert` gives, pointing at the user's ``fit`` line). Where
        refinement moved X, ``loss``, ``mse`` and ``residual`` become the refined X's."""
        if self._policy is None:
            return
        self.outcome = outcome = self._policy.finish(self._stop)
        if outcome.report.refine_steps:
            stepper, trainer = self.stepper, self.trainer
            product = stepper.measure()
            assert stepper.loss is not None
            refined = {
                "loss": stepper.loss.mean(),
                "residual": outcome.residual.max().to(stepper.loss),
                "mse": identity_mse(product),
            }
            for metrics in (trainer.callback_metrics, trainer.progress_bar_metrics):
                metrics.update({key: value for key, value in refined.items() if key in metrics})
        if outcome.message and self.trainer.is_global_zero:
            warn_user(outcome.message, ConvergenceWarning)

    def on_train_epoch_end(self) -> None:
        self.metric.reset()  # as Lightning does for a logged Metric object

    @torch.compiler.disable  # a window's host-synced Python loop: run as it is when compiled
    def training_step(self, batch: Any, batch_idx: int) -> None:
        stepper = self.stepper
        assert self._policy is not None
        done = self.trainer.global_step  # a window ends where a checkpoint saves by steps
        steps = min([self._policy.window()] + [k - done % k for k in self._save_every])
        optimizer = cast(LightningOptimizer, self.optimizers())
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        step = optimizer.step
        if scaler is not None:  # 16-mixed: the scaler divides gradients by its scale

            def step() -> None:
                inverse = self.module.inverse
                inverse.grad = scaler.scale(inverse.grad)  # times a power of 2: exact
                optimizer.step()

        if steps:  # none where descent is skipped: its check stops the fit at once
            stepper.run(steps, step=step)
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

    def get_extra_state(self) -> Dict[str, Any]:
        """The run besides X and M (the steps, the loss history, the tuner's estimates): in
        ``state_dict``, so checkpoints hold it and ``ddp_spawn`` brings it back to the main
        process with the weights."""
        if self._stepper is None:
            return {}
        state = self._stepper.state_dict()
        del state["optimizer"]  # Lightning saves it under optimizer_states
        return state

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        if state and self._stepper is not None:
            self._stepper.load_state_dict(state)

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        if self.inverse_module is None:  # M from the checkpoint alone
            self._build(checkpoint["state_dict"]["inverse_module.matrix"])
        optimizers = checkpoint.get("optimizer_states") or []
        if optimizers:  # the momentum too, also for load_from_checkpoint and a new fit
            self.stepper.load_state_dict({"optimizer": optimizers[0]})


@functools.lru_cache(maxsize=None)
def _destroy_process_group_at_exit() -> None:
    """Destroy the process group at this process's exit, while the interpreter still runs.

    Lightning does so for an NCCL group only. A gloo group (DDP on the CPU) left to the
    interpreter's finalization can abort a finished run's process (SIGABRT, "terminate called
    without an active exception"): its worker threads still hold work whose tensors need the
    interpreter. Registered once per process (a rank that ``ddp_spawn`` starts has its own)."""
    atexit.register(_destroy_process_group)


def _destroy_process_group() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# Lightning's callbacks that log at its count of batches (here windows), and what to read instead.
WINDOW_COUNTED_CALLBACKS = {
    "LearningRateMonitor": "with lr='auto' or momentum='auto' LitInverse logs lr and momentum "
    "itself, at optimizer steps; fixed ones are in its hparams",
    "DeviceStatsMonitor": "read its rows as one per window of steps",
}

# Lightning's tools that assume a loss of batches, and what to use instead.
REFUSED_CALLBACKS = {
    "LearningRateFinder": "lr_find sweeps a loss of batches; use lr='auto', which chooses lr "
    "(and momentum='auto') from M's spectrum",
    "StochasticWeightAveraging": "averaging X over the run mixes in the first guess; the "
    "steps converge to one X (use refine=True for the last digits)",
}


class LightningKit(NamedTuple):
    """The callback classes ``LitInverse`` installs, of one Lightning package."""

    monitor: type
    logger: type
    step_bars: Mapping[type, type]  # Lightning's progress bar -> ours, which counts steps


class LitInverse(LitInverseMixin, pl.LightningModule):
    r"""Trains X to the inverse of M with ``torch.optim.SGD`` and momentum, under a ``Trainer``.

    The steps are :class:`HeavyBallStepper`'s (heavy ball on the closed-form gradient of
    :math:`L(X) = \lVert E - I\rVert_F^2 / k^2`); each ``training_step`` runs a window of
    ``steps_per_window`` of them with no host sync, so ``trainer.global_step`` and
    ``max_steps`` count optimizer steps. After each window it logs ``loss`` (the loss averaged
    over the batch), ``mse`` (the :class:`IdentityMSE` metric of E) and ``residual`` (the
    largest residual in the batch), which the loggers get at the optimizer step
    (:class:`StepLogger`). The run stops, warns and refines by :func:`invert`'s
    :class:`StoppingPolicy`: at ``tol``, at a stall or an exhausted budget (with the same
    :class:`ConvergenceWarning`), with a :class:`DivergenceError` where the loss diverges, and
    with refinement steps at the end of the fit where ``refine`` is on. The progress bar
    counts optimizer steps (:class:`StepProgressBar`).
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
        steps_per_window: optimizer steps per ``training_step``, or ``"auto"``: windows that
            grow with the run, so a stop at ``tol`` lands within ``max(4, 5%)`` steps of it.
        loss_every: keep the loss of every ``loss_every``-th step only (:class:`LossHistory`).
        tol: stop once every matrix's residual is at most ``tol``; ``"auto"``: the dtype's
            (1e-5 for float32, 1e-10 for float64, as :func:`invert`); ``None`` runs to
            ``max_steps`` (as the post does), and reports judge convergence by the dtype's.
        refine: end the fit with refinement steps (square M of full rank, no ridge), as
            :func:`invert` does; descent then stops where they take over. Off by default, so
            the post's runs stay step for step.
        ridge, check_rank, shard, cuda_graph: the steps' :class:`StepOptions`.
        tf32: let CUDA float32 matrix products run in TF32 during ``fit`` (faster, but about
            1e-3 relative error per product). Off by default: full float32 whatever the global
            setting, which is restored after ``fit``.

    Example:
        >>> m = torch.tensor([[2.0, 1.0], [0.0, 1.0]])
        >>> model = LitInverse(m)
        >>> trainer = pl.Trainer(max_steps=300, logger=False, enable_progress_bar=False,
        ...                      enable_checkpointing=False, enable_model_summary=False)
        >>> trainer.fit(model)
        >>> torch.allclose(model.inverse, torch.linalg.inv(m), atol=1e-5)
        True
    """

    lightning_kit: ClassVar[LightningKit] = LightningKit(
        ConvergenceMonitor,
        StepLogger,
        {TQDMProgressBar: StepProgressBar, RichProgressBar: StepRichProgressBar},
    )
