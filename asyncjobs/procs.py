"""Every OS-specific call about processes and files, behind a few small functions.

Linux is what the project tests; the Windows branches keep the seeds' promise that the
same host runs there (process groups via CREATE_NEW_PROCESS_GROUP, ``taskkill /T`` for a
tree kill, ``msvcrt.locking`` for the data-directory lock).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import IO, Any

WINDOWS = sys.platform == "win32"


def new_group_options() -> dict[str, Any]:
    """Keyword arguments for ``create_subprocess_exec`` that start a new process group."""
    if WINDOWS:
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
                subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)],  # noqa: S607
                               capture_output=True, check=False)
            else:
                os.kill(pid, signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
        else:
            os.killpg(pid, signal.SIGKILL if force else signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass


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
