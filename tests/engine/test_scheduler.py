"""Recurring schedules and retention, driven by the fake clock with real SQLite and workers."""

from __future__ import annotations

import asyncio

import pytest
from fakes import START, Drain, FakeClock, HostFactory, SettingsFactory

from asyncjobs.config import Settings
from asyncjobs.engine.scheduler import Scheduler
from asyncjobs.errors import ConfigError
from asyncjobs.models import Status

EVERY_MINUTE = {"tick": {"class": "Ok", "method": "run", "args": ["tick"], "every": 60}}
FIVE_MINUTES = {"cron": {"class": "Ok", "method": "run", "cron": "*/5 * * * *"}}


@pytest.fixture
def scheduled(make_settings: SettingsFactory) -> Settings:
    return make_settings(schedules=EVERY_MINUTE | FIVE_MINUTES)


async def test_schedule_fires_on_time_and_not_before(scheduled: Settings, make_host: HostFactory,
                                                     clock: FakeClock, drain: Drain) -> None:
    async with make_host(scheduled) as host:
        assert host.scheduler is not None
        assert await host.scheduler.tick() == [], "a new schedule waits for its first time"
        clock.advance(59)
        assert await host.scheduler.tick() == []
        clock.advance(1)
        (fired,) = await host.scheduler.tick()
        assert await host.scheduler.tick() == [], "one firing per due time"
        await drain(host)
        job = await host.get(fired)
        assert (job.cls, job.method, list(job.args), job.status) == \
            ("Ok", "run", ["tick"], Status.COMPLETED)


async def test_cron_schedule_uses_the_wall_clock(scheduled: Settings, make_host: HostFactory,
                                                 clock: FakeClock) -> None:
    # START is 08:00:00 UTC, so "*/5" next fires at 08:05:00.
    async with make_host(scheduled) as host:
        assert host.scheduler is not None
        assert host.scheduler.next_run["cron"] == START + 300
        listing = {s["name"]: s for s in await host.schedules()}
        assert listing["cron"]["expression"] == "*/5 * * * *"
        assert listing["cron"]["next_run"] == "2027-01-15T08:05:00.000Z"
        clock.advance(300)
        assert len(await host.scheduler.tick()) == 2  # both the cron and the minute schedule


async def test_missed_runs_fire_once_after_downtime_and_never_twice(
        scheduled: Settings, make_host: HostFactory, clock: FakeClock) -> None:
    async with make_host(scheduled) as host:
        clock.advance(60)
        assert host.scheduler is not None
        assert len(await host.scheduler.tick()) == 1
    clock.advance(3600)  # the host is down for an hour: 60 minute ticks and 12 cron ticks missed
    async with make_host(scheduled) as host:
        assert host.scheduler is not None
        fired = await host.scheduler.tick()
        assert len(fired) == 2, "each missed schedule runs once at start-up"
        assert await host.scheduler.tick() == []
        page = await host.list_jobs()
        assert len(page.jobs) == 3
    async with make_host(scheduled) as host:  # a restart without time passing fires nothing
        assert host.scheduler is not None
        assert await host.scheduler.tick() == []


async def test_changed_expression_restarts_the_timing(make_settings: SettingsFactory,
                                                      make_host: HostFactory,
                                                      clock: FakeClock) -> None:
    async with make_host(make_settings(schedules=EVERY_MINUTE)) as host:
        assert host.scheduler is not None
        clock.advance(50)
    hourly = {"tick": {"class": "Ok", "method": "run", "every": 3600}}
    async with make_host(make_settings(schedules=hourly)) as host:
        assert host.scheduler is not None
        clock.advance(60)
        assert await host.scheduler.tick() == []
        assert host.scheduler.next_run["tick"] == START + 50 + 3600


def test_schedule_config_errors_name_the_key(make_settings: SettingsFactory) -> None:
    with pytest.raises(ConfigError, match=r"schedules\.x\.class.*'Nope'"):
        make_settings(schedules={"x": {"class": "Nope", "method": "run", "every": 5}})
    with pytest.raises(ConfigError, match=r"schedules\.x: expected exactly one of"):
        make_settings(schedules={"x": {"class": "Ok", "method": "run"}})
    with pytest.raises(ConfigError, match=r"schedules\.x\.cron.*outside 0-59"):
        make_settings(schedules={"x": {"class": "Ok", "method": "run", "cron": "99 * * * *"}})


async def test_prune_removes_old_finished_jobs_and_nothing_else(
        make_settings: SettingsFactory, make_host: HostFactory, clock: FakeClock,
        drain: Drain) -> None:
    settings = make_settings(retention={"completed_days": 1, "failed_days": 2})
    day = 86400
    async with make_host(settings) as host:
        old_done = await host.submit("Ok", "run")
        old_failed = await host.submit("Boom", "value_error")  # no_retry_on: fails at once
        await drain(host)
        clock.advance(1.5 * day)
        new_done = await host.submit("Ok", "run")
        await drain(host)
        waiting = await host.submit("Ok", "run", delay=10 * day)

        assert await host.prune() == {"completed": 1, "failed": 0}
        remaining = {job.id for job in (await host.list_jobs()).jobs}
        assert remaining == {old_failed.id, new_done.id, waiting.id}

        clock.advance(day + 1)  # new_done is now just over a day old, old_failed over two
        assert await host.prune() == {"completed": 1, "failed": 1}
        remaining = {job.id for job in (await host.list_jobs()).jobs}
        assert remaining == {waiting.id}, "pending jobs are never pruned"
        assert old_done.id not in remaining


async def test_no_retention_configured_prunes_nothing(settings: Settings, make_host: HostFactory,
                                                      clock: FakeClock, drain: Drain) -> None:
    async with make_host(settings) as host:
        await host.submit("Ok", "run")
        await drain(host)
        clock.advance(1000 * 86400)
        assert await host.prune() == {"completed": 0, "failed": 0}


async def test_two_schedulers_on_one_store_fire_each_slot_once(
        make_settings: SettingsFactory, make_host: HostFactory, clock: FakeClock) -> None:
    # Two hosts' schedulers (here: a second one on the host's own SQLite store) both see the
    # slot due; the compare-and-set on the slot lets exactly one of them fire it.
    settings = make_settings(schedules=EVERY_MINUTE)
    async with make_host(settings) as host:
        assert host.scheduler is not None
        other = Scheduler(settings=settings, store=host.store, clock=clock,
                          on_submitted=lambda _: None)
        await other.start()
        fired = []
        for _ in range(3):
            clock.advance(60)
            first, second = await asyncio.gather(host.scheduler.tick(), other.tick())
            fired.append(len(first) + len(second))
        jobs = (await host.list_jobs(cls="Ok")).jobs

    assert fired == [1, 1, 1]
    assert len(jobs) == 3
