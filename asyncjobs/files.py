"""Every OS-specific call about files, behind a few small functions.

Private files a job cannot redirect (``O_EXCL | O_NOFOLLOW``, 0600), the tail of a capture
file read through its handle, the host's lock file, and durable renames.  Shared by every
layer (the host's data directory, the store, the launcher and the worker child), so it
imports nothing heavy at the top: worker children load it on every start.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import IO

WINDOWS = sys.platform == "win32"


def create_private(path: str | os.PathLike[str], *, append: bool = False) -> IO[bytes]:
    """A new, empty regular file at ``path``, opened read-write for this process alone.

    For files in a directory a job can write (the run directory): whatever is at ``path``
    (a stale file, or a FIFO or symlink a job put there) is removed first, and the file is
    created with ``O_EXCL | O_NOFOLLOW``, so the handle is always to a fresh regular file of
    ours.  The caller keeps the handle and never opens ``path`` again.  ``append``: every
    write goes to the end (``O_APPEND``), as a capture file shared with a child needs.
    """
    flags = (os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
             | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
             | (os.O_APPEND if append else 0))
    for _ in range(5):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:
            continue  # something put it back in between: remove it again
        return os.fdopen(fd, "a+b" if append else "r+b")
    raise FileExistsError(f"could not create {os.fspath(path)!r}: it keeps reappearing")


def read_tail(handle: IO[bytes], limit: int) -> str:
    """The last ``limit`` bytes of an open capture or error file, as text ("" if unreadable).

    Through the handle kept since :func:`create_private`, never by path.
    """
    try:
        handle.seek(0, 2)
        size = handle.tell()
        handle.seek(max(0, size - limit))
        return handle.read(limit).decode("utf-8", "replace")
    except (OSError, ValueError):
        return ""


def open_existing(path: str, identity: tuple[int, int] | None = None, *,
                  append: bool = False) -> int:
    """Open ``path`` (an fd, read-write; appending with ``append``) only if it is a regular
    file, and ``identity``'s.

    Never blocks (``O_NONBLOCK``: a FIFO put in its place), never follows a final symlink,
    never creates; ``identity`` is ``(st_dev, st_ino)`` of the file the caller expects (the
    one the host created), so a file swapped in at the same path is refused.
    """
    import stat  # noqa: PLC0415 - os has loaded it already

    fd = os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
                 | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
                 | (os.O_APPEND if append else 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or (
                identity is not None and (info.st_dev, info.st_ino) != identity):
            raise OSError(f"{path!r} is not the file it should be (replaced?)")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def try_lock(handle: IO[bytes]) -> bool:
    """Take an exclusive, non-blocking lock on an open file; False if another holds it.

    The lock dies with the process, so a host killed with SIGKILL never leaves a stale one.
    """
    try:
        if WINDOWS:
            import msvcrt  # noqa: PLC0415

            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        else:
            import fcntl  # noqa: PLC0415

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a file or a directory to disk; a directory's fsync makes a rename in it durable."""
    if WINDOWS and os.path.isdir(path):
        return  # Windows cannot open a directory; its renames are durable enough there
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
