"""The PostgreSQL store where several hosts meet: one database, several stores at once.

What the contract suite cannot show with one store: claims that never overlap, per-class
concurrency counted over every host, a late finish from a host presumed dead, migrations
raced by hosts starting together, a connection killed under the store, and the password
kept out of every message.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from store_support import NOW, claim, claim_as, done, host_row, interrupted, reserve, spec

from asyncjobs.errors import ConfigError, Unavailable
from asyncjobs.models import OutcomeKind, Status
from asyncjobs.store.postgres import PostgresStore
from asyncjobs.store.postgres_schema import MIGRATIONS

StoreFactory = Callable[[], Awaitable[PostgresStore]]


async def reserve_as(store: PostgresStore, host: str, now: float, lease: float) -> list[Any]:
    """Register ``host`` (alive for ``lease`` seconds from ``now``) and reserve one job."""
    await store.register_host(host_row(host, now=now, lease=lease))
    return await reserve(store, now, 1, host=host)


@pytest.fixture
async def stores(pg_url: str) -> AsyncIterator[StoreFactory]:
    """Opens as many stores on the test's schema as a test asks for: one per host."""
    opened: list[PostgresStore] = []

    async def make() -> PostgresStore:
        store = PostgresStore(pg_url)
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


async def test_hosts_claiming_at_once_never_share_a_job(stores: StoreFactory) -> None:
    hosts = [await stores() for _ in range(4)]
    submitted = await hosts[0].submit([spec() for _ in range(300)], NOW)
    taken: dict[str, list[int]] = {f"h{i}": [] for i in range(len(hosts))}

    async def drain(store: PostgresStore, host: str) -> None:
        while batch := await claim(store, NOW, 7, host=host):
            taken[host] += [c.id for c in batch]
            await asyncio.sleep(0)

    async with asyncio.timeout(30):
        await asyncio.gather(*(drain(s, f"h{i}") for i, s in enumerate(hosts)))

    every = [job_id for ids in taken.values() for job_id in ids]
    assert sorted(every) == sorted(s.id for s in submitted)  # each once, none lost
    assert sum(1 for ids in taken.values() if ids) >= 2  # they really competed


async def test_concurrency_holds_across_hosts_claiming_at_once(stores: StoreFactory) -> None:
    hosts = [await stores() for _ in range(4)]
    await hosts[0].submit([spec("Capped") for _ in range(20)] + [spec("Free")
                                                                  for _ in range(20)], NOW)

    async with asyncio.timeout(30):
        rounds = await asyncio.gather(*(claim(s, NOW, 5, {"Capped": 2}, host=f"h{i}")
                                        for i, s in enumerate(hosts)))

    capped = [c for batch in rounds for c in batch if c.cls == "Capped"]
    assert len(capped) == 2
    # A capped class does not crowd the others out of a claim: the rest of each host's
    # room went to the uncapped class.
    assert sum(len(batch) for batch in rounds) == 20
    # Finishing one makes room for exactly one more, on any host.
    await hosts[0].finish([done(capped[0])])
    more = await asyncio.gather(*(claim(s, NOW, 5, {"Capped": 2}, host=f"h{i}")
                                  for i, s in enumerate(hosts)))
    assert [c.cls for batch in more for c in batch].count("Capped") == 1


async def test_a_late_finish_from_a_host_presumed_dead_changes_nothing(
        stores: StoreFactory) -> None:
    a, b = await stores(), await stores()
    (job,) = await a.submit([spec()], NOW)
    (first,) = await claim(a, NOW, 1, host="host-a")
    # Host a's lease ran out: the leader (on b) rescues its attempt, then b runs the job.
    assert [c.id for c in await b.orphans(NOW + 60, alive="host-b")] == [job.id]
    await b.finish([interrupted(first, NOW + 60)])
    (second,) = await claim(b, NOW + 61, 1, host="host-b")
    assert second.attempt == first.attempt + 1

    await a.finish([done(first, at=NOW + 62)])  # host a was alive after all

    job_now = await b.get(job.id)
    assert job_now is not None and job_now.status is Status.RUNNING
    assert [h.outcome for h in job_now.attempt_history] == [OutcomeKind.INTERRUPTED, None]
    await b.finish([done(second, at=NOW + 63)])
    job_now = await b.get(job.id)
    assert job_now is not None and job_now.status is Status.COMPLETED
    assert [h.host for h in job_now.attempt_history] == ["host-a", "host-b"]


