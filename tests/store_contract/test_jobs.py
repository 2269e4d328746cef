"""The store contract: every backend, through the :class:`~asyncjobs.store.Store` protocol only.

No SQL here and no backend's own methods: what a case checks is what the engine relies on,
so a new backend passes this suite unchanged (SQLite-only details live in tests/store/).
"""

from __future__ import annotations

import pytest
from store_support import (
    HOST,
    NOW,
    claim,
    done,
    failed,
    finished,
    ids,
    spec,
)

from asyncjobs.errors import JobNotFound, WrongState
from asyncjobs.models import (
    ErrorInfo,
    OutcomeKind,
    Priority,
    Status,
    StepSpec,
    Transition,
)
from asyncjobs.store import Store


async def test_submit_then_get_round_trips(store: Store) -> None:
    (job_id,) = await ids(store, spec("A", "x", {"n": 1}, priority=Priority.HIGH))

    job = await store.get(job_id)

    assert job is not None
    assert (job.cls, job.method, list(job.args)) == ("A", "run", ["x", {"n": 1}])
    assert (job.status, job.priority, job.attempts, job.max_attempts) == (
        Status.PENDING, Priority.HIGH, 0, 3)
    assert (job.created_at, job.run_at, job.started_at) == (NOW, NOW, None)
    assert job.attempt_history == []
    assert await store.get(job_id + 1) is None


async def test_bulk_submit_returns_consecutive_ids(store: Store) -> None:
    first = await ids(store, spec())
    bulk = await ids(store, *(spec() for _ in range(5)))

    assert bulk == list(range(first[0] + 1, first[0] + 6))


async def test_claim_orders_by_priority_then_run_at_then_id(store: Store) -> None:
    low, med_late, med_early, high, med_late2 = await ids(
        store, spec(priority=Priority.LOW), spec(run_at=NOW - 1),
        spec(run_at=NOW - 5), spec(priority=Priority.HIGH, run_at=NOW),
        spec(run_at=NOW - 1))

    claimed = await claim(store, NOW, 10)

    assert [c.id for c in claimed] == [high, med_early, med_late, med_late2, low]


async def test_claim_takes_only_due_jobs_up_to_the_limit(store: Store) -> None:
    a, b, _c, later = await ids(store, spec(), spec(), spec(), spec(run_at=NOW + 60))

    first = await claim(store, NOW, 2)
    assert [c.id for c in first] == [a, b]
    assert [c.attempt for c in first] == [1, 1]
    assert len(await claim(store, NOW, 10)) == 1
    assert await claim(store, NOW, 10) == []  # later is not due; nothing left twice
    assert [c.id for c in await claim(store, NOW + 60, 10)] == [later]


async def test_future_jobs_of_a_higher_priority_do_not_hide_due_ones(store: Store) -> None:
    # Many high-priority jobs scheduled for later, then due medium and low ones.
    await store.submit([spec("Later", priority=Priority.HIGH, run_at=NOW + 3600 + i)
                        for i in range(2000)], NOW)
    medium, low = await ids(store, spec("Due"), spec("Due", priority=Priority.LOW))

    assert [c.id for c in await claim(store, NOW, 5)] == [medium, low]


async def test_claim_marks_running_and_opens_an_attempt(store: Store) -> None:
    (job_id,) = await ids(store, spec())

    await claim(store, NOW + 3, 1)
    job = await store.get(job_id)

    assert job is not None
    assert (job.status, job.attempts, job.started_at) == (Status.RUNNING, 1, NOW + 3)
    (attempt,) = job.attempt_history
    assert (attempt.number, attempt.outcome, attempt.started_at, attempt.host) == (
        1, None, NOW + 3, HOST)


async def test_completed_attempt_stores_result_and_history(store: Store) -> None:
    (job_id,) = await ids(store, spec())
    (c,) = await claim(store, NOW, 1)

    assert await store.finish([done(c, {"ok": [1, 2]}, at=NOW + 2)]) == []

    job = await store.get(job_id)
    assert job is not None
    assert (job.status, job.result, job.finished_at, job.error) == (
        Status.COMPLETED, {"ok": [1, 2]}, NOW + 2, None)
    (attempt,) = job.attempt_history
    assert (attempt.outcome, attempt.finished_at, attempt.exit_code, attempt.output) == (
        OutcomeKind.COMPLETED, NOW + 2, 0, "out")


