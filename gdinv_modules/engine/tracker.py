r"""``InverseTracker``: the inverse of a matrix that keeps changing, kept up to date cheaply.

After M drifts by a relative step :math:`\epsilon` in the spectral norm, the previous inverse
X has :math:`\lVert I - XM_\text{new}\rVert_2 \le \kappa\epsilon`. Where that is below 1,
refinement steps :math:`X \leftarrow X + (I - XM)X` square the residual: from 0.05, three steps
reach 1e-10. So an update counts the steps it needs from the residual it finds (one host sync),
takes them with none, and checks the result (one more). The steps converge where
:math:`\lVert R\rVert_2 < 1`; a few power iterations of matrix-vector products estimate it
(the Frobenius norm overstates it up to :math:`\sqrt n`-fold). A jump that leaves it above 0.99,
or a refinement whose residual grew after all, falls back to heavy-ball descent warm from the
current X, then refinement, as :func:`invert` does.

The gradient of :math:`M^{-1}` needs no unrolled iterations: :math:`d(M^{-1}) = -M^{-1}\,dM\,
M^{-1}`, so :meth:`InverseTracker.forward` returns X with the backward
:math:`\nabla_M = -X^H G X^H`, as exact as X is.
"""

import math
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import torch
from torch import Tensor, nn

from gdinv_modules.core.errors import MatrixDtypeError, MatrixShapeError
from gdinv_modules.core.functional import default_tol
from gdinv_modules.core.validation import (
    check_finite,
    check_matrix,
    check_positive_float,
    check_positive_int,
    check_step_dtype,
)
from gdinv_modules.engine.inversion import invert, solve
from gdinv_modules.engine.refinement import identity_residual
from gdinv_modules.engine.stepper import HeavyBallStepper
from gdinv_modules.nn.inverse_module import InverseModule

__all__ = [
    "InverseTracker",
    "TrackedUpdate",
    "refinement_steps_needed",
    "spectral_norm_estimate",
]

MAX_UPDATE_STEPS = 12  # from ||R||_2 = 0.99, 12 squarings pass float64's floor
SPECTRAL_MARGIN = 0.99  # refine where the estimate of ||I - XM||_2 is below this
POWER_ITERATIONS = 16  # matrix-vector products: O(n^2) each, next to a step's O(n^3)


@dataclass
class TrackedUpdate:
    """What :meth:`InverseTracker.update` returns.

    Attributes:
        inverse: X for the new M, shape ``(..., n, n)``.
        residual: per matrix, ``||XM - I||_F / sqrt(n)`` measured in float64, shape ``(...)``.
        steps: the refinement steps this update took (the batch takes them together).
        descent_steps: the heavy-ball steps of a jump too large for refinement alone, else 0.
    """

    inverse: Tensor
    residual: Tensor
    steps: int
    descent_steps: int = 0

    @property
    def jumped(self) -> bool:
        """Whether M moved too far for refinement alone (heavy ball ran first)."""
        return self.descent_steps > 0


