"""InverseTracker: a drifting stream, jumps, the implicit gradient, state, bad updates, and
TrackInverse in a real Trainer run."""

import math

import pytest
import pytorch_lightning as pl
import torch
from conftest import Whitening, quiet_trainer
from torch import nn

from gdinv_modules import InverseTracker, TrackInverse, conditioned_matrix, spd_matrix
from gdinv_modules.core.errors import MatrixDtypeError, MatrixShapeError, NonFiniteMatrixError
from gdinv_modules.engine.tracker import refinement_steps_needed, spectral_norm_estimate

F64 = torch.float64


def drift(matrix, eps, generator):
    """M + eps ||M||_2 N / ||N||_2: a relative step of eps in the spectral norm."""
    noise = torch.randn(matrix.shape, generator=generator, dtype=matrix.dtype)
    scale = torch.linalg.matrix_norm(matrix, 2) / torch.linalg.matrix_norm(noise, 2)
    return matrix + eps * scale[..., None, None] * noise


def relative_residual64(inverse, matrix):
    wide = torch.complex128 if matrix.is_complex() else F64
    eye = torch.eye(matrix.shape[-1], dtype=wide)
    product = inverse.to(wide) @ matrix.to(wide)
    return torch.linalg.matrix_norm(product - eye).real / math.sqrt(matrix.shape[-1])


@pytest.mark.parametrize("dtype, tol", [(F64, 1e-10), (torch.float32, 1e-5)])
def test_a_drifting_stream_takes_at_most_4_steps_per_update(dtype, tol):
    matrix = conditioned_matrix(32, condition=100.0, dtype=F64)
    generator = torch.Generator().manual_seed(1)
    tracker = InverseTracker(matrix.to(dtype))
    for _ in range(100):
        matrix = drift(matrix, 1e-3, generator)
        update = tracker.update(matrix.to(dtype))
        assert update.refine_steps <= 4 and not update.jumped
        assert update.residual.item() <= tol
        # the residual is what it says, measured independently, and it does not creep up
        assert relative_residual64(tracker.inverse, matrix.to(dtype)).item() <= tol
    torch.testing.assert_close(
        tracker.inverse.double(), torch.linalg.inv(matrix), rtol=0, atol=100 * tol
    )


def test_a_larger_drift_is_still_refined_without_descent():
    """eps = 1e-2 at kappa 50: ||I - XM||_2 <= 0.5, though ||I - XM||_F is several times
    larger; the spectral estimate lets refinement take it (5 steps) instead of a warm solve."""
    matrix = conditioned_matrix(48, condition=50.0, dtype=F64)
    generator = torch.Generator().manual_seed(6)
    tracker = InverseTracker(matrix)
    for _ in range(10):
        matrix = drift(matrix, 1e-2, generator)
        update = tracker.update(matrix)
        assert not update.jumped and update.refine_steps <= 6 and update.residual.item() <= 1e-10


def test_the_spectral_estimate_runs_only_where_the_frobenius_bounds_do_not_decide(monkeypatch):
    # ||C||_2 lies in [||C||_F / sqrt(n), ||C||_F]: a small drift is within reach by the upper
    # bound (in as many steps as the lower bound takes), a new batch beyond it by the lower one
    import gdinv_modules.engine.tracker as tracker_module

    calls = []
    real = tracker_module.spectral_norm_estimate
    monkeypatch.setattr(
        tracker_module, "spectral_norm_estimate", lambda c: calls.append(c.shape) or real(c)
    )
    batch = conditioned_matrix(16, condition=2.25, batch_shape=(4,), seed=1)  # float32
    tracker = InverseTracker(batch)
    update = tracker.update(drift(batch, 1e-3, torch.Generator().manual_seed(2)))
    assert update.refine_steps >= 1 and not update.jumped and calls == []
    update = tracker.update(conditioned_matrix(16, condition=2.25, batch_shape=(4,), seed=2))
    assert update.jumped and calls == []
    assert bool((update.residual <= 1e-5).all())
    # eps 1e-2 at kappa 50: ||C||_F past the margin, so the estimate decides (above)
    matrix = conditioned_matrix(48, condition=50.0, dtype=F64)
    tracker = InverseTracker(matrix)
    update = tracker.update(drift(matrix, 1e-2, torch.Generator().manual_seed(6)))
    assert not update.jumped and calls == [(48, 48)]


