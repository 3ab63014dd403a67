"""invert() fast to a precise answer: no wasted steps, refinement, no silent grind, and
torch.linalg.inv's contract (empty input, complex, strides, dtypes)."""

import math
import re
import warnings

import numpy as np
import pytest
import torch

from gdinv_modules import (
    ConvergenceError,
    ConvergenceWarning,
    conditioned_matrix,
    invert,
    spd_matrix,
)
from gdinv_modules.core.errors import InvalidOptionError, MatrixDtypeError
from gdinv_modules.core.formulation import LEFT, RIGHT, SYMMETRIC
from gdinv_modules.engine.policy import window_length
from gdinv_modules.engine.refinement import (
    SCALED_MARGIN,
    SCALED_UNTIL,
    correction,
    product_rounding,
    refine,
    safe_start,
    scaled_correction,
)
from gdinv_modules.engine.refinement import scaled_steps as policy_scaled_steps

F64 = torch.float64


def conditioned(n, kappa, *, dtype=F64, seed=0, batch_shape=()):
    return conditioned_matrix(n, condition=kappa, seed=seed, batch_shape=batch_shape, dtype=dtype)


def residual64(inverse, matrix):
    """||XM - I||_F / sqrt(n) in float64 (complex128 for complex input)."""
    wide = torch.complex128 if matrix.is_complex() else F64
    eye = torch.eye(matrix.shape[-1], dtype=wide)
    product = inverse.to(wide) @ matrix.to(wide)
    return torch.linalg.matrix_norm(product - eye) / matrix.shape[-1] ** 0.5


# --- no wasted steps ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kappa, batch, dtype",
    [(10.0, (), F64), (300.0, (), F64), (50.0, (4,), F64), (50.0, (), torch.float32)],
)
def test_descent_stops_within_max_4_or_5_percent_of_the_step_that_reached_tol(kappa, batch, dtype):
    matrix = conditioned(24, kappa, batch_shape=batch, dtype=dtype)
    result = invert(matrix, refine=False)
    assert result.converged.all()
    reached = int(result.steps_to_tol.max())  # the step at which the last matrix reached tol
    run = result.report.steps
    assert reached <= run <= reached + max(4, math.ceil(0.05 * reached)), (reached, run)


def test_windows_are_powers_of_2_at_most_2_5_percent_of_the_run():
    for steps in range(0, 50_000, 37):
        window = window_length(steps)
        assert window & (window - 1) == 0 and 4 <= window <= max(4, steps / 40)


# --- refinement ---------------------------------------------------------------------------


@pytest.mark.parametrize("kappa", [10.0, 400.0, 3000.0])
def test_float32_is_at_least_as_accurate_as_lapacks_float32_inverse(kappa):
    matrix = conditioned(48, kappa, dtype=torch.float32, seed=1)
    result = invert(matrix)
    lapack = residual64(torch.linalg.inv(matrix), matrix)
    assert result.inverse.dtype == torch.float32
    assert residual64(result.inverse, matrix) <= lapack
    assert result.residual.item() == pytest.approx(residual64(result.inverse, matrix).item())


@pytest.mark.parametrize("kappa", [10.0, 1000.0])
def test_float64_is_within_10_times_lapacks(kappa):
    matrix = conditioned(48, kappa, seed=2)
    result = invert(matrix)
    assert residual64(result.inverse, matrix) <= 10 * residual64(torch.linalg.inv(matrix), matrix)


def test_the_report_counts_descent_and_refinement_steps_apart():
    # float32: descent shows its full rank, so no spectrum and no skip (a float64 M's rank is
    # checked first on the CPU)
    matrix = conditioned(32, 3.0, seed=3, dtype=torch.float32)
    result = invert(matrix)
    descent_only = invert(matrix, refine=False)
    assert result.report.refine_steps > 0
    assert result.report.descent_stop == "tol" and descent_only.report.refine_steps == 0
    # descent hands over at ||I - XM||_F <= 1/4, long before it would reach 1e-10 alone
    assert result.report.steps < descent_only.report.steps / 2
    assert len(result.losses) == result.report.steps
    assert "refinement steps" in "\n".join(result.report.summary_lines())


