"""Issue 3: automatic lr and momentum, stopping at a tolerance, divergence, the report, invert."""

import pytest
import torch
from conftest import quiet_trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from reference import heavy_ball_steps

from gdinv_modules import ConvergenceError, ConvergenceWarning, DivergenceError, LitInverse, invert
from gdinv_modules.core.errors import InvalidOptionError
from gdinv_modules.core.matrices import (
    conditioned_matrix,
    diagonal_matrix,
    hilbert_matrix,
    random_matrix,
    random_orthogonal,
    spd_matrix,
)
from gdinv_modules.core.theory import heavy_ball_rate, polyak_parameters

F64 = torch.float64


def polyak_reference_steps(matrix: torch.Tensor, tol: float) -> int:
    """Steps heavy ball with Polyak's pair from the exact SVD takes from X0 = 0."""
    s = torch.linalg.svdvals(matrix)
    lr, momentum = polyak_parameters(s[0], s[-1], matrix.shape[-1])
    steps = heavy_ball_steps(matrix, lr.item(), momentum.item(), tol=tol, max_steps=100_000)
    assert steps is not None
    return steps


@pytest.mark.parametrize(
    "name, make",
    [
        ("M1", lambda: random_matrix(4, dtype=F64)),
        ("M2", lambda: diagonal_matrix(n=4, dtype=F64)),
        ("spd16, kappa 10", lambda: spd_matrix(16, condition=10.0, dtype=F64)),
        ("spd32, kappa 100", lambda: spd_matrix(32, condition=100.0, seed=3, dtype=F64)),
        ("spd24, kappa 1000", lambda: spd_matrix(24, condition=1000.0, seed=5, dtype=F64)),
        ("random 16, kappa 163", lambda: random_matrix(16, seed=2, dtype=F64)),
    ],
)
def test_auto_reaches_tol_within_125_percent_of_polyaks_optimal_steps(name, make):
    matrix = make()
    assert torch.linalg.cond(matrix) <= 1000
    result = invert(matrix, tol=1e-10, refine=False)  # descent alone
    reference = polyak_reference_steps(matrix, 1e-10)
    assert bool(result.converged)
    assert int(result.steps_to_tol) <= 1.25 * reference, (int(result.steps_to_tol), reference)
    torch.testing.assert_close(result.inverse, torch.linalg.inv(matrix), atol=1e-8, rtol=0)


def test_orthogonal_matrix_takes_a_handful_of_steps():
    """kappa = 1: Polyak's exact pair inverts in one step; the tuner's 1% safety margin on
    sigma_max costs a few more (the only case where 1.25 times the optimum is out of reach)."""
    result = invert(random_orthogonal(16, dtype=F64), tol=1e-10, refine=False)
    assert bool(result.converged) and int(result.steps_to_tol) <= 6


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
@pytest.mark.parametrize(
    "make",
    [
        lambda: random_matrix(6, seed=4, dtype=F64),
        lambda: diagonal_matrix(n=6, dtype=F64),
        lambda: random_orthogonal(6, dtype=F64),
        lambda: spd_matrix(6, condition=100.0, dtype=F64),
    ],
)
def test_auto_converges_whatever_the_scale(make, scale):
    matrix = make() * scale
    result = invert(matrix, tol=1e-9)
    assert bool(result.converged)
    exact = torch.linalg.inv(matrix)
    torch.testing.assert_close(result.inverse, exact, atol=1e-6 * exact.abs().max().item(), rtol=0)


@pytest.mark.parametrize(
    "matrix",
    [
        hilbert_matrix(8),
        random_matrix(256, dtype=F64),
        random_matrix(512, dtype=torch.float32),
        torch.stack(
            [
                1e3 * spd_matrix(8, condition=50.0, dtype=F64),
                1e-3 * random_orthogonal(8, dtype=F64),
                hilbert_matrix(8),
                random_matrix(8, dtype=F64),
            ]
        ),
    ],
    ids=["hilbert8", "random256", "random512-float32", "mixed-batch"],
)
def test_auto_never_diverges(matrix):
    """Within a fixed budget these need not converge (Hilbert's kappa is 1.5e10), but the loss
    of every matrix must stay finite, bounded (heavy ball overshoots a little, transiently),
    and end below where it started."""
    model = LitInverse(matrix, lr="auto", momentum="auto", init="zeros", steps_per_window=100)
    quiet_trainer(max_steps=300).fit(model)
    losses = model.losses
    assert torch.isfinite(losses).all()
    assert (losses[-1] < losses[0]).all()
    assert (losses.max(dim=0).values <= 10 * losses[0]).all()


