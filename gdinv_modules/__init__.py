"""gdinv_modules: matrix inverses by gradient descent, as PyTorch and Lightning modules."""

from gdinv_modules.datamodule import MatrixDataModule, make_matrix
from gdinv_modules.errors import (
    GDInvError,
    InvalidOptionError,
    MatrixDtypeError,
    MatrixFileError,
    MatrixShapeError,
    NonFiniteMatrixError,
    OutputExistsError,
)
from gdinv_modules.inverse_module import InverseModule
from gdinv_modules.lit_inverse import LitInverse
from gdinv_modules.matrix_io import load_matrix, save_matrix
from gdinv_modules.metric import IdentityMSE

__all__ = [
    "InverseModule",
    "IdentityMSE",
    "LitInverse",
    "MatrixDataModule",
    "make_matrix",
    "load_matrix",
    "save_matrix",
    "GDInvError",
    "InvalidOptionError",
    "MatrixDtypeError",
    "MatrixFileError",
    "MatrixShapeError",
    "NonFiniteMatrixError",
    "OutputExistsError",
]
