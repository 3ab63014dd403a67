"""``MatrixDataModule``: serves the matrix M to invert, from a generator or a file."""

from typing import Iterable, List, Literal, Optional, Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor

from gdinv_modules.core.validation import (
    check_choice,
    check_finite,
    check_matrix,
    check_positive_int,
)
from gdinv_modules.io.matrix_io import MatrixKind, make_matrix

__all__ = ["MatrixDataModule", "DTYPES", "window_ticks", "DEFAULT_WINDOWS_PER_EPOCH"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}
DEFAULT_WINDOWS_PER_EPOCH = 10


def window_ticks(windows_per_epoch: int = DEFAULT_WINDOWS_PER_EPOCH) -> Iterable[int]:
    """The training loader of an inversion: one tick per ``training_step`` (a window of
    optimizer steps), none of them data.

    M stays on the module (moved to the device once); the loader only sets the epoch's length,
    so epoch-end callbacks (``EarlyStopping``, ``ModelCheckpoint``) run every
    ``windows_per_epoch`` windows.

    Example:
        >>> list(window_ticks(3))
        [0, 1, 2]
    """
    return range(windows_per_epoch)


class MatrixDataModuleMixin:
    """The hooks and methods of :class:`MatrixDataModule`, for either Lightning package."""

    def __init__(
        self,
        kind: MatrixKind = "random",
        *,
        n: int = 4,
        seed: int = 314,
        batch_shape: Sequence[int] = (),
        values: Optional[List[float]] = None,
        path: Optional[str] = None,
        condition: float = 100.0,
        rank: Optional[int] = None,
        rows: Optional[int] = None,
        dtype: Optional[Literal["float32", "float64"]] = None,
        windows_per_epoch: int = DEFAULT_WINDOWS_PER_EPOCH,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if dtype is not None:
            check_choice(dtype, tuple(DTYPES), name="dtype")
        self.windows_per_epoch = check_positive_int(windows_per_epoch, name="windows_per_epoch")
        self.matrix: Tensor = check_finite(
            check_matrix(
                make_matrix(
                    kind,
                    n=n,
                    seed=seed,
                    batch_shape=batch_shape,
                    values=values,
                    path=path,
                    condition=condition,
                    rank=rank,
                    rows=rows,
                    dtype=None if dtype is None else DTYPES[dtype],
                ),
                square=False,
            )
        )

    def train_dataloader(self) -> Iterable[int]:
        return window_ticks(self.windows_per_epoch)


class MatrixDataModule(MatrixDataModuleMixin, pl.LightningDataModule):
    """The matrix M to invert, made once at construction so bad input fails before training.

    Args:
        kind: ``"random"`` (``torch.rand`` after seeding: the post's M1 for n = 4),
            ``"diagonal"`` (``diag(values)``, default ``1..n``: the post's M2 for n = 4),
            ``"file"`` (``.npy``, ``.pt`` or ``.csv`` at ``path``, never unpickled),
            ``"hilbert"``, ``"orthogonal"`` (Haar-random), ``"spd"`` (symmetric positive
            definite with condition number ``condition``) or ``"low_rank"`` (Gaussian of rank
            ``rank``, ``rows x n``: singular or rectangular, for pseudo-inverses).
        n: the order of the matrix (all kinds but ``"file"``, and ``"diagonal"`` with values).
        seed: the seed of the random kinds.
        batch_shape: leading dimensions, a batch of independent matrices (random kinds only).
        values: the diagonal of ``"diagonal"``.
        path: the file of ``"file"``.
        condition: the condition number of ``"spd"``.
        rank: the rank of ``"low_rank"``.
        rows: the number of rows of ``"low_rank"`` (default ``n``).
        dtype: ``"float32"`` or ``"float64"``; default a file's own precision (float64 stays
            float64; integers and ``.csv`` text are read as float64), float32 for the other
            kinds.
        windows_per_epoch: windows of steps in an epoch (a window is one ``training_step``, of
            ``LitInverse.steps_per_window`` optimizer steps).

    Example:
        >>> MatrixDataModule("diagonal", n=3).matrix
        tensor([[1., 0., 0.],
                [0., 2., 0.],
                [0., 0., 3.]])
    """
