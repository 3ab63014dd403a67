"""A plain heavy-ball loop with a fixed pair: the reference that the tuner is measured against.

With Polyak's pair from the exact SVD it is the best any fixed pair does; tests and benchmarks
count its steps beside the library's.
"""

import math
from typing import Optional

import torch
from torch import Tensor

from gdinv_modules.core.functional import Formulation, loss_and_gradient

__all__ = ["heavy_ball_steps"]


def heavy_ball_steps(
    matrix: Tensor,  # shape: (n, n), or (m, n) for "left"
    lr: float,
    momentum: float,
    *,
    tol: float,
    max_steps: int,
    initial: Optional[Tensor] = None,
    formulation: Formulation = "left",
) -> Optional[int]:
    """Steps a plain heavy-ball loop with a fixed pair takes to a relative residual of ``tol``.

    The reference the tuner is measured against: with Polyak's pair from the exact SVD it is
    the best any fixed pair does. ``None`` if ``max_steps`` are not enough.

    Example:
        >>> from gdinv_modules.core.theory import polyak_parameters
        >>> m = torch.diag(torch.tensor([1.0, 3.0], dtype=torch.float64))
        >>> lr, momentum = polyak_parameters(torch.tensor(3.0), torch.tensor(1.0), 2)
        >>> heavy_ball_steps(m, lr.item(), momentum.item(), tol=1e-10, max_steps=1000)
        39
    """
    n = matrix.shape[-1]
    inverse = torch.zeros_like(matrix.mT) if initial is None else initial.clone()
    velocity = torch.zeros_like(inverse)
    for step in range(max_steps + 1):
        loss, gradient = loss_and_gradient(inverse, matrix, formulation)
        if math.sqrt(n * loss.item()) <= tol:
            return step
        velocity = gradient if step == 0 else momentum * velocity + gradient
        inverse = inverse - lr * velocity
    return None