async def test_orphans_are_the_running_jobs_of_expired_hosts_only(stores: StoreFactory) -> None:
    store = await stores()
    await store.submit([spec(run_at=NOW - 60) for _ in range(3)], NOW - 60)
    (alive,) = await claim_as(store, "alive", NOW - 20, lease=50)
    (dead,) = await claim_as(store, "dead", NOW - 20, lease=19)
    (mine,) = await claim(store, NOW, 1, host="me")

    assert [c.id for c in await store.orphans(NOW, alive="me")] == [dead.id]
    assert sorted(c.id for c in await store.orphans(NOW + 31, alive="me")) == [alive.id, dead.id]
    assert mine.id not in [c.id for c in await store.orphans(NOW + 99, alive="me")]
    listed = {h.id: h.running for h in await store.hosts(NOW)}
    assert listed == {"alive": 1, "dead": 1}


async def test_a_dead_hosts_reservations_are_released_by_the_rescue(
        stores: StoreFactory) -> None:
    store = await stores()
    await store.submit([spec(run_at=NOW - 60) for _ in range(2)], NOW - 60)
    (dead,) = await reserve_as(store, "dead", NOW - 20, lease=19)
    (alive,) = await reserve_as(store, "alive", NOW - 20, lease=50)

    assert await store.orphans(NOW, alive="me") == []  # reservations only: none running

    released = await store.get(dead.id)
    assert released is not None and released.status is Status.PENDING
    assert [(a.number, a.outcome) for a in released.attempt_history] == [
        (1, OutcomeKind.INTERRUPTED)]  # it may have started: the history says so
    assert [c.id for c in await claim(store, NOW, 5, host="me")] == [dead.id]  # due again
    kept = await store.get(alive.id)
    assert kept is not None and kept.attempt_history == []  # a live host's stays reserved


async def test_hosts_starting_together_migrate_once(pg_url: str) -> None:
    stores = [PostgresStore(pg_url) for _ in range(5)]
    try:
        async with asyncio.timeout(30):
            await asyncio.gather(*(s.open() for s in stores))
        conn = await asyncpg.connect(pg_url)
        try:
            versions = await conn.fetch("SELECT version FROM asyncjobs_schema ORDER BY 1")
        finally:
            await conn.close()
        assert [v[0] for v in versions] == list(range(1, len(MIGRATIONS) + 1))
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_one_unique_key_submitted_by_two_hosts_at_once_is_one_job(
        stores: StoreFactory) -> None:
    a, b = await stores(), await stores()

    results = await asyncio.gather(*(s.submit([spec(unique_key="report")], NOW)
                                     for s in (a, b, a, b)))

    assert len({r[0].id for r in results}) == 1
    assert sorted(r[0].duplicate for r in results) == [False, True, True, True]


async def test_a_schedule_slot_fired_by_two_hosts_at_once_runs_once(
        stores: StoreFactory) -> None:
    a, b = await stores(), await stores()
    await a.save_schedule("nightly", expression="every 60s", next_run=NOW)

    fired = await asyncio.gather(*(s.fire_schedule(
        "nightly", expression="every 60s", spec=spec("Nightly"), slot=NOW,
        next_run=NOW + 60, now=NOW) for s in (a, b, a, b)))

    assert sum(job_id is not None for job_id in fired) == 1
    assert (await a.schedule_states())["nightly"].next_run == NOW + 60


