"""Matrices from files and of a kind: reading and writing them safely, and
:func:`make_matrix`, the matrix a ``MatrixDataModule`` (and ``train.py``'s ``--data``) names.

``load_matrix`` reads ``.npy``, ``.pt`` and ``.csv`` files and never unpickles: numpy with
``allow_pickle=False``, torch with ``weights_only=True``. A ``.npy`` header is read first, so a
file announcing more than ``max_bytes`` is refused before its data is read.
"""

import csv
import math
import pickle
import zipfile
from pathlib import Path
from typing import List, Literal, Optional, Sequence, Tuple, Union, get_args

import numpy as np
import torch
from torch import Tensor

from gdinv_modules.core.errors import InvalidOptionError, MatrixFileError
from gdinv_modules.core.matrices import (
    diagonal_matrix,
    hilbert_matrix,
    low_rank_matrix,
    random_matrix,
    random_orthogonal,
    spd_matrix,
)
from gdinv_modules.core.validation import check_choice, check_positive_int
from gdinv_modules.io.atomic import atomic_path

__all__ = [
    "load_matrix",
    "save_matrix",
    "make_matrix",
    "file_dtype",
    "MatrixKind",
    "MATRIX_KINDS",
    "MATRIX_SUFFIXES",
    "DEFAULT_MAX_BYTES",
]

MATRIX_SUFFIXES = (".npy", ".pt", ".csv")
DEFAULT_MAX_BYTES = 1 << 31  # 2 GiB


def load_matrix(
    path: Union[str, Path],
    *,
    dtype: Optional[torch.dtype] = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Tensor:
    r"""Read a matrix (or a batch of them) from a ``.npy``, ``.pt`` or ``.csv`` file.

    The data is converted to ``dtype``, by default the file's own precision
    (:func:`file_dtype`); complex, boolean and object data are refused.
    Every failure raises :class:`~gdinv_modules.core.errors.MatrixFileError` naming the file.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.csv"
        >>> _ = path.write_text("1,2\n3,4\n")
        >>> load_matrix(path, dtype=torch.float32)
        tensor([[1., 2.],
                [3., 4.]])
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MATRIX_SUFFIXES:
        raise MatrixFileError(
            f"{path}: unknown matrix file format {suffix!r}; use one of {list(MATRIX_SUFFIXES)}"
        )
    if not path.exists():
        raise MatrixFileError(f"{path}: no such file")
    if not path.is_file():
        raise MatrixFileError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise MatrixFileError(f"{path}: the file is empty")
    if size > max_bytes:
        raise MatrixFileError(f"{path}: {size} bytes on disk, more than max_bytes={max_bytes}")
    array: Union[Tensor, np.ndarray]
    try:
        if suffix == ".npy":
            array = _read_npy(path, max_bytes)
        elif suffix == ".pt":
            array = _read_pt(path)
        else:
            array = _read_csv(path)
    except MatrixFileError:
        raise
    except (
        OSError,
        ValueError,
        EOFError,
        RuntimeError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
    ) as error:
        raise MatrixFileError(f"{path}: cannot read a matrix: {error}") from error
    return _to_float_tensor(array, path, dtype)


def save_matrix(matrix: Tensor, path: Union[str, Path], *, overwrite: bool = False) -> Path:
    """Write ``matrix`` atomically as ``.npy`` or ``.pt`` (by the suffix of ``path``).

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "eye.npy"
        >>> load_matrix(save_matrix(torch.eye(2), path))
        tensor([[1., 0.],
                [0., 1.]])
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".pt"):
        raise MatrixFileError(f"{path}: save_matrix writes .npy or .pt, not {suffix!r}")
    data = matrix.detach().cpu()
    with atomic_path(path, overwrite=overwrite) as tmp:
        if suffix == ".npy":
            np.save(tmp, data.numpy(), allow_pickle=False)
        else:
            torch.save(data.clone(), tmp)
    return path


def _read_npy(path: Path, max_bytes: int) -> np.ndarray:
    with open(path, "rb") as handle:
        try:
            version = np.lib.format.read_magic(handle)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(handle)
        except ValueError as error:
            raise MatrixFileError(f"{path}: not a valid .npy file: {error}") from error
        header_end = handle.tell()
    if dtype.hasobject:
        raise MatrixFileError(
            f"{path}: holds Python objects (dtype {dtype}); refused, never unpickled"
        )
    announced = math.prod(shape) * dtype.itemsize
    if announced > max_bytes:
        raise MatrixFileError(
            f"{path}: its header announces {announced} bytes of data (shape {shape}, {dtype}), "
            f"more than max_bytes={max_bytes}; refused before reading"
        )
    if path.stat().st_size - header_end < announced:
        raise MatrixFileError(
            f"{path}: truncated: the header announces {announced} bytes of data, the file holds "
            f"{path.stat().st_size - header_end}"
        )
    return np.load(path, allow_pickle=False)


def _read_pt(path: Path) -> Union[Tensor, np.ndarray]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise MatrixFileError(
            f"{path}: holds something other than plain tensors; refused, never unpickled "
            f"({str(error).splitlines()[0]})"
        ) from error
    if not isinstance(data, Tensor):
        raise MatrixFileError(f"{path}: holds a {type(data).__name__}, not a tensor")
    return data


def _read_csv(path: Path) -> np.ndarray:
    rows: List[List[float]] = []
    with open(path, newline="") as handle:
        for line_number, row in enumerate(csv.reader(handle), start=1):
            if not row or all(not cell.strip() for cell in row):
                continue
            try:
                values = [float(cell) for cell in row]
            except ValueError:
                bad = next(c for c in row if not _is_number(c))
                raise MatrixFileError(
                    f"{path}, line {line_number}: {bad!r} is not a number"
                ) from None
            if rows and len(values) != len(rows[0]):
                raise MatrixFileError(
                    f"{path}, line {line_number}: {len(values)} values, but the rows above have "
                    f"{len(rows[0])}"
                )
            rows.append(values)
    if not rows:
        raise MatrixFileError(f"{path}: holds no numbers")
    return np.asarray(rows, dtype=np.float64)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def file_dtype(stored: torch.dtype) -> torch.dtype:
    """The dtype a file's matrix is inverted in by default: float32 for data of float32 or
    less (float16, bfloat16), float64 for float64, integers and text (``.csv``).

    Example:
        >>> file_dtype(torch.float16), file_dtype(torch.int64)
        (torch.float32, torch.float64)
    """
    if stored.is_floating_point and torch.finfo(stored).bits <= 32:
        return torch.float32
    return torch.float64


def _to_float_tensor(
    array: Union[Tensor, np.ndarray], path: Path, dtype: Optional[torch.dtype]
) -> Tensor:
    tensor = array if isinstance(array, Tensor) else torch.from_numpy(np.ascontiguousarray(array))
    if tensor.is_complex() or tensor.dtype == torch.bool:
        raise MatrixFileError(f"{path}: holds {tensor.dtype} data; a real matrix is needed")
    return tensor.to(file_dtype(tensor.dtype) if dtype is None else dtype)


MatrixKind = Literal["random", "diagonal", "file", "hilbert", "orthogonal", "spd", "low_rank"]
MATRIX_KINDS: Tuple[str, ...] = get_args(MatrixKind)
RANDOM_KINDS = ("random", "orthogonal", "spd", "low_rank")


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
