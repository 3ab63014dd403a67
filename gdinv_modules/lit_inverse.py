"""``LitInverse``: trains an :class:`InverseModule` under a Lightning ``Trainer``."""

import warnings
from contextlib import ExitStack, contextmanager
from typing import Any, Dict, Iterable, Iterator, List, Literal, Optional, Tuple, Union, cast

import pytorch_lightning as pl
import torch
from pytorch_lightning.core.optimizer import LightningOptimizer
from torch import Tensor

from gdinv_modules.auto_tuner import HeavyBallTuner
from gdinv_modules.convergence import ConvergenceMonitor, default_tol
from gdinv_modules.datamodule import step_ticks
from gdinv_modules.errors import InvalidOptionError, SingularMatrixWarning
from gdinv_modules.functional import (
    Formulation,
    identity_error,
    inverse_loss,
    loss_and_gradient,
    relative_residual,
)
from gdinv_modules.inverse_module import Init, InverseModule
from gdinv_modules.metric import IdentityMSE
from gdinv_modules.rank import estimate_target, loss_floor
from gdinv_modules.report import ConvergenceReport
from gdinv_modules.sharding import SHARD_MODES, Sharding, ShardMode
from gdinv_modules.step_graph import StepGraph
from gdinv_modules.theory import ridge_error_bound
from gdinv_modules.validation import (
    check_choice,
    check_momentum,
    check_non_negative_float,
    check_positive_float,
    check_positive_int,
)

__all__ = ["LitInverse"]


