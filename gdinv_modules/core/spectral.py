r"""The largest singular value of M, or of the product's operator, as pure functions on
tensors: :math:`\lVert A\rVert_2` from the Gram matrices' eigenvalues (exact), by
squarings of the Gram matrix, or by power iteration on rows, whichever costs least
(:func:`sigma_max_route`). The last two give what power iteration gives, a Rayleigh quotient,
from below: callers keep a margin (the tuner 1%, :mod:`gdinv_modules.engine.tuner`).
"""

import math
from typing import Callable, Literal, Optional, Union

import torch
from torch import Tensor

from gdinv_modules.core.decomposition import gram_matrix, gram_sigma_max
from gdinv_modules.core.formulation import Formulation, as_formulation
from gdinv_modules.core.functional import autocast_off, inverse_shape, product_into

__all__ = [
    "power_norm",
    "power_spectral_norm",
    "squaring_spectral_norm",
    "SigmaMaxRoute",
    "sigma_max_route",
    "spectral_norm",
    "operator_sigma_max",
    "POWER_STARTS",
]

POWER_STARTS = 4  # rows of power iteration per matrix: the largest estimate of them is taken
# The CPU's costs of the three routes to sigma_max, in microseconds on 2 cores (fitted to
# benchmarks/bench_crossover.py in a clean process: one 16 x 16 to one 1024 x 1024, batches up
# to 4096 x 16x16, 16 iterations from one row and 64 from four, float64 and float32; 15% median
# error). With k = min(m, n) and F the dtype's product rate: the Gram eigenvalues cost a call,
# a LAPACK call per matrix, about k^2 (the tridiagonal values) and 6.5 k^3 flops (the product
# and the reduction); a squaring costs a batched product's call, 2 k^3 flops and a pass over
# its bytes; a power iteration on rows costs its dozen small operations, each matrix's
# products, and each entry read once plus once per row.
PRODUCT_FLOPS_PER_US = {torch.float32: 2.1e5, torch.float64: 9e4}  # by the real dtype
GRAM_CALL_US = 100.0
GRAM_MATRIX_US = 1.0
GRAM_K2_US = 0.023
GRAM_FLOPS_PER_K3 = 6.5
PRODUCT_US = 25.0
PRODUCT_BYTE_US = 2.4e-4
POWER_ITERATION_US = 39.0
POWER_MATRIX_US = 0.16
POWER_ENTRY_US = 1.8e-4
POWER_ENTRY_ROW_US = 6.5e-5

SigmaMaxRoute = Literal["gram", "squaring", "rows"]


