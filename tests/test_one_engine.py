"""One engine for every way in: invert(), LitInverse (so train.py and a user's Trainer) and the
tracker stop, warn and refine by the same StoppingPolicy; its advice is true for the matrices of
numpy's and scipy's own inverse tests (Pascal, Hilbert, Kahan, scipy's scaled diagonal)."""

import math
import re
import warnings
from math import comb

import numpy as np
import pytest
import torch
from conftest import quiet_trainer, train_py_here

from gdinv_modules import (
    ConvergenceWarning,
    InverseModule,
    InverseTracker,
    LitInverse,
    SingularMatrixWarning,
    StepOptions,
    conditioned_matrix,
    invert,
    low_rank_matrix,
)
from gdinv_modules.core.errors import InvalidOptionError, SingularMatrixError
from gdinv_modules.engine.policy import (
    HOST_RANK_PROOF_STEPS,
    RANK_PROOF_STEPS,
    StoppingPolicy,
    window_length,
)
from gdinv_modules.engine.refinement import refine, scaled_steps
from gdinv_modules.engine.stepper import HeavyBallStepper

F32, F64 = torch.float32, torch.float64


def pascal(n: int, dtype=F64) -> torch.Tensor:
    """scipy.linalg.pascal(n): binomial coefficients, kappa 1.5e6 at n = 7."""
    return torch.tensor([[comb(i + j, i) for j in range(n)] for i in range(n)], dtype=dtype)


def hilbert(n: int, dtype=F64) -> torch.Tensor:
    index = torch.arange(n, dtype=F64)
    return (1 / (index[:, None] + index[None, :] + 1)).to(dtype)


def kahan(n: int, theta: float = 1.2, dtype=F64) -> torch.Tensor:
    """numpy's and LAPACK's test matrix: upper triangular, kappa 1.4e5 at n = 30."""
    s, c = math.sin(theta), math.cos(theta)
    upper = torch.triu(-c * torch.ones(n, n, dtype=F64), 1) + torch.eye(n, dtype=F64)
    return (torch.diag(s ** torch.arange(n, dtype=F64)) @ upper).to(dtype)


def residual64(inverse: torch.Tensor, matrix: torch.Tensor) -> float:
    eye = torch.eye(matrix.shape[-1], dtype=F64)
    error = inverse.double() @ matrix.double() - eye
    return (torch.linalg.matrix_norm(error) / math.sqrt(matrix.shape[-1])).item()


def of(records, category):
    """The records of one category (Lightning adds its own FutureWarnings)."""
    return [record for record in records if issubclass(record.category, category)]


def caught(call):
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        result = call()
    return result, records


# --- advice that is true --------------------------------------------------------------------


def test_pascal_7_in_float32_is_full_rank_and_beats_lapack_by_far():
    matrix = pascal(7, F32)  # its exact inverse is representable in float32
    result, records = caught(lambda: invert(matrix))
    assert not [r for r in records if issubclass(r.category, SingularMatrixWarning)]
    ours, lapack = residual64(result.inverse, matrix), residual64(torch.linalg.inv(matrix), matrix)
    assert ours < lapack / 10  # was 0.54 against LAPACK's 0.13
    message = str(records[-1].message)  # X's rounding in float32 still leaves it above 1e-5
    assert "convert M to float64" in message and "refine=True" not in message
    assert residual64(invert(pascal(7)).inverse, pascal(7)) <= 1e-10  # the remedy named works


def test_a_wide_float32_m_is_pointed_to_the_other_side_not_to_float64():
    # rank 24 of a 24 x 40 M is full: the product XM (40 x 40) lacks rank by M's shape, and
    # float64 would not change that (the hint once said M was "past 1/eps of float32")
    matrix = torch.randn(24, 40, generator=torch.Generator().manual_seed(0))
    _, records = caught(lambda: invert(matrix))
    singular = [str(r.message) for r in records if issubclass(r.category, SingularMatrixWarning)]
    assert "formulation='right'" in singular[0] and "float64" not in singular[0]


@pytest.mark.parametrize("n", [6, 7, 8])
def test_hilbert_in_float32_is_singular_there_and_the_advice_is_float64(n):
    matrix = hilbert(n, F32)  # kappa past 1 / eps32: float32 cannot hold its inverse
    result, records = caught(lambda: invert(matrix))
    singular = [r for r in records if issubclass(r.category, SingularMatrixWarning)]
    assert "full rank in float64" in str(singular[0].message)
    assert "convert it to float64" in str(singular[0].message)
    assert all("refine=True" not in str(r.message) for r in records)  # refine is on already
    result, records = caught(lambda: invert(hilbert(n)))  # the remedy named, taken
    lapack = residual64(torch.linalg.inv(hilbert(n)), hilbert(n))
    assert result.residual.item() <= lapack  # float64 inverts it, to better than LAPACK
    assert bool(result.converged) or "ridge" in str(records[-1].message)


