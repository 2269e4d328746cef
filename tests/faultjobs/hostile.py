"""Jobs that misbehave on purpose: each one attacks the worker or the host in one way.

Copied next to a test's config.json and allow-listed as ``faultjobs.hostile``.  The host must
turn each of them into the right attempt outcome and carry on serving everyone else.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any

from asyncjobs.workers import context


def own_job_id() -> int:
    """The id of the job this worker runs now, read off the worker's progress reporter."""
    reporter: Any = context._reporter
    return int(reporter.__self__.job_id)


def channel_fd() -> int:
    """The worker's private result channel: a pipe opened for writing that is not 0, 1, 2."""
    for name in sorted(os.listdir("/proc/self/fd"), key=int):
        fd = int(name)
        if fd <= 2:
            continue
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            flags = Path(f"/proc/self/fdinfo/{fd}").read_text().split("flags:")[1].split()[0]
        except (OSError, IndexError):
            continue
        if target.startswith("pipe:") and int(flags, 8) & os.O_ACCMODE == os.O_WRONLY:
            return fd
    raise RuntimeError("no channel fd found")


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class Faults:
    """Runs in the class's isolation (pool); ``FaultsProc`` is the same in process mode."""

    def ok(self, value: Any = None) -> Any:
        return {"ok": value}

    def slow(self, seconds: float) -> str:
        time.sleep(seconds)
        return "slept"

    def hold(self, release: str, limit: float = 30.0) -> str:
        """Run until the file ``release`` exists (at most ``limit`` seconds)."""
        deadline = time.monotonic() + limit
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.02)
        return "released" if os.path.exists(release) else "gave up"

    def hold_then_fail(self, release: str, size: int) -> None:
        """Like ``hold``, then fail with a long message (a big entry in jobs_errors.log)."""
        self.hold(release)
        raise ValueError("e" * size)

    def sigkill(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def segfault(self) -> None:
        ctypes.string_at(0)

    def oom(self, headroom_mb: int, allocate_mb: int) -> int:
        """Cap our own address space a little above what we use, then ask for far more."""
        size = int(Path("/proc/self/status").read_text().split("VmSize:")[1].split()[0]) * 1024
        limit = size + headroom_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        block = bytearray(allocate_mb * 2**20)
        return len(block)

    def close_stdout(self) -> str:
        print("before closing", flush=True)
        os.close(1)
        print("after closing: lost")
        return "closed my stdout"

    def close_all_fds(self) -> str:
        """Close every descriptor above stderr: the worker's channel and inbox included."""
        os.closerange(3, 65536)
        return "closed everything"

    def scribble(self) -> str:
        """Write garbage to every descriptor that takes it (the channel is one of them)."""
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2:
                with contextlib.suppress(OSError):
                    os.write(fd, b"\x00\xffgarbage\r\n{\"t\": \n")
        return "scribbled"

    def flood(self, megabytes: int) -> str:
        """Megabytes to stdout (print) and to stderr (raw fd writes), then a last line."""
        line = "o" * 1023 + "\n"
        for _ in range(megabytes * 512):
            sys.stdout.write(line)
        chunk = b"e" * 1023 + b"\n"
        for _ in range(megabytes * 512):
            write_all(2, chunk)
        print("LAST LINE", flush=True)
        return "flooded"

    def unserialisable(self) -> object:
        return {"handle": object()}

    def huge(self, size: int) -> str:
        return "x" * size

    def deep(self, depth: int) -> list[Any]:
        value: list[Any] = []
        for _ in range(depth):
            value = [value]
        return value

    def bigint(self) -> int:
        return 2**100

    def stubborn(self, seconds: float, pidfile: str) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        Path(pidfile).write_text(str(os.getpid()))
        time.sleep(seconds)

    def exits(self) -> None:
        sys.exit(7)

    def bad_exception(self) -> None:
        class Nasty(Exception):
            def __str__(self) -> str:
                raise RuntimeError("my __str__ raises")

        raise Nasty()

    def printer(self, text: str) -> str:
        print(text, flush=True)
        return text


class FaultsProc(Faults):
    """The same faults with ``isolation: process``."""


class Channel:
    """Writes to the worker's result channel directly, as a malicious job could."""

    def write(self, kind: str, size: int = 0) -> str:
        fd = channel_fd()
        me = own_job_id()
        payloads = {
            "random": os.urandom(4096).replace(b"\n", b"_") + b"\n",
            "invalid_json": b'{"t": "done", "id": \n',
            "nul": b"\x00" * 64 + b"\n",
            "not_object": b"[1, 2, 3]\n",
            "no_id": b'{"t": "done", "ok": true, "result": 1}\n',
            "unknown_type": b'{"t": "pwn", "id": %d}\n' % me,
            "other_id": b'{"t": "done", "id": %d, "ok": true, "result": "stolen"}\n' % (me + 10**6),
            "forged_skip": b'{"t": "skipped", "id": %d, "skipped": true}\n' % me,
            "bad_error": b'{"t": "done", "id": %d, "ok": false, "error": "nope"}\n' % me,
            "bad_mro": b'{"t": "done", "id": %d, "ok": false, "error": {"mro": 5}}\n' % me,
            "gigantic": b'{"t": "progress", "id": %d, "fraction": 0.5, "message": "' % me
                        + b"g" * size + b'"}\n',
            "partial": b'{"t": "progress", "id": %d, "fra' % me,
        }
        write_all(fd, payloads[kind])
        return kind

    def forge_done(self, result: str) -> str:
        """Claim our own result early, then finish normally: two answers for one job."""
        me = own_job_id()
        write_all(channel_fd(), b'{"t": "done", "id": %d, "ok": true, "result": "%s"}\n'
                  % (me, result.encode()))
        time.sleep(0.2)
        return "real result"