def power_norm(
    operator: Callable[[Tensor], Tensor],
    start: Tensor,  # shape: (..., a, b), nonzero
    *,
    iterations: int,
    rtol: Optional[float] = None,
    each_row: bool = False,
) -> Tensor:  # shape: (...), float64
    r"""The square root of the largest eigenvalue of a positive semi-definite ``operator``
    (:math:`A^*A`, so the result is :math:`\lVert A\rVert_2`), per matrix, by power iteration
    from ``start``; norms run over the last two dimensions, or with ``each_row`` over the last
    alone: each row of ``start`` is a vector of its own (``operator`` maps rows to rows) and a
    matrix's estimate is the largest of its rows'.

    The Rayleigh quotient never overestimates, and it stays near a lower singular value for as
    long as the start has little of the top singular vector: several rows make that unlikely
    (of a batch of 4096 matrices, one start missed :math:`\sigma_\max` by 4%, the largest of
    four by 6e-7; ``benchmarks/RESULTS.md``), and callers keep a margin. With ``rtol`` it stops
    once every estimate moved by less than ``rtol`` (checked every 8 iterations: one host sync
    each); without, it takes ``iterations`` with no host sync.

    Example:
        >>> r = torch.diag(torch.tensor([0.5, -0.25], dtype=torch.float64))
        >>> power_norm(lambda v: r.mH @ (r @ v), torch.ones(2, 1, dtype=torch.float64),
        ...            iterations=32).item()
        0.5
    """
    dims = (-1,) if each_row else (-2, -1)
    tiny = torch.finfo(start.dtype).tiny
    v = start / torch.linalg.vector_norm(start, dim=dims, keepdim=True).clamp_min(tiny)
    estimate = torch.zeros(start.shape[: -len(dims)], dtype=torch.float64, device=start.device)
    for iteration in range(iterations):
        image = operator(v)
        quotient = (image.conj() * v).sum(dim=dims).real.double()  # <v, A*A v>, |v| = 1
        previous, estimate = estimate, quotient.clamp_min(0).sqrt()
        # scaled by its largest entry first (the operator's image is a new tensor): the
        # squares of A*A v's entries (sigma^4) leave float32's range from sigma about 1e9, and
        # its norm would come out infinite; then the norm is at least 1 where the peak is > 0
        peak = torch.linalg.vector_norm(image, ord=math.inf, dim=dims, keepdim=True)
        image.div_(peak.clamp_min(tiny))
        image.div_(torch.linalg.vector_norm(image, dim=dims, keepdim=True))
        v = torch.where(peak > 0, image, v)  # an image of 0 (0/0 above) leaves v as it was
        del image  # not held while the operator makes the next
        if rtol is not None and iteration % 8 == 7:
            top, before = estimate, previous
            if each_row:  # a matrix moves with its largest estimate
                top, before = top.amax(-1), before.amax(-1)
            if bool(((top - before).abs() <= rtol * top).all()):
                break
    return estimate.amax(-1) if each_row else estimate


def power_spectral_norm(
    matrix: Tensor,  # shape: (..., m, n)
    *,
    iterations: int,
    rtol: Optional[float] = None,
    starts: int = POWER_STARTS,
) -> Tensor:  # shape: (...), float64
    r""":math:`\lVert A\rVert_2` per matrix by :func:`power_norm` on :math:`A A^H`, with row
    vectors: :math:`r \mapsto (r A) A^H`, two products an iteration (on the CPU a batch's row
    times a matrix is 5 to 10 times faster than its matrix times a column, and :math:`A^H` as a
    right factor needs no copy), from ``starts`` Gaussian rows per matrix at once (the
    products read A once for all of them).

    Example:
        >>> a = torch.tensor([[3.0, 0.0], [4.0, 5.0]], dtype=torch.float64)
        >>> round(power_spectral_norm(a, iterations=64).item(), 6)
        6.708204
    """
    # drawn where M is: a batch's rows drawn on the host took milliseconds, and a copy, a call
    device = matrix.device if matrix.is_cuda else torch.device("cpu")
    generator = torch.Generator(device=device).manual_seed(0)
    shape = (*matrix.shape[:-2], starts, matrix.shape[-2])
    start = torch.randn(shape, generator=generator, dtype=torch.float64, device=device)
    start = start.to(matrix)
    with autocast_off(matrix):  # in M's dtype: autocast's bfloat16 products are far off
        return power_norm(
            lambda rows: (rows @ matrix) @ matrix.mH,
            start,
            iterations=iterations,
            rtol=rtol,
            each_row=True,
        )


