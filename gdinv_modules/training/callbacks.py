"""Callbacks for your own Trainer: resumable checkpoints, and the tracked inverse of a tensor
of any LightningModule. (``LitInverse`` installs its own, in :mod:`lit_callbacks`.)"""

import functools
from typing import Any, Dict, Optional

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import Tensor

from gdinv_modules.core.errors import InvalidOptionError, NotReadyError, warn_user
from gdinv_modules.core.functional import Tol
from gdinv_modules.core.validation import check_positive_int
from gdinv_modules.engine.tracker import InverseTracker
from gdinv_modules.training.compat import runs_in_started_processes

__all__ = ["ResumableCheckpoint", "TrackInverse"]


def _on_device(tracker: InverseTracker, matrix: Tensor) -> InverseTracker:
    """``tracker`` on ``matrix``'s device: moved only where it is elsewhere (no module walk at
    every step)."""
    if tracker.matrix.device != matrix.device:
        tracker.to(matrix.device)
    return tracker


class ResumableCheckpointMixin:
    """The hooks and methods of :class:`ResumableCheckpoint`, for either Lightning package."""

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


class TrackInverseMixin:
    """The hooks and methods of :class:`TrackInverse`, for either Lightning package."""

    def __init__(
        self,
        attribute: str,
        *,
        every_n_steps: int = 1,
        tol: Tol = "auto",
        name: Optional[str] = None,
    ) -> None:
        self.attribute = attribute
        self.every_n_steps = check_positive_int(every_n_steps, name="every_n_steps")
        self.tol = tol
        self.name = name or attribute
        self.tracker: Optional[InverseTracker] = None
        self._updated_at = -1  # the global step of the last update

    @property
    def inverse(self) -> Tensor:  # shape: (..., n, n)
        """The inverse of the tensor as of the last update."""
        if self.tracker is None:
            raise NotReadyError(
                f"TrackInverse({self.attribute!r}) has not updated yet (after a fit under "
                "strategy='ddp_spawn', its updates stayed in the processes that ran it)"
            )
        return self.tracker.inverse

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.global_rank == 0 and runs_in_started_processes(trainer):
            warn_user(
                f"TrackInverse({self.attribute!r}) updates in the processes that a ddp_spawn "
                "(or ddp_fork) strategy starts, and Lightning brings back the module's weights "
                "but not a callback's state: after fit, this callback in "
                "your process has no inverse. Use strategy='ddp' (your process is rank 0), or "
                f"invert the final tensor after fit: InverseTracker(model.{self.attribute})",
                UserWarning,
            )

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

    @property
    def state_key(self) -> str:
        """One key per tracked attribute: several ``TrackInverse`` share a Trainer and a
        checkpoint."""
        return self._generate_state_key(attribute=self.attribute)

    def on_train_batch_end(  # type: ignore[override]
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_: Any
    ) -> None:
        step = trainer.global_step  # optimizer steps, also under accumulate_grad_batches
        if step % self.every_n_steps or step == self._updated_at:
            return
        self.track(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._updated_at:  # current when training ends
            self.track(trainer, pl_module, log=False)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning has moved the module back from the GPU by now: the inverse follows it
        if self.tracker is not None:
            _on_device(self.tracker, self.tensor(pl_module))

    def track(self, trainer: pl.Trainer, pl_module: pl.LightningModule, log: bool = True) -> None:
        """Update the tracker to the tensor's value now, and log how it went."""
        self._updated_at = trainer.global_step
        matrix = self.tensor(pl_module)
        if self.tracker is None:
            self.tracker = InverseTracker(matrix, tol=self.tol).to(matrix.device)
            update = self.tracker.last
        else:  # on the tensor's device, also where a fit resumes on another
            update = _on_device(self.tracker, matrix).update(matrix)
        if not log:
            return
        pl_module.log_dict(
            {
                f"{self.name}/residual": update.residual.max().item(),
                f"{self.name}/steps": float(update.refine_steps + update.steps),
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


class ResumableCheckpoint(ResumableCheckpointMixin, ModelCheckpoint):
    """A ``ModelCheckpoint`` that saves ``last.ckpt`` every ``every_n_train_steps`` optimizer
    steps. ``train.py fit --ckpt_path last`` finds the newest one of any version of the run
    (see :mod:`gdinv_modules.cli.train`), so a restart continues a run that was killed.

    Example:
        >>> ResumableCheckpoint().save_last
        True
    """


class TrackInverse(TrackInverseMixin, pl.Callback):
    """Keeps the inverse of a square tensor of the LightningModule (a weight, a running
    covariance) up to date with an :class:`InverseTracker`, every ``every_n_steps`` optimizer
    steps, and logs ``NAME/residual`` and ``NAME/steps``. The tracker is saved in checkpoints.

    Args:
        attribute: the tensor's dotted path on the module, e.g. ``"covariance"`` or
            ``"layer.weight"``.
        every_n_steps: update after every this many optimizer steps (``trainer.global_step``,
            so batches accumulated into one step count once), and once more when training
            ends, so the inverse is current then.
        tol: the tracker's tolerance; default by dtype.
        name: the prefix of the logged values; default ``attribute``.

    Attributes:
        tracker: the :class:`InverseTracker`, from the first update on.
    """
