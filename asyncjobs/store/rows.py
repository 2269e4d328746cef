"""Rows to records and back: the columns the stores read and how each becomes a model, and
what a claim reads and a finish writes (both stores keep the same columns, so both use these:
the write steps of :mod:`.writes`, :mod:`.chains` and their PostgreSQL twins too)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from ..models import (
    TERMINAL,
    Attempt,
    Claimed,
    ErrorInfo,
    JobRecord,
    OutcomeKind,
    Priority,
    Status,
)
from . import Finished, Page, Stats

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


def page_from_rows(rows: Sequence[Sequence[Any]], limit: int) -> Page:
    """A page from up to ``limit + 1`` job rows, newest first (one more than the page says
    whether another page follows)."""
    jobs = [job_from_row(row) for row in rows[:limit]]
    return Page(jobs, jobs[-1].id if len(rows) > limit and jobs else None)


def stats_from_rows(counts: Iterable[Sequence[Any]], minutes: Iterable[Sequence[Any]],
                    now: float) -> Stats:
    """:class:`Stats` from ``(class, status, n)`` rows and ``(minute, completed, failed)``
    rows of the last hour (minute: epoch seconds of its start)."""
    totals = {s.value: 0 for s in Status}
    by_class: dict[str, dict[str, int]] = {}
    for cls, status, n in counts:
        totals[status] += n
        by_class.setdefault(cls, {s.value: 0 for s in Status})[status] = n
    minute = int(now // 60) * 60
    per_minute: dict[int, list[int]] = {minute - 60 * i: [0, 0] for i in range(60)}
    for start, completed, failed in minutes:
        if start in per_minute:
            per_minute[start] = [completed, failed]
    # "The last minute" is the previous whole minute plus the current one, pro rata.
    now_part = (now - minute) / 60
    current, previous = per_minute[minute], per_minute[minute - 60]
    return Stats(
        counts=totals, by_class=by_class,
        finished_last_minute=round(sum(current) + sum(previous) * (1 - now_part)),
        finished_last_hour=sum(c + f for c, f in per_minute.values()),
        per_minute=sorted((t, c, f) for t, (c, f) in per_minute.items()),
    )


CLAIM_COLUMNS = ("id, class, method, args, kwargs, runs, attempts, max_attempts, timeout, "
                 "interruptions, chain_id, priority")


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def claimed_from_row(row: Sequence[Any], *, attempt: int, attempts: int) -> Claimed:
    return Claimed(id=row[0], cls=row[1], method=row[2], args=orjson.loads(row[3]),
                   kwargs=orjson.loads(row[4]), attempt=attempt, attempts=attempts,
                   max_attempts=row[7], timeout=row[8], interruptions=row[9], chain_id=row[10],
                   priority=row[11])


def job_update(f: Finished) -> tuple[Any, ...]:
    t = f.transition
    interruptions = "add" if f.outcome.kind is OutcomeKind.INTERRUPTED else "reset"
    return (t.status.value, t.run_at, f.at if t.status in TERMINAL else None,
            dumps(t.result) if t.status is Status.COMPLETED else None,
            t.error.type if t.error else None, t.error.message if t.error else None,
            0 if t.counts else 1, interruptions, f.claimed.id)