class LitInverse(pl.LightningModule):
    r"""Gradient descent on :math:`\lVert E - I \rVert_F^2 / n^2` with ``torch.optim.SGD``.

    Heavy ball, exactly as ``torch.optim.SGD(lr, momentum)`` (dampening 0, no Nesterov):

    .. math::
        v_t = \beta v_{t-1} + \nabla L(X_t), \qquad X_{t+1} = X_t - \eta\, v_t,

    with the closed-form gradient of :func:`~gdinv_modules.functional.loss_and_gradient`.
    Each ``training_step`` takes ``steps_per_batch`` optimizer steps (manual optimization, no
    host sync), so a Trainer run costs about what a bare loop costs; ``trainer.global_step`` and
    ``max_steps`` count optimizer steps. The loss of every step (or every ``loss_every``-th),
    :math:`L(X_t)` before step :math:`t`'s update, is kept on the device (:attr:`losses`) and
    saved in checkpoints.

    After each ``training_step`` it logs ``loss`` (the :class:`IdentityMSE` of the current X over
    the batch) and ``residual`` (the largest relative residual in the batch), and a
    :class:`ConvergenceMonitor` stops the run at ``tol`` and refuses divergence.

    ``lr="auto"`` and/or ``momentum="auto"`` let a :class:`HeavyBallTuner` choose them from
    spectral estimates of M (power iteration for the largest singular value, Rayleigh quotients
    of the residual for the smallest), retuning as the estimates improve: no tuning per matrix,
    close to Polyak's optimal rate, never past the stability bound.

    Args:
        matrix: M, shape ``(..., n, n)`` or ``(..., m, n)``. Leave it out to take M from the
            ``datamodule``'s ``matrix`` (:class:`MatrixDataModule`) or from a checkpoint.
        lr: the learning rate :math:`\eta > 0`, or ``"auto"``.
        momentum: the heavy-ball momentum :math:`0 \le \beta < 1`, or ``"auto"``.
        formulation: ``"left"`` (:math:`XM`), ``"right"`` (:math:`MX`) or ``"symmetric"``.
        init: ``"random"`` (the post's first guess) or ``"zeros"``.
        seed: the seed of the random first guess.
        steps_per_batch: optimizer steps per ``training_step``.
        loss_every: keep the loss of every ``loss_every``-th step only (steps 0, k, 2k, ...):
            the history of a long run on a large batch (``steps x batch`` values, on the device
            and in every checkpoint) shrinks k-fold, and the report's ``steps_to_tol`` becomes
            the first *kept* step at or below ``tol``.
        tol: stop once every matrix's relative residual is at most ``tol``; ``None`` runs to
            ``max_steps`` (as the post does). Reports call a matrix converged at ``tol``, or
            without one at the dtype's default (1e-5 for float32, 1e-10 for float64).
        ridge: the Tikhonov weight :math:`\lambda \ge 0`: the loss gains
            :math:`\lambda \lVert X\rVert_F^2`, and the residual checked against ``tol`` becomes
            the bound :math:`\lVert\nabla f\rVert / (2\lambda\lVert X\rVert)` on the relative
            distance to the regularised minimiser.
        check_rank: take one SVD of M at the start to find its rank. A rank-deficient M gets a
            :class:`SingularMatrixWarning` with the rank and the loss floor
            :math:`(k - r)/k^2`, and its residual is measured against the projector the
            estimate tends to (X tends to the pseudo-inverse from ``init="zeros"``).
        shard: how a distributed run (``Trainer(strategy="ddp", devices=k)``) splits the work:
            ``"batch"`` (each rank a slice of the batch; the columns where the batch has fewer
            matrices than ranks), ``"columns"`` (each rank a slice of the estimate's columns,
            gradients all-reduced every step), ``"auto"`` (as ``"batch"``) or ``"none"``
            (every rank does it all). Every split gives the single-process result, to rounding.
        tf32: let CUDA matrix products of float32 run in TF32 during ``fit`` (faster on Ampere
            and later GPUs, about 1e-3 relative error per product, so the residual stalls far
            above float32's). Off by default: products run in full float32 whatever the global
            setting, which is restored after ``fit``.
        cuda_graph: on a CUDA device, record each window of ``steps_per_batch`` optimizer
            steps once in a CUDA graph (:class:`StepGraph`) and replay it: a step then costs
            its kernels rather than their launches, which dominate for small M. The same steps
            run, with the same result; a window in which the tuner retunes runs eagerly, and a
            changed lr or momentum is recorded again. Windows run this way step the torch
            optimizer directly: Lightning's ``on_before_optimizer_step`` hooks do not run for
            them, while ``global_step`` counts their steps as usual. Ignored on other devices
            and under a column split (whose all-reduce runs every step).

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
        steps_per_batch: int = 100,
        loss_every: int = 1,
        tol: Optional[float] = None,
        ridge: float = 0.0,
        check_rank: bool = True,
        shard: ShardMode = "auto",
        tf32: bool = False,
        cuda_graph: bool = False,
    ) -> None:
        super().__init__()
        if lr != "auto":
            check_positive_float(lr, name="lr (a number, or 'auto')")
        if momentum != "auto":
            check_momentum(momentum, name="momentum (a number, or 'auto')")
        if tol is not None:
            check_positive_float(tol, name="tol")
        check_non_negative_float(ridge, name="ridge")
        check_choice(shard, SHARD_MODES, name="shard")
        check_positive_int(steps_per_batch, name="steps_per_batch")
        check_positive_int(loss_every, name="loss_every")
        self.save_hyperparameters(ignore=["matrix"])
        self.automatic_optimization = False
        self.inverse_module: Optional[InverseModule] = None
        self.metric = IdentityMSE(dist_sync_on_step=True)
        self.tuner: Optional[HeavyBallTuner] = None
        self._tuner_state: Optional[Dict[str, Any]] = None
        self._loss_chunks: List[Tensor] = []  # the kept losses, one chunk per training_step
        self.steps_taken = 0  # optimizer steps, across checkpoints
        self.first_loss: Optional[Tensor] = None  # shape: (...), L(X_0) per matrix
        self.last_loss: Optional[Tensor] = None  # shape: (...), L of the current X
        self.last_residual: Optional[Tensor] = None  # shape: (...)
        self.rank: Optional[Tensor] = None  # shape: (...), from check_rank
        self.target: Optional[Tensor] = None  # shape: (..., k, k); None: the identity
        self.singular_values: Optional[Tensor] = None  # shape: (..., min(m, n)), from check_rank
        self.sharding = Sharding("none", 1, 0, 0, 0, 0)
        self.step_graph: Optional[StepGraph] = None  # with cuda_graph, on a CUDA device
        self._fit_context = ExitStack()
        if matrix is not None:
            self._build(matrix)

    def _build(self, matrix: Tensor) -> None:
        self.inverse_module = InverseModule(
            matrix,
            formulation=self.hparams.formulation,
            init=self.hparams.init,
            seed=self.hparams.seed,
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
    def matrix(self) -> Tensor:  # shape: (..., m, n)
        """M, the matrix being inverted."""
        return self.module.resolve_matrix()

    @property
    def inverse(self) -> Tensor:  # shape: (..., n, m)
        """The current approximate inverse, detached."""
        return self.module.inverse

    @property
    def losses(self) -> Tensor:  # shape: (kept, ...)
        """The loss of every optimizer step so far (of steps 0, k, 2k, ... with
        ``loss_every=k``), one column per matrix of the batch."""
        if not self._loss_chunks:
            return torch.empty((0, *self.module.batch_shape), dtype=self.inverse.dtype)
        if len(self._loss_chunks) > 1:
            device = self._loss_chunks[-1].device
            self._loss_chunks = [torch.cat([c.to(device) for c in self._loss_chunks])]
        return self._loss_chunks[0]

    @property
    def loss_steps(self) -> Tensor:  # shape: (kept,)
        """The step of each row of :attr:`losses`."""
        return torch.arange(len(self.losses)) * self.hparams.loss_every

    @property
    def auto(self) -> bool:
        """Whether lr or momentum is chosen automatically."""
        return "auto" in (self.hparams.lr, self.hparams.momentum)

    def effective_parameters(self) -> Tuple[Tensor, Tensor]:  # shapes: (...), (...)
        """The (lr, momentum) each matrix ran with last (the tuner's, or the fixed pair)."""
        tuner = self.tuner
        if tuner is not None and tuner.lr is not None and tuner.momentum is not None:
            return tuner.lr, tuner.momentum
        batch_shape = self.module.batch_shape
        lr, momentum = self.hparams.lr, self.hparams.momentum
        return (
            torch.full(batch_shape, float(lr), dtype=torch.float64),
            torch.full(batch_shape, float(momentum), dtype=torch.float64),
        )

    def report(self) -> ConvergenceReport:
        """The convergence report of the run so far (host syncs: call it at the end)."""
        module = self.module
        lr, momentum = self.effective_parameters()
        tol = self.hparams.tol or default_tol(module.approx.dtype)
        with torch.no_grad():
            residual = self.convergence_residual()
        return ConvergenceReport.from_run(
            self.losses,
            self.matrix,
            module.formulation,
            lr,
            momentum,
            tol,
            residual,
            rank=self.rank,
            ridge=self.hparams.ridge,
            singular_values=self.singular_values,
            loss_every=self.hparams.loss_every,
            steps=self.steps_taken,
        )

    def convergence_residual(self, estimate: Optional[Tensor] = None) -> Tensor:  # shape: (...)
        r"""What ``tol`` bounds, per matrix: :math:`\lVert E - T\rVert_F/\sqrt k` (``T`` the
        identity, or the projector for a rank-deficient M), or with a ridge the bound on the
        relative distance to its minimiser."""
        module = self.module
        ridge = self.hparams.ridge
        if ridge:
            _, gradient = loss_and_gradient(module.approx, self.matrix, module.formulation, ridge)
            return ridge_error_bound(module.approx, gradient, ridge)
        return relative_residual(module() if estimate is None else estimate, self.target)

    def _check_rank(self) -> None:
        module = self.module
        svd = torch.linalg.svd(self.matrix.double(), full_matrices=False)
        self.singular_values = svd[1]  # the report reuses them
        self.rank, self.target = estimate_target(self.matrix, module.formulation, svd=svd)
        if self.target is not None:
            k = module.size
            deficient = self.rank < k
            index = tuple(deficient.nonzero()[0].tolist())  # the first deficient matrix
            rank = int(self.rank[index])
            where = f" at batch index {index}" if index else ""
            warnings.warn(
                f"M is rank-deficient: {int(deficient.sum())} matrix(es), e.g. rank {rank} of "
                f"{k}{where}; the loss cannot go below (k - rank) / k^2 = "
                f"{loss_floor(torch.tensor(rank), k).item():.4g}, and X tends to the "
                "pseudo-inverse from init='zeros' (to another generalised inverse from a random "
                "start)",
                SingularMatrixWarning,
                stacklevel=2,
            )

    def forward(self, matrix: Optional[Tensor] = None) -> Tensor:  # shape: (..., k, k)
        """The estimate of the identity (see :meth:`InverseModule.forward`)."""
        return self.module(matrix)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self._trainer, "datamodule", None)
        matrix = getattr(datamodule, "matrix", None)
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

    def teardown(self, stage: str) -> None:
        self._fit_context.close()
        if self.step_graph is not None:
            self.step_graph.release()

    def on_train_epoch_end(self) -> None:
        self.metric.reset()  # as Lightning does for a logged Metric object

    def train_dataloader(self) -> Iterable[int]:
        return step_ticks()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # With "auto" the tuner sets both values before the first step.
        lr = 1.0 if self.hparams.lr == "auto" else self.hparams.lr
        momentum = 0.0 if self.hparams.momentum == "auto" else self.hparams.momentum
        # fused: one kernel updates the momentum buffer and X (three passes otherwise); bit for
        # bit the same on the CPU. It reads X, its gradient and the buffer as flat memory, so X
        # must be contiguous (InverseModule makes it so).
        approx = self.module.approx
        fused = True if approx.is_contiguous() else None  # None: torch's default
        return torch.optim.SGD([approx], lr=lr, momentum=momentum, fused=fused)

    def configure_callbacks(self) -> List[pl.Callback]:
        return [ConvergenceMonitor(self.hparams.tol)]

    def on_train_start(self) -> None:
        module = self.module
        # A step's value is synced over the ranks only where there are several (the full
        # state update that the sync needs costs an extra update and compute per call).
        self.metric.dist_sync_on_step = self.trainer.world_size > 1
        self.sharding = Sharding.plan(
            self.hparams.shard,
            batch_count=module.batch_shape.numel(),
            k=module.size,
            formulation=module.formulation,
            world=self.trainer.world_size,
            rank=self.trainer.global_rank,
        )
        graph_fits = StepGraph.supports(module.approx.device) and self.sharding.mode != "columns"
        if self.hparams.cuda_graph and graph_fits and self.step_graph is None:
            self.step_graph = StepGraph(module.approx.device)
        if self.hparams.check_rank and self.rank is None:
            self._check_rank()
        if self.auto and self.tuner is None:
            module = self.module
            fixed = {
                key: None if self.hparams[key] == "auto" else self.hparams[key]
                for key in ("lr", "momentum")
            }
            self.tuner = HeavyBallTuner(
                self.matrix, module.formulation, ridge=self.hparams.ridge, **fixed
            )
            if self._tuner_state is not None:
                self.tuner.load_state_dict(self._tuner_state)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        module = self.module
        steps = self.hparams.steps_per_batch
        if self.trainer.max_steps >= 0:
            steps = min(steps, self.trainer.max_steps - self.trainer.global_step)
        optimizer = cast(LightningOptimizer, self.optimizers())
        first_step = self.trainer.global_step
        with torch.no_grad():
            losses = self._collect(self.run_steps(steps, optimizer), optimizer.optimizer)
            estimate = module()
            loss = self.metric(self._local_part(estimate))  # this batch's, over every rank
            self.last_loss = inverse_loss(
                identity_error(estimate), module.approx, self.hparams.ridge
            )
            self.last_residual = self.convergence_residual(estimate)
        if self.first_loss is None:
            self.first_loss = losses[0]
        elif self.first_loss.device != losses.device:  # restored from a checkpoint
            self.first_loss = self.first_loss.to(losses.device)
        every = self.hparams.loss_every
        if every > 1:  # keep steps 0, k, 2k, ...; a copy, so the window's buffer is freed
            losses = losses[(-first_step) % every :: every].clone()
        self._loss_chunks.append(losses)
        self.steps_taken = first_step + steps
        # The value, not the Metric object, spares Lightning a move of the metric's states to
        # the device at every call (a self.log call costs about two eager steps on a small M).
        self.log("loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log("residual", self.last_residual.max(), on_step=True, on_epoch=False, prog_bar=True)
        if self.tuner is not None:
            group = optimizer.optimizer.param_groups[0]
            self.log_dict(
                {"lr": group["lr"], "momentum": group["momentum"]}, on_step=True, on_epoch=False
            )

    @torch.no_grad()
    def run_steps(
        self, steps: int, optimizer: Union[LightningOptimizer, torch.optim.Optimizer]
    ) -> Tensor:
        """Take ``steps`` optimizer steps; return this rank's losses, shape ``(steps, ...)``.

        The hot loop: the closed-form gradient and ``optimizer.step()``, no host sync (but at
        the tuner's retune steps, when lr or momentum is "auto"), replayed from a CUDA graph
        with ``cuda_graph=True``.
        """
        module, shard = self.module, self.sharding
        local_shape = (shard.stop - shard.start,) if shard.mode == "batch" else module.batch_shape
        losses = module.approx.new_empty((steps, *local_shape))
        first_step = self.trainer.global_step
        graph = self.step_graph
        if graph is not None and not graph.warm:
            graph.warm_up(lambda out: self._steps(out, optimizer, first_step), losses)
            return losses
        graph_inputs = None if graph is None else self._graph_inputs(steps, optimizer)
        if graph is None or graph_inputs is None:
            self._steps(losses, optimizer, first_step)
            return losses
        raw = _raw(optimizer)
        group = raw.param_groups[0]
        graph.run(
            lambda out: self._steps(out, raw, first_step),
            (group["lr"], group["momentum"]),
            graph_inputs,
            losses,
        )
        if isinstance(optimizer, LightningOptimizer):  # count the steps, as step() would
            for _ in range(steps):
                optimizer._on_before_step()
                optimizer._on_after_step()
        return losses

    def _graph_inputs(
        self, steps: int, optimizer: Union[LightningOptimizer, torch.optim.Optimizer]
    ) -> Optional[List[Tensor]]:
        """The tensors a recorded window reads and writes, or ``None`` if this window must run
        eagerly: the tuner retunes in it, or SGD has yet to create its momentum buffer."""
        tuner, approx = self.tuner, self.module.approx
        if tuner is not None and tuner.due_within(self.trainer.global_step, steps):
            return None
        raw = _raw(optimizer)
        buffer = raw.state.get(approx, {}).get("momentum_buffer")
        if buffer is None and raw.param_groups[0]["momentum"] != 0:
            return None
        scale = None if tuner is None else tuner.gradient_scale
        return [t for t in (approx, self.matrix, buffer, scale) if t is not None]

    def _steps(
        self,
        losses: Tensor,  # shape: (steps, ...), this rank's; filled in
        optimizer: Union[LightningOptimizer, torch.optim.Optimizer],
        first_step: int,
    ) -> None:
        module = self.module
        tuner, ridge = self.tuner, self.hparams.ridge
        shard, formulation = self.sharding, module.formulation
        approx, matrix = module.approx, self.matrix
        for step in range(len(losses)):
            loss, gradient = shard.loss_and_gradient(approx, matrix, formulation, ridge)
            losses[step] = loss
            if tuner is not None:
                if tuner.due(first_step + step):
                    sample = shard.data_sample(approx, matrix, formulation, self.target)
                    tuner.retune(first_step + step, *sample, _raw(optimizer))
                gradient = tuner.scale(gradient)
            approx.grad = gradient
            optimizer.step()

    def _collect(self, losses: Tensor, optimizer: torch.optim.Optimizer) -> Tensor:
        """End of a training step under a split: every rank gets the whole X, momentum buffer
        and losses (shape ``(steps, ...)``)."""
        shard = self.sharding
        if shard.mode == "columns":
            return shard.sum(losses)
        if shard.mode == "batch":
            approx = self.module.approx
            approx.copy_(shard.gather_batch(approx))
            buffer = optimizer.state.get(approx, {}).get("momentum_buffer")
            if buffer is not None:
                buffer.copy_(shard.gather_batch(buffer))
            return shard.gather(losses.mT).mT.reshape(len(losses), *approx.shape[:-2])
        return losses

    def _local_part(self, estimate: Tensor) -> Tensor:
        """This rank's share of the estimate for the metric, whose states are summed over the
        ranks: its slice of the batch; under a column split every rank holds the same whole
        estimate and passes it all, which leaves the mean unchanged."""
        shard = self.sharding
        if shard.mode == "batch":
            return estimate.reshape(-1, *estimate.shape[-2:])[shard.start : shard.stop]
        return estimate

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        checkpoint["loss_history"] = self.losses.detach().cpu()
        checkpoint["steps_taken"] = self.steps_taken
        if self.tuner is not None:
            checkpoint["auto_tuner"] = self.tuner.state_dict()

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        if self.inverse_module is None:
            self._build(checkpoint["state_dict"]["inverse_module.matrix"])
        history = checkpoint.get("loss_history")
        if history is not None and len(history):
            self._loss_chunks = [history]
            self.first_loss = history[0]
        self.steps_taken = checkpoint.get("steps_taken", checkpoint.get("global_step", 0))
        self._tuner_state = checkpoint.get("auto_tuner")


def _raw(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside Lightning's ``LightningOptimizer`` wrapper (or itself)."""
    return getattr(optimizer, "optimizer", optimizer)


@contextmanager
def cuda_matmul_precision(*, tf32: bool) -> Iterator[None]:
    """Set whether CUDA float32 matrix products may use TF32, and restore the setting after."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9
        previous = matmul.fp32_precision
        matmul.fp32_precision = "tf32" if tf32 else "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision = previous
    else:
        previous_allow = matmul.allow_tf32
        matmul.allow_tf32 = tf32
        try:
            yield
        finally:
            matmul.allow_tf32 = previous_allow
