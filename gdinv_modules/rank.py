r"""Rank-deficient and rectangular M: what the estimate converges to, and the loss floor.

For the ``left`` formulation the estimate :math:`XM` can only reach the orthogonal projector
:math:`P = M^+ M` onto M's row space, and for every X the loss splits into two orthogonal parts,

.. math::
    \lVert XM - I \rVert_F^2 = \lVert XM - P \rVert_F^2 + (k - r),

so it cannot go below the floor :math:`(k - r) / k^2` (r the rank, k the estimate's order).
Started from :math:`X = 0`, gradient descent stays in M's row space and reaches the
Moore-Penrose pseudo-inverse :math:`M^+`. The ``right`` formulation is the same with
:math:`MX \to MM^+`, the projector onto M's column space.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

from gdinv_modules.functional import Formulation, estimate_size

__all__ = ["numerical_rank", "estimate_target", "loss_floor"]


def numerical_rank(matrix: Tensor) -> Tensor:  # shape: (..., m, n) -> (...)
    """The rank as ``torch.linalg.matrix_rank`` counts it for M's dtype: the singular values
    above ``sigma_max * max(m, n) * eps``.

    Example:
        >>> numerical_rank(torch.tensor([[1.0, 2.0], [2.0, 4.0]])).item()
        1
    """
    return torch.linalg.matrix_rank(matrix)


def estimate_target(
    matrix: Tensor,
    formulation: Formulation = "left",
    *,
    svd: Optional[Tuple[Tensor, Tensor, Tensor]] = None,
) -> Tuple[Tensor, Optional[Tensor]]:  # shapes: (..., m, n) -> (...), (..., k, k) or None
    """The rank of each matrix, and the projector the estimate tends to (``None`` where every
    matrix of the batch has full rank k, so the target is the identity).

    One SVD, in float64, at the start of a run; pass ``svd`` (``torch.linalg.svd(M.double(),
    full_matrices=False)``) to reuse one already taken.

    Example:
        >>> rank, target = estimate_target(torch.tensor([[1.0, 1.0], [1.0, 1.0]]))
        >>> rank.item(), target
        (1, tensor([[0.5000, 0.5000],
                [0.5000, 0.5000]]))
    """
    k = estimate_size(matrix.shape, formulation)
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False) if svd is None else svd
    eps = torch.finfo(matrix.dtype).eps
    tolerance = s[..., :1] * max(matrix.shape[-2:]) * eps
    keep = s > tolerance
    rank = keep.sum(dim=-1)
    if bool((rank == k).all()):
        return rank, None
    basis = u if formulation == "right" else vh.mT
    kept = basis * keep[..., None, :].to(basis.dtype)
    projector = kept @ kept.mT
    identity = torch.eye(k, dtype=projector.dtype, device=projector.device)
    target = torch.where((rank == k)[..., None, None], identity, projector)
    return rank, target.to(matrix.dtype)


def loss_floor(rank: Tensor, k: int) -> Tensor:  # shape: (...) -> (...)
    """The smallest loss a matrix of this rank allows: ``(k - rank) / k^2``.

    Example:
        >>> loss_floor(torch.tensor(3), 4).item()
        0.0625
    """
    return (k - rank).double() / (k * k)
