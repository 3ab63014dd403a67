r"""``HeavyBallTuner``: SGD's learning rate and momentum chosen from spectral estimates of M.

- :math:`a_\max` (the largest singular value of the product's operator; :math:`\sigma_\max(M)`
  for ``left``/``right``) comes before the first step, in M's dtype, by whichever costs least
  (:mod:`gdinv_modules.core.spectral`: the Gram matrices' eigenvalues, their squarings, or
  power iteration), times a safety margin, since a Rayleigh quotient never overestimates and
  heavy ball near Polyak's pair is unstable for any singular value above
  :math:`\sqrt{\hat a_\max^2 + \hat a_\min^2}`.
- :math:`a_\min` is estimated as the run goes, for free: with the residual :math:`R` and the
  gradient :math:`G = \tfrac{2}{n^2}\mathcal{A}^*(R)` already at hand,
  :math:`\lVert \mathcal{A}^* R\rVert_F^2 / \lVert R\rVert_F^2 = n^2 \lVert G\rVert_F^2 /
  (4 L)` is a Rayleigh quotient of :math:`\mathcal{A}\mathcal{A}^*`, never below
  :math:`a_\min^2`. Its running minimum falls towards :math:`a_\min^2` as the fast directions of
  the residual die out, and the pair is retuned (Polyak's, or
  :func:`~gdinv_modules.core.theory.tuned_parameters` when one of the two is fixed) at steps
  0, 4, 8, ... with gaps growing like t/8: a handful of host syncs per run, none per step.
- Given ``sigma_max`` exactly (M's largest singular value, which the rank check's SVD has
  computed already for ``left`` and ``right``), it takes no power iteration; the margin stays
  (float32 runs stall above tol without it; ``benchmarks/RESULTS.md``).
  The smallest is still estimated as the run goes, even where the SVD knows it: Polyak's
  exact pair from the first step shows heavy ball's transient, a residual that grows about
  kappa/5-fold before it falls, which the rising momentum of the estimate avoids.
- A ridge :math:`\lambda` adds :math:`\lambda k^2` to every :math:`a_i^2`; a rank-deficient M
  is measured on the part of the residual that can still shrink (the caller passes the loss
  above the floor).
- A batch gets one momentum, the largest of the matrices' (a larger momentum keeps a pair
  stable), and one learning rate per matrix: SGD's ``lr`` is the largest and each matrix's
  gradient is scaled by its share, its momentum buffer rescaled when that share changes.
"""

from typing import Any, Dict, Optional, Union

import torch
from torch import Tensor

from gdinv_modules.core.errors import DivergenceError
from gdinv_modules.core.formulation import Formulation, as_formulation
from gdinv_modules.core.spectral import operator_sigma_max
from gdinv_modules.core.theory import (
    MAX_MOMENTUM,
    stable_bound_advice,
    stable_lr_bound,
    tuned_parameters,
)

__all__ = ["HeavyBallTuner"]

SIGMA_MAX_MARGIN = 1.01
MAX_CONDITION = 1e8


