"""Retry policy as pure functions: back-off delays and what an attempt's outcome leads to.

Nothing here touches a process, a database or the real time, so every rule is tested with
plain values: ``decide(claimed, outcome, now=..., rand=...)``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from ..config import JobClass, RetrySettings
from ..models import Claimed, ErrorInfo, Outcome, OutcomeKind, Status, Transition

Random = Callable[[], float]
"""Returns a float in [0, 1); injected so jitter is deterministic in tests."""


def retry_delay(attempt: int, retry: RetrySettings, rand: Random = random.random) -> float:
    """Seconds to wait after the ``attempt``-th failure: capped exponential, ± jitter.

    ``min(max_delay, base_delay * factor**(attempt-1))``, then scaled by a uniform factor in
    ``[1 - jitter, 1 + jitter]`` so that jobs failing together do not retry together.
    """
    base = min(retry.max_delay, retry.base_delay * retry.factor ** max(0, attempt - 1))
    return max(0.0, base * (1 + retry.jitter * (2 * rand() - 1)))


def matches(mro: Sequence[str], names: Sequence[str]) -> bool:
    """Whether an exception whose class hierarchy is ``mro`` is one of ``names``."""
    return any(name in mro for name in names)


def is_retryable(outcome: Outcome, job_class: JobClass | None) -> bool:
    """Whether the outcome may be retried at all, budget aside."""
    if outcome.fail_now:
        return False
    if outcome.retry_requested:
        return True
    if outcome.kind is not OutcomeKind.FAILED:
        return outcome.kind in (OutcomeKind.TIMEOUT, OutcomeKind.CRASHED)
    if job_class is None or outcome.error is None:
        return True
    mro = outcome.error.mro or (outcome.error.type,)
    if matches(mro, job_class.no_retry_on):
        return False
    return not job_class.retry_on or matches(mro, job_class.retry_on)


def decide(
    claimed: Claimed,
    outcome: Outcome,
    *,
    job_class: JobClass | None,
    retry: RetrySettings,
    now: float,
    max_interruptions: int,
    rand: Random = random.random,
) -> Transition:
    """The transition that follows ``outcome`` for a job that was running as ``claimed``."""
    kind = outcome.kind
    if kind is OutcomeKind.COMPLETED:
        return Transition(Status.COMPLETED, result=outcome.result)
    if kind is OutcomeKind.CANCELLED:
        return Transition(Status.CANCELLED, error=outcome.error, counts=outcome.started)
    if not outcome.started:  # given back before it ran (at shutdown): nothing to count
        return Transition(Status.PENDING, run_at=now, counts=False)
    if kind is OutcomeKind.INTERRUPTED:
        # Not the job's fault: it does not use up an attempt, unless it keeps happening.
        if claimed.interruptions + 1 >= max_interruptions:
            message = (f"interrupted {claimed.interruptions + 1} times in a row; "
                       "suspected of killing the host")
            return Transition(Status.FAILED, error=ErrorInfo("Interrupted", message),
                              counts=False)
        return Transition(Status.PENDING, run_at=now, counts=False)
    error = outcome.error or ErrorInfo(kind.value.capitalize(), f"attempt ended: {kind.value}")
    if is_retryable(outcome, job_class) and claimed.attempts < claimed.max_attempts:
        delay = outcome.retry_delay
        if delay is None:
            delay = retry_delay(claimed.attempts, retry, rand)
        return Transition(Status.PENDING, run_at=now + delay, error=error)
    return Transition(Status.FAILED, error=error)
