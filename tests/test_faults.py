"""Issue 4, part 2: a killed run resumes to the same result; outputs are atomic and never
overwritten; the same config and seed give the same losses."""

import signal
import subprocess
import time

import pytest
import torch
from conftest import quiet_trainer, train_py_args, train_py_command, train_py_here

from gdinv_modules import LitInverse
from gdinv_modules.core.errors import OutputExistsError
from gdinv_modules.io.atomic import atomic_path
from gdinv_modules.io.losses_csv import read_losses_csv
from gdinv_modules.io.matrix_io import load_matrix
from gdinv_modules.training.run_outputs import RunOutputs

CONFIG = "seed_random.yaml"
RUN = (  # in float64 for 20,000 steps, a checkpoint every 1000
    "--data.dtype", "float64",
    "--trainer.max_steps", "20000",
    "--checkpoint.every_n_train_steps", "1000",
)  # fmt: skip


def test_a_run_killed_halfway_resumes_to_the_same_inverse_and_losses(tmp_path):
    run_dir = tmp_path / "seed_random"
    killed = subprocess.Popen(
        train_py_command(CONFIG, tmp_path, *RUN),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first_checkpoint = run_dir / "version_0" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not first_checkpoint.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (run_dir / "version_0" / "summary.json").exists()

    # the resumed and the whole run in this process: a fresh interpreter costs seconds
    resumed = train_py_here(tmp_path, *train_py_args(CONFIG, tmp_path, *RUN, "--ckpt_path", "last"))
    assert resumed.returncode == 0, resumed.stderr
    whole = train_py_here(tmp_path, *train_py_args(CONFIG, tmp_path, *RUN))
    assert whole.returncode == 0, whole.stderr

    resumed_dir, whole_dir = run_dir / "version_1", run_dir / "version_2"
    checkpoint = torch.load(first_checkpoint, weights_only=False)
    assert 0 < checkpoint["global_step"] < 20000, "the kill did not come halfway"
    assert torch.equal(
        load_matrix(resumed_dir / "inverse.pt", dtype=torch.float64),
        load_matrix(whole_dir / "inverse.pt", dtype=torch.float64),
    )
    assert (resumed_dir / "losses.csv").read_bytes() == (whole_dir / "losses.csv").read_bytes()
    assert len(read_losses_csv(resumed_dir / "losses.csv")) == 20000


def test_the_same_config_and_seed_give_identical_losses(m1):
    runs = []
    for _ in range(2):
        model = LitInverse(m1, lr="auto", momentum="auto")
        quiet_trainer(max_steps=500).fit(model)
        runs.append(model.losses)
    assert torch.equal(runs[0], runs[1])


def test_a_failed_write_leaves_neither_a_truncated_file_nor_a_temporary(tmp_path):
    target = tmp_path / "inverse.npy"
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a file")
            raise RuntimeError("crash while writing")
    assert list(tmp_path.iterdir()) == []


def test_outputs_of_an_earlier_run_are_refused_before_training(tmp_path, m2):
    (tmp_path / "inverse.pt").write_bytes(b"an earlier run's result")
    model = LitInverse(m2)
    trainer = quiet_trainer(max_steps=100, callbacks=[RunOutputs(output_dir=str(tmp_path))])
    with pytest.raises(OutputExistsError, match="earlier run's outputs"):
        trainer.fit(model)
    assert trainer.global_step == 0
    assert (tmp_path / "inverse.pt").read_bytes() == b"an earlier run's result"
