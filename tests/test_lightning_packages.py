"""Lightning as its users run it, under both packages: pytorch_lightning with gdinv_modules'
classes, and the unified lightning with gdinv_modules.lightning's. Precision flags, checkpoints,
several trackers, step-counted callbacks and Lightning's tools that do not apply."""

import logging
import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning
import pytest
import pytorch_lightning
import torch
from conftest import quiet_trainer
from torch import nn

import gdinv_modules
import gdinv_modules.lightning
from gdinv_modules import random_matrix, spd_matrix
from gdinv_modules.core.errors import InvalidOptionError, MatrixDtypeError

F64 = torch.float64
PACKAGES = {
    "pytorch_lightning": SimpleNamespace(
        pl=pytorch_lightning,
        ours=gdinv_modules,
        callbacks=pytorch_lightning.callbacks,
        loggers=pytorch_lightning.loggers,
        plugins=pytorch_lightning.plugins,
    ),
    "lightning": SimpleNamespace(
        pl=lightning.pytorch,
        ours=gdinv_modules.lightning,
        callbacks=lightning.pytorch.callbacks,
        loggers=lightning.pytorch.loggers,
        plugins=lightning.pytorch.plugins,
    ),
}


@pytest.fixture(params=list(PACKAGES), autouse=False)
def kit(request):
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(LeafSpec|litlogger|log_every_n_steps).*")
        yield PACKAGES[request.param]


def trainer(kit, **options):
    return quiet_trainer(kit.pl, **options)


