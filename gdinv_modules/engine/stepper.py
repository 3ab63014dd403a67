r"""``HeavyBallStepper``: the hot loop. Heavy-ball steps on X for a given M, with no Trainer.

Each step is ``torch.optim.SGD`` with momentum (dampening 0, no Nesterov) on the closed-form
gradient of :func:`~gdinv_modules.core.functional.loss_and_gradient`:

.. math::
    v_t = \beta v_{t-1} + \nabla L(X_t), \qquad X_{t+1} = X_t - \eta\, v_t.

Steps run in windows (:meth:`HeavyBallStepper.run`) with no host sync inside a window, except at
the tuner's retune steps when lr or momentum is ``"auto"``. Between windows,
:meth:`HeavyBallStepper.check` takes the one host sync that stops at the tolerance and refuses
divergence. ``LitInverse`` and ``invert`` drive this object; so can a plain loop.
"""

import math
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor

from gdinv_modules.core.decomposition import wide_sigma_max, wide_svdvals
from gdinv_modules.core.errors import (
    DivergenceError,
    InvalidOptionError,
    MatrixScaleError,
    NonFiniteMatrixError,
    NotReadyError,
    SingularMatrixWarning,
    warn_user,
)
from gdinv_modules.core.formulation import SYMMETRIC
from gdinv_modules.core.functional import (
    autocast_off,
    identity_error,
    inverse_loss,
    loss_and_gradient,
    loss_and_gradient_at_zero,
    relative_residual,
    squared_norm,
    wide_dtype,
)
from gdinv_modules.core.rank import loss_floor, product_target
from gdinv_modules.core.report import ConvergenceReport
from gdinv_modules.core.scaling import scale_band, scale_exponent
from gdinv_modules.core.spectral import operator_sigma_max
from gdinv_modules.core.theory import ridge_error_bound, stable_bound_advice
from gdinv_modules.core.validation import check_step_dtype
from gdinv_modules.engine.history import LossHistory
from gdinv_modules.engine.options import StepOptions
from gdinv_modules.engine.sharding import Sharding
from gdinv_modules.engine.step_graph import StepGraph
from gdinv_modules.engine.tuner import HeavyBallTuner
from gdinv_modules.nn.inverse_module import InverseModule

__all__ = ["HeavyBallStepper", "GROWTH_LIMIT"]

GROWTH_LIMIT = 1e8  # a loss this many times its first value has diverged


