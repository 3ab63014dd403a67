"""M's singular values for the rank check: from the Gram matrix where the condition number
allows, from the SVD elsewhere, against torch.linalg.svdvals."""

import pytest
import torch

from gdinv_modules.core.decomposition import GRAM_MAX_CONDITION, wide_svd, wide_svdvals
from gdinv_modules.core.matrices import conditioned_matrix, low_rank_matrix

F64 = torch.float64


@pytest.mark.parametrize("condition", [1.0, 50.0, 1e3, 0.9 * GRAM_MAX_CONDITION])
@pytest.mark.parametrize("shape", [(64, 64), (40, 25), (25, 40)])
def test_gram_values_match_the_svds_to_n_eps_kappa_squared(condition, shape):
    m, n = shape
    square = conditioned_matrix(max(m, n), condition=condition, dtype=F64)
    matrix = square[:m, :n]
    expected = torch.linalg.svdvals(matrix)
    kappa = (expected[0] / expected[-1]).item()
    bound = min(m, n) * torch.finfo(F64).eps * kappa**2
    got = wide_svdvals(matrix)
    assert got.dtype == F64 and got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=max(bound, 1e-14), atol=0)


def test_past_the_gram_limit_the_values_are_the_svds():
    matrix = conditioned_matrix(32, condition=1e8, dtype=F64)
    assert torch.equal(wide_svdvals(matrix), torch.linalg.svdvals(matrix))


def test_a_rank_deficient_batch_gets_the_svds_values_and_exact_rank():
    batch = torch.stack([conditioned_matrix(16, condition=10.0, dtype=F64),
                         low_rank_matrix(16, rank=5, dtype=F64)])  # fmt: skip
    assert torch.equal(wide_svdvals(batch), torch.linalg.svdvals(batch))


def test_float32_input_is_widened_and_the_svd_reconstructs_it():
    matrix = conditioned_matrix(12, condition=30.0, dtype=torch.float32)
    u, s, vh = wide_svd(matrix)
    assert s.dtype == F64
    torch.testing.assert_close((u * s[..., None, :]) @ vh, matrix.double(), atol=1e-12, rtol=0)
    torch.testing.assert_close(wide_svdvals(matrix), s, rtol=1e-12, atol=0)


@pytest.mark.parametrize("batch_shape", [(2, 3), (7,), (1,)])
def test_a_cpu_batch_split_over_threads_decomposes_as_one_call(batch_shape):
    matrix = torch.randn(*batch_shape, 12, 9, dtype=F64, generator=torch.Generator().manual_seed(0))
    ill = conditioned_matrix(12, condition=1e8, batch_shape=batch_shape, dtype=F64)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # 3 parts, of 3, 2 and 2 of 7 matrices
    try:
        values, (u, s, vh) = wide_svdvals(matrix), wide_svd(matrix)
        ill_values = wide_svdvals(ill)  # past the Gram limit: the SVD's values, split too
        gram = matrix.mT @ matrix  # as wide_svdvals forms it, whole, on as many threads
        whole_values = torch.linalg.eigvalsh(gram).flip(-1).clamp_min(0).sqrt()
    finally:
        torch.set_num_threads(threads)
    # the same LAPACK routines; a part's memory may be aligned as the whole's was not (ulps)
    eps = torch.finfo(F64).eps
    torch.testing.assert_close(values, whole_values, rtol=64 * eps, atol=0)
    torch.testing.assert_close(s, torch.linalg.svdvals(matrix), rtol=64 * eps, atol=0)
    torch.testing.assert_close(ill_values, torch.linalg.svdvals(ill), rtol=1e-7, atol=0)
    assert u.shape == (*batch_shape, 12, 9) and vh.shape == (*batch_shape, 9, 9)
    torch.testing.assert_close(u @ torch.diag_embed(s) @ vh, matrix, rtol=0, atol=1e-13)