def test_refinement_squares_the_residual_and_restarts_from_the_safe_start():
    matrix = conditioned(16, 50.0, seed=4)
    exact = torch.linalg.inv(matrix)
    near = refine(exact + 1e-4 * exact.abs().max(), matrix, max_steps=1)
    start = torch.linalg.matrix_norm(
        torch.eye(16, dtype=F64) - (exact + 1e-4 * exact.abs().max()) @ matrix
    )
    assert near.steps == 1 and not near.restarted.item()
    # one step: R -> R^2, so ||R^2||_F <= ||R||_2 ||R||_F <= ||R||_F^2
    assert near.residual.item() * 4 <= start.item() ** 2
    far = refine(torch.zeros_like(matrix), matrix)  # ||I - 0 M|| = sqrt(n): not safe
    assert far.restarted.item() and far.residual.item() < 1e-14
    assert torch.linalg.matrix_norm(torch.eye(16, dtype=F64) - safe_start(matrix) @ matrix, 2) < 1


def forward_error(inverse, matrix):
    """||X - M^-1||_F / ||M^-1||_F per matrix, against LAPACK's inverse."""
    exact = torch.linalg.inv(matrix)
    return torch.linalg.matrix_norm(inverse - exact) / torch.linalg.matrix_norm(exact)


def far_inverse(matrix, far):
    """X with the correction I - XM = ``far`` exactly in float64's rounding: (I - far) M^-1."""
    n = matrix.shape[-1]
    return (torch.eye(n, dtype=F64) - far) @ torch.linalg.inv(matrix)


def test_a_far_x_whose_steps_converge_is_probed_not_restarted():
    matrix = conditioned(16, 50.0, seed=4)
    rotation = torch.linalg.qr(
        torch.randn(16, 16, dtype=F64, generator=torch.Generator().manual_seed(1))
    )[0]
    far = 0.9 * rotation  # ||C||_F = 3.6, spectral radius 0.9: after j steps C^(2^j)
    probed = refine(far_inverse(matrix, far), matrix)
    assert not probed.restarted.item() and probed.residual.item() < 1e-14
    # 0.9^(2^j) reaches float64's rounding (about 1e-16 sqrt(n) kappa) at j = 9, and the
    # steps stop within two of it; from the safe start they take 2 log2(kappa) + log2(n) + 5
    restarted = refine(torch.zeros_like(matrix), matrix)
    assert probed.steps <= 11 < restarted.steps, (probed.steps, restarted.steps)


def probe_batch():
    """A batch of two 16 x 16 M (kappa 50) and X whose corrections are 1.5 Q, whose first
    step raises ||1.5 Q||_F to ||2.25 Q^2||_F, and 0.9 Q, whose steps converge (Q orthogonal)."""
    matrix = conditioned(16, 50.0, seed=4)
    rotation = torch.linalg.qr(
        torch.randn(16, 16, dtype=F64, generator=torch.Generator().manual_seed(1))
    )[0]
    batch = torch.stack([matrix, matrix])
    inverse = torch.stack(
        [far_inverse(matrix, 1.5 * rotation), far_inverse(matrix, 0.9 * rotation)]
    )
    return batch, inverse


def test_a_probe_whose_step_raises_the_residual_restarts_from_the_safe_start():
    batch, inverse = probe_batch()
    result = refine(inverse, batch)
    assert result.restarted.tolist() == [True, False]
    # both at LAPACK's accuracy: a few kappa eps
    assert bool((result.residual < 1e-14).all())
    assert bool((forward_error(result.inverse, batch) < 10 * 50.0 * 2.2e-16).all())


def scaled_steps(kappa):
    """The scaled steps for XM's eigenvalues, from [l, 2 - l] with l the scaled start's bound
    for condition number ``kappa``, to lie in [SCALED_UNTIL, 2 - SCALED_UNTIL]."""
    lower, steps = (1 - SCALED_MARGIN) / ((1 + SCALED_MARGIN) * kappa**2), 0
    while lower < SCALED_UNTIL:
        lower, steps = 2 * lower * (2 - lower) / (1 + lower * (2 - lower)), steps + 1
    return steps


def test_the_policys_count_of_scaled_steps_is_the_recurrences():
    # the count the policy weighs against descent's (engine/policy.py); the bound grows at
    # most 4-fold a step, from about kappa^-2 to SCALED_UNTIL: at least log2(kappa) - 0.1 steps
    for kappa in (1.0, 2.25, 10.0, 1e4, 1e8, 1e12):
        assert policy_scaled_steps(kappa) == scaled_steps(kappa)
        assert policy_scaled_steps(kappa) >= math.log2(kappa) - 0.1
    for bad in (0.5, math.inf, math.nan, 1e200):
        with pytest.raises(InvalidOptionError, match="condition number of at least 1"):
            policy_scaled_steps(bad)