async def test_a_killed_connection_is_one_unavailable_then_the_store_heals(
        stores: StoreFactory, pg_url: str) -> None:
    store = await stores()
    await store.submit([spec()], NOW)
    admin = await asyncpg.connect(pg_url)
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'asyncjobs' AND pid <> pg_backend_pid() "
            "AND datname = current_database()")
    finally:
        await admin.close()
    assert killed >= 1

    outcomes: list[Any] = []
    for _ in range(3):
        try:
            outcomes.append(len((await store.list_jobs()).jobs))
        except Unavailable as exc:
            outcomes.append(exc)
    assert outcomes[-1] == 1  # the pool opened a fresh connection
    assert all(isinstance(o, Unavailable) or o == 1 for o in outcomes)


async def test_the_first_hosts_token_is_every_hosts_token(stores: StoreFactory) -> None:
    a, b = await stores(), await stores()

    assert await a.shared_token("first") == "first"
    assert await b.shared_token("second") == "first"
    assert await a.shared_token("third") == "first"


@pytest.mark.parametrize(("durability", "setting"), [("full", "on"), ("normal", "off")])
async def test_durability_sets_synchronous_commit(pg_url: str, durability: str,
                                                  setting: str) -> None:
    store = PostgresStore(pg_url, durability=durability)
    await store.open()
    try:
        async with store._connection() as conn:
            assert await conn.fetchval("SHOW synchronous_commit") == setting
    finally:
        await store.close()


def test_the_url_is_shown_without_its_password_only() -> None:
    assert PostgresStore("postgresql://app:s3cr%40t@db.example:5432/jobs").where == \
        "postgresql://app:***@db.example:5432/jobs"
    assert PostgresStore("postgresql://app@db/jobs").where == "postgresql://app@db/jobs"


async def test_an_unreachable_server_is_one_clear_error_without_the_password() -> None:
    store = PostgresStore("postgresql://app:s3cret@127.0.0.1:1/jobs")

    with pytest.raises(Unavailable) as caught:
        await store.open()

    message = str(caught.value)
    assert "s3cret" not in message and "\n" not in message
    assert "postgresql://app:***@127.0.0.1:1/jobs" in message


@pytest.mark.parametrize("url", [
    "postgresql://app:s3c@r:et@127.0.0.1:5432/jobs",  # '@' and ':' not percent-encoded
    "postgresql://app:s3cret@127.0.0.1:54x2/jobs",  # a port that is no number
])
async def test_a_url_asyncpg_cannot_read_is_a_config_error_without_the_password(
        url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        await PostgresStore(url).open()

    message = str(caught.value)
    assert caught.value.path == "store" and "percent-encode" in message
    assert "s3c" not in message and "et@" not in message and "\n" not in message


async def test_a_burst_of_submits_refreshes_the_planners_statistics(
        stores: StoreFactory, pg_url: str) -> None:
    # A claim is planned once from the table's statistics: stale ones after a burst made each
    # claim sort the whole backlog.  The host that took the burst has them refreshed at once
    # instead of after autovacuum's next minute.
    store = await stores()
    await store.submit([spec() for _ in range(1500)], NOW)
    conn = await asyncpg.connect(pg_url)
    try:
        async with asyncio.timeout(10):
            # pg_class.reltuples is written in place, before the ANALYZE's statistics commit:
            # wait for those (pg_stats), or the plan may still be made without them.
            while not await conn.fetchval(
                    "SELECT reltuples >= 1500 AND EXISTS (SELECT FROM pg_stats WHERE "
                    "schemaname = current_schema() AND tablename = 'jobs' AND "
                    "attname = 'run_at') FROM pg_class WHERE oid = 'jobs'::regclass"):
                await asyncio.sleep(0.05)
        plan = "\n".join(r[0] for r in await conn.fetch(
            "EXPLAIN SELECT id FROM jobs WHERE status = 'pending' AND run_at <= $1 "
            "ORDER BY priority, run_at, id LIMIT 10", NOW))
    finally:
        await conn.close()
    assert "jobs_due" in plan and "Sort" not in plan.split("Limit")[1]
