"""What ``running``, ``started_at`` and priority promise, seen through the API of a real host.

A real host (system clock, dispatching on its own) with real workers, read over HTTP while a
backlog drains, for ``workers.max`` 1 and 4 and both isolation modes:

* no reader ever sees more than ``workers.max`` jobs ``running`` (list, stats);
* ``started_at`` is the moment the job's own first line ran (within a few ms);
* a ``high`` job submitted late starts before every ``low`` job that had not started yet.

Each job records its own start and end (wall clock) in a file; jobs take 0.2 s.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from fakes import SettingsFactory

from asyncjobs.engine.host import Host
from asyncjobs.models import TERMINAL
from asyncjobs.web.api import build_app

RUN_FOR = 0.2  # seconds each job sleeps
JITTER = 0.01  # seconds between two worker processes told to start within the same ms
HOST_READS = 0.02  # seconds: the host's two clock reads when it places a start report


class Watch:
    """Polls the API and keeps the most ``running`` jobs any reader was shown."""

    def __init__(self, http: TestClient[Any, Any], auth: dict[str, str]) -> None:
        self.http = http
        self.auth = auth
        self.most = 0
        self.last = 0

    async def look(self) -> int:
        async with self.http.get("/api/jobs", params={"status": "running", "limit": "100"},
                                 headers=self.auth) as resp:
            listed = len((await resp.json())["jobs"])
        async with self.http.get("/api/stats", headers=self.auth) as resp:
            stats = await resp.json()
        self.last = max(listed, stats["counts"].get("running", 0), stats["workers"]["running"])
        self.most = max(self.most, self.last)
        return self.last

    async def forever(self) -> None:
        while True:
            await self.look()
            await asyncio.sleep(0.01)


async def finished(host: Host, ids: list[int]) -> bool:
    return all([(await host.get(i)).status in TERMINAL for i in ids])


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most of ``spans`` (start, end) that overlap at any moment (an end before a start
    at the same moment)."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def interval(path: Path) -> tuple[float, float]:
    start, end = path.read_text().split()
    return float(start), float(end)


@pytest.mark.parametrize("isolation", ["pool", "process"])
@pytest.mark.parametrize("workers", [1, 4])
async def test_running_started_at_and_priority_hold_while_a_backlog_drains(
        make_settings: SettingsFactory, tmp_path: Path, workers: int, isolation: str) -> None:
    settings = make_settings(workers={"max": workers, "isolation": isolation,
                                      "max_jobs_per_worker": 1000, "kill_grace": 0.2})
    lows = 3 * workers + 2
    async with Host(settings, serve_api=False) as host, \
            TestClient(TestServer(build_app(host))) as http:
        watch = Watch(http, {"Authorization": f"Bearer {host.token}"})
        ids = [(await host.submit("Sleepy", "interval", [str(tmp_path / f"low{i}"), RUN_FOR],
                                  priority="low")).id for i in range(lows)]
        watching = asyncio.create_task(watch.forever())
        try:
            async with asyncio.timeout(10):
                while watch.last < workers:  # the first jobs have started
                    await asyncio.sleep(0.005)
            # Submitted while the first jobs run: every other low waits, reserved or not.
            high = (await host.submit("Sleepy", "interval", [str(tmp_path / "high"), RUN_FOR],
                                      priority="high")).id
            async with asyncio.timeout(30):
                while not await finished(host, [*ids, high]):
                    await asyncio.sleep(0.05)
        finally:
            watching.cancel()
        jobs = {i: await host.get(i) for i in [*ids, high]}

    assert 1 <= watch.most <= workers
    spans = []
    for job_id, job in jobs.items():
        path = tmp_path / ("high" if job_id == high else f"low{ids.index(job_id)}")
        started, ended = interval(path)
        assert job.started_at is not None
        # started_at is the worker's clock read just before the job's first line, placed on
        # the host's clock: never after that line but for the host's own reading of the
        # report (two clock reads a few calls apart in the host).
        assert job.started_at < started + HOST_READS, (job_id, job.started_at, started)
        spans.append((job.started_at, ended))
    # Nor earlier than the worker was free: a worker reads that clock after its previous
    # job's last line, so no more than `workers` of [started_at, the job's own end] overlap.
    # (Not "within N ms of the first line": how long the worker runs between its report and
    # the job's first line is the OS's scheduling, not the host's, on a loaded machine.)
    # Counting queue time (from the hand-over to the launcher) would overlap at once.
    assert most_at_once(spans) <= workers, sorted(spans)
    high_start, _ = interval(tmp_path / "high")
    arrived = jobs[high].created_at
    later = [interval(tmp_path / f"low{i}")[0] for i in range(lows)]
    later = [start for start in later if start > arrived]
    assert later, "some low jobs should have been waiting when the high one arrived"
    # Handed to a worker before any of them: two workers that come free in the same
    # millisecond may still start their jobs in either order (the OS schedules them).
    assert high_start < min(later) + JITTER, (high_start - arrived, sorted(later)[:3])
    assert high_start - arrived < RUN_FOR + 0.5  # at the first worker to come free


async def test_no_attempt_starts_before_it_is_reported_so(make_settings: SettingsFactory,
                                                          tmp_path: Path) -> None:
    """A job queued behind a running one is pending, without started_at, to every reader."""
    settings = make_settings(workers={"max": 1, "isolation": "pool", "kill_grace": 0.2})
    async with Host(settings, serve_api=False) as host:
        first = (await host.submit("Sleepy", "interval", [str(tmp_path / "a"), 0.5])).id
        second = (await host.submit("Sleepy", "interval", [str(tmp_path / "b"), 0.1])).id
        async with asyncio.timeout(10):
            while (await host.get(first)).started_at is None:
                await asyncio.sleep(0.01)
        waiting = await host.get(second)
        stats = await host.stats()
        t0 = time.monotonic()
        async with asyncio.timeout(10):
            while (await host.get(second)).status.value != "completed":
                await asyncio.sleep(0.02)

    assert (waiting.status.value, waiting.started_at, waiting.attempt_history) == (
        "pending", None, [])
    assert stats["counts"]["running"] == 1 and stats["workers"]["running"] == 1  # type: ignore[index]
    assert time.monotonic() - t0 < 5