def test_kahan_30_in_float32_names_float64_not_ridge_or_max_steps():
    matrix = kahan(30, dtype=F32)
    result, records = caught(lambda: invert(matrix))
    assert result.report.descent_stop == "skipped"  # kappa^2 eps32 > 1: descent cannot help
    message = str(records[-1].message)
    assert "convert M to float64" in message
    assert "max_steps" not in message and "ridge" not in message
    assert result.residual.item() < residual64(torch.linalg.inv(matrix), matrix)
    wide = invert(kahan(30))
    assert bool(wide.converged) and wide.residual.item() < 1e-12


def test_scipys_scaled_diagonal_refines_from_the_scaled_start():
    matrix = torch.diag(torch.tensor([1.0, 1e-10], dtype=F64))
    # descent skipped: the rank check's singular values scale the restart, whose lower bound
    # on XM's eigenvalues grows 4-fold a step from 1e-20: log4(1e20) = 33 steps, then squarings
    result = invert(matrix)
    assert bool(result.converged) and 33 <= result.report.refine_steps <= 40
    torch.testing.assert_close(result.inverse, torch.linalg.inv(matrix), rtol=1e-12, atol=0)
    # the safe start's steps grow it 2-fold, and the first 60 do not show in ||I - XM||
    plain = refine(torch.zeros_like(matrix), matrix)
    assert plain.restarted.item() and plain.residual.item() < 1e-15 and plain.steps > 60


def test_a_measured_rate_is_measured():
    matrix = conditioned_matrix(16, condition=1e6, seed=8, dtype=F64)
    with pytest.warns(ConvergenceWarning, match="measured rate") as records:
        result = invert(matrix, refine=False)
    message = str(records[0].message)
    measured, theory = map(
        float, re.search(r"rate of (\S+) per step.*best.*: (\S+)\)", message).groups()
    )
    assert measured != theory
    # the residual's own rate over the last quarter of the run, from the loss history
    residuals = (result.losses * 16).sqrt()
    steps = len(residuals)
    start = steps - steps // 4
    ours = (residuals[start:].min() / residuals[:start].min()) ** (1 / (steps - start))
    assert measured == pytest.approx(ours.item(), abs=2e-5)


# --- one policy under a Trainer ------------------------------------------------------------


def test_lit_inverse_stops_refines_and_warns_as_invert_does():
    matrix = conditioned_matrix(32, condition=400.0, seed=7, dtype=F32)
    alone = invert(matrix, check_rank=True)  # LitInverse's default
    model = LitInverse(matrix, lr="auto", momentum="auto", init="zeros", tol="auto",
                       refine=True, steps_per_window="auto")  # fmt: skip
    trainer = quiet_trainer(max_steps=100_000)
    trainer.fit(model)
    report = model.report()
    # κ 400: by M's spectrum a scaled restart takes fewer steps than descent, for both, and
    # neither takes a descent step first
    assert report.descent_stop == alone.report.descent_stop == "skipped"
    assert report.steps == alone.report.steps == trainer.global_step == 0
    assert report.refine_steps == alone.report.refine_steps
    assert report.converged == [True] and report.final_residual[0] <= 1e-5
    torch.testing.assert_close(model.inverse, alone.inverse, rtol=0, atol=0)


def test_a_trainer_run_that_checks_the_rank_at_once_takes_sigma_max_from_it(monkeypatch):
    # LitInverse's policy starts the stepper: the check "auto" runs at once (a float64 M on the
    # CPU, with refinement) comes before the tuner, which takes sigma_max from its values
    # rather than estimating it first
    from gdinv_modules.engine import tuner

    estimates = []
    estimate = tuner.operator_sigma_max
    monkeypatch.setattr(
        tuner, "operator_sigma_max", lambda *a, **k: estimates.append(1) or estimate(*a, **k)
    )
    matrix = conditioned_matrix(32, condition=2.25, seed=3, dtype=F64)
    model = LitInverse(matrix, lr="auto", momentum="auto", init="zeros", tol="auto",
                       refine=True, check_rank="auto")  # fmt: skip
    quiet_trainer(max_steps=1000).fit(model)
    alone = invert(matrix)
    assert estimates == [] and model.report().sigma_min == alone.report.sigma_min
    assert model.report().converged == [True]
    close_to_inverse(model.inverse, matrix, 2.25)