def test_steps_sized_from_the_lower_bound_take_one_more_only_where_they_fall_short(
    monkeypatch,
):
    # a rank-one change: ||C||_2 = ||C||_F, so the count from ||C||_F / sqrt(n) (2) falls one
    # short of what the Frobenius norm sizes (3): the third step, and no estimate
    import gdinv_modules.engine.tracker as tracker_module

    taken = []
    real = tracker_module.refine_counted
    monkeypatch.setattr(
        tracker_module, "refine_counted", lambda *a, **k: taken.append(a[2]) or real(*a, **k)
    )
    monkeypatch.setattr(tracker_module, "spectral_norm_estimate", None)  # never called
    matrix = conditioned_matrix(16, condition=5.0, dtype=F64)
    generator = torch.Generator().manual_seed(0)
    u, v = (torch.randn(16, 1, generator=generator, dtype=F64) for _ in "uv")
    change = u @ v.mT / (u.norm() * v.norm())
    for size, steps in [(0.0135, [2]), (0.0165, [2, 1])]:
        taken.clear()
        update = InverseTracker(matrix).update(matrix + size * change)
        assert taken == steps and update.refine_steps == sum(steps) and not update.jumped
        assert update.residual.item() <= 1e-10


def count_corrections(monkeypatch) -> dict:
    """Corrections taken, rough (one product in X's dtype) and wide, by the tracker and by
    the refinement steps it counts."""
    import gdinv_modules.engine.refinement as refinement_module
    import gdinv_modules.engine.tracker as tracker_module

    counts = {"rough": 0, "wide": 0}
    real = refinement_module.correction

    def counted(inverse, matrix, *, out=None, rough=False):
        counts["rough" if rough else "wide"] += 1
        return real(inverse, matrix, out=out, rough=rough)

    monkeypatch.setattr(refinement_module, "correction", counted)
    monkeypatch.setattr(tracker_module, "correction", counted)
    return counts


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64])
@pytest.mark.parametrize("eps, rough_steps", [(1e-2, 3), (1e-3, 1)])
def test_a_float32_update_takes_its_first_corrections_rough_and_lands_where_wide_ones_do(
    monkeypatch, eps, rough_steps, dtype
):
    import gdinv_modules.engine.tracker as tracker_module

    wide = torch.complex128 if dtype.is_complex else F64
    start = conditioned_matrix(32, condition=50.0, batch_shape=(8,), dtype=wide)
    matrix = drift(start, eps, torch.Generator().manual_seed(3)).to(dtype)
    start = start.to(dtype)
    first = InverseTracker(start).inverse
    counts = count_corrections(monkeypatch)
    rough = InverseTracker(start, inverse=first).update(matrix)
    # one correction a step and the last, measured wide: rough while C lies far above the
    # rounding (at eps 1e-2 the first three of four steps; at 1e-3 the first of two)
    assert counts == {"rough": rough_steps, "wide": rough.refine_steps + 1 - rough_steps}
    assert not rough.jumped
    counts.update(rough=0, wide=0)
    monkeypatch.setattr(tracker_module, "ieee_products", lambda device: False)  # TF32, say
    measured_wide = InverseTracker(start, inverse=first).update(matrix)
    assert counts == {"rough": 0, "wide": measured_wide.refine_steps + 1}
    assert not measured_wide.jumped
    # the same steps to the same floor: the rough step's rounding is squared away
    assert rough.refine_steps == measured_wide.refine_steps
    assert bool((rough.residual <= 1e-5).all())
    assert bool((rough.residual <= 4 * measured_wide.residual).all())
    measured = relative_residual64(rough.inverse, matrix)
    torch.testing.assert_close(rough.residual, measured.double(), rtol=1e-3, atol=0)


