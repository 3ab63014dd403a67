"""Lightning's progress bars, counting optimizer steps instead of epochs: ``StepProgressBar``
(tqdm) and ``StepRichProgressBar`` (rich). ``LitInverse`` turns Lightning's own bar of either
kind into ours, its settings kept."""

import copy
from typing import Any, Dict, Optional, Union

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar, TQDMProgressBar
from pytorch_lightning.callbacks.progress import ProgressBar

__all__ = ["StepProgressBar", "StepRichProgressBar", "as_step_bar"]

Metrics = Dict[str, Union[int, str, float, Dict[str, float]]]


class StepCountingMixin:
    """What both step bars share: one bar for the run, ``steps`` out of ``max_steps``."""

    @property
    def train_description(self) -> str:
        return "steps"

    @staticmethod
    def total_steps(trainer: pl.Trainer) -> Optional[int]:
        """The bar's total: ``max_steps``, or none where the run has no step limit."""
        return trainer.max_steps if trainer.max_steps > 0 else None

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Metrics:
        metrics = super().get_metrics(trainer, pl_module)  # type: ignore[misc]
        metrics.pop("v_num", None)  # the run's directory is printed at the end
        return metrics


class StepProgressBarMixin(StepCountingMixin):
    """The hooks and methods of :class:`StepProgressBar`, for either Lightning package."""

    def on_train_start(self, trainer: pl.Trainer, *_: Any) -> None:
        super().on_train_start(trainer)  # type: ignore[misc]
        bar = self.train_progress_bar
        bar.total = self.total_steps(trainer)
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

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        bar = self.train_progress_bar
        if not bar.disable:  # the values refinement left, before the bar closes
            bar.set_postfix(self.get_metrics(trainer, pl_module))
        super().on_train_end(trainer, pl_module)  # type: ignore[misc]

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self.train_progress_bar.close()  # so that the error starts a line of its own


class StepRichProgressBarMixin(StepCountingMixin):
    """The hooks and methods of :class:`StepRichProgressBar`, for either Lightning package."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.train_progress_bar_id is None:  # one bar for the run, not one per epoch
            super().on_train_epoch_start(trainer, pl_module)  # type: ignore[misc]
            if self.progress is not None and self.train_progress_bar_id is not None:
                # a resumed run starts at its step, not as one jump of that many steps/s
                self.progress.reset(self.train_progress_bar_id, completed=trainer.global_step)
        self.show_steps(trainer)

    def on_train_batch_end(  # type: ignore[override]
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # Lightning's bar moves to batch_idx + 1, the window within the epoch: moved back there
        # and on to the step count again, Rich counted each window's steps as all the run's so
        # far (it reckons its speed from forward moves; 519,439 it/s shown for 5,100). Told the
        # step count, it moves forward only.
        super().on_train_batch_end(  # type: ignore[misc]
            trainer, pl_module, outputs, batch, trainer.global_step - 1
        )
        self.show_steps(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)  # type: ignore[misc]
        self.on_train_epoch_end(trainer, pl_module)  # Rich's: shows the values refinement left

    def show_steps(self, trainer: pl.Trainer) -> None:
        """Set the bar to ``trainer.global_step`` of :meth:`total_steps`."""
        task, progress = self.train_progress_bar_id, self.progress
        if progress is None or task is None:  # disabled, or not started
            return
        style = self.theme.description
        description = f"[{style}]{self.train_description}" if style else self.train_description
        progress.update(
            task, total=self.total_steps(trainer), completed=trainer.global_step,
            description=description,
        )  # fmt: skip
        self.refresh()

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Metrics:
        """The logged values; under Lightning's default format (3 decimals, which shows a
        residual of 1e-9 as 0.000) with 3 significant digits instead, as tqdm shows them."""
        metrics = super().get_metrics(trainer, pl_module)
        if self.theme.metrics_format != type(self.theme)().metrics_format:
            return metrics  # a format you chose
        return {
            key: f"{value:.3g}" if isinstance(value, float) else value
            for key, value in metrics.items()
        }


class StepProgressBar(StepProgressBarMixin, TQDMProgressBar):
    """One bar for the whole run: ``steps 4500/10000``, with the logged ``loss`` and
    ``residual``. Lightning's bar restarts every epoch and counts ``training_step`` calls
    (windows of steps); an inversion's epoch is only a grouping of windows. ``LitInverse``
    puts it in place of Lightning's ``TQDMProgressBar``, its settings kept (any other bar a
    user chose stays).

    Example:
        >>> StepProgressBar().train_description
        'steps'
    """


class StepRichProgressBar(StepRichProgressBarMixin, RichProgressBar):
    """:class:`StepProgressBar` for ``rich``: one bar of optimizer steps, ``loss`` and
    ``residual`` to 3 significant digits. ``LitInverse`` puts it in place of Lightning's
    ``RichProgressBar`` (Lightning's default bar where ``rich`` is installed), its settings
    kept.

    Example:
        >>> StepRichProgressBar.total_steps(pl.Trainer(max_steps=300, logger=False))
        300
    """


def as_step_bar(bar: ProgressBar, step_bar: type) -> ProgressBar:
    """A copy of Lightning's ``bar`` as ``step_bar`` (its subclass that counts optimizer
    steps), every setting of ``bar`` kept; ``bar`` itself is left as it was.

    Example:
        >>> bar = as_step_bar(TQDMProgressBar(refresh_rate=7), StepProgressBar)
        >>> type(bar).__name__, bar.refresh_rate
        ('StepProgressBar', 7)
    """
    if not issubclass(step_bar, type(bar)):
        raise TypeError(f"{step_bar.__name__} is not a kind of {type(bar).__name__}")
    copied = copy.copy(bar)  # the bar's own __getstate__: its settings, no live display
    copied.__class__ = step_bar  # adds hooks only: no state of its own
    return copied
