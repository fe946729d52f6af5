"""Writing files whole: the one atomic writer every part of the package uses.

A file is written to a temporary file beside its target and renamed over it
(``os.replace``), so a reader never sees a half-written file and a failed write leaves
what was there before.  The temporary file of :func:`tempfile.mkstemp` is private
(mode ``0600``); before the rename it gets the permissions a plain ``open(path, "w")``
would have given: those of the file it replaces, or ``0o666 & ~umask`` for a new file.

A directory is created only when a file is written into it, and only below a directory
declared an output directory (:func:`declare_output_directory`: ``edl -o DIR``, a
pipeline's checkpoint directory): a command that writes nothing leaves no empty
directory, a failed write removes the directories it made, and a file path whose
directory does not exist is refused as before.

This module imports neither torch nor numpy.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from ..errors import DataError, EdlError

__all__ = ["atomic_open", "atomic_write", "current_umask", "declare_output_directory", "new_file_mode"]

#: absolute paths of the declared output directories
_OUTPUT_DIRECTORIES: set[str] = set()


def declare_output_directory(path: str | os.PathLike) -> None:
    """Let the atomic writer create ``path`` (and what is missing below and above it) when it
    first writes a file in or below it; nothing is created now.  Relative paths are taken
    from the current directory at the time of the call."""
    _OUTPUT_DIRECTORIES.add(os.path.abspath(path))


def _declared(folder: Path) -> bool:
    """Whether ``folder`` is a declared output directory or lies below one."""
    where = os.path.abspath(folder)
    return any(where == d or where.startswith(d.rstrip(os.sep) + os.sep) for d in _OUTPUT_DIRECTORIES)


def current_umask() -> int:
    """The process's file mode creation mask (read from ``/proc/self/status`` where it can be,
    else by setting and restoring it)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode(path: str | os.PathLike) -> int:
    """The permission bits ``open(path, "w")`` would leave ``path`` with: its own when it exists,
    else ``0o666 & ~umask``."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return 0o666 & ~current_umask()


def _make_directories(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return those created, outermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    created = []
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            if not d.is_dir():
                _remove_directories(created)
                raise
            continue
        except OSError:
            _remove_directories(created)
            raise
        created.append(d)
    return created


def _remove_directories(created: list[Path]) -> None:
    for d in reversed(created):
        try:
            d.rmdir()
        except OSError:
            pass


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, error: type[EdlError] = DataError, what: str = "") -> Iterator[BinaryIO]:
    """Open ``path`` for writing in binary mode, all or nothing.

    The block writes to a temporary file in the target's directory; when it ends
    normally the data is flushed to disk, the file gets :func:`new_file_mode` and is renamed
    over ``path``.  When it raises, the temporary file (and any directory this call
    created) is removed and ``path`` is left as it was.

    Args:
        path: the file to write; its missing directories are created if they lie in a
            declared output directory (:func:`declare_output_directory`), else its
            directory must exist.
        error: the :class:`~efficientdl.errors.EdlError` an ``OSError`` becomes.
        what: words after "cannot write" in that error's message (``" checkpoint"``).

    Yields:
        The open binary file.

    Raises:
        EdlError: (of type ``error``) ``path`` is a directory, or the system refused to
            create, write or rename (one line: the path and the reason).

    Example::

        with atomic_open("out/model.bin") as f:
            f.write(payload)
    """
    path = Path(path)
    if path.is_dir():
        raise error(f"{path}: is a directory, expected a file path")
    created: list[Path] = []
    temporary = None
    done = False
    try:
        created = _make_directories(path.parent) if _declared(path.parent) else []
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(handle, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, new_file_mode(path))
        os.replace(temporary, path)
        done = True
    except OSError as e:
        raise error(f"{path}: cannot write{what} ({e.strerror or e})") from None
    finally:
        if not done:
            if temporary is not None and os.path.exists(temporary):
                os.unlink(temporary)
            _remove_directories(created)


def atomic_write(path: str | os.PathLike, data: bytes, error: type[EdlError] = DataError, what: str = "") -> None:
    """Write ``data`` to ``path`` whole (see :func:`atomic_open`, which documents the arguments)."""
    with atomic_open(path, error, what) as stream:
        stream.write(data)
