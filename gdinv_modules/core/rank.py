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

from functools import partial
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from gdinv_modules.core.decomposition import wide_svd, wide_svdvals
from gdinv_modules.core.formulation import Formulation, as_formulation
from gdinv_modules.core.functional import wide_dtype

__all__ = ["product_target", "loss_floor", "rank_cutoff"]


def rank_cutoff(sigma_max: Tensor, dtype: torch.dtype, shape: Tuple[int, int]) -> Tensor:
    """The singular value below which M counts as rank-deficient: ``sigma_max * eps`` of M's
    dtype, where the SVD runs in a wider dtype than M (float32 input: its values are exact in
    float64, and refinement with X stored in float32 inverts M while ``kappa * eps < 1``); times
    ``max(m, n)`` where M is already float64, for the SVD's own rounding (numpy's rule).

    Example:
        >>> rank_cutoff(torch.tensor(1.0), torch.float32, (7, 7)).item() == 2.0**-23
        True
    """
    eps = torch.finfo(dtype).eps
    factor = 1 if wide_dtype(dtype) != dtype else max(shape)
    return sigma_max * (eps * factor)


def product_target(
    matrix: Tensor,
    formulation: Union[str, Formulation] = "left",
    *,
    singular_values: Optional[Tensor] = None,
) -> Tuple[Tensor, Optional[Tensor]]:  # shapes: (..., m, n) -> (...), (..., k, k) or None
    """The rank of each matrix, and the projector the product tends to (``None`` where every
    matrix of the batch has full rank k, so the target is the identity).

    M's singular values, in float64, with :func:`rank_cutoff` (pass ``singular_values``, from
    :func:`~gdinv_modules.core.decomposition.wide_svdvals`, to reuse them); the singular
    vectors, a costlier SVD, only where some matrix lacks full rank.

    Example:
        >>> rank, target = product_target(torch.tensor([[1.0, 1.0], [1.0, 1.0]]))
        >>> rank.item(), target
        (1, tensor([[0.5000, 0.5000],
                [0.5000, 0.5000]]))
    """
    form = as_formulation(formulation)
    k = form.order(matrix.shape)
    cutoff = partial(rank_cutoff, dtype=matrix.dtype, shape=tuple(matrix.shape[-2:]))
    s = wide_svdvals(matrix) if singular_values is None else singular_values
    rank = (s > cutoff(s[..., :1])).sum(dim=-1)
    if bool((rank == k).all()):
        return rank, None
    u, s, vh = wide_svd(matrix)
    keep = s > cutoff(s[..., :1])
    rank = keep.sum(dim=-1)
    basis = form.projector_basis(u, vh)
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
