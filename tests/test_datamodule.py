"""MatrixDataModule and load_matrix: every kind, every file format, and refused files."""

import pickle

import numpy as np
import pytest
import torch

from gdinv_modules import MatrixDataModule, load_matrix, save_matrix
from gdinv_modules.core.errors import InvalidOptionError, MatrixFileError, NonFiniteMatrixError
from gdinv_modules.io.matrix_io import make_matrix


def test_random_kind_is_the_posts_m1(m1):
    assert torch.equal(MatrixDataModule("random").matrix, m1)
    batch = MatrixDataModule("random", batch_shape=[3], dtype="float64").matrix
    assert batch.shape == (3, 4, 4) and batch.dtype == torch.float64
    assert torch.equal(batch[0], m1.double())


def test_diagonal_kind_is_the_posts_m2(m2):
    assert torch.equal(MatrixDataModule("diagonal").matrix, m2)
    assert torch.equal(MatrixDataModule("diagonal", values=[1, 2, 3, 4]).matrix, m2)


def test_classic_matrices_have_their_defining_property():
    eps = torch.finfo(torch.float64).eps
    hilbert = MatrixDataModule("hilbert", n=5, dtype="float64").matrix
    assert hilbert[2, 3].item() == pytest.approx(1 / 6, abs=eps)
    q = MatrixDataModule("orthogonal", n=6, dtype="float64").matrix
    torch.testing.assert_close(q @ q.T, torch.eye(6, dtype=torch.float64), atol=20 * eps, rtol=0)
    spd = MatrixDataModule("spd", n=6, condition=50.0, dtype="float64").matrix
    torch.testing.assert_close(spd, spd.T, atol=0, rtol=0)
    eigenvalues = torch.linalg.eigvalsh(spd)
    assert eigenvalues.min() > 0
    assert (eigenvalues.max() / eigenvalues.min()).item() == pytest.approx(50.0, rel=1e-9)


@pytest.mark.parametrize("suffix", [".npy", ".pt", ".csv"])
def test_file_kind_reads_each_format(tmp_path, suffix, m1):
    path = tmp_path / f"m{suffix}"
    if suffix == ".csv":
        np.savetxt(path, m1.double().numpy(), delimiter=",", fmt="%.17g")
    else:
        save_matrix(m1, path)
    loaded = MatrixDataModule("file", path=str(path)).matrix
    assert torch.equal(loaded, m1)


def test_saved_files_are_not_overwritten(tmp_path):
    save_matrix(torch.eye(2), tmp_path / "m.npy")
    with pytest.raises(ValueError, match="exists already"):
        save_matrix(torch.zeros(2, 2), tmp_path / "m.npy")
    assert torch.equal(load_matrix(tmp_path / "m.npy"), torch.eye(2))


class _Payload:
    """An object whose unpickling would run code: it must never be unpickled."""

    def __reduce__(self):
        return (print, ("unpickled!",))


def _write_bad_file(tmp_path, name):
    path = tmp_path / name
    if name == "object.npy":
        np.save(path, np.array([_Payload(), 1], dtype=object), allow_pickle=True)
    elif name == "pickled.pt":
        torch.save({"payload": _Payload()}, path)
    elif name == "pickled.npy":
        path.write_bytes(pickle.dumps(_Payload()))
    elif name == "truncated.npy":
        np.save(path, np.ones((50, 50)))
        path.write_bytes(path.read_bytes()[:-100])
    elif name == "truncated.pt":
        torch.save(torch.ones(50, 50), path)
        path.write_bytes(path.read_bytes()[:-300])
    elif name == "ragged.csv":
        path.write_text("1,2\n3,4,5\n")
    elif name == "word.csv":
        path.write_text("1,2\n3,four\n")
    elif name == "empty.csv":
        path.write_text("")
    elif name == "dict.pt":
        torch.save({"m": torch.eye(2)}, path)
    elif name == "complex.npy":
        np.save(path, np.eye(2, dtype=np.complex64))
    elif name == "huge.npy":
        with open(path, "wb") as handle:
            header = {"descr": "<f8", "fortran_order": False, "shape": (40000, 40000)}
            np.lib.format.write_array_header_1_0(handle, header)
            handle.write(b"\0" * 64)
    elif name == "matrix.txt":
        path.write_text("1 0\n0 1\n")
    elif name == "folder.npy":
        path.mkdir()
    return path


@pytest.mark.parametrize(
    "name, words",
    [
        ("object.npy", "Python objects"),
        ("pickled.npy", "not a valid .npy"),
        ("pickled.pt", "never unpickled"),
        ("truncated.npy", "truncated"),
        ("truncated.pt", "cannot read"),
        ("ragged.csv", "line 2: 3 values, but the rows above have 2"),
        ("word.csv", "line 2: 'four' is not a number"),
        ("empty.csv", "empty"),
        ("dict.pt", "holds a dict, not a tensor"),
        ("complex.npy", "complex"),
        ("huge.npy", "refused before reading"),
        ("matrix.txt", "unknown matrix file format"),
        ("folder.npy", "not a regular file"),
        ("missing.npy", "no such file"),
    ],
)
def test_bad_files_get_one_clear_error_and_nothing_runs(tmp_path, capsys, name, words):
    path = _write_bad_file(tmp_path, name) if name != "missing.npy" else tmp_path / name
    with pytest.raises(MatrixFileError, match=words) as raised:
        MatrixDataModule("file", path=str(path))
    assert str(path) in str(raised.value)
    assert "unpickled!" not in capsys.readouterr().out


def test_non_finite_file_is_refused(tmp_path):
    path = tmp_path / "nan.csv"
    path.write_text("1,nan\n0,1\n")
    with pytest.raises(NonFiniteMatrixError):
        MatrixDataModule("file", path=str(path))


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(kind="triangular"), "kind"),
        (dict(kind="random", n=0), "n must be"),
        (dict(kind="file"), "needs a path"),
        (dict(kind="random", path="m.npy"), "path is for kind='file'"),
        (dict(kind="hilbert", batch_shape=[2]), "batch_shape"),
        (dict(kind="spd", condition=0.5), "condition"),
        (dict(kind="random", dtype="float16"), "dtype"),
        (dict(kind="diagonal", values=[]), "must not be empty"),
        (dict(kind="random", windows_per_epoch=0), "windows_per_epoch"),
    ],
)
def test_bad_options_are_named(kwargs, words):
    with pytest.raises(InvalidOptionError, match=words):
        MatrixDataModule(**kwargs)


def test_make_matrix_refuses_options_its_kind_does_not_use():
    """The function and the data module share one set of rules."""
    with pytest.raises(InvalidOptionError, match="batch_shape"):
        make_matrix("hilbert", n=3, batch_shape=[2])
    with pytest.raises(InvalidOptionError, match="rank and rows"):
        make_matrix("spd", n=3, rank=2)