@pytest.mark.parametrize("kappa", [1e3, 1e6, 1e10])
def test_a_restart_with_ms_singular_values_takes_scaled_steps(kappa):
    # Pan and Schreiber: the bound on XM's smallest eigenvalue grows about 4-fold a step where
    # the safe start's plain steps grow it 2-fold; both end at float64's floor
    matrix = conditioned(24, kappa, seed=1)
    values = torch.linalg.svdvals(matrix)
    plain = refine(torch.zeros_like(matrix), matrix)
    scaled = refine(torch.zeros_like(matrix), matrix, singular_values=values)
    assert scaled.restarted.item() and plain.restarted.item()
    assert scaled.residual.item() <= 2 * plain.residual.item()
    assert forward_error(scaled.inverse, matrix).item() < 10 * kappa * 2.2e-16
    steps = scaled_steps(kappa)  # about log4(kappa^2): 12, 22, 35 (plainly 28, 47, 73 here)
    assert steps < scaled.steps <= steps + 6 and plain.steps >= 2 * math.log2(kappa), (
        steps,
        scaled.steps,
        plain.steps,
    )


def test_start_over_restarts_every_matrix_and_a_failed_probe_takes_the_scaled_start():
    batch, inverse = probe_batch()
    values = torch.linalg.svdvals(batch)
    probed = refine(inverse.clone(), batch, singular_values=values)
    assert probed.restarted.tolist() == [True, False]  # the first, after its probe's step
    again = refine(inverse.clone(), batch, singular_values=values, start_over=True)
    assert again.restarted.tolist() == [True, True]
    for result in (probed, again):
        assert bool((result.residual < 1e-14).all())
        assert bool((forward_error(result.inverse, batch) < 10 * 50.0 * 2.2e-16).all())
    # kappa 50 from the scaled start: 7 scaled steps and a few more, not the probe's 11
    assert again.steps <= scaled_steps(50.0) + 6 < probed.steps + 2


@pytest.mark.parametrize(
    "dtype, shape, kappa",
    [(F64, (48,), 100.0), (torch.complex128, (3, 16), 1e4), (torch.float32, (4, 32), 30.0)],
    ids=str,
)
def test_a_start_over_from_the_gram_matrix_refines_as_from_the_restarts_product(
    dtype, shape, kappa
):
    # the rank check's M^H M gives the scaled start's correction I - M^H M / s: the same steps
    # to the same floor as the product I - X_0 M, whose X_0 = M^H / s it leaves unrounded
    *batch, n = shape
    matrix = conditioned(n, kappa, dtype=dtype, batch_shape=tuple(batch))
    if dtype.is_complex:
        matrix = matrix + 1j * conditioned(n, kappa, dtype=F64, seed=1, batch_shape=tuple(batch))
    wide = matrix.to(torch.complex128 if dtype.is_complex else F64)
    values = torch.linalg.svdvals(wide)
    kappa = (values[..., 0] / values[..., -1]).max().item()  # M + iM': not the parts' kappa
    results = []
    for from_gram in (False, True):
        inverse = torch.zeros_like(matrix)
        start = scaled_correction(wide.mH @ wide, values, inverse) if from_gram else None
        results.append(
            refine(inverse, matrix, singular_values=values, start_over=True, start=start)
        )
    product, gram = results
    assert abs(gram.steps - product.steps) <= 1 and bool(gram.restarted.all())
    eps = torch.finfo(dtype).eps
    assert bool((gram.residual <= (2 * product.residual).clamp_min(4 * eps * n**0.5)).all())
    assert bool((residual64(gram.inverse, matrix) < 4 * eps * kappa).all())


def test_a_start_is_the_left_scaled_restarts_correction_only():
    matrix = conditioned(8, 10.0)
    values = torch.linalg.svdvals(matrix)
    start = scaled_correction(matrix.mT @ matrix, values, matrix)
    for wrong in ({"start_over": False}, {"formulation": RIGHT}, {"singular_values": None}):
        options = {"start_over": True, "singular_values": values, "start": start, **wrong}
        with pytest.raises(InvalidOptionError, match="scaled start's left correction"):
            refine(torch.zeros_like(matrix), matrix, **options)


