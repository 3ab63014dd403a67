"""Callbacks of an inversion run: stop at the tolerance, and resumable checkpoints."""

import warnings
from typing import TYPE_CHECKING, Any, Optional, cast

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

if TYPE_CHECKING:  # LitInverse installs ConvergenceMonitor, so only for the annotations
    from gdinv_modules.training.lit_inverse import LitInverse

__all__ = ["ConvergenceMonitor", "ResumableCheckpoint"]


class ConvergenceMonitor(pl.Callback):
    """After every window of steps, stops the Trainer once every matrix's residual is at most
    ``tol``, and raises :class:`~gdinv_modules.core.errors.DivergenceError` when the loss is
    not finite or has grown without bound (:meth:`HeavyBallStepper.check`: one host sync per
    window, none per step). ``LitInverse`` installs it with its own ``tol``."""

    def __init__(self, tol: Optional[float]) -> None:
        self.tol = tol

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if cast("LitInverse", pl_module).stepper.check(self.tol):
            trainer.should_stop = True


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
