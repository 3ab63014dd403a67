r"""``InverseTracker``: the inverse of a matrix that keeps changing, kept up to date cheaply.

After M drifts by a relative step :math:`\epsilon` in the spectral norm, the previous inverse
X leaves the correction :math:`C = I - XM_\text{new}` with :math:`\lVert C\rVert_2 \le
\kappa\epsilon`. Where that is below 1, refinement steps :math:`X \leftarrow X + CX` square the
correction: from 0.05, three steps reach 1e-10. So an update counts the steps it needs from the
correction it finds (one host sync), takes them with none, and checks the result (one more).
The steps converge where :math:`\lVert C\rVert_2 < 1`, which lies between
:math:`\lVert C\rVert_F / \sqrt n` and :math:`\lVert C\rVert_F`: where those bounds decide
which matrices are within reach and size their steps to within one, the update takes the
steps the lower bound sizes, and the one more only where the result falls short (a host sync);
else an estimate of :math:`\lVert C\rVert_2` (:func:`spectral_norm_estimate`) decides, at one
more host sync. A jump that leaves it above 0.99, or a refinement whose correction grew after
all, falls back to heavy-ball descent warm from the current X, then refinement, under the
:class:`StoppingPolicy` of :func:`invert` (and its :class:`ConvergenceWarning` where it misses
``tol``).

For a float32 (complex64) M, the first correction is one product in M's dtype, a rough one,
cheaper than one accumulated in float64: it decides the jumps, sizes the steps with its
likely rounding :math:`r` (:func:`~gdinv_modules.engine.refinement.rough_floor`, 4 times
:func:`~gdinv_modules.engine.refinement.product_rounding`) counted in,
:math:`\lVert C_1\rVert \le \lVert C\rVert_2 \lVert C\rVert + r` after a step from it,
and gives the first step. The next steps take rough corrections too as long as, by the same
bounds, that costs no step (C still far above r); the rest, and the correction the update is
judged by, are measured wide. Where the batch's least
:math:`\lVert C\rVert_F^2` lies below its largest :math:`r` (a drift so small that the
rounding would decide the first step), the correction is measured wide instead, at one more
host sync, and the next updates start wide too, until a correction measured wide shows
(against the rounding last estimated) that the rough one would serve. Products in
TF32 or bfloat16 (``fp32_precision``) always take the wide correction.

The gradient of :math:`M^{-1}` needs no unrolled iterations: :math:`d(M^{-1}) = -M^{-1}\,dM\,
M^{-1}`, so :meth:`InverseTracker.forward` returns X through
:func:`~gdinv_modules.engine.implicit.inverse_of`, with the backward
:math:`\nabla_M = -X^H G X^H` at every order, as exact as X is. The update is a side effect on
the tracker's buffers with host syncs, so it runs outside ``torch.func``'s transforms and
``torch.compile``'s graphs (a graph break); inside a transform, update first and use
``inverse_of(M, tracker.inverse)``.
"""

import math
import warnings
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import torch
from torch import Tensor, nn

from gdinv_modules.core.errors import (
    ConvergenceWarning,
    InvalidOptionError,
    MatrixDtypeError,
    MatrixShapeError,
    SingularMatrixError,
    SingularMatrixWarning,
    warn_user,
)
from gdinv_modules.core.functional import Tol, autocast_off, resolve_tol, wide_dtype
from gdinv_modules.core.scaling import scale_exponent, times_power_of_two
from gdinv_modules.core.spectral import spectral_norm
from gdinv_modules.core.validation import (
    check_finite,
    check_matrix,
    check_positive_int,
    check_step_dtype,
)
from gdinv_modules.engine.implicit import inverse_of
from gdinv_modules.engine.inversion import invert
from gdinv_modules.engine.options import StepOptions
from gdinv_modules.engine.policy import StoppingPolicy, converge
from gdinv_modules.engine.refinement import (
    correction,
    ieee_products,
    refine_counted,
    rough_floor,
)
from gdinv_modules.engine.stepper import HeavyBallStepper
from gdinv_modules.nn.inverse_module import InverseModule

