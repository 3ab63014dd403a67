"""Shared fixtures: the post's matrices and a quiet Trainer."""

import contextlib
import io
import logging
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from gdinv_modules.cli.train import main
from gdinv_modules.core.matrices import diagonal_matrix, random_matrix


@pytest.fixture(autouse=True)
def _quiet_lightning():
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(LeafSpec|log_every_n_steps|litlogger).*")
        yield


@pytest.fixture
def m1() -> torch.Tensor:
    """The post's random matrix: torch.rand(4, 4) right after torch.manual_seed(314)."""
    return random_matrix(4)


@pytest.fixture
def m2() -> torch.Tensor:
    """The post's diagonal matrix diag(1, 2, 3, 4)."""
    return diagonal_matrix([1.0, 2.0, 3.0, 4.0])


QUIET = dict(
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    accelerator="cpu",
)


def quiet_trainer(package=pl, **options) -> pl.Trainer:
    """A Trainer (of ``package``: pytorch_lightning, or lightning.pytorch) that writes nothing
    and prints little, unless options say otherwise."""
    return package.Trainer(**{**QUIET, **options})


def first_below(losses: torch.Tensor, threshold: float) -> int:
    """The first step whose loss is below ``threshold``."""
    below = (losses < threshold).nonzero()
    assert len(below), f"the loss never fell below {threshold}"
    return int(below[0])


ROOT = Path(__file__).resolve().parents[1]


def train_py_args(config: str, save_dir: Path, *extra: str) -> list:
    """What follows ``train.py fit`` to run ``configs/CONFIG`` writing under ``save_dir``,
    quietly."""
    return [
        "--config", str(ROOT / "configs" / config),
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(save_dir),
        *extra,
    ]  # fmt: skip


def train_py_command(config: str, save_dir: Path, *extra: str) -> list:
    """``python train.py fit`` with :func:`train_py_args`."""
    return [sys.executable, str(ROOT / "train.py"), "fit", *train_py_args(config, save_dir, *extra)]


def run_train_py(config: str, save_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    """Run train.py in a fresh process; fail the test with its stderr if it fails."""
    done = subprocess.run(
        train_py_command(config, save_dir, *extra), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def train_py_here(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``train.py fit ARGS`` from ``cwd`` in this process, as its ``main`` (a fresh interpreter
    spends seconds importing Lightning; :func:`run_train_py` runs the script itself): the exit
    code and what it printed."""
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(["fit", *args])
        except SystemExit as exit:
            code = exit.code
    done = ["train.py", "fit", *args]
    return subprocess.CompletedProcess(done, code, out.getvalue(), err.getvalue())


class Whitening(pl.LightningModule):
    """Keeps a running covariance of its inputs, as a whitening layer would."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 4, dtype=torch.float64)
        self.register_buffer("covariance", torch.eye(4, dtype=torch.float64))

    def training_step(self, batch, batch_idx):
        with torch.no_grad():
            self.covariance.mul_(0.99).add_(0.01 * batch.T @ batch / len(batch))
        return self.layer(batch).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        generator = torch.Generator().manual_seed(5)
        data = torch.randn(256, 4, generator=generator, dtype=torch.float64)
        return torch.utils.data.DataLoader(data * torch.arange(1.0, 5.0).double(), batch_size=16)
