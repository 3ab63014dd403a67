"""LitInverse under a Trainer: the post reproduced, accuracy, batches, and Lightning's tools."""

import csv
import warnings

import pytest
import pytorch_lightning as pl
import torch
from conftest import first_below, quiet_trainer
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from gdinv_modules import DivergenceError, LitInverse, MatrixDataModule, NotReadyError
from gdinv_modules.core.errors import InvalidOptionError
from gdinv_modules.core.functional import identity_mse, loss_and_gradient
from gdinv_modules.core.matrices import (
    diagonal_matrix,
    random_matrix,
    random_orthogonal,
    spd_matrix,
)


def polyak(matrix: torch.Tensor) -> dict:
    """The best fixed (lr, momentum) for the mean-over-n^2 loss, from the exact singular values."""
    s = torch.linalg.svdvals(matrix.double())
    n = matrix.shape[-1]
    s_max, s_min = s.max().item(), s.min().item()
    kappa = s_max / s_min
    return dict(lr=2 * n * n / (s_max + s_min) ** 2, momentum=((kappa - 1) / (kappa + 1)) ** 2)


@pytest.mark.parametrize("name, below_1e8, below_1e12", [("m1", 499, 785), ("m2", 166, 253)])
def test_reproduces_the_posts_runs(name, below_1e8, below_1e12, request):
    matrix = request.getfixturevalue(name)
    model = LitInverse(matrix)
    trainer = quiet_trainer(max_steps=10_000)
    trainer.fit(model)
    losses = model.losses
    assert trainer.global_step == 10_000 and losses.shape == (10_000,)
    assert abs(first_below(losses, 1e-8) - below_1e8) <= 2
    assert abs(first_below(losses, 1e-12) - below_1e12) <= 2
    torch.testing.assert_close(model.inverse @ matrix, torch.eye(4), atol=1e-4, rtol=0)


def test_fused_sgd_takes_the_steps_of_torchs_plain_sgd_bit_for_bit(m1):
    model = LitInverse(m1)
    trainer = quiet_trainer(max_steps=1000)
    trainer.fit(model)
    assert trainer.optimizers[0].param_groups[0]["fused"]
    approx = torch.nn.Parameter(LitInverse(m1).inverse.clone())
    plain = torch.optim.SGD([approx], lr=0.9, momentum=0.9, foreach=False)
    losses = []
    for _ in range(1000):
        with torch.no_grad():
            loss, approx.grad = loss_and_gradient(approx, m1)
        losses.append(loss)
        plain.step()
    assert torch.equal(model.losses, torch.stack(losses))
    assert torch.equal(model.inverse, approx.detach())
    assert (first_below(model.losses, 1e-8), first_below(model.losses, 1e-12)) == (499, 785)


def test_cuda_graph_leaves_a_cpu_run_as_it_is(m2):
    runs = []
    for cuda_graph in (False, True):
        model = LitInverse(m2, cuda_graph=cuda_graph)
        quiet_trainer(max_steps=250).fit(model)
        runs.append(model)
    assert runs[1].stepper.step_graph is None
    assert torch.equal(runs[0].losses, runs[1].losses)


def test_loss_at_step_t_is_taken_before_that_steps_update(m1):
    model = LitInverse(m1)
    first_guess = model.inverse.clone()
    quiet_trainer(max_steps=3).fit(model)
    assert model.losses[0].item() == pytest.approx(identity_mse(first_guess @ m1).item(), rel=1e-6)


@pytest.mark.parametrize("max_steps, steps_per_window", [(250, 100), (7, 3), (5, 1)])
def test_global_step_and_max_steps_count_optimizer_steps(m2, max_steps, steps_per_window):
    model = LitInverse(m2, steps_per_window=steps_per_window)
    trainer = quiet_trainer(max_steps=max_steps)
    trainer.fit(model)
    assert trainer.global_step == max_steps
    assert model.losses.shape == (max_steps,)


def test_same_trajectory_for_any_steps_per_batch(m1):
    runs = []
    for steps_per_window in (1, 37, 100):
        model = LitInverse(m1, steps_per_window=steps_per_window)
        quiet_trainer(max_steps=300).fit(model)
        runs.append((model.losses, model.inverse))
    for losses, inverse in runs[1:]:
        assert torch.equal(losses, runs[0][0]) and torch.equal(inverse, runs[0][1])


MATRICES = {
    "m1": lambda: random_matrix(4),
    "m2": lambda: diagonal_matrix([1.0, 2.0, 3.0, 4.0]),
    "spd6": lambda: spd_matrix(6, condition=10.0, dtype=torch.float64),
    "orthogonal5": lambda: random_orthogonal(5, dtype=torch.float64),
    "random6": lambda: random_matrix(6, seed=7, dtype=torch.float64),
}


