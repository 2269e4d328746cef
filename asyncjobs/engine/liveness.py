"""This host's life in the store: its heartbeat, the rescue of dead hosts' attempts, and the
live progress heard from the notifier.

Every ``hosts.heartbeat`` seconds the host extends its lease to ``hosts.lease`` seconds from
now.  A host whose lease ran out is dead: the leader (one host per store) records its running
attempts ``interrupted`` and makes their jobs due again, as start-up recovery does.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from ..clock import Clock
from ..config import HostSettings
from ..errors import AsyncJobsError
from ..store import Store
from .roles import Event, Leader, Notifier

log = logging.getLogger("asyncjobs.engine.liveness")

PROGRESS_KEPT = 10_000  # live progress entries at most (a lost "finished" signal leaks none)


class Liveness:
    def __init__(self, *, store: Store, host_id: str, settings: HostSettings, clock: Clock,
                 leader: Leader, rescue: Callable[[], Awaitable[int]]) -> None:
        self.store = store
        self.host_id = host_id
        self.settings = settings
        self.clock = clock
        self.leader = leader
        self.rescue = rescue

    async def beat(self) -> None:
        """Extend the lease; as the leader, rescue the attempts of hosts whose lease ended."""
        now = self.clock.now()
        await self.store.heartbeat(self.host_id, now, now + self.settings.lease)
        if self.leader.is_leader:
            await self.rescue()

    async def run(self) -> None:
        while True:
            # Real time, not the injected clock: the lease is read by other hosts' clocks.
            await asyncio.sleep(self.settings.heartbeat)
            try:
                await self.beat()
            except AsyncJobsError as exc:
                log.error("heartbeat failed: %s; trying again in %ss", exc,
                          self.settings.heartbeat)

    async def retire(self) -> None:
        """End the lease at a clean shutdown, so nobody waits it out."""
        try:
            await self.store.retire_host(self.host_id, self.clock.now())
        except AsyncJobsError as exc:
            log.warning("could not retire host %s: %s", self.host_id, exc)


class ProgressCache:
    """The latest progress of running jobs as the notifier reported it (from any host),
    fresher than the store's copy, which is written every few seconds."""

    def __init__(self) -> None:
        self._latest: OrderedDict[int, tuple[float, str | None]] = OrderedDict()

    def attach(self, notifier: Notifier) -> Callable[[], None]:
        """Start listening; return the function that stops it."""
        self._latest.clear()
        return notifier.listen(self._on_event)

    def _on_event(self, event: Event) -> None:
        kind = event.get("type")
        if kind == "progress":
            self._latest[event["id"]] = (event["fraction"], event.get("message"))
            self._latest.move_to_end(event["id"])
            if len(self._latest) > PROGRESS_KEPT:
                self._latest.popitem(last=False)
        elif kind == "job":
            self._latest.pop(event.get("id"), None)  # type: ignore[arg-type]

    def get(self, job_id: int) -> tuple[float, str | None] | None:
        return self._latest.get(job_id)
