r"""M's scale, and the band of scales the steps hold.

The steps' learning rate is about :math:`k^2/\sigma_\max^2`, and the rank check squares M (its
Gram matrix, in the wide dtype): a float32 M whose entries are near 1e-20 asks for a learning
rate past float32's range, a float64 M near 1e200 for a Gram matrix past float64's. So a
matrix's scale is judged by its largest entry, which must lie in :math:`[2^{-B}, 2^B]`
(:func:`scale_band`: :math:`B = 48` for float32 and complex64, 256 for float64 and
complex128).

Outside the band, :func:`scale_exponent` gives the power of two :math:`2^e` that brings the
batch's largest entry into :math:`[1/2, 1)`. Multiplying by a power of two is exact (bar the
underflow of entries far below :math:`\epsilon` times the largest), and
:math:`X' = 2^{-e} X` inverts :math:`M' = 2^e M` with the same product :math:`X'M' = XM`, so
``invert`` and the tracker solve the scaled problem and scale X back; the learning rate of the
scaled problem is :math:`2^{-2e}` times M's, a ridge :math:`2^{2e}` times.
"""

import math

import torch
from torch import Tensor

__all__ = ["scale_band", "scale_exponent", "times_power_of_two", "float_times_power_of_two"]


def scale_band(dtype: torch.dtype) -> int:
    """B: the largest entry of an M the steps hold lies in ``[2**-B, 2**B]``.

    Half the exponent range of M's dtype, less 16 bits (the learning rate, about
    ``k**2 / sigma_max**2``, stays within it for k up to 2**15), and a quarter of the wide
    dtype's (its Gram matrix keeps ``sigma_min**2`` far above the smallest normal number).

    Example:
        >>> scale_band(torch.float32), scale_band(torch.complex128)
        (48, 256)
    """
    steps = _max_exponent(dtype) // 2 - 16
    return min(steps, _max_exponent(torch.float64) // 4)


def _max_exponent(dtype: torch.dtype) -> int:  # 128 for float32, 1024 for float64
    return math.frexp(torch.finfo(dtype).max)[1]


def scale_exponent(matrix: Tensor) -> int:  # shape: (..., m, n)
    r"""e such that :math:`2^e M` has its largest entry in ``[1/2, 1)``, where the batch's
    largest entry lies outside the band of :func:`scale_band`; 0 inside it, or for a zero M
    (one host sync).

    Example:
        >>> scale_exponent(torch.full((2, 2), 3.0)), scale_exponent(torch.full((2, 2), 1e20))
        (0, -67)
    """
    if not matrix.numel():
        largest = matrix.new_zeros(()).abs()
    elif matrix.is_complex():
        largest = matrix.abs().amax()
    else:  # two reductions, no |M| copy
        largest = torch.stack(torch.aminmax(matrix)).abs().amax()
    value = float(largest)
    band = 2.0 ** scale_band(matrix.dtype)
    if value == 0 or 1 / band <= value <= band:
        return 0
    return -int(torch.frexp(largest.double()).exponent)


def times_power_of_two(tensor: Tensor, exponent: int) -> Tensor:
    r""":math:`2^e` times ``tensor``, exact wherever the result is a normal number: in two
    factors, each of which the dtype holds where :math:`2^e` alone may not.

    Example:
        >>> x = times_power_of_two(torch.tensor([1e-30]), 130)  # 2**130 is past float32's range
        >>> bool(times_power_of_two(x, -130) == torch.tensor([1e-30]))
        True
    """
    if exponent == 0:
        return tensor
    half = exponent // 2
    return tensor * 2.0**half * 2.0 ** (exponent - half)


def float_times_power_of_two(value: float, exponent: int) -> float:
    """``value * 2**exponent`` for a Python float: exact, or infinite past float64's range.

    Example:
        >>> float_times_power_of_two(0.75, -2), float_times_power_of_two(1.0, 2000)
        (0.1875, inf)
    """
    try:
        return math.ldexp(value, exponent)
    except OverflowError:
        return math.copysign(math.inf, value)
