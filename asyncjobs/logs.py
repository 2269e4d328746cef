"""The two operator logs: ``jobs.log`` (one line per event) and ``jobs_errors.log``.

Both are rotated by size.  Lines are ``key=value`` after an ISO timestamp so that they grep
well and read well: ``2026-11-22T10:00:00.000Z job=17 class=SampleJob method=process
attempt=1 status=completed duration=0.012s``.
"""

from __future__ import annotations

import logging
import logging.handlers
from collections import deque
from pathlib import Path

from .config import LogSettings
from .models import ErrorInfo, iso

LOG_FILES = {"jobs": "jobs.log", "errors": "jobs_errors.log"}


def _logger(name: str, path: Path, settings: LogSettings) -> logging.Logger:
    logger = logging.getLogger(f"asyncjobs.file.{name}.{path}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=settings.max_bytes, backupCount=settings.backups, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    return logger


class JobLog:
    def __init__(self, directory: Path, settings: LogSettings) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._events = _logger("jobs", directory / LOG_FILES["jobs"], settings)
        self._errors = _logger("errors", directory / LOG_FILES["errors"], settings)

    def event(self, at: float, job_id: int, *, cls: str, method: str, attempt: int | None,
              status: str, duration: float | None = None, note: str = "") -> None:
        parts = [f"{iso(at)} job={job_id} class={cls} method={method}"]
        if attempt is not None:
            parts.append(f"attempt={attempt}")
        parts.append(f"status={status}")
        if duration is not None:
            parts.append(f"duration={duration:.3f}s")
        if note:
            parts.append(note)
        self._events.info(" ".join(parts))

    def error(self, at: float, job_id: int, *, cls: str, method: str, attempt: int,
              outcome: str, error: ErrorInfo) -> None:
        text = (f"{iso(at)} job={job_id} class={cls} method={method} attempt={attempt} "
                f"outcome={outcome} error={error.type}: {error.message}")
        if error.traceback:
            text += "\n" + error.traceback.rstrip()
        self._errors.info(text)

    def tail(self, name: str, lines: int) -> list[str]:
        """The last ``lines`` lines of ``jobs`` or ``errors``, without reading it all in."""
        path = self.directory / LOG_FILES[name]
        try:
            with path.open("r", encoding="utf-8", errors="replace") as f:
                return [line.rstrip("\n") for line in deque(f, maxlen=lines)]
        except FileNotFoundError:
            return []

    def close(self) -> None:
        for logger in (self._events, self._errors):
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
                handler.close()
