"""The places that reach past Lightning's public API: they fail here the day Lightning
changes them."""

import lightning
import pytest
import pytorch_lightning as pl
import torch
from conftest import quiet_trainer

from gdinv_modules.training.compat import (
    checkpoint_step_intervals,
    count_optimizer_steps,
    runs_in_started_processes,
)


class CountsWithoutStepping(pl.LightningModule):
    """Counts 5 steps per training_step without taking any."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.weight = torch.nn.Parameter(torch.ones(1))

    def configure_optimizers(self):
        return torch.optim.SGD([self.weight], lr=1.0)

    def train_dataloader(self):
        return range(10)

    def training_step(self, batch, batch_idx):
        count_optimizer_steps(self.optimizers(), 5)


def test_counted_steps_are_global_steps_and_max_steps_stops_on_them():
    model = CountsWithoutStepping()
    trainer = quiet_trainer(max_steps=15)
    trainer.fit(model)
    assert trainer.global_step == 15
    assert model.weight.item() == 1.0  # counted, not taken


@pytest.mark.parametrize("package", [pl, lightning.pytorch])
def test_a_checkpoints_every_n_train_steps_is_read_from_its_state_key(package):
    callbacks = [
        package.callbacks.ModelCheckpoint(every_n_train_steps=150),
        package.callbacks.ModelCheckpoint(),  # by epochs
        package.callbacks.ModelCheckpoint(every_n_train_steps=40, monitor="loss"),
    ]
    trainer = package.Trainer(callbacks=callbacks, logger=False, enable_progress_bar=False)
    assert checkpoint_step_intervals(trainer) == [150, 40]


@pytest.mark.parametrize("package", [pl, lightning.pytorch])
def test_the_launcher_that_starts_processes_is_told_apart(package):
    def started(**options):
        trainer = package.Trainer(accelerator="cpu", logger=False, **options)
        return runs_in_started_processes(trainer)

    assert started(strategy="ddp_spawn", devices=2) and started(strategy="ddp_fork", devices=2)
    assert not started(strategy="ddp", devices=2) and not started()