def test_x_zero_restarts_with_no_step_tried_from_it(monkeypatch):
    from gdinv_modules.engine import refinement

    matrix = conditioned(16, 50.0, seed=4)
    starts = []
    step = refinement.refinement_step
    monkeypatch.setattr(
        refinement,
        "refinement_step",
        lambda inverse, *a, **k: starts.append(bool(inverse.any())) or step(inverse, *a, **k),
    )
    result = refine(torch.zeros_like(matrix), matrix)
    assert result.restarted.item() and result.residual.item() < 1e-14
    assert all(starts), "a step was tried from X = 0"


@pytest.mark.parametrize("kappa", [10.0, 1e3])
def test_the_symmetric_hand_over_is_refined_from_its_own_x(kappa):
    # its X meets (XM + MX)/2 = I to 0.25 while ||I - XM||_F lies above 1: its steps converge
    matrix = conditioned(48, kappa, seed=1)
    result = invert(matrix, formulation="symmetric")
    left = invert(matrix)
    assert bool(result.converged)
    assert result.report.refine_steps <= left.report.refine_steps + 3
    # as accurate as LAPACK's, within its forward error's kappa eps
    assert forward_error(result.inverse, matrix).item() < 10 * kappa * 2.2e-16


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64])
def test_product_rounding_is_above_a_narrow_products_and_near_it(dtype):
    wide = torch.complex128 if dtype.is_complex else F64
    matrix = conditioned(64, 100.0, dtype=dtype, batch_shape=(4,))
    inverse = torch.linalg.inv(matrix)
    rounding = torch.linalg.matrix_norm(
        (inverse @ matrix).to(wide) - inverse.to(wide) @ matrix.to(wide)
    )
    estimate = product_rounding(inverse, matrix)
    # the likely size (sqrt(n) u ||X|| ||M||), above what the product shows, within n of it
    assert bool((rounding <= estimate).all()) and bool((estimate <= 64 * rounding).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64])
def test_a_rough_first_correction_saves_a_wide_one_and_costs_no_digit(dtype, monkeypatch):
    matrix = conditioned(32, 10.0, dtype=dtype, batch_shape=(3,))
    inverse = torch.linalg.inv(matrix) * (1 + 3e-2)
    rough = torch.eye(32, dtype=dtype) - inverse @ matrix  # far above its rounding
    taken = []
    monkeypatch.setattr(
        "gdinv_modules.engine.refinement.correction",
        lambda *a, **k: taken.append(1) or correction(*a, **k),
    )
    plain = refine(inverse.clone(), matrix)
    wide_corrections = len(taken)
    from_rough = refine(inverse.clone(), matrix, rough=rough)
    assert len(taken) - wide_corrections == wide_corrections - 1
    assert from_rough.steps == plain.steps
    # the same floor (eps * kappa-ish): a digit lost would show as 10x
    floor = residual64(plain.inverse, matrix)
    assert bool((residual64(from_rough.inverse, matrix) <= 1.25 * floor).all())


def test_a_rough_correction_that_leads_nowhere_is_taken_anew():
    # A correction off by far more than its rounding (a product in TF32, say): the first step
    # from it is kept only where the wide residual falls; the others start over from X.
    matrix = conditioned(32, 10.0, dtype=torch.float32, batch_shape=(4,))
    inverse = torch.linalg.inv(matrix) * (1 + 1e-2)
    rough = torch.eye(32) - inverse @ matrix
    rough[1:] = 0.5 * torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0)) / 32
    plain = refine(inverse.clone(), matrix)
    from_rough = refine(inverse.clone(), matrix, rough=rough)
    assert not bool(from_rough.restarted.any())
    # one step more than from X (the trial's); kept for the three, the step would cost two
    assert from_rough.steps <= plain.steps + 1
    floor = residual64(plain.inverse, matrix)
    assert bool((residual64(from_rough.inverse, matrix) <= 1.25 * floor).all())
    with pytest.raises(InvalidOptionError, match="current or rough"):
        refine(inverse, matrix, current=rough, rough=rough)


