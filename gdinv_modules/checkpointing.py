"""``ResumableCheckpoint``: checkpoints that ``--ckpt_path last`` finds after a crash."""

import warnings
from pathlib import Path
from typing import Any, Optional, Set

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

__all__ = ["ResumableCheckpoint"]


class ResumableCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` that saves ``last.ckpt`` every ``every_n_train_steps`` optimizer
    steps, and whose ``ckpt_path="last"`` also looks in the earlier versions of the same run.

    Each run of ``train.py`` gets a new log directory (``runs/NAME/version_N``), so a run killed
    halfway leaves its checkpoints in ``version_N`` while the restarted run writes to
    ``version_N+1``. Lightning's ``"last"`` looks only in the new one; this one takes the newest
    ``last*.ckpt`` of any version of the same ``NAME``, so a restart with ``--ckpt_path last``
    continues the killed run.

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

    def _find_last_checkpoints(self, trainer: "pl.Trainer") -> Set[str]:
        found = set(super()._find_last_checkpoints(trainer))
        if self.dirpath is None and trainer.log_dir is not None:
            run_root = Path(trainer.log_dir).parent
            found |= {str(path) for path in run_root.glob("version_*/checkpoints/last*.ckpt")}
        return found

    def on_train_batch_end(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", *args: Any, **kwargs: Any
    ) -> None:
        # Lightning warns that under manual optimization the checkpoint holds the state after
        # the optimizer steps: with LitInverse that is exactly the state of global_step.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*no pre-optimization state was saved.*")
            super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
