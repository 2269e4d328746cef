"""SQLite rows to records: the columns the store reads and how each becomes a model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from ..models import Attempt, ErrorInfo, JobRecord, OutcomeKind, Priority, Status

JOB_COLUMNS = (
    "id, class, method, args, kwargs, status, priority, attempts, max_attempts, timeout, "
    "created_at, run_at, started_at, finished_at, result, error_type, error_message, "
    "progress, progress_message, chain_id, unique_key"
)


def job_from_row(row: Sequence[Any], history: Sequence[Attempt] = ()) -> JobRecord:
    """A ``jobs`` row (``JOB_COLUMNS``) with its attempts."""
    error = ErrorInfo(row[15], row[16] or "") if row[15] else None
    return JobRecord(
        id=row[0], cls=row[1], method=row[2], args=orjson.loads(row[3]),
        kwargs=orjson.loads(row[4]), status=Status(row[5]), priority=Priority.from_rank(row[6]),
        attempts=row[7], max_attempts=row[8], timeout=row[9], created_at=row[10],
        run_at=row[11], started_at=row[12], finished_at=row[13],
        result=orjson.loads(row[14]) if row[14] is not None else None, error=error,
        progress=(row[17], row[18]) if row[17] is not None else None,
        chain_id=row[19], unique_key=row[20], attempt_history=history,
    )


def attempt_from_row(row: Sequence[Any]) -> Attempt:
    error = ErrorInfo(row[5], row[6] or "", row[7]) if row[5] else None
    return Attempt(number=row[0], outcome=OutcomeKind(row[1]) if row[1] else None,
                   started_at=row[2], finished_at=row[3], exit_code=row[4], error=error,
                   output=row[8] or "", strays=row[9] or 0, host=row[10])
