"""The store contract for a dispatcher round that carries an attempt's start *and* its end.

Short jobs start and end between two rounds, so the round writes both at once (straight from
reserved to the final transition).  What readers see afterwards must be exactly what a start
in one round and the end in the next would leave: these cases pin that, on every backend.
"""

from __future__ import annotations

from store_support import HOST, NOW, done, failed, finished, ids, reserve, spec

from asyncjobs.models import OutcomeKind, Status, StepSpec, Transition
from asyncjobs.store import Finished, Start, Store


async def _round(store: Store, started: list[Start], ended: list[Finished],
                 now: float) -> list[int]:
    return (await store.dispatch_round(host=HOST, progress={}, started=started,
                                       finished=ended, now=now, limit=0,
                                       concurrency={})).advanced


async def test_a_start_and_end_in_one_round_leave_one_attempt_with_both_times(
        store: Store) -> None:
    quick, slow = await ids(store, spec(), spec())
    c_quick, c_slow = await reserve(store, NOW, 2)

    await _round(store, [Start(c_quick, NOW + 1), Start(c_slow, NOW + 1.5)],
                 [done(c_quick, {"ok": 1}, at=NOW + 2)], NOW + 2)

    job = await store.get(quick)
    assert job is not None
    assert (job.status, job.result, job.attempts, job.started_at, job.finished_at) == (
        Status.COMPLETED, {"ok": 1}, 1, NOW + 1, NOW + 2)
    (attempt,) = job.attempt_history
    assert (attempt.number, attempt.outcome, attempt.started_at, attempt.finished_at,
            attempt.host, attempt.exit_code, attempt.output) == (
        1, OutcomeKind.COMPLETED, NOW + 1, NOW + 2, HOST, 0, "out")
    other = await store.get(slow)  # started only: running from its own start
    assert other is not None
    assert (other.status, other.started_at) == (Status.RUNNING, NOW + 1.5)
    stats = await store.stats(NOW + 2)
    assert (stats.counts["pending"], stats.counts["running"], stats.counts["completed"]) == (
        0, 1, 1)
    assert stats.finished_last_minute == 1


async def test_a_retry_and_an_interruption_in_one_round_count_as_apart(store: Store) -> None:
    retried, interrupted = await ids(store, spec(), spec(max_attempts=1))
    c_r, c_i = await reserve(store, NOW, 2)

    await _round(store, [Start(c_r, NOW), Start(c_i, NOW)],
                 [failed(c_r, Status.PENDING, run_at=NOW + 5),
                  finished(c_i, OutcomeKind.INTERRUPTED,
                           Transition(Status.PENDING, run_at=NOW, counts=False))], NOW + 1)

    job = await store.get(retried)
    assert job is not None
    assert (job.status, job.run_at, job.attempts, job.error.type if job.error else None) == (
        Status.PENDING, NOW + 5, 1, "ValueError")
    assert [(a.outcome, a.started_at) for a in job.attempt_history] == [
        (OutcomeKind.FAILED, NOW)]
    (again,) = await reserve(store, NOW, 1)  # only the interrupted one is due
    assert (again.id, again.attempt, again.attempts, again.interruptions) == (
        interrupted, 2, 1, 1)


async def test_a_chain_step_ended_in_its_start_round_makes_the_next_due(store: Store) -> None:
    (head,) = await ids(store, spec("A", then=[StepSpec("B", "run", [2])]))
    (c,) = await reserve(store, NOW, 10)

    assert await _round(store, [Start(c, NOW)], [done(c, [1], at=NOW + 1)], NOW + 1) == [
        head + 1]

    (step,) = await reserve(store, NOW + 1, 10)
    assert (step.id, step.kwargs) == (head + 1, {"previous": [1]})
