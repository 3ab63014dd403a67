"""gdinv_modules for the unified ``lightning`` package: the names of ``gdinv_modules``'s
Lightning glue, built on ``lightning.pytorch`` (:mod:`gdinv_modules.training.unified`).

Example:
    >>> import lightning as L
    >>> from gdinv_modules.lightning import LitInverse
    >>> issubclass(LitInverse, L.LightningModule)
    True
"""

from gdinv_modules.training.unified import (
    LitInverse,
    MatrixDataModule,
    ResumableCheckpoint,
    RunOutputs,
    StepProgressBar,
    TrackInverse,
)

__all__ = [
    "LitInverse",
    "MatrixDataModule",
    "TrackInverse",
    "ResumableCheckpoint",
    "RunOutputs",
    "StepProgressBar",
]
