"""Whether CUDA float32 matrix products may run in TF32, set for a run and restored after."""

from contextlib import contextmanager
from typing import Iterator

import torch

__all__ = ["cuda_matmul_precision"]


@contextmanager
def cuda_matmul_precision(*, tf32: bool) -> Iterator[None]:
    """Set whether CUDA float32 matrix products may use TF32, and restore the setting after.

    Example:
        >>> with cuda_matmul_precision(tf32=False):
        ...     pass
    """
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9
        previous = matmul.fp32_precision
        matmul.fp32_precision = "tf32" if tf32 else "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision = previous
    else:
        previous_allow = matmul.allow_tf32
        matmul.allow_tf32 = tf32
        try:
            yield
        finally:
            matmul.allow_tf32 = previous_allow
