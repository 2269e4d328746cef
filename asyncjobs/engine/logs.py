"""The two operator logs: ``jobs.log`` (one line per event) and ``jobs_errors.log``.

Both are rotated by size.  Lines are ``key=value`` after an ISO timestamp so that they grep
well and read well: ``2026-11-22T10:00:00.000Z job=17 class=SampleJob method=process
attempt=1 status=completed duration=0.012s``.  Event lines are buffered and flushed once per
dispatcher round (``flush()``), not once per line: at thousands of jobs a second a
stat-and-flush per line was a sixth of the host's time.  Error entries are flushed at once.

Fields come from users (class and method names, error messages), so control characters in
them are escaped (a newline becomes ``\\x0a``): a line cannot be forged, and one entry can never
pass for another job's.  Traceback lines are indented, so none begins like an entry.  The
files are created 0600 and never opened through a symlink (see :mod:`.datadir`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from ..config import LogSettings
from ..models import ErrorInfo, iso
from .datadir import open_private

log = logging.getLogger("asyncjobs.engine.logs")

LOG_FILES = {"jobs": "jobs.log", "errors": "jobs_errors.log"}
# C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape(text: str) -> str:
    """``text`` with every control character as ``\\xNN`` (or ``\\uNNNN``): one line."""
    return CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100
                       else f"\\u{ord(m[0]):04x}", text)


@functools.lru_cache(maxsize=1024)
def _name(text: str) -> str:
    """:func:`escape` for class and method names: few, and on every line (a regular
    expression's scan per name was most of a line's cost)."""
    return escape(text)


class RotatingFile:
    """An append-only text file that rolls over to ``.1`` .. ``.N`` past ``max_bytes``.

    It never raises: the logs are for the operator, and a full disk or a read-only log
    directory must not stop jobs from being dispatched or make a stored job look refused.
    A failure is reported once on the host's own log and writing resumes when it can.
    """

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._file: BinaryIO | None = None
        self._size = 0
        self._failing = False
        self._guard(self._open)

    def _open(self) -> None:
        self._file = os.fdopen(open_private(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND),
                               "ab")
        self._size = self._file.seek(0, os.SEEK_END)

    def _guard(self, action: Callable[[], None]) -> None:
        try:
            action()
        except OSError as exc:
            if not self._failing:
                log.error("cannot write %s: %s; job log lines are dropped until it works",
                          self.path, exc)
            self._failing = True
            if self._file is not None:
                with contextlib.suppress(OSError):
                    self._file.close()
                self._file = None
        else:
            if self._failing:
                log.warning("writing %s again", self.path)
            self._failing = False

    def write(self, text: str) -> None:
        self._guard(lambda: self._write(text.encode("utf-8", "replace")))

    def _write(self, data: bytes) -> None:
        if self._file is None:
            self._open()
        assert self._file is not None
        if self._size and self._size + len(data) > self.max_bytes:
            self._rotate()
            assert self._file is not None
        self._file.write(data)
        self._size += len(data)

    def _rotate(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
        if self.backups > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._open()

    def flush(self) -> None:
        if self._file is not None:
            self._guard(self._file.flush)

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


class JobLog:
    def __init__(self, directory: Path, settings: LogSettings) -> None:
        with contextlib.suppress(OSError):  # RotatingFile reports what it cannot write
            # 0700: its lines name every job, and the error log holds their tracebacks.
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.directory = directory
        self._events = RotatingFile(directory / LOG_FILES["jobs"], settings.max_bytes,
                                    settings.backups)
        self._errors = RotatingFile(directory / LOG_FILES["errors"], settings.max_bytes,
                                    settings.backups)

    def event(self, at: float, job_id: int, *, cls: str, method: str, attempt: int | None,
              status: str, duration: float | None = None, note: str = "") -> None:
        line = f"{iso(at)} job={job_id} class={_name(cls)} method={_name(method)}"
        if attempt is not None:
            line += f" attempt={attempt}"
        line += f" status={status}"
        if duration is not None:
            line += f" duration={duration:.3f}s"
        if note:
            line += f" {escape(note)}"
        self._events.write(line + "\n")

    def submitted(self, at: float, jobs: Iterable[tuple[int, str, str, float]]) -> None:
        """The ``status=pending`` line of each job just stored (its id, class, method and
        run_at), as :meth:`event` writes it, in one write: a batch submit's 500 lines cost
        one call, not 500."""
        stamp = iso(at)
        self._events.write("".join(
            f"{stamp} job={job_id} class={_name(cls)} method={_name(method)} status=pending "
            f"run_at={iso(run_at)}\n" for job_id, cls, method, run_at in jobs))

    def error(self, at: float, job_id: int, *, cls: str, method: str, attempt: int,
              outcome: str, error: ErrorInfo) -> None:
        text = (f"{iso(at)} job={job_id} class={escape(cls)} method={escape(method)} "
                f"attempt={attempt} outcome={outcome} "
                f"error={escape(error.type)}: {escape(error.message)}\n")
        if error.traceback:
            text += "".join(f"    {escape(line)}\n"
                            for line in error.traceback.rstrip().split("\n"))
        self._errors.write(text)
        self._errors.flush()

    def flush(self) -> None:
        self._events.flush()

    def tail(self, name: str, lines: int) -> list[str]:
        """The last ``lines`` lines of ``jobs`` or ``errors``."""
        self.flush()
        path = self.directory / LOG_FILES[name]
        try:
            with path.open("r", encoding="utf-8", errors="replace") as f:
                return [line.rstrip("\n") for line in deque(f, maxlen=lines)]
        except OSError:
            return []

    def close(self) -> None:
        self._events.close()
        self._errors.close()
