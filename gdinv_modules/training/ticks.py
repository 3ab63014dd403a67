"""The training loader of an inversion: one tick per window of steps, none of them data."""

from typing import Iterable

__all__ = ["window_ticks", "DEFAULT_WINDOWS_PER_EPOCH"]

DEFAULT_WINDOWS_PER_EPOCH = 10


def window_ticks(windows_per_epoch: int = DEFAULT_WINDOWS_PER_EPOCH) -> Iterable[int]:
    """One tick per ``training_step`` (a window of optimizer steps).

    M stays on the module (moved to the device once); the loader only sets the epoch's length,
    so epoch-end callbacks (``EarlyStopping``, ``ModelCheckpoint``) run every
    ``windows_per_epoch`` windows.

    Example:
        >>> list(window_ticks(3))
        [0, 1, 2]
    """
    return range(windows_per_epoch)