# a batch below WIDE_BLOCKS matrices is taken in blocks of rows (columns for RIGHT), one of
# WIDE_BLOCKS or more in blocks of its matrices
@pytest.mark.parametrize("batch", [(3,), (6,), (5, 2)], ids=str)
@pytest.mark.parametrize("side", [LEFT, RIGHT], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64])
def test_a_narrow_correction_is_the_wide_one_rounded_with_no_wide_copy_kept(dtype, side, batch):
    # I - XM cancels in the wide dtype: C in X's dtype is that, rounded (eps relative to C),
    # where I - XM taken in X's dtype is off by about eps relative to I (C is near 1e-4 here)
    matrix = conditioned(32, 10.0, dtype=dtype, batch_shape=batch)
    wide = torch.complex128 if dtype.is_complex else F64
    inverse = (torch.linalg.inv(matrix.to(wide)) * (1 + 1e-4)).to(dtype)
    x, m = inverse.to(wide), matrix.to(wide)
    exact = torch.eye(32, dtype=wide) - side.product(x, m)
    got = correction(inverse, m, formulation=side)
    assert got.dtype == dtype
    eps = torch.finfo(dtype).eps  # atol: the wide product's own rounding, summed in blocks
    torch.testing.assert_close(got, exact.to(dtype), rtol=eps, atol=1e-13)
    into = torch.empty_like(got)
    assert correction(inverse, m, out=into, formulation=side) is into and torch.equal(into, got)
    narrow = torch.eye(32, dtype=dtype) - side.product(inverse, matrix)
    assert (narrow - exact).abs().max() > 100 * (got - exact).abs().max()


@pytest.mark.parametrize(
    "n, batch, kappa, dtype",
    [
        (64, (), 100.0, torch.float32),
        (16, (8,), 30.0, torch.float32),
        (32, (3,), 1e3, torch.float32),
        (8, (), 2.25, torch.float32),
        (24, (2,), 30.0, torch.complex64),  # a condition number near 30: M's own is measured
    ],
)
def test_rough_corrections_between_scaled_steps_save_wide_ones_and_cost_no_digit(
    n, batch, kappa, dtype, monkeypatch
):
    # From the scaled start every step but the last scaled ones is taken whatever ||C|| says;
    # the correction it takes may be a product in float32 where the bound on XM's eigenvalues
    # lies far above that product's rounding. The count and the floor are the wide ones'.
    matrix = conditioned(n, kappa, dtype=torch.float32, batch_shape=batch, seed=2)
    if dtype.is_complex:
        matrix = torch.complex(matrix, 0.1 * conditioned(n, kappa, dtype=torch.float32, seed=3))
    singular = torch.linalg.svdvals(matrix.to(torch.complex128 if dtype.is_complex else F64))
    kappa = (singular[..., 0] / singular[..., -1]).max().item()
    taken = []

    def counted(*args, **kwargs):
        taken.append(bool(kwargs.get("rough")))
        return correction(*args, **kwargs)

    monkeypatch.setattr("gdinv_modules.engine.refinement.correction", counted)

    def restarted():
        taken.clear()
        inverse = torch.zeros_like(matrix)
        return refine(inverse, matrix, singular_values=singular, start_over=True)

    mixed, rough = restarted(), sum(taken)
    wide_corrections = len(taken)
    # products that round otherwise than IEEE's (TF32): every correction wide
    monkeypatch.setattr("gdinv_modules.engine.refinement.ieee_products", lambda device: False)
    wide = restarted()
    assert not any(taken) and len(taken) == wide_corrections
    assert mixed.steps == wide.steps and not bool((~mixed.restarted).any())
    floor = residual64(wide.inverse, matrix)
    assert bool((residual64(mixed.inverse, matrix) <= 1.25 * floor).all())
    # none before the bound clears the rounding: only one scaled step has no scaled step after
    assert 0 < rough <= policy_scaled_steps(kappa) - 1 or (kappa < 3 and rough <= 1)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_a_start_over_measures_no_correction_of_the_x_it_drops(dtype, monkeypatch):
    # every matrix restarts (a skipped descent): X's correction, or a step from the rough one
    # handed over, would serve nothing; the restart's correction is the first one taken
    matrix = conditioned(24, 50.0, dtype=dtype, batch_shape=(2,))
    singular = torch.linalg.svdvals(matrix.double())
    far = torch.linalg.inv(matrix) * 0.5
    taken = []
    monkeypatch.setattr(
        "gdinv_modules.engine.refinement.correction",
        lambda *a, **k: taken.append(1) or correction(*a, **k),
    )
    results = []
    for handed in ({}, {"rough": torch.eye(24, dtype=dtype) - far @ matrix}):
        taken.clear()
        result = refine(far.clone(), matrix, singular_values=singular, start_over=True, **handed)
        assert len(taken) == result.steps + 1 and bool(result.restarted.all())
        results.append(result)
    assert results[0].steps == results[1].steps
    assert torch.equal(results[0].inverse, results[1].inverse)


