"""Callbacks: stop an inversion run at the tolerance, resumable checkpoints, and the tracked
inverse of a tensor of any LightningModule."""

import functools
import warnings
from typing import TYPE_CHECKING, Any, Dict, Optional, cast

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import Tensor

from gdinv_modules.core.deprecation import warn_renamed
from gdinv_modules.core.errors import InvalidOptionError
from gdinv_modules.core.validation import check_positive_int
from gdinv_modules.engine.tracker import InverseTracker

if TYPE_CHECKING:  # LitInverse installs ConvergenceMonitor, so only for the annotations
    from gdinv_modules.training.lit_inverse import LitInverse

__all__ = ["ConvergenceMonitor", "StepLogger", "ResumableCheckpoint", "TrackInverse"]


class ConvergenceMonitor(pl.Callback):
    """After every window of steps, stops the Trainer once every matrix's residual is at most
    ``LitInverse.tol``, and raises :class:`~gdinv_modules.core.errors.DivergenceError` when the
    loss is not finite or has grown without bound (:meth:`HeavyBallStepper.check`: one host
    sync per window, none per step); a fit that fails still tears ``LitInverse`` down (its TF32
    setting and warning filter end with the fit). ``LitInverse`` installs it. (``tol=`` here is
    deprecated: give it to ``LitInverse``.)"""

    def __init__(self, tol: Optional[float] = None) -> None:
        if tol is not None:
            warn_renamed("ConvergenceMonitor(tol=...)", "LitInverse(tol=...)")
        self.tol = tol

    def on_train_batch_end(  # type: ignore[override]
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_: Any
    ) -> None:
        model = cast("LitInverse", pl_module)
        if model.stepper.check(model.tol if self.tol is None else self.tol):
            trainer.should_stop = True

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        # Lightning skips the module's teardown when fit fails: without it the fit's settings
        # (TF32, its warning filter) would outlive the failed fit.
        pl_module.teardown("fit")


class StepLogger(pl.Callback):
    """Writes the values ``LitInverse`` logs to the Trainer's loggers with the optimizer step
    (``trainer.global_step``, the step of ``losses.csv``) as their step.

    Lightning counts ``log_every_n_steps`` and the logged step in ``training_step`` calls, that
    is in windows of steps; here both count optimizer steps. A window is written when it holds
    a multiple of ``log_every_n_steps`` (so every window under Lightning's default of 50 and
    ``LitInverse``'s window of 100), and the last state always is. The values stay in
    ``trainer.callback_metrics`` for the progress bar, ``EarlyStopping`` and checkpoints.
    """

    def __init__(self) -> None:
        self._previous = 0  # global_step at the end of the window before
        self._written = -1  # the step last written

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._previous = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, *_: Any) -> None:
        every, step = max(trainer.log_every_n_steps, 1), trainer.global_step
        if step // every > self._previous // every:
            self.write(trainer)
        self._previous = step

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._written != trainer.global_step:
            self.write(trainer)

    def write(self, trainer: pl.Trainer) -> None:
        """Send ``trainer.callback_metrics`` to every logger at step ``global_step`` (one host
        sync)."""
        metrics = trainer.callback_metrics
        if not trainer.loggers or not metrics:
            return
        values = torch.stack([value.detach().to(torch.float64) for value in metrics.values()])
        row = dict(zip(metrics, values.tolist()))
        for logger in trainer.loggers:
            logger.log_metrics(row, step=trainer.global_step)
            logger.save()
        self._written = trainer.global_step


class ResumableCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` that saves ``last.ckpt`` every ``every_n_train_steps`` optimizer
    steps. ``train.py fit --ckpt_path last`` finds the newest one of any version of the run
    (see :mod:`gdinv_modules.cli.train`), so a restart continues a run that was killed.

    Example:
        >>> ResumableCheckpoint().save_last
        True
    """

    def __init__(
        self,
        dirpath: Optional[str] = None,
        *,
        save_last: bool = True,
        every_n_train_steps: Optional[int] = 1000,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            dirpath=dirpath, save_last=save_last, every_n_train_steps=every_n_train_steps, **kwargs
        )

    def on_train_batch_end(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", *args: Any, **kwargs: Any
    ) -> None:
        # Lightning warns that under manual optimization the checkpoint holds the state after
        # the optimizer steps: with LitInverse that is exactly the state of global_step.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*no pre-optimization state was saved.*")
            super().on_train_batch_end(trainer, pl_module, *args, **kwargs)


class TrackInverse(pl.Callback):
    """Keeps the inverse of a square tensor of the LightningModule (a weight, a running
    covariance) up to date with an :class:`InverseTracker`, every ``every_n_steps`` optimizer
    steps, and logs ``NAME/residual`` and ``NAME/steps``. The tracker is saved in checkpoints.

    Args:
        attribute: the tensor's dotted path on the module, e.g. ``"covariance"`` or
            ``"layer.weight"``.
        every_n_steps: update after every this many optimizer steps.
        tol: the tracker's tolerance; default by dtype.
        name: the prefix of the logged values; default ``attribute``.

    Attributes:
        tracker: the :class:`InverseTracker`, from the first update on.
    """

    def __init__(
        self,
        attribute: str,
        *,
        every_n_steps: int = 1,
        tol: Optional[float] = None,
        name: Optional[str] = None,
    ) -> None:
        self.attribute = attribute
        self.every_n_steps = check_positive_int(every_n_steps, name="every_n_steps")
        self.tol = tol
        self.name = name or attribute
        self.tracker: Optional[InverseTracker] = None

    @property
    def inverse(self) -> Tensor:  # shape: (..., n, n)
        """The inverse of the tensor as of the last update."""
        if self.tracker is None:
            raise InvalidOptionError(f"TrackInverse({self.attribute!r}) has not updated yet")
        return self.tracker.inverse

    def tensor(self, pl_module: pl.LightningModule) -> Tensor:
        """The tracked tensor, read from the module now."""
        try:
            value = functools.reduce(getattr, self.attribute.split("."), pl_module)
        except AttributeError:
            raise InvalidOptionError(
                f"TrackInverse: {type(pl_module).__name__} has no attribute {self.attribute!r}"
            ) from None
        if not isinstance(value, Tensor):
            raise InvalidOptionError(f"TrackInverse: {self.attribute!r} is not a tensor")
        return value.detach()

    def on_train_batch_end(  # type: ignore[override]
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_: Any
    ) -> None:
        if trainer.global_step % self.every_n_steps:
            return
        matrix = self.tensor(pl_module)
        if self.tracker is None:
            self.tracker = InverseTracker(matrix, tol=self.tol).to(matrix.device)
            update = self.tracker.last
        else:
            update = self.tracker.update(matrix)
        pl_module.log_dict(
            {
                f"{self.name}/residual": update.residual.max().item(),
                f"{self.name}/steps": float(update.steps + update.descent_steps),
            },
            on_step=True,
            on_epoch=False,
        )

    def state_dict(self) -> Dict[str, Any]:
        if self.tracker is None:
            return {}
        return {"tracker": self.tracker.state_dict(), "tol": self.tracker.tol}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if "tracker" not in state_dict:
            return
        weights = state_dict["tracker"]
        self.tracker = InverseTracker(
            weights["matrix"], inverse=weights["inverse"], tol=state_dict["tol"]
        )