def squaring_spectral_norm(
    matrix: Tensor,  # shape: (..., m, n)
    *,
    iterations: int,
) -> Tensor:  # shape: (...), float64
    r""":math:`\lVert A\rVert_2` per matrix as ``iterations`` power iterations from every unit
    vector at once. The Gram matrix :math:`G`
    (:func:`~gdinv_modules.core.decomposition.gram_matrix`) is raised to
    :math:`p = 2^{\lceil \log_2 \text{iterations} \rceil}` by squarings, each scaled by its
    trace; the estimate is the largest Rayleigh quotient of :math:`G` at the columns of
    :math:`G^p`, :math:`(G^{2p+1})_{ii} / (G^{2p})_{ii}`: a mean of G's eigenvalues weighted by
    :math:`\lambda^{2p}`, as power iteration's after p iterations, so from below too. One of
    the unit vectors holds at least 1/k of the top eigenvector, so no start misses it.
    :math:`\log_2 p + 2` products of k x k matrices in A's dtype, and no host sync: on the
    CPU cheaper than either other route for batches of small float32 matrices
    (:func:`sigma_max_route`).

    Example:
        >>> a = torch.tensor([[3.0, 0.0], [4.0, 5.0]], dtype=torch.float64)
        >>> round(squaring_spectral_norm(a, iterations=64).item(), 12)  # sqrt(45)
        6.708203932499
    """
    # in M's dtype (autocast's bfloat16 products are far off), into two matrices kept for the
    # call (product_into: a new one per squaring cost page faults worth 3 to 4 times its flops)
    with autocast_off(matrix), torch.no_grad():
        gram = gram_matrix(matrix)
        tiny = torch.finfo(gram.dtype).tiny

        def trace(square: Tensor) -> Tensor:  # (..., k, k) -> (..., 1, 1), at least tiny
            diagonal = square.diagonal(dim1=-2, dim2=-1).real
            return diagonal.sum(-1).clamp_min(tiny)[..., None, None]

        power = gram / trace(gram)  # eigenvalues in [0, 1]: no squaring overflows
        spare = torch.empty_like(power)
        for _ in range(math.ceil(math.log2(max(iterations, 1)))):
            power, spare = product_into(spare, power, power), power
            power.div_(trace(power))
        numerator = torch.linalg.vecdot(power, product_into(spare, gram, power), dim=-2)
        denominator = torch.linalg.vecdot(power, power, dim=-2).real
        quotients = torch.where(denominator > 0, numerator.real / denominator.clamp_min(tiny), 0)
    return quotients.amax(-1).double().clamp_min(0).sqrt()


def sigma_max_route(
    matrix: Tensor, iterations: int, starts: int = POWER_STARTS
) -> SigmaMaxRoute:  # shape: (..., m, n)
    r"""The cheapest way to :math:`\lVert A\rVert_2` at least as good as ``iterations`` power
    iterations from ``starts`` rows: the Gram matrices' eigenvalues (``"gram"``, exact),
    :func:`squaring_spectral_norm` (``"squaring"``) or :func:`power_spectral_norm` (``"rows"``).
    On the CPU by their costs in microseconds fitted on 2 cores, for a batch of :math:`b`
    matrices of :math:`m \times n`, :math:`k = \min(m, n)`:
    :math:`G_0 + b\,(G_1 + G_2\,k^2 + 6.5\,k^3 / F)`,
    :math:`(\log_2 p + 2)\,(Q_0 + b\,(Q\,s\,k^2 + 2k^3 / F))` and
    :math:`\text{iterations}\,(P_0 + b\,(P_1 + (E_0 + E_1\,\text{starts})\,m n))`
    (:data:`GRAM_CALL_US` and the others; F is the dtype's product rate, s its element size).
    On a GPU always ``"rows"``: cuSOLVER decomposes a batch matrix by matrix, and the squarings
    there are not measured yet.

    Example:
        >>> one, f64 = torch.ones(64, 64, dtype=torch.float64), torch.float64
        >>> sigma_max_route(one, 16), sigma_max_route(torch.ones(256, 256), 16)
        ('gram', 'rows')
        >>> sigma_max_route(torch.ones(64, 64, 64), 64)  # float32 products cost a third
        'squaring'
        >>> sigma_max_route(torch.ones(64, 64, 64, dtype=f64), 16, starts=1)
        'rows'
    """
    if matrix.device.type != "cpu":
        return "rows"
    batch, (m, n) = matrix.shape[:-2].numel(), matrix.shape[-2:]
    k = min(m, n)
    rate = PRODUCT_FLOPS_PER_US.get(matrix.dtype.to_real(), PRODUCT_FLOPS_PER_US[torch.float64])
    rate /= 4 if matrix.dtype.is_complex else 1  # a complex product's four real ones
    products = math.ceil(math.log2(max(iterations, 1))) + 2
    product = PRODUCT_BYTE_US * matrix.element_size() * k * k + 2 * k**3 / rate
    entry = POWER_ENTRY_US + POWER_ENTRY_ROW_US * starts
    matrix_gram = GRAM_MATRIX_US + GRAM_K2_US * k * k + GRAM_FLOPS_PER_K3 * k**3 / rate
    costs = {  # in this order: the exact route wins a tie
        "gram": GRAM_CALL_US + batch * matrix_gram,
        "squaring": products * (PRODUCT_US + batch * product),
        "rows": iterations * (POWER_ITERATION_US + batch * (POWER_MATRIX_US + entry * m * n)),
    }
    return min(costs, key=costs.__getitem__)  # type: ignore[return-value]


