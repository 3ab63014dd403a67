"""M's singular values for the rank check: from the Gram matrix where the condition number
allows, from the SVD elsewhere; the largest alone, from the Gram matrix or by power iteration;
all against torch.linalg.svdvals."""

import pytest
import torch

from gdinv_modules.core.decomposition import (
    GRAM_MAX_CONDITION,
    gram_matrix,
    gram_sigma_max,
    wide_sigma_max,
    wide_svd,
    wide_svdvals,
)
from gdinv_modules.core.formulation import as_formulation
from gdinv_modules.core.matrices import conditioned_matrix, low_rank_matrix
from gdinv_modules.core.spectral import (
    operator_sigma_max,
    power_norm,
    power_spectral_norm,
    sigma_max_route,
    spectral_norm,
    squaring_spectral_norm,
)

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
def test_a_cpu_batch_split_over_threads_decomposes_as_one_call(batch_shape, monkeypatch):
    # split however little work: these small batches are not, by default
    monkeypatch.setattr("gdinv_modules.core.decomposition.SPLIT_MIN_WORK", 0)
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


@pytest.mark.parametrize("dtype", [torch.float32, F64, torch.complex64])
@pytest.mark.parametrize("shape", [(5, 24, 24), (24, 17), (3, 17, 24)])
def test_the_largest_value_from_the_gram_matrix_is_exact_whatever_kappa(dtype, shape):
    # sigma_max of M^H M's top eigenvalue: a few eps relative, even at kappa 1e12
    generator = torch.Generator().manual_seed(1)
    matrix = torch.randn(shape, dtype=dtype, generator=generator)
    matrix[..., 0, :] *= 1e12  # one row dominates: kappa past 1e12
    expected = torch.linalg.svdvals(matrix.to(torch.complex128 if dtype.is_complex else F64))
    got = wide_sigma_max(matrix)
    assert got.dtype == F64 and got.shape == shape[:-2]
    torch.testing.assert_close(got, expected[..., 0], rtol=32 * torch.finfo(F64).eps, atol=0)
    own = gram_sigma_max(matrix)  # in M's dtype: its Gram matrix's rounding, min(m, n) eps
    assert own.dtype == F64 and own.shape == shape[:-2]
    rtol = min(shape[-2:]) * torch.finfo(dtype).eps
    torch.testing.assert_close(own, expected[..., 0], rtol=rtol, atol=0)


@pytest.mark.parametrize("dtype", [F64, torch.complex128, torch.float32, torch.complex64])
@pytest.mark.parametrize("shape", [(4, 30, 30), (30, 12), (2, 12, 30)])
def test_power_iteration_with_row_vectors_finds_the_spectral_norm(dtype, shape):
    # singular values 1, 1/2, ..., : a gap of 2, so 64 iterations reach float64's floor
    m, n = shape[-2:]
    values = 1.0 / torch.arange(1, min(m, n) + 1, dtype=F64)
    u = torch.linalg.qr(torch.randn(*shape[:-2], m, m, dtype=dtype))[0][..., :, : min(m, n)]
    v = torch.linalg.qr(torch.randn(*shape[:-2], n, n, dtype=dtype))[0][..., : min(m, n), :]
    matrix = (u * values.to(dtype)) @ v
    got = power_spectral_norm(matrix, iterations=64)  # in M's dtype, as float64
    rtol = 1e-12 if dtype in (F64, torch.complex128) else 8 * torch.finfo(torch.float32).eps
    torch.testing.assert_close(got, torch.ones(shape[:-2], dtype=F64), rtol=rtol, atol=0)


@pytest.fixture(scope="module")
def large_batch():
    """4096 x 64x64 at condition 50 and their sigma_max (building them takes seconds)."""
    batch = conditioned_matrix(64, condition=50.0, batch_shape=(4096,), dtype=F64)
    return batch, wide_sigma_max(batch)