def test_mixed_batch_converges_per_matrix():
    batch = torch.stack(
        [
            1e3 * spd_matrix(8, condition=50.0, dtype=F64),
            1e-3 * random_orthogonal(8, dtype=F64),
            diagonal_matrix(n=8, dtype=F64),
        ]
    )
    result = invert(batch, tol=1e-10)
    assert result.converged.all() and result.steps_to_tol.shape == (3,)
    for index in range(3):
        exact = torch.linalg.inv(batch[index])
        scale = exact.abs().max().item()
        torch.testing.assert_close(result.inverse[index], exact, atol=1e-8 * scale, rtol=0)


@pytest.mark.parametrize("fixed", [dict(momentum=0.5), dict(lr=0.2)])
def test_one_fixed_value_and_the_other_auto(fixed):
    matrix = spd_matrix(8, condition=20.0, dtype=F64)
    params = dict(lr="auto", momentum="auto")
    params.update(fixed)
    result = invert(matrix, tol=1e-10, **params)
    assert bool(result.converged)
    key = "momentum" if "momentum" in fixed else "lr"
    assert getattr(result.report, key)[0] == pytest.approx(list(fixed.values())[0])


def test_tolerance_stops_the_trainer_early():
    matrix = spd_matrix(8, condition=10.0, dtype=F64)
    model = LitInverse(matrix, lr="auto", momentum="auto", tol=1e-8, steps_per_window=10)
    trainer = quiet_trainer(max_steps=50_000)
    trainer.fit(model)
    assert trainer.global_step < 1000
    assert model.inverse_module.residual().item() <= 1e-8
    report = model.report()
    assert report.converged == [True] and report.steps_to_tol[0] <= trainer.global_step