class HeavyBallTuner:
    """Chooses and retunes ``torch.optim.SGD``'s lr and momentum for one InverseModule.

    Args:
        matrix: M, shape ``(..., m, n)``.
        formulation: the product's formulation.
        lr: a fixed learning rate, or ``None`` to choose it.
        momentum: a fixed momentum, or ``None`` to choose it.
        ridge: the Tikhonov weight of the loss.
        sigma_max: the operator's largest singular value per matrix, if known exactly
            (for ``left``/``right``, M's); otherwise power iteration estimates it.

    Example:
        >>> m = torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64))
        >>> tuner = HeavyBallTuner(m, "left")
        >>> round(tuner.sigma_max.item(), 4)
        4.04
    """

    def __init__(
        self,
        matrix: Tensor,
        formulation: Union[str, Formulation],
        *,
        lr: Optional[float] = None,
        momentum: Optional[float] = None,
        ridge: float = 0.0,
        sigma_max: Optional[Tensor] = None,
    ) -> None:
        self.k = as_formulation(formulation).order(matrix.shape)
        self.fixed_lr = lr
        self.fixed_momentum = momentum
        self.ridge_term = ridge * self.k * self.k
        if sigma_max is None:
            sigma_max = operator_sigma_max(matrix, formulation)
        top = sigma_max.double()
        estimate = (top.square() + self.ridge_term).sqrt()
        # M = 0 has a zero gradient everywhere: any finite pair will do.
        estimate = torch.where(estimate > 0, estimate, torch.ones_like(estimate))
        if lr is not None:
            bound = stable_lr_bound(estimate.max(), torch.tensor(MAX_MOMENTUM), self.k).item()
            if lr >= bound:
                raise DivergenceError(
                    f"lr={lr:g} is past the stable bound for any momentum < 1: "
                    + stable_bound_advice(estimate.max().item(), MAX_MOMENTUM, self.k)
                )
        self.sigma_max = estimate * SIGMA_MAX_MARGIN
        self.sigma_min_sq: Optional[Tensor] = None
        self.condition = float("inf")  # the largest estimated kappa, as of the last retune
        self.lr: Optional[Tensor] = None  # per matrix, shape (...)
        self.momentum: Optional[Tensor] = None  # per matrix, shape (...)
        self.gradient_scale: Optional[Tensor] = None  # shape (..., 1, 1); None for one matrix
        self.next_step = 0

    def due(self, step: int) -> bool:
        """Whether to retune before optimizer step ``step`` (a Python check, no sync)."""
        return step >= self.next_step

    def due_within(self, first_step: int, steps: int) -> bool:
        """Whether a retune falls in steps ``[first_step, first_step + steps)``."""
        return first_step + steps > self.next_step

    def retune(
        self,
        step: int,
        excess_loss: Tensor,  # shape: (...), the loss above its floor, without the ridge term
        gradient_sq_norm: Tensor,  # shape: (...), the squared norm of that loss's gradient
        optimizer: torch.optim.Optimizer,
    ) -> None:
        """Update the estimates from this step's loss and gradient and set SGD's pair (one sync)."""
        k = self.k
        loss = excess_loss.double()
        quotient = gradient_sq_norm.double() * (k * k) / (4 * loss)
        quotient = torch.where(loss > 0, quotient + self.ridge_term, self.sigma_max.square())
        floor = (self.sigma_max / MAX_CONDITION).square()
        quotient = torch.maximum(torch.minimum(quotient, self.sigma_max.square()), floor)
        self.sigma_min_sq = (
            quotient if self.sigma_min_sq is None else torch.minimum(self.sigma_min_sq, quotient)
        )
        lr, momentum = tuned_parameters(
            self.sigma_max,
            self.sigma_min_sq.sqrt(),
            k,
            lr=self.fixed_lr,
            momentum=self.fixed_momentum,
        )
        kappa = (self.sigma_max.square() / self.sigma_min_sq).sqrt().max()
        shared_lr, shared_momentum, self.condition = torch.stack(
            [lr.max(), momentum.max(), kappa.to(lr)]
        ).tolist()  # the retune's one host sync
        param = optimizer.param_groups[0]["params"][0]
        if lr.ndim > 0:
            scale = (lr / shared_lr).to(param.dtype)[..., None, None]
            buffer = optimizer.state.get(param, {}).get("momentum_buffer")
            if buffer is not None and self.gradient_scale is not None:
                buffer.mul_(scale / self.gradient_scale)
            self.gradient_scale = scale
        for group in optimizer.param_groups:
            group["lr"], group["momentum"] = shared_lr, shared_momentum
        self.lr, self.momentum = lr, torch.full_like(momentum, shared_momentum)
        self.next_step = step + max(4, step // 8)

    def scale(self, gradient: Tensor) -> Tensor:
        """The gradient scaled by each matrix's share of SGD's learning rate, in place (the
        steps' own gradient: no new tensor a step)."""
        return gradient if self.gradient_scale is None else gradient.mul_(self.gradient_scale)

    def follow(self, inverse: Tensor) -> None:
        """Move the estimates to X's device, and the gradient scale to its dtype."""
        self.load_state_dict(self.state_dict(), device=inverse.device)
        if self.gradient_scale is not None:
            self.gradient_scale = self.gradient_scale.to(inverse)

    def state_dict(self) -> Dict[str, Any]:
        return {
            key: getattr(self, key)
            for key in (
                "sigma_max",
                "sigma_min_sq",
                "lr",
                "momentum",
                "gradient_scale",
                "next_step",
                "condition",
            )
        }

    def load_state_dict(self, state: Dict[str, Any], device: Optional[torch.device] = None) -> None:
        device = self.sigma_max.device if device is None else device
        for key, value in state.items():
            setattr(self, key, value.to(device) if isinstance(value, Tensor) else value)
