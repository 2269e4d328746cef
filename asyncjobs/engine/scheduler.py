"""Recurring schedules and retention: the two once-per-store housekeeping loops.

``Scheduler`` enqueues each configured schedule's job on time.  A firing is a compare-and-set
on the slot (the stored next run) that writes the job and moves the next run in one
transaction, so a restart can neither lose nor repeat one and two schedulers on one store
(two hosts, or a leader change) fire each slot once; a schedule whose run came due while the
host was down fires once at start-up, not once per missed tick.  Both loops do their work
only while this host is the :class:`~asyncjobs.engine.roles.Leader`.  ``Pruner`` deletes
finished jobs past their retention in small batches, each its own short transaction, so
dispatch is never held up behind a large delete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from .. import registry
from ..clock import Clock
from ..config import Schedule, Settings
from ..cron import CronExpr
from ..errors import AsyncJobsError
from ..models import JSONValue, Status, iso
from ..store import Store
from .roles import FixedLeader, Leader

log = logging.getLogger("asyncjobs.engine.scheduler")

MAX_SLEEP = 60.0  # re-check at least this often, so a wall-clock jump cannot strand a schedule
FOLLOWER_SLEEP = 5.0  # how often a host that is not the leader asks whether it has become it
PRUNE_EVERY = 600.0
PRUNE_BATCH = 500


def following_run(schedule: Schedule, previous: float | None, now: float) -> float:
    """The next run after ``now``: cron time, or ``every`` seconds on from the previous one."""
    if schedule.cron is not None:
        return CronExpr.parse(schedule.cron).next_after(now)
    assert schedule.every is not None
    if previous is not None and previous + schedule.every > now:
        return previous + schedule.every  # on the original grid: no drift
    return now + schedule.every


class Scheduler:
    def __init__(self, *, settings: Settings, store: Store, clock: Clock,
                 on_submitted: Callable[[int], None], leader: Leader | None = None) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.leader: Leader = leader or FixedLeader()
        self.on_submitted = on_submitted
        self.next_run: dict[str, float] = {}
        self._wake = asyncio.Event()

    async def start(self) -> None:
        """Load saved timing; a new or changed schedule starts from now, without firing."""
        states = await self.store.schedule_states()
        now = self.clock.now()
        for name, schedule in self.settings.schedules.items():
            state = states.get(name)
            if state is not None and state.expression == schedule.expression:
                self.next_run[name] = state.next_run
            else:
                self.next_run[name] = following_run(schedule, None, now)
                await self.store.save_schedule(name, expression=schedule.expression,
                                               next_run=self.next_run[name])

    async def tick(self) -> list[int]:
        """Fire every schedule that is due now; return the ids of the jobs enqueued."""
        now = self.clock.now()
        fired = []
        for name, due in sorted(self.next_run.items(), key=lambda item: item[1]):
            if due > now:
                continue
            schedule = self.settings.schedules[name]
            spec = registry.parse_submit(self.settings, {
                "class": schedule.cls, "method": schedule.method, "args": list(schedule.args),
                "kwargs": dict(schedule.kwargs)}, now)
            following = following_run(schedule, due, now)
            try:
                job_id = await self.store.fire_schedule(
                    name, expression=schedule.expression, spec=spec, slot=due,
                    next_run=following, now=now)
            except AsyncJobsError as exc:
                log.error("schedule %s could not fire: %s; will try again", name, exc)
                continue
            if job_id is None:  # another scheduler fired this slot: take up its timing
                await self._reload(name)
                continue
            self.next_run[name] = following
            log.info("schedule %s fired job %s; next run %s", name, job_id, iso(following))
            self.on_submitted(job_id)
            fired.append(job_id)
        return fired

    async def _reload(self, name: str) -> None:
        state = (await self.store.schedule_states()).get(name)
        if state is not None:
            self.next_run[name] = state.next_run

    async def run(self) -> None:
        while True:
            delay = MAX_SLEEP
            if not self.leader.is_leader:
                delay = FOLLOWER_SLEEP  # look again soon: the leader may go away
            else:
                await self.tick()
                if self.next_run:
                    delay = min(delay, max(0.0, min(self.next_run.values()) - self.clock.now()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()

    async def listing(self) -> list[dict[str, JSONValue]]:
        states = await self.store.schedule_states()
        out: list[dict[str, Any]] = []
        for name, schedule in sorted(self.settings.schedules.items()):
            state = states.get(name)
            out.append({
                "name": name, "class": schedule.cls, "method": schedule.method,
                "args": list(schedule.args), "kwargs": dict(schedule.kwargs),
                "expression": schedule.expression,
                "next_run": iso(self.next_run.get(name)),
                "last_run": iso(state.last_run if state else None),
                "last_job_id": state.last_job_id if state else None,
            })
        return out


class Pruner:
    def __init__(self, *, settings: Settings, store: Store, clock: Clock,
                 leader: Leader | None = None) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.leader: Leader = leader or FixedLeader()

    async def prune(self) -> dict[str, int]:
        """Delete what retention allows, batch by batch; return how many per rule."""
        retention = self.settings.retention
        now = self.clock.now()
        rules = [("completed", retention.completed_days, [Status.COMPLETED]),
                 ("failed", retention.failed_days, [Status.FAILED, Status.CANCELLED])]
        counts = {}
        for label, days, statuses in rules:
            total = 0
            if days is not None:
                while True:
                    n = await self.store.prune(now - days * 86400, statuses, PRUNE_BATCH)
                    total += n
                    if n < PRUNE_BATCH:
                        break
                    await asyncio.sleep(0)  # let dispatch writes in between batches
            counts[label] = total
        if any(counts.values()):
            log.info("pruned %s", counts)
        return counts

    async def run(self) -> None:
        while True:
            try:
                if self.leader.is_leader:
                    await self.prune()
            except AsyncJobsError as exc:
                log.error("pruning failed: %s", exc)
            await asyncio.sleep(PRUNE_EVERY)