def test_a_report_from_every_tenth_loss_rounds_steps_up_to_a_kept_one():
    matrix = spd_matrix(8, condition=50.0, batch_shape=(3,), dtype=F64)
    reports = []
    for every in (1, 10):
        model = LitInverse(matrix, lr="auto", momentum="auto", tol=1e-9, loss_every=every)
        quiet_trainer(max_steps=5000).fit(model)
        reports.append(model.report())
    full, strided = reports
    assert strided.steps == full.steps and strided.converged == full.converged == [True] * 3
    assert strided.steps_to_tol == [-(-step // 10) * 10 for step in full.steps_to_tol]
    assert strided.measured_rate == pytest.approx(full.measured_rate, rel=1e-3)


def test_default_tolerance_follows_the_dtype():
    m = spd_matrix(6, condition=10.0)
    assert invert(m).report.tol == 1e-5
    assert invert(m.double()).report.tol == 1e-10
    assert invert(m.double()).residual.item() <= 1e-10


def test_divergence_names_lr_momentum_and_the_stable_bound(m1):
    matrix = m1.double()
    with pytest.raises(DivergenceError) as raised:
        quiet_trainer(max_steps=5000).fit(LitInverse(matrix, lr=10.0, momentum=0.5))
    message = str(raised.value)
    sigma_max = torch.linalg.svdvals(matrix)[0].item()
    bound = 1.5 * 16 / sigma_max**2
    assert "lr=10" in message and "momentum=0.5" in message
    assert f"{bound:.4g}" in message
    assert isinstance(raised.value, ValueError)


def test_a_short_estimate_of_sigma_max_is_named_with_the_exact_bound(monkeypatch):
    # power iteration from below, as one start fell 4% short on an H200: lr="auto" diverges
    matrix = conditioned_matrix(16, condition=50.0, dtype=F64)
    exact = torch.linalg.svdvals(matrix)[0]
    short = lambda m, formulation: torch.full(m.shape[:-2], 0.9 * exact.item(), dtype=F64)  # noqa: E731
    monkeypatch.setattr("gdinv_modules.engine.tuner.operator_sigma_max", short)
    with pytest.raises(DivergenceError) as raised:
        invert(matrix, check_rank=False)
    message = str(raised.value)
    assert "power iteration's estimate of sigma_max" in message and "check_rank=True" in message
    assert f"sigma_max = {exact.item():.4g}" in message  # the exact one, not the estimate
    assert invert(matrix, check_rank=True).converged.all()  # the rank check's exact sigma_max


def test_fixed_lr_past_the_bound_for_any_momentum_is_refused_before_training():
    matrix = spd_matrix(8, condition=20.0, dtype=F64)  # sigma_max = 20: bound 2 * 64 / 400
    with pytest.raises(DivergenceError, match="lr=2 is past the stable bound") as raised:
        invert(matrix, lr=2.0, momentum="auto")
    assert "0.32" in str(raised.value)


def test_report_rates_match_the_theory(m1):
    """With a fixed pair the measured rate is the heavy-ball root modulus over M's spectrum."""
    matrix = m1.double()
    model = LitInverse(matrix, lr=0.9, momentum=0.9)
    quiet_trainer(max_steps=1500).fit(model)
    report = model.report()
    s = torch.linalg.svdvals(matrix)
    predicted = heavy_ball_rate(
        s, torch.tensor(0.9, dtype=F64), torch.tensor(0.9, dtype=F64), 4
    ).item()
    assert report.predicted_rate[0] == pytest.approx(predicted, rel=1e-12)
    assert report.measured_rate[0] == pytest.approx(predicted, rel=2e-3)
    kappa = (s[0] / s[-1]).item()
    # Polyak's pair makes the extremes critically damped: a double root, known to sqrt(eps).
    assert report.polyak_rate[0] == pytest.approx((kappa - 1) / (kappa + 1), rel=1e-7)
    assert report.sigma_max[0] == pytest.approx(2.0524, abs=1e-4)
    assert report.sigma_min[0] == pytest.approx(0.10996, abs=1e-5)


def test_auto_rate_is_close_to_polyaks():
    matrix = spd_matrix(16, condition=100.0, dtype=F64)
    report = invert(matrix, tol=1e-11, refine=False).report
    assert report.measured_rate[0] <= report.polyak_rate[0] * 1.005


@pytest.mark.parametrize("steps_per_window", [1, 37])
def test_auto_trajectory_does_not_depend_on_steps_per_batch(steps_per_window):
    matrix = random_matrix(6, seed=9, dtype=F64)
    runs = []
    for k in (100, steps_per_window):
        model = LitInverse(matrix, lr="auto", momentum="auto", steps_per_window=k)
        quiet_trainer(max_steps=400).fit(model)
        runs.append(model)
    assert torch.equal(runs[0].losses, runs[1].losses)
    assert torch.equal(runs[0].inverse, runs[1].inverse)


def test_auto_run_resumes_from_a_checkpoint_bit_for_bit(tmp_path):
    matrix = torch.stack(
        [random_matrix(5, seed=1, dtype=F64), 10 * diagonal_matrix(n=5, dtype=F64)]
    )
    options = dict(lr="auto", momentum="auto", steps_per_window=50)
    whole = LitInverse(matrix, **options)
    quiet_trainer(max_steps=600).fit(whole)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=300)
    quiet_trainer(max_steps=300, callbacks=[checkpoint], enable_checkpointing=True).fit(
        LitInverse(matrix, **options)
    )
    resumed = LitInverse(matrix, **options)
    quiet_trainer(max_steps=600).fit(resumed, ckpt_path=checkpoint.last_model_path)
    assert torch.equal(resumed.losses, whole.losses)
    assert torch.equal(resumed.inverse, whole.inverse)


def test_without_the_rank_check_a_small_matrix_descends_where_the_check_skips_descent():
    # "auto" checks the rank at step 4 (κ 50: the residual falls too slowly to show it by step
    # 8), and by the spectrum a scaled restart takes fewer steps than descent; without the
    # check there is no spectrum: descent to the hand-over
    matrix = conditioned_matrix(32, condition=50.0, batch_shape=(6,), dtype=torch.float32)
    checked, unchecked = invert(matrix), invert(matrix, check_rank=False)
    assert checked.report.descent_stop == "skipped" and unchecked.report.descent_stop == "tol"
    assert checked.report.steps == 4 < unchecked.report.steps
    assert unchecked.report.rank == [None] * 6 and checked.report.rank == [32] * 6
    wide, eye = matrix.double(), torch.eye(32, dtype=F64)
    exact = torch.linalg.inv(wide)
    for result in (checked, unchecked):  # X - M^-1 = (XM - I) M^-1, both within tol
        residual = torch.linalg.matrix_norm(result.inverse.double() @ wide - eye)
        assert bool((residual <= 1e-5 * 32**0.5).all())
        error = torch.linalg.matrix_norm(result.inverse.double() - exact)
        bound = residual * torch.linalg.matrix_norm(exact, 2)
        assert bool((error <= bound * (1 + 1e-6)).all())


def test_invert_warns_or_raises_when_not_converged():
    matrix = random_matrix(32, dtype=F64)
    with pytest.warns(ConvergenceWarning, match="did not reach tol.*max_steps=50 ran out"):
        result = invert(matrix, max_steps=50, refine=False)
    assert not bool(result.converged) and int(result.steps_to_tol) == 50
    assert result.losses.shape == (50,)
    with pytest.raises(ConvergenceError, match="did not reach tol"):
        invert(matrix, max_steps=50, check_errors=True, refine=False)


def test_invert_keeps_dtype_and_returns_per_matrix_fields():
    batch = spd_matrix(5, condition=5.0, batch_shape=(2, 3))
    result = invert(batch)
    assert result.inverse.dtype == torch.float32 and result.inverse.shape == (2, 3, 5, 5)
    assert result.residual.shape == result.converged.shape == result.steps_to_tol.shape == (2, 3)
    assert result.converged.all() and (result.residual <= 1e-5).all()


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(lr="fast"), "lr"),
        (dict(momentum="high"), "momentum"),
        (dict(tol=0.0), "tol"),
        (dict(tol=-1e-3), "tol"),
        (dict(max_steps=0), "max_steps"),
        (dict(device="tpu"), "device='tpu' is not available"),
        (dict(device="cpu:x"), "device='cpu:x' is not available"),
    ]
    + ([] if torch.cuda.is_available() else [(dict(device="cuda"), "device='cuda' is not")])
    + [(dict(device=f"cuda:{torch.cuda.device_count()}"), "is not available")],
)
def test_invert_refuses_bad_options(kwargs, words):
    with pytest.raises(InvalidOptionError, match=words):
        invert(torch.eye(3), **kwargs)


def test_symmetric_formulation_reports_the_operators_spectrum():
    """For an SPD M the operator X -> (XM + MX)/2 has singular values (l_i + l_j)/2, so its
    condition number is M's and Polyak's rate is (kappa - 1)/(kappa + 1)."""
    matrix = spd_matrix(8, condition=50.0, dtype=F64)
    result = invert(matrix, formulation="symmetric", refine=False)
    assert bool(result.converged)
    assert result.report.polyak_rate[0] == pytest.approx(49 / 51, rel=1e-6)
    assert result.report.measured_rate[0] == pytest.approx(
        result.report.predicted_rate[0], rel=0.01
    )
    torch.testing.assert_close(result.inverse, torch.linalg.inv(matrix), atol=1e-9, rtol=0)


def test_a_report_before_any_step_says_nothing_converged_yet(m1):
    report = LitInverse(m1.double()).report()
    assert report.steps == 0 and report.converged == [False]
    assert report.steps_to_tol == [None] and report.measured_rate == [None]
    assert report.predicted_rate[0] == pytest.approx(
        heavy_ball_rate(torch.linalg.svdvals(m1.double()), 0.9, 0.9, 4).item()
    )
