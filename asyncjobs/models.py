"""Statuses, their allowed transitions, and the records that flow between the modules.

A *job record* is one submitted instance of an allow-listed job; an *attempt* is one
execution of it.  The job's state lives in exactly one column (``status``); every change of
it is checked against :data:`TRANSITIONS` by the store, which applies it as a
compare-and-set so that a race surfaces as an error instead of corrupted state.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeAlias

JSONValue: TypeAlias = Any
"""Any value orjson can encode; the only place ``Any`` is allowed is this JSON boundary."""


class Status(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL: frozenset[Status] = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})

TRANSITIONS: Mapping[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.RUNNING, Status.CANCELLED}),
    # running -> pending is a retry (or an interruption); running -> running never happens.
    Status.RUNNING: frozenset({Status.PENDING, Status.COMPLETED, Status.FAILED, Status.CANCELLED}),
    Status.COMPLETED: frozenset(),
    # A manual retry puts a failed or cancelled job back in the queue.
    Status.FAILED: frozenset({Status.PENDING}),
    Status.CANCELLED: frozenset({Status.PENDING}),
}


class Priority(StrEnum):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"

    @property
    def rank(self) -> int:
        """Sort key: lower runs first."""
        return _PRIORITY_RANK[self]

    @classmethod
    def from_rank(cls, rank: int) -> Priority:
        return _PRIORITY_BY_RANK[rank]


_PRIORITY_RANK = {Priority.HIGH: 0, Priority.MEDIUM: 1, Priority.LOW: 2}
_PRIORITY_BY_RANK = {v: k for k, v in _PRIORITY_RANK.items()}


class OutcomeKind(StrEnum):
    """How one attempt ended."""

    COMPLETED = "completed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    CRASHED = "crashed"  # the worker process died
    INTERRUPTED = "interrupted"  # the host stopped or died


class Isolation(StrEnum):
    POOL = "pool"
    PROCESS = "process"


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    type: str
    message: str
    traceback: str | None = None
    mro: tuple[str, ...] = ()

    def to_json(self, *, with_traceback: bool = False) -> dict[str, JSONValue]:
        out: dict[str, JSONValue] = {"type": self.type, "message": self.message}
        if with_traceback:
            out["traceback"] = self.traceback
        return out


# HOT_RECORDS: the records made once per submitted job or per attempt (JobSpec, StepSpec,
# Claimed, Outcome, Transition, and Submitted, Finished, Done beside them) are plain slotted
# dataclasses, immutable by convention only: a frozen dataclass's __init__ sets each field
# through object.__setattr__, which made building a JobSpec half of a submit's validation.
@dataclass(slots=True)  # not frozen: see HOT_RECORDS
class Outcome:
    """What the launcher observed about one attempt: data, decided upon by :mod:`policy`."""

    kind: OutcomeKind
    result: JSONValue = None
    error: ErrorInfo | None = None
    exit_code: int | None = None
    output: str = ""
    retry_delay: float | None = None  # from ``raise Retry(delay=...)``
    retry_requested: bool = False
    fail_now: bool = False  # from ``raise Fail(...)``
    started: bool = True  # False: taken back before it ran (no execution, no attempt row)
    strays: int = 0  # processes the job left running, killed when the attempt ended
    # Seconds a warm worker spent on it, from reading it to answering, by its own clock:
    # how fast its queue drains (the launcher's queue depth), free of the host's delays.
    busy: float | None = None


@dataclass(slots=True)  # not frozen: see HOT_RECORDS
class StepSpec:
    """One further step of a chain."""

    cls: str
    method: str
    args: Sequence[JSONValue] = ()
    kwargs: Mapping[str, JSONValue] = field(default_factory=dict)


@dataclass(slots=True)  # not frozen: see HOT_RECORDS
class JobSpec:
    """A validated submit request, with every default already resolved."""

    cls: str
    method: str
    args: Sequence[JSONValue]
    kwargs: Mapping[str, JSONValue]
    priority: Priority
    run_at: float
    timeout: float
    max_attempts: int
    then: Sequence[StepSpec] = ()
    unique_key: str | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    number: int
    outcome: OutcomeKind | None  # None while it runs
    started_at: float
    finished_at: float | None
    exit_code: int | None
    error: ErrorInfo | None
    output: str
    strays: int = 0  # processes the job left running, killed when the attempt ended
    host: str | None = None  # the id of the host that ran it (None: from before hosts)

    def to_json(self) -> dict[str, JSONValue]:
        return {
            "number": self.number,
            "host": self.host,
            "outcome": self.outcome.value if self.outcome else "running",
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "exit_code": self.exit_code,
            "error": self.error.to_json(with_traceback=True) if self.error else None,
            "output": self.output,
            "strays": self.strays,
        }


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One job as stored; ``attempts`` counts executions against ``max_attempts``."""

    id: int
    cls: str
    method: str
    args: Sequence[JSONValue]
    kwargs: Mapping[str, JSONValue]
    status: Status
    priority: Priority
    attempts: int
    max_attempts: int
    timeout: float
    created_at: float
    run_at: float | None  # None: a chain step waiting for its predecessor
    started_at: float | None
    finished_at: float | None
    result: JSONValue
    error: ErrorInfo | None
    progress: tuple[float, str | None] | None
    chain_id: int | None
    unique_key: str | None
    attempt_history: Sequence[Attempt] = ()

    def to_json(self, *, with_history: bool = True) -> dict[str, JSONValue]:
        """The §6 shape."""
        out: dict[str, JSONValue] = {
            "id": self.id,
            "class": self.cls,
            "method": self.method,
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
            "status": self.status.value,
            "priority": self.priority.value,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "timeout": self.timeout,
            "created_at": iso(self.created_at),
            "run_at": iso(self.run_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "result": self.result,
            "error": self.error.to_json() if self.error else None,
            "progress": (
                {"fraction": self.progress[0], "message": self.progress[1]}
                if self.progress
                else None
            ),
            "chain_id": self.chain_id,
            "unique_key": self.unique_key,
        }
        if with_history:
            out["attempt_history"] = [a.to_json() for a in self.attempt_history]
        return out


@dataclass(slots=True)  # not frozen: see HOT_RECORDS
class Claimed:
    """A job the dispatcher has just reserved for an attempt, with that attempt's number.

    It is still ``pending`` to every reader until a worker reports that it starts it.
    """

    id: int
    cls: str
    method: str
    args: Sequence[JSONValue]
    kwargs: Mapping[str, JSONValue]
    attempt: int  # the attempt row's number (all executions, interrupted included)
    attempts: int  # counted attempts including this one
    max_attempts: int
    timeout: float
    interruptions: int
    chain_id: int | None = None  # set for a step of a chain: finishing it moves the chain on
    priority: int = 1  # Priority.rank: the launcher starts better-ranked attempts first
    cancel_requested: bool = False  # (orphans only) cancelled while its host was gone


@dataclass(slots=True)  # not frozen: see HOT_RECORDS
class Transition:
    """The store change that follows an attempt's outcome, as decided by :mod:`policy`."""

    status: Status
    run_at: float | None = None  # for a retry
    result: JSONValue = None
    error: ErrorInfo | None = None
    counts: bool = True  # whether the attempt used up one of max_attempts


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC with milliseconds and a ``Z``.

    Called for every log line and every job in an API listing, so the part down to the
    second is formatted once per second and kept (a datetime per call was ~3 % of the
    host's time in a drain).  Rounds to the microsecond first, as ``datetime`` does.
    """
    if ts is None:
        return None
    fraction, whole = math.modf(ts)
    second, micro = int(whole), round(fraction * 1_000_000)
    if micro >= 1_000_000:
        second, micro = second + 1, micro - 1_000_000
    elif micro < 0:  # before 1970: the fraction counts back from the next second
        second, micro = second - 1, micro + 1_000_000
    prefix = _ISO_SECONDS.get(second)
    if prefix is None:
        if len(_ISO_SECONDS) >= 256:
            _ISO_SECONDS.clear()
        prefix = _ISO_SECONDS[second] = dt.datetime.fromtimestamp(
            second, dt.UTC).isoformat(timespec="seconds")[:-6]
    return f"{prefix}.{micro // 1000:03d}Z"


_ISO_SECONDS: dict[int, str] = {}


def parse_iso(text: str) -> float:
    """Parse an ISO 8601 timestamp; a naive one is taken as UTC."""
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()