@pytest.mark.parametrize("squaring", [False, True])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_power_iteration_over_a_large_batch_stays_within_the_tuners_margin(
    large_batch, dtype, squaring
):
    # of 4096 matrices, a single start missed one's sigma_max by 4%, past the tuner's 1%
    # margin: lr="auto" without the rank check diverged (invert() on an H200); in float32
    # (the tuner's dtype for a float32 M) the quotient may round above by a few eps_32
    batch, sigma_max = large_batch
    if squaring:  # every unit vector a start: one of them has 1/k of the top direction
        got = squaring_spectral_norm(batch.to(dtype), iterations=64)
    else:
        got = power_spectral_norm(batch.to(dtype), iterations=64, rtol=1e-6)
    shortfall = 1 - got / sigma_max
    above = 1e-12 if dtype == F64 else 8 * torch.finfo(dtype).eps
    assert bool((shortfall >= -above).all()) and shortfall.max().item() < 1e-4


@pytest.mark.parametrize("iterations", [1, 16, 64])
@pytest.mark.parametrize("shape", [(3, 20, 20), (30, 12), (12, 30)])
def test_squarings_are_power_iteration_from_every_unit_vector(shape, iterations):
    # G^p's columns are p iterations from e_i: their quotients, (G^{2p+1})_ii / (G^{2p})_ii,
    # are power_norm's after p + 1 iterations (its first quotient is at the start itself)
    matrix = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    gram = gram_matrix(matrix)
    k = gram.shape[-1]
    start = torch.eye(k, dtype=F64).expand(*gram.shape[:-2], k, k)
    expected = power_norm(lambda rows: rows @ gram, start, iterations=iterations + 1, each_row=True)
    got = squaring_spectral_norm(matrix, iterations=iterations)
    # a quotient of eigenvalues, square-rooted: a few eps of sigma_max^2 apart
    torch.testing.assert_close(got.square(), expected.square(), rtol=k * 2**-52, atol=0)
    assert bool((got <= torch.linalg.matrix_norm(matrix, 2) * (1 + 1e-12)).all())


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
def test_squarings_of_complex_and_zero_matrices(dtype):
    # singular values 1, 1/2, ...: 64 iterations' worth reach the dtype's rounding
    values = 1.0 / torch.arange(1, 25, dtype=F64)
    generator = torch.Generator().manual_seed(5)
    u, v = (
        torch.linalg.qr(torch.randn(2, 24, 24, dtype=dtype, generator=generator))[0] for _ in "uv"
    )
    matrix = (u * values.to(dtype)) @ v
    got = squaring_spectral_norm(matrix, iterations=64)
    eps = torch.finfo(dtype.to_real()).eps
    torch.testing.assert_close(got, torch.ones(2, dtype=F64), rtol=24 * eps, atol=0)
    zero = squaring_spectral_norm(torch.zeros(2, 5, 5, dtype=dtype), iterations=16)
    assert torch.equal(zero, torch.zeros(2, dtype=F64))


