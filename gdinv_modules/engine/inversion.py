r"""``invert``: one call that inverts a matrix (or a batch) by gradient descent, then refines it.

The run takes heavy-ball steps (:class:`HeavyBallStepper`, lr and momentum ``"auto"``) with no
Trainer and no host sync per step, under the :class:`StoppingPolicy` that ``LitInverse`` and
the tracker use too: growing windows, a stop within ``max(4, 5%)`` steps of ``tol``, a
verdict where the residual stalls or the budget cannot reach ``tol``, then refinement steps.
A matrix that still misses ``tol`` gets a :class:`ConvergenceWarning` naming the cause and
what to do (``check_errors=True`` raises :class:`ConvergenceError`).
"""

import inspect
from dataclasses import dataclass, replace
from typing import Any, Optional, Union

import torch
from torch import Tensor

from gdinv_modules.core.errors import (
    ConvergenceError,
    ConvergenceWarning,
    InvalidOptionError,
    MatrixScaleError,
    SingularMatrixError,
    warn_user,
)
from gdinv_modules.core.formulation import Formulation, FormulationName
from gdinv_modules.core.functional import Tol, resolve_tol, wide_dtype
from gdinv_modules.core.report import ConvergenceReport
from gdinv_modules.core.scaling import scale_exponent, times_power_of_two
from gdinv_modules.core.validation import (
    check_device,
    check_matrix,
    check_positive_int,
    check_step_dtype,
)
from gdinv_modules.engine.implicit import inverse_of
from gdinv_modules.engine.options import StepOptions
from gdinv_modules.engine.policy import Outcome, StoppingPolicy, converge
from gdinv_modules.engine.stepper import HeavyBallStepper
from gdinv_modules.nn.inverse_module import Init, InverseModule

__all__ = ["invert", "InverseResult"]

INSIDE_VMAP = (
    "invert() cannot run inside torch.func.vmap (its steps stop at host-synced checks): it "
    "takes a batch itself, so call it outside on the stacked matrices, shape (..., n, n), and "
    "pass X in; inside, inverse_of(M, X) from gdinv_modules.engine.implicit gives X with M's "
    "derivatives"
)


@dataclass
class InverseResult:
    """What :func:`invert` returns.

    Attributes:
        inverse: the approximate inverse, shape ``(..., n, m)``, on M's device, of M's dtype.
        residual: per matrix, what ``tol`` bounds (``||E - I||_F / sqrt(k)``, the
            formulation's product E: ``XM`` for ``"left"``; measured in float64), on the CPU,
            shape ``(...)``.
        converged: whether each matrix reached the tolerance, shape ``(...)``.
        steps_to_tol: per matrix, the descent step at which it reached the tolerance (the
            descent steps run, where refinement took it there or it never got there); ``(...)``.
        losses: the loss of every descent step (of every ``loss_every``-th), ``(kept, ...)``.
        report: the :class:`ConvergenceReport`: the descent ``steps`` and ``refine_steps``,
            the measured and predicted rates, why descent stopped (``descent_stop``).
        message: why a matrix missed ``tol`` and what to do (the warning's text); empty where
            every matrix reached it.
    """

    inverse: Tensor
    residual: Tensor
    converged: Tensor
    steps_to_tol: Tensor
    losses: Tensor
    report: ConvergenceReport
    message: str = ""

    @classmethod
    def from_outcome(cls, inverse: Tensor, losses: Tensor, outcome: Outcome) -> "InverseResult":
        """The result of a run under a :class:`StoppingPolicy`."""
        report = outcome.report
        steps = [report.steps if step is None else step for step in report.steps_to_tol]
        return cls(
            inverse=inverse,
            residual=outcome.residual,
            converged=outcome.converged,
            steps_to_tol=torch.tensor(steps).reshape(outcome.residual.shape),
            losses=losses,
            report=report,
            message=outcome.message,
        )


