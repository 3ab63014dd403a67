"""``losses.csv``: a run's loss per step, written atomically and read back."""

import csv
from pathlib import Path
from typing import Tuple, Union

import torch
from torch import Tensor

from gdinv_modules.core.errors import MatrixFileError
from gdinv_modules.io.atomic import atomic_path

__all__ = ["write_losses_csv", "read_losses_csv", "read_losses_table"]


def write_losses_csv(
    losses: Tensor,  # shape: (kept, ...)
    path: Union[str, Path],
    *,
    every: int = 1,
) -> Path:
    """Write ``step,loss`` rows (the loss averaged over the batch) atomically; row ``i`` is
    step ``i * every``.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "losses.csv"
        >>> read_losses_csv(write_losses_csv(torch.tensor([0.5, 0.25]), path))
        tensor([0.5000, 0.2500], dtype=torch.float64)
    """
    rows = losses.detach().double().cpu()
    mean = rows.reshape(len(rows), -1).mean(dim=1) if len(rows) else rows.new_empty(0)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["step", "loss"])
            writer.writerows((every * row, repr(value)) for row, value in enumerate(mean.tolist()))
    return Path(path)


def read_losses_csv(path: Union[str, Path]) -> Tensor:  # shape: (kept,)
    """Read the ``loss`` column of a ``losses.csv`` written by :func:`write_losses_csv`."""
    return read_losses_table(path)[1]


def read_losses_table(path: Union[str, Path]) -> Tuple[Tensor, Tensor]:  # shapes: (kept,) x 2
    """Read the ``step`` and ``loss`` columns of a ``losses.csv``."""
    path = Path(path)
    if not path.is_file():
        raise MatrixFileError(f"{path}: no such file; is this the log directory of a finished run?")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    try:
        steps = torch.tensor([int(row["step"]) for row in rows], dtype=torch.int64)
        return steps, torch.tensor([float(row["loss"]) for row in rows], dtype=torch.float64)
    except (KeyError, TypeError, ValueError) as error:
        raise MatrixFileError(f"{path}: not a losses.csv of a run ({error})") from error