def test_the_spectral_norm_takes_the_route_that_costs_least():
    # a few small float64 matrices: the Gram matrices' eigenvalues, exact
    few = conditioned_matrix(48, condition=2.25, batch_shape=(2,), dtype=F64)
    assert sigma_max_route(few, 64) == "gram"
    assert torch.equal(spectral_norm(few, iterations=64), wide_sigma_max(few))
    # a batch of small float32 matrices: squarings, within the tuner's margin of 1e-2 from
    # below (the weights of values 2.25^(1/63) apart, to the 128th power: under 1e-3)
    batch = conditioned_matrix(64, condition=2.25, batch_shape=(64,), dtype=torch.float32)
    assert sigma_max_route(batch, 64) == "squaring"
    exact, own = wide_sigma_max(batch), spectral_norm(batch, iterations=64)
    assert own.dtype == F64 and torch.equal(own, squaring_spectral_norm(batch, iterations=64))
    assert torch.equal(operator_sigma_max(batch, "left"), own)
    eps = torch.finfo(torch.float32).eps
    assert bool((own <= exact * (1 + 64 * eps)).all() and (own >= exact * (1 - 1e-3)).all())
    # taken in float32, the Gram route is n eps_32 from float64's
    torch.testing.assert_close(gram_sigma_max(batch), exact, rtol=64 * eps, atol=0)
    # one 256 x 256: less than 64 iterations' work, more than 16's
    one = conditioned_matrix(256, condition=2.25, dtype=F64)
    exact = wide_sigma_max(one)
    assert sigma_max_route(one, 64) == "gram" and sigma_max_route(one, 16) == "rows"
    assert torch.equal(spectral_norm(one, iterations=64), exact)
    estimate = spectral_norm(one, iterations=16)  # power iteration: a Rayleigh quotient
    assert not torch.equal(estimate, exact)
    assert bool((estimate <= exact * (1 + 1e-12)).all() and (estimate >= 0.9 * exact).all())
    # off the CPU, rows (the squarings there are unmeasured; cuSOLVER loops over a batch)
    assert sigma_max_route(torch.empty(64, 64, 64, device="meta"), 64) == "rows"
    large = conditioned_matrix(600, condition=2.25, dtype=F64)  # past 64 iterations' worth
    got = operator_sigma_max(large, "right")
    assert got <= torch.linalg.svdvals(large)[0] * (1 + 1e-12) and got != wide_sigma_max(large)


def test_the_largest_value_in_ms_own_dtype_ignores_autocast():
    # the Gram matrix and the power iteration's products in bfloat16 would be off by 1e-3
    batch = conditioned_matrix(64, condition=2.25, batch_shape=(8,), dtype=torch.float32)

    def routes():
        return (
            gram_sigma_max(batch),
            power_spectral_norm(batch, iterations=16),
            squaring_spectral_norm(batch, iterations=16),
        )

    plain = routes()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = routes()
    assert all(torch.equal(a, b) for a, b in zip(inside, plain, strict=True))


def test_a_batch_split_across_threads_leaves_no_thread_behind(monkeypatch):
    # helper threads kept alive held OpenMP teams, and every later parallel region of the
    # process waited on them (a 64 x 64 product 15 times slower on 2 cores)
    import threading

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # split, on any machine
    batch = conditioned_matrix(64, condition=2.25, batch_shape=(64,), dtype=F64)
    before, seen = threading.active_count(), set()
    real_eigvalsh = torch.linalg.eigvalsh

    def eigvalsh(gram):
        seen.add(threading.current_thread().name.startswith("gdinv-decomposition"))
        return real_eigvalsh(gram)

    monkeypatch.setattr(torch.linalg, "eigvalsh", eigvalsh)
    got = wide_sigma_max(batch)
    assert seen == {True, False}  # one part here, one in a helper
    assert threading.active_count() == before
    expected = torch.linalg.svdvals(batch)[..., 0]
    torch.testing.assert_close(got, expected, rtol=32 * torch.finfo(F64).eps, atol=0)


def test_the_symmetric_operators_largest_value_stays_within_the_tuners_margin():
    # 64 power iterations from a start of positive entries fell 2.5% short here (matrix 2),
    # past the tuner's 1% margin: heavy ball diverged at step 220; from M^H (plus noise) they
    # fall at most 0.1% short. The reference: 4096 iterations from a Gaussian start
    matrix = conditioned_matrix(48, condition=1e4, batch_shape=(5,), seed=57, dtype=F64)
    symmetric = as_formulation("symmetric")
    start = torch.randn(matrix.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    reference = power_norm(
        lambda v: symmetric.normal_operator(v, matrix), start, iterations=4096, rtol=1e-14
    )
    estimate = operator_sigma_max(matrix, symmetric)
    assert bool((estimate >= reference * (1 - 2e-3)).all())
    assert bool((estimate <= reference * (1 + 1e-9)).all())  # a Rayleigh quotient: from below