def test_the_posts_run_with_a_logger_and_early_stopping(kit, tmp_path):
    model = kit.ours.LitInverse(random_matrix(4))
    logger = kit.loggers.CSVLogger(tmp_path)
    early = kit.callbacks.EarlyStopping("loss", patience=1000)
    trainer(kit, max_steps=1000, logger=logger, callbacks=[early]).fit(model)
    assert int((model.losses < 1e-12).nonzero()[0]) == 785
    assert (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").exists()


@pytest.mark.parametrize("precision", ["bf16-true", "16-true"])
def test_half_true_precisions_are_refused_naming_what_works(kit, precision):
    with pytest.raises(MatrixDtypeError, match="'32-true', '64-true', 'bf16-mixed'"):
        trainer(kit, max_steps=10, precision=precision).fit(kit.ours.LitInverse(random_matrix(4)))
    with pytest.raises(MatrixDtypeError, match="bfloat16"):
        trainer(kit, max_steps=10).fit(kit.ours.LitInverse(random_matrix(4)).bfloat16())


def test_mixed_precisions_step_in_ms_dtype_and_give_the_32_true_result(kit):
    runs = {}
    scaler = kit.plugins.MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    for name, options in {
        "32-true": {},
        "bf16-mixed": dict(precision="bf16-mixed"),
        "16-mixed, a GradScaler": dict(plugins=[scaler]),
    }.items():
        model = kit.ours.LitInverse(random_matrix(4))
        trainer(kit, max_steps=300, **options).fit(model)
        runs[name] = model
    for model in runs.values():
        assert torch.equal(model.inverse, runs["32-true"].inverse)
        assert torch.equal(model.losses, runs["32-true"].losses)


def test_a_float32_fit_continues_in_float64(kit):
    model = kit.ours.LitInverse(random_matrix(4))
    trainer(kit, max_steps=200).fit(model)
    model.double()
    trainer(kit, max_steps=400).fit(model)
    assert model.inverse.dtype == F64 and model.report().steps == 600  # 400 of the new Trainer
    again = kit.ours.LitInverse(random_matrix(4))
    trainer(kit, max_steps=200).fit(again)
    trainer(kit, max_steps=400, precision="64-true").fit(again)  # the same, by the Trainer
    assert torch.equal(again.inverse, model.inverse)


def test_checkpoints_give_m_and_the_momentum(kit, tmp_path):
    whole = kit.ours.LitInverse(random_matrix(4))
    trainer(kit, max_steps=600).fit(whole)
    first = trainer(kit, max_steps=300)
    first.fit(kit.ours.LitInverse(random_matrix(4)))
    path = tmp_path / "half.ckpt"
    first.save_checkpoint(path)
    resumed = kit.ours.LitInverse()  # M from ckpt_path alone
    trainer(kit, max_steps=600).fit(resumed, ckpt_path=path)
    loaded = kit.ours.LitInverse.load_from_checkpoint(path)  # momentum and history included
    trainer(kit, max_steps=300).fit(loaded)
    for model in (resumed, loaded):
        assert torch.equal(model.inverse, whole.inverse)
        assert torch.equal(model.losses, whole.losses)


def lightning_module(kit):
    class Whitened(kit.pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(4, 1, dtype=F64)
            self.register_buffer("a", torch.eye(4, dtype=F64))
            self.register_buffer("b", 2 * torch.eye(4, dtype=F64))
            self.batches = 0

        def training_step(self, batch, batch_idx):
            self.batches += 1
            with torch.no_grad():
                self.a.mul_(0.9).add_(0.1 * batch.T @ batch / len(batch))
                self.b.mul_(0.8).add_(0.2 * batch.T @ batch / len(batch))
            return self.layer(batch).square().mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

        def train_dataloader(self):
            data = torch.randn(64, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
            return torch.utils.data.DataLoader(data, batch_size=8)

    return Whitened()


def test_a_checkpoint_every_k_steps_saves_at_each_multiple_of_k(kit, tmp_path):
    checkpoint = kit.callbacks.ModelCheckpoint(
        dirpath=tmp_path, every_n_train_steps=150, save_top_k=-1, filename="{step}"
    )
    model = kit.ours.LitInverse(random_matrix(4))  # windows of 100 steps
    run = trainer(kit, max_steps=900, callbacks=[checkpoint], enable_checkpointing=True)
    run.fit(model)
    saved = sorted(int(path.stem.split("=")[1]) for path in tmp_path.glob("step=*.ckpt"))
    assert saved == list(range(150, 901, 150))
    plain = kit.ours.LitInverse(random_matrix(4))
    trainer(kit, max_steps=900).fit(plain)
    assert torch.equal(model.losses, plain.losses)  # windows end there; the steps are the same


@pytest.mark.parametrize("monitor", ["LearningRateMonitor"])  # DeviceStatsMonitor needs psutil
def test_monitors_that_count_windows_are_named_with_what_to_read(kit, tmp_path, monitor):
    model = kit.ours.LitInverse(spd_matrix(4, condition=10.0), lr="auto", momentum="auto")
    logger = kit.loggers.CSVLogger(tmp_path)
    callback = getattr(kit.callbacks, monitor)()
    with pytest.warns(UserWarning, match=f"{monitor} logs at .* the window's index"):
        trainer(kit, max_steps=300, logger=logger, callbacks=[callback]).fit(model)
    text = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    header, *rows = text.splitlines()
    columns = header.split(",")
    # LitInverse's own lr and momentum are written at the optimizer steps of loss
    lr_steps = [
        r.split(",")[columns.index("step")] for r in rows if r.split(",")[columns.index("lr")]
    ]
    assert {"lr", "momentum", "loss"} <= set(columns) and lr_steps[-1] == "300"


def test_a_step_bar_passed_by_the_user_is_the_only_bar_and_counts_steps(kit):
    bar = kit.ours.StepProgressBar(refresh_rate=5)
    run = trainer(kit, max_steps=300, callbacks=[bar], enable_progress_bar=True)
    run.fit(kit.ours.LitInverse(random_matrix(4)))
    bars = [cb for cb in run.callbacks if isinstance(cb, kit.callbacks.ProgressBar)]
    assert bars == [bar] and bar.refresh_rate == 5
    assert (bar.train_progress_bar.n, bar.train_progress_bar.total) == (300, 300)


def test_several_trackers_share_a_trainer_and_are_current_when_training_ends(kit, tmp_path):
    a = kit.ours.TrackInverse("a", every_n_steps=3)
    b = kit.ours.TrackInverse("b")
    module = lightning_module(kit)
    checkpoint = kit.callbacks.ModelCheckpoint(dirpath=tmp_path)
    run = trainer(kit, max_steps=8, callbacks=[a, b, checkpoint], enable_checkpointing=True)
    run.fit(module)
    for tracked, matrix in ((a, module.a), (b, module.b)):
        torch.testing.assert_close(tracked.inverse, torch.linalg.inv(matrix), atol=1e-9, rtol=0)
    saved = torch.load(checkpoint.best_model_path, weights_only=False)["callbacks"]
    assert {key for key in saved if key.startswith("TrackInverse")} == {
        "TrackInverse{'attribute': 'a'}",
        "TrackInverse{'attribute': 'b'}",
    }


def test_every_n_steps_counts_optimizer_steps_under_gradient_accumulation(kit):
    tracked = kit.ours.TrackInverse("a", every_n_steps=2)
    updates = []
    original = tracked.track

    def counting(trainer_, module, log=True):
        updates.append(trainer_.global_step)
        original(trainer_, module, log)

    tracked.track = counting
    module = lightning_module(kit)
    trainer(kit, max_steps=4, accumulate_grad_batches=2, callbacks=[tracked]).fit(module)
    assert module.batches == 8 and updates == [0, 2, 4]


def test_logged_metrics_hold_the_last_values(kit):
    model = kit.ours.LitInverse(spd_matrix(4, condition=10.0), lr="auto", momentum="auto")
    run = trainer(kit, max_steps=40)  # the loss still falls at every step, far above its floor
    run.fit(model)
    assert set(run.logged_metrics) >= {"loss", "mse", "residual"}
    last = model.losses[-1].item()  # the loss before the last step: the logged one is after it
    assert run.logged_metrics["loss"].item() == run.callback_metrics["loss"].item() < last


def test_lr_find_and_weight_averaging_are_refused_pointing_to_what_works(kit):
    swa = kit.callbacks.StochasticWeightAveraging(swa_lrs=0.1, swa_epoch_start=1)
    with pytest.raises(InvalidOptionError, match="StochasticWeightAveraging"):
        trainer(kit, max_steps=10, callbacks=[swa]).fit(kit.ours.LitInverse(random_matrix(4)))
    finder = kit.callbacks.LearningRateFinder()
    with pytest.raises(InvalidOptionError, match="lr='auto'"):
        trainer(kit, max_steps=10, callbacks=[finder]).fit(kit.ours.LitInverse(random_matrix(4)))


def test_a_users_tqdm_bar_keeps_its_settings_and_counts_steps(kit):
    bar = kit.callbacks.TQDMProgressBar(refresh_rate=0, process_position=1)
    run = trainer(kit, max_steps=100, callbacks=[bar], enable_progress_bar=True)
    run.fit(kit.ours.LitInverse(random_matrix(4)))
    chosen = run.progress_bar_callback
    assert chosen.train_description == "steps" and chosen is not bar  # yours is left as it was
    assert (chosen.refresh_rate, chosen.process_position) == (0, 1)


def test_a_users_rich_bar_keeps_its_settings_counts_steps_and_shows_small_values(kit):
    theme = kit.callbacks.progress.rich_progress.RichProgressBarTheme(description="bold")
    bar = kit.callbacks.RichProgressBar(refresh_rate=3, leave=True, theme=theme)
    run = trainer(kit, max_steps=250, callbacks=[bar], enable_progress_bar=True)
    matrix = spd_matrix(4, condition=10.0)
    model = kit.ours.LitInverse(matrix, lr="auto", momentum="auto", steps_per_window=10)
    run.fit(model)  # 25 windows, 3 epochs of 10: one bar for the run
    assert run.current_epoch >= 2
    chosen = run.progress_bar_callback
    assert type(chosen).__name__ == "StepRichProgressBar" and isinstance(chosen, type(bar))
    assert (chosen.refresh_rate, chosen.theme) == (3, theme) and bar.progress is None
    (task,) = chosen.progress.tasks  # leave=True would have made one per epoch
    assert (task.completed, task.total, task.description) == (250, 250, "[bold]steps")
    shown = chosen.get_metrics(run, model)
    assert float(shown["residual"]) == pytest.approx(run.callback_metrics["residual"].item(), 1e-2)
    assert float(shown["residual"]) < 1e-3 and "e-" in shown["residual"]  # not "0.000"
    custom = kit.callbacks.RichProgressBar(theme=type(theme)(metrics_format=".2e"))
    run = trainer(kit, max_steps=100, callbacks=[custom], enable_progress_bar=True)
    run.fit(model := kit.ours.LitInverse(random_matrix(4)))
    assert isinstance(run.progress_bar_callback.get_metrics(run, model)["loss"], float)


@pytest.mark.parametrize(
    "flag, instead",
    [("accumulate_grad_batches", "steps_per_window"), ("gradient_clip_val", "lr='auto'")],
)
def test_lightnings_refusal_of_automatic_flags_is_followed_by_what_to_use(kit, flag, instead):
    with pytest.warns(UserWarning, match=f"instead of {flag}.*{instead}"):
        with pytest.raises(Exception, match="not supported for manual optimization"):
            trainer(kit, max_steps=10, **{flag: 2}).fit(kit.ours.LitInverse(random_matrix(4)))


def test_after_refinement_the_logs_callback_metrics_and_bar_show_the_refined_x(kit, tmp_path):
    # "auto": a float32 M's rank check waits for the first window, whose row comes before the
    # refined one (checked at once, its spectrum would skip descent: no step, one row)
    model = kit.ours.LitInverse(spd_matrix(16, condition=100.0), lr="auto", momentum="auto",
                                tol="auto", refine=True, check_rank="auto")  # fmt: skip
    logger = kit.loggers.CSVLogger(tmp_path)
    run = trainer(kit, max_steps=5000, logger=logger, enable_progress_bar=True)
    run.fit(model)
    refined = model.report().final_residual[0]
    assert model.report().refine_steps > 0 and refined < 1e-5
    header, *rows = (Path(run.log_dir) / "metrics.csv").read_text().splitlines()
    columns = header.split(",")
    last, before = (dict(zip(columns, row.split(","), strict=True)) for row in rows[:-3:-1])
    assert last["step"] == before["step"] == str(run.global_step)  # the refined row follows
    assert float(before["residual"]) > 1e-3 and float(last["residual"]) == pytest.approx(refined)
    assert run.callback_metrics["residual"].item() == pytest.approx(refined)
    shown = run.progress_bar_callback.get_metrics(run, model)
    assert float(shown["residual"]) == pytest.approx(refined, rel=1e-2)


def test_a_compiled_lit_inverse_fits_as_the_plain_one(kit):
    # A habit: trainer.fit(torch.compile(model)). The window's host-synced loop runs as it is.
    models = []
    for compile_it in (False, True):
        model = kit.ours.LitInverse(spd_matrix(8, condition=10.0), lr="auto", momentum="auto")
        trainer(kit, max_steps=300).fit(torch.compile(model) if compile_it else model)
        models.append(model)
    plain, compiled = models
    assert torch.equal(compiled.inverse, plain.inverse) and compiled.stepper.steps == 300
