"""Jobs that leave processes behind in other sessions, and jobs that use too much memory.

For the containment tests (tests/workers/test_containment.py): each ``Escape`` job starts a
helper that leaves the worker's process group, as daemonising code does, writes the
helper's pid to a file, and then returns, hangs, or kills its own worker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

_kept: list[bytearray] = []  # memory a job leaves behind in its warm worker


def _publish(path: str, text: str) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _double_fork(stubborn: bool) -> int:
    """A daemon the classic way: fork, setsid, fork again, the middle one exits."""
    read_fd, write_fd = os.pipe()
    middle = os.fork()
    if middle == 0:
        os.setsid()
        pid = os.fork()
        if pid == 0:
            if stubborn:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.closerange(3, 64)
            time.sleep(300)
            os._exit(0)
        os.write(write_fd, str(pid).encode())
        os._exit(0)
    os.close(write_fd)
    os.waitpid(middle, 0)
    with os.fdopen(read_fd, "rb") as f:
        return int(f.read())


def _helper(how: str, stubborn: bool) -> int:
    if how == "double_fork":
        return _double_fork(stubborn)
    code = ("import signal, time\n"
            + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if stubborn else "")
            + "time.sleep(300)\n")
    if how == "setsid":  # the setsid(1) command, as a shell script would do it
        return subprocess.Popen(["setsid", sys.executable, "-c", code]).pid
    # start_new_session=True: the helper is our child, in a session of its own
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True).pid


class Escape:
    def leak(self, pidfile: str, how: str = "new_session", then: str = "return",
             stubborn: bool = False) -> int:
        """Start a helper that escapes our group; then ``return``, ``hang`` or ``crash``."""
        pid = _helper(how, stubborn)
        if how == "setsid":
            time.sleep(0.2)  # setsid(1) forks when it is a group leader: wait for the exec
        _publish(pidfile, str(pid))
        if then == "hang":
            time.sleep(300)
        elif then == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        return pid

    def zombie(self) -> int:
        """Start a child that exits at once and never reap it: not a running stray."""
        child = subprocess.Popen(["true"])
        time.sleep(0.2)
        return child.pid

    def hog(self, mib: int, seconds: float = 5.0) -> str:
        """Touch ``mib`` MiB, a MiB at a time, then hold it for ``seconds``."""
        held = [b"x" * (1 << 20) for _ in range(mib)]  # written, so resident
        time.sleep(seconds)
        return f"held {len(held)} MiB"

    def keep(self, mib: int) -> int:
        """Leave ``mib`` MiB allocated in this worker; return its pid."""
        _kept.append(bytearray(b"x" * (mib << 20)))  # written, so resident
        return os.getpid()

    def pid(self) -> int:
        return os.getpid()


class EscapeProc(Escape):
    """The same jobs, for a class configured with ``process`` isolation."""


class Hog(Escape):
    """The same jobs, for a class configured with a ``memory_limit``."""
