"""Every OS-specific call about processes and files, behind a few small functions.

Linux is what the project tests; the Windows branches keep the seeds' promise that the
same host runs there (process groups via CREATE_NEW_PROCESS_GROUP, ``taskkill /T`` for a
tree kill, ``msvcrt.locking`` for the data-directory lock).  Worker children import this
module too, so it imports nothing heavy at the top (``subprocess`` alone costs ~8 ms).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

WINDOWS = sys.platform == "win32"
CAN_FORK = hasattr(os, "fork") and not WINDOWS
"""Whether ``process`` isolation can use the fork server; elsewhere it spawns per attempt."""


def new_group_options() -> dict[str, Any]:
    """Keyword arguments for ``create_subprocess_exec`` that start a new process group."""
    if WINDOWS:
        import subprocess  # noqa: PLC0415

        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}  # type: ignore[attr-defined]
    return {"start_new_session": True}


def signal_group(pid: int, *, force: bool) -> None:
    """Ask (``force=False``) or make (``force=True``) a worker and its descendants stop.

    On POSIX the worker leads its own session, so its process group id is its pid and the
    signal reaches grandchildren too.  A group that is already gone is not an error.
    """
    try:
        if WINDOWS:
            if force:
                import subprocess  # noqa: PLC0415

                subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)],  # noqa: S607
                               capture_output=True, check=False)
            else:
                os.kill(pid, signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
        else:
            os.killpg(pid, signal.SIGKILL if force else signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass


def signal_forked(pid: int, *, force: bool, reaped: bool = False) -> None:
    """Signal a fork server's child and its group (POSIX only: there is no fork elsewhere).

    The child makes its own session first thing after ``fork()``; a kill that arrives
    before that finds no group yet, so it goes to the child itself -- unless the child was
    ``reaped`` already: then its pid is free for anyone and only its group (which keeps the
    id from being reused while any member lives) may be signalled.
    """
    sig = signal.SIGKILL if force else signal.SIGTERM
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        if not reaped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    except PermissionError:
        pass


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


def open_existing(path: str, identity: tuple[int, int] | None = None) -> int:
    """Open ``path`` (an fd, read-write) only if it is a regular file, and ``identity``'s.

    Never blocks (``O_NONBLOCK``: a FIFO put in its place), never follows a final symlink,
    never creates; ``identity`` is ``(st_dev, st_ino)`` of the file the caller expects (the
    one the host created), so a file swapped in at the same path is refused.
    """
    import stat  # noqa: PLC0415 - os has loaded it already

    fd = os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
                 | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
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


@functools.cache
def prepare_parent_death_signal() -> Any:
    """libc's ``prctl`` (None where there is none), looked up once: call it in a process that
    forks, so that its children do not each pay for importing ctypes."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes  # noqa: PLC0415 - only the fork server needs it

        return ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return None


def set_parent_death_signal() -> bool:
    """Linux: have the kernel SIGKILL this process when its parent dies (``PR_SET_PDEATHSIG``).

    For a fork server's child, which leads its own session: nothing else would stop it if
    the server and the host died together.  A no-op (False) on other platforms.
    """
    prctl = prepare_parent_death_signal()
    if prctl is None:
        return False
    pr_set_pdeathsig = 1
    return bool(prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) == 0)


def kill_own_group() -> None:
    """End this worker and everything its job started: called when its host is gone.

    On Windows there is no process group to signal from inside; the worker exits and a
    job's own children are left to the operating system.
    """
    if WINDOWS:
        os._exit(1)
    os.killpg(os.getpgid(0), signal.SIGKILL)


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


def describe_exit(code: int | None) -> str:
    """A human description of a worker's exit status (negative = killed by a signal)."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def on_stop_signals(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """Call ``callback`` on SIGINT or SIGTERM (Ctrl+C / Ctrl+Break on Windows)."""
    if WINDOWS:
        signal.signal(signal.SIGINT, lambda *_: loop.call_soon_threadsafe(callback))
        signal.signal(signal.SIGBREAK, lambda *_: loop.call_soon_threadsafe(callback))  # type: ignore[attr-defined]
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, callback)


def raise_open_file_limit() -> int | None:
    """Raise this process's soft limit on open files to its hard limit; return the new soft
    limit (None where there is no such limit: Windows).  Each API connection holds a file
    descriptor, and the default soft limit (often 1024) is far below what the kernel allows.
    """
    if WINDOWS:
        return None
    import resource  # noqa: PLC0415 - POSIX only

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard not in (resource.RLIM_INFINITY, soft):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft
