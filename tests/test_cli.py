"""train.py: the seed configs reproduce the post, outputs are written, bad configs are refused."""

import json
from pathlib import Path

import pytest
import torch
from conftest import first_below, run_train_py

from gdinv_modules.cli.figure import main as figure_main
from gdinv_modules.cli.train import main
from gdinv_modules.core.matrices import diagonal_matrix, random_matrix
from gdinv_modules.io.losses_csv import read_losses_csv, read_losses_table
from gdinv_modules.io.matrix_io import load_matrix
from gdinv_modules.training.run_outputs import OUTPUT_FILES

ROOT = Path(__file__).resolve().parents[1]


def fit(config: str, save_dir: Path, *extra: str) -> Path:
    main(
        [
            "fit",
            "--config",
            str(ROOT / "configs" / config),
            "--trainer.logger.init_args.save_dir",
            str(save_dir),
            *extra,
        ]
    )
    runs = sorted(save_dir.glob("*/version_*"))
    return runs[-1]


@pytest.mark.parametrize(
    "config, matrix, below_1e12",
    [("seed_random.yaml", random_matrix(4), 785), ("seed_diagonal.yaml", diagonal_matrix(), 253)],
)
def test_seed_configs_reproduce_the_post_and_write_the_outputs(
    tmp_path, capsys, config, matrix, below_1e12
):
    run = fit(config, tmp_path)
    for name in OUTPUT_FILES:
        assert (run / name).is_file(), name
    losses = read_losses_csv(run / "losses.csv")
    assert len(losses) == 10_000
    assert abs(first_below(losses, 1e-12) - below_1e12) <= 2
    inverse = load_matrix(run / "inverse.npy")
    assert torch.equal(inverse, load_matrix(run / "inverse.pt"))
    torch.testing.assert_close(inverse @ matrix, torch.eye(4), atol=1e-4, rtol=0)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 10_000 and summary["residual"] < 1e-5
    assert summary["reference"] == "inv" and summary["max_abs_error"] < 1e-3
    printed = capsys.readouterr().out
    assert "after 10000 steps" in printed and "max |X - inv(M)|" in printed


def test_auto_config_stops_at_its_tolerance_and_reports_convergence(tmp_path, capsys):
    run = fit("auto_spd.yaml", tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    report = summary["convergence"]
    assert report["converged"] == [True] and report["tol"] == 1e-10
    assert report["steps_to_tol"][0] <= summary["steps"] < 100_000
    assert summary["residual"] <= 1e-10
    assert report["measured_rate"][0] == pytest.approx(report["predicted_rate"][0], rel=0.01)
    printed = capsys.readouterr().out
    assert "converged (tol 1e-10)  1 of 1" in printed and "rate per step" in printed


def test_a_second_run_gets_its_own_directory(tmp_path):
    first = fit("seed_diagonal.yaml", tmp_path, "--trainer.max_steps", "100")
    second = fit("seed_diagonal.yaml", tmp_path, "--trainer.max_steps", "100")
    assert first != second
    assert (first / "inverse.pt").is_file() and (second / "inverse.pt").is_file()


def test_the_posts_figure_from_two_runs(tmp_path, capsys):
    random_run = fit("seed_random.yaml", tmp_path / "a", "--trainer.max_steps", "300")
    diagonal_run = fit(  # a run that kept every 10th loss: the figure puts it at its steps
        "seed_diagonal.yaml",
        tmp_path / "b",
        "--trainer.max_steps",
        "300",
        "--model.loss_every",
        "10",
    )
    steps, losses = read_losses_table(diagonal_run / "losses.csv")
    assert torch.equal(steps, torch.arange(0, 300, 10)) and len(losses) == 30
    output = tmp_path / "figure.png"
    figure_main([str(random_run), str(diagonal_run), "--output", str(output)])
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):
        figure_main([str(random_run), str(diagonal_run), "--output", str(output)])
    assert "exists already" in capsys.readouterr().err