async def test_retry_transition_requeues_with_the_error_kept(store: Store) -> None:
    (job_id,) = await ids(store, spec())
    (c,) = await claim(store, NOW, 1)
    await store.finish([failed(c, Status.PENDING, run_at=NOW + 5)])

    job = await store.get(job_id)
    assert job is not None
    assert (job.status, job.run_at, job.attempts, job.finished_at) == (
        Status.PENDING, NOW + 5, 1, None)
    assert job.error == ErrorInfo("ValueError", "bad")
    assert job.attempt_history[0].error == ErrorInfo("ValueError", "bad", "Traceback ...")
    assert (await store.dispatch_round(host=HOST, progress={}, finished=[], now=NOW, limit=1,
                                       concurrency={})).next_due == NOW + 5
    assert await claim(store, NOW + 4.9, 1) == []

    (again,) = await claim(store, NOW + 5, 1)
    assert (again.attempt, again.attempts) == (2, 2)


async def test_an_interrupted_attempt_does_not_count(store: Store) -> None:
    (job_id,) = await ids(store, spec(max_attempts=1))
    (c,) = await claim(store, NOW, 1)
    await store.finish([finished(c, OutcomeKind.INTERRUPTED,
                                 Transition(Status.PENDING, run_at=NOW, counts=False))])

    (again,) = await claim(store, NOW, 1)

    assert (again.attempt, again.attempts, again.interruptions) == (2, 1, 1)
    await store.finish([done(again)])
    job = await store.get(job_id)
    assert job is not None
    assert (job.status, job.attempts) == (Status.COMPLETED, 1)
    assert [a.outcome for a in job.attempt_history] == [OutcomeKind.INTERRUPTED,
                                                        OutcomeKind.COMPLETED]


async def test_cancel_pending_running_and_finished(store: Store) -> None:
    pending, running, _ = await ids(store, spec(run_at=NOW + 60), spec(), spec(run_at=NOW + 60))
    (c,) = await claim(store, NOW, 1)
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


async def test_a_cancelled_job_is_never_claimed(store: Store) -> None:
    (job_id,) = await ids(store, spec())
    await store.cancel(job_id, NOW, "x")

    assert await claim(store, NOW, 10) == []


async def test_manual_retry_gives_a_fresh_budget_and_keeps_history(store: Store) -> None:
    (job_id,) = await ids(store, spec(max_attempts=1))
    (c,) = await claim(store, NOW, 1)
    await store.finish([failed(c)])

    assert await store.retry(job_id, NOW + 10) == [job_id]

    job = await store.get(job_id)
    assert job is not None
    assert (job.status, job.attempts, job.run_at, job.error, job.finished_at) == (
        Status.PENDING, 0, NOW + 10, None, None)
    assert len(job.attempt_history) == 1
    (again,) = await claim(store, NOW + 10, 1)
    assert (again.attempt, again.attempts) == (2, 1)


@pytest.mark.parametrize("state", ["pending", "running", "completed"])
async def test_manual_retry_needs_a_failed_or_cancelled_job(store: Store,
                                                            state: str) -> None:
    (job_id,) = await ids(store, spec())
    if state != "pending":
        (c,) = await claim(store, NOW, 1)
        if state == "completed":
            await store.finish([done(c)])

    with pytest.raises(WrongState, match=state):
        await store.retry(job_id, NOW)


async def test_unique_key_returns_the_live_job(store: Store) -> None:
    (first,) = await store.submit([spec(unique_key="k")], NOW)
    (second,) = await store.submit([spec(unique_key="k")], NOW)
    assert (second.id, second.duplicate) == (first.id, True)

    (c,) = await claim(store, NOW, 1)
    (while_running,) = await store.submit([spec(unique_key="k")], NOW)
    assert (while_running.id, while_running.status) == (first.id, Status.RUNNING)

    await store.finish([done(c)])
    (after,) = await store.submit([spec(unique_key="k")], NOW)
    assert after.id != first.id and not after.duplicate


