"""The exceptions and warnings the library raises, and how a warning finds the user's line.

Every error about bad input subclasses :class:`GDInvError`, itself a :class:`ValueError`, so
``except ValueError`` keeps working and ``except GDInvError`` catches exactly ours. An object
asked for something before it can give it (a module with no matrix yet) raises
:class:`NotReadyError`, a :class:`RuntimeError`.
"""

import os
import sys
import warnings
from contextlib import contextmanager
from typing import Iterator, Type

__all__ = [
    "GDInvError",
    "MatrixShapeError",
    "MatrixDtypeError",
    "NonFiniteMatrixError",
    "MatrixScaleError",
    "MatrixFileError",
    "InvalidOptionError",
    "OutputExistsError",
    "DivergenceError",
    "SingularMatrixError",
    "NotReadyError",
    "ConvergenceError",
    "ConvergenceWarning",
    "SingularMatrixWarning",
    "warn_user",
    "exit_on_user_error",
]


class GDInvError(ValueError):
    """Base class of the errors raised for bad input."""


class MatrixShapeError(GDInvError):
    """A matrix has the wrong shape: fewer than 2 dimensions, not square, or not matching."""


class MatrixDtypeError(GDInvError):
    """A matrix's dtype is not one the operation supports (integer and bool never are)."""


class NonFiniteMatrixError(GDInvError):
    """A matrix holds NaN or infinite entries."""


class MatrixScaleError(GDInvError):
    """M's scale is past what its dtype's steps hold: its largest entry outside the band of
    :func:`~gdinv_modules.core.scaling.scale_band` (``invert`` and the tracker scale such an M
    themselves), or an inverse past the dtype's range."""


class MatrixFileError(GDInvError):
    """A matrix file is missing, unreadable, of an unknown format, or holds no plain array."""


class InvalidOptionError(GDInvError):
    """An option (learning rate, momentum, formulation, size, ...) has a value it cannot take."""


class OutputExistsError(GDInvError):
    """An output file exists already: a run never overwrites an earlier run's files."""


class DivergenceError(GDInvError):
    """The loss became non-finite or grew without bound: the step size is past the stable bound."""


class SingularMatrixError(GDInvError):
    """M is singular where an inverse (not a pseudo-inverse) is needed: a tracked matrix, or a
    gradient through ``invert``."""


class NotReadyError(RuntimeError):
    """An object was asked for what it does not hold yet (a matrix, a first update)."""


class ConvergenceError(RuntimeError):
    """The run ended before every matrix reached the tolerance (``invert(check_errors=True)``)."""


class ConvergenceWarning(RuntimeWarning):
    """The run ended before every matrix reached the tolerance; the result is still returned."""


class SingularMatrixWarning(ConvergenceWarning):
    """M is rank-deficient (or rectangular without full rank): the loss has a floor above 0 and
    X tends to a pseudo-inverse."""


# Frames of these packages are never "the user's line" a warning points at.
_INTERNAL = ("gdinv_modules", "pytorch_lightning", "lightning", "lightning_fabric", "torch")


def _internal_roots() -> tuple:
    roots = []
    for name in _INTERNAL:
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if path:
            roots.append(os.path.dirname(os.path.abspath(path)) + os.sep)
    roots.append(os.path.abspath(contextmanager.__code__.co_filename))  # contextlib.py itself
    return tuple(roots)


def warn_user(message: str, category: Type[Warning]) -> None:
    """Warn with ``message``, attributed to the first frame outside this package, Lightning,
    torch and the standard library: the user's line, also when a Trainer calls us.

    Example:
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_user("M is singular", SingularMatrixWarning)
        >>> caught[0].category.__name__
        'SingularMatrixWarning'
    """
    roots = _internal_roots()
    frame, level = sys._getframe(1), 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(roots):
        frame, level = frame.f_back, level + 1
    if frame is None:  # called from internal code only (a Lightning worker, a test harness)
        level = 2
    warnings.warn(message, category, stacklevel=level)


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn a :class:`GDInvError` raised inside into ``error: NAME: message`` on stderr and
    exit code 2: a user's error on the command line, without a traceback.

    Example:
        >>> try:
        ...     with exit_on_user_error():
        ...         raise InvalidOptionError("lr must be > 0")
        ... except SystemExit as done:
        ...     done.code
        2
    """
    try:
        yield
    except GDInvError as error:
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        raise SystemExit(2) from None
