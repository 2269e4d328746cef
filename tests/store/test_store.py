"""What is SQLite's own in the SQLite store: the file, WAL, query plans, counts on disk,
migrations, group commit; what every backend shares is in tests/store_contract/."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from store_support import NOW, claim, done, failed, host_row, ids, reserve, spec, start

from asyncjobs.errors import HostLocked, WrongState
from asyncjobs.models import (
    ErrorInfo,
    Outcome,
    OutcomeKind,
    Priority,
    Status,
    StepSpec,
    Transition,
)
from asyncjobs.store import Finished
from asyncjobs.store.schema import MIGRATIONS
from asyncjobs.store.sqlite import SqliteStore
from asyncjobs.store.sqlite_writer import CHECKPOINT_EVERY

DURING_COPY = 50  # commits the WAL test lets through while a checkpoint's copy runs


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "jobs.db")
    await s.open()
    yield s
    await s.close()


async def test_accepted_jobs_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = SqliteStore(path)
    await store.open()
    submitted = await ids(store, spec("A"), spec("B"))
    await store.close()

    again = SqliteStore(path)
    await again.open()
    try:
        assert [(await again.get(i)).cls for i in submitted] == ["A", "B"]  # type: ignore[union-attr]
    finally:
        await again.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


async def test_one_failing_op_does_not_undo_its_neighbours(store: SqliteStore) -> None:
    (job_id,) = await ids(store, spec())
    await store.cancel(job_id, NOW, "x")

    # Queued together, these share one transaction: the wrong-state cancel is rolled back
    # to its savepoint and the submit next to it still commits.
    results = await asyncio.gather(store.cancel(job_id, NOW, "again"),
                                   store.submit([spec("B")], NOW), return_exceptions=True)

    assert isinstance(results[0], WrongState)
    (submitted,) = results[1]  # type: ignore[misc]
    assert (await store.get(submitted.id)).cls == "B"  # type: ignore[union-attr]


async def test_the_claim_walks_the_due_index_not_the_future_jobs(store: SqliteStore,
                                                                tmp_path: Path) -> None:
    # Many high-priority jobs scheduled for later must not be walked to reach due ones.
    await store.submit([spec("Later", priority=Priority.HIGH, run_at=NOW + 3600 + i)
                        for i in range(2000)], NOW)
    medium, low = await ids(store, spec("Due"), spec("Due", priority=Priority.LOW))

    assert [c.id for c in await claim(store, NOW, 5)] == [medium, low]
    with contextlib.closing(sqlite3.connect(tmp_path / "jobs.db")) as conn:
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE status = 'pending' AND priority = 1"
            " AND run_at <= 0 ORDER BY run_at, id LIMIT 5").fetchall()
    assert "USING INDEX jobs_due (priority=? AND run_at<?)" in plan[0][3]


async def test_registering_a_host_ends_the_others_leases(store: SqliteStore) -> None:
    # SQLite admits one host (the data directory's lock): whoever registers is the only one
    # alive, so a host killed with jobs running has them recovered at the next start at once.
    await store.register_host(host_row("old", lease=3600))
    await ids(store, spec(), spec())
    old_jobs = await claim(store, NOW, 2, host="old")

    await store.register_host(host_row("new", now=NOW + 1))

    hosts = {h.id: h for h in await store.hosts(NOW + 1)}
    assert not hosts["old"].alive(NOW + 1) and hosts["new"].alive(NOW + 1)
    assert hosts["old"].running == 2
    orphans = await store.orphans(NOW + 1, alive="new")
    assert sorted(c.id for c in orphans) == sorted(c.id for c in old_jobs)


async def test_jobs_claimed_before_hosts_existed_are_orphans(tmp_path: Path) -> None:
    # A data directory from before migration 6 has running rows with no host: the host that
    # ran them is gone (it was the only one), so the first start recovers them.
    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        for number, script in enumerate(MIGRATIONS[:5], start=1):
            conn.executescript(f"BEGIN; {script}; PRAGMA user_version={number}; COMMIT;")
        conn.execute("INSERT INTO jobs (class, method, args, kwargs, status, priority, run_at, "
                     "timeout, max_attempts, attempts, runs, created_at, started_at) VALUES "
                     "('A', 'run', '[]', '{}', 'running', 1, ?, 10, 3, 1, 1, ?, ?)",
                     (NOW, NOW, NOW))
        conn.execute("INSERT INTO attempts (job_id, number, started_at) VALUES (1, 1, ?)",
                     (NOW,))
        conn.commit()
    store = SqliteStore(path)
    await store.open()
    try:
        (orphan,) = await store.orphans(NOW, alive="new")
        job = await store.get(orphan.id)
        assert job is not None and job.attempt_history[0].host is None
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


async def test_one_host_at_a_time_per_sqlite_file(tmp_path: Path) -> None:
    # Whichever data directory they use, two hosts never write one SQLite file: the second
    # is refused, so "the host that registers is the only live one" always holds.
    first = SqliteStore(tmp_path / "shared.db")
    await first.open()
    try:
        with pytest.raises(HostLocked, match="one host per SQLite store"):
            await SqliteStore(tmp_path / "shared.db").open()
    finally:
        await first.close()
    second = SqliteStore(tmp_path / "shared.db")
    await second.open()  # the lock went with the first
    await second.close()


def _wal_restarts(wal: Path) -> int:
    """SQLite's checkpoint sequence number (WAL header, bytes 12-15): it goes up each time
    the WAL starts over from its beginning, i.e. after a checkpoint copied all of it."""
    with wal.open("rb") as f:
        return int.from_bytes(f.read(16)[12:16], "big")


async def test_normal_durability_commits_inline_and_keeps_the_wal_bounded(
        tmp_path: Path) -> None:
    # At "normal" small commits run on the event loop with SQLite's auto-checkpoint off;
    # the store's own checkpoints (on its thread) must keep the WAL from growing for ever.
    # A checkpoint starts at most every CHECKPOINT_EVERY commits; its copy runs on the
    # writer thread while commits go on, and the WAL starts over after it.  How many
    # commits land during a copy is up to how the OS shares the cores between the loop and
    # that thread (hundreds on a loaded machine, which made an absolute size bound flaky),
    # so this stream lets DURING_COPY commits through while a copy runs, then waits for
    # the copy: then every generation of the WAL holds a known number of commits.
    path, wal = tmp_path / "jobs.db", tmp_path / "jobs.db-wal"
    store = SqliteStore(path, durability="normal")
    await store.open()
    writer = store._writer  # to see whether a checkpoint's copy is in flight
    commits, during_copy = 2000, 0
    per_commit = 0.0
    restarts, seen = 0, None
    try:
        for i in range(commits):
            await store.submit([spec("A", "x" * 2000, i)], NOW)
            await asyncio.sleep(0)  # let a finished checkpoint clear its flag
            copying = writer._copying
            during_copy = during_copy + 1 if copying is not None else 0
            if copying is not None and during_copy >= DURING_COPY:
                await copying
            if i == 99:  # no checkpoint before CHECKPOINT_EVERY commits: all appended
                per_commit = wal.stat().st_size / 100
            now = _wal_restarts(wal)
            restarts += seen is not None and now != seen
            seen = now
        size = wal.stat().st_size
    finally:
        await store.close()
    # Checkpoints happen, again and again: each generation of the WAL ends within
    # CHECKPOINT_EVERY + DURING_COPY commits (+1: the one that starts it over).
    assert restarts >= commits // (CHECKPOINT_EVERY + DURING_COPY + 1) - 1, restarts
    # So the file holds one generation at most; the factor is for B-tree growth (later
    # commits write a page or two more).  Without checkpoints: 8 times this (~75 MB).
    assert size < 1.5 * (CHECKPOINT_EVERY + DURING_COPY + 1) * per_commit, (size, per_commit)
    reopened = SqliteStore(path, durability="normal")
    await reopened.open()
    try:
        assert (await reopened.stats(NOW)).counts["pending"] == commits
    finally:
        await reopened.close()


def _counts_on_disk(path: Path, *, minutes_too: bool) -> dict[tuple[str, str], int]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT class, status, COUNT(*) FROM jobs GROUP BY 1, 2").fetchall()
        minutes = conn.execute("SELECT SUM(completed), SUM(failed) FROM attempt_minutes").fetchone()
        ended = conn.execute("SELECT SUM(outcome = 'completed'), SUM(outcome <> 'completed') "
                             "FROM attempts WHERE outcome IS NOT NULL").fetchone()
    if minutes_too:  # the per-minute throughput counts every ended attempt once (until pruned)
        assert minutes == ended
    return {(cls, status): n for cls, status, n in rows}


async def _assert_counts_match(store: SqliteStore, path: Path, *, minutes_too: bool = True,
                               ) -> dict[tuple[str, str], int]:
    counted = (await store.stats(NOW)).by_class
    actual = _counts_on_disk(path, minutes_too=minutes_too)
    assert actual == {(cls, status): n for cls, by_status in counted.items()
                      for status, n in by_status.items() if n}
    return actual


async def test_job_counts_match_the_jobs_through_every_transition(
        store: SqliteStore, tmp_path: Path) -> None:
    # job_counts and attempt_minutes are kept partly by triggers, partly by bulk writes
    # (inserts, claims, finishes): whatever path a job takes, they must equal a recount.
    db = tmp_path / "jobs.db"
    steps = [StepSpec(cls="C", method="run", args=[], kwargs={})] * 2
    await ids(store, *[spec("A", i) for i in range(5)], *[spec("B", i) for i in range(3)])
    (chain,) = await ids(store, spec("A", then=steps))
    await ids(store, spec("B", unique_key="k"))
    await ids(store, spec("B", unique_key="k"))  # a duplicate: no new job, no count
    await store.save_schedule("s", expression="* * * * *", next_run=NOW)
    assert await store.fire_schedule("s", expression="* * * * *", spec=spec("C"), slot=NOW,
                                     next_run=NOW + 60, now=NOW)
    await _assert_counts_match(store, db)

    a1, a2, a3 = await claim(store, NOW, 3)
    (a4,) = await reserve(store, NOW, 1)  # reserved, given back before it starts
    not_started = Finished(a4, Outcome(OutcomeKind.INTERRUPTED, started=False),
                           Transition(Status.PENDING, counts=False), NOW + 1)
    await store.finish([done(a1), failed(a2), failed(a3, Status.PENDING, NOW + 5), not_started])
    await _assert_counts_match(store, db)

    await store.retry(a2.id, NOW + 2)  # failed -> pending (trigger)
    pending_b = (await store.list_jobs(status=Status.PENDING, cls="B")).jobs[0].id
    await store.cancel(pending_b, NOW + 2, "no")  # pending -> cancelled (trigger)
    claimed = await claim(store, NOW + 10, 20)
    head = next(c for c in claimed if c.id == chain)
    rest = [c for c in claimed if c.id != chain]
    await store.finish([failed(head)] + [done(c) for c in rest])  # breaks the chain (trigger)
    await _assert_counts_match(store, db)
    assert await store.prune(NOW + 100, [Status.COMPLETED], 3) == 3  # delete (trigger)
    actual = await _assert_counts_match(store, db, minutes_too=False)
    assert actual[("C", "cancelled")] == 2 and ("A", "running") not in actual


async def test_a_finish_that_misses_a_job_recounts_its_class(store: SqliteStore,
                                                              tmp_path: Path) -> None:
    await ids(store, spec("A"), spec("A"))
    c1, c2 = await claim(store, NOW, 2)

    with contextlib.closing(sqlite3.connect(tmp_path / "jobs.db")) as conn:
        conn.execute("UPDATE jobs SET status = 'cancelled' WHERE id = ?", (c2.id,))
        conn.commit()
    await store.finish([done(c1), done(c2)])  # c2 is no longer running: a missed CAS
    await _assert_counts_match(store, tmp_path / "jobs.db")


# -- reservations (issue #14): a claim reserves, a worker's start makes running ---------------

async def test_a_claim_reserves_and_only_a_start_makes_running(store: SqliteStore) -> None:
    (job_id,) = await ids(store, spec())

    reserved = await reserve(store, NOW + 3, 1)
    job = await store.get(job_id)
    assert job is not None
    # Reserved for a worker but not started: pending to every reader, and claimed once.
    assert (job.status, job.attempts, job.started_at, job.attempt_history) == (
        Status.PENDING, 0, None, [])
    assert (await store.stats(NOW)).counts.get("pending") == 1
    assert await reserve(store, NOW + 3, 1) == []

    await start(store, reserved, NOW + 4)
    job = await store.get(job_id)

    assert job is not None
    assert (job.status, job.attempts, job.started_at) == (Status.RUNNING, 1, NOW + 4)
    (attempt,) = job.attempt_history
    assert (attempt.number, attempt.outcome, attempt.started_at) == (1, None, NOW + 4)
    assert (await store.stats(NOW)).counts.get("running") == 1


async def test_an_attempt_given_back_unreserved_keeps_its_place(store: SqliteStore) -> None:
    first, _ = await ids(store, spec(run_at=NOW - 2), spec(run_at=NOW - 1))
    c1, _ = await reserve(store, NOW, 2)
    back = Outcome(OutcomeKind.INTERRUPTED, started=False)

    await store.finish([Finished(c1, back, Transition(Status.PENDING, run_at=NOW + 9,
                                                      counts=False), NOW + 1)])
    job = await store.get(first)

    assert job is not None
    assert (job.status, job.run_at, job.attempts, job.attempt_history) == (
        Status.PENDING, NOW - 2, 0, [])
    assert [c.id for c in await reserve(store, NOW + 1, 5)] == [first]


async def test_a_reserved_job_is_cancelled_through_its_worker(store: SqliteStore) -> None:
    (job_id,) = await ids(store, spec())
    (c,) = await reserve(store, NOW, 1)

    # Held by a worker: the host must stop it there (the outcome is then recorded).
    assert (await store.cancel(job_id, NOW, "by request")).previous is Status.RUNNING
    stopped = Outcome(OutcomeKind.CANCELLED, error=ErrorInfo("Cancelled", "before it started"),
                      started=False)
    await store.finish([Finished(c, stopped, Transition(
        Status.CANCELLED, error=stopped.error, counts=False), NOW + 1)])
    job = await store.get(job_id)

    assert job is not None
    assert (job.status, job.attempts, job.attempt_history) == (Status.CANCELLED, 0, [])
    assert (await store.stats(NOW)).counts.get("cancelled") == 1
    assert not (await store.stats(NOW)).counts.get("pending")


async def test_a_reserved_job_counts_against_its_class_concurrency(store: SqliteStore) -> None:
    await ids(store, spec("A"), spec("A"))

    assert len(await reserve(store, NOW, 5, {"A": 1})) == 1
    assert await reserve(store, NOW, 5, {"A": 1}) == []  # the reserved one may start any moment


async def test_reservations_left_by_a_dead_host_are_cleared_at_open(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "jobs.db")
    await store.open()
    (job_id,) = await ids(store, spec())
    assert await reserve(store, NOW, 1)
    await store.close()

    store = SqliteStore(tmp_path / "jobs.db")
    await store.open()
    try:
        (again,) = await reserve(store, NOW, 1)
        job = await store.get(job_id)
    finally:
        await store.close()

    # Due again; and as it may have started just before the host died, its history says so
    # (without using up an attempt), and the next attempt is numbered after it.
    assert job is not None
    assert (again.id, again.attempt, job.status, job.attempts) == (job_id, 2, Status.PENDING, 0)
    (maybe,) = job.attempt_history
    assert (maybe.outcome, maybe.started_at) == (OutcomeKind.INTERRUPTED, NOW)