__all__ = [
    "InverseTracker",
    "TrackedUpdate",
    "refinement_steps_needed",
    "spectral_norm_estimate",
]

INSIDE_A_TRANSFORM = (
    "inside a torch.func transform (grad, jacrev, jvp, vmap): update outside it, "
    "tracker.update(M.detach()), and inside use inverse_of(M, tracker.inverse) from "
    "gdinv_modules.engine.implicit"
)
MAX_UPDATE_STEPS = 12  # from ||C||_2 = 0.99, 12 squarings pass float64's floor
SPECTRAL_MARGIN = 0.99  # refine where ||I - XM||_2 (its bound or estimate) is below this
POWER_ITERATIONS = 16  # matrix-vector products: O(n^2) each, next to a step's O(n^3)


@dataclass
class TrackedUpdate:
    """What :meth:`InverseTracker.update` returns.

    Attributes:
        inverse: X for the new M, shape ``(..., n, n)``.
        residual: per matrix, ``||XM - I||_F / sqrt(n)`` measured in float64, shape ``(...)``.
        refine_steps: the refinement steps this update took (the batch takes them together).
        steps: the heavy-ball (descent) steps of a jump, else 0.
        jumped: whether M moved too far for the counted refinement steps alone, so that the
            stopping policy took over (descent where it helps, then refinement).
    """

    inverse: Tensor
    residual: Tensor
    refine_steps: int
    steps: int = 0
    jumped: bool = False


@dataclass
class _Plan:
    r"""What the first correction decides: its norms, which matrices refinement reaches, the
    steps the lower bound on :math:`\lVert C\rVert_2` sizes and the most it could need, how
    many of them take rough corrections, and whether a rough first correction would serve the
    next update (``far_above_rounding``)."""

    norm: Tensor
    near: Tensor
    worst: float
    steps: int
    most: int
    rough: int
    far_above_rounding: bool


def refinement_steps_needed(
    residual: float, target: float, spectral: Optional[float] = None
) -> int:
    r"""Squarings that take a correction of Frobenius norm ``residual`` to ``target``, where
    its spectral norm is ``spectral < 1`` (default: the Frobenius norm, which bounds it). After
    t steps :math:`\lVert C^{2^t}\rVert_F \le \lVert C\rVert_2^{2^t - 1}\lVert C\rVert_F`.

    Example:
        >>> refinement_steps_needed(0.05, 1e-10)
        3
        >>> refinement_steps_needed(2.0, 1e-10, spectral=0.5)
        6
    """
    spectral = residual if spectral is None else spectral
    if residual <= target:
        return 0
    return max(1, math.ceil(math.log2(1 + math.log(target / residual) / math.log(spectral))))


def _steps_needed(
    residual: float,
    target: float,
    spectral: Optional[float],
    slack: float,
    rough: int = 1,
) -> Optional[int]:
    r""":func:`refinement_steps_needed`, where ``slack > 0``, for C measured rough (within
    ``slack``, Frobenius) and its first ``rough`` steps taken from rough corrections: each
    leaves at most :math:`\lVert C\rVert_2 \lVert C\rVert + \text{slack}`, and
    :math:`\lVert C\rVert_2^2 + \text{slack}` in the spectral norm; the later steps square
    it. At least the rough steps; ``None`` where the bound leaves :math:`\lVert C\rVert_2`
    near 1 (they cannot be sized)."""
    if slack == 0:
        return refinement_steps_needed(residual, target, spectral)
    spectral = (residual if spectral is None else spectral) + slack
    residual += slack
    for _ in range(rough):
        spectral, residual = spectral**2 + slack, spectral * residual + slack
        if spectral >= SPECTRAL_MARGIN:
            return None
    return rough + refinement_steps_needed(residual, target, spectral)


