r"""Convergence theory of heavy ball on the inversion loss, as pure functions on tensors.

Write the product as a linear operator of X, :math:`E = \mathcal{A}(X)` (``left``:
:math:`XM`, ``right``: :math:`MX`, ``symmetric``: :math:`(XM + MX)/2`), and let :math:`a_i` be
the singular values of :math:`\mathcal{A}` (for ``left`` and ``right`` they are the singular
values :math:`\sigma_i` of M; :mod:`gdinv_modules.core.spectral` estimates the largest). With
the loss :math:`\lVert \mathcal{A}(X) - I \rVert_F^2 / n^2`:

- the Hessian's eigenvalues are :math:`h_i = 2 a_i^2 / n^2`;
- heavy ball (``torch.optim.SGD`` with momentum :math:`\beta`) is stable while
  :math:`\eta < (1 + \beta)\, n^2 / a_\max^2`;
- each eigen-direction's error evolves by the roots of :math:`z^2 - (1 + \beta - \eta h_i) z +
  \beta`; the residual shrinks per step by the largest root modulus over all :math:`i`;
- the best fixed pair (Polyak) is :math:`\eta^* = 2 n^2 / (a_\max + a_\min)^2`,
  :math:`\beta^* = ((\kappa - 1)/(\kappa + 1))^2` with :math:`\kappa = a_\max / a_\min`, for a
  rate of :math:`(\kappa - 1)/(\kappa + 1)`.
"""

from typing import Tuple

import torch
from torch import Tensor

__all__ = [
    "stable_lr_bound",
    "polyak_parameters",
    "tuned_parameters",
    "heavy_ball_rate",
    "stable_bound_advice",
    "MAX_MOMENTUM",
    "ridge_error_bound",
]

MAX_MOMENTUM = 0.9999  # the largest momentum the tuner chooses


def stable_lr_bound(
    sigma_max: Tensor, momentum: Tensor, n: int
) -> Tensor:  # shapes: (...), (...) -> (...)
    r"""The largest stable learning rate, :math:`(1 + \beta)\, n^2 / a_\max^2`.

    Example:
        >>> stable_lr_bound(torch.tensor(2.0), torch.tensor(0.5), 4).item()
        6.0
    """
    return (1 + momentum) * n * n / sigma_max.square()


def polyak_parameters(
    sigma_max: Tensor, sigma_min: Tensor, n: int
) -> Tuple[Tensor, Tensor]:  # shapes: (...), (...) -> (...), (...)
    r"""The best fixed pair :math:`(\eta^*, \beta^*)` for singular values in
    ``[sigma_min, sigma_max]``.

    Example:
        >>> from gdinv_modules.core.matrices import random_matrix
        >>> s = torch.linalg.svdvals(random_matrix(4, dtype=torch.float64))  # the post's M1
        >>> lr, momentum = polyak_parameters(s[0], s[-1], 4)
        >>> round(lr.item(), 3), round(momentum.item(), 4)
        (6.843, 0.8069)
    """
    lr = 2 * n * n / (sigma_max + sigma_min).square()
    momentum = ((sigma_max - sigma_min) / (sigma_max + sigma_min)).square()
    return lr, momentum


def tuned_parameters(
    sigma_max: Tensor,
    sigma_min: Tensor,
    n: int,
    *,
    lr: "float | None" = None,
    momentum: "float | None" = None,
) -> Tuple[Tensor, Tensor]:  # shapes: (...), (...) -> (...), (...)
    r"""The pair to use when ``lr``, ``momentum`` or both are chosen automatically.

    Both free: Polyak's pair. Momentum given: the learning rate that puts the top of the
    spectrum at the edge of the under-damped region, :math:`\eta = (1 + \sqrt\beta)^2 n^2 /
    (2 a_\max^2)`. Learning rate given: the smallest momentum that under-damps both ends,
    :math:`\beta = \max\{(1 - \sqrt{\eta h_\min})^2, (\sqrt{\eta h_\max} - 1)^2\}`, below 1. Each
    reduces to Polyak's pair when the other value is Polyak's.

    Example:
        >>> lr, momentum = tuned_parameters(torch.tensor(3.0), torch.tensor(1.0), 2, momentum=0.25)
        >>> lr.item(), momentum.item()
        (0.5, 0.25)
    """
    if lr is None and momentum is None:
        return polyak_parameters(sigma_max, sigma_min, n)
    if lr is None:
        assert momentum is not None
        beta = torch.full_like(sigma_max, float(momentum))
        return (1 + beta.sqrt()).square() * n * n / (2 * sigma_max.square()), beta
    if momentum is None:
        rate_min = (lr * 2 * sigma_min.square() / (n * n)).sqrt()
        rate_max = (lr * 2 * sigma_max.square() / (n * n)).sqrt()
        beta = torch.maximum((1 - rate_min).square(), (rate_max - 1).square())
        return torch.full_like(sigma_max, float(lr)), beta.clamp(0.0, MAX_MOMENTUM)
    assert momentum is not None
    return torch.full_like(sigma_max, float(lr)), torch.full_like(sigma_max, float(momentum))


