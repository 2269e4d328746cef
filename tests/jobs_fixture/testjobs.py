"""Tiny jobs that each make one engine behaviour happen on demand.

State that must survive from one attempt to the next (a flaky job's failure count) lives in
files under ``state_dir``, which tests pass in: a worker is a fresh process or a reused one,
and the test must not care which.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import asyncjobs


def _bump(path: Path) -> int:
    """Add one to the counter in ``path`` and return the new value."""
    count = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(count))
    return count


def _publish(path: str | Path, text: str) -> None:
    """Write ``text`` atomically: a test polling for the file never reads it half-written."""
    tmp = Path(f"{path}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


_remembered: str | None = None


class Ok:
    def run(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"args": list(args), "kwargs": kwargs}

    async def arun(self, value: Any) -> Any:
        return {"async": value}

    def pid(self) -> int:
        return os.getpid()

    def parent(self) -> int:
        return os.getppid()

    def remember(self, value: str) -> str | None:
        """What the previous call in this process remembered: module state, which a
        fresh worker must not inherit."""
        global _remembered  # the point: state a worker keeps between jobs
        previous, _remembered = _remembered, value
        return previous

    def record(self, path: str, name: str) -> str:
        _append(path, name)
        return name

    def progress(self) -> str:
        asyncjobs.progress(0.5, "half")
        return "done"

    def _secret(self) -> str:
        return "never"


class Flaky:
    def run(self, counter: str, failures: int) -> dict[str, int]:
        """Raise ConnectionError for the first ``failures`` calls, then succeed."""
        count = _bump(Path(counter))
        if count <= failures:
            raise ConnectionError(f"flaky failure {count} of {failures}")
        return {"calls": count}

    def crash_once(self, counter: str) -> str:
        """Kill the worker on the first call; succeed afterwards."""
        if _bump(Path(counter)) == 1:
            os._exit(3)
        return "survived"


class Boom:
    def value_error(self, previous: Any = None) -> None:
        raise ValueError("bad value")

    def connection_error(self) -> None:
        raise ConnectionRefusedError("connection refused")

    def fail(self, counter: str) -> None:
        _bump(Path(counter))
        raise asyncjobs.Fail("giving up on purpose")

    def retry(self, delay: float) -> None:
        raise asyncjobs.Retry("not yet", delay=delay)

    def exit(self, code: int) -> None:
        print("exiting now", flush=True)
        os._exit(code)

    def sigkill(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def chatty(self, lines: int) -> str:
        for i in range(lines):
            print(f"line {i:05d}")
        return "talked"

    def unserialisable(self) -> object:
        return object()

    def huge(self, size: int) -> str:
        return "x" * size


class Sleepy:
    def run(self, seconds: float, pidfile: str | None = None) -> str:
        if pidfile:
            _publish(pidfile, str(os.getpid()))
        time.sleep(seconds)
        return "woke"

    def interval(self, path: str, seconds: float) -> None:
        """Record this run's start and end (wall time) as one line of ``path``."""
        start = time.time()
        time.sleep(seconds)
        _append(path, f"{start} {time.time()}")

    def hold(self, started_dir: str, key: str, hold_file: str) -> str:
        """Mark itself started, then wait while ``hold_file`` exists (at most 30 s)."""
        _publish(Path(started_dir, f"{key}.started"), str(os.getpid()))
        deadline = time.monotonic() + 30
        while Path(hold_file).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        return key

    def grandchild(self, pidfile: str, stubborn: bool = False) -> None:
        """Spawn ``sleep 60`` in our process group, note both PIDs, and hang.

        ``stubborn``: the worker and the grandchild (which inherits the disposition) ignore
        SIGTERM, so only the SIGKILL after the grace can end them.
        """
        if stubborn:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen(["sleep", "60"])
        _publish(pidfile, f"{os.getpid()} {child.pid}")
        time.sleep(60)


class Chain:
    def step(self, n: int, previous: list[int] | None = None) -> list[int]:
        return [*(previous or []), n]
