r"""gdinv_modules: matrix inverses by gradient descent, as PyTorch and Lightning modules.

Vocabulary (used in names, docstrings and messages throughout):

- **M** (``matrix``): the matrix to invert, shape ``(..., m, n)``; square in the usual case.
- **X** (``inverse``): the approximate inverse, shape ``(..., n, m)``; the ``nn.Parameter``
  ``InverseModule.inverse``.
- **the product E** (``product``): what training drives to the identity: ``X M`` (formulation
  ``"left"``), ``M X`` (``"right"``) or their average (``"symmetric"``); **k** is its order.
- **a batch of matrices**: the leading dimensions ``...``, independent problems solved at once.
- **a window of steps**: the optimizer steps one ``training_step`` (or one
  ``HeavyBallStepper.run``) takes with no host sync, ``steps_per_window`` of them.
- **the loss** L(X): per matrix, the objective SGD minimises, ``||E - I||_F^2 / k^2`` plus
  ``ridge * ||X||_F^2``; the history ``losses`` and ``losses.csv`` hold it per step, and
  ``loss`` is logged as its mean over the batch.
- **the metric**: :class:`IdentityMSE`, the mean squared error of E to I over every entry of
  the batch (the loss without its ridge term), logged as ``mse``.
- **the residual**: per matrix, ``||E - T||_F / sqrt(k)`` (T the identity, or the projector for
  a rank-deficient M), what ``tol`` bounds; with a ridge, the bound on the relative distance to
  the regularised minimiser.

Layers, each importing only from those before it: ``core`` (math, theory, errors; torch only),
``nn`` (the module and the metric), ``engine`` (the hot loop, usable without a Trainer),
``io`` (files and plots), ``training`` (Lightning glue), ``cli`` (``train.py``). The names
below are imported on first use, so ``import gdinv_modules`` imports neither Lightning nor
matplotlib.
"""

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from gdinv_modules.core.deprecation import warn_renamed

_EXPORTS: Dict[str, str] = {
    "invert": "engine.inversion",
    "InverseResult": "engine.inversion",
    "InverseModule": "nn.inverse_module",
    "IdentityMSE": "nn.metric",
    "HeavyBallStepper": "engine.stepper",
    "InverseTracker": "engine.tracker",
    "TrackedUpdate": "engine.tracker",
    "TrackInverse": "training.callbacks",
    "LossHistory": "engine.history",
    "HeavyBallTuner": "engine.tuner",
    "LitInverse": "training.lit_inverse",
    "MatrixDataModule": "training.datamodule",
    "make_matrix": "training.datamodule",
    "ConvergenceMonitor": "training.callbacks",
    "ResumableCheckpoint": "training.callbacks",
    "RunOutputs": "training.run_outputs",
    "ConvergenceReport": "core.report",
    "default_tol": "core.functional",
    "random_matrix": "core.matrices",
    "diagonal_matrix": "core.matrices",
    "hilbert_matrix": "core.matrices",
    "random_orthogonal": "core.matrices",
    "spd_matrix": "core.matrices",
    "low_rank_matrix": "core.matrices",
    "conditioned_matrix": "core.matrices",
    "load_matrix": "io.matrix_io",
    "save_matrix": "io.matrix_io",
    "GDInvError": "core.errors",
    "InvalidOptionError": "core.errors",
    "MatrixDtypeError": "core.errors",
    "MatrixFileError": "core.errors",
    "MatrixShapeError": "core.errors",
    "NonFiniteMatrixError": "core.errors",
    "OutputExistsError": "core.errors",
    "DivergenceError": "core.errors",
    "ConvergenceError": "core.errors",
    "ConvergenceWarning": "core.errors",
    "SingularMatrixWarning": "core.errors",
}

__all__ = list(_EXPORTS)

# Modules of the flat layout before the layers, and where they live now.
_MOVED: Dict[str, str] = {
    "errors": "core.errors",
    "validation": "core.validation",
    "functional": "core.functional",
    "theory": "core.theory",
    "rank": "core.rank",
    "matrices": "core.matrices",
    "report": "core.report",
    "inverse_module": "nn.inverse_module",
    "metric": "nn.metric",
    "auto_tuner": "engine.tuner",
    "step_graph": "engine.step_graph",
    "sharding": "engine.sharding",
    "atomic": "io.atomic",
    "matrix_io": "io.matrix_io",
    "plotting": "io.plotting",
    "lit_inverse": "training.lit_inverse",
    "datamodule": "training.datamodule",
    "inversion": "engine.inversion",
    "run_outputs": "training.run_outputs",
    "convergence": "training.callbacks",
    "checkpointing": "training.callbacks",
    "figure": "cli.figure",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value  # the next access skips this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``gdinv_modules.OLD`` as the module that now holds it, with a warning."""

    def find_spec(
        self, fullname: str, path: Optional[Sequence[str]], target: Any = None
    ) -> Optional[importlib.machinery.ModuleSpec]:
        package, _, old = fullname.rpartition(".")
        if package != __name__ or old not in _MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        new = f"{__name__}.{_MOVED[spec.name.rpartition('.')[2]]}"
        warn_renamed(f"module {spec.name}", new, stacklevel=8)
        return importlib.import_module(new)

    def exec_module(self, module: types.ModuleType) -> None:
        """The module was imported under its new name already."""


if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())

if TYPE_CHECKING:  # for type checkers and IDEs: the names as they are imported on first use
    from gdinv_modules.core.errors import (  # noqa: F401
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
    from gdinv_modules.core.functional import default_tol  # noqa: F401
    from gdinv_modules.core.matrices import (  # noqa: F401
        conditioned_matrix,
        diagonal_matrix,
        hilbert_matrix,
        low_rank_matrix,
        random_matrix,
        random_orthogonal,
        spd_matrix,
    )
    from gdinv_modules.core.report import ConvergenceReport  # noqa: F401
    from gdinv_modules.engine.history import LossHistory  # noqa: F401
    from gdinv_modules.engine.stepper import HeavyBallStepper  # noqa: F401
    from gdinv_modules.engine.tracker import InverseTracker, TrackedUpdate  # noqa: F401
    from gdinv_modules.engine.tuner import HeavyBallTuner  # noqa: F401
    from gdinv_modules.io.matrix_io import load_matrix, save_matrix  # noqa: F401
    from gdinv_modules.nn.inverse_module import InverseModule  # noqa: F401
    from gdinv_modules.nn.metric import IdentityMSE  # noqa: F401
    from gdinv_modules.training.callbacks import (  # noqa: F401
        ConvergenceMonitor,
        ResumableCheckpoint,
        TrackInverse,
    )
    from gdinv_modules.training.datamodule import MatrixDataModule, make_matrix  # noqa: F401
    from gdinv_modules.engine.inversion import InverseResult, invert  # noqa: F401
    from gdinv_modules.training.lit_inverse import LitInverse  # noqa: F401
    from gdinv_modules.training.run_outputs import RunOutputs  # noqa: F401