def test_print_config_shows_the_resolved_config(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["fit", "--config", str(ROOT / "configs" / "seed_random.yaml"), "--print_config"])
    assert exited.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "max_steps: 10000" in printed and "kind: random" in printed and "lr: 0.9" in printed


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--model.learning_rate", "0.5"], "learning_rate"),
        (["--model.lr", "fast"], "lr"),
        (["--data.kind", "triangular"], "kind"),
    ],
)
def test_unknown_keys_and_wrong_types_exit_with_the_parsers_message(tmp_path, capsys, extra, words):
    with pytest.raises(SystemExit) as exited:
        fit("seed_random.yaml", tmp_path, *extra)
    assert exited.value.code not in (0, None)
    assert words in capsys.readouterr().err


def test_unknown_key_in_a_config_file_is_refused(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  learnin_rate: 0.5\n")
    with pytest.raises(SystemExit) as exited:
        main(["fit", "--config", str(config)])
    assert exited.value.code not in (0, None)
    assert "learnin_rate" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--model.lr", "-0.5"], "lr (a number, or 'auto') must be a finite number > 0"),
        (["--model.momentum", "1.5"], "momentum"),
        (["--model.momentum", "1.0"], "0 <= momentum < 1"),
        (["--model.momentum", "-0.1"], "0 <= momentum < 1"),
        (["--model.ridge", "-1"], "ridge must be a finite number >= 0"),
        (["--model.steps_per_window", "0"], "steps_per_window"),
        (["--data.windows_per_epoch", "0"], "windows_per_epoch"),
        (["--data.kind", "spd", "--data.condition", "0.5"], "condition"),
        (["--data.kind", "low_rank"], "needs a rank"),
        (["--data.n", "0"], "n must be an integer >= 1"),
        (["--model.tol", "0"], "tol must be a finite number > 0"),
        (["--model.lr", "1000", "--trainer.max_steps", "3000"], "diverged"),
        (["--data.kind", "file", "--data.path", "missing.npy"], "no such file"),
    ],
)
def test_bad_values_are_refused_before_training_with_one_line(tmp_path, capsys, extra, words):
    with pytest.raises(SystemExit) as exited:
        fit("seed_random.yaml", tmp_path, *extra)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert not list(tmp_path.glob("*/version_*/inverse.pt"))


@pytest.fixture(scope="module")
def script_run(tmp_path_factory):
    """train.py run as a script, once for the tests that read what it prints."""
    save_dir = tmp_path_factory.mktemp("script")
    return run_train_py("seed_diagonal.yaml", save_dir, "--trainer.max_steps", "200")


def test_train_py_runs_as_a_script(script_run):
    assert "after 200 steps" in script_run.stdout


@pytest.mark.parametrize("config", sorted(path.name for path in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["fit", "--config", str(ROOT / "configs" / config), "--print_config"])
    assert exited.value.code in (0, None)
    assert "model:" in capsys.readouterr().out


def test_a_misspelt_option_puts_one_error_line_first_and_points_to_help(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["fit", "--config", str(ROOT / "configs" / "seed_random.yaml"), "--model.lrr", "1"])
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("error: ") and "lrr" in lines[0]
    assert lines[1:] == ["see: python train.py fit --help"]


@pytest.mark.parametrize("subcommand", ["test", "validate", "predict"])
def test_subcommands_other_than_fit_are_refused_in_one_line(subcommand, capsys):
    with pytest.raises(SystemExit) as exited:
        main([subcommand, "--config", str(ROOT / "configs" / "seed_random.yaml")])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and subcommand in err.splitlines()[0]
    assert "Traceback" not in err and len(err.strip().splitlines()) == 2


def test_a_run_prints_no_lightning_chatter(script_run):
    printed = script_run.stdout + script_run.stderr
    for chatter in ("Total params", "LeafSpec", "litlogger", "GPU available", "Seed set"):
        assert chatter not in printed, chatter


def test_a_run_of_no_steps_writes_its_outputs_and_says_it_did_not_converge(tmp_path, capsys):
    run = fit("auto_spd.yaml", tmp_path, "--trainer.max_steps", "0")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 0 and summary["convergence"]["converged"] == [False]
    assert (run / "losses.csv").read_text().splitlines() == ["step,loss"]
    assert (run / "loss_curve.png").stat().st_size > 0
    assert "after 0 steps" in capsys.readouterr().out
