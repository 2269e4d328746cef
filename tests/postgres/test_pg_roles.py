"""The PostgreSQL cluster roles on a real server: signals between hosts, one leader at a time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
from store_support import NOW, host_row

from asyncjobs.engine.roles import Event
from asyncjobs.store.postgres import PostgresStore
from asyncjobs.store.postgres_roles import PAYLOAD_BYTES, PgLeader, PgNotifier, pack

NotifierFactory = Callable[..., Awaitable[PgNotifier]]


@pytest.fixture
async def notifiers(pg_url: str) -> AsyncIterator[NotifierFactory]:
    """Started notifiers on the test's schema, one per host a test asks for."""
    started: list[PgNotifier] = []

    async def make(**options: float) -> PgNotifier:
        notifier = PgNotifier(pg_url, "db", **options)
        await notifier.start()
        started.append(notifier)
        return notifier

    yield make
    for notifier in started:
        await notifier.close()


@pytest.fixture
async def opened(pg_url: str) -> AsyncIterator[list[PostgresStore]]:
    """Two hosts' stores on one schema (so their leader lock and channel are shared)."""
    stores = [PostgresStore(pg_url), PostgresStore(pg_url)]
    for store in stores:
        await store.open()
    yield stores
    for store in stores:
        await store.close()


async def next_event(queue: asyncio.Queue[Event], kind: str, timeout: float = 5.0) -> Event:
    async with asyncio.timeout(timeout):
        while True:
            event = await queue.get()
            if event.get("type") == kind:
                return event


async def test_an_event_published_on_one_host_reaches_the_other_once(
        notifiers: NotifierFactory) -> None:
    a, b = await notifiers(), await notifiers()
    with a.subscribe() as on_a, b.subscribe() as on_b:
        a.publish({"type": "job", "id": 7, "status": "completed"})
        assert (await next_event(on_b, "job"))["id"] == 7
        assert (await next_event(on_a, "job"))["id"] == 7
        # No echo: a's own event came back from the server and was not delivered again.
        await asyncio.sleep(0.2)
        assert all(e.get("type") != "job" for e in _drain(on_a))


def _drain(queue: asyncio.Queue[Event]) -> list[Event]:
    events = []
    while not queue.empty():
        events.append(queue.get_nowait())
    return events


async def test_a_burst_of_events_arrives_whole_and_in_order(
        notifiers: NotifierFactory) -> None:
    a, b = await notifiers(), await notifiers()
    note = "x" * 100  # so that 200 events (a subscriber's queue holds 256) fill 4 payloads
    with b.subscribe() as on_b:
        for i in range(200):  # published in one turn of the loop: one flush
            a.publish({"type": "job", "id": i, "status": "completed", "note": note})
        received = [(await next_event(on_b, "job"))["id"] for _ in range(200)]
    assert received == list(range(200))


def test_payloads_stay_under_the_servers_limit() -> None:
    events: list[Event] = [{"type": "progress", "id": i, "message": "x" * 300}
                           for i in range(100)]
    payloads = pack("origin", events)
    assert len(payloads) > 1
    assert all(len(p.encode()) < PAYLOAD_BYTES for p in payloads)
    assert pack("origin", [{"type": "job", "message": "x" * 9000}]) == []


async def test_a_listener_whose_connection_is_killed_reconnects_and_says_so(
        notifiers: NotifierFactory, pg_url: str) -> None:
    a, b = await notifiers(), await notifiers(safety_poll=0.2)
    with b.subscribe() as on_b:
        conn = await asyncpg.connect(pg_url)
        try:
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
                "query LIKE 'LISTEN%' AND pid <> pg_backend_pid() "
                "AND datname = current_database()")
        finally:
            await conn.close()
        assert killed >= 1
        # Told that events may have been lost (re-read), then signals flow again.
        await next_event(on_b, "overflow")
        async with asyncio.timeout(5):
            while not b.listening:
                await asyncio.sleep(0.02)
        a.publish({"type": "cancel", "id": 3})
        assert (await next_event(on_b, "cancel"))["id"] == 3


async def test_the_safety_poll_wakes_dispatchers_without_any_notification(
        notifiers: NotifierFactory) -> None:
    heard: list[Event] = []
    notifier = await notifiers(safety_poll=0.1)
    notifier.listen(heard.append)
    async with asyncio.timeout(3):  # three polls, 0.1 s apart (bounded: a loaded machine)
        while sum(e["type"] == "due" for e in heard) < 3:
            await asyncio.sleep(0.05)


async def wait_for_leader(leaders: list[PgLeader], timeout: float = 5.0) -> PgLeader:
    async with asyncio.timeout(timeout):
        while True:
            current = [leader for leader in leaders if leader.is_leader]
            assert len(current) <= 1
            if current:
                return current[0]
            await asyncio.sleep(0.02)


async def test_one_leader_and_another_takes_over_when_it_goes(pg_url: str) -> None:
    leaders = [PgLeader(pg_url, "db", f"h{i}", check=0.05) for i in range(3)]
    for leader in leaders:
        await leader.start()
    try:
        first = await wait_for_leader(leaders)
        await asyncio.sleep(0.2)
        assert [leader.is_leader for leader in leaders].count(True) == 1
        # An operator finds the leader with the query of docs/scaling.md.
        conn = await asyncpg.connect(pg_url)
        try:
            names = await conn.fetch(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                "WHERE l.locktype = 'advisory' AND l.granted AND "
                "a.application_name LIKE 'asyncjobs-leader-%' AND a.datname = current_database()")
        finally:
            await conn.close()
        assert [n[0] for n in names] == [f"asyncjobs-leader-{first.host_id}"]

        await first.close()
        second = await wait_for_leader([x for x in leaders if x is not first])
        assert second is not first
    finally:
        for leader in leaders:
            await leader.close()


async def test_a_leader_whose_session_is_killed_steps_down(pg_url: str) -> None:
    leaders = [PgLeader(pg_url, "db", f"h{i}", check=0.05) for i in range(2)]
    for leader in leaders:
        await leader.start()
    try:
        first = await wait_for_leader(leaders)
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                "AND granted AND pid <> pg_backend_pid() AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())")
        finally:
            await conn.close()
        async with asyncio.timeout(5):
            while first.is_leader:
                await asyncio.sleep(0.02)
        # Someone leads again (possibly the same host, on a new session), and only one.
        await wait_for_leader(leaders)
    finally:
        for leader in leaders:
            await leader.close()


async def test_the_store_hands_out_its_roles(opened: list[PostgresStore]) -> None:
    a, b = opened
    assert a.notifier() is a.notifier()
    assert a.leader("h1") is a.leader("h1")
    for store, host in ((a, "h1"), (b, "h2")):
        await store.leader(host).start()
    leader = await wait_for_leader([a.leader("h1"), b.leader("h2")])
    # The host listing names the leader (its session carries the host's id).
    for host in ("h1", "h2"):
        await a.register_host(host_row(host))
    listed = {h.id: h.leader for h in await b.hosts(NOW)}
    assert listed == {"h1": leader is a.leader("h1"), "h2": leader is b.leader("h2")}
