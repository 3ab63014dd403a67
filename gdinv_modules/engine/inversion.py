r"""``invert``: one call that inverts a matrix (or a batch) by gradient descent, then refines it.

The run, with no Trainer and no host sync per step:

1. **Descent.** :class:`HeavyBallStepper` takes windows of steps with lr and momentum ``"auto"``.
   After each window one host sync checks the residual; windows grow with the run (a power of
   2, at most 2.5% of the steps so far, at least 4), so descent stops within ``max(4, 5%)``
   steps of the step where every matrix got there, even where a check lands on an upswing of
   heavy ball's oscillating residual, and a window length repeats often enough for a CUDA graph
   to replay it.
2. **No silent grind.** From the residuals measured at the checks, descent stops early, with
   the reason, when the residual has stopped falling (the dtype's floor: heavy ball bottoms out
   near :math:`0.3\,\epsilon\,\kappa^2`) or when, at the measured rate, it would need more
   steps than ``max_steps``.
3. **Refinement** (``refine=True``, for a square M of full rank without a ridge): descent stops
   as soon as :math:`\lVert I - XM\rVert_F \le 1/4`, where refinement steps
   (:func:`~gdinv_modules.engine.refinement.refine`) square the residual, down to the dtype's
   floor.

A matrix that still misses ``tol`` gets a :class:`ConvergenceWarning` naming the cause and
what to do (``check=True`` raises :class:`ConvergenceError`).
"""

import difflib
import math
import warnings
from dataclasses import dataclass, replace
from typing import Any, List, Literal, Optional, Tuple, Union

import torch
from torch import Tensor

from gdinv_modules.core.deprecation import warn_renamed
from gdinv_modules.core.errors import ConvergenceError, ConvergenceWarning, InvalidOptionError
from gdinv_modules.core.functional import (
    Formulation,
    default_tol,
    inverse_product,
    product_order,
    relative_residual,
    wide_dtype,
)
from gdinv_modules.core.report import ConvergenceReport
from gdinv_modules.core.validation import (
    check_finite,
    check_matrix,
    check_positive_float,
    check_positive_int,
    check_step_dtype,
)
from gdinv_modules.engine.refinement import refine as refinement_steps
from gdinv_modules.engine.stepper import HeavyBallStepper
from gdinv_modules.nn.inverse_module import Init, InverseModule

__all__ = ["invert", "InverseResult", "check_window", "solve"]

SWITCH_RESIDUAL = 0.25  # ||I - X M||_F at which descent hands over to refinement
MIN_DECISION_STEPS = 256  # no stall or budget verdict before this many steps
STALL_GAIN = 2.0  # a residual that fell less than this over the last quarter of the run ...
EXPECTED_GAIN = 100.0  # ... where the tuner's theory expected this much, has stalled
BUDGET_MARGIN = 2.0  # stop when the predicted steps exceed the budget this many times


@dataclass
class InverseResult:
    """What :func:`invert` returns.

    Attributes:
        inverse: the approximate inverse, shape ``(..., n, m)``, on M's device, of M's dtype.
        residual: per matrix, what ``tol`` bounds (the relative residual ``||XM - I||_F /
            sqrt(n)``, measured in float64; see :meth:`HeavyBallStepper.residual_at`), on the
            CPU, shape ``(...)``.
        converged: whether each matrix reached the tolerance, shape ``(...)``.
        steps: per matrix, the descent step at which it reached the tolerance (the descent
            steps run where refinement took it there, or where it never got there); ``(...)``.
        refine_steps: the refinement steps taken after descent (the batch takes them together).
        losses: the loss of every descent step (of every ``loss_every``-th), ``(kept, ...)``.
        report: the :class:`ConvergenceReport` (measured and predicted rates, why descent
            stopped).
    """

    inverse: Tensor
    residual: Tensor
    converged: Tensor
    steps: Tensor
    refine_steps: int
    losses: Tensor
    report: ConvergenceReport


