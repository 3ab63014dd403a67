"""On a GPU: the post reproduced, invert on CUDA tensors, batches, and no host sync per step.
Skipped where CUDA is not available (run them with scripts/gpu_check.sh on a GPU machine)."""

import pytest
import torch
from conftest import Whitening, first_below, quiet_trainer

from gdinv_modules import LitInverse, TrackInverse, invert
from gdinv_modules.core.decomposition import wide_svd
from gdinv_modules.core.matrices import conditioned_matrix, random_matrix, spd_matrix

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def gpu_trainer(**options):
    return quiet_trainer(accelerator="gpu", devices=1, **options)


def test_the_posts_run_on_the_gpu(m1):
    model = LitInverse(m1)
    gpu_trainer(max_steps=10_000).fit(model)
    assert abs(first_below(model.losses.cpu(), 1e-12) - 785) <= 2
    inverse = model.inverse.cpu()
    torch.testing.assert_close(inverse @ m1, torch.eye(4), atol=1e-4, rtol=0)


def test_invert_keeps_a_cuda_matrix_on_the_gpu():
    matrix = spd_matrix(256, condition=10.0, dtype=torch.float64).cuda()
    result = invert(matrix)
    assert result.inverse.is_cuda and bool(result.converged)
    torch.testing.assert_close(result.inverse, torch.linalg.inv(matrix), atol=1e-9, rtol=0)


def test_a_batch_on_the_gpu_matches_the_cpu():
    batch = spd_matrix(32, condition=20.0, batch_shape=(64,), dtype=torch.float64)
    on_gpu = invert(batch.cuda(), tol=1e-10)
    on_cpu = invert(batch, tol=1e-10)
    assert on_gpu.converged.all() and on_cpu.converged.all()
    torch.testing.assert_close(on_gpu.inverse.cpu(), on_cpu.inverse, atol=1e-9, rtol=0)


def guard_windows(model, replaying_only):
    """Make the model's stepper fail on any host synchronisation inside a window of steps
    (with ``replaying_only``, inside a window replayed from a recorded CUDA graph)."""
    run = model.stepper.run

    def guarded(steps, **options):
        graph = model.stepper.step_graph
        replaying = graph is not None and graph.captures > 0
        torch.cuda.set_sync_debug_mode("error" if replaying or not replaying_only else "default")
        try:
            return run(steps, **options)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    model.stepper.run = guarded


class NoSyncLitInverse(LitInverse):
    """Fails on any host synchronisation inside the optimizer steps."""

    def on_train_start(self):
        super().on_train_start()
        guard_windows(self, replaying_only=False)


@pytest.mark.parametrize("batch_shape", [(), (16,)])
def test_no_host_sync_inside_the_optimizer_steps(batch_shape):
    matrix = spd_matrix(64, condition=10.0, batch_shape=batch_shape)
    model = NoSyncLitInverse(matrix, lr=0.5, momentum=0.5, check_rank=False)
    gpu_trainer(max_steps=300).fit(model)
    assert model.losses.shape[0] == 300


def test_auto_on_the_gpu_converges_on_a_large_well_conditioned_matrix():
    matrix = spd_matrix(1024, condition=10.0).cuda()
    result = invert(matrix, tol=1e-5)
    assert bool(result.converged)
    reference = torch.linalg.inv(matrix.double()).float()
    assert (result.inverse - reference).abs().max() < 1e-3 * reference.abs().max()


def test_random_first_guess_is_the_same_on_every_device(m1):
    assert torch.equal(LitInverse(m1.cuda()).inverse.cpu(), LitInverse(m1).inverse)
    assert torch.equal(random_matrix(4).cuda().cpu(), m1)


def fit_on_gpu(matrix, max_steps, **options):
    model = LitInverse(matrix, **options)
    trainer = gpu_trainer(max_steps=max_steps)
    trainer.fit(model)
    assert trainer.global_step == model.losses.shape[0] == max_steps
    return model


def test_a_cuda_graph_reproduces_the_posts_run(m1):
    model = fit_on_gpu(m1.cuda(), 10_000, cuda_graph=True)
    assert model.stepper.step_graph is not None and model.stepper.step_graph.captures == 1
    assert abs(first_below(model.losses.cpu(), 1e-12) - 785) <= 2


