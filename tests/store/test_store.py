"""The SQLite store on a real file: submit, claim order, transitions, chains, durability."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from asyncjobs.errors import JobNotFound, WrongState
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
from asyncjobs.store import Finished, Start
from asyncjobs.store.sqlite import SqliteStore

NOW = 1_800_000_000.0


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


async def claim(store: SqliteStore, now: float, limit: int,
                capacity: dict[str, int]) -> list[Claimed]:
    """Reserve due jobs and have their workers start them at once (at ``now``)."""
    claimed = await store.claim(now, limit, capacity)
    if claimed:
        await store.dispatch_round(progress={}, started=[Start(c, now) for c in claimed],
                                   finished=[], now=now, limit=0, capacity={})
    return claimed


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "jobs.db")
    await s.open()
    yield s
    await s.close()


async def ids(store: SqliteStore, *specs: JobSpec, now: float = NOW) -> list[int]:
    return [s.id for s in await store.submit(list(specs), now)]


async def test_submit_then_get_round_trips(store: SqliteStore) -> None:
    (job_id,) = await ids(store, spec("A", "x", {"n": 1}, priority=Priority.HIGH))

    job = await store.get(job_id)

    assert job is not None
    assert (job.cls, job.method, list(job.args)) == ("A", "run", ["x", {"n": 1}])
    assert (job.status, job.priority, job.attempts, job.max_attempts) == (
        Status.PENDING, Priority.HIGH, 0, 3)
    assert (job.created_at, job.run_at, job.started_at) == (NOW, NOW, None)
    assert job.attempt_history == []
    assert await store.get(job_id + 1) is None


async def test_bulk_submit_returns_consecutive_ids(store: SqliteStore) -> None:
    first = await ids(store, spec())
    bulk = await ids(store, *(spec() for _ in range(5)))

    assert bulk == list(range(first[0] + 1, first[0] + 6))


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


async def test_claim_orders_by_priority_then_run_at_then_id(store: SqliteStore) -> None:
    low, med_late, med_early, high, med_late2 = await ids(
        store, spec(priority=Priority.LOW), spec(run_at=NOW - 1),
        spec(run_at=NOW - 5), spec(priority=Priority.HIGH, run_at=NOW),
        spec(run_at=NOW - 1))

    claimed = await claim(store, NOW, 10, {})

    assert [c.id for c in claimed] == [high, med_early, med_late, med_late2, low]


async def test_claim_takes_only_due_jobs_up_to_the_limit(store: SqliteStore) -> None:
    a, b, _c, later = await ids(store, spec(), spec(), spec(), spec(run_at=NOW + 60))

    first = await claim(store, NOW, 2, {})
    assert [c.id for c in first] == [a, b]
    assert [c.attempt for c in first] == [1, 1]
    assert len(await claim(store, NOW, 10, {})) == 1
    assert await claim(store, NOW, 10, {}) == []  # later is not due; nothing left twice
    assert [c.id for c in await claim(store, NOW + 60, 10, {})] == [later]


async def test_future_jobs_of_a_higher_priority_do_not_hide_due_ones(store: SqliteStore,
                                                                     tmp_path: Path) -> None:
    # Many high-priority jobs scheduled for later, then due medium and low ones: the claim
    # must find the due ones through the index, not by walking the future ones.
    await store.submit([spec("Later", priority=Priority.HIGH, run_at=NOW + 3600 + i)
                        for i in range(2000)], NOW)
    medium, low = await ids(store, spec("Due"), spec("Due", priority=Priority.LOW))

    assert [c.id for c in await claim(store, NOW, 5, {})] == [medium, low]
    with contextlib.closing(sqlite3.connect(tmp_path / "jobs.db")) as conn:
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE status = 'pending' AND priority = 1"
            " AND run_at <= 0 ORDER BY run_at, id LIMIT 5").fetchall()
    assert "USING INDEX jobs_due (priority=? AND run_at<?)" in plan[0][3]


async def test_a_claim_reserves_and_only_a_start_makes_running(store: SqliteStore) -> None:
    (job_id,) = await ids(store, spec())

    (reserved,) = await store.claim(NOW + 3, 1, {})
    job = await store.get(job_id)
    assert job is not None
    # Reserved for a worker but not started: pending to every reader, and claimed once.
    assert (job.status, job.attempts, job.started_at, job.attempt_history) == (
        Status.PENDING, 0, None, [])
    assert (await store.stats(NOW)).counts.get("pending") == 1
    assert await store.claim(NOW + 3, 1, {}) == []

    await store.dispatch_round(progress={}, started=[Start(reserved, NOW + 4)], finished=[],
                               now=NOW + 5, limit=0, capacity={})
    job = await store.get(job_id)

    assert job is not None
    assert (job.status, job.attempts, job.started_at) == (Status.RUNNING, 1, NOW + 4)
    (attempt,) = job.attempt_history
    assert (attempt.number, attempt.outcome, attempt.started_at) == (1, None, NOW + 4)
    assert [c.id for c in await store.running()] == [job_id]
    assert (await store.stats(NOW)).counts.get("running") == 1


async def test_an_attempt_given_back_unreserved_keeps_its_place(store: SqliteStore) -> None:
    first, _ = await ids(store, spec(run_at=NOW - 2), spec(run_at=NOW - 1))
    c1, _ = await store.claim(NOW, 2, {})
    back = Outcome(OutcomeKind.INTERRUPTED, started=False)

    await store.finish([Finished(c1, back, Transition(Status.PENDING, run_at=NOW + 9,
                                                      counts=False), NOW + 1)])
    job = await store.get(first)

    assert job is not None
    assert (job.status, job.run_at, job.attempts, job.attempt_history) == (
        Status.PENDING, NOW - 2, 0, [])
    assert [c.id for c in await store.claim(NOW + 1, 5, {})] == [first]


async def test_a_reserved_job_is_cancelled_through_its_worker(store: SqliteStore) -> None:
    (job_id,) = await ids(store, spec())
    (c,) = await store.claim(NOW, 1, {})

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


async def test_reservations_left_by_a_dead_host_are_cleared_at_open(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "jobs.db")
    await store.open()
    (job_id,) = await ids(store, spec())
    assert await store.claim(NOW, 1, {})
    await store.close()

    store = SqliteStore(tmp_path / "jobs.db")
    await store.open()
    try:
        (again,) = await store.claim(NOW, 1, {})
        job = await store.get(job_id)
    finally:
        await store.close()

    # Due again; and as it may have started just before the host died, its history says so
    # (without using up an attempt), and the next attempt is numbered after it.
    assert job is not None
    assert (again.id, again.attempt, job.status, job.attempts) == (job_id, 2, Status.PENDING, 0)
    (maybe,) = job.attempt_history
    assert (maybe.outcome, maybe.started_at) == (OutcomeKind.INTERRUPTED, NOW)


async def test_claim_respects_class_capacity(store: SqliteStore) -> None:
    a1, a2, b1, a3, b2 = await ids(store, spec("A"), spec("A"), spec("B"), spec("A"),
                                   spec("B"))

    claimed = await claim(store, NOW, 10, {"A": 1, "B": 5})

    assert [c.id for c in claimed] == [a1, b1, b2]
    assert [c.id for c in await claim(store, NOW, 10, {"A": 0})] == []
    assert [c.id for c in await claim(store, NOW, 10, {"A": 2})] == [a2, a3]


async def test_completed_attempt_stores_result_and_history(store: SqliteStore) -> None:
    (job_id,) = await ids(store, spec())
    (c,) = await claim(store, NOW, 1, {})

    assert await store.finish([done(c, {"ok": [1, 2]}, at=NOW + 2)]) == []

    job = await store.get(job_id)
    assert job is not None
    assert (job.status, job.result, job.finished_at, job.error) == (
        Status.COMPLETED, {"ok": [1, 2]}, NOW + 2, None)
    (attempt,) = job.attempt_history
    assert (attempt.outcome, attempt.finished_at, attempt.exit_code, attempt.output) == (
        OutcomeKind.COMPLETED, NOW + 2, 0, "out")


async def test_retry_transition_requeues_with_the_error_kept(store: SqliteStore) -> None:
    (job_id,) = await ids(store, spec())
    (c,) = await claim(store, NOW, 1, {})
    await store.finish([failed(c, Status.PENDING, run_at=NOW + 5)])

    job = await store.get(job_id)
    assert job is not None
    assert (job.status, job.run_at, job.attempts, job.finished_at) == (
        Status.PENDING, NOW + 5, 1, None)
    assert job.error == ErrorInfo("ValueError", "bad")
    assert job.attempt_history[0].error == ErrorInfo("ValueError", "bad", "Traceback ...")
    assert await store.next_due(NOW) == NOW + 5
    assert await claim(store, NOW + 4.9, 1, {}) == []

    (again,) = await claim(store, NOW + 5, 1, {})
    assert (again.attempt, again.attempts) == (2, 2)


async def test_an_interrupted_attempt_does_not_count(store: SqliteStore) -> None:
    (job_id,) = await ids(store, spec(max_attempts=1))
    (c,) = await claim(store, NOW, 1, {})
    await store.finish([finished(c, OutcomeKind.INTERRUPTED,
                                 Transition(Status.PENDING, run_at=NOW, counts=False))])

    (again,) = await claim(store, NOW, 1, {})

    assert (again.attempt, again.attempts, again.interruptions) == (2, 1, 1)
    await store.finish([done(again)])
    job = await store.get(job_id)
    assert job is not None
    assert (job.status, job.attempts) == (Status.COMPLETED, 1)
    assert [a.outcome for a in job.attempt_history] == [OutcomeKind.INTERRUPTED,
                                                        OutcomeKind.COMPLETED]


async def test_cancel_pending_running_and_finished(store: SqliteStore) -> None:
    pending, running, _ = await ids(store, spec(run_at=NOW + 60), spec(), spec(run_at=NOW + 60))
    (c,) = await claim(store, NOW, 1, {})
    assert c.id == running

    result = await store.cancel(pending, NOW, "by request")
    assert (result.previous, result.cancelled_ids) == (Status.PENDING, [pending])
    job = await store.get(pending)
    assert job is not None
    assert (job.status, job.error) == (Status.CANCELLED, ErrorInfo("Cancelled", "by request"))

    # A running job is only reported: the dispatcher kills it and records the outcome.
    assert (await store.cancel(running, NOW, "x")).previous is Status.RUNNING
    assert (await store.get(running)).status is Status.RUNNING  # type: ignore[union-attr]

    with pytest.raises(WrongState, match="already cancelled"):
        await store.cancel(pending, NOW, "again")
    with pytest.raises(JobNotFound):
        await store.cancel(999, NOW, "x")


async def test_a_cancelled_job_is_never_claimed(store: SqliteStore) -> None:
    (job_id,) = await ids(store, spec())
    await store.cancel(job_id, NOW, "x")

    assert await claim(store, NOW, 10, {}) == []


async def test_manual_retry_gives_a_fresh_budget_and_keeps_history(store: SqliteStore) -> None:
    (job_id,) = await ids(store, spec(max_attempts=1))
    (c,) = await claim(store, NOW, 1, {})
    await store.finish([failed(c)])

    assert await store.retry(job_id, NOW + 10) == [job_id]

    job = await store.get(job_id)
    assert job is not None
    assert (job.status, job.attempts, job.run_at, job.error, job.finished_at) == (
        Status.PENDING, 0, NOW + 10, None, None)
    assert len(job.attempt_history) == 1
    (again,) = await claim(store, NOW + 10, 1, {})
    assert (again.attempt, again.attempts) == (2, 1)


@pytest.mark.parametrize("state", ["pending", "running", "completed"])
async def test_manual_retry_needs_a_failed_or_cancelled_job(store: SqliteStore,
                                                            state: str) -> None:
    (job_id,) = await ids(store, spec())
    if state != "pending":
        (c,) = await claim(store, NOW, 1, {})
        if state == "completed":
            await store.finish([done(c)])

    with pytest.raises(WrongState, match=state):
        await store.retry(job_id, NOW)


async def test_unique_key_returns_the_live_job(store: SqliteStore) -> None:
    (first,) = await store.submit([spec(unique_key="k")], NOW)
    (second,) = await store.submit([spec(unique_key="k")], NOW)
    assert (second.id, second.duplicate) == (first.id, True)

    (c,) = await claim(store, NOW, 1, {})
    (while_running,) = await store.submit([spec(unique_key="k")], NOW)
    assert (while_running.id, while_running.status) == (first.id, Status.RUNNING)

    await store.finish([done(c)])
    (after,) = await store.submit([spec(unique_key="k")], NOW)
    assert after.id != first.id and not after.duplicate


async def test_retry_is_refused_while_a_newer_job_holds_the_unique_key(store: SqliteStore,
                                                                       ) -> None:
    (old,) = await ids(store, spec(unique_key="k"))
    await store.cancel(old, NOW, "x")
    (newer,) = await ids(store, spec(unique_key="k"))

    with pytest.raises(WrongState, match=f"job {newer} with the same unique_key"):
        await store.retry(old, NOW)

    assert (await store.get(old)).status is Status.CANCELLED  # type: ignore[union-attr]
    await store.cancel(newer, NOW, "x")
    assert await store.retry(old, NOW) == [old]


async def test_chain_steps_wait_then_receive_the_previous_result(store: SqliteStore) -> None:
    steps = [StepSpec("B", "run", [2]), StepSpec("C", "run", [3], {"k": "v"})]
    (head,) = await ids(store, spec("A", 1, then=steps))
    second, third = head + 1, head + 2

    jobs = [await store.get(i) for i in (head, second, third)]
    assert [(j.cls, j.chain_id, j.run_at) for j in jobs] == [  # type: ignore[union-attr]
        ("A", head, NOW), ("B", head, None), ("C", head, None)]
    (c,) = await claim(store, NOW, 10, {})  # only the head is due
    assert (c.id, c.chain_id) == (head, head)

    assert await store.finish([done(c, [1], at=NOW + 1)]) == [second]

    (c2,) = await claim(store, NOW + 1, 10, {})
    assert (c2.id, c2.kwargs) == (second, {"previous": [1]})
    assert await store.finish([done(c2, [1, 2])]) == [third]
    (c3,) = await claim(store, NOW + 1, 10, {})
    assert c3.kwargs == {"k": "v", "previous": [1, 2]}


async def test_a_failed_step_cancels_the_rest_and_retry_revives_it(store: SqliteStore) -> None:
    steps = [StepSpec("B", "run"), StepSpec("C", "run")]
    (head,) = await ids(store, spec("A", then=steps))
    (c,) = await claim(store, NOW, 10, {})
    await store.finish([done(c, "a")])
    (c2,) = await claim(store, NOW + 1, 10, {})
    await store.finish([failed(c2)])

    last = await store.get(head + 2)
    assert last is not None
    assert last.status is Status.CANCELLED
    assert last.error is not None and last.error.type == "ChainBroken"
    assert f"job {head + 1}" in last.error.message

    assert await store.retry(head + 1, NOW) == [head + 1, head + 2]
    assert (await store.get(head + 2)).status is Status.PENDING  # type: ignore[union-attr]


async def test_cancelling_a_pending_chain_head_cancels_its_steps(store: SqliteStore) -> None:
    (head,) = await ids(store, spec("A", then=[StepSpec("B", "run")], run_at=NOW + 60))

    result = await store.cancel(head, NOW, "x")

    assert result.cancelled_ids == [head, head + 1]


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


async def test_list_filters_and_pages_newest_first(store: SqliteStore) -> None:
    all_ids = await ids(store, *(spec("A" if i % 2 else "B") for i in range(7)))
    await store.cancel(all_ids[0], NOW, "x")

    first = await store.list_jobs(limit=3)
    second = await store.list_jobs(limit=3, cursor=first.next_cursor)
    third = await store.list_jobs(limit=3, cursor=second.next_cursor)

    assert [j.id for j in [*first.jobs, *second.jobs, *third.jobs]] == all_ids[::-1]
    assert third.next_cursor is None
    assert [j.id for j in (await store.list_jobs(cls="A")).jobs] == all_ids[1::2][::-1]
    assert [j.id for j in (await store.list_jobs(status=Status.CANCELLED)).jobs] == [all_ids[0]]


async def test_stats_count_jobs_and_finished_attempts(store: SqliteStore) -> None:
    await ids(store, spec("A"), spec("A"), spec("B"))
    claimed = await claim(store, NOW, 2, {})
    await store.finish([done(claimed[0], at=NOW + 1), failed(claimed[1])])

    stats = await store.stats(NOW + 2)

    assert stats.counts == {"pending": 1, "running": 0, "completed": 1, "failed": 1,
                            "cancelled": 0}
    assert stats.by_class["A"]["completed"] == 1
    assert stats.finished_last_minute == 2


async def test_progress_is_stored(store: SqliteStore) -> None:
    (job_id,) = await ids(store, spec())

    await store.set_progress({job_id: (0.25, "a quarter")})

    assert (await store.get(job_id)).progress == (0.25, "a quarter")  # type: ignore[union-attr]


async def test_normal_durability_commits_inline_and_keeps_the_wal_bounded(
        tmp_path: Path) -> None:
    # At "normal" small commits run on the event loop with SQLite's auto-checkpoint off;
    # the store's own checkpoints (on its thread) must keep the WAL from growing for ever.
    path = tmp_path / "jobs.db"
    store = SqliteStore(path, durability="normal")
    await store.open()
    try:
        for i in range(2000):
            await store.submit([spec("A", "x" * 2000, i)], NOW)
            await asyncio.sleep(0)  # let a finished checkpoint clear its flag
        wal = (tmp_path / "jobs.db-wal").stat().st_size
    finally:
        await store.close()
    # ~2,000 commits of a few pages each would be far beyond this without checkpoints.
    assert wal < 24 << 20  # measured ~12 MB with checkpoints, ~75 MB without
    reopened = SqliteStore(path, durability="normal")
    await reopened.open()
    try:
        assert (await reopened.stats(NOW)).counts["pending"] == 2000
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
    await store.fire_schedule("s", expression="* * * * *", spec=spec("C"), next_run=NOW + 60,
                              now=NOW)
    await _assert_counts_match(store, db)

    a1, a2, a3 = await claim(store, NOW, 3, {})
    (a4,) = await store.claim(NOW, 1, {})  # reserved, given back before it starts
    not_started = Finished(a4, Outcome(OutcomeKind.INTERRUPTED, started=False),
                           Transition(Status.PENDING, counts=False), NOW + 1)
    await store.finish([done(a1), failed(a2), failed(a3, Status.PENDING, NOW + 5), not_started])
    await _assert_counts_match(store, db)

    await store.retry(a2.id, NOW + 2)  # failed -> pending (trigger)
    pending_b = (await store.list_jobs(status=Status.PENDING, cls="B")).jobs[0].id
    await store.cancel(pending_b, NOW + 2, "no")  # pending -> cancelled (trigger)
    claimed = await claim(store, NOW + 10, 20, {})
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
    c1, c2 = await claim(store, NOW, 2, {})

    with contextlib.closing(sqlite3.connect(tmp_path / "jobs.db")) as conn:
        conn.execute("UPDATE jobs SET status = 'cancelled' WHERE id = ?", (c2.id,))
        conn.commit()
    await store.finish([done(c1), done(c2)])  # c2 is no longer running: a missed CAS
    await _assert_counts_match(store, tmp_path / "jobs.db")