def _rough_steps(
    residual: float, target: float, spectrals: Tuple[Optional[float], ...], slack: float
) -> int:
    r"""The first steps that can take rough corrections with the count unchanged under each of
    the bounds on :math:`\lVert C\rVert_2` in ``spectrals`` (one rough step at least): where
    C still lies far above the rounding, a rough step squares it as well as a wide one."""
    counts = [_steps_needed(residual, target, spectral, slack) for spectral in spectrals]
    rough = 1
    while rough < min(MAX_UPDATE_STEPS, *(c or 0 for c in counts)) and all(
        _steps_needed(residual, target, spectral, slack, rough + 1) == count
        for spectral, count in zip(spectrals, counts, strict=True)
    ):
        rough += 1
    return rough


def spectral_norm_estimate(
    current: Tensor, iterations: int = POWER_ITERATIONS
) -> Tensor:  # shape: (..., n, n) -> (...)
    r""":math:`\lVert C\rVert_2` per matrix by :func:`spectral_norm`, by what costs least:
    exact from the Gram matrices (on the CPU: one matrix up to about 100 x 100, a few small
    ones), else as ``iterations`` power iterations (from below, like any Rayleigh quotient; the
    caller keeps a margin), by squarings for a batch of small matrices, or from one row, O(n^2)
    an iteration. One row, not the tuner's several: the estimate only sizes refinement, whose
    result is measured, and a matrix it misjudges as within reach ends short of tol and goes to
    the stopping policy.

    Example:
        >>> spectral_norm_estimate(torch.diag(torch.tensor([0.5, -0.25]))).item()
        0.5
    """
    return spectral_norm(current, iterations=iterations, starts=1)


