"""train.py and LitInverse as a practitioner meets them: one's own file without a config, a
user's Trainer with a logger, one run in one place, and nothing left by a refused run."""

import csv
import json
import os
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import rich.progress
import torch
import yaml
from conftest import train_py_here
from pytorch_lightning.callbacks import EarlyStopping, RichProgressBar, TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger

from gdinv_modules import LitInverse
from gdinv_modules.cli.train import RUN_DEFAULTS, main
from gdinv_modules.core.errors import SingularMatrixWarning
from gdinv_modules.core.matrices import conditioned_matrix, random_matrix
from gdinv_modules.io.atomic import atomic_path
from gdinv_modules.io.matrix_io import load_matrix
from gdinv_modules.io.plotting import plot_losses, plot_run, run_figure
from gdinv_modules.training.progress import StepProgressBar, StepRichProgressBar

ROOT = Path(__file__).resolve().parents[1]


def own_matrix(path: Path) -> np.ndarray:
    """A 10 x 10 float64 matrix of condition number about 3, saved at ``path``."""
    matrix = np.random.default_rng(0).standard_normal((10, 10)) + 10 * np.eye(10)
    if path.suffix == ".npy":
        np.save(path, matrix)
    elif path.suffix == ".pt":
        torch.save(torch.from_numpy(matrix), path)
    else:
        np.savetxt(path, matrix, delimiter=",")
    return matrix


def read_rows(path: Path) -> list:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_ones_own_file_without_a_config_is_inverted_as_invert_would(tmp_path):
    matrix = own_matrix(tmp_path / "mine.npy")
    done = train_py_here(tmp_path, "--data.kind", "file", "--data.path", "mine.npy")
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "runs" / "mine" / "version_0"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["dtype"] == "float64"  # the file's own precision
    assert summary["hyperparameters"]["lr"] == "auto"
    assert summary["hyperparameters"]["momentum"] == "auto"
    assert summary["hyperparameters"]["init"] == "zeros"
    assert summary["convergence"]["tol"] == 1e-10 and summary["convergence"]["converged"] == [True]
    assert summary["steps"] <= 200  # stopped at tol, as invert() does, not at 1,000,000 steps
    inverse = np.load(run / "inverse.npy")
    assert inverse.dtype == np.float64
    np.testing.assert_allclose(inverse, np.linalg.inv(matrix), atol=1e-12)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["trainer"]["max_steps"] == RUN_DEFAULTS["trainer.max_steps"]
    assert "tol                    auto: float64's 1e-10" in done.stdout
    printed = done.stderr + done.stdout  # tqdm's bar, or rich's where rich is installed
    assert f"{summary['steps']}/100000" in printed and "Epoch" not in printed


@pytest.mark.parametrize("suffix", [".npy", ".pt", ".csv"])
def test_a_float64_file_stays_float64_and_a_float32_file_float32(tmp_path, suffix):
    matrix = own_matrix(tmp_path / f"m{suffix}")
    loaded = load_matrix(tmp_path / f"m{suffix}")
    assert loaded.dtype == torch.float64
    np.testing.assert_array_equal(loaded.numpy(), matrix)  # savetxt writes 18 digits
    np.save(tmp_path / "f32.npy", matrix.astype(np.float32))
    assert load_matrix(tmp_path / "f32.npy").dtype == torch.float32
    np.save(tmp_path / "ints.npy", np.arange(4).reshape(2, 2))
    assert load_matrix(tmp_path / "ints.npy").dtype == torch.float64


@pytest.mark.parametrize("name", ["seed_random.yaml", "seed_diagonal.yaml"])
def test_the_seed_configs_state_the_posts_settings_themselves(name):
    config = yaml.safe_load((ROOT / "configs" / name).read_text())
    model = config["model"]
    assert (model["lr"], model["momentum"], model["init"], model["tol"]) == (
        0.9,
        0.9,
        "random",
        None,
    )
    assert config["trainer"]["max_steps"] == 10_000 and config["data"]["dtype"] == "float32"