def exact_residual(inverse, matrix, formulation):
    """What tol bounds for the formulation, in numpy's long double (11 bits past float64 on
    x86, 60 on aarch64): X's own residual, not the rounding of its measurement."""
    x, m = (t.numpy().astype(np.longdouble) for t in (inverse, matrix))
    product = {"left": x @ m, "right": m @ x, "symmetric": (x @ m + m @ x) / 2}[formulation]
    error = product - np.eye(m.shape[-1], dtype=np.longdouble)
    return float(np.sqrt((error * error).sum() / m.shape[-1]))


def test_a_right_inverse_is_refined_on_its_own_side():
    # XM and MX differ by up to kappa: refined on the left, MX - I came out at 5e-7 here
    # (6e-6 at n = 2), reported as converged to 1e-10 with no word
    matrix = conditioned(5, 1e6, seed=3)
    lapack = torch.linalg.inv(matrix)
    for formulation, other in (("left", "right"), ("right", "left")):
        result = invert(matrix, formulation=formulation)
        own = exact_residual(result.inverse, matrix, formulation)
        assert result.converged.item() and own <= 1e-10
        assert own <= 10 * exact_residual(lapack, matrix, formulation)
        # measured as it is: in float64, whose rounding of XM (about eps ||X|| ||M||, 1e-11
        # here at kappa 1e6) is as large as the residual itself, so within 3-fold
        assert own / 3 <= result.residual.item() <= 3 * own
        assert exact_residual(result.inverse, matrix, other) > 1e3 * own  # the other side's


def test_the_symmetric_residual_is_measured_after_refinement_and_a_miss_names_left():
    # no refinement step squares (XM + MX)/2 - I: refined on the left, MX - I stays up to
    # kappa times XM - I; it was reported as the left residual, 2e-11, converged
    matrix = conditioned(5, 1e6, seed=3)
    with pytest.warns(ConvergenceWarning, match=r"formulation='left' reaches (\S+) here") as got:
        result = invert(matrix, formulation="symmetric", max_steps=200)
    own = exact_residual(result.inverse, matrix, "symmetric")
    assert not result.converged.item() and own > 1e-10
    # measured in float64: off by about that product's rounding (1e-10 here, 2e-3 of it)
    rounding = product_rounding(result.inverse, matrix).item() / 5**0.5
    assert result.residual.item() == pytest.approx(own, abs=rounding)
    reached = float(re.search(r"reaches (\S+) here", str(got[0].message)).group(1))
    # the left residual of this X as float64 measures it (its rounding at kappa 1e6 is of the
    # residual's own size: no lower than the exact one); a run of 'left' meets tol there too,
    # its own X at the same floor
    assert exact_residual(result.inverse, matrix, "left") <= 1.5 * reached
    left = invert(matrix)
    assert reached <= 1e-10 and left.converged.item() and left.residual.item() < 2 * reached
    with pytest.raises(InvalidOptionError, match="one side's correction"):
        refine(result.inverse, matrix, formulation=SYMMETRIC)


def test_a_batch_refines_each_matrix_to_its_own_floor():
    batch = torch.stack([conditioned(12, 10.0, seed=5), 1e3 * conditioned(12, 500.0, seed=6)])
    result = invert(batch)
    assert result.converged.all()
    for index in range(2):
        lapack = residual64(torch.linalg.inv(batch[index]), batch[index])
        assert result.residual[index] <= 10 * lapack


# --- no silent grind ----------------------------------------------------------------------


def test_a_float32_stall_stops_far_below_max_steps_and_names_measured_remedies():
    matrix = conditioned(32, 400.0, dtype=torch.float32, seed=7)
    advice = r"stopped falling.*float32's floor.*refine=True, which reaches (\S+) here.*float64"
    with pytest.warns(ConvergenceWarning, match=advice) as caught:
        result = invert(matrix, refine=False)
    assert result.report.descent_stop == "stalled"
    assert result.report.steps < 20_000  # of max_steps=100,000
    measured = float(re.search(advice, str(caught[0].message)).group(1))
    refined = invert(matrix)  # the remedy named, taken: it reaches what the message said
    assert refined.residual.item() <= 1e-5 and refined.residual.item() <= 2 * measured
    with pytest.raises(ConvergenceError, match="float32's floor"):
        invert(matrix, refine=False, check_errors=True)


