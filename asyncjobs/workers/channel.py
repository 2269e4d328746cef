"""The worker child's side of its channel to the host, and the capture of a job's output.

:class:`Channel` writes whole-line messages (rate-limited progress, the answer) on a private
descriptor; :class:`Inbox` reads the host's requests ahead on a thread so a queued job can be
taken back (``skip``); :class:`Capture` points the job's fds 1 and 2 at one file and keeps its
tail.  Every worker imports this module (pool, once, and each child of the fork server), so it
imports nothing beyond what :mod:`asyncjobs.workers.protocol` already needs.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections import deque
from typing import Any

from . import procs
from .protocol import (
    JobRequest,
    Reply,
    SkipRequest,
    decode_request,
    encode_done,
    encode_progress,
    encode_skipped,
)

PROGRESS_INTERVAL = 0.1  # seconds between forwarded progress updates


class Channel:
    """Writes whole-line messages to the host on a private file descriptor."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.job_id = 0
        self._last_sent = 0.0
        self._pending: tuple[float, str | None] | None = None
        self._lock = threading.Lock()  # the inbox thread answers skips on the same channel

    def send(self, line: bytes) -> None:
        data = memoryview(line)
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
            self.send(encode_progress(self.job_id, fraction, message))
        else:
            self._pending = (fraction, message)

    def flush_progress(self) -> None:
        if self._pending is not None:
            fraction, message = self._pending
            self._pending = None
            self.send(encode_progress(self.job_id, fraction, message))


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
        self.jobs: deque[JobRequest] = deque()
        self.closed = False
        self.busy = False  # a job is running on the main thread
        self._ready = threading.Condition()
        threading.Thread(target=self._read, name="asyncjobs-inbox", daemon=True).start()

    def _read(self) -> None:
        for line in self.stream:
            message = decode_request(line)
            with self._ready:
                if isinstance(message, SkipRequest):
                    found = next((j for j in self.jobs if j.id == message.id), None)
                    if found is not None:
                        self.jobs.remove(found)
                    self.channel.send(encode_skipped(message.id, found is not None))
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

    def next_job(self) -> JobRequest | None:
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
        if not size:
            return ""  # the usual case: a job that printed nothing costs no more calls
        start = max(0, size - self.limit)
        os.lseek(self.fd, start, os.SEEK_SET)
        data = os.read(self.fd, self.limit)
        return data.decode("utf-8", "replace")


def send_reply(job: JobRequest, reply: Reply, channel: Channel, capture: Capture,
               busy: float | None = None) -> None:
    """The job's answer: the last progress update, then its result with its output tail
    (and ``busy``: the seconds this worker spent on it)."""
    channel.flush_progress()
    channel.send(encode_done(job.id, reply, capture.tail(), busy))


def message_limit(max_result: int, output_limit: int) -> int:
    """The longest line the host reads from a worker: a result up to its cap (JSON escaping
    may double it), plus a traceback and the output tail (escaped), plus headroom."""
    return max_result * 2 + output_limit * 6 + (1 << 20)