def spectral_norm(
    matrix: Tensor,  # shape: (..., m, n)
    *,
    iterations: int,
    rtol: Optional[float] = None,
    starts: int = POWER_STARTS,
) -> Tensor:  # shape: (...), float64
    r""":math:`\lVert A\rVert_2` per matrix, as float64, by what costs least
    (:func:`sigma_max_route`): from the Gram matrices' top eigenvalues
    (:func:`~gdinv_modules.core.decomposition.gram_sigma_max`), or as ``iterations`` power
    iterations (from below) by :func:`squaring_spectral_norm` or :func:`power_spectral_norm`
    from ``starts`` rows. Each runs in A's own dtype: for float32 its rounding (about
    :math:`n\,\epsilon_{32}` relative) is far inside the callers' margins, and the float64
    copies cost 5 to 7% of a float32 :func:`~gdinv_modules.engine.inversion.invert`
    (``benchmarks/RESULTS.md``).

    Example:
        >>> a = torch.tensor([[3.0, 0.0], [4.0, 5.0]], dtype=torch.float64)
        >>> round(spectral_norm(a, iterations=16).item(), 12)  # sqrt(45), from the Gram matrix
        6.708203932499
    """
    route = sigma_max_route(matrix, iterations, starts)
    if route == "gram":
        return gram_sigma_max(matrix)
    if route == "squaring":
        return squaring_spectral_norm(matrix, iterations=iterations)
    return power_spectral_norm(matrix, iterations=iterations, rtol=rtol, starts=starts)


def operator_sigma_max(
    matrix: Tensor,
    formulation: Union[str, Formulation] = "left",
    *,
    iterations: int = 64,
    rtol: float = 1e-6,
) -> Tensor:  # shape: (..., m, n) -> (...), float64
    r""":math:`a_\max` per matrix, as float64, in M's dtype: where the operator has M's
    spectrum (``left``, ``right``) M's :func:`spectral_norm` (by the route that costs least
    for ``iterations``), else by power iteration on :math:`\mathcal{A}^*\mathcal{A}` (four
    matrix products an iteration, holding four matrices of X's shape).

    Example:
        >>> m = torch.diag(torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64))
        >>> operator_sigma_max(m).item(), round(operator_sigma_max(m, "symmetric").item(), 6)
        (5.0, 5.0)
    """
    form = as_formulation(formulation)
    if form.spectrum_is_ms:
        return spectral_norm(matrix, iterations=iterations, rtol=rtol)
    # from M^H plus half as much noise: from a start of positive entries alone, 64 iterations
    # fell 2.5% short of the top (past the tuner's 1% margin: heavy ball diverged), from this
    # one at most 0.1% (benchmarks/RESULTS.md)
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(inverse_shape(matrix.shape), generator=generator, dtype=torch.float64)
    start = start.to(matrix)  # the float64 draw let go
    tiny = torch.finfo(matrix.real.dtype).tiny
    with autocast_off(matrix):  # in place: no matrix of X's shape beside the start
        start.div_(2 * torch.linalg.matrix_norm(start, keepdim=True))
        norm = torch.linalg.matrix_norm(matrix, keepdim=True).clamp_min(tiny)
        start.addcdiv_(matrix.mH, norm.to(matrix.dtype))
        return power_norm(
            lambda v: form.normal_operator(v, matrix),
            start,
            iterations=iterations,
            rtol=rtol,
        )