def test_a_float64_floor_that_refinement_cannot_pass_names_ridge():
    # heavy ball's float64 floor near 0.3 eps kappa^2 = 6e-12, refinement's near 1e-15: both
    # lie far above this tol, so neither refine=True nor a wider dtype is offered
    matrix = conditioned(16, 300.0, seed=11)
    with pytest.warns(
        ConvergenceWarning, match="float64's floor.*no wider dtype helps.*ridge"
    ) as caught:
        result = invert(matrix, refine=False, tol=1e-17)
    assert "refine=True" not in str(caught[0].message)
    assert result.report.descent_stop == "stalled"
    assert result.report.steps < 20_000  # of max_steps=100,000


def test_advice_never_names_an_option_already_in_effect():
    matrix = conditioned(16, 300.0, seed=11)
    with pytest.warns(ConvergenceWarning) as caught:
        invert(matrix, tol=1e-17)  # refine is on: its own floor is the cause
    message = str(caught[0].message)
    assert "refine=True" not in message and "rounding of X in float64" in message


def test_a_hopeless_condition_for_the_budget_stops_early_and_names_ridge():
    matrix = conditioned(16, 1e6, seed=8)  # about kappa/2 ln(1/tol) = 1e7 steps to tol
    with pytest.warns(ConvergenceWarning, match="too ill-conditioned for this budget.*ridge"):
        result = invert(matrix, refine=False)
    assert result.report.descent_stop == "budget"
    assert result.report.steps <= 20_000  # of max_steps=100,000


def test_refinement_rescues_what_descent_alone_cannot_reach():
    matrix = conditioned(32, 400.0, dtype=torch.float32, seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        result = invert(matrix)
    assert bool(result.converged) and result.residual.item() <= 1e-5


# --- torch.linalg.inv's contract ----------------------------------------------------------


@pytest.mark.parametrize("shape", [(0, 0), (3, 0, 0), (0, 4, 4), (2, 0, 3, 3)])
def test_empty_input_gives_an_empty_result(shape):
    matrix = torch.empty(shape, dtype=F64)
    result = invert(matrix)
    assert result.inverse.shape == torch.linalg.inv(matrix).shape == shape
    assert result.converged.shape == result.residual.shape == shape[:-2]
    assert result.converged.all()


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_complex_matrices_match_linalg_inv(dtype):
    generator = torch.Generator().manual_seed(9)
    real, imaginary = (torch.randn(3, 10, 10, generator=generator) for _ in range(2))
    matrix = (torch.complex(real, imaginary) + 6 * torch.eye(10)).to(dtype)
    result = invert(matrix)
    assert result.inverse.dtype == dtype and result.converged.all()
    exact = torch.linalg.inv(matrix)
    tol = 1e-5 if dtype == torch.complex64 else 1e-12
    torch.testing.assert_close(result.inverse, exact, atol=tol * exact.abs().max(), rtol=0)
    descent = invert(matrix, refine=False)  # the gradient's conjugate transpose, alone
    assert descent.converged.all()
    torch.testing.assert_close(descent.inverse, exact, atol=100 * tol, rtol=0)


def test_transposed_and_strided_input_works_and_is_never_modified():
    base = conditioned(20, 30.0, seed=10)
    for matrix in (base.mT, base[::2, ::2], base.mT[:, :]):
        before = matrix.clone()
        result = invert(matrix)
        assert torch.equal(matrix, before)
        torch.testing.assert_close(result.inverse, torch.linalg.inv(matrix), atol=1e-10, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_dtypes_are_refused_naming_the_supported_ones(dtype):
    with pytest.raises(MatrixDtypeError, match="float32, float64, complex64, complex128"):
        invert(spd_matrix(4, condition=2.0).to(dtype))


def test_an_unknown_option_names_the_closest_one():
    with pytest.raises(InvalidOptionError, match="no option 'tolerance'; did you mean 'tol'"):
        invert(torch.eye(2), tolerance=1e-3)
    with pytest.raises(InvalidOptionError, match="no option 'moment'; did you mean 'momentum'"):
        invert(torch.eye(2), moment=0.5)