def heavy_ball_rate(
    singular_values: Tensor, lr: Tensor, momentum: Tensor, n: int
) -> Tensor:  # shapes: (..., k), (...), (...) -> (...)
    r"""The residual's contraction per step: the largest root modulus over all :math:`h_i`.

    Above 1 the run diverges. For Polyak's pair it equals :math:`(\kappa - 1)/(\kappa + 1)`.

    Example:
        >>> s = torch.tensor([3.0, 1.0], dtype=torch.float64)
        >>> lr, momentum = polyak_parameters(s[0], s[1], 2)
        >>> round(heavy_ball_rate(s, lr, momentum, 2).item(), 6)
        0.5
    """
    s = singular_values.double()
    lr = torch.as_tensor(lr, dtype=torch.float64, device=s.device)[..., None]
    beta = torch.as_tensor(momentum, dtype=torch.float64, device=s.device)[..., None]
    trace = 1 + beta - lr * 2 * s.square() / (n * n)
    discriminant = (trace.square() - 4 * beta).to(torch.complex128)
    root = discriminant.sqrt()
    modulus = torch.maximum(((trace + root) / 2).abs(), ((trace - root) / 2).abs())
    return modulus.amax(dim=-1)


def stable_bound_advice(
    sigma_max: float, momentum: float, k: int, *, auto: bool = False, estimated: str = ""
) -> str:
    """The sentence every message about a step size past the stable bound ends with; ``auto``:
    lr is chosen already, so the advice is not to choose it; ``estimated``: lr was chosen from
    power iteration's estimate of sigma_max (from below), and this names how to get it exactly
    (empty: it was exact).

    Example:
        >>> print(stable_bound_advice(2.0, 0.5, 4))
        heavy ball is stable only for lr < (1 + momentum) k^2 / sigma_max^2 = 6 for this M ...
    """
    bound = stable_lr_bound(torch.tensor(sigma_max), torch.tensor(momentum), k).item()
    if not auto:
        remedy = "lower lr or use lr='auto'"
    elif estimated:
        remedy = (
            "lr='auto' chose past it from power iteration's estimate of sigma_max, which falls "
            "short now and then (or M changed under the run, or X was written from outside): "
            + estimated
        )
    else:
        remedy = (
            "lr='auto' chose past it, so M changed under the run or X was written from "
            "outside; check both"
        )
    return (
        f"heavy ball is stable only for lr < (1 + momentum) k^2 / sigma_max^2 = {bound:.4g} for "
        f"this M (sigma_max = {sigma_max:.4g}, k = {k}); {remedy}"
    )


def ridge_error_bound(
    inverse: Tensor, gradient: Tensor, ridge: float
) -> Tensor:  # shapes: (..., n, m), (..., n, m) -> (...)
    r"""A bound on the relative distance to the ridge minimiser, :math:`\lVert X - X^*\rVert_F /
    \lVert X\rVert_F \le \lVert \nabla f\rVert_F / (2 \lambda \lVert X\rVert_F)`.

    The ridge term makes the loss :math:`2\lambda`-strongly convex, so the gradient bounds the
    distance to the minimiser without knowing it.

    Example:
        >>> ridge_error_bound(torch.ones(2, 2), torch.full((2, 2), 0.25), 0.5).item()
        0.25
    """
    norm = torch.linalg.matrix_norm(inverse).clamp_min(torch.finfo(inverse.real.dtype).tiny)
    return torch.linalg.matrix_norm(gradient) / (2 * ridge * norm)
