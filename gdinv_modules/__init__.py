"""gdinv_modules: matrix inverses by gradient descent, as PyTorch and Lightning modules."""

from gdinv_modules.auto_tuner import HeavyBallTuner
from gdinv_modules.checkpointing import ResumableCheckpoint
from gdinv_modules.convergence import ConvergenceMonitor, default_tol
from gdinv_modules.datamodule import MatrixDataModule, make_matrix
from gdinv_modules.errors import (
    ConvergenceError,
    ConvergenceWarning,
    DivergenceError,
    GDInvError,
    InvalidOptionError,
    MatrixDtypeError,
    MatrixFileError,
    MatrixShapeError,
    NonFiniteMatrixError,
    OutputExistsError,
    SingularMatrixWarning,
)
from gdinv_modules.inverse_module import InverseModule
from gdinv_modules.inversion import InverseResult, invert
from gdinv_modules.lit_inverse import LitInverse
from gdinv_modules.matrix_io import load_matrix, save_matrix
from gdinv_modules.metric import IdentityMSE
from gdinv_modules.report import ConvergenceReport
from gdinv_modules.run_outputs import RunOutputs

__all__ = [
    "invert",
    "InverseResult",
    "InverseModule",
    "IdentityMSE",
    "LitInverse",
    "MatrixDataModule",
    "make_matrix",
    "ConvergenceMonitor",
    "ConvergenceReport",
    "HeavyBallTuner",
    "ResumableCheckpoint",
    "RunOutputs",
    "default_tol",
    "load_matrix",
    "save_matrix",
    "GDInvError",
    "InvalidOptionError",
    "MatrixDtypeError",
    "MatrixFileError",
    "MatrixShapeError",
    "NonFiniteMatrixError",
    "OutputExistsError",
    "DivergenceError",
    "ConvergenceError",
    "ConvergenceWarning",
    "SingularMatrixWarning",
]