@pytest.mark.parametrize("formulation", ["left", "right"])
@pytest.mark.parametrize("name", sorted(MATRICES))
def test_matches_torch_linalg_inv(name, formulation):
    matrix = MATRICES[name]().double()
    model = LitInverse(matrix, formulation=formulation, init="zeros", **polyak(matrix))
    quiet_trainer(max_steps=3000).fit(model)
    exact = torch.linalg.inv(matrix)
    condition = torch.linalg.cond(matrix).item()
    tolerance = 1e3 * condition * torch.finfo(torch.float64).eps * exact.abs().max().item()
    torch.testing.assert_close(model.inverse, exact, atol=tolerance, rtol=0)


@pytest.mark.parametrize("name", ["m2", "spd6"])
def test_symmetric_formulation_matches_torch_linalg_inv(name):
    """Formulation c is conditioned by M's eigenvalues: it is tested on SPD matrices."""
    matrix = MATRICES[name]().double()
    model = LitInverse(matrix, formulation="symmetric", init="zeros", **polyak(matrix))
    quiet_trainer(max_steps=3000).fit(model)
    torch.testing.assert_close(model.inverse, torch.linalg.inv(matrix), atol=1e-11, rtol=0)


def test_batch_gives_each_matrix_the_trajectory_it_has_alone():
    batch = random_matrix(4, seed=11, batch_shape=(3,), dtype=torch.float64)
    batch[1] = spd_matrix(4, condition=5.0, dtype=torch.float64)
    options = dict(lr=0.9, momentum=0.9, steps_per_window=50)
    batched = LitInverse(batch, **options)
    first_guesses = batched.inverse.clone()
    quiet_trainer(max_steps=400).fit(batched)
    assert batched.losses.shape == (400, 3)
    for index in range(3):
        alone = LitInverse(batch[index], **options)
        with torch.no_grad():
            alone.inverse_module.inverse.copy_(first_guesses[index])
        quiet_trainer(max_steps=400).fit(alone)
        torch.testing.assert_close(batched.inverse[index], alone.inverse, rtol=1e-12, atol=1e-13)
        # Near convergence the loss is a sum of squares of rounding errors: compared loosely.
        torch.testing.assert_close(batched.losses[:, index], alone.losses, rtol=1e-5, atol=1e-24)


def test_float64_under_64_true_precision_reaches_1e_10(m1):
    model = LitInverse(m1, **polyak(m1))
    quiet_trainer(max_steps=600, precision="64-true").fit(model)
    assert model.inverse.dtype == torch.float64
    assert model.inverse_module.residual().item() < 1e-10
    exact = torch.linalg.inv(m1.double())
    torch.testing.assert_close(model.inverse, exact, atol=1e-9, rtol=0)


def test_takes_the_matrix_from_a_datamodule(m2):
    model = LitInverse(steps_per_window=50)
    quiet_trainer(max_steps=2000).fit(model, datamodule=MatrixDataModule("diagonal"))
    torch.testing.assert_close(model.inverse, torch.linalg.inv(m2), atol=1e-6, rtol=0)


def test_a_different_matrix_from_the_datamodule_is_refused(m1):
    with pytest.raises(InvalidOptionError, match="give one"):
        quiet_trainer(max_steps=10).fit(LitInverse(m1), datamodule=MatrixDataModule("diagonal"))


def test_without_any_matrix_the_error_says_where_to_give_one():
    with pytest.raises(NotReadyError, match="LitInverse has no matrix"):
        quiet_trainer(max_steps=10).fit(LitInverse())


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(lr=-0.1), "lr"),
        (dict(lr=float("nan")), "lr"),
        (dict(momentum=1.0), "momentum"),
        (dict(momentum=-0.5), "momentum"),
        (dict(steps_per_window=0), "steps_per_window"),
        (dict(loss_every=0), "loss_every"),
        (dict(formulation="sideways"), "formulation"),
    ],
)
def test_bad_hyperparameters_are_named(kwargs, words, m1):
    with pytest.raises(InvalidOptionError, match=words):
        LitInverse(m1, **kwargs)


def test_early_stopping_on_loss_stops_the_run(m1):
    model = LitInverse(m1)
    stop = EarlyStopping(monitor="loss", stopping_threshold=1e-12, check_on_train_epoch_end=True)
    trainer = quiet_trainer(max_steps=10_000, callbacks=[stop])
    trainer.fit(model)
    assert 785 <= trainer.global_step < 10_000
    assert trainer.callback_metrics["loss"].item() < 1e-12


