"""The exceptions and warnings the library raises.

Every error about bad input subclasses :class:`GDInvError`, itself a :class:`ValueError`, so
``except ValueError`` keeps working and ``except GDInvError`` catches exactly ours.
"""

__all__ = [
    "GDInvError",
    "MatrixShapeError",
    "MatrixDtypeError",
    "NonFiniteMatrixError",
    "MatrixFileError",
    "InvalidOptionError",
    "OutputExistsError",
    "DivergenceError",
    "ConvergenceError",
    "ConvergenceWarning",
    "SingularMatrixWarning",
]


class GDInvError(ValueError):
    """Base class of the errors raised for bad input."""


class MatrixShapeError(GDInvError):
    """A matrix has the wrong shape: fewer than 2 dimensions, not square, or not matching."""


class MatrixDtypeError(GDInvError):
    """A matrix's dtype is not one the operation supports (integer and bool never are)."""


class NonFiniteMatrixError(GDInvError):
    """A matrix holds NaN or infinite entries."""


class MatrixFileError(GDInvError):
    """A matrix file is missing, unreadable, of an unknown format, or holds no plain array."""


class InvalidOptionError(GDInvError):
    """An option (learning rate, momentum, formulation, size, ...) has a value it cannot take."""


class OutputExistsError(GDInvError):
    """An output file exists already: a run never overwrites an earlier run's files."""


class DivergenceError(GDInvError):
    """The loss became non-finite or grew without bound: the step size is past the stable bound."""


class ConvergenceError(RuntimeError):
    """The run ended before every matrix reached the tolerance (``invert(..., check=True)``)."""


class ConvergenceWarning(RuntimeWarning):
    """The run ended before every matrix reached the tolerance; the result is still returned."""


class SingularMatrixWarning(ConvergenceWarning):
    """M is rank-deficient (or rectangular without full rank): the loss has a floor above 0 and
    X tends to a pseudo-inverse."""
