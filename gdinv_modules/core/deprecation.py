"""Old names that still work, with a ``DeprecationWarning`` that names the new one."""

import warnings
from typing import Any, Callable, Dict

__all__ = ["warn_renamed", "renamed_attributes"]


def warn_renamed(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn that ``old`` was renamed ``new`` (``stacklevel`` 3: the caller of the function that
    warns).

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_renamed("f", "g")
        >>> str(caught[0].message)
        'f is deprecated; use g'
    """
    warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=stacklevel)


def renamed_attributes(module: str, renames: Dict[str, str], namespace: Dict[str, Any]) -> Callable:
    """A module ``__getattr__`` that serves each old name of ``renames`` as its new one, with a
    warning (PEP 562)."""

    def __getattr__(name: str) -> Any:
        if name in renames:
            warn_renamed(f"{module}.{name}", f"{module}.{renames[name]}")
            return namespace[renames[name]]
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
