"""A user's error on the command line: one ``error:`` line and exit code 2, no traceback."""

import sys
from contextlib import contextmanager
from typing import Iterator

from gdinv_modules.core.errors import GDInvError

__all__ = ["exit_on_user_error"]


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn a :class:`GDInvError` raised inside into ``error: NAME: message`` and exit 2.

    Example:
        >>> from gdinv_modules.core.errors import InvalidOptionError
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
