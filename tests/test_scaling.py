"""M at any scale its dtype holds: invert() and the tracker solve 2**e M and scale X back
(exactly: powers of two), the stepper refuses an M past its band by name."""

import pytest
import pytorch_lightning as pl
import torch

from gdinv_modules import InverseTracker, LitInverse, conditioned_matrix, invert
from gdinv_modules.core.errors import MatrixScaleError
from gdinv_modules.core.scaling import scale_band, scale_exponent, times_power_of_two
from gdinv_modules.core.spectral import operator_sigma_max


def normalized(matrix: torch.Tensor) -> torch.Tensor:
    """``matrix`` times the power of two that brings its largest entry into [1/2, 1)."""
    return times_power_of_two(matrix, -int(torch.frexp(matrix.abs().amax()).exponent))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64])
def test_the_band_leaves_m_alone_inside_and_scales_it_outside(dtype):
    band = scale_band(dtype)  # the edges are powers of two, exact in every dtype
    assert scale_exponent(torch.full((2, 2), 2.0**band, dtype=dtype)) == 0
    assert scale_exponent(torch.full((2, 2), 2.0**-band, dtype=dtype)) == 0
    assert scale_exponent(torch.full((2, 2), 2.0 ** (band + 1), dtype=dtype)) == -(band + 2)
    assert scale_exponent(torch.full((2, 2), 2.0 ** -(band + 1), dtype=dtype)) == band
    assert scale_exponent(torch.zeros(3, 3, dtype=dtype)) == 0


@pytest.mark.parametrize(
    "dtype, power", [(torch.float32, 100), (torch.float32, -100), (torch.float64, 900)]
)
def test_invert_of_a_scaled_m_is_the_scaled_inverse_bit_for_bit(dtype, power):
    """2**power M0 is solved as M0 itself: X, the losses and the steps are M0's, X scaled
    back exactly; the report's lr and sigmas are told of the scaled M."""
    m0 = normalized(conditioned_matrix(12, condition=30.0, batch_shape=(2,), dtype=dtype))
    plain = invert(m0)
    scaled = invert(times_power_of_two(m0, power))
    assert torch.equal(scaled.inverse, times_power_of_two(plain.inverse, -power))
    assert torch.equal(scaled.losses, plain.losses) and torch.equal(scaled.residual, plain.residual)
    assert (scaled.report.steps, scaled.report.refine_steps) == (
        plain.report.steps,
        plain.report.refine_steps,
    )
    for got, want in zip(scaled.report.sigma_max, plain.report.sigma_max, strict=True):
        assert got == want * 2.0**power
    for got, want in zip(scaled.report.lr, plain.report.lr, strict=True):
        assert got == want * 2.0 ** (-2 * power) if want is not None else got is None


def test_a_fixed_lr_and_a_ridge_are_scaled_with_m():
    m0 = normalized(conditioned_matrix(8, condition=5.0, dtype=torch.float64))
    options = dict(lr=0.5, momentum=0.5, ridge=1e-6, refine=False, tol=1e-3)
    plain = invert(m0, **options)
    power = 400
    scaled = invert(
        times_power_of_two(m0, power),
        **{**options, "lr": 0.5 * 2.0 ** (-2 * power), "ridge": 1e-6 * 2.0 ** (2 * power)},
    )
    assert torch.equal(scaled.inverse, times_power_of_two(plain.inverse, -power))
    assert scaled.report.ridge == 1e-6 * 2.0 ** (2 * power)


@pytest.mark.parametrize(
    "dtype, scale", [(torch.float32, 1e-30), (torch.float32, 1e30), (torch.float64, 1e-250)]
)
def test_invert_matches_linalg_inv_where_the_steps_could_not_run_before(dtype, scale):
    """float32 near 1e-30 asked for a learning rate past float32 (a DivergenceError), near 1e30
    for one below it (X never moved); float64 near 1e-250 for a Gram matrix of zeros."""
    m = (conditioned_matrix(16, condition=100.0, dtype=torch.float64) * scale).to(dtype)
    result = invert(m)
    assert bool(result.converged.all())
    exponent = scale_exponent(m)
    want = torch.linalg.inv(times_power_of_two(m.double(), exponent))
    got = times_power_of_two(result.inverse.double(), -exponent)
    eps = torch.finfo(dtype).eps
    assert ((got - want).norm() / want.norm()).item() < 100 * 100 * eps  # kappa times a margin


@pytest.mark.parametrize("n, formulation", [(600, "left"), (24, "symmetric")])
def test_power_iteration_inside_the_band_where_sigma_to_the_4th_leaves_float32(n, formulation):
    """Power iteration's image A*A v has entries near sigma^2, and its norm squared them: from
    sigma about 1e9 that left float32's range, sigma_max came out 0 and the run diverged
    (``left`` where n is past the Gram matrices' route, ``symmetric`` always)."""
    m = conditioned_matrix(n, condition=10.0, dtype=torch.float32, seed=1) * 1e10
    assert scale_exponent(m) == 0  # inside the band: solved as it is
    estimate = operator_sigma_max(m, formulation)
    # the tuner's margin is 1%: float32's estimate within a tenth of it of float64's
    torch.testing.assert_close(
        estimate, operator_sigma_max(m.double(), formulation), rtol=1e-3, atol=0
    )
    result = invert(m, formulation=formulation)
    assert result.converged.item() and result.residual.item() < 1e-5


def test_an_inverse_past_the_dtype_s_range_is_refused_by_name():
    m = conditioned_matrix(4, condition=2.0, dtype=torch.float32) * 1e-40  # X near 1e40
    with pytest.raises(MatrixScaleError, match="past float32's range.*use float64"):
        invert(m)


def test_the_tracker_follows_a_tiny_matrix_through_a_jump_and_a_drift():
    first = conditioned_matrix(8, condition=10.0, dtype=torch.float32) * 1e-25
    tracker = InverseTracker(first)
    jumped = conditioned_matrix(8, condition=10.0, seed=7, dtype=torch.float32) * 1e-25
    eye = torch.eye(8, dtype=torch.float64)
    for matrix in (jumped, jumped * 1.001):
        update = tracker.update(matrix)
        residual = (update.inverse.double() @ matrix.double() - eye).norm() / 8**0.5
        assert residual.item() <= 1e-5
    assert tracker.last.refine_steps >= 1


def test_lit_inverse_refuses_an_m_past_the_band_naming_the_power_of_two():
    m = conditioned_matrix(8, condition=10.0, dtype=torch.float32) * 2.0**-80
    trainer = pl.Trainer(
        max_steps=10,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    with pytest.raises(MatrixScaleError, match=r"M \* 2\*\*\d+ .*use invert\(\)"):
        trainer.fit(LitInverse(m, lr="auto", momentum="auto"))
