"""Back-off and decide(): pure functions, tested with plain values (no process, no database)."""

from __future__ import annotations

import pytest

from asyncjobs.config import JobClass, RetrySettings
from asyncjobs.engine.policy import decide, is_retryable, retry_delay
from asyncjobs.models import Claimed, ErrorInfo, Outcome, OutcomeKind, Status, Transition

RETRY = RetrySettings(max_attempts=3, base_delay=5, factor=2, max_delay=3600, jitter=0.1)
NOW = 1000.0
CONNECTION_MRO = ("ConnectionRefusedError", "ConnectionError", "OSError", "Exception",
                  "BaseException", "object")
VALUE_MRO = ("ValueError", "Exception", "BaseException", "object")


def claimed(*, attempts: int = 1, max_attempts: int = 3, interruptions: int = 0) -> Claimed:
    return Claimed(id=1, cls="Job", method="run", args=[], kwargs={}, attempt=attempts,
                   attempts=attempts, max_attempts=max_attempts, timeout=10.0,
                   interruptions=interruptions)


def failed(mro: tuple[str, ...] = VALUE_MRO, *, fail_now: bool = False,
           retry_requested: bool = False, retry_delay: float | None = None) -> Outcome:
    return Outcome(OutcomeKind.FAILED, error=ErrorInfo(mro[0], "boom", "tb", mro),
                   fail_now=fail_now, retry_requested=retry_requested, retry_delay=retry_delay)


def job_class(*, retry_on: tuple[str, ...] = (), no_retry_on: tuple[str, ...] = ()) -> JobClass:
    return JobClass(name="Job", methods=("run",), retry_on=retry_on, no_retry_on=no_retry_on)


def decide_(c: Claimed, outcome: Outcome, cls: JobClass | None = None, *,
            max_interruptions: int = 5, rand: float = 0.5) -> Transition:
    return decide(c, outcome, job_class=cls or job_class(), retry=RETRY, now=NOW,
                  max_interruptions=max_interruptions, rand=lambda: rand)


def test_retry_delay_doubles_from_the_base_with_jitter_at_zero() -> None:
    delays = [retry_delay(n, RETRY, lambda: 0.5) for n in range(1, 6)]

    assert delays == [5.0, 10.0, 20.0, 40.0, 80.0]


def test_retry_delay_is_capped_by_max_delay() -> None:
    retry = RetrySettings(base_delay=5, factor=2, max_delay=30, jitter=0.0)

    assert [retry_delay(n, retry) for n in (3, 4, 5, 50)] == [20.0, 30.0, 30.0, 30.0]


@pytest.mark.parametrize(("rand", "expected"), [(0.0, 9.0), (0.25, 9.5), (0.75, 10.5),
                                                (1.0, 11.0)])
def test_jitter_scales_within_plus_minus_the_fraction(rand: float, expected: float) -> None:
    assert retry_delay(2, RETRY, lambda: rand) == pytest.approx(expected)


def test_completed_stores_the_result() -> None:
    t = decide_(claimed(), Outcome(OutcomeKind.COMPLETED, result={"a": 1}))

    assert t.status is Status.COMPLETED
    assert t.result == {"a": 1}
    assert t.counts


def test_failure_with_budget_left_is_retried_after_the_back_off() -> None:
    first = decide_(claimed(attempts=1), failed(CONNECTION_MRO))
    second = decide_(claimed(attempts=2), failed(CONNECTION_MRO))

    assert (first.status, first.run_at) == (Status.PENDING, NOW + 5)
    assert (second.status, second.run_at) == (Status.PENDING, NOW + 10)
    assert first.error is not None and first.error.type == "ConnectionRefusedError"


def test_last_attempt_fails_the_job() -> None:
    t = decide_(claimed(attempts=3, max_attempts=3), failed(CONNECTION_MRO))

    assert t.status is Status.FAILED
    assert t.error is not None and t.error.message == "boom"


@pytest.mark.parametrize(
    ("cls", "mro", "retryable"),
    [
        (job_class(), VALUE_MRO, True),
        (job_class(no_retry_on=("ValueError",)), VALUE_MRO, False),
        # matched against the MRO: a subclass of a listed exception counts
        (job_class(no_retry_on=("OSError",)), CONNECTION_MRO, False),
        (job_class(retry_on=("ConnectionError",)), CONNECTION_MRO, True),
        (job_class(retry_on=("ConnectionError",)), VALUE_MRO, False),
        # no_retry_on wins over retry_on
        (job_class(retry_on=("OSError",), no_retry_on=("ConnectionRefusedError",)),
         CONNECTION_MRO, False),
    ],
)
def test_retry_on_and_no_retry_on_match_the_mro(cls: JobClass, mro: tuple[str, ...],
                                                retryable: bool) -> None:
    assert is_retryable(failed(mro), cls) is retryable
    t = decide_(claimed(attempts=1), failed(mro), cls)
    assert t.status is (Status.PENDING if retryable else Status.FAILED)


def test_error_without_mro_matches_on_its_type() -> None:
    outcome = Outcome(OutcomeKind.FAILED, error=ErrorInfo("ValueError", "x"))

    assert not is_retryable(outcome, job_class(no_retry_on=("ValueError",)))


def test_fail_stops_at_once() -> None:
    t = decide_(claimed(attempts=1), failed(fail_now=True))

    assert t.status is Status.FAILED


def test_retry_request_uses_its_delay_even_when_retry_on_would_not_match() -> None:
    cls = job_class(retry_on=("ConnectionError",))

    t = decide_(claimed(attempts=1), failed(retry_requested=True, retry_delay=42.0), cls)

    assert (t.status, t.run_at) == (Status.PENDING, NOW + 42.0)


def test_retry_request_without_delay_uses_the_back_off() -> None:
    t = decide_(claimed(attempts=2), failed(retry_requested=True))

    assert t.run_at == NOW + 10


def test_retry_request_is_still_bounded_by_max_attempts() -> None:
    t = decide_(claimed(attempts=3), failed(retry_requested=True, retry_delay=1.0))

    assert t.status is Status.FAILED


@pytest.mark.parametrize("kind", [OutcomeKind.TIMEOUT, OutcomeKind.CRASHED])
def test_timeout_and_crash_are_retried_and_then_fail(kind: OutcomeKind) -> None:
    outcome = Outcome(kind, exit_code=-9)

    retried = decide_(claimed(attempts=1), outcome)
    last = decide_(claimed(attempts=3), outcome)

    assert (retried.status, retried.run_at) == (Status.PENDING, NOW + 5)
    assert last.status is Status.FAILED
    assert last.error is not None and last.error.type == kind.value.capitalize()


def test_cancelled_is_final_whatever_the_budget() -> None:
    t = decide_(claimed(attempts=1), Outcome(OutcomeKind.CANCELLED,
                                             error=ErrorInfo("Cancelled", "by request")))

    assert t.status is Status.CANCELLED


def test_interruption_requeues_now_without_using_an_attempt() -> None:
    t = decide_(claimed(attempts=3, max_attempts=3, interruptions=3),
                Outcome(OutcomeKind.INTERRUPTED))

    assert (t.status, t.run_at, t.counts) == (Status.PENDING, NOW, False)


def test_too_many_interruptions_in_a_row_fail_the_job() -> None:
    t = decide_(claimed(interruptions=4), Outcome(OutcomeKind.INTERRUPTED), max_interruptions=5)

    assert t.status is Status.FAILED
    assert not t.counts
    assert t.error is not None and t.error.type == "Interrupted"
    assert "5 times" in t.error.message
