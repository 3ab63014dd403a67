"""The callbacks ``LitInverse`` installs for itself (``configure_callbacks``): the stop, and
the loggers' writes at optimizer steps. They read ``LitInverse`` through its public methods."""

from typing import Any, Dict, Tuple

import pytorch_lightning as pl
import torch
from torch import Tensor

from gdinv_modules.core.errors import warn_user

__all__ = ["ConvergenceMonitor", "StepLogger"]


class ConvergenceMonitorMixin:
    """The hooks and methods of :class:`ConvergenceMonitor`, for either Lightning package."""

    def on_train_batch_end(  # type: ignore[override]
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_: Any
    ) -> None:
        if pl_module.after_window():  # type: ignore[operator]
            trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.finish_fit()  # type: ignore[operator]

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        # Lightning skips the module's teardown when fit fails: without it the fit's settings
        # (TF32, its warning filter) would outlive the failed fit.
        pl_module.teardown("fit")
        for flag, instead in AUTOMATIC_ONLY.items():
            if f"Trainer({flag}=" in str(exception):  # Lightning's refusal says what it was
                warn_user(
                    f"LitInverse takes its own steps: instead of {flag}, {instead}", UserWarning
                )


# Trainer flags of automatic optimization, which Lightning refuses for LitInverse, and what does
# their job here.
AUTOMATIC_ONLY = {
    "accumulate_grad_batches": "set LitInverse(steps_per_window=...), the optimizer steps of "
    "one training_step (the gradient is exact: there is nothing to accumulate)",
    "gradient_clip_val": "keep the steps stable with lr='auto' (below the stable bound for "
    "this M), a smaller lr, or ridge > 0",
}


class StepLoggerMixin:
    """The hooks and methods of :class:`StepLogger`, for either Lightning package."""

    def __init__(self) -> None:
        self._previous = 0  # global_step at the end of the window before
        self._written: Tuple[int, Dict[str, float]] = (-1, {})  # the step and row last written

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._previous = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, *_: Any) -> None:
        every, step = max(trainer.log_every_n_steps, 1), trainer.global_step
        if step // every > self._previous // every:
            self.write(trainer)
        self._previous = step

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The last state always: again at its step where refinement moved X since that write.
        metrics = trainer.callback_metrics
        if not (metrics and trainer.loggers) or self._written != (
            trainer.global_step,
            self._row(metrics),
        ):
            self.write(trainer)

    @staticmethod
    def _row(metrics: Dict[str, Tensor]) -> Dict[str, float]:
        """The values as numbers (one host sync)."""
        values = torch.stack([value.detach().to(torch.float64) for value in metrics.values()])
        return dict(zip(metrics, values.tolist(), strict=True))

    def write(self, trainer: pl.Trainer) -> None:
        """Send ``trainer.callback_metrics`` to every logger at step ``global_step`` (one host
        sync), and keep them in ``trainer.logged_metrics`` as Lightning does for what it logs."""
        metrics = trainer.callback_metrics
        if not metrics:
            return
        trainer.logged_metrics.update({key: value.detach() for key, value in metrics.items()})
        if not trainer.loggers:
            return
        row = self._row(metrics)
        for logger in trainer.loggers:
            logger.log_metrics(row, step=trainer.global_step)
            logger.save()
        self._written = (trainer.global_step, row)


class ConvergenceMonitor(ConvergenceMonitorMixin, pl.Callback):
    """After every window of steps, asks ``LitInverse``'s :class:`StoppingPolicy` whether to
    stop (one host sync per window, none per step): at ``tol``, at a stall or an exhausted
    budget (``LitInverse`` then refines and warns as :func:`invert` does), and with a
    :class:`~gdinv_modules.core.errors.DivergenceError` where the loss is not finite or has
    grown without bound. When training ends it has ``LitInverse`` refine, report and warn
    (:meth:`LitInverse.finish_fit`) ahead of :class:`StepLogger`'s last write and the bar, so
    both show the refined X's values. A fit that fails still tears ``LitInverse`` down (its
    TF32 setting and warning filter end with the fit)."""


class StepLogger(StepLoggerMixin, pl.Callback):
    """Writes the values ``LitInverse`` logs to the Trainer's loggers with the optimizer step
    (``trainer.global_step``, the step of ``losses.csv``) as their step.

    Lightning counts ``log_every_n_steps`` and the logged step in ``training_step`` calls, that
    is in windows of steps; here both count optimizer steps. A window is written when it holds
    a multiple of ``log_every_n_steps`` (so every window under Lightning's default of 50 and
    ``LitInverse``'s window of 100), and the last state always is. The values stay in
    ``trainer.callback_metrics`` for the progress bar, ``EarlyStopping`` and checkpoints.
    """
