"""The same classes for the unified ``lightning`` package (``import lightning as L``).

``pytorch_lightning`` and ``lightning.pytorch`` hold the same Lightning under two names, and a
Trainer of one accepts only its own modules and callbacks. Each class of ours is written once,
as a mixin beside its ``pytorch_lightning`` class; here the mixins meet ``lightning``'s bases.
Import them as ``from gdinv_modules.lightning import LitInverse``.
"""

import lightning.pytorch as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.callbacks import RichProgressBar as LightningRichProgressBar
from lightning.pytorch.callbacks import TQDMProgressBar as LightningTQDMProgressBar

from gdinv_modules.training.callbacks import ResumableCheckpointMixin, TrackInverseMixin
from gdinv_modules.training.datamodule import MatrixDataModuleMixin
from gdinv_modules.training.lit_callbacks import ConvergenceMonitorMixin, StepLoggerMixin
from gdinv_modules.training.lit_inverse import LightningKit, LitInverseMixin
from gdinv_modules.training.progress import StepProgressBarMixin, StepRichProgressBarMixin
from gdinv_modules.training.run_outputs import RunOutputsMixin

__all__ = [
    "LitInverse",
    "MatrixDataModule",
    "TrackInverse",
    "ResumableCheckpoint",
    "RunOutputs",
    "ConvergenceMonitor",
    "StepLogger",
    "StepProgressBar",
    "StepRichProgressBar",
]


class ConvergenceMonitor(ConvergenceMonitorMixin, L.Callback):
    """:class:`gdinv_modules.training.lit_callbacks.ConvergenceMonitor`, for ``lightning``."""


class StepLogger(StepLoggerMixin, L.Callback):
    """:class:`gdinv_modules.training.lit_callbacks.StepLogger`, for ``lightning``."""


class StepProgressBar(StepProgressBarMixin, LightningTQDMProgressBar):
    """:class:`gdinv_modules.training.progress.StepProgressBar`, for ``lightning``."""


class StepRichProgressBar(StepRichProgressBarMixin, LightningRichProgressBar):
    """:class:`gdinv_modules.training.progress.StepRichProgressBar`, for ``lightning``."""


class LitInverse(LitInverseMixin, L.LightningModule):
    """:class:`gdinv_modules.training.lit_inverse.LitInverse`, for ``lightning``."""

    lightning_kit = LightningKit(
        ConvergenceMonitor,
        StepLogger,
        {
            LightningTQDMProgressBar: StepProgressBar,
            LightningRichProgressBar: StepRichProgressBar,
        },
    )


class MatrixDataModule(MatrixDataModuleMixin, L.LightningDataModule):
    """:class:`gdinv_modules.training.datamodule.MatrixDataModule`, for ``lightning``."""


class TrackInverse(TrackInverseMixin, L.Callback):
    """:class:`gdinv_modules.training.callbacks.TrackInverse`, for ``lightning``."""


class ResumableCheckpoint(ResumableCheckpointMixin, ModelCheckpoint):
    """:class:`gdinv_modules.training.callbacks.ResumableCheckpoint`, for ``lightning``."""


class RunOutputs(RunOutputsMixin, L.Callback):
    """:class:`gdinv_modules.training.run_outputs.RunOutputs`, for ``lightning``."""
