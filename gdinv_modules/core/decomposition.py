"""M's singular value decomposition in the wide dtype (float64 or complex128), where it runs
fastest.

cuSOLVER has a batched SVD only for matrices of at most 32 x 32: past that, torch loops over
the batch, a launch and a host sync per matrix, and a batch of 4096 x 64x64 took seconds on an
H200 where LAPACK on the host's cores takes milliseconds. Such a batch is decomposed on the CPU
and its factors come back to M's device; a single matrix, or a batch of small ones, stays on
the GPU.

On the CPU, torch decomposes a batch one matrix after another, and LAPACK spreads a small
matrix over no more than one core: a batch of matrices of at most :data:`SPLIT_MAX_N` is split
into one part per torch thread, decomposed side by side (the calls release the GIL) by the
calling thread and helper threads that end with the call (2 cores, float64 eigenvalues:
64 x 64x64 4.6 ms against 6.6 batched, 1024 x 32x32 15.7 against 26.1; 16 x 128x128 14.6
against 8.4, where LAPACK threads each matrix itself). Helper threads kept between calls hold
OpenMP teams, and while they lived every later parallel region of the process waited on
libgomp's throttled barriers: a 64 x 64 product took 108 µs against 7
(``benchmarks/RESULTS.md``).
"""

import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, Tuple, TypeVar

import torch
from torch import Tensor

__all__ = [
    "wide_svd",
    "wide_svdvals",
    "wide_gram",
    "wide_sigma_max",
    "gram_sigma_max",
    "gram_matrix",
    "on_host",
]

BATCHED_SVD_MAX_N = 32  # cuSOLVER's gesvdjBatched: the largest m and n it decomposes batched
GRAM_MAX_CONDITION = 1e4  # the largest condition number whose values the Gram matrix gives
SPLIT_MAX_N = 64  # the largest matrices a CPU batch is split across threads for
SPLIT_MIN_WORK = 16 * 64**3  # the least batch work (count x min(m, n)^3) worth the threads

Factors = TypeVar("Factors", Tensor, Tuple[Tensor, ...])


def _side_by_side(function: Callable[[Tensor], Factors], matrix: Tensor) -> Factors:
    """``function(matrix)``, a batched decomposition; for a CPU batch of small matrices worth
    it (:data:`SPLIT_MAX_N`, :data:`SPLIT_MIN_WORK`), one part of the batch per torch thread,
    at once (the same LAPACK routines: a matrix's memory may be aligned otherwise in its part,
    its factors a few ulps apart)."""
    threads, count = torch.get_num_threads(), matrix.shape[:-2].numel()
    if (
        matrix.device.type != "cpu"
        or min(threads, count) < 2
        or max(matrix.shape[-2:]) > SPLIT_MAX_N
        or count * min(matrix.shape[-2:]) ** 3 < SPLIT_MIN_WORK
    ):
        return function(matrix)
    batch_shape = matrix.shape[:-2]
    parts = matrix.reshape(-1, *matrix.shape[-2:]).tensor_split(min(threads, count))
    # helpers that end with the call (module docstring): never a pool kept between calls
    with ThreadPoolExecutor(len(parts) - 1, thread_name_prefix="gdinv-decomposition") as pool:
        rest = [pool.submit(function, part) for part in parts[1:]]
        done = [function(parts[0]), *(future.result() for future in rest)]

    def joined(pieces: Tuple[Tensor, ...]) -> Tensor:
        whole = torch.cat(pieces)
        return whole.reshape(*batch_shape, *whole.shape[1:])

    if isinstance(done[0], tuple):
        return tuple(joined(pieces) for pieces in zip(*done, strict=True))  # type: ignore[return-value]
    return joined(tuple(done))  # type: ignore[arg-type,return-value]


def on_host(matrix: Tensor) -> bool:  # shape: (..., m, n)
    """Whether M's decompositions run on the host rather than on its GPU: a batch of matrices
    past :data:`BATCHED_SVD_MAX_N` on a CUDA device, where they cost many steps (module
    docstring).

    Example:
        >>> on_host(torch.ones(8, 64, 64)), on_host(torch.ones(64, 64))  # on the CPU already
        (False, False)
    """
    batched = matrix.shape[:-2].numel() > 1
    return matrix.is_cuda and batched and max(matrix.shape[-2:]) > BATCHED_SVD_MAX_N


def _decomposable(matrix: Tensor, dtype: torch.dtype) -> Tensor:
    """M in ``dtype``, on the host where its decompositions run there (:func:`on_host`)."""
    if on_host(matrix):
        return matrix.to(device="cpu", dtype=dtype)
    return matrix.to(dtype)


def _wide(matrix: Tensor) -> Tensor:
    return _decomposable(matrix, torch.complex128 if matrix.dtype.is_complex else torch.float64)


