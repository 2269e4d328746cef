"""The Store seam: everything the host asks of persistent storage, and nothing about SQL.

Only :mod:`asyncjobs.store.sqlite` speaks SQL; a PostgreSQL store for several hosts can
implement the same protocol and run the same tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..models import Claimed, JobRecord, JobSpec, Outcome, Status, Transition


@dataclass(slots=True)  # not frozen: see models.HOT_RECORDS
class Submitted:
    id: int
    status: Status
    duplicate: bool = False  # an existing job with the same unique_key was returned


@dataclass(slots=True)  # not frozen: see models.HOT_RECORDS
class Start:
    """A worker began a reserved attempt at ``at`` (its own clock): now it is running."""

    claimed: Claimed
    at: float


@dataclass(slots=True)  # not frozen: see models.HOT_RECORDS
class Finished:
    """One attempt's end, ready to store: what happened and what it leads to."""

    claimed: Claimed
    outcome: Outcome
    transition: Transition
    at: float


@dataclass(slots=True)  # not frozen: see models.HOT_RECORDS
class Round:
    """What one dispatcher round wrote and read, in one transaction."""

    advanced: list[int]  # chain steps the finished attempts made due
    claimed: list[Claimed]  # reserved: still pending to readers until started
    next_due: float | None  # the earliest later run_at, read after the claim


@dataclass(frozen=True, slots=True)
class Page:
    jobs: Sequence[JobRecord]
    next_cursor: int | None


@dataclass(frozen=True, slots=True)
class Stats:
    counts: Mapping[str, int]
    by_class: Mapping[str, Mapping[str, int]]
    finished_last_minute: int
    finished_last_hour: int
    per_minute: Sequence[tuple[int, int, int]]  # (minute start, completed, failed) last hour


@dataclass(frozen=True, slots=True)
class CancelResult:
    """What a cancel found: the job was pending (now cancelled) or is running (kill it)."""

    previous: Status
    cancelled_ids: Sequence[int]  # the job and any chain steps cancelled with it


@dataclass(frozen=True, slots=True)
class ScheduleState:
    name: str
    expression: str
    next_run: float
    last_run: float | None
    last_job_id: int | None


class Store(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def submit(self, specs: Sequence[JobSpec], now: float) -> list[Submitted]:
        """Insert jobs (with their chain steps) atomically; all or none."""
        ...

    async def claim(self, now: float, limit: int, capacity: Mapping[str, int]) -> list[Claimed]:
        """Reserve up to ``limit`` due jobs, best first; ``capacity`` caps classes.

        A reserved job stays ``pending`` to readers and is skipped by later claims."""
        ...

    async def dispatch_round(self, *, progress: Mapping[int, tuple[float, str | None]],
                             started: Sequence[Start] = (), finished: Sequence[Finished],
                             now: float, limit: int, capacity: Mapping[str, int],
                             outrank: tuple[int, int] | None = None) -> Round:
        """One dispatcher round in one transaction: store progress, make ``started``
        attempts running, record ``finished``, reserve up to ``limit`` due jobs (none if 0)
        -- or, with ``limit`` 0 and ``outrank`` ``(rank, n)``, up to ``n`` due jobs of a
        better priority than ``rank`` -- and read the next due time."""
        ...

    async def finish(self, finished: Sequence[Finished]) -> list[int]:
        """Record attempt ends and apply their transitions; return chain steps made due."""
        ...

    async def running(self) -> list[Claimed]:
        """Jobs left ``running`` (after a host died), as they were claimed."""
        ...

    async def next_due(self, after: float) -> float | None:
        """The earliest ``run_at`` of a pending job later than ``after``."""
        ...

    async def cancel(self, job_id: int, now: float, reason: str) -> CancelResult: ...

    async def cancel_rest_of_chain(self, job_id: int, now: float) -> list[int]: ...

    async def retry(self, job_id: int, now: float) -> list[int]: ...

    async def set_progress(self, updates: Mapping[int, tuple[float, str | None]]) -> None: ...

    async def get(self, job_id: int) -> JobRecord | None: ...

    async def list_jobs(self, *, status: Status | None = None, cls: str | None = None,
                        chain: int | None = None, limit: int = 50,
                        cursor: int | None = None) -> Page: ...

    async def stats(self, now: float) -> Stats: ...

    async def prune(self, before: float, statuses: Sequence[Status], limit: int) -> int: ...

    async def schedule_states(self) -> dict[str, ScheduleState]: ...

    async def save_schedule(self, name: str, *, expression: str, next_run: float) -> None: ...

    async def fire_schedule(self, name: str, *, expression: str, spec: JobSpec,
                            next_run: float, now: float) -> int:
        """Enqueue the schedule's job and move its next run, atomically; return the job id."""
        ...