@pytest.mark.parametrize("lr, momentum", [(0.2, 0.8), ("auto", "auto")])
def test_a_cuda_graph_takes_the_eager_steps(lr, momentum):
    matrix = spd_matrix(64, condition=30.0, batch_shape=(8,), dtype=torch.float64).cuda()
    options = dict(lr=lr, momentum=momentum, check_rank=False)
    eager = fit_on_gpu(matrix, 2000, **options)
    graphed = fit_on_gpu(matrix, 2000, cuda_graph=True, **options)
    assert graphed.stepper.step_graph.captures >= 1
    # the same kernels; rounding may differ by stream, so losses at float64's floor may not
    torch.testing.assert_close(graphed.losses, eager.losses, rtol=1e-6, atol=1e-24)
    torch.testing.assert_close(graphed.inverse, eager.inverse, rtol=0, atol=1e-12)


class NoSyncAfterCapture(LitInverse):
    """Fails on any host synchronisation inside a window replayed from the graph."""

    def run_steps(self, steps, optimizer):
        replaying = self.step_graph is not None and self.step_graph.captures > 0
        torch.cuda.set_sync_debug_mode("error" if replaying else "default")
        try:
            return super().run_steps(steps, optimizer)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_no_host_sync_when_replaying_the_graph():
    matrix = spd_matrix(64, condition=10.0, batch_shape=(16,)).cuda()
    model = NoSyncAfterCapture(matrix, lr=0.5, momentum=0.5, check_rank=False, cuda_graph=True)
    gpu_trainer(max_steps=500).fit(model)
    assert model.stepper.step_graph.captures == 1 and model.losses.shape[0] == 500


def test_a_batch_of_large_matrices_is_decomposed_on_the_host_and_comes_back():
    batch = spd_matrix(40, condition=20.0, batch_shape=(8,), dtype=torch.float32).cuda()
    u, s, vh = wide_svd(batch)
    assert u.is_cuda and s.is_cuda and vh.is_cuda and s.dtype == torch.float64
    torch.testing.assert_close(s, torch.linalg.svdvals(batch.double()), atol=1e-12, rtol=0)
    torch.testing.assert_close((u * s[..., None, :]) @ vh, batch.double(), atol=1e-12, rtol=0)


def test_a_large_batch_without_the_rank_check_converges_on_the_gpu():
    # power iteration from one start missed a matrix's sigma_max by 4% here: lr="auto" diverged
    batch = conditioned_matrix(64, condition=50.0, batch_shape=(4096,), dtype=torch.float64)
    result = invert(batch.cuda().float(), check_rank=False)
    assert bool(result.converged.all())
    expected = torch.linalg.inv(batch).float()
    torch.testing.assert_close(result.inverse.cpu(), expected, atol=1e-4, rtol=0)


def test_the_tracked_inverse_follows_the_module_back_from_the_gpu():
    tracked = TrackInverse("covariance")
    model = Whitening()
    gpu_trainer(max_epochs=1, callbacks=[tracked]).fit(model)
    assert model.covariance.device.type == "cpu" and tracked.inverse.device.type == "cpu"
    expected = torch.linalg.inv(model.covariance)
    torch.testing.assert_close(tracked.inverse, expected, atol=1e-9, rtol=0)


def test_a_gpu_batch_skips_the_host_rank_check_where_descent_shows_full_rank(monkeypatch):
    # the check would take the batch to the host (cuSOLVER has no batched SVD past 32 x 32),
    # about 1000 of its steps on an H200; kappa 50 shows full rank well before 256 steps
    from gdinv_modules.engine.stepper import HeavyBallStepper

    calls = []
    find_rank = HeavyBallStepper.find_rank
    monkeypatch.setattr(
        HeavyBallStepper,
        "find_rank",
        lambda self, **kw: calls.append(self.steps) or find_rank(self, **kw),
    )
    batch = conditioned_matrix(64, condition=50.0, batch_shape=(256,), dtype=torch.float64)
    result = invert(batch.cuda())
    assert calls == [] and result.converged.all() and result.report.rank == [64] * 256
    torch.testing.assert_close(result.inverse.cpu(), torch.linalg.inv(batch), atol=1e-9, rtol=0)
