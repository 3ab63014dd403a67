"""Matrices to invert: the post's two, and classic test matrices for experiments.

Each function returns a float tensor of shape ``(..., n, n)``; random ones are drawn from a
generator seeded with ``seed``, never from the global random state.
"""

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from gdinv_modules.core.errors import InvalidOptionError
from gdinv_modules.core.validation import check_positive_int

__all__ = [
    "random_matrix",
    "diagonal_matrix",
    "hilbert_matrix",
    "random_orthogonal",
    "spd_matrix",
    "low_rank_matrix",
    "conditioned_matrix",
]


def _check_batch_shape(batch_shape: Sequence[int]) -> tuple:
    for dim in batch_shape:
        check_positive_int(dim, name="batch_shape entries")
    return tuple(batch_shape)


def _geometric_spectrum(n: int, condition: float) -> Tensor:  # shape: (n,), float64
    """``n`` values spread geometrically from 1 to ``condition``."""
    if not condition >= 1.0 or condition == float("inf"):
        raise InvalidOptionError(f"condition must be a finite number >= 1, got {condition!r}")
    return torch.logspace(0.0, math.log10(condition), n, dtype=torch.float64)


def random_matrix(
    n: int, *, seed: int = 314, batch_shape: Sequence[int] = (), dtype: torch.dtype = torch.float32
) -> Tensor:  # shape: (*batch_shape, n, n)
    """``torch.rand`` right after seeding, drawn in float32 then cast: the post's M1 for n = 4.

    Example:
        >>> random_matrix(4)[0]
        tensor([0.7196, 0.6295, 0.6667, 0.3385])
    """
    check_positive_int(n, name="n")
    generator = torch.Generator().manual_seed(seed)
    shape = (*_check_batch_shape(batch_shape), n, n)
    return torch.rand(shape, generator=generator, dtype=torch.float32).to(dtype)


def diagonal_matrix(
    values: Optional[Sequence[float]] = None, *, n: int = 4, dtype: torch.dtype = torch.float32
) -> Tensor:  # shape: (n, n)
    """``diag(values)``, by default ``diag(1, ..., n)``: the post's M2 for n = 4.

    Example:
        >>> diagonal_matrix(n=2)
        tensor([[1., 0.],
                [0., 2.]])
    """
    if values is None:
        check_positive_int(n, name="n")
        values = range(1, n + 1)
    values = [float(v) for v in values]
    if not values:
        raise InvalidOptionError("values of a diagonal matrix must not be empty")
    return torch.diag(torch.tensor(values, dtype=dtype))


def hilbert_matrix(n: int, *, dtype: torch.dtype = torch.float64) -> Tensor:  # shape: (n, n)
    """The Hilbert matrix ``1 / (i + j + 1)``: symmetric positive definite, very ill-conditioned.

    Example:
        >>> hilbert_matrix(2)
        tensor([[1.0000, 0.5000],
                [0.5000, 0.3333]], dtype=torch.float64)
    """
    check_positive_int(n, name="n")
    index = torch.arange(n, dtype=torch.float64)
    return (1.0 / (index[:, None] + index[None, :] + 1.0)).to(dtype)


def random_orthogonal(
    n: int, *, seed: int = 314, batch_shape: Sequence[int] = (), dtype: torch.dtype = torch.float32
) -> Tensor:  # shape: (*batch_shape, n, n)
    """A Haar-random orthogonal matrix (QR of a Gaussian matrix, signs fixed): its inverse is M^T.

    Example:
        >>> q = random_orthogonal(3, dtype=torch.float64)
        >>> torch.allclose(q @ q.mT, torch.eye(3, dtype=torch.float64))
        True
    """
    check_positive_int(n, name="n")
    generator = torch.Generator().manual_seed(seed)
    shape = (*_check_batch_shape(batch_shape), n, n)
    gaussian = torch.randn(shape, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    return (q * signs[..., None, :]).to(dtype)


def spd_matrix(
    n: int,
    *,
    condition: float = 100.0,
    seed: int = 314,
    batch_shape: Sequence[int] = (),
    dtype: torch.dtype = torch.float32,
) -> Tensor:  # shape: (*batch_shape, n, n)
    """A symmetric positive definite matrix ``Q diag(s) Q^T`` with eigenvalues spread
    geometrically from 1 to ``condition``: its condition number is ``condition`` exactly.

    Example:
        >>> s = torch.linalg.svdvals(spd_matrix(5, condition=10.0, dtype=torch.float64))
        >>> round(float(s[0] / s[-1]), 6)
        10.0
    """
    eigenvalues = _geometric_spectrum(n, condition)
    q = random_orthogonal(n, seed=seed, batch_shape=batch_shape, dtype=torch.float64)
    spd = (q * eigenvalues) @ q.mT
    return ((spd + spd.mT) / 2).to(dtype)


def low_rank_matrix(
    n: int,
    rank: int,
    *,
    rows: Optional[int] = None,
    seed: int = 314,
    batch_shape: Sequence[int] = (),
    dtype: torch.dtype = torch.float32,
) -> Tensor:  # shape: (*batch_shape, rows or n, n)
    """A Gaussian matrix of exactly ``rank`` (the product of ``rows x rank`` and ``rank x n``
    Gaussian factors): singular, or rectangular, for pseudo-inverse experiments.

    Example:
        >>> torch.linalg.matrix_rank(low_rank_matrix(5, 2, dtype=torch.float64)).item()
        2
    """
    rows = n if rows is None else rows
    for value, name in ((n, "n"), (rank, "rank"), (rows, "rows")):
        check_positive_int(value, name=name)
    if rank > min(rows, n):
        raise InvalidOptionError(f"rank must be at most min(rows, n) = {min(rows, n)}, got {rank}")
    generator = torch.Generator().manual_seed(seed)
    batch = _check_batch_shape(batch_shape)
    left = torch.randn((*batch, rows, rank), generator=generator, dtype=torch.float64)
    right = torch.randn((*batch, rank, n), generator=generator, dtype=torch.float64)
    return (left @ right / math.sqrt(rank)).to(dtype)


def conditioned_matrix(
    n: int,
    *,
    condition: float = 100.0,
    seed: int = 314,
    batch_shape: Sequence[int] = (),
    dtype: torch.dtype = torch.float32,
) -> Tensor:  # shape: (*batch_shape, n, n)
    """A general (non-symmetric) matrix ``U diag(s) V^T``, U and V Haar-random orthogonal, with
    singular values spread geometrically from 1 to ``condition``: its condition number is
    ``condition`` exactly, as in the matrices of PyTorch's own inverse tests.

    Example:
        >>> s = torch.linalg.svdvals(conditioned_matrix(6, condition=50.0, dtype=torch.float64))
        >>> round(float(s[0] / s[-1]), 6)
        50.0
    """
    singular_values = _geometric_spectrum(n, condition)
    u = random_orthogonal(n, seed=seed, batch_shape=batch_shape, dtype=torch.float64)
    v = random_orthogonal(n, seed=seed + 1, batch_shape=batch_shape, dtype=torch.float64)
    return ((u * singular_values) @ v.mT).to(dtype)