async def test_retry_is_refused_while_a_newer_job_holds_the_unique_key(store: Store,
                                                                       ) -> None:
    (old,) = await ids(store, spec(unique_key="k"))
    await store.cancel(old, NOW, "x")
    (newer,) = await ids(store, spec(unique_key="k"))

    with pytest.raises(WrongState, match=f"job {newer} with the same unique_key"):
        await store.retry(old, NOW)

    assert (await store.get(old)).status is Status.CANCELLED  # type: ignore[union-attr]
    await store.cancel(newer, NOW, "x")
    assert await store.retry(old, NOW) == [old]


async def test_chain_steps_wait_then_receive_the_previous_result(store: Store) -> None:
    steps = [StepSpec("B", "run", [2]), StepSpec("C", "run", [3], {"k": "v"})]
    (head,) = await ids(store, spec("A", 1, then=steps))
    second, third = head + 1, head + 2

    jobs = [await store.get(i) for i in (head, second, third)]
    assert [(j.cls, j.chain_id, j.run_at) for j in jobs] == [  # type: ignore[union-attr]
        ("A", head, NOW), ("B", head, None), ("C", head, None)]
    (c,) = await claim(store, NOW, 10)  # only the head is due
    assert (c.id, c.chain_id) == (head, head)

    assert await store.finish([done(c, [1], at=NOW + 1)]) == [second]

    (c2,) = await claim(store, NOW + 1, 10)
    assert (c2.id, c2.kwargs) == (second, {"previous": [1]})
    assert await store.finish([done(c2, [1, 2])]) == [third]
    (c3,) = await claim(store, NOW + 1, 10)
    assert c3.kwargs == {"k": "v", "previous": [1, 2]}


async def test_a_failed_step_cancels_the_rest_and_retry_revives_it(store: Store) -> None:
    steps = [StepSpec("B", "run"), StepSpec("C", "run")]
    (head,) = await ids(store, spec("A", then=steps))
    (c,) = await claim(store, NOW, 10)
    await store.finish([done(c, "a")])
    (c2,) = await claim(store, NOW + 1, 10)
    await store.finish([failed(c2)])

    last = await store.get(head + 2)
    assert last is not None
    assert last.status is Status.CANCELLED
    assert last.error is not None and last.error.type == "ChainBroken"
    assert f"job {head + 1}" in last.error.message

    assert await store.retry(head + 1, NOW) == [head + 1, head + 2]
    assert (await store.get(head + 2)).status is Status.PENDING  # type: ignore[union-attr]


async def test_cancelling_a_pending_chain_head_cancels_its_steps(store: Store) -> None:
    (head,) = await ids(store, spec("A", then=[StepSpec("B", "run")], run_at=NOW + 60))

    result = await store.cancel(head, NOW, "x")

    assert result.cancelled_ids == [head, head + 1]


async def test_list_filters_and_pages_newest_first(store: Store) -> None:
    all_ids = await ids(store, *(spec("A" if i % 2 else "B") for i in range(7)))
    await store.cancel(all_ids[0], NOW, "x")

    first = await store.list_jobs(limit=3)
    second = await store.list_jobs(limit=3, cursor=first.next_cursor)
    third = await store.list_jobs(limit=3, cursor=second.next_cursor)

    assert [j.id for j in [*first.jobs, *second.jobs, *third.jobs]] == all_ids[::-1]
    assert third.next_cursor is None
    assert [j.id for j in (await store.list_jobs(cls="A")).jobs] == all_ids[1::2][::-1]
    assert [j.id for j in (await store.list_jobs(status=Status.CANCELLED)).jobs] == [all_ids[0]]


async def test_stats_count_jobs_and_finished_attempts(store: Store) -> None:
    await ids(store, spec("A"), spec("A"), spec("B"))
    claimed = await claim(store, NOW, 2)
    await store.finish([done(claimed[0], at=NOW + 1), failed(claimed[1])])

    stats = await store.stats(NOW + 2)

    assert stats.counts == {"pending": 1, "running": 0, "completed": 1, "failed": 1,
                            "cancelled": 0}
    assert stats.by_class["A"]["completed"] == 1
    assert stats.finished_last_minute == 2


async def test_progress_is_stored(store: Store) -> None:
    (job_id,) = await ids(store, spec())

    await claim(store, NOW, 1)
    await store.dispatch_round(host=HOST, progress={job_id: (0.25, "a quarter")}, finished=[],
                               now=NOW, limit=0, concurrency={})

    assert (await store.get(job_id)).progress == (0.25, "a quarter")  # type: ignore[union-attr]
