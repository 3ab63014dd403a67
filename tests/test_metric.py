"""IdentityMSE against the plain formula, in float32 and float64, batched."""

import pytest
import torch

from gdinv_modules import IdentityMSE
from gdinv_modules.core.errors import MatrixShapeError
from gdinv_modules.core.matrices import random_matrix


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_accumulates_the_mean_over_all_entries(dtype):
    metric = IdentityMSE()
    first = random_matrix(3, seed=1, batch_shape=(4,), dtype=dtype)
    second = random_matrix(3, seed=2, dtype=dtype)
    metric.update(first)
    metric.update(second)
    eye = torch.eye(3, dtype=dtype)
    squared = torch.cat([((first - eye) ** 2).flatten(), ((second - eye) ** 2).flatten()])
    value = metric.compute()
    assert value.dtype == dtype
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(value, squared.mean(), rtol=10 * eps, atol=0)


def test_float64_is_kept_where_torchmetrics_mse_drops_to_float32():
    # An error of 2^-40 on the diagonal is below float32's resolution near 1, exact in float64.
    estimate = torch.eye(2, dtype=torch.float64) * (1 + 2.0**-40)
    value = IdentityMSE()(estimate)
    assert value.dtype == torch.float64
    assert value.item() == 2.0**-81


def test_reset_and_forward_give_the_batch_value():
    metric = IdentityMSE()
    assert metric(2 * torch.eye(2)).item() == 0.5
    assert metric(torch.eye(2)).item() == 0.0
    assert metric.compute().item() == 0.25
    metric.reset()
    metric.update(3 * torch.eye(1))
    assert metric.compute().item() == 4.0


def test_states_merged_from_another_process_give_the_mean_over_both():
    # merge_state reduces with each state's dist_reduce_fx, as a DDP sync does: sums of the
    # squared errors and of the counts, so the value is the mean over both processes' entries.
    here, there = IdentityMSE(), IdentityMSE()
    here.update(2 * torch.eye(2, dtype=torch.float64))  # 2 entries off by 1, of 4
    there.update(torch.eye(3, dtype=torch.float64))  # 9 exact entries
    here.merge_state(there)
    assert here.compute().item() == 2 / 13


def test_non_square_product_is_refused():
    with pytest.raises(MatrixShapeError, match="product must be square"):
        IdentityMSE().update(torch.rand(2, 3))
