"""``MatrixDataModule``: serves the matrix M to invert, from a generator or a file."""

from typing import Iterable, List, Literal, Optional, Sequence, Tuple, get_args

import pytorch_lightning as pl
import torch
from torch import Tensor

from gdinv_modules.core.errors import InvalidOptionError
from gdinv_modules.core.matrices import (
    diagonal_matrix,
    hilbert_matrix,
    low_rank_matrix,
    random_matrix,
    random_orthogonal,
    spd_matrix,
)
from gdinv_modules.core.deprecation import warn_renamed
from gdinv_modules.io.matrix_io import load_matrix
from gdinv_modules.training.ticks import DEFAULT_WINDOWS_PER_EPOCH, window_ticks
from gdinv_modules.core.validation import (
    check_choice,
    check_finite,
    check_matrix,
    check_positive_int,
)

__all__ = ["MatrixDataModule", "make_matrix", "MatrixKind", "MATRIX_KINDS", "DTYPES"]

MatrixKind = Literal["random", "diagonal", "file", "hilbert", "orthogonal", "spd", "low_rank"]
MATRIX_KINDS: Tuple[str, ...] = get_args(MatrixKind)
RANDOM_KINDS = ("random", "orthogonal", "spd", "low_rank")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def make_matrix(
    kind: MatrixKind = "random",
    *,
    n: int = 4,
    seed: int = 314,
    batch_shape: Sequence[int] = (),
    values: Optional[Sequence[float]] = None,
    path: Optional[str] = None,
    condition: float = 100.0,
    rank: Optional[int] = None,
    rows: Optional[int] = None,
    dtype: Optional[torch.dtype] = None,
) -> Tensor:  # shape: (*batch_shape, n, n), or (*batch_shape, rows, n) for low_rank
    """The matrix of a kind, as :class:`MatrixDataModule` describes them. An option that the
    kind does not use is refused, not ignored. ``dtype=None``: a file's own precision
    (:func:`~gdinv_modules.io.matrix_io.file_dtype`), float32 for the other kinds.

    Example:
        >>> make_matrix("hilbert", n=2, dtype=torch.float64)[1, 1].item()
        0.3333333333333333
    """
    check_choice(kind, MATRIX_KINDS, name="kind")
    check_positive_int(n, name="n")
    if tuple(batch_shape) and kind not in RANDOM_KINDS:
        raise InvalidOptionError(f"batch_shape is for the random kinds, not kind={kind!r}")
    if kind != "file" and path is not None:
        raise InvalidOptionError(f"path is for kind='file', not kind={kind!r}")
    if kind != "diagonal" and values is not None:
        raise InvalidOptionError(f"values are for kind='diagonal', not kind={kind!r}")
    if kind != "low_rank" and (rank is not None or rows is not None):
        raise InvalidOptionError(f"rank and rows are for kind='low_rank', not kind={kind!r}")
    if kind == "file":
        if path is None:
            raise InvalidOptionError("kind='file' needs a path")
        return load_matrix(path, dtype=dtype)
    dtype = dtype or torch.float32
    if kind == "random":
        return random_matrix(n, seed=seed, batch_shape=batch_shape, dtype=dtype)
    if kind == "diagonal":
        return diagonal_matrix(values, n=n, dtype=dtype)
    if kind == "hilbert":
        return hilbert_matrix(n, dtype=dtype)
    if kind == "orthogonal":
        return random_orthogonal(n, seed=seed, batch_shape=batch_shape, dtype=dtype)
    if kind == "low_rank":
        if rank is None:
            raise InvalidOptionError("kind='low_rank' needs a rank")
        return low_rank_matrix(n, rank, rows=rows, seed=seed, batch_shape=batch_shape, dtype=dtype)
    return spd_matrix(n, condition=condition, seed=seed, batch_shape=batch_shape, dtype=dtype)


class MatrixDataModule(pl.LightningDataModule):
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
        batches_per_epoch: deprecated name of ``windows_per_epoch``.

    Example:
        >>> MatrixDataModule("diagonal", n=3).matrix
        tensor([[1., 0., 0.],
                [0., 2., 0.],
                [0., 0., 3.]])
    """

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
        batches_per_epoch: Optional[int] = None,
    ) -> None:
        super().__init__()
        if batches_per_epoch is not None:
            warn_renamed("MatrixDataModule(batches_per_epoch=...)", "windows_per_epoch")
            windows_per_epoch = batches_per_epoch
        self.save_hyperparameters(ignore=["batches_per_epoch"])
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