def test_a_correction_near_its_rounding_is_measured_wide_and_the_next_starts_wide(monkeypatch):
    # ||C||_F^2 below 4 sqrt(n) u ||X|| ||M||: the rough step would leave the rounding, not
    # ||C||^2. The update measures it again wide; the stream's next updates start wide until
    # a wide correction shows the rough one would serve again.
    start = conditioned_matrix(32, condition=50.0, batch_shape=(8,), dtype=F64)
    generator = torch.Generator().manual_seed(4)
    tracker = InverseTracker(start.float())
    counts = count_corrections(monkeypatch)
    rough_per_update = []
    matrix = start
    for eps in (1e-5, 1e-5, 1e-2, 1e-2):
        matrix = drift(matrix, eps, generator)
        counts.update(rough=0, wide=0)
        update = tracker.update(matrix.float())
        assert not update.jumped and bool((update.residual <= 1e-5).all())
        rough_per_update.append(counts["rough"])
    assert rough_per_update[:3] == [1, 0, 0] and rough_per_update[3] >= 1


def test_a_rough_first_step_is_counted_with_its_rounding_in():
    from gdinv_modules.engine.tracker import _rough_steps, _steps_needed

    # ||C|| = 0.0845 reaches 5.7e-5 in 2 squarings (0.0845^4 = 5.1e-5); a first step from a
    # correction rounded by 1e-3 leaves up to 0.0855^2 + 1e-3 = 8.3e-3, then 2 more
    assert _steps_needed(0.0845, 5.7e-5, None, 0.0) == refinement_steps_needed(0.0845, 5.7e-5)
    assert _steps_needed(0.0845, 5.7e-5, None, 0.0) == 2
    assert _steps_needed(0.0845, 5.7e-5, None, 1e-3) == 3
    assert _steps_needed(1e-6, 5.7e-5, None, 1e-9) == 1  # the rough step itself, measured
    assert _steps_needed(0.95, 5.7e-5, 0.9, 0.2) is None  # 0.9 + 0.2 past 1: cannot be sized
    # ||C||_F 0.7, ||C||_2 0.5, to 8e-5: four steps, of which three can take rough corrections
    # (C3 <= 6.5e-3 after them, squared to 3.2e-5), the fourth would cost a fifth step
    assert [_steps_needed(0.7, 8e-5, 0.5, 8e-4, rough) for rough in (1, 2, 3, 4)] == [4, 4, 4, 5]
    assert (
        refinement_steps_needed(0.7, 8e-5, 0.5) == 4 and _rough_steps(0.7, 8e-5, (0.5,), 8e-4) == 3
    )
    # under two bounds, as many as leave both counts: (0.0875: 3, 3, 4) and (0.7: 5, 5, 5)
    assert _rough_steps(0.7, 8e-5, (0.7 / 8, None), 8e-4) == 2


def test_a_rough_correction_just_above_its_rounding_is_stepped_from(monkeypatch):
    # at ||C||_F^2 = 1.5 times the rounding counted in, the rough step serves: taken, and the
    # update reaches tol in the steps it counted, with no second plan and no jump
    import gdinv_modules.engine.tracker as tracker_module
    from gdinv_modules.engine.refinement import rough_floor

    taken = []
    real = tracker_module.refine_counted
    monkeypatch.setattr(
        tracker_module, "refine_counted", lambda *a, **k: taken.append(a[2]) or real(*a, **k)
    )
    start = conditioned_matrix(32, condition=50.0, dtype=F64)
    inverse = torch.linalg.inv(start).float()
    noise = torch.randn(32, 32, generator=torch.Generator().manual_seed(5), dtype=F64)
    slack = rough_floor(inverse, start.float()).item()
    size = (1.5 * slack) ** 0.5  # M (I - D) with ||D||_F = size: C is about D
    matrix = (start @ (torch.eye(32, dtype=F64) - size * noise / noise.norm())).float()
    counts = count_corrections(monkeypatch)
    update = InverseTracker(start.float(), inverse=inverse).update(matrix)
    assert counts["rough"] == 1 and len(taken) == 1  # no second plan, no step short
    assert not update.jumped and update.residual.item() <= 1e-5


