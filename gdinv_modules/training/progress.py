"""``StepProgressBar``: Lightning's progress bar, counting optimizer steps instead of epochs."""

from typing import Any, Dict, Union

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar

__all__ = ["StepProgressBar"]


class StepProgressBarMixin:
    """The hooks and methods of :class:`StepProgressBar`, for either Lightning package."""

    @property
    def train_description(self) -> str:
        return "steps"

    def on_train_start(self, trainer: pl.Trainer, *_: Any) -> None:
        super().on_train_start(trainer)
        bar = self.train_progress_bar
        bar.total = trainer.max_steps if trainer.max_steps > 0 else None
        bar.n = bar.initial = trainer.global_step
        bar.set_description(self.train_description)

    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        pass  # one bar for the run, not one per epoch

    def on_train_batch_end(  # type: ignore[override]
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_: Any
    ) -> None:
        bar = self.train_progress_bar
        if not bar.disable:
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # refreshes the bar

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass  # the bar's numbers are set after each window

    def get_metrics(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> Dict[str, Union[int, str, float, Dict[str, float]]]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the run's directory is printed at the end
        return metrics

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self.train_progress_bar.close()  # so that the error starts a line of its own


class StepProgressBar(StepProgressBarMixin, TQDMProgressBar):
    """One bar for the whole run: ``steps 4500/10000``, with the logged ``loss`` and
    ``residual``. Lightning's bar restarts every epoch and counts ``training_step`` calls
    (windows of steps); an inversion's epoch is only a grouping of windows. ``LitInverse``
    puts it in place of Lightning's default bar (any other bar a user chose stays).

    Example:
        >>> StepProgressBar().train_description
        'steps'
    """