def test_a_config_without_settings_gets_the_run_defaults(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--data.kind", "spd", "--data.n", "4", "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["lr"] == "auto" and config["model"]["tol"] == "auto"
    assert config["trainer"]["max_steps"] == 100_000


def users_trainer(tmp_path: Path, callbacks=(), **options) -> pl.Trainer:
    return pl.Trainer(
        logger=CSVLogger(tmp_path),
        callbacks=[EarlyStopping("loss", patience=1000), *callbacks],
        enable_model_summary=False,
        accelerator="cpu",
        **options,
    )


def test_a_users_csv_logger_gets_every_window_at_its_optimizer_step(tmp_path):
    model = LitInverse(random_matrix(4))
    trainer = users_trainer(tmp_path, max_steps=800)  # Lightning's log_every_n_steps=50
    trainer.fit(model)
    rows = read_rows(Path(trainer.log_dir) / "metrics.csv")
    assert [int(row["step"]) for row in rows] == list(range(100, 801, 100))
    assert trainer.global_step == 800
    # the loss logged at step s is L(X_s), the loss of step s in model.losses
    losses = model.losses.double()
    for row in rows[:-1]:
        step = int(row["step"])
        assert float(row["loss"]) == pytest.approx(float(losses[step]), rel=1e-5)
    assert {"loss", "residual", "mse"} <= set(rows[0])


def test_log_every_n_steps_counts_optimizer_steps_and_the_end_is_always_written(tmp_path):
    model = LitInverse(random_matrix(4))
    trainer = users_trainer(tmp_path, max_steps=750, log_every_n_steps=300)
    trainer.fit(model)
    rows = read_rows(Path(trainer.log_dir) / "metrics.csv")
    assert [int(row["step"]) for row in rows] == [300, 600, 750]


def test_no_progress_bar_is_added_where_the_user_turned_it_off(tmp_path):
    trainer = users_trainer(tmp_path, max_steps=100, enable_progress_bar=False)
    trainer.fit(LitInverse(random_matrix(4)))
    assert trainer.progress_bar_callback is None


@pytest.mark.parametrize("bar", [TQDMProgressBar, RichProgressBar, None])  # None: Lightning's
def test_the_step_bar_counts_optimizer_steps(tmp_path, capsys, bar):
    trainer = users_trainer(tmp_path, max_steps=300, callbacks=[bar()] if bar else ())
    trainer.fit(LitInverse(random_matrix(4)))
    shown = trainer.progress_bar_callback
    assert isinstance(shown, (StepProgressBar, StepRichProgressBar))
    assert shown.train_description == "steps"
    printed = capsys.readouterr()
    assert "300/300" in printed.out + printed.err and "Epoch" not in printed.out + printed.err


def test_the_rich_bar_only_moves_forward_so_its_speed_is_the_steps(tmp_path, monkeypatch):
    # Rich reckons it/s from the bar's forward moves: one back to the window within the epoch
    # and on again counted every step so far once more (100x the speed after 20,000 steps)
    moves = []
    update = rich.progress.Progress.update

    def recorded(progress, task_id, **changes):
        task = next(task for task in progress.tasks if task.id == task_id)
        before = task.completed
        update(progress, task_id, **changes)
        moves.append((task.description, before, task.completed))

    monkeypatch.setattr(rich.progress.Progress, "update", recorded)
    trainer = users_trainer(tmp_path, max_steps=1500, callbacks=[RichProgressBar()])
    trainer.fit(LitInverse(random_matrix(4)))  # windows of 100 steps, 10 to an epoch
    steps = [(before, after) for name, before, after in moves if name.endswith("steps")]
    assert len(steps) >= 15 and steps[-1][1] == 1500
    assert all(after >= before for before, after in steps)


def test_output_dir_holds_the_whole_run_and_a_second_run_there_is_refused(tmp_path):
    own_matrix(tmp_path / "mine.npy")
    args = ("--data.kind", "file", "--data.path", "mine.npy", "--outputs.output_dir", "out")
    done = train_py_here(tmp_path, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    held = {path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()}
    assert {
        "inverse.pt",
        "inverse.npy",
        "losses.csv",
        "loss_curve.png",
        "summary.json",
        "metrics.csv",
        "hparams.yaml",
        "config.yaml",
        "checkpoints/last.ckpt",
    } == held
    assert not (tmp_path / "runs").exists() and not (tmp_path / "lightning_logs").exists()
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    again = train_py_here(tmp_path, *args)
    assert again.returncode == 2 and "OutputExistsError" in again.stderr.splitlines()[-1]
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("x")
        os.umask(0o077)
        with atomic_path(tmp_path / "b.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o600


def test_a_failed_run_leaves_nothing_behind(tmp_path):
    own_matrix(tmp_path / "mine.npy")
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("mine")
    # without refinement: with it, M's spectrum would skip descent, and lr with it
    diverging = ("--data.kind", "file", "--data.path", "mine.npy", "--model.lr", "5",
                 "--model.refine", "false")  # fmt: skip
    for where in ([], ["--outputs.output_dir", "new/deeper"], ["--outputs.output_dir", "keep"]):
        done = train_py_here(tmp_path, *diverging, "--model.momentum", "0.9", *where)
        assert done.returncode == 2 and "DivergenceError" in done.stderr.splitlines()[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep", "mine.npy"]
    assert [p.name for p in (tmp_path / "keep").iterdir()] == ["notes.txt"]


def test_a_run_refused_at_parse_leaves_nothing(tmp_path):
    own_matrix(tmp_path / "mine.npy")
    args = ("--data.kind", "file", "--data.path", "mine.npy", "--model.lr", "-1")
    done = train_py_here(tmp_path, *args)
    assert done.returncode == 2 and done.stderr.startswith("error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.npy"]


def post_run(tmp_path: Path) -> LitInverse:
    model = LitInverse(random_matrix(4))  # the post's M1, lr 0.9, momentum 0.9, no tol
    users_trainer(tmp_path, max_steps=3000, enable_progress_bar=False).fit(model)
    return model


def lines_by_label(figure) -> dict:
    return {line.get_label(): line for line in figure.axes[0].get_lines()}


def test_the_loss_plot_shows_theory_tol_its_step_and_the_float32_plateau(tmp_path):
    model = post_run(tmp_path)
    report = model.report()
    figure = run_figure(model.losses, report, 4, steps=model.loss_steps, dtype="float32")
    lines = lines_by_label(figure)
    axes = figure.axes[0]
    measured = lines["loss"]
    np.testing.assert_allclose(measured.get_ydata(), model.losses.double().numpy().ravel())
    # the theory line falls by the predicted rate squared per step
    rate = report.predicted_rate[0]
    theory = lines[f"theory: residual × {rate:.4g} per step"]
    x, y = theory.get_xdata(), theory.get_ydata()
    slope = (np.log(y[-1]) - np.log(y[0])) / (x[-1] - x[0])
    assert slope == pytest.approx(2 * np.log(rate), rel=1e-9)
    # tol as the loss it means, and the step that reached it (post's run: float32's 1e-5)
    assert lines["tol 1e-05"].get_ydata()[0] == pytest.approx(1e-10 / 4)
    reach = report.steps_to_tol[0]
    assert 600 < reach < 800 and lines[f"tol reached, step {reach}"].get_xdata()[0] == reach
    # the float32 plateau, measured, and the axis cut shortly after it begins
    plateau = next(label for label in lines if label.startswith("float32's floor (plateau)"))
    level = lines[plateau].get_ydata()[0]
    assert level == pytest.approx(float(model.losses[-300:].double().median()), rel=1e-12)
    assert 1e-14 < level < 1e-12
    assert 900 < axes.get_xlim()[1] < 1300
    assert any("not shown" in text.get_text() for text in axes.texts)


def test_a_rank_deficient_runs_plot_takes_its_rank_floor_off(tmp_path):
    matrix = torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=torch.float64)  # rank 1
    model = LitInverse(matrix, lr="auto", momentum="auto", init="zeros", tol=1e-10)
    with pytest.warns(SingularMatrixWarning, match="rank-deficient"):
        users_trainer(tmp_path, max_steps=400, enable_progress_bar=False).fit(model)
    report = model.report()
    figure = run_figure(model.losses, report, 2, steps=model.loss_steps, dtype="float64")
    axes = figure.axes[0]
    assert "rank 1 of 2" in axes.get_title() and "0.25 taken off" in axes.get_title()
    shown = lines_by_label(figure)["loss above the rank floor"].get_ydata()
    assert shown[0] == pytest.approx(float(model.losses[0]) - 0.25)
    assert shown.min() >= np.finfo(np.float64).eps * 0.25  # rounding, not spikes to 1e-308


def test_a_run_without_descent_steps_says_why_in_its_plot(tmp_path):
    # by its spectrum (the rank check, LitInverse's default) refinement's scaled restart takes
    # fewer steps than descent: no curve, but the reason and what refinement reached
    matrix = conditioned_matrix(16, condition=100.0, dtype=torch.float64)
    model = LitInverse(matrix, lr="auto", momentum="auto", init="zeros", tol="auto", refine=True)
    users_trainer(tmp_path, max_steps=400, enable_progress_bar=False).fit(model)
    report = model.report()
    assert report.descent_stop == "skipped" and len(model.losses) == 0
    figure = run_figure(model.losses, report, 16, steps=model.loss_steps, dtype="float64")
    (note,) = [text.get_text() for text in figure.axes[0].texts]
    residual = f"{max(report.final_residual):.3g}"
    assert note.startswith("descent skipped") and residual in note
    assert f"{report.refine_steps} refinement steps" in note


def test_train_py_draws_the_run_plot_and_figure_py_keeps_the_posts_look(tmp_path):
    model = post_run(tmp_path)
    path = plot_run(model.losses, model.report(), 4, tmp_path / "run.png", dtype="float32")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    post = plot_losses({"a": [1.0, 0.1], "b": [1.0, 0.01]}, tmp_path / "post.png")
    assert post.exists()


def test_fit_help_shows_our_options_first_in_plain_text(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = capsys.readouterr().out
    for markup in (":math:", ":class:", ":func:", "``"):
        assert markup not in text, markup
    ours = [text.index(option) for option in ("--model.lr", "--data.kind", "--outputs.output_dir")]
    assert max(ours) < text.index("--trainer.accelerator") < text.index("--trainer.max_steps")
    assert text.startswith("usage: train.py fit [--config FILE]")
    assert len(text[: text.index("\n\n")].splitlines()) == 3  # not 86 lines of every option
    assert "--model.matrix" not in text and "η > 0" in text


def test_lightnings_logging_interval_warning_is_not_raised_for_windows(tmp_path, recwarn):
    trainer = users_trainer(tmp_path, max_steps=200, enable_progress_bar=False)
    trainer.fit(LitInverse(random_matrix(4)))
    assert not [w for w in recwarn if "logging interval" in str(w.message)]
    with pytest.warns(UserWarning, match="logging interval"):  # the filter ended with fit
        warnings.warn("10 is smaller than the logging interval", UserWarning, stacklevel=1)


def test_a_malformed_config_gets_one_line_naming_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  lr: 0.9\n lrr: 1\n")
    with pytest.raises(SystemExit) as exited:
        main(["fit", "--config", str(bad)])
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith(f"error: {bad}, line 3, column 2: ")
    assert lines[1:] == ["see: python train.py fit --help"]