def test_products_round_as_ieee_unless_tf32_or_bfloat16_passes_are_allowed():
    from gdinv_modules.engine.refinement import ieee_products

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    before = torch.backends.cuda.matmul.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision
    try:
        assert ieee_products(cpu) and ieee_products(cuda)
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        assert ieee_products(cpu) and not ieee_products(cuda)
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"
        assert not ieee_products(cpu)
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision = (
            before
        )
    assert not ieee_products(torch.device("meta"))


def test_the_spectral_estimate_is_exact_for_small_matrices_and_close_from_below_past_them():
    one = 0.1 * conditioned_matrix(32, condition=8.0, seed=7, dtype=F64)
    exact = torch.linalg.matrix_norm(one, 2)
    torch.testing.assert_close(spectral_norm_estimate(one), exact, rtol=32 * 2**-52, atol=0)
    # 160 of them: more work for the Gram matrices than for 16 power iterations
    many = 0.1 * conditioned_matrix(32, condition=8.0, batch_shape=(160,), seed=7, dtype=F64)
    estimate, exact = spectral_norm_estimate(many), torch.linalg.matrix_norm(many, 2)
    assert bool((0.9 * exact <= estimate).all() and (estimate <= exact * (1 + 1e-12)).all())


def test_an_update_returns_an_x_of_its_own():
    # later updates write the tracker's X, never one an update returned: refined, unchanged
    # (no step), or a jump's
    batch = conditioned_matrix(16, condition=3.0, batch_shape=(2,), dtype=F64)
    tracker = InverseTracker(batch)
    generator = torch.Generator().manual_seed(3)
    moved = drift(batch, 1e-3, generator)
    updates = [tracker.update(moved), tracker.update(moved)]  # the second takes no step
    updates.append(
        tracker.update(conditioned_matrix(16, condition=3.0, batch_shape=(2,), seed=9, dtype=F64))
    )
    assert updates[1].refine_steps == 0 and updates[2].jumped
    kept = [update.inverse.clone() for update in updates]
    tracker.update(drift(batch, 1e-3, generator))
    for update, inverse in zip(updates, kept, strict=True):
        assert torch.equal(update.inverse, inverse)
        assert (
            update.inverse.untyped_storage().data_ptr()
            != tracker.inverse.untyped_storage().data_ptr()
        )


def test_a_batch_is_tracked_per_matrix():
    batch = spd_matrix(8, condition=20.0, batch_shape=(3,), dtype=F64)
    tracker = InverseTracker(batch)
    generator = torch.Generator().manual_seed(2)
    batch = drift(batch, 1e-3, generator)
    update = tracker.update(batch)
    assert update.residual.shape == (3,) and (update.residual <= 1e-10).all()
    torch.testing.assert_close(update.inverse, torch.linalg.inv(batch), atol=1e-9, rtol=0)


def test_a_jump_too_large_for_refinement_is_survived_and_said():
    matrix = spd_matrix(16, condition=10.0, dtype=F64)
    tracker = InverseTracker(matrix)
    jumped = matrix + 20 * torch.eye(16, dtype=F64)  # ||I - X M_new|| far above 1
    update = tracker.update(jumped)
    assert update.jumped and update.steps > 0
    assert update.residual.item() <= 1e-10
    torch.testing.assert_close(tracker.inverse, torch.linalg.inv(jumped), atol=1e-10, rtol=0)


def test_the_gradient_is_linalg_invs_to_1e_8():
    generator = torch.Generator().manual_seed(3)
    matrix = conditioned_matrix(6, condition=20.0, batch_shape=(2,), dtype=F64)
    weights = torch.randn(2, 6, 6, generator=generator, dtype=F64)
    tracker = InverseTracker(matrix)
    leaf = matrix.clone().requires_grad_()
    (tracker(leaf) * weights).sum().backward()
    ours = leaf.grad
    reference = matrix.clone().requires_grad_()
    (torch.linalg.inv(reference) * weights).sum().backward()
    torch.testing.assert_close(ours, reference.grad, atol=1e-8, rtol=0)


