r"""Refinement steps: the last digits of an inverse, after gradient descent.

The step :math:`X \leftarrow X + R X` with :math:`R = I - X M` squares the residual,
:math:`R \leftarrow R^2`, so it converges quadratically wherever :math:`\lVert R\rVert_2 < 1`:
a residual of 0.25 reaches float64's floor in five steps of two matrix products, where heavy
ball needs about :math:`(\kappa/2) \ln(0.25/\text{tol})` steps. :math:`R` is accumulated in
float64 for float32 matrices (complex128 for complex64), so the float32 result is limited by
how X is stored, not by how its error was measured: more accurate than LAPACK's float32
inverse.

Safeguard: where descent left :math:`\lVert R\rVert_F \ge 1` (a transient, or a float32 floor
above 1 for condition numbers above a few thousand), the steps start instead from
:math:`X_0 = M^H / (\lVert M\rVert_1 \lVert M\rVert_\infty)`, from which they always converge
for an invertible M (Newton-Schulz's start).
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from gdinv_modules.core.functional import wide_dtype

__all__ = [
    "refine",
    "Refinement",
    "identity_residual",
    "safe_start",
    "MAX_REFINE_STEPS",
    "SAFE_RESIDUAL",
]

MAX_REFINE_STEPS = 100  # from the safe start, 2 log2(kappa) + 6 steps: kappa up to about 1e14
SAFE_RESIDUAL = 1.0  # ||I - X M||_F below this: the steps converge from X itself


@dataclass
class Refinement:
    """What :func:`refine` did.

    Attributes:
        inverse: the refined X, M's dtype, shape ``(..., n, n)``.
        residual: per matrix, :math:`\\lVert I - XM\\rVert_F / \\sqrt n` in the wide dtype.
        steps: refinement steps taken (the batch takes them together).
        restarted: per matrix, whether the steps started from the safe start instead of X.
    """

    inverse: Tensor
    residual: Tensor
    steps: int
    restarted: Tensor


def identity_residual(inverse: Tensor, matrix: Tensor) -> Tensor:  # (..., n, n) in wide dtype
    """:math:`I - XM`, accumulated in the wide dtype."""
    wide = wide_dtype(matrix.dtype)
    residual = -(inverse.to(wide) @ matrix.to(wide))
    residual.diagonal(dim1=-2, dim2=-1).add_(1)
    return residual


def safe_start(matrix: Tensor) -> Tensor:  # shape: (..., n, n)
    r""":math:`M^H / (\lVert M\rVert_1 \lVert M\rVert_\infty)`: :math:`\lVert I - X_0 M\rVert_2
    < 1` for every invertible M.

    Example:
        >>> safe_start(torch.tensor([[2.0, 0.0], [0.0, 4.0]]))
        tensor([[0.1250, 0.0000],
                [0.0000, 0.2500]])
    """
    scale = torch.linalg.matrix_norm(matrix, 1) * torch.linalg.matrix_norm(matrix, float("inf"))
    return matrix.mH / scale[..., None, None]


@torch.no_grad()
def refine(
    inverse: Tensor,  # shape: (..., n, n), X from descent
    matrix: Tensor,  # shape: (..., n, n), M, square and invertible
    *,
    max_steps: int = MAX_REFINE_STEPS,
) -> Refinement:
    """Refinement steps :math:`X \\leftarrow X + (I - XM) X` until the residual stops falling.

    Each matrix keeps its best X: a step that does not lower a matrix's residual is not
    taken for it, and the steps end once no matrix improves (one host sync per step).

    Example:
        >>> m = torch.tensor([[4.0, 1.0], [2.0, 3.0]])
        >>> rough = torch.linalg.inv(m) + 0.01
        >>> result = refine(rough, m)
        >>> bool(result.residual.max() < 1e-6), result.restarted.item()
        (True, False)
    """
    n = matrix.shape[-1]
    residual = identity_residual(inverse, matrix)
    norm = torch.linalg.matrix_norm(residual)
    restarted = ~(norm < SAFE_RESIDUAL)  # NaN too
    if bool(restarted.any()):
        start = safe_start(matrix)
        inverse = torch.where(restarted[..., None, None], start, inverse)
        residual = identity_residual(inverse, matrix)
        norm = torch.linalg.matrix_norm(residual)
    steps = 0
    while steps < max_steps:
        candidate = inverse + (residual.to(inverse.dtype) @ inverse)
        candidate_residual = identity_residual(candidate, matrix)
        candidate_norm = torch.linalg.matrix_norm(candidate_residual)
        better = candidate_norm < norm
        if not bool(better.any()):
            break
        steps += 1
        inverse = torch.where(better[..., None, None], candidate, inverse)
        residual = torch.where(better[..., None, None], candidate_residual, residual)
        norm = torch.where(better, candidate_norm, norm)
    return Refinement(inverse, norm / n**0.5, steps, restarted)