def test_checkpoint_and_csv_logger(m1, tmp_path):
    model = LitInverse(m1)
    best = ModelCheckpoint(dirpath=tmp_path / "best", monitor="loss", mode="min")
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "last", save_last=True)
    trainer = quiet_trainer(
        max_steps=3000,
        logger=CSVLogger(tmp_path, name="run"),
        callbacks=[best, checkpoint],
        enable_checkpointing=True,
        log_every_n_steps=1,  # a logging step is a batch of steps_per_window optimizer steps
    )
    trainer.fit(model)
    with open(tmp_path / "run" / "version_0" / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("loss")]
    assert rows and {"loss", "residual"} <= rows[0].keys()
    assert float(rows[-1]["loss"]) < 1e-11
    # the metric's value for the estimate after the last window
    assert float(rows[-1]["loss"]) == pytest.approx(identity_mse(model()).item(), rel=1e-6)

    # ModelCheckpoint(monitor="loss") checks at each epoch's end, after steps 1000, 2000 and
    # 3000; the best is the step whose X has the smallest loss
    at_epoch_ends = [model.losses[1000].item(), model.losses[2000].item(), float(rows[-1]["loss"])]
    best_step = 1000 * (1 + min(range(3), key=at_epoch_ends.__getitem__))
    assert best.best_model_score.item() == pytest.approx(min(at_epoch_ends), rel=1e-6)
    assert LitInverse.load_from_checkpoint(best.best_model_path).losses.shape[0] == best_step

    restored = LitInverse.load_from_checkpoint(checkpoint.last_model_path)
    assert torch.equal(restored.inverse, model.inverse)
    assert torch.equal(restored.inverse_module.matrix, m1)
    assert torch.equal(restored.losses, model.losses)
    assert restored.hparams.lr == 0.9 and restored.hparams.momentum == 0.9


def test_resuming_from_a_checkpoint_continues_the_same_trajectory(m1, tmp_path):
    m = m1.double()
    uninterrupted = LitInverse(m)
    quiet_trainer(max_steps=600).fit(uninterrupted)

    first = LitInverse(m)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=300)
    quiet_trainer(max_steps=300, callbacks=[checkpoint], enable_checkpointing=True).fit(first)
    resumed = LitInverse(m)
    quiet_trainer(max_steps=600).fit(resumed, ckpt_path=checkpoint.last_model_path)
    assert torch.equal(resumed.inverse, uninterrupted.inverse)
    assert torch.equal(resumed.losses, uninterrupted.losses)


def test_loss_every_keeps_every_kth_loss_across_windows_and_a_resume(m1, tmp_path):
    m = m1.double()
    whole = LitInverse(m)
    quiet_trainer(max_steps=600).fit(whole)
    options = dict(loss_every=10, steps_per_window=37)  # windows straddle the kept steps
    first = LitInverse(m, **options)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=333)
    quiet_trainer(max_steps=333, callbacks=[checkpoint], enable_checkpointing=True).fit(first)
    assert (
        len(torch.load(checkpoint.last_model_path)["state_dict"]["_extra_state"]["loss_history"])
        == 34
    )  # steps 0..330
    resumed = LitInverse(m, **options)
    quiet_trainer(max_steps=600).fit(resumed, ckpt_path=checkpoint.last_model_path)
    assert torch.equal(resumed.losses, whole.losses[::10])
    assert torch.equal(resumed.loss_steps, torch.arange(0, 600, 10))
    assert torch.equal(resumed.inverse, whole.inverse)
    assert resumed.report().steps == 600


class _RecordPrecision(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, *args):
        self.seen = torch.backends.cuda.matmul.fp32_precision


@pytest.mark.parametrize("tf32, expected", [(False, "ieee"), (True, "tf32")])
def test_tf32_only_when_asked_and_the_global_setting_is_restored(m1, tf32, expected):
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    matmul.fp32_precision = "tf32" if not tf32 else "ieee"  # the opposite of what is asked
    try:
        record = _RecordPrecision()
        quiet_trainer(max_steps=10, callbacks=[record]).fit(LitInverse(m1, tf32=tf32))
        assert record.seen == expected
        assert matmul.fp32_precision == ("tf32" if not tf32 else "ieee")
    finally:
        matmul.fp32_precision = before


def test_a_failed_fit_restores_the_tf32_setting_and_the_warning_filters(m1):
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    matmul.fp32_precision = "ieee"
    filters = list(warnings.filters)
    try:
        with pytest.raises(DivergenceError):
            quiet_trainer(max_steps=1000).fit(LitInverse(m1, lr=50.0, tf32=True))
        assert matmul.fp32_precision == "ieee"
        assert warnings.filters == filters
    finally:
        matmul.fp32_precision = before
