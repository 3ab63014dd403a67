r"""gdinv_modules: matrix inverses by gradient descent, as PyTorch and Lightning modules.

Vocabulary (used in names, docstrings and messages throughout; the README has the table):

- **M** (``matrix``): the matrix to invert, shape ``(..., m, n)``; square in the usual case.
- **X** (``inverse``): the approximate inverse, shape ``(..., n, m)``.
- **the product E**: what training drives to the identity, fixed by the **formulation**:
  ``X M`` (``"left"``), ``M X`` (``"right"``) or their average (``"symmetric"``); **k** is its
  order.
- **the error** ``E - I``, a matrix; **the correction** ``C = I - XM``, what a refinement step
  ``X <- X + C X`` squares (``C = I - MX`` and ``X <- X + X C`` for ``"right"``).
- **the residual**: per matrix, the number ``||E - T||_F / sqrt(k)`` (T the identity, or the
  projector for a rank-deficient M), what ``tol`` bounds.
- **the loss**: per matrix, the objective SGD minimises, ``||E - I||_F^2 / k^2`` plus
  ``ridge * ||X||_F^2``; **the metric** (:class:`IdentityMSE`, logged as ``mse``): the mean
  squared error of E to I over the batch, the loss without its ridge term.
- **a batch of matrices**: the leading dimensions ``...``, independent problems solved at once.
- **a window of steps**: the optimizer steps taken with no host sync between two checks.
- **steps** are descent (optimizer) steps; **refine_steps** are refinement steps;
  **steps_to_tol** is, per matrix, the step at which it reached ``tol``.
- **rank** is a matrix's rank; a process of a distributed run has a ``global_rank``.

Layers, each importing only from those before it: ``core`` (math, theory, errors; torch only),
``nn`` (the module and the metric), ``engine`` (the hot loop and its stopping policy, usable
without a Trainer), ``io`` (files and plots), ``training`` (Lightning glue), ``cli``
(``train.py``). The Lightning names are imported on first use, so ``import gdinv_modules``
imports neither Lightning nor matplotlib.
"""

import importlib
from typing import Any, List

from gdinv_modules.core.errors import (
    ConvergenceError,
    ConvergenceWarning,
    DivergenceError,
    GDInvError,
    NotReadyError,
    SingularMatrixWarning,
)
from gdinv_modules.core.matrices import (
    conditioned_matrix,
    diagonal_matrix,
    hilbert_matrix,
    low_rank_matrix,
    random_matrix,
    spd_matrix,
)
from gdinv_modules.core.report import ConvergenceReport
from gdinv_modules.engine.implicit import inverse_of
from gdinv_modules.engine.inversion import InverseResult, invert
from gdinv_modules.engine.options import StepOptions
from gdinv_modules.engine.stepper import HeavyBallStepper
from gdinv_modules.engine.tracker import InverseTracker
from gdinv_modules.io.matrix_io import load_matrix, save_matrix
from gdinv_modules.nn.inverse_module import InverseModule

__all__ = [
    "invert",
    "InverseResult",
    "InverseModule",
    "IdentityMSE",
    "HeavyBallStepper",
    "StepOptions",
    "InverseTracker",
    "inverse_of",
    "LitInverse",
    "MatrixDataModule",
    "StepProgressBar",
    "TrackInverse",
    "ConvergenceReport",
    "load_matrix",
    "save_matrix",
    "random_matrix",
    "diagonal_matrix",
    "hilbert_matrix",
    "spd_matrix",
    "low_rank_matrix",
    "conditioned_matrix",
    "GDInvError",
    "NotReadyError",
    "DivergenceError",
    "ConvergenceError",
    "ConvergenceWarning",
    "SingularMatrixWarning",
]

# The names whose modules import torchmetrics or Lightning: imported on first use.
_LAZY = {
    "IdentityMSE": "nn.metric",
    "LitInverse": "training.lit_inverse",
    "MatrixDataModule": "training.datamodule",
    "TrackInverse": "training.callbacks",
    "StepProgressBar": "training.progress",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value  # the next access skips this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))
