"""The worker child: the one entry point both isolation modes run (``python -m asyncjobs.worker``).

It re-checks the allow-list against ``config.json`` itself, imports the job's module only
then, calls the method (sync, or async through ``asyncio.run``), and answers on a private
channel.  Imports are kept to the minimum because every ``process``-mode attempt pays for
them; ``asyncio`` is imported only when a job is a coroutine.  It never imports the store,
the API or aiohttp: dependencies point from the host to the worker, never back.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
import time
import traceback
from collections import deque
from typing import Any

import orjson

from . import context, procs
from .errors import Fail, Retry

PROGRESS_INTERVAL = 0.1  # seconds between forwarded progress updates


class NotAllowedError(Exception):
    """Raised in the child when the host asks for something outside the allow-list."""


class Channel:
    """Writes whole-line messages to the host on a private file descriptor."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.job_id = 0
        self._last_sent = 0.0
        self._pending: tuple[float, str | None] | None = None
        self._lock = threading.Lock()  # the inbox thread answers skips on the same channel

    def send(self, message: dict[str, Any]) -> None:
        data = memoryview(orjson.dumps(message) + b"\n")
        with self._lock:
            while data:
                written = os.write(self.fd, data)
                data = data[written:]

    def progress(self, fraction: float, message: str | None) -> None:
        # Rate-limited so a job reporting in a tight loop cannot flood the host.
        now = time.monotonic()
        if now - self._last_sent >= PROGRESS_INTERVAL:
            self._last_sent = now
            self._pending = None
            self.send({"t": "progress", "id": self.job_id, "fraction": fraction,
                       "message": message})
        else:
            self._pending = (fraction, message)

    def flush_progress(self) -> None:
        if self._pending is not None:
            fraction, message = self._pending
            self._pending = None
            self.send({"t": "progress", "id": self.job_id, "fraction": fraction,
                       "message": message})


class Inbox:
    """Reads the host's messages ahead, on a thread, so queued jobs can be taken back.

    The host sends several jobs ahead to keep a warm worker busy.  A ``skip`` for a job still
    waiting here removes it and is answered at once (``skipped: true``), so a cancelled job
    never starts and an idle worker elsewhere can take it; a ``skip`` for a job already
    started is answered ``skipped: false``.  Every skip gets exactly one answer.
    """

    def __init__(self, stream: Any, channel: Channel) -> None:
        self.stream = stream
        self.channel = channel
        self.jobs: deque[dict[str, Any]] = deque()
        self.closed = False
        self.busy = False  # a job is running on the main thread
        self._ready = threading.Condition()
        threading.Thread(target=self._read, name="asyncjobs-inbox", daemon=True).start()

    def _read(self) -> None:
        for line in self.stream:
            message = orjson.loads(line)
            with self._ready:
                if message.get("t") == "skip":
                    found = next((j for j in self.jobs if j["id"] == message["id"]), None)
                    if found is not None:
                        self.jobs.remove(found)
                    self.channel.send({"t": "skipped", "id": message["id"],
                                       "skipped": found is not None})
                else:
                    self.jobs.append(message)
                self._ready.notify()
        with self._ready:
            self.closed = True
            self._ready.notify()
            if self.busy:
                # The host closes our input only when we are idle; closed mid-job means the
                # host died.  The next host runs this job again, so stop it (and whatever it
                # started) now rather than let two copies run at once.
                procs.kill_own_group()

    def job_done(self) -> None:
        """The job's answer is sent: from now on a closed input is a normal end."""
        with self._ready:
            self.busy = False

    def next_job(self) -> dict[str, Any] | None:
        with self._ready:
            while not self.jobs and not self.closed:
                self._ready.wait()
            if not self.jobs:
                return None
            self.busy = True
            return self.jobs.popleft()


class Capture:
    """The job's stdout and stderr (fds 1 and 2) go to one file; we keep its tail."""

    def __init__(self, fd: int, limit: int) -> None:
        self.fd = fd
        self.limit = limit

    def reset(self) -> None:
        """Start a job with fds 1 and 2 (and sys.stdout/err) on an empty capture file.

        Repointed before every job: one that closed or redirected them must not break
        printing for the jobs after it on a warm worker.
        """
        os.dup2(self.fd, 1)
        os.dup2(self.fd, 2)
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if stream is None or stream.closed:
                fd = 1 if name == "stdout" else 2
                setattr(sys, name, open(fd, "w", buffering=1, closefd=False))  # noqa: SIM115
        os.ftruncate(self.fd, 0)

    def tail(self) -> str:
        for stream in (sys.stdout, sys.stderr):
            # The job may have closed or broken its own stream; keep what reached the file.
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        size = os.fstat(self.fd).st_size
        start = max(0, size - self.limit)
        os.lseek(self.fd, start, os.SEEK_SET)
        data = os.read(self.fd, self.limit)
        return data.decode("utf-8", "replace")


