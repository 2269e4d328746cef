"""Building blocks for store tests: job specs, attempt ends, and a claim through the protocol."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from asyncjobs.models import (
    Claimed,
    ErrorInfo,
    JobSpec,
    Outcome,
    OutcomeKind,
    Priority,
    Status,
    StepSpec,
    Transition,
)
from asyncjobs.store import Finished, HostRow, Start, Store

NOW = 1_800_000_000.0
HOST = "host-a"
LEASE = 15.0


def spec(cls: str = "A", *args: Any, priority: Priority = Priority.MEDIUM, run_at: float = NOW,
         max_attempts: int = 3, then: Sequence[StepSpec] = (), unique_key: str | None = None,
         ) -> JobSpec:
    return JobSpec(cls=cls, method="run", args=list(args), kwargs={}, priority=priority,
                   run_at=run_at, timeout=10.0, max_attempts=max_attempts, then=then,
                   unique_key=unique_key)


def finished(c: Claimed, kind: OutcomeKind, transition: Transition, at: float = NOW + 1,
             error: ErrorInfo | None = None, result: Any = None) -> Finished:
    outcome = Outcome(kind, result=result, error=error, exit_code=0, output="out")
    return Finished(c, outcome, transition, at)


def done(c: Claimed, result: Any = None, at: float = NOW + 1) -> Finished:
    return finished(c, OutcomeKind.COMPLETED, Transition(Status.COMPLETED, result=result),
                    at, result=result)


def failed(c: Claimed, status: Status = Status.FAILED, run_at: float | None = None) -> Finished:
    error = ErrorInfo("ValueError", "bad", "Traceback ...")
    return finished(c, OutcomeKind.FAILED, Transition(status, run_at=run_at, error=error),
                    error=error)


def interrupted(c: Claimed, at: float = NOW + 1) -> Finished:
    return finished(c, OutcomeKind.INTERRUPTED,
                    Transition(Status.PENDING, run_at=at, counts=False), at)


async def ids(store: Store, *specs: JobSpec, now: float = NOW) -> list[int]:
    return [s.id for s in await store.submit(list(specs), now)]


async def reserve(store: Store, now: float, limit: int,
                  concurrency: Mapping[str, int] | None = None, host: str = HOST,
                  ) -> list[Claimed]:
    """Reserve through a dispatcher round that records nothing else (as the engine does):
    the jobs stay pending until :func:`start`."""
    return (await store.dispatch_round(host=host, progress={}, finished=[], now=now,
                                       limit=limit, concurrency=concurrency or {})).claimed


async def start(store: Store, claimed: Sequence[Claimed], at: float, host: str = HOST) -> None:
    """Their workers report starting them at ``at``: they are running from then."""
    await store.dispatch_round(host=host, progress={}, started=[Start(c, at) for c in claimed],
                               finished=[], now=at, limit=0, concurrency={})


async def claim(store: Store, now: float, limit: int,
                concurrency: Mapping[str, int] | None = None, host: str = HOST,
                ) -> list[Claimed]:
    """Reserve due jobs and have their workers start them at once (at ``now``): running."""
    claimed = await reserve(store, now, limit, concurrency, host)
    if claimed:
        await start(store, claimed, now, host)
    return claimed


def host_row(host_id: str = HOST, now: float = NOW, lease: float = LEASE) -> HostRow:
    return HostRow(id=host_id, url=f"http://{host_id}", pid=1, hostname="box", started_at=now,
                   heartbeat_at=now, expires_at=now + lease)


async def claim_as(store: Store, host_id: str, now: float, limit: int = 1,
                   lease: float = LEASE) -> list[Claimed]:
    """Register ``host_id`` (alive for ``lease`` seconds from ``now``) and claim for it: what
    another host sharing the store does."""
    await store.register_host(host_row(host_id, now=now, lease=lease))
    return await claim(store, now, limit, host=host_id)