def wide_svd(matrix: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """The thin SVD ``(U, S, Vh)`` of ``matrix`` (shape ``(..., m, n)``) in the wide dtype, on
    M's device.

    Example:
        >>> u, s, vh = wide_svd(torch.diag(torch.tensor([3.0, 2.0])))
        >>> s.dtype, s.tolist()
        (torch.float64, [3.0, 2.0])
    """
    thin_svd = functools.partial(torch.linalg.svd, full_matrices=False)
    u, s, vh = _side_by_side(thin_svd, _wide(matrix))
    return u.to(matrix.device), s.to(matrix.device), vh.to(matrix.device)


def gram_matrix(matrix: Tensor) -> Tensor:  # (..., m, n) -> (..., k, k), k = min(m, n)
    r"""The smaller Gram matrix, :math:`M^H M` or (for a wide M) :math:`M M^H`, in M's dtype:
    its eigenvalues are the squares of M's singular values.

    Example:
        >>> gram_matrix(torch.tensor([[3.0, 4.0]]))
        tensor([[25.]])
    """
    return matrix.mH @ matrix if matrix.shape[-2] >= matrix.shape[-1] else matrix @ matrix.mH


def wide_gram(matrix: Tensor) -> Tensor:  # (..., m, n) -> (..., k, k), k = min(m, n)
    """:func:`gram_matrix` of M in the wide dtype, where M's decompositions run
    (:func:`on_host`): the one :func:`wide_svdvals` takes its values from, for a caller that
    has a further use for it.

    Example:
        >>> wide_gram(torch.tensor([[3.0, 4.0]])).dtype
        torch.float64
    """
    return gram_matrix(_wide(matrix))


def wide_sigma_max(matrix: Tensor) -> Tensor:  # shape: (..., m, n) -> (...)
    r"""The largest singular value of ``matrix`` in the wide dtype, on M's device: the square
    root of the Gram matrix's largest eigenvalue, accurate to :math:`\epsilon` relative
    whatever the condition number (the rounding of :math:`M^H M` is at most about
    :math:`n\epsilon\lVert M\rVert_2^2`).

    Example:
        >>> round(wide_sigma_max(torch.tensor([[3.0, 0.0], [4.0, 5.0]])).item(), 12)  # sqrt(45)
        6.708203932499
    """
    return gram_sigma_max(_wide(matrix)).to(matrix.device)


def gram_sigma_max(matrix: Tensor) -> Tensor:  # shape: (..., m, n) -> (...), float64
    r"""The largest singular value of ``matrix`` from its Gram matrix's top eigenvalue, taken
    in M's own dtype (:func:`wide_sigma_max` takes it in the wide one), on M's device, as
    float64: rounded by about :math:`\min(m, n)\,\epsilon` of M's dtype relative, whatever the
    condition number (4e-6 for float32 at n = 64), where an estimate with a margin of a
    percent needs no float64 copy of M and its Gram matrix.

    Example:
        >>> round(gram_sigma_max(torch.tensor([[3.0, 0.0], [4.0, 5.0]])).item(), 5)  # sqrt(45)
        6.7082
    """
    # in M's dtype: autocast's bfloat16 Gram matrix is far off
    with torch.autocast(device_type=matrix.device.type, enabled=False):
        gram = gram_matrix(_decomposable(matrix, matrix.dtype))
    values = _side_by_side(torch.linalg.eigvalsh, gram)
    return values[..., -1].clamp_min(0).sqrt().to(device=matrix.device, dtype=torch.float64)


def wide_svdvals(
    matrix: Tensor,  # shape: (..., m, n)
    *,
    gram: Optional[Tensor] = None,  # shape: (..., k, k), k = min(m, n), M's wide_gram
) -> Tensor:  # shape: (..., k)
    r"""The singular values of ``matrix`` in the wide dtype, largest first, on M's device.
    ``gram``: :func:`wide_gram` of M, where the caller made it (it is read, not written).

    First as the square roots of the Gram matrix's eigenvalues (:math:`M^H M`, or
    :math:`M M^H` for a wide M), a third cheaper than an SVD; these are accurate to at worst
    :math:`\min(m, n)\,\epsilon\,\kappa^2` relative, so they are kept only where every
    matrix's condition number is at most :data:`GRAM_MAX_CONDITION` (1e-5 or better at
    n = 1024), and the SVD's values are taken otherwise.

    Example:
        >>> s = wide_svdvals(torch.tensor([[2.0, 0.0], [0.0, 3.0]]))
        >>> s.dtype, [round(value, 12) for value in s.tolist()]
        (torch.float64, [3.0, 2.0])
    """
    # the wide copy is let go: the SVD, where needed, makes another
    values = _side_by_side(torch.linalg.eigvalsh, wide_gram(matrix) if gram is None else gram)
    values = values.flip(-1).clamp_min(0).sqrt()
    if not bool((values[..., -1] * GRAM_MAX_CONDITION >= values[..., 0]).all()):
        values = _side_by_side(torch.linalg.svdvals, _wide(matrix))
    return values.to(matrix.device)