def invert(
    matrix: Tensor,
    *,
    tol: Tol = "auto",
    max_steps: int = 100_000,
    refine: bool = True,
    formulation: Union[FormulationName, Formulation] = "left",
    init: Init = "zeros",
    seed: int = 314,
    check_errors: bool = False,
    device: Optional[Union[str, torch.device]] = None,
    **options: Any,
) -> InverseResult:
    r"""Invert ``matrix`` (shape ``(..., n, n)``) by heavy-ball gradient descent, then refine.

    ``tol`` bounds the residual ``||E - I||_F / sqrt(k)`` (``E = XM`` for ``"left"``, ``MX``
    for ``"right"``, both averaged for ``"symmetric"``): ``"auto"`` is 1e-5 for float32 and
    complex64, 1e-10 for float64 and complex128. The steps run on M's device (or ``device``)
    in M's dtype, with no Trainer; the result has M's dtype and device. M is never modified,
    and any strides will do. An empty M or batch gives an empty result.

    Where M requires grad, X is a differentiable function of it with the inverse's implicit
    derivative at every order (:func:`~gdinv_modules.engine.implicit.inverse_of`): no unrolled
    steps; the steps themselves run in M's dtype whatever autocast surrounds them.

    A rank-deficient or rectangular ``(..., m, n)`` M gets its Moore-Penrose pseudo-inverse
    (from the default ``init="zeros"``) and a :class:`SingularMatrixWarning` where it lacks
    full rank; ``ridge`` adds Tikhonov regularisation. Refinement needs a square M of full
    rank and no ridge; elsewhere descent runs to ``tol``.

    Args:
        tol: the tolerance on the residual, or ``"auto"``.
        max_steps: the most descent steps.
        refine: end with refinement steps (:class:`StoppingPolicy`); ``False`` descends to
            ``tol`` alone.
        formulation: ``"left"`` (X M = I), ``"right"`` (M X = I) or ``"symmetric"``.
        init: the first X, ``"zeros"`` or ``"random"``.
        seed: the seed of a random first X.
        check_errors: raise :class:`ConvergenceError` where a matrix misses ``tol``, instead
            of a :class:`ConvergenceWarning` (as ``torch.linalg.inv_ex``'s flag).
        device: where the steps run; ``None``: M's device.
        **options: the steps' :class:`StepOptions` (``lr``, ``momentum`` and ``check_rank``
            default to ``"auto"`` here: the rank check runs only where the first steps do not
            show M's full rank); an unknown name is refused with the closest one.

    Example:
        >>> m = torch.tensor([[4.0, 1.0], [2.0, 3.0]], dtype=torch.float64)
        >>> result = invert(m)
        >>> bool(result.converged), bool(result.residual <= 1e-10)
        (True, True)
        >>> torch.allclose(result.inverse, torch.linalg.inv(m), atol=1e-12)
        True
    """
    own = [name for name in inspect.signature(invert).parameters if name != "options"]
    step_options = StepOptions.from_mapping(
        {"lr": "auto", "momentum": "auto", "check_rank": "auto", **options},
        owner="invert()",
        also=own,
    )
    check_matrix(matrix, square=False, allow_empty=True)
    check_step_dtype(matrix.dtype)
    check_positive_int(max_steps, name="max_steps")
    if device is not None:
        device = check_device(device)
    judged = resolve_tol(tol, matrix.dtype)
    if judged is None:
        raise InvalidOptionError("invert() stops at a tolerance: give tol a number, or 'auto'")
    if matrix.numel() == 0:
        return _empty_result(matrix, judged)
    work = (matrix if device is None else matrix.to(device)).detach()
    try:  # the scale's host sync is the first thing vmap refuses
        exponent = scale_exponent(work)  # 0 unless M's scale is past what the steps hold
    except RuntimeError as error:
        if "vmap" not in str(error):
            raise
        raise InvalidOptionError(INSIDE_VMAP) from None
    if exponent:
        work = times_power_of_two(work, exponent)
        step_options = step_options.for_scaled_matrix(exponent)
    # M itself, not a copy: nothing here writes it
    module = InverseModule(work, formulation=formulation, init=init, seed=seed, copy=False)
    stepper = HeavyBallStepper(module, step_options)
    policy = StoppingPolicy(stepper, tol=judged, max_steps=max_steps, refine=refine)
    outcome = converge(policy, from_zeros=init == "zeros")
    inverse = times_power_of_two(module.inverse.detach(), exponent)
    if exponent and not bool(inverse.isfinite().all()):
        name = str(matrix.dtype).replace("torch.", "")
        wide = str(wide_dtype(matrix.dtype)).replace("torch.", "")
        raise MatrixScaleError(
            f"M's inverse is past {name}'s range (M's largest entry is "
            f"{matrix.abs().amax().item():.3g}): "
            + (f"use {wide}, or " if wide != name else "")
            + f"invert M * 2**{exponent}, whose inverse is M's times 2**{-exponent}"
        )
    inverse = inverse.to(device=matrix.device, dtype=matrix.dtype)
    if matrix.requires_grad and torch.is_grad_enabled():
        if not (stepper.target is None and not stepper.ridge and work.shape[-1] == work.shape[-2]):
            raise SingularMatrixError(
                "invert()'s gradient is the inverse's, -X^H G X^H: M must be square, of full "
                "rank and without a ridge (here X is a pseudo-inverse or a ridge minimiser); "
                "pass M.detach() for X alone"
            )
        inverse = inverse_of(matrix, inverse)
    outcome = replace(outcome, report=outcome.report.of_unscaled_matrix(exponent))
    result = InverseResult.from_outcome(inverse, stepper.history.losses.cpu(), outcome)
    if result.message:
        if check_errors:
            raise ConvergenceError(result.message)
        warn_user(result.message, ConvergenceWarning)
    return result


def _empty_result(matrix: Tensor, tol: float) -> InverseResult:
    """The result for an empty M or an empty batch, as ``torch.linalg.inv`` gives it."""
    batch_shape = matrix.shape[:-2]
    return InverseResult(
        inverse=matrix.new_zeros((*batch_shape, matrix.shape[-1], matrix.shape[-2])),
        residual=torch.zeros(batch_shape, dtype=torch.float64),
        converged=torch.ones(batch_shape, dtype=torch.bool),
        steps_to_tol=torch.zeros(batch_shape, dtype=torch.int64),
        losses=torch.empty((0, *batch_shape), dtype=matrix.real.dtype),
        report=ConvergenceReport.empty(tol, batch_shape),
    )