def check_window(steps: int) -> int:
    """The length of the window after ``steps`` descent steps: a power of 2, at most 2.5% of
    ``steps`` and at least 4.

    Example:
        >>> [check_window(steps) for steps in (0, 100, 1000, 10_000)]
        [4, 4, 16, 128]
    """
    window = max(4, steps // 40)
    return 1 << (window.bit_length() - 1)


def invert(
    matrix: Tensor,
    *,
    tol: Optional[float] = None,
    max_steps: int = 100_000,
    refine: bool = True,
    lr: Union[float, Literal["auto"]] = "auto",
    momentum: Union[float, Literal["auto"]] = "auto",
    formulation: Formulation = "left",
    init: Init = "zeros",
    seed: int = 314,
    loss_every: int = 1,
    ridge: float = 0.0,
    check_rank: bool = True,
    cuda_graph: bool = False,
    check: bool = False,
    device: Optional[Union[str, torch.device]] = None,
    **unknown: Any,
) -> InverseResult:
    r"""Invert ``matrix`` (shape ``(..., n, n)``) by heavy-ball gradient descent, then refine.

    ``tol`` bounds the relative residual ``||XM - I||_F / sqrt(n)``, by default 1e-5 for
    float32 and complex64, 1e-10 for float64 and complex128. The steps run on M's device (or
    ``device``) in M's dtype, with no Trainer; the result has M's dtype and device. M is never
    modified, and any strides will do. An empty M or batch gives an empty result.

    A rank-deficient or rectangular ``(..., m, n)`` M gets its Moore-Penrose pseudo-inverse
    (from the default ``init="zeros"``) and a :class:`SingularMatrixWarning` where it lacks
    full rank; ``ridge`` adds Tikhonov regularisation (see :class:`LitInverse`). Refinement
    needs a square M of full rank and no ridge; elsewhere descent runs to ``tol``.

    Args:
        tol: the tolerance on the relative residual.
        max_steps: the most descent steps.
        refine: end with refinement steps (the module docstring); ``False`` descends to
            ``tol`` alone.
        device: where the steps run; ``None``: M's device.
        check: raise :class:`ConvergenceError` where a matrix misses ``tol``, instead of a
            :class:`ConvergenceWarning`.

    The other options are :class:`LitInverse`'s.

    Example:
        >>> m = torch.tensor([[4.0, 1.0], [2.0, 3.0]], dtype=torch.float64)
        >>> result = invert(m)
        >>> bool(result.converged), bool(result.residual <= 1e-10)
        (True, True)
        >>> torch.allclose(result.inverse, torch.linalg.inv(m), atol=1e-12)
        True
    """
    if "accelerator" in unknown:  # invert() ran under a Trainer before
        warn_renamed("invert(accelerator=...)", "invert(device=...)")
        accelerator = unknown.pop("accelerator")
        if device is None and accelerator != "auto":
            device = "cuda" if accelerator == "gpu" else accelerator
    if unknown:
        name = next(iter(unknown))
        close = [o for o in _OPTIONS if name.startswith(o) or o.startswith(name)]
        close = close or difflib.get_close_matches(name, _OPTIONS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; the options are {list(_OPTIONS)}"
        raise InvalidOptionError(f"invert() has no option {name!r}{hint}")
    check_matrix(matrix, square=formulation == "symmetric", allow_empty=True)
    check_step_dtype(matrix.dtype)
    check_positive_int(max_steps, name="max_steps")
    tol = default_tol(matrix.dtype) if tol is None else check_positive_float(tol, name="tol")
    if matrix.numel() == 0:
        return _empty_result(matrix, tol)
    check_finite(matrix)
    work = matrix if device is None else matrix.to(device)
    module = InverseModule(work, formulation=formulation, init=init, seed=seed)
    options = dict(lr=lr, momentum=momentum, ridge=ridge, loss_every=loss_every)
    stepper = HeavyBallStepper(module, check_rank=check_rank, cuda_graph=cuda_graph, **options)
    result, message = solve(stepper, tol=tol, max_steps=max_steps, refine=refine)
    result.inverse = result.inverse.to(device=matrix.device, dtype=matrix.dtype)
    if message:
        if check:
            raise ConvergenceError(message)
        warnings.warn(message, ConvergenceWarning, stacklevel=2)
    return result


def solve(
    stepper: HeavyBallStepper, *, tol: float, max_steps: int, refine: bool = True
) -> Tuple[InverseResult, str]:
    """Descend from the stepper's X, then refine: the steps of :func:`invert`, for a stepper
    built already (from zeros, or warm from an earlier inverse). Returns the result and the
    warning's message, empty where every matrix reached ``tol``."""
    module = stepper.module
    matrix = module.resolve_matrix()
    stepper.start()
    square = matrix.shape[-1] == matrix.shape[-2]
    refinable = refine and square and not stepper.ridge and stepper.target is None
    k = product_order(matrix.shape, module.formulation)
    target = max(tol, SWITCH_RESIDUAL / math.sqrt(k)) if refinable else tol
    stop = _descend(stepper, target, max_steps)
    inverse = module.inverse.detach()
    refine_steps = 0
    if refinable:
        refinement = refinement_steps(inverse, matrix)
        inverse, refine_steps = refinement.inverse, refinement.steps
        residual = refinement.residual.real.double().cpu()
    else:
        residual = _final_residual(stepper)
    report = stepper.report(tol)
    converged = residual <= tol
    report = replace(
        report,
        converged=converged.reshape(-1).tolist(),
        final_residual=residual.reshape(-1).tolist(),
        refine_steps=refine_steps,
        descent_stop=stop.reason,
    )
    batch_shape = matrix.shape[:-2]
    steps = torch.tensor(
        [report.steps if step is None else step for step in report.steps_to_tol]
    ).reshape(batch_shape)
    result = InverseResult(
        inverse=inverse,
        residual=residual.reshape(batch_shape),
        converged=converged.reshape(batch_shape),
        steps=steps,
        refine_steps=refine_steps,
        losses=stepper.history.losses.cpu(),
        report=report,
    )
    if bool(converged.all()):
        return result, ""
    message = (
        f"{int((~converged).sum())} of {converged.numel()} matrices did not reach "
        f"tol={tol:g} (largest residual {residual.max().item():.3e}) after "
        f"{report.steps} descent steps"
        + (f" and {refine_steps} refinement steps" if refinable else "")
        + f": {stop.advice(matrix.dtype, refinable)}"
    )
    return result, message


_OPTIONS = (
    "tol", "max_steps", "refine", "lr", "momentum", "formulation", "init", "seed",
    "loss_every", "ridge", "check_rank", "cuda_graph", "check", "device",
)  # fmt: skip


@dataclass
class _Stop:
    """Why descent stopped, and the numbers behind it."""

    reason: str  # "tol", "stalled", "budget" or "max_steps"
    residual: float = math.nan
    rate: float = math.nan
    needed: float = math.nan
    steps: int = 0
    max_steps: int = 0

    def advice(self, dtype: torch.dtype, refined: bool) -> str:
        """What to tell a user whose matrix missed tol."""
        if self.reason == "stalled":
            floor = f"the residual stopped falling at {self.residual:.2e}: {_name(dtype)}'s floor"
            if wide_dtype(dtype) != dtype:
                wider = _name(wide_dtype(dtype))
                return f"{floor}; use {wider}" + ("" if refined else " (or refine=True)")
            return (
                f"{floor}, and no wider dtype helps: regularise with ridge > 0 "
                "(Tikhonov), which bounds the condition number"
            )
        if self.reason == "budget":
            return (
                f"at the measured rate of {self.rate:.6f} per step it would need about "
                f"{self.needed:.3g} more steps, past max_steps={self.max_steps}: M is too "
                "ill-conditioned for this budget; use ridge > 0 (Tikhonov), or raise max_steps"
            )
        if self.reason == "max_steps":
            return f"max_steps={self.max_steps} ran out; raise it, or use ridge > 0"
        return "refinement did not reach it; see result.report"


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _descend(stepper: HeavyBallStepper, target: float, max_steps: int) -> _Stop:
    """Windows of descent steps until every residual is at most ``target``, or a stop."""
    record: List[Tuple[int, float]] = []  # (step, best worst-residual so far) at each check
    while True:
        converged = stepper.check(target)
        best = min(stepper.worst_residual, record[-1][1] if record else math.inf)
        record.append((stepper.steps, best))
        if converged:
            return _Stop("tol", best, steps=stepper.steps)
        if stepper.steps >= max_steps:
            return _Stop("max_steps", best, steps=stepper.steps, max_steps=max_steps)
        verdict = _verdict(stepper, record, target, max_steps)
        if verdict is not None:
            return verdict
        stepper.run(min(check_window(stepper.steps), max_steps - stepper.steps))


def _verdict(
    stepper: HeavyBallStepper, record: List[Tuple[int, float]], target: float, max_steps: int
) -> Optional[_Stop]:
    """A stall or an exhausted budget, judged on the last quarter of the run."""
    steps, best = record[-1]
    if steps < MIN_DECISION_STEPS:
        return None
    then_step, then_best = next((s, r) for s, r in record if s >= steps - steps // 4)
    span = steps - then_step
    if span < MIN_DECISION_STEPS // 4 or not (best > 0 and then_best > 0):
        return None
    gain = then_best / best
    rate = gain ** (-1 / span)
    tuner = stepper.tuner
    if tuner is not None and tuner.sigma_min_sq is not None:
        # Polyak's rate for the tuner's estimates: the smallest singular value is never
        # underestimated, so this rate is never slower than the run's own can become. The
        # tuner read kappa at its last retune, in the same host sync as its pair.
        kappa = tuner.condition
        theory = (kappa - 1) / (kappa + 1)
        if gain < STALL_GAIN and theory**span <= 1 / EXPECTED_GAIN:
            return _Stop("stalled", best, rate, steps=steps, max_steps=max_steps)
        rate = min(rate, theory)  # the budget verdict takes the more hopeful of the two
    needed = math.log(target / best) / math.log(rate) if rate < 1 else math.inf
    if needed > BUDGET_MARGIN * (max_steps - steps) and steps >= max_steps / 50:
        return _Stop("budget", best, rate, needed, steps, max_steps)
    return None


def _final_residual(stepper: HeavyBallStepper) -> Tensor:  # shape: (...), float64 on the CPU
    """What ``tol`` bounds at the final X, measured in the wide dtype."""
    if stepper.ridge:
        return stepper.residual_at().double().cpu()
    module = stepper.module
    wide = wide_dtype(module.inverse.dtype)
    matrix = module.resolve_matrix().to(wide)
    product = inverse_product(module.inverse.detach().to(wide), matrix, module.formulation)
    target = None if stepper.target is None else stepper.target.to(wide)
    return relative_residual(product, target).double().cpu()


def _empty_result(matrix: Tensor, tol: float) -> InverseResult:
    """The result for an empty M or an empty batch, as ``torch.linalg.inv`` gives it."""
    batch_shape = matrix.shape[:-2]
    count = batch_shape.numel()
    inverse = matrix.new_zeros((*batch_shape, matrix.shape[-1], matrix.shape[-2]))
    report = ConvergenceReport(
        tol=tol,
        steps=0,
        converged=[True] * count,
        steps_to_tol=[0] * count,
        final_residual=[0.0] * count,
        measured_rate=[None] * count,
        predicted_rate=[None] * count,
        polyak_rate=[None] * count,
        lr=[math.nan] * count,
        momentum=[math.nan] * count,
        sigma_max=[None] * count,
        sigma_min=[None] * count,
        rank=[0] * count,
        loss_floor=[0.0] * count,
        descent_stop="empty",
    )
    return InverseResult(
        inverse=inverse,
        residual=torch.zeros(batch_shape, dtype=torch.float64),
        converged=torch.ones(batch_shape, dtype=torch.bool),
        steps=torch.zeros(batch_shape, dtype=torch.int64),
        refine_steps=0,
        losses=torch.empty((0, *batch_shape), dtype=matrix.real.dtype),
        report=report,
    )