def test_a_network_that_outputs_m_trains_through_the_tracked_inverse_as_through_inv():
    """The same network trained through the tracked inverse and through torch.linalg.inv
    follows the same trajectory: the tracker's gradient is the inverse's."""
    features = torch.randn(3, generator=torch.Generator().manual_seed(4), dtype=F64)
    target = 0.1 * torch.ones(3, 3, dtype=F64)
    runs = []
    for through_tracker in (True, False):
        torch.manual_seed(4)
        net = nn.Linear(3, 9, dtype=F64)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.2)

        def make_matrix(net=net):
            return net(features).view(3, 3) + 4 * torch.eye(3, dtype=F64)

        tracker = InverseTracker(make_matrix().detach())
        losses = []
        for _ in range(30):
            optimizer.zero_grad()
            inverse = tracker(make_matrix()) if through_tracker else torch.linalg.inv(make_matrix())
            loss = (inverse - target).square().sum()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        runs.append(torch.tensor(losses, dtype=F64))
    torch.testing.assert_close(runs[0], runs[1], atol=1e-10, rtol=0)
    assert runs[0][-1] < runs[0][0]


def test_state_dict_round_trip_continues_from_the_same_inverse():
    matrix = spd_matrix(8, condition=10.0, dtype=F64)
    tracker = InverseTracker(matrix)
    tracker.update(matrix + 1e-3 * torch.eye(8, dtype=F64))
    restored = InverseTracker(torch.eye(8, dtype=F64), inverse=torch.eye(8, dtype=F64))
    restored.load_state_dict(tracker.state_dict())
    assert torch.equal(restored.inverse, tracker.inverse)
    assert torch.equal(restored.matrix, tracker.matrix)
    following = matrix + 2e-3 * torch.eye(8, dtype=F64)
    assert torch.equal(restored.update(following).inverse, tracker.update(following).inverse)


@pytest.mark.parametrize(
    "bad, error",
    [
        (torch.eye(5, dtype=F64), MatrixShapeError),
        (torch.eye(4, dtype=torch.float32), MatrixDtypeError),
        (torch.full((4, 4), math.nan, dtype=F64), NonFiniteMatrixError),
    ],
)
def test_a_bad_update_is_refused_and_the_last_good_inverse_kept(bad, error):
    matrix = spd_matrix(4, condition=5.0, dtype=F64)
    tracker = InverseTracker(matrix)
    before = tracker.inverse.clone()
    with pytest.raises(error):
        tracker.update(bad)
    assert torch.equal(tracker.inverse, before) and torch.equal(tracker.matrix, matrix)


def test_steps_needed_follow_from_squaring():
    assert refinement_steps_needed(0.05, 1e-10) == 3  # 2.5e-3, 6e-6, 4e-11
    assert refinement_steps_needed(0.5, 1e-10) == 6
    assert refinement_steps_needed(1e-12, 1e-10) == 0


def test_track_inverse_in_a_trainer_run_logs_and_checkpoints(tmp_path):
    model = Whitening()
    callback = TrackInverse("covariance", every_n_steps=2)
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = quiet_trainer(
        max_steps=40,
        callbacks=[callback, checkpoint],
        logger=pl.loggers.CSVLogger(tmp_path),
        log_every_n_steps=1,
        enable_checkpointing=True,
    )
    trainer.fit(model)
    torch.testing.assert_close(
        callback.inverse, torch.linalg.inv(model.covariance), atol=1e-9, rtol=0
    )
    logged = trainer.logged_metrics
    assert logged["covariance/residual"] <= 1e-10 and 0 <= logged["covariance/steps"] <= 4
    saved = torch.load(checkpoint.last_model_path, weights_only=False)
    restored = TrackInverse("covariance")
    restored.load_state_dict(next(v for k, v in saved["callbacks"].items() if "TrackInverse" in k))
    assert torch.equal(restored.inverse, callback.inverse)
