"""The store contract for what several hosts share: host rows and leases, orphans, caps
counted over the whole store, cancel marks, schedule slots, pruning, counters, restarts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from store_support import (
    HOST,
    LEASE,
    NOW,
    claim,
    claim_as,
    done,
    failed,
    host_row,
    ids,
    interrupted,
    reserve,
    spec,
)

from asyncjobs.errors import WrongState
from asyncjobs.models import TRANSITIONS, Outcome, OutcomeKind, Status, StepSpec, Transition
from asyncjobs.store import Finished, Store


async def test_hosts_register_heartbeat_and_retire(store: Store) -> None:
    await store.register_host(host_row("a"))
    (job_id,) = await ids(store, spec())
    await claim(store, NOW, 1, host="a")

    (a,) = await store.hosts(NOW)
    assert (a.id, a.url, a.running, a.alive(NOW + LEASE - 1)) == ("a", "http://a", 1, True)
    assert not a.alive(NOW + LEASE)
    assert (a.state(NOW), a.state(NOW + LEASE)) == ("alive", "gone")  # its lease ran out

    await store.heartbeat("a", NOW + 10, NOW + 10 + LEASE)
    (a,) = await store.hosts(NOW + 10)
    assert (a.heartbeat_at, a.alive(NOW + LEASE + 5)) == (NOW + 10, True)

    await store.retire_host("a", NOW + 11)
    (a,) = await store.hosts(NOW + 11)
    assert not a.alive(NOW + 11)
    assert a.state(NOW + 11) == a.state(NOW + 1000) == "stopped"  # said so as it went
    assert [c.id for c in await store.orphans(NOW + 11, alive="b")] == [job_id]


async def test_orphans_are_only_the_attempts_of_hosts_whose_lease_ended(store: Store) -> None:
    await store.register_host(host_row("a"))
    await ids(store, spec(), spec())
    (mine,) = await claim(store, NOW, 1, host="a")

    # Host a is alive: nobody (and never a itself) takes its attempt for an orphan.
    assert await store.orphans(NOW + LEASE / 2, alive="b") == []
    assert await store.orphans(NOW + LEASE + 1, alive="a") == []
    # Its lease ran out: its attempt is an orphan, as claimed (attempt number, budget).
    (orphan,) = await store.orphans(NOW + LEASE + 1, alive="b")
    assert (orphan.id, orphan.attempt, orphan.attempts) == (mine.id, 1, 1)


async def test_restart_recovery_requeues_a_dead_hosts_attempts(
        backend: Callable[[], Store]) -> None:
    # A host claims a job and dies; a new host on the same store (after a restart) records
    # the attempt interrupted and the job runs again, its attempt budget untouched.
    first = backend()
    await first.open()
    await first.register_host(host_row("a", lease=1))
    (job_id,) = await ids(first, spec(max_attempts=1))
    await claim(first, NOW, 1, host="a")
    await first.close()

    second = backend()
    await second.open()
    try:
        await second.register_host(host_row("b", now=NOW + 5))
        (orphan,) = await second.orphans(NOW + 5, alive="b")
        await second.finish([interrupted(orphan, at=NOW + 5)])
        (again,) = await claim(second, NOW + 5, 1, host="b")
        await second.finish([done(again, at=NOW + 6)])
        job = await second.get(job_id)
    finally:
        await second.close()
    assert job is not None
    assert (job.status, job.attempts) == (Status.COMPLETED, 1)
    assert [(a.outcome.value if a.outcome else None, a.host) for a in job.attempt_history] == [
        ("interrupted", "a"), ("completed", "b")]


async def test_class_concurrency_is_counted_over_every_host(store: Store) -> None:
    a1, a2, b1, a3, b2 = await ids(store, spec("A"), spec("A"), spec("B"), spec("A"),
                                   spec("B"))
    caps = {"A": 1, "B": 5}

    first = await claim(store, NOW, 10, caps, host="x")
    assert [c.id for c in first] == [a1, b1, b2]
    # Another host, its own round: A is full while x runs a1, whoever asks.
    assert await claim(store, NOW, 10, caps, host="y") == []
    await store.finish([done(first[0])])
    assert [c.id for c in await claim(store, NOW, 10, caps, host="y")] == [a2]
    assert [c.id for c in await claim(store, NOW, 10, {"A": 3}, host="x")] == [a3]


async def test_concurrent_rounds_never_claim_a_job_twice(store: Store) -> None:
    await ids(store, *(spec("A") for _ in range(40)))

    rounds = await asyncio.gather(*(claim(store, NOW, 7, {"A": 12}, host=f"h{i}")
                                    for i in range(5)))

    claimed = [c.id for r in rounds for c in r]
    assert len(claimed) == len(set(claimed)) == 12


async def test_a_cancel_of_a_running_job_reaches_its_host_in_the_next_round(
        store: Store) -> None:
    await ids(store, spec(), spec())
    (x,) = await claim(store, NOW, 1, host="x")
    (y,) = await claim(store, NOW, 1, host="y")

    result = await store.cancel(x.id, NOW, "by request")

    assert (result.previous, result.cancelled_ids) == (Status.RUNNING, [])
    assert (await store.get(x.id)).status is Status.RUNNING  # type: ignore[union-attr]
    seen = await store.dispatch_round(host="x", progress={}, finished=[], now=NOW, limit=0,
                                      concurrency={})
    other = await store.dispatch_round(host="y", progress={}, finished=[], now=NOW, limit=0,
                                       concurrency={})
    assert (seen.cancel, other.cancel) == ([x.id], [])
    # Its host records the end; the mark goes with the attempt.
    await store.finish([failed(x, Status.CANCELLED)])
    assert (await store.dispatch_round(host="x", progress={}, finished=[], now=NOW, limit=0,
                                       concurrency={})).cancel == []
    assert y.id != x.id


async def test_cancel_and_retry_races_are_refused_not_applied(store: Store) -> None:
    (job_id,) = await ids(store, spec())

    results = await asyncio.gather(store.cancel(job_id, NOW, "one"),
                                   store.cancel(job_id, NOW, "two"), return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["CancelResult", "WrongState"]

    assert await store.retry(job_id, NOW) == [job_id]
    (c,) = await claim(store, NOW, 1)
    with pytest.raises(WrongState):
        await store.retry(job_id, NOW)  # running: only its host's outcome moves it
    # A finish for a job someone else already moved is a missed compare-and-set: no change.
    await store.finish([done(c)])
    await store.finish([failed(c)])
    assert (await store.get(job_id)).status is Status.COMPLETED  # type: ignore[union-attr]


async def test_two_schedulers_fire_a_slot_once(store: Store) -> None:
    await store.save_schedule("s", expression="every 60", next_run=NOW)

    fired = await asyncio.gather(*(
        store.fire_schedule("s", expression="every 60", spec=spec("S"), slot=NOW,
                            next_run=NOW + 60, now=NOW) for _ in range(3)))

    (job_id,) = [f for f in fired if f is not None]
    assert fired.count(None) == 2
    state = (await store.schedule_states())["s"]
    assert (state.next_run, state.last_run, state.last_job_id) == (NOW + 60, NOW, job_id)
    assert [j.id for j in (await store.list_jobs(cls="S")).jobs] == [job_id]
    # A stale slot (already fired) misses; the next one fires.
    assert await store.fire_schedule("s", expression="every 60", spec=spec("S"), slot=NOW,
                                     next_run=NOW + 60, now=NOW + 1) is None
    assert await store.fire_schedule("s", expression="every 60", spec=spec("S"),
                                     slot=NOW + 60, next_run=NOW + 120, now=NOW + 60)


async def test_prune_deletes_old_finished_jobs_only(store: Store) -> None:
    old, recent, waiting = await ids(store, spec(), spec(), spec(run_at=NOW + 9999))
    c1, c2 = await claim(store, NOW, 2)
    await store.finish([done(c1, at=NOW + 1), done(c2, at=NOW + 100)])

    assert await store.prune(NOW + 50, [Status.FAILED], 10) == 0
    assert await store.prune(NOW + 50, [Status.COMPLETED], 10) == 1

    assert await store.get(old) is None
    assert await store.get(recent) is not None and await store.get(waiting) is not None
    assert (await store.stats(NOW + 100)).counts["completed"] == 1


async def _recount(store: Store) -> dict[str, int]:
    counts = {s.value: 0 for s in Status}
    for status in Status:
        page = await store.list_jobs(status=status, limit=10_000)
        counts[status.value] = len(page.jobs)
    return counts


async def test_counters_match_a_recount_through_every_path(store: Store) -> None:
    steps = [StepSpec(cls="C", method="run", args=[], kwargs={})] * 2
    await ids(store, *[spec("A", i) for i in range(5)], spec("A", then=steps))
    await ids(store, spec("B", unique_key="k"), spec("B", unique_key="k"))
    await store.save_schedule("s", expression="every 60", next_run=NOW)
    await store.fire_schedule("s", expression="every 60", spec=spec("C"), slot=NOW,
                              next_run=NOW + 60, now=NOW)
    assert (await store.stats(NOW)).counts == await _recount(store)

    a1, a2, a3, a4 = await claim(store, NOW, 4)
    await store.finish([done(a1), failed(a2), failed(a3, Status.PENDING, NOW + 5),
                        interrupted(a4)])
    assert (await store.stats(NOW)).counts == await _recount(store)

    await store.retry(a2.id, NOW + 2)
    await store.cancel(a3.id, NOW + 2, "no")
    claimed = await claim(store, NOW + 10, 20)
    await store.finish([failed(c) for c in claimed])  # breaks the chain
    await store.prune(NOW + 100, [Status.FAILED], 2)
    assert (await store.stats(NOW + 100)).counts == await _recount(store)


async def test_every_status_change_is_in_the_transition_table(store: Store) -> None:
    # Walk each job through what the engine does and check each observed change.
    jobs = await ids(store, spec(), spec(), spec(), spec(run_at=NOW + 50))
    seen: dict[int, Status] = {j: Status.PENDING for j in jobs}
    changes: set[tuple[Status, Status]] = set()

    async def observe() -> None:
        for job_id, old in seen.items():
            new = (await store.get(job_id)).status  # type: ignore[union-attr]
            if new is not old:
                changes.add((old, new))
                seen[job_id] = new

    c1, c2, c3 = await claim(store, NOW, 3)
    await observe()
    await store.cancel(jobs[3], NOW, "x")
    await store.finish([done(c1), failed(c2), failed(c3, Status.PENDING, NOW)])
    await observe()
    await store.retry(c2.id, NOW)
    await store.retry(jobs[3], NOW)
    await observe()

    assert changes  # the walk moved jobs at all
    assert all(new in TRANSITIONS[old] for old, new in changes), changes
    assert changes == {(Status.PENDING, Status.RUNNING), (Status.PENDING, Status.CANCELLED),
                       (Status.RUNNING, Status.COMPLETED), (Status.RUNNING, Status.FAILED),
                       (Status.RUNNING, Status.PENDING), (Status.FAILED, Status.PENDING),
                       (Status.CANCELLED, Status.PENDING)}


async def test_an_orphan_says_whether_it_was_cancelled_meanwhile(store: Store) -> None:
    await ids(store, spec(), spec())
    kept, cancelled = (c.id for c in await claim_as(store, "a", NOW, limit=2))
    await store.cancel(cancelled, NOW + 1, "while its host was dying")

    orphans = {c.id: c.cancel_requested for c in await store.orphans(NOW + LEASE, alive="b")}

    assert orphans == {kept: False, cancelled: True}


async def test_a_cancel_that_meets_a_retry_ends_the_job_cancelled(store: Store) -> None:
    # The cancel comes while the job runs, but its attempt fails (retryable) before the kill
    # lands: the retry must not swallow the cancel.
    (job_id,) = await ids(store, spec(then=[StepSpec("B", "run")]))
    (c,) = await claim(store, NOW, 1)
    assert (await store.cancel(job_id, NOW, "by request")).previous is Status.RUNNING

    ended = await store.dispatch_round(host=HOST, progress={}, now=NOW + 1, limit=5,
                                       finished=[failed(c, Status.PENDING, run_at=NOW)],
                                       concurrency={})

    assert (ended.claimed, ended.cancelled) == ([], [job_id, job_id + 1])
    job = await store.get(job_id)
    assert job is not None and job.error is not None
    assert (job.status, job.error.type) == (Status.CANCELLED, "Cancelled")
    assert [a.outcome.value if a.outcome else None for a in job.attempt_history] == ["failed"]
    assert (await store.get(job_id + 1)).status is Status.CANCELLED  # type: ignore[union-attr]
    assert (await store.stats(NOW + 1)).counts["cancelled"] == 2


async def test_a_cancel_of_a_reserved_job_given_back_ends_it_cancelled(store: Store) -> None:
    # Reserved (pending to readers, so the cancel only marks it), then given back unstarted
    # for another reason than the cancel (the host stopping): the cancel still holds, and no
    # later claim takes the job.
    (job_id,) = await ids(store, spec())
    (c,) = await reserve(store, NOW, 1)
    assert (await store.cancel(job_id, NOW, "by request")).previous is Status.RUNNING
    back = Finished(c, Outcome(OutcomeKind.INTERRUPTED, started=False),
                    Transition(Status.PENDING, run_at=NOW, counts=False), NOW + 1)

    ended = await store.dispatch_round(host=HOST, progress={}, finished=[back], now=NOW + 1,
                                       limit=5, concurrency={})

    assert (ended.claimed, ended.cancelled) == ([], [job_id])
    assert (await store.get(job_id)).status is Status.CANCELLED  # type: ignore[union-attr]
    assert await reserve(store, NOW + 2, 5) == []


async def test_a_retried_job_is_not_cancelled_by_an_old_mark(store: Store) -> None:
    # Cancelled while running (the kill recorded it), then retried by hand: it runs again.
    (job_id,) = await ids(store, spec())
    (c,) = await claim(store, NOW, 1)
    await store.cancel(job_id, NOW, "by request")
    await store.finish([failed(c, Status.CANCELLED)])
    assert await store.retry(job_id, NOW + 1) == [job_id]

    (again,) = await reserve(store, NOW + 1, 5)
    assert again.id == job_id


async def test_a_dead_hosts_reservation_with_a_cancel_is_cancelled_not_run(
        backend: Callable[[], Store]) -> None:
    first = backend()
    await first.open()
    await first.register_host(host_row("a", lease=1))
    (job_id,) = await ids(first, spec())
    await reserve(first, NOW, 1, host="a")
    await first.cancel(job_id, NOW, "by request")  # reserved: only a mark
    await first.close()  # host a dies with it

    second = backend()
    await second.open()
    try:
        await second.register_host(host_row("b", now=NOW + 5))
        await second.orphans(NOW + 5, alive="b")
        job = await second.get(job_id)
        assert await reserve(second, NOW + 5, 5, host="b") == []
    finally:
        await second.close()
    assert job is not None and job.status is Status.CANCELLED