class InverseTracker(nn.Module):
    """Keeps the inverse of a changing square matrix (or batch), warm-started at every update.

    Args:
        matrix: the first M, shape ``(..., n, n)``; its first inverse comes from :func:`invert`.
        inverse: the first X, where it is known already (a restored tracker); no inversion then.
        tol: the tolerance on the residual, or ``"auto"`` (by dtype, as in :func:`invert`).
        max_steps: the most heavy-ball steps of the first inverse or of a jump.

    Attributes:
        inverse: buffer, X for the last M (``state_dict`` holds it with ``matrix``).
        matrix: buffer, the last M.

    Example:
        >>> m = torch.tensor([[4.0, 1.0], [2.0, 3.0]], dtype=torch.float64)
        >>> tracker = InverseTracker(m)
        >>> step = tracker.update(m + 1e-3 * torch.eye(2, dtype=torch.float64))
        >>> step.refine_steps <= 3 and bool(step.residual <= 1e-10)
        True
    """

    inverse: Tensor
    matrix: Tensor

    def __init__(
        self,
        matrix: Tensor,
        *,
        inverse: Optional[Tensor] = None,
        tol: Tol = "auto",
        max_steps: int = 100_000,
    ) -> None:
        super().__init__()
        check_finite(check_matrix(matrix))
        check_step_dtype(matrix.dtype)
        self.tol_option = tol
        self.tol = resolve_tol(tol, matrix.dtype)
        if self.tol is None:
            raise InvalidOptionError("InverseTracker stops at a tolerance: give tol, or 'auto'")
        self.max_steps = check_positive_int(max_steps, name="max_steps")
        self._rough = True  # whether the next update tries a rough first correction
        self._slack: Optional[float] = None  # a rough correction's rounding (times 4), last
        self.register_buffer("matrix", matrix.detach().clone())
        if inverse is None:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", SingularMatrixWarning)
                first = invert(matrix.detach(), tol=self.tol, max_steps=max_steps)
            for record in caught:
                if issubclass(record.category, SingularMatrixWarning):
                    raise SingularMatrixError(
                        f"InverseTracker follows inverses, and M is singular: {record.message}"
                    )
                warnings.warn_explicit(
                    record.message, record.category, record.filename, record.lineno
                )
            self.register_buffer("inverse", first.inverse.detach().clone())
            self.last = TrackedUpdate(
                self.inverse.clone(), first.residual, first.report.refine_steps, first.report.steps
            )
        else:  # a known X, e.g. restored: the next update refines from it
            self.register_buffer("inverse", inverse.detach().to(self.matrix).clone())
            self.inverse.copy_(self._checked(self.inverse))
            self.last = TrackedUpdate(
                self.inverse.clone(), torch.full(matrix.shape[:-2], math.nan), 0
            )

    @torch.compiler.disable  # host syncs and buffer writes: a graph break, not a recompile
    @torch.no_grad()
    def update(self, matrix: Tensor) -> TrackedUpdate:
        """Move X to the inverse of ``matrix``, warm from the current X, and stop at ``tol``,
        in M's dtype whatever autocast surrounds it.

        A matrix of another shape or dtype, one holding NaN or Inf, or a singular one raises
        our error and leaves the tracker as it was.
        """
        if torch.jit.is_tracing():
            raise InvalidOptionError(
                "InverseTracker cannot be traced (torch.jit.trace would replay one update's "
                "steps for every M): use torch.compile, which breaks the graph at the update"
            )
        try:  # the checks' host syncs are the first thing a transform refuses
            matrix = self._checked(matrix).detach()
            with autocast_off(matrix):
                update = self._update(matrix)
            self.matrix.copy_(matrix)  # the first write: a transform's M is refused here
        except RuntimeError as error:  # a torch.func transform: buffers cannot take its M
            if "captured" not in str(error) and "data-dependent" not in str(error):
                raise
            raise InvalidOptionError(f"InverseTracker cannot update {INSIDE_A_TRANSFORM}") from None
        self.inverse.copy_(update.inverse)
        # the caller's X, which later updates do not change: the update's own, a new tensor
        # wherever a step or a jump made it; a copy where no step moved the tracker's X
        if update.inverse.untyped_storage().data_ptr() == self.inverse.untyped_storage().data_ptr():
            update.inverse = self.inverse.clone()
        self.last = update
        return update

    def _update(self, matrix: Tensor) -> TrackedUpdate:
        """Counted refinement steps for the matrices within reach, the stopping policy for the
        ones that jumped: a jump costs those matrices, not the batch."""
        n = matrix.shape[-1]
        inverse = self.inverse
        target = self.tol * math.sqrt(n)
        # where products in M's dtype are rough ones, the first correction may be one
        narrow = matrix.dtype != wide_dtype(matrix.dtype) and ieee_products(matrix.device)
        rough = narrow and self._rough
        slack = None  # a rough correction's likely rounding (times 4), where it is measured
        if rough or (narrow and self._slack is None):
            slack = rough_floor(inverse, matrix)
        current = correction(inverse, matrix, rough=rough)
        plan = self._plan(current, target, slack, rough)
        if plan is None:  # the rough correction lies too near its rounding: measured wide
            current = correction(inverse, matrix, out=current)
            plan = self._plan(current, target, None, rough=False)
        assert plan is not None  # a wide correction always has a plan
        self._rough = narrow and plan.far_above_rounding
        norm, near, steps, most = plan.norm, plan.near, plan.steps, plan.most
        final = norm
        if plan.worst > 0 or bool(near.any()):
            # the steps' corrections overwrite ``current``; the leading ones rough, as planned
            refined, current = refine_counted(inverse, matrix, steps, current, rough=plan.rough)
            reached = torch.linalg.matrix_norm(current).real
            # sized from ||C||_2's least value, one step short at most: that step where needed
            if steps < most and torch.where(near, reached, 0.0).max().item() > target:
                refined, current = refine_counted(refined, matrix, 1, current)
                reached, steps = torch.linalg.matrix_norm(current).real, steps + 1
            inverse = torch.where(near[..., None, None], refined, inverse)  # no host sync
            final = torch.where(near, reached, norm)
        jumped = (~near) | (final > target)  # else short of tol: the policy decides, and warns
        residual = (final / math.sqrt(n)).double().cpu()
        if not bool(jumped.any()):
            return TrackedUpdate(inverse, residual, steps)
        if bool(jumped.all()):  # the whole batch (or the one matrix): in its own shape
            return self._jump(matrix, inverse, final)
        index = jumped.reshape(-1).nonzero().squeeze(-1)
        flat = inverse.reshape(-1, n, n).clone()
        part = self._jump(matrix.reshape(-1, n, n)[index], flat[index], final.reshape(-1)[index])
        flat[index] = part.inverse
        residual = residual.reshape(-1).clone()
        residual[index.cpu()] = part.residual.reshape(-1)
        return TrackedUpdate(
            flat.reshape(inverse.shape),
            residual.reshape(norm.shape),
            steps + part.refine_steps,
            part.steps,
            True,
        )

    def _plan(
        self,
        current: Tensor,  # shape: (..., n, n), C = I - XM, rough or measured wide
        target: float,
        slack: Optional[Tensor],  # shape: (...), a rough C's likely rounding, times 4
        rough: bool,
    ) -> Optional[_Plan]:
        """Which matrices refinement reaches and the steps it takes, from the first
        correction; ``None`` for a rough one that cannot serve (``||C||_F^2`` below its
        rounding, or a bound near 1). Records the batch's largest ``slack`` where given: a
        correction measured wide is judged against the last one."""
        n = current.shape[-1]
        norm = torch.linalg.matrix_norm(current).real
        # ||C||_2 lies in [||C||_F / sqrt(n), ||C||_F]: past the margin from below, a jump
        near = norm < SPECTRAL_MARGIN * math.sqrt(n)
        zero = torch.zeros((), dtype=norm.dtype, device=norm.device)
        if slack is None:
            worst = torch.where(near, norm, zero).max().item()  # the host sync that sizes it
            # judged against the rounding last measured: the least norm, a second host sync,
            # only where the largest does not rule the rough correction out already
            last = self._slack
            far = last is not None and worst**2 >= last and norm.min().item() ** 2 >= last
        else:
            worst, least, self._slack = torch.stack(
                [torch.where(near, norm, zero).max(), norm.min(), slack.max().to(norm.dtype)]
            ).tolist()  # the host sync that sizes the update
            far = least**2 >= self._slack
        if rough and not far:
            return None
        counted = self._slack if rough else 0.0  # the rounding counted into the steps
        steps: Optional[int] = 0
        most: Optional[int] = 0
        bounds: Tuple[Optional[float], ...] = ()  # on ||C||_2: the ones the steps were sized by
        if 0 < worst < SPECTRAL_MARGIN:  # every matrix near: the Frobenius norm bounds ||C||_2
            bounds = (worst / math.sqrt(n), None)
            steps, most = (_steps_needed(worst, target, bound, counted) for bound in bounds)
        if worst >= SPECTRAL_MARGIN or most is None or steps is None or most > steps + 1:
            # the estimate decides which are near, or how many steps they take
            spectral = spectral_norm_estimate(current)
            near = spectral < SPECTRAL_MARGIN
            worst, worst_spectral = torch.stack(
                [torch.where(near, norm, zero).max(), torch.where(near, spectral, zero).max()]
            ).tolist()  # a second host sync
            bounds = (worst_spectral,)
            steps = most = _steps_needed(worst, target, worst_spectral, counted)
        if steps is None or most is None:
            return None
        taken_rough = _rough_steps(worst, target, bounds, counted) if counted and steps else 0
        steps, most = min(steps, MAX_UPDATE_STEPS), min(most, MAX_UPDATE_STEPS)
        return _Plan(norm, near, worst, steps, most, taken_rough, far)

    def _jump(
        self,
        matrix: Tensor,  # shape: (..., n, n), the new M
        inverse: Tensor,  # shape: (..., n, n), X
        correction_norm: Tensor,  # shape: (...), ||I - XM||_F, as the update measured it
    ) -> TrackedUpdate:
        """Warm heavy ball, then refinement, under :func:`invert`'s policy and warning; from
        zeros where the warm X is no closer than zeros (never slower than a cold solve). An M
        whose scale is past what the steps hold is solved as ``2**e M`` (core/scaling.py)."""
        n = matrix.shape[-1]
        warm = correction_norm < math.sqrt(n)
        exponent = scale_exponent(matrix)
        scaled = times_power_of_two(matrix, exponent)
        module = InverseModule(scaled, init="zeros", copy=False)  # the steps never write M
        cold = not bool(warm.any())
        if not cold:
            start = times_power_of_two(inverse, -exponent)
            module.inverse.copy_(torch.where(warm[..., None, None], start, 0))
        # the rank check only where the first steps do not show M's full rank, as invert()'s:
        # a warm solve costs no more than a cold one
        options = StepOptions(lr="auto", momentum="auto", check_rank="auto")
        stepper = HeavyBallStepper(module, options)
        policy = StoppingPolicy(stepper, tol=self.tol, max_steps=self.max_steps, refine=True)
        try:
            with warnings.catch_warnings():  # the check's warning ends the solve there
                warnings.simplefilter("error", SingularMatrixWarning)
                outcome = converge(policy, from_zeros=cold)
        except SingularMatrixWarning:
            raise SingularMatrixError(
                f"InverseTracker follows inverses, and the new M is singular (rank "
                f"{stepper.matrix_rank.min().item()} of {n}); the tracker keeps the last inverse"
            ) from None
        if outcome.message:
            warn_user(outcome.message, ConvergenceWarning)
        report = outcome.report
        found = times_power_of_two(module.inverse.detach(), exponent)
        return TrackedUpdate(found, outcome.residual, report.refine_steps, report.steps, True)

    def forward(self, matrix: Tensor) -> Tensor:  # shape: (..., n, n) -> (..., n, n)
        """Update to ``matrix``, then return X as a differentiable function of it
        (:func:`inverse_of`): the exact implicit derivative at every order, with no unrolled
        steps; each call's graph keeps its own X, whatever later updates do."""
        self.update(matrix)
        return inverse_of(matrix, self.inverse)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "InverseTracker":
        """``.double()``, ``.float()``, ``.to(...)``: a dtype the steps do not run in is refused
        before anything moves, and ``tol="auto"`` follows the new dtype."""
        probe = fn(torch.empty(0, dtype=self.matrix.dtype, device=self.matrix.device))
        if probe.dtype != self.matrix.dtype:
            check_step_dtype(probe.dtype, name="InverseTracker's new dtype")
        super()._apply(fn, *args, **kwargs)
        self._slack = None  # measured on the old device, in the old dtype
        if self.tol_option == "auto":
            self.tol = resolve_tol("auto", self.matrix.dtype)
        return self

    def __prepare_scriptable__(self) -> "InverseTracker":
        raise InvalidOptionError(
            "InverseTracker cannot be scripted (torch.jit.script): an update takes host syncs "
            "and Python control flow; use torch.compile, which breaks the graph at the update"
        )

    def _checked(self, matrix: Tensor) -> Tensor:
        check_matrix(matrix)
        if matrix.shape != self.matrix.shape:
            raise MatrixShapeError(
                f"the tracker follows matrices of shape {tuple(self.matrix.shape)}, got "
                f"{tuple(matrix.shape)} (under torch.func.vmap it sees one slice: it cannot "
                f"update {INSIDE_A_TRANSFORM})"
            )
        if matrix.dtype != self.matrix.dtype:
            raise MatrixDtypeError(
                f"the tracker follows {self.matrix.dtype} matrices, got {matrix.dtype}"
            )
        return check_finite(matrix.to(self.matrix.device))

    def extra_repr(self) -> str:
        return f"shape={tuple(self.matrix.shape)}, dtype={self.matrix.dtype}, tol={self.tol:g}"
