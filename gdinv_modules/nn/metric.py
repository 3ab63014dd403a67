"""``IdentityMSE``: the mean squared error to the identity as a torchmetrics ``Metric``."""

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from gdinv_modules.core.functional import identity_sse
from gdinv_modules.core.validation import check_matrix

__all__ = ["IdentityMSE"]


class IdentityMSE(Metric):
    r"""Mean squared error of products E to the identity, over all entries seen.

    .. math:: \text{IdentityMSE} = \frac{1}{N} \sum_{b, i, j} (E_{bij} - \delta_{ij})^2

    ``update(product)`` takes a batch of shape ``(..., n, n)``; the identity is never
    materialised at the batch's shape. The sum keeps the product's dtype (float64 stays
    float64, unlike ``torchmetrics.MeanSquaredError``), and both states reduce with ``sum``, so
    the value is right under DDP.

    Example:
        >>> metric = IdentityMSE()
        >>> metric.update(2 * torch.eye(2, dtype=torch.float64))
        >>> metric.update(torch.eye(2, dtype=torch.float64))
        >>> metric.compute()
        tensor(0.2500, dtype=torch.float64)
    """

    is_differentiable = True
    higher_is_better = False
    full_state_update = False
    plot_lower_bound = 0.0

    sum_squared_error: Tensor
    total: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state(
            "sum_squared_error",
            default=torch.tensor(0.0, dtype=torch.float32),
            dist_reduce_fx="sum",
        )
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, product: Tensor) -> None:  # shape: (..., k, k)
        """Add the squared errors of the product to the identity."""
        sse, count = identity_sse(check_matrix(product, name="product"))
        # Reassigned, not added in place, so that float64 promotes the float32 default state.
        self.sum_squared_error = self.sum_squared_error + sse
        self.total = self.total + count

    def compute(self) -> Tensor:
        """The mean over all entries seen since the last reset."""
        return self.sum_squared_error / self.total