def test_a_stall_under_a_trainer_ends_the_fit_with_the_same_warning_at_the_users_line():
    matrix = conditioned_matrix(32, condition=400.0, seed=7, dtype=F32)
    model = LitInverse(matrix, lr="auto", momentum="auto", init="zeros", tol="auto",
                       steps_per_window="auto")  # fmt: skip
    trainer = quiet_trainer(max_steps=100_000)
    with pytest.warns(ConvergenceWarning, match="stopped falling.*refine=True, which reaches") as w:
        trainer.fit(model)
    assert model.report().descent_stop == "stalled" and trainer.global_step < 20_000
    assert of(w, ConvergenceWarning)[0].filename == __file__  # the user's fit line


def test_growing_windows_stop_within_5_percent_of_tol_under_a_trainer():
    matrix = conditioned_matrix(24, condition=300.0, seed=0, dtype=F64)
    model = LitInverse(matrix, lr="auto", momentum="auto", init="zeros", tol="auto",
                       steps_per_window="auto")  # fmt: skip
    quiet_trainer(max_steps=100_000).fit(model)
    reached = model.report().steps_to_tol[0]
    assert reached <= model.stepper.steps <= reached + max(4, math.ceil(0.05 * reached))


def test_the_posts_run_gets_no_verdict_and_no_warning(m1):
    model = LitInverse(m1, lr=0.9, momentum=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        quiet_trainer(max_steps=2000).fit(model)
    assert model.report().descent_stop == "max_steps" and model.report().refine_steps == 0


def test_a_singular_matrix_warning_points_at_the_users_fit_line():
    model = LitInverse(low_rank_matrix(5, 3, dtype=F64), init="zeros")
    with pytest.warns(SingularMatrixWarning) as records:
        quiet_trainer(max_steps=10).fit(model)
    assert of(records, SingularMatrixWarning)[0].filename == __file__


def test_invert_and_the_tracker_warn_at_the_users_line():
    with pytest.warns(ConvergenceWarning) as records:
        invert(conditioned_matrix(8, condition=10.0, dtype=F64), max_steps=4, refine=False)
    assert of(records, ConvergenceWarning)[0].filename == __file__
    tracker = InverseTracker(conditioned_matrix(8, condition=10.0, dtype=F64))
    tracker.tol = 1e-17  # below what float64 holds for this M
    far = conditioned_matrix(8, condition=1e4, seed=5, dtype=F64)
    with pytest.warns(ConvergenceWarning, match="did not reach.*ridge") as records:
        update = tracker.update(far)  # a jump, under the same policy and its advice
    assert update.jumped and of(records, ConvergenceWarning)[0].filename == __file__


def test_train_py_on_ones_own_ill_conditioned_float32_file(tmp_path):
    matrix = conditioned_matrix(64, condition=3000.0, dtype=F32)
    np.save(tmp_path / "ill.npy", matrix.numpy())
    done = train_py_here(
        tmp_path, "--data.kind", "file", "--data.path", "ill.npy",
        "--trainer.enable_progress_bar", "false", "--outputs.output_dir", "run",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "converged (tol 1e-05)  1 of 1" in done.stdout
    steps = int(re.search(r"descent, refinement\s+(\d+) steps", done.stdout).group(1))
    assert steps <= 2 * invert(matrix).report.steps


FIRST_CHECK = window_length(0)  # the step of the first check from X = 0


@pytest.mark.parametrize(
    "check_rank, dtype, descent_steps",
    [(True, F64, 0), ("auto", F64, 0), ("auto", torch.float32, FIRST_CHECK)],
)
def test_a_batch_whose_descent_is_skipped_still_reports_per_matrix(
    check_rank, dtype, descent_steps
):
    # the rank check's spectrum shows descent hopeless: at the start (where "auto" runs it
    # first too: a float64 M on the CPU), or once "auto" runs it (float32: at the first check,
    # where the residual falls too slowly to show full rank by step 8)
    theta = 1.2 if dtype == F64 else 1.4  # kappa 1.4e5; in float32 (below 1/eps) 5.5e3
    batch = torch.stack([kahan(30, theta, dtype), kahan(30, theta - 0.1, dtype)])
    result = invert(batch, check_rank=check_rank)
    assert result.report.descent_stop == "skipped"
    assert result.losses.shape == (descent_steps, 2)
    assert result.converged.all() and result.steps_to_tol.shape == (2,)


def count_rank_checks(monkeypatch) -> list:
    calls = []
    find_rank = HeavyBallStepper.find_rank
    monkeypatch.setattr(
        HeavyBallStepper,
        "find_rank",
        lambda self, **kw: calls.append(self.steps) or find_rank(self, **kw),
    )
    return calls


def close_to_inverse(inverse: torch.Tensor, matrix: torch.Tensor, kappa: float) -> None:
    """X against LAPACK's float64 inverse, within 10 kappa eps of X's dtype."""
    exact = torch.linalg.inv(matrix.double())
    eps = torch.finfo(inverse.dtype).eps
    atol = 10 * kappa * eps * exact.abs().max().item()
    torch.testing.assert_close(inverse.double(), exact, atol=atol, rtol=0)


def test_auto_skips_the_rank_check_where_descent_shows_full_rank(monkeypatch):
    # float32 (a float64 M's rank is checked first on the CPU: test_auto_checks_a_float64_...)
    calls = count_rank_checks(monkeypatch)
    matrix = conditioned_matrix(48, condition=2.25, batch_shape=(3,), dtype=torch.float32)
    auto, checked = invert(matrix), invert(matrix, check_rank=True)
    assert calls == [0]  # the checked run's, at the start
    assert auto.report.rank == checked.report.rank == [48] * 3
    assert 0 < auto.report.steps <= RANK_PROOF_STEPS and auto.report.descent_stop == "tol"
    # the checked run's spectrum: a restart scaled by it takes fewer steps than descent
    assert checked.report.descent_stop == "skipped" and checked.report.steps == 0
    assert auto.report.sigma_min == [None] * 3 and checked.report.sigma_min[0] is not None
    for result in (auto, checked):
        close_to_inverse(result.inverse, matrix, 2.25)


@pytest.mark.parametrize("batch", [(), (3,)], ids=str)
def test_auto_checks_a_float64_ms_rank_first_on_the_cpu_where_refinement_runs(monkeypatch, batch):
    # there its refinement steps cost what descent's do, and the restart the singular values
    # allow beats descent from kappa 1.5 on: "auto" runs as True does, bit for bit
    calls = count_rank_checks(monkeypatch)
    matrix = conditioned_matrix(48, condition=2.25, batch_shape=batch, dtype=F64)
    auto, checked = invert(matrix), invert(matrix, check_rank=True)
    assert calls == [0, 0] and auto.report == checked.report
    assert auto.report.descent_stop == "skipped" and torch.equal(auto.inverse, checked.inverse)
    close_to_inverse(auto.inverse, matrix, 2.25)
    # without refinement (a LitInverse's default, the post's runs) it waits as before
    invert(matrix, refine=False)
    assert calls == [0, 0]


@pytest.mark.parametrize(
    "n, kappa, checked_at",
    [(16, 4.0, []), (16, 10.0, [RANK_PROOF_STEPS]), (32, 30.0, [FIRST_CHECK])],
)
def test_auto_checks_the_rank_where_the_first_steps_do_not_show_it(
    monkeypatch, n, kappa, checked_at
):
    # ||I - XM||_F at steps 0, 4, 8: 4, 1.24, 0.33 (shown: no check); 4, 2.2, 1.3 (falling
    # fast enough at step 4 to show it by step 8, though it did not); for κ 30, too slowly
    # at step 4 even at twice its rate (in log): the check then. In float32: a float64 M's
    # rank is checked first on the CPU.
    calls = count_rank_checks(monkeypatch)
    matrix = conditioned_matrix(n, condition=kappa, dtype=torch.float32, seed=1)
    result = invert(matrix)
    assert calls == checked_at and result.report.rank == [n]
    if checked_at:
        singular = torch.linalg.svdvals(matrix.double())[-1].item()
        assert result.report.sigma_min[0] == pytest.approx(singular)
    close_to_inverse(result.inverse, matrix, kappa)


def test_descent_gives_way_where_the_restart_scaled_by_ms_spectrum_is_cheaper():
    # κ 1e4: heavy ball needs about 2e4 steps to the hand-over, the scaled restart 15, then
    # plain steps to float64's floor; the residual beats LAPACK's inverse
    matrix = conditioned_matrix(32, condition=1e4, dtype=F64, seed=2)
    result = invert(matrix)  # the rank check first (float64 on the CPU), no descent step
    assert result.report.descent_stop == "skipped" and result.report.steps == 0
    assert scaled_steps(1e4) < result.report.refine_steps <= scaled_steps(1e4) + 6
    eye = torch.eye(32, dtype=F64)
    lapack = torch.linalg.matrix_norm(torch.linalg.inv(matrix) @ matrix - eye) / 32**0.5
    assert float(result.residual) <= float(lapack)
    # where Polyak's count to the hand-over (2.2 steps for n = 4, κ 2.25) is below the
    # restart's 3 scaled steps, descent runs; for n = 32 (3.2 steps) the restart
    small, larger = (conditioned_matrix(n, condition=2.25, dtype=F64, seed=2) for n in (4, 32))
    assert invert(small, check_rank=True).report.descent_stop == "tol"
    assert invert(larger, check_rank=True).report.descent_stop == "skipped"


@pytest.mark.parametrize("tol", ["auto", 0.5])
def test_auto_finds_a_rank_deficient_m_and_its_pseudo_inverse(monkeypatch, tol):
    # tol=0.5 is reached at the first check, before any residual could show the rank
    calls = count_rank_checks(monkeypatch)
    matrix = low_rank_matrix(12, 7, dtype=F64)
    with pytest.warns(SingularMatrixWarning, match="rank 7 of 12"):
        auto = invert(matrix, tol=tol)
    assert len(calls) == 1 and auto.report.rank == [7] and bool(auto.converged)
    if tol == "auto":
        with pytest.warns(SingularMatrixWarning):
            checked = invert(matrix, check_rank=True)
        torch.testing.assert_close(auto.inverse, torch.linalg.pinv(matrix), atol=1e-8, rtol=0)
        assert auto.report.steps <= checked.report.steps + 2 * RANK_PROOF_STEPS


@pytest.mark.parametrize(
    "options", [dict(formulation="symmetric"), dict(ridge=1e-3), dict(tol=None)]
)
def test_auto_checks_at_the_start_where_no_residual_can_show_the_rank(monkeypatch, options):
    # symmetric: (XM + MX)/2 = I/2 for the singular M = [[0, 1], [0, 0]] and its transpose
    calls = count_rank_checks(monkeypatch)
    stepper = HeavyBallStepper(
        InverseModule(conditioned_matrix(8, condition=4.0, dtype=F64), init="zeros",
                      formulation=options.pop("formulation", "left")),
        StepOptions("auto", "auto", check_rank="auto", ridge=options.pop("ridge", 0.0)),
    )  # fmt: skip
    StoppingPolicy(stepper, tol=options.pop("tol", 1e-10), max_steps=100).begin()
    assert calls == [0]


@pytest.mark.parametrize("rank, checked_at", [(24, []), (17, [HOST_RANK_PROOF_STEPS])])
def test_auto_waits_longer_where_the_check_would_run_on_the_host(monkeypatch, rank, checked_at):
    # a GPU's batch of matrices past 32 x 32 is decomposed on the host, for many steps' cost
    monkeypatch.setattr("gdinv_modules.engine.policy.on_host", lambda matrix: True)
    # a GPU's M is not checked first whatever its dtype: the CPU's rule, patched off
    monkeypatch.setattr(StoppingPolicy, "_rank_first", lambda self: False)
    calls = count_rank_checks(monkeypatch)
    batch = torch.stack(
        [conditioned_matrix(24, condition=30.0, dtype=F64), low_rank_matrix(24, rank, dtype=F64)]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingularMatrixWarning)
        result = invert(batch)
    # a rank-deficient matrix's residual shows too slow a fall for its proof before the wait
    assert len(calls) == len(checked_at) and result.converged.all()
    assert all(RANK_PROOF_STEPS < step <= HOST_RANK_PROOF_STEPS for step in calls)
    torch.testing.assert_close(result.inverse, torch.linalg.pinv(batch), atol=1e-8, rtol=0)


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=str)
def test_a_trackers_jump_checks_the_rank_as_invert_does(monkeypatch, dtype):
    # float64 on the CPU: first, at every cold solve (the tracker's own and each jump);
    # float32: where the first steps do not show full rank
    calls = count_rank_checks(monkeypatch)
    tracker = InverseTracker(conditioned_matrix(16, condition=2.25, batch_shape=(4,), dtype=dtype))
    new = conditioned_matrix(16, condition=2.25, batch_shape=(4,), seed=5, dtype=dtype)
    update = tracker.update(new)
    first = dtype == F64
    assert update.jumped and calls == [0, 0] * first  # float32's first steps showed full rank
    close_to_inverse(tracker.inverse, new, 2.25)
    singular = new.clone()
    singular[2] = low_rank_matrix(16, 11, dtype=dtype)
    with pytest.raises(SingularMatrixError, match="rank 11 of 16"):
        tracker.update(singular)
    # the check ran, and its warning ended the solve
    assert calls == ([0, 0, 0] if first else [FIRST_CHECK])
    close_to_inverse(tracker.inverse, new, 2.25)


def test_check_rank_is_true_false_or_auto():
    with pytest.raises(InvalidOptionError, match="check_rank must be True, False or 'auto'"):
        invert(torch.eye(3), check_rank="yes")