def load_allow_list(config_path: str) -> dict[str, Any]:
    with open(config_path, "rb") as f:
        doc = orjson.loads(f.read())
    jobs = doc.get("jobs", {}) if isinstance(doc, dict) else {}
    return jobs if isinstance(jobs, dict) else {}


def resolve(allow: dict[str, Any], cls_name: str, method: str) -> Any:
    """Allow-list first, import second: nothing is imported for a refused name."""
    entry = allow.get(cls_name)
    if (not isinstance(entry, dict) or cls_name.startswith("_") or method.startswith("_")
            or method not in entry.get("methods", [])):
        raise NotAllowedError(f"{cls_name}.{method} is not in the allow-list")
    module = importlib.import_module(entry.get("module", "jobs"))
    target = getattr(module, cls_name, None)
    if not isinstance(target, type):
        raise NotAllowedError(f"{entry.get('module', 'jobs')} has no class {cls_name}")
    return getattr(target(), method)


def call(func: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    result = func(*args, **kwargs)
    if hasattr(result, "__await__"):
        import asyncio  # noqa: PLC0415 - only async jobs pay for asyncio's import

        async def _await() -> Any:
            return await result

        result = asyncio.run(_await())
    return result


def _describe(exc: BaseException) -> tuple[str, str]:
    """The message and traceback of ``exc``, even when its ``__str__`` itself raises."""
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not take the worker down
        message = f"<{type(exc).__name__} whose str() raised>"
    try:
        tb = "".join(traceback.format_exception(exc))
    except Exception:
        tb = f"{type(exc).__name__}: {message}\n(traceback unavailable)"
    return message, tb


def error_message(exc: BaseException, **extra: Any) -> dict[str, Any]:
    message, tb = _describe(exc)
    return {"t": "done", "ok": False, **extra, "error": {
        "type": type(exc).__name__,
        "message": message[:2000],
        "traceback": tb[-20000:],
        "mro": [c.__name__ for c in type(exc).__mro__],
    }}


def run_job(job: dict[str, Any], allow: dict[str, Any], max_result: int) -> dict[str, Any]:
    try:
        func = resolve(allow, job["class"], job["method"])
        result = call(func, job.get("args") or [], job.get("kwargs") or {})
    except Retry as exc:
        return error_message(exc, retry=True, delay=exc.delay)
    except (Fail, NotAllowedError) as exc:
        return error_message(exc, fail=True)
    except BaseException as exc:
        return error_message(exc)
    try:
        encoded = orjson.dumps(result)
    except TypeError as exc:
        return error_message(ResultError(f"return value is not JSON-serialisable: {exc}"))
    if len(encoded) > max_result:
        return error_message(ResultError(
            f"return value is {len(encoded)} bytes as JSON; the limit is {max_result}"))
    return {"t": "done", "ok": True, "result": result}


class ResultError(Exception):
    """The job returned something the host cannot store."""


def serve(config_path: str, base_dir: str, max_result: int, output_limit: int,
          once: bool) -> None:
    # The channel is our original stdout; the job's fds 1 and 2 both go to the capture file
    # the host gave us as stderr, and stdin becomes /dev/null so a job cannot read our input.
    channel = Channel(os.dup(1))
    inbox = Inbox(os.fdopen(os.dup(0), "rb"), channel)
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.path.insert(0, base_dir)
    capture = Capture(os.dup(2), output_limit)  # a private fd the job cannot close by accident
    allow = load_allow_list(config_path)
    context.set_reporter(channel.progress)
    host_pid = os.getppid()
    while (job := inbox.next_job()) is not None:
        if os.getppid() != host_pid:
            # The host died: jobs still queued for us will be rerun by the next host (they
            # are "running" on disk), so starting them here would only run them twice.
            break
        channel.job_id = job["id"]
        capture.reset()
        reply = run_job(job, allow, max_result)
        inbox.job_done()  # the job's code has returned: nothing left to stop if input closes
        channel.flush_progress()
        reply["id"] = job["id"]
        reply["output"] = capture.tail()
        channel.send(reply)
        if once:
            break


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    config_path, base_dir, max_result, output_limit, mode = args
    serve(config_path, base_dir, int(max_result), int(output_limit), mode == "once")


if __name__ == "__main__":
    main()
