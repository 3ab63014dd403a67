"""Windows of steps recorded in a CUDA graph and replayed, on the CPU through an emulation of
CUDA graphs' semantics (tests/graph_emulator.py); tests/test_cuda.py runs the real thing."""

import pytest
import pytorch_lightning as pl
import torch
from conftest import first_below, quiet_trainer
from graph_emulator import emulate_cuda_graphs
from pytorch_lightning.callbacks import ModelCheckpoint

from gdinv_modules import LitInverse
from gdinv_modules.core.matrices import spd_matrix
from gdinv_modules.engine.step_graph import StepGraph
from gdinv_modules.engine.stepper import HeavyBallStepper


@pytest.fixture
def emulated(monkeypatch):
    emulate_cuda_graphs(monkeypatch)


def fit(matrix, max_steps, *, graphed, callbacks=(), **options):
    model = LitInverse(matrix, cuda_graph=graphed, **options)
    trainer = quiet_trainer(max_steps=max_steps, callbacks=list(callbacks))
    trainer.fit(model)
    assert trainer.global_step == max_steps == len(model.losses)
    return model


def test_the_posts_run_replayed_from_one_recording(emulated, m1):
    eager = fit(m1, 10_000, graphed=False)
    graphed = fit(m1, 10_000, graphed=True)
    # window 0 runs eagerly (warm-up), window 1 is recorded, every window after replays it
    assert eager.stepper.step_graph is None
    assert (graphed.stepper.step_graph.captures, graphed.stepper.step_graph.replays) == (1, 99)
    assert torch.equal(graphed.losses, eager.losses)
    assert torch.equal(graphed.inverse, eager.inverse)
    assert first_below(graphed.losses, 1e-12) == 785


@pytest.mark.parametrize(
    "batch_shape, options",
    [
        ((3,), dict(lr="auto", momentum="auto")),  # retunes: windows with one run eagerly
        ((), dict(lr="auto", momentum="auto")),  # one matrix: no gradient scale, the key alone
        ((3,), dict(lr=0.05, momentum="auto", ridge=1e-3, formulation="right")),
        ((3,), dict(lr=0.03, momentum=0.0, steps_per_window=37)),  # no buffer; short last window
    ],
)
def test_replayed_windows_take_the_eager_steps(emulated, batch_shape, options):
    matrix = spd_matrix(6, condition=30.0, batch_shape=batch_shape, dtype=torch.float64)
    eager = fit(matrix, 3000, graphed=False, **options)
    graphed = fit(matrix, 3000, graphed=True, **options)
    assert graphed.stepper.step_graph.replays > 0
    assert torch.equal(graphed.losses, eager.losses)
    assert torch.equal(graphed.inverse, eager.inverse)


class HalveTheLearningRate(pl.Callback):
    def on_train_batch_start(self, trainer, model, batch, batch_idx):
        if trainer.global_step in (500, 1000):
            trainer.optimizers[0].param_groups[0]["lr"] /= 2


def test_a_changed_learning_rate_is_recorded_again(emulated):
    matrix = spd_matrix(6, condition=30.0, dtype=torch.float64)
    runs = [
        fit(matrix, 2000, graphed=graphed, lr=0.03, callbacks=[HalveTheLearningRate()])
        for graphed in (False, True)
    ]
    assert runs[1].stepper.step_graph.captures == 3
    assert torch.equal(runs[1].losses, runs[0].losses)


def windows_of_a_tuned_run(windows, steps_per_window=100):
    """(windows replayed from a graph, captures) of a tuned run, from the tuner's schedule:
    retunes at steps 0, 4, 8, ... with gaps max(4, t // 8); a window holding one runs eagerly,
    and the first graphed window after it records anew (the retune set a new gradient scale)."""
    retunes, step = set(), 0
    while step < windows * steps_per_window:
        retunes.add(step // steps_per_window)
        step += max(4, step // 8)
    graphed = [w for w in range(1, windows) if w not in retunes]  # window 0: the warm-up
    captures = sum(
        1
        for before, window in zip([None, *graphed], graphed, strict=False)
        if before is None or any(w in retunes for w in range(before + 1, window))
    )
    return len(graphed), captures


def test_a_retune_records_the_graph_again(emulated):
    matrix = spd_matrix(6, condition=30.0, batch_shape=(3,), dtype=torch.float64)
    eager = fit(matrix, 3000, graphed=False, lr="auto", momentum="auto")
    graphed = fit(matrix, 3000, graphed=True, lr="auto", momentum="auto")
    graph = graphed.stepper.step_graph
    assert (graph.replays, graph.captures) == windows_of_a_tuned_run(30) == (11, 8)
    assert torch.equal(graphed.losses, eager.losses)


def test_the_emulation_catches_a_window_recorded_too_early(emulated, monkeypatch, m1):
    """Recording SGD's first step, which creates the momentum buffer, replays that creation
    every window instead of the momentum update: the run no longer follows the eager one."""
    eager = fit(m1, 300, graphed=False)
    model = LitInverse(m1)
    model.stepper.step_graph = StepGraph(m1.device)
    model.stepper.step_graph.warm = True  # skip the warm-up window: the first is recorded
    monkeypatch.setattr(  # and drop the guard that waits for the momentum buffer
        HeavyBallStepper, "_graph_inputs", lambda self, steps: [self.module.inverse]
    )
    quiet_trainer(max_steps=300).fit(model)
    assert not torch.equal(model.losses, eager.losses)


def test_a_host_sync_inside_a_recording_is_refused(emulated):
    graph = StepGraph(torch.device("cpu"))
    graph.warm = True
    losses = torch.empty(2)
    with pytest.raises(RuntimeError, match="host sync"):
        graph.run(lambda out: out.fill_(out.sum().item()), "key", [], losses)


def test_a_recording_needs_a_warm_up_first():
    graph = StepGraph.__new__(StepGraph)  # no CUDA stream needed to check the order
    graph.warm = False
    with pytest.raises(RuntimeError, match="warm_up"):
        graph.run(lambda out: None, "key", [], torch.empty(1))


def test_a_graphed_run_resumes_from_a_checkpoint_bit_for_bit(emulated, m1, tmp_path):
    whole = fit(m1, 1000, graphed=True)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=500)
    first = LitInverse(m1, cuda_graph=True)
    quiet_trainer(max_steps=500, callbacks=[checkpoint], enable_checkpointing=True).fit(first)
    resumed = LitInverse(m1, cuda_graph=True)
    quiet_trainer(max_steps=1000).fit(resumed, ckpt_path=checkpoint.last_model_path)
    assert resumed.stepper.step_graph.replays > 0  # the restored buffer is recorded where it now is
    assert torch.equal(resumed.losses, whole.losses)
    assert torch.equal(resumed.inverse, whole.inverse)
