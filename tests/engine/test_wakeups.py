"""When the dispatcher wakes, on the real clock: a job for later costs no dispatch round,
and a job due before the dispatcher's timer is not left waiting for it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from asyncjobs.config import Settings
from asyncjobs.engine.host import Host
from asyncjobs.models import Status


async def _wait_status(host: Host, job_id: int, status: Status, timeout: float) -> float:
    start = time.monotonic()
    async with asyncio.timeout(timeout):
        while (await host.get(job_id)).status is not status:
            await asyncio.sleep(0.01)
    return time.monotonic() - start


async def test_submits_for_later_do_not_make_the_dispatcher_claim(settings: Settings) -> None:
    async with Host(settings) as host:
        await asyncio.sleep(0.05)  # the first round, at start-up
        claims = 0
        real_round = host.store.dispatch_round

        async def counting_round(**kwargs: Any) -> Any:
            nonlocal claims
            claims += kwargs["limit"] > 0
            return await real_round(**kwargs)

        host.store.dispatch_round = counting_round  # type: ignore[method-assign]
        for i in range(20):
            await host.submit("Ok", "run", [i], delay=3600 + i)
        await asyncio.sleep(0.05)

    # Only the first one moved the dispatcher's timer earlier; the others are due after it.
    assert claims <= 1


async def test_a_job_due_before_the_timer_runs_on_time(settings: Settings) -> None:
    async with Host(settings) as host:
        await host.submit("Ok", "run", ["later"], delay=60)
        await asyncio.sleep(0.05)  # the dispatcher now sleeps until the 60 s job is due
        soon = await host.submit("Ok", "run", ["soon"], delay=0.2)
        took = await _wait_status(host, soon.id, Status.COMPLETED, timeout=5)
        now = await host.submit("Ok", "run", ["now"])
        took_now = await _wait_status(host, now.id, Status.COMPLETED, timeout=5)

    assert 0.15 <= took < 2
    assert took_now < 2
