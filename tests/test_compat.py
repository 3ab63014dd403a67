"""The one wrapper around Lightning's private API: it fails here the day Lightning changes it."""

import pytorch_lightning as pl
import torch
from conftest import quiet_trainer

from gdinv_modules.training.compat import count_optimizer_steps


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
