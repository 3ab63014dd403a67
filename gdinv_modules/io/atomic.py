"""Atomic file writes: a crash never leaves a truncated file, and nothing is overwritten."""

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

from gdinv_modules.core.errors import OutputExistsError

__all__ = ["atomic_path"]


@contextmanager
def atomic_path(path: Union[str, Path], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it into place with ``os.replace``.

    The temporary file keeps the target's suffix (numpy and matplotlib choose the format by it)
    and is made with the umask's permissions, as ``open`` would make ``path`` (0644 under
    umask 022). If the body raises, the temporary file is removed and ``path`` is untouched.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "note.txt"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_text("done")
        >>> target.read_text()
        'done'
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise OutputExistsError(f"{path} exists already and is not overwritten")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_file(path)
    try:
        yield tmp
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        if not overwrite and path.exists():
            raise OutputExistsError(f"{path} appeared while it was being written; not overwritten")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _new_file(path: Path) -> Path:
    """An empty file of a new name beside ``path``, with mode ``0o666`` less the umask
    (``tempfile.mkstemp`` would make it ``0o600`` whatever the umask)."""
    while True:
        tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