class HeavyBallStepper:
    r"""Takes heavy-ball steps on an :class:`InverseModule`'s X towards the inverse of its M.

    Args:
        module: the module whose parameter X is stepped; it must hold M (built from a matrix).
        options: lr, momentum, ridge and the rest (:class:`StepOptions`; default the post's
            fixed pair, lr 0.9 and momentum 0.9).

    Attributes:
        optimizer: the ``torch.optim.SGD`` over X (fused where X is contiguous).
        history: the losses of the steps taken.
        steps: optimizer steps taken so far.
        loss, residual: per matrix, at the current X, as of the last :meth:`measure`.

    Example:
        >>> m = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> options = StepOptions(lr="auto", momentum="auto")
        >>> stepper = HeavyBallStepper(InverseModule(m, init="zeros"), options)
        >>> while not stepper.check(tol=1e-10):
        ...     _ = stepper.run(20)
        >>> stepper.steps, torch.allclose(stepper.module.inverse, torch.linalg.inv(m))
        (40, True)
    """

    def __init__(self, module: InverseModule, options: Optional[StepOptions] = None) -> None:
        if module.matrix is None:
            raise NotReadyError("HeavyBallStepper needs an InverseModule that holds M")
        if torch.nn.utils.parametrize.is_parametrized(module, "inverse"):
            raise InvalidOptionError(
                "HeavyBallStepper steps the parameter X itself; a parametrization makes X a "
                "function of another tensor: train such a module with your own optimizer loop"
            )
        check_step_dtype(module.inverse.dtype)
        self.module = module
        self.options = options = StepOptions() if options is None else options
        lr, momentum = options.lr, options.momentum
        inverse = module.inverse
        # fused: one kernel updates the momentum buffer and X (three passes otherwise); bit for
        # bit the same on the CPU. It reads X, its gradient and the buffer as flat memory, so X
        # must be contiguous (InverseModule makes it so), and real. With "auto" the tuner sets
        # both values before the first step.
        self.optimizer = torch.optim.SGD(
            [inverse],
            lr=1.0 if lr == "auto" else lr,
            momentum=0.0 if momentum == "auto" else momentum,
            fused=True if inverse.is_contiguous() and not inverse.is_complex() else None,
        )
        self.history = LossHistory(options.loss_every, module.batch_shape)
        self.steps = 0
        self.tuner: Optional[HeavyBallTuner] = None
        self._tuner_state: Optional[Dict[str, Any]] = None  # restored, for the next start
        self.matrix_rank: Optional[Tensor] = None  # shape: (...), from check_rank
        self.target: Optional[Tensor] = None  # shape: (..., k, k); None: the identity
        self.singular_values: Optional[Tensor] = None  # shape: (..., min(m, n))
        self.sharding = Sharding.single()
        self.step_graph: Optional[StepGraph] = None
        self.loss: Optional[Tensor] = None  # shape: (...)
        self.residual: Optional[Tensor] = None  # shape: (...)
        self.worst_residual = math.inf  # the largest residual at the last check
        self.replayed = False  # whether the last window ran from a CUDA graph
        # shape: (..., k, k), E at X as the last check measured it, until the next window
        self.checked_product: Optional[Tensor] = None
        self._at_zero = False  # X = 0 as of the last check: the next step takes no product
        self._keeping = False  # inside keeping_products()
        self.started = False

    @property
    def matrix(self) -> Tensor:  # shape: (..., m, n)
        """M, where the module holds it now."""
        return self.module.resolve_matrix()

    @property
    def ridge(self) -> float:
        """The Tikhonov weight of the loss (:attr:`options`)."""
        return self.options.ridge

    def start(
        self,
        *,
        world_size: int = 1,
        global_rank: int = 0,
        find_rank: bool = False,
        gram: Optional[Tensor] = None,  # shape: (..., k, k), M's wide_gram, for find_rank
    ) -> None:
        """Prepare a run on the module's device: the split over ``world_size`` processes, the
        rank check (once; ``find_rank``: under ``check_rank="auto"`` too, where a policy asks
        for it at once; ``gram``: :meth:`find_rank`'s), the tuner's spectral estimates (once,
        from the rank check's singular values where it ran) and the CUDA graph. :meth:`run`
        starts a single-process run by itself."""
        module, options = self.module, self.options
        if not self.started:
            _check_scale(self.matrix)
        self.sharding = Sharding.plan(
            options.shard,
            batch_count=module.batch_shape.numel(),
            k=module.order,
            formulation=module.formulation,
            world_size=world_size,
            global_rank=global_rank,
        )
        graph_fits = StepGraph.supports(module.inverse.device) and self.sharding.mode != "columns"
        if options.cuda_graph and graph_fits and self.step_graph is None:
            self.step_graph = StepGraph(module.inverse.device)
        if (options.check_rank is True or find_rank) and self.matrix_rank is None:
            self.find_rank(gram=gram)
        if options.auto and self.tuner is None:
            fixed = {
                "lr": None if options.lr == "auto" else float(options.lr),
                "momentum": None if options.momentum == "auto" else float(options.momentum),
            }
            self.tuner = HeavyBallTuner(
                self.matrix,
                module.formulation,
                ridge=self.ridge,
                sigma_max=self._exact_sigma_max(),
                **fixed,
            )
            if self._tuner_state is not None:
                self.tuner.load_state_dict(self._tuner_state)
        self.started = True

    @torch.no_grad()
    def follow_module(self) -> None:
        """After the module moved to another dtype or device (``.double()``, a Trainer's
        ``precision="64-true"``): move the momentum, the tuner's state and the projector along,
        so the next window continues the same run in the new dtype."""
        inverse = self.module.inverse
        check_step_dtype(inverse.dtype)
        for state in self.optimizer.state.values():
            buffer = state.get("momentum_buffer")
            if buffer is not None:
                state["momentum_buffer"] = buffer.to(inverse)
        if self.target is not None:
            self.target = self.target.to(inverse)
        if self.tuner is not None:
            self.tuner.follow(inverse)

    @torch.no_grad()
    def run(self, steps: int, *, step: Optional[Callable[[], Any]] = None) -> Tensor:
        """Take a window of ``steps`` optimizer steps; return their losses, shape ``(steps, ...)``.

        ``step`` replaces ``optimizer.step`` in eagerly run windows (Lightning's wrapper, which
        counts ``global_step``); a window replayed from a CUDA graph steps the optimizer
        inside the graph and sets :attr:`replayed`.
        """
        if not self.started:
            self.start()
        with autocast_off(self.module.inverse):
            losses = self._run(steps, step)
        self.module.inverse.grad = None  # the closed-form gradient is the steps' own
        return losses

    def _run(self, steps: int, step: Optional[Callable[[], Any]]) -> Tensor:
        first_step = self.steps
        step = self.optimizer.step if step is None else step
        module, shard = self.module, self.sharding
        local_shape = (shard.stop - shard.start,) if shard.mode == "batch" else module.batch_shape
        losses = module.inverse.real.new_empty((steps, *local_shape))
        graph, self.replayed = self.step_graph, False
        inputs = None if graph is None or not graph.warm else self._graph_inputs(steps)
        if graph is None or (graph.warm and inputs is None):
            self._window(losses, step, first_step)  # from the checked product, if kept
        elif not graph.warm:
            self.offer_product(None)
            graph.warm_up(lambda out: self._window(out, step, first_step), losses)
        else:
            self.offer_product(None)  # a recorded window computes its own
            group = self.optimizer.param_groups[0]
            graph.run(
                lambda out: self._window(out, self.optimizer.step, first_step),
                (group["lr"], group["momentum"]),
                inputs,
                losses,
            )
            self.replayed = True
        losses = self._collect(losses)
        self.history.append(losses, first_step)
        self.steps = first_step + steps
        return losses

    def _graph_inputs(self, steps: int) -> Optional[List[Tensor]]:
        """The tensors a recorded window reads and writes, or ``None`` if this window must run
        eagerly: the tuner retunes in it, or SGD has yet to create its momentum buffer."""
        tuner, inverse = self.tuner, self.module.inverse
        if tuner is not None and tuner.due_within(self.steps, steps):
            return None
        buffer = self.optimizer.state.get(inverse, {}).get("momentum_buffer")
        if buffer is None and self.optimizer.param_groups[0]["momentum"] != 0:
            return None
        scale = None if tuner is None else tuner.gradient_scale
        return [t for t in (inverse, self.matrix, buffer, scale) if t is not None]

    def _window(
        self,
        losses: Tensor,  # shape: (steps, ...), this rank's; filled in
        step: Callable[[], Any],
        first_step: int,
    ) -> None:
        tuner, ridge, shard = self.tuner, self.ridge, self.sharding
        formulation = self.module.formulation
        inverse, matrix = self.module.inverse, self.matrix
        product, self.checked_product = self.checked_product, None  # E at X, or None
        at_zero, self._at_zero = self._at_zero and shard.mode == "none", False
        for index in range(len(losses)):
            if at_zero:
                loss, gradient = loss_and_gradient_at_zero(matrix, formulation)
            else:
                loss, gradient = shard.loss_and_gradient(
                    inverse, matrix, formulation, ridge, product=product
                )
            product, at_zero = None, False
            losses[index] = loss
            if tuner is not None:
                if tuner.due(first_step + index):
                    if shard.mode == "none" and self.target is None and not ridge:
                        sample = (loss, squared_norm(gradient))  # what data_sample would give
                    else:
                        sample = shard.data_sample(inverse, matrix, formulation, self.target)
                    tuner.retune(first_step + index, *sample, self.optimizer)
                gradient = tuner.scale(gradient)
            inverse.grad = gradient
            step()
            inverse.grad = gradient = None  # its memory serves the next step's gradient

    def _collect(self, losses: Tensor) -> Tensor:
        """End of a window under a split: every rank gets the whole X, momentum buffer and
        losses (shape ``(steps, ...)``)."""
        shard = self.sharding
        if shard.mode == "columns":
            return shard.sum(losses)
        if shard.mode == "batch":
            inverse = self.module.inverse
            inverse.copy_(shard.gather_batch(inverse))
            buffer = self.optimizer.state.get(inverse, {}).get("momentum_buffer")
            if buffer is not None:
                buffer.copy_(shard.gather_batch(buffer))
            return shard.gather(losses.mT).mT.reshape(len(losses), *inverse.shape[:-2])
        return losses

    @torch.no_grad()
    def measure(self) -> Tensor:  # shape: (..., k, k)
        """Set :attr:`loss` and :attr:`residual` at the current X (no host sync); return the
        product E, for a metric."""
        with autocast_off(self.module.inverse):
            product = self.module()
        error = identity_error(product)
        self.loss = inverse_loss(error, self.module.inverse, self.ridge)
        if self.target is None and not self.ridge:  # relative_residual(product), E - I reused
            self.residual = torch.linalg.matrix_norm(error) / math.sqrt(self.module.order)
        else:
            self.residual = self.residual_at(product)
        return product

    @torch.no_grad()
    def residual_at(self, product: Optional[Tensor] = None) -> Tensor:  # shape: (...)
        r"""What ``tol`` bounds, per matrix: :math:`\lVert E - T\rVert_F/\sqrt k` (``T`` the
        identity, or the projector for a rank-deficient M), or with a ridge the bound on the
        relative distance to its minimiser."""
        module = self.module
        if self.ridge:
            _, gradient = loss_and_gradient(
                module.inverse, self.matrix, module.formulation, self.ridge
            )
            return ridge_error_bound(module.inverse, gradient, self.ridge)
        return relative_residual(module() if product is None else product, self.target)

    @contextmanager
    def keeping_products(self) -> Iterator[None]:
        """Within it, each check keeps the product E it measured (:meth:`offer_product`) for
        the next window's first step, or refinement's first correction
        (:meth:`take_checked_correction`): for a caller that lets nothing else change X
        (:func:`~gdinv_modules.engine.policy.converge`). None is kept past it."""
        self._keeping = True
        try:
            yield
        finally:
            self._keeping = False
            self.offer_product(None)

    def offer_product(self, product: Optional[Tensor]) -> None:  # shape: (..., k, k), E at X
        """Keep E at the current X for the next window, inside :meth:`keeping_products`
        (``None``: keep none, nor a zero start)."""
        self.checked_product = product if self._keeping else None
        self._at_zero = False

    def offer_zero_start(self) -> None:
        """X is 0, inside :meth:`keeping_products`: the next window's first step takes its loss
        and gradient without a product (:func:`loss_and_gradient_at_zero`)."""
        self.offer_product(None)
        self._at_zero = self._keeping

    def check(self, tol: Optional[float]) -> bool:
        """Whether every matrix's residual is at most ``tol`` (one host sync). Measures first
        where :meth:`run` ran since the last :meth:`measure` (and offers that product,
        :meth:`offer_product`).

        Raises:
            DivergenceError: the loss is not finite, or has grown ``GROWTH_LIMIT`` times past
                its first value.
        """
        if self.loss is None or self.residual is None or self.history.first is None:
            self.offer_product(self.measure())
        assert self.loss is not None and self.residual is not None
        first = self.history.first
        first_max = self.loss.max() if first is None else first.max().to(self.loss)
        worst_loss, worst_residual, first_loss = torch.stack(
            [self.loss.max(), self.residual.max().to(self.loss.dtype), first_max]
        ).tolist()
        self.worst_residual = worst_residual
        self.loss = self.residual = None  # measured again after the next window
        if not math.isfinite(worst_loss) or worst_loss > GROWTH_LIMIT * max(first_loss, 1e-30):
            raise DivergenceError(self._divergence_message(worst_loss, first_loss))
        return tol is not None and worst_residual <= tol

    def take_checked_correction(self) -> Optional[Tensor]:  # shape: (..., n, n)
        """Refinement's first correction :math:`I - E`, made in place from the product E the
        last check measured at this X, where E is one side's (:math:`XM` for ``left``,
        :math:`MX` for ``right``), in X's dtype: for a float32 M a rough one, for
        :func:`~gdinv_modules.engine.refinement.refine`'s ``rough``. ``None`` otherwise; the
        product is let go either way. Kept only inside :meth:`keeping_products`."""
        product, self.checked_product = self.checked_product, None
        if product is None or self.module.formulation is SYMMETRIC:
            return None
        product.neg_().diagonal(dim1=-2, dim2=-1).add_(1)
        return product

    def _divergence_message(self, loss: float, first_loss: float) -> str:
        matrix = self.matrix
        if not bool(torch.isfinite(matrix).all()):
            raise NonFiniteMatrixError(
                f"M holds NaN or infinite entries at step {self.steps}: it changed during the "
                "run (the steps never write it); the loss is not finite because M is not"
            )
        group = self.optimizer.param_groups[0]
        formulation = self.module.formulation
        if formulation.spectrum_is_ms:  # exact: a diverged run can afford the Gram matrices
            sigma_max = wide_sigma_max(matrix).max().item()
        else:
            sigma_max = operator_sigma_max(matrix, formulation, iterations=1024, rtol=1e-9)
            sigma_max = sigma_max.max().item()
        estimated = ""
        if self._exact_sigma_max() is None:
            estimated = "give lr a value below this bound" + (
                ", or pass check_rank=True, which gives sigma_max exactly"
                if formulation.spectrum_is_ms
                else ""
            )
        return (
            f"the run diverged at step {self.steps}: loss {loss:.3e} (first {first_loss:.3e}) "
            f"with lr={group['lr']:g}, momentum={group['momentum']:g}; "
            + stable_bound_advice(
                sigma_max,
                group["momentum"],
                self.module.order,
                auto=self.options.lr == "auto",
                estimated=estimated,
            )
        )

    def find_rank(self, *, gram: Optional[Tensor] = None) -> None:  # shape: (..., k, k)
        """The rank check (``check_rank``): M's singular values in the wide dtype, its rank, and
        the projector the product tends to where it lacks full rank, with a
        :class:`SingularMatrixWarning`. ``gram``: M's
        :func:`~gdinv_modules.core.decomposition.wide_gram`, where the caller made it (for a
        further use: the values are taken from it, it is not written)."""
        module, matrix = self.module, self.matrix
        # the tuner and the report reuse them
        self.singular_values = wide_svdvals(matrix, gram=gram)
        self.matrix_rank, self.target = product_target(
            matrix, module.formulation, singular_values=self.singular_values
        )
        if self.target is None:
            return
        k = module.order
        deficient = self.matrix_rank < k
        index = tuple(deficient.nonzero()[0].tolist())  # the first deficient matrix
        rank = int(self.matrix_rank[index])
        where = f" at batch index {index}" if index else ""
        rows, cols = matrix.shape[-2:]
        hint = ""
        other = module.formulation.other_side
        if other is not None:
            side = other[0].order((rows, cols))  # the rank the other side needs
            if rows != cols and bool((self.matrix_rank == side).all()):
                hint = f"; M has full rank {side}: formulation='{other[0]}' gives X with {other[1]}"
        if wide_dtype(matrix.dtype) != matrix.dtype and rank < min(rows, cols):
            # short of its full rank by the dtype's rounding, not by its shape
            singular = self.singular_values[index]
            if bool(singular[-1] > singular[0] * torch.finfo(torch.float64).eps * max(rows, cols)):
                kappa = (singular[0] / singular[-1]).item()
                hint += (
                    f"; M has full rank in float64 (condition number {kappa:.3g}, past "
                    f"1/eps of {str(matrix.dtype).replace('torch.', '')}): convert it to "
                    f"{str(wide_dtype(matrix.dtype)).replace('torch.', '')} for its inverse"
                )
        warn_user(
            f"M is rank-deficient: {int(deficient.sum())} matrix(es), e.g. rank {rank} of "
            f"{k}{where}; the loss cannot go below (k - rank) / k^2 = "
            f"{loss_floor(torch.tensor(rank), k).item():.4g}, and X tends to the "
            "pseudo-inverse from init='zeros' (to another generalised inverse from a random "
            f"start){hint}",
            SingularMatrixWarning,
        )

    def assume_full_rank(self) -> None:
        r"""Record M's full rank without the rank check, where a residual showed it:
        :math:`\lVert I - E\rVert_F < 1` makes the product E invertible."""
        self.matrix_rank = torch.full(self.module.batch_shape, self.module.order)

    def _exact_sigma_max(self) -> Optional[Tensor]:  # shape: (...)
        """M's largest singular value from the rank check's SVD, where it is the product's
        operator's (``left`` and ``right``); else ``None``."""
        if self.singular_values is None or not self.module.formulation.spectrum_is_ms:
            return None
        return self.singular_values[..., 0]

    def effective_parameters(self) -> Tuple[Tensor, Tensor]:  # shapes: (...), (...)
        """The (lr, momentum) each matrix ran with last (the tuner's, or the fixed pair); NaN
        for an ``"auto"`` value no step has used yet (a skipped descent's)."""
        tuner = self.tuner
        if tuner is not None and tuner.lr is not None and tuner.momentum is not None:
            return tuner.lr, tuner.momentum
        group, options = self.optimizer.param_groups[0], self.options
        batch_shape = self.module.batch_shape
        lr = math.nan if options.lr == "auto" else float(group["lr"])
        momentum = math.nan if options.momentum == "auto" else float(group["momentum"])
        return (
            torch.full(batch_shape, lr, dtype=torch.float64),
            torch.full(batch_shape, momentum, dtype=torch.float64),
        )

    def report(self, tol: float, final_residual: Optional[Tensor] = None) -> ConvergenceReport:
        """The convergence report of the steps so far (host syncs: call it at the end). The
        theory's rates need M's spectrum: from the rank check's SVD, or none where the check
        did not run (no SVD of its own). ``final_residual``: the residual at X where
        the caller measured it already; else it is measured here."""
        lr, momentum = self.effective_parameters()
        return ConvergenceReport.from_run(
            self.history.losses,
            self.matrix,
            self.module.formulation,
            lr,
            momentum,
            tol,
            self.residual_at() if final_residual is None else final_residual,
            rank=self.matrix_rank,
            ridge=self.ridge,
            singular_values=self.singular_values,
            loss_every=self.history.every,
            steps=self.steps,
            theory=self.options.check_rank is True or self.singular_values is not None,
        )

    def state_dict(self) -> Dict[str, Any]:
        """What the next window needs besides X and M: the optimizer, steps, history, tuner."""
        state: Dict[str, Any] = {
            "optimizer": self.optimizer.state_dict(),
            "loss_history": self.history.losses.detach().cpu(),
            "steps": self.steps,
        }
        tuner_state = self.tuner.state_dict() if self.tuner is not None else self._tuner_state
        if tuner_state is not None:
            state["tuner"] = tuner_state
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s values (the optimizer's where they are given)."""
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        history = state.get("loss_history")
        if history is not None:
            self.history.restore(history)
        self.steps = state.get("steps", self.steps)
        self._tuner_state = state.get("tuner")
        if self.tuner is not None and self._tuner_state is not None:
            self.tuner.load_state_dict(self._tuner_state)


def _check_scale(matrix: Tensor) -> None:  # shape: (..., m, n)
    """Refuse an M whose scale is past what its dtype's steps hold (core/scaling.py)."""
    exponent = scale_exponent(matrix)
    if exponent:
        band = scale_band(matrix.dtype)
        name = str(matrix.dtype).replace("torch.", "")
        raise MatrixScaleError(
            f"M's largest entry is {matrix.abs().amax().item():.3g}, past the scales {name}'s "
            f"steps hold (2**-{band} to 2**{band}: a learning rate near k^2 / sigma_max^2, and "
            f"M's Gram matrix, stay in range): scale M by a power of two, M * 2**{exponent} "
            f"(exact; its inverse is M's inverse times 2**{-exponent}), or use invert() or "
            "InverseTracker, which do so themselves"
        )
