r"""Rank-deficient and rectangular M: what the product converges to, and the loss floor.

For the ``left`` formulation the product :math:`XM` can only reach the orthogonal projector
:math:`P = M^+ M` onto M's row space, and for every X the loss splits into two orthogonal parts,

.. math::
    \lVert XM - I \rVert_F^2 = \lVert XM - P \rVert_F^2 + (k - r),

so it cannot go below the floor :math:`(k - r) / k^2` (r the rank, k the order of the product).
Started from :math:`X = 0`, gradient descent stays in M's row space and reaches the
Moore-Penrose pseudo-inverse :math:`M^+`. The ``right`` formulation is the same with
:math:`MX \to MM^+`, the projector onto M's column space.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

from gdinv_modules.core.deprecation import renamed_attributes
from gdinv_modules.core.functional import Formulation, product_order, wide_dtype

__all__ = ["product_target", "loss_floor"]


def product_target(
    matrix: Tensor,
    formulation: Formulation = "left",
    *,
    svd: Optional[Tuple[Tensor, Tensor, Tensor]] = None,
) -> Tuple[Tensor, Optional[Tensor]]:  # shapes: (..., m, n) -> (...), (..., k, k) or None
    """The rank of each matrix, and the projector the product tends to (``None`` where every
    matrix of the batch has full rank k, so the target is the identity).

    One SVD, in float64, at the start of a run; pass ``svd`` (``torch.linalg.svd(M.double(),
    full_matrices=False)``) to reuse one already taken.

    Example:
        >>> rank, target = product_target(torch.tensor([[1.0, 1.0], [1.0, 1.0]]))
        >>> rank.item(), target
        (1, tensor([[0.5000, 0.5000],
                [0.5000, 0.5000]]))
    """
    k = product_order(matrix.shape, formulation)
    wide = matrix.to(wide_dtype(matrix.dtype))
    u, s, vh = torch.linalg.svd(wide, full_matrices=False) if svd is None else svd
    eps = torch.finfo(matrix.real.dtype).eps
    tolerance = s[..., :1] * max(matrix.shape[-2:]) * eps
    keep = s > tolerance
    rank = keep.sum(dim=-1)
    if bool((rank == k).all()):
        return rank, None
    basis = u if formulation == "right" else vh.mH
    kept = basis * keep[..., None, :].to(basis.dtype)
    projector = kept @ kept.mH
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


__getattr__ = renamed_attributes(__name__, {"estimate_target": "product_target"}, globals())