def refinement_steps_needed(
    residual: float, target: float, spectral: Optional[float] = None
) -> int:
    """Squarings that take a residual of Frobenius norm ``residual`` to ``target``, where its
    spectral norm is ``spectral < 1`` (default: the Frobenius norm, which bounds it). After t
    steps :math:`\\lVert R^{2^t}\rVert_F \\le \\lVert R\rVert_2^{2^t - 1}\\lVert R\rVert_F`.

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


def spectral_norm_estimate(residual: Tensor, iterations: int = POWER_ITERATIONS) -> Tensor:
    """:math:`\\lVert R\rVert_2` per matrix by power iteration on :math:`R^H R` with vectors
    (from below, like any Rayleigh quotient; the caller keeps a margin).

    Example:
        >>> spectral_norm_estimate(torch.diag(torch.tensor([0.5, -0.25]))).item()
        0.5
    """
    generator = torch.Generator().manual_seed(0)
    vector = torch.rand((*residual.shape[:-1], 1), generator=generator, dtype=torch.float64)
    vector = vector.to(residual) + 0.5
    for _ in range(iterations):
        vector = residual.mH @ (residual @ vector)
        vector = vector / torch.linalg.vector_norm(vector, dim=(-2, -1), keepdim=True).clamp_min(
            torch.finfo(torch.float64).tiny
        )
    return torch.linalg.vector_norm(residual @ vector, dim=(-2, -1))


class _TrackedInverse(torch.autograd.Function):
    """X as a function of M, with the implicit gradient of the inverse."""

    @staticmethod
    def forward(ctx: Any, matrix: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(inverse)
        return inverse.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], None]:
        (inverse,) = ctx.saved_tensors
        inverse_h = inverse.mH
        return -(inverse_h @ grad @ inverse_h), None


class InverseTracker(nn.Module):
    """Keeps the inverse of a changing square matrix (or batch), warm-started at every update.

    Args:
        matrix: the first M, shape ``(..., n, n)``; its first inverse comes from :func:`invert`.
        inverse: the first X, where it is known already (a restored tracker); no solve then.
        tol: the tolerance on the relative residual; default by dtype, as in :func:`invert`.
        max_steps: the most heavy-ball steps of the first inverse or of a jump.

    Attributes:
        inverse: buffer, X for the last M (``state_dict`` holds it with ``matrix``).
        matrix: buffer, the last M.

    Example:
        >>> m = torch.tensor([[4.0, 1.0], [2.0, 3.0]], dtype=torch.float64)
        >>> tracker = InverseTracker(m)
        >>> step = tracker.update(m + 1e-3 * torch.eye(2, dtype=torch.float64))
        >>> step.steps <= 3 and bool(step.residual <= 1e-10)
        True
    """

    inverse: Tensor
    matrix: Tensor

    def __init__(
        self,
        matrix: Tensor,
        *,
        inverse: Optional[Tensor] = None,
        tol: Optional[float] = None,
        max_steps: int = 100_000,
    ) -> None:
        super().__init__()
        check_finite(check_matrix(matrix))
        check_step_dtype(matrix.dtype)
        self.tol = check_positive_float(
            default_tol(matrix.dtype) if tol is None else tol, name="tol"
        )
        self.max_steps = check_positive_int(max_steps, name="max_steps")
        self.register_buffer("matrix", matrix.detach().clone())
        if inverse is None:
            first = invert(matrix.detach(), tol=self.tol, max_steps=max_steps)
            self.register_buffer("inverse", first.inverse.detach().clone())
            self.last = TrackedUpdate(
                self.inverse.clone(), first.residual, first.refine_steps, first.report.steps
            )
        else:  # a known X, e.g. restored: the next update refines from it
            self.register_buffer("inverse", inverse.detach().to(self.matrix).clone())
            self.inverse.copy_(self._checked(self.inverse))
            self.last = TrackedUpdate(
                self.inverse.clone(), torch.full(matrix.shape[:-2], math.nan), 0
            )

    @torch.no_grad()
    def update(self, matrix: Tensor) -> TrackedUpdate:
        """Move X to the inverse of ``matrix``, warm from the current X, and stop at ``tol``.

        A matrix of another shape or dtype, or one holding NaN or Inf, raises our error and
        leaves the tracker as it was.
        """
        matrix = self._checked(matrix).detach()
        inverse = self.inverse
        residual = identity_residual(inverse, matrix)
        norm = torch.linalg.matrix_norm(residual)
        n = matrix.shape[-1]
        spectral = spectral_norm_estimate(residual)
        # the host sync that sizes the update
        worst, worst_spectral = torch.stack([norm.max(), spectral.max()]).real.tolist()
        update = None
        if worst_spectral < SPECTRAL_MARGIN:
            target = self.tol * math.sqrt(n)
            steps = min(refinement_steps_needed(worst, target, worst_spectral), MAX_UPDATE_STEPS)
            refined = inverse
            for _ in range(steps):  # no host sync
                refined = refined + residual.to(refined.dtype) @ refined
                residual = identity_residual(refined, matrix)
            final = torch.linalg.matrix_norm(residual)
            final_worst = final.max().item()
            if final_worst <= max(target, worst):  # else the estimate was short: descend
                update = TrackedUpdate(refined, (final / math.sqrt(n)).real.double().cpu(), steps)
        if update is None:  # a jump: heavy ball first, warm, then refinement
            module = InverseModule(matrix.clone(), init="zeros")
            module.inverse.copy_(inverse)
            stepper = HeavyBallStepper(module, lr="auto", momentum="auto")
            result, _ = solve(stepper, tol=self.tol, max_steps=self.max_steps)
            descent_steps = result.report.steps
            update = TrackedUpdate(
                result.inverse, result.residual, result.refine_steps, max(1, descent_steps)
            )
        self.matrix.copy_(matrix)
        self.inverse.copy_(update.inverse)
        update.inverse = self.inverse.clone()  # the caller's: later updates do not change it
        self.last = update
        return update

    def forward(self, matrix: Tensor) -> Tensor:  # shape: (..., n, n) -> (..., n, n)
        """Update to ``matrix``, then return X as a differentiable function of it: the
        backward is the exact implicit gradient ``-X^H G X^H``, with no unrolled steps."""
        self.update(matrix)
        return _TrackedInverse.apply(matrix, self.inverse)

    def _checked(self, matrix: Tensor) -> Tensor:
        check_matrix(matrix)
        if matrix.shape != self.matrix.shape:
            raise MatrixShapeError(
                f"the tracker follows matrices of shape {tuple(self.matrix.shape)}, got "
                f"{tuple(matrix.shape)}"
            )
        if matrix.dtype != self.matrix.dtype:
            raise MatrixDtypeError(
                f"the tracker follows {self.matrix.dtype} matrices, got {matrix.dtype}"
            )
        return check_finite(matrix.to(self.matrix.device))

    def extra_repr(self) -> str:
        return f"shape={tuple(self.matrix.shape)}, dtype={self.matrix.dtype}, tol={self.tol:g}"
