"""The Store seam: everything the engine asks of persistent storage, and nothing about SQL.

A backend is one class implementing :class:`Store`; :func:`asyncjobs.store.factory.open_store`
picks it from the ``store`` setting, and nothing outside this package imports a concrete one.
Besides storage each backend supplies the two cluster roles (:mod:`asyncjobs.engine.roles`):
a :class:`~asyncjobs.engine.roles.Notifier` carrying signals between hosts and a
:class:`~asyncjobs.engine.roles.Leader` saying whether this host runs the cluster-wide duties.
Every backend runs the contract suite in ``tests/store_contract/``.

Conventions shared by every method: times are epoch seconds passed in by the caller (the
store never reads a clock, so tests drive it with a fake one); every status change is a
compare-and-set on the status the caller expects, checked against ``models.TRANSITIONS``;
a method that writes is atomic (all of it or none of it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..errors import WrongState
from ..models import TRANSITIONS, Claimed, JobRecord, JobSpec, Outcome, Status, Transition

if TYPE_CHECKING:  # the roles live in the engine; only their types are needed here
    from ..engine.roles import Leader, Notifier
    from .backup import BackupInfo


@dataclass(slots=True)  # not frozen: see models.HOT_RECORDS
class Submitted:
    id: int
    status: Status
    duplicate: bool = False  # an existing job with the same unique_key was returned


@dataclass(slots=True)  # not frozen: see models.HOT_RECORDS
class Start:
    """A worker began a reserved attempt at ``at`` (its own clock): now it is running."""

    claimed: Claimed
    at: float


@dataclass(slots=True)  # not frozen: see models.HOT_RECORDS
class Finished:
    """One attempt's end, ready to store: what happened and what it leads to."""

    claimed: Claimed
    outcome: Outcome
    transition: Transition
    at: float


@dataclass(slots=True)  # not frozen: see models.HOT_RECORDS
class Round:
    """What one dispatcher round wrote and read, in one transaction."""

    advanced: list[int]  # chain steps the finished attempts made due
    claimed: list[Claimed]  # reserved: still pending to readers until started
    next_due: float | None  # the earliest later run_at, read after the claim
    cancel: list[int] = field(default_factory=list)  # this host's jobs with a cancel requested
    # Jobs cancelled by this round: the rest of a chain whose step ended failed or
    # cancelled, and jobs a cancel came for while they were held, whose attempt then gave
    # them back or ended in a retry (with their chains' rest).
    cancelled: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Page:
    jobs: Sequence[JobRecord]
    next_cursor: int | None


@dataclass(frozen=True, slots=True)
class Stats:
    counts: Mapping[str, int]
    by_class: Mapping[str, Mapping[str, int]]
    finished_last_minute: int
    finished_last_hour: int
    per_minute: Sequence[tuple[int, int, int]]  # (minute start, completed, failed) last hour


@dataclass(frozen=True, slots=True)
class CancelResult:
    """What a cancel found: the job was pending (now cancelled) or is running.

    For a running job the store has only marked it cancel-requested: the host running it
    kills it (told through the notifier, or seeing the mark when it launches) and records
    ``cancelled`` itself.
    """

    previous: Status
    cancelled_ids: Sequence[int]  # the job and any chain steps cancelled with it


@dataclass(frozen=True, slots=True)
class ScheduleState:
    name: str
    expression: str
    next_run: float
    last_run: float | None
    last_job_id: int | None


def check_transition(job_id: int, old: Status, new: Status) -> None:
    """Raise ``WrongState`` unless ``models.TRANSITIONS`` allows ``old -> new``: every status
    change a store makes passes here first."""
    if new not in TRANSITIONS[old]:
        raise WrongState(f"job {job_id} cannot go from {old.value} to {new.value}")


@dataclass(frozen=True, slots=True)
class HostRow:
    """One host as registered in the store; ``expires_at`` is its heartbeat plus its lease."""

    id: str
    url: str
    pid: int
    hostname: str
    started_at: float
    heartbeat_at: float
    expires_at: float
    running: int = 0  # attempts this host holds (filled in by :meth:`Store.hosts`)
    leader: bool = False  # whether it holds the leader role now (filled in likewise)

    def alive(self, now: float) -> bool:
        return self.expires_at > now

    def state(self, now: float) -> str:
        """``alive``; ``stopped`` if it said so as it shut down (:meth:`Store.retire_host`
        ends the lease at the last heartbeat); ``gone`` if its lease ran out instead."""
        if self.alive(now):
            return "alive"
        return "stopped" if self.expires_at <= self.heartbeat_at else "gone"


@runtime_checkable
class FileBackup(Protocol):
    """What a store offers when it can copy itself to one file (SQLite; a PostgreSQL store
    is backed up with the database's own tools)."""

    async def backup(self, target: Path) -> BackupInfo:
        """A consistent copy of the live store at the new file ``target``."""
        ...


class Store(Protocol):
    """Persistent storage for jobs, attempts, schedules and hosts (see the module docstring)."""

    async def open(self) -> None:
        """Connect and migrate the schema to the current version (once, even if several
        hosts start together).  Raises :class:`~asyncjobs.errors.Unavailable` if unreachable."""
        ...

    async def close(self) -> None: ...

    def notifier(self) -> Notifier:
        """The notifier for this backend (same object on every call)."""
        ...

    def leader(self, host_id: str) -> Leader:
        """The leader role for the host ``host_id`` (SQLite: always the leader)."""
        ...

    # -- hosts -----------------------------------------------------------------------------

    async def register_host(self, host: HostRow) -> None:
        """Insert or replace ``host``'s row.

        A single-host backend (SQLite: the data directory's lock admits one host) also ends
        the lease of every other registered host here, so their attempts become orphans.
        """
        ...

    async def heartbeat(self, host_id: str, now: float, expires_at: float) -> None:
        """Extend ``host_id``'s lease to ``expires_at`` (re-creating a row that was removed
        raises nothing: a host whose row is gone simply stays unlisted until it registers)."""
        ...

    async def shared_token(self, proposed: str) -> str:
        """The API token every host of this store accepts: the one stored by the first host
        that asked, or ``proposed`` (stored now) if none was.  A single-host store returns
        ``proposed``."""
        ...

    async def retire_host(self, host_id: str, now: float) -> None:
        """End ``host_id``'s lease now (clean shutdown): its heartbeat and its lease's end
        both become ``now``, which is how a stopped host is told from a dead one
        (:meth:`HostRow.state`); its row stays for the history."""
        ...

    async def hosts(self, now: float) -> list[HostRow]:
        """Every registered host, oldest first, with how many attempts each holds running
        and whether it is the leader now.

        Hosts whose lease ended more than a day before ``now`` are left out."""
        ...

    # -- jobs ------------------------------------------------------------------------------

    async def submit(self, specs: Sequence[JobSpec], now: float) -> list[Submitted]:
        """Insert jobs (with their chain steps) atomically; all or none, in order.

        A spec whose ``unique_key`` matches a pending or running job is not inserted: its
        entry is that job's id and status with ``duplicate=True``.  Ids increase.
        """
        ...

    async def dispatch_round(self, *, host: str, progress: Mapping[int, tuple[float, str | None]],
                             started: Sequence[Start] = (), finished: Sequence[Finished],
                             now: float, limit: int, concurrency: Mapping[str, int],
                             outrank: tuple[int, int] | None = None) -> Round:
        """One dispatcher round, atomically, in this order:

        1. store ``progress`` (fraction, message) of running jobs;
        2. make the ``started`` attempts (reserved, now begun by a worker at ``Start.at``)
           ``pending -> running``, each with a new attempt row naming ``host``;
        3. record ``finished`` (as :meth:`finish`), collecting the chain steps made due
           (``Round.advanced``) and those cancelled (``Round.cancelled``); an attempt that
           never started only loses its reservation (or, cancelled, ends so);
        4. act on the cancel marks (before the claim, which never reserves a marked job):
           cancel a marked job that ``finished`` made pending again (its attempt was given
           back, or ended in a retry: ``Round.cancelled``, with the pending rest of its
           chain), and list ``host``'s running (and reserved) jobs marked cancel-requested
           (``Round.cancel``), so a cancel that raced the claim, or whose signal was lost,
           still reaches the job.  A mark lasts until its job is finished: no attempt's
           end, give-back, retry or release of a dead host's reservation drops it;
        5. reserve up to ``limit`` due jobs (``run_at <= now``; none if ``limit`` is 0) for
           ``host``: best first by priority, then ``run_at``, then id -- or, with ``limit`` 0
           and ``outrank`` ``(rank, n)``, up to ``n`` due jobs of a priority ranked better
           than ``rank``.  A reserved job stays ``pending`` to every reader and is skipped by
           later claims.  A class in ``concurrency`` never has more running plus reserved
           jobs than its limit, counted over the whole store (every host), inside this same
           transaction;
        6. read the earliest ``run_at`` of a pending job later than ``now``.

        A job reserved here is reserved by no other round (on any host) until it is finished
        or given back.
        """
        ...

    async def finish(self, finished: Sequence[Finished]) -> list[int]:
        """Record attempt ends and apply their transitions; return chain steps made due.

        Each job moves from ``running`` only (compare-and-set): a job no longer running is
        left as it is and logged; the rest are still applied.  A completed chain step makes
        the next step due with ``previous`` set to its result; a step ending failed or
        cancelled cancels the rest of its chain.  An outcome with ``started`` false was no
        execution: its attempt row is removed and no attempt is counted.
        """
        ...

    async def orphans(self, now: float, *, alive: str) -> list[Claimed]:
        """Running jobs whose host is gone (lease ended by ``now``, or no host recorded), as
        they were claimed, with ``cancel_requested`` set for those cancelled meanwhile;
        never those of ``alive`` (the caller's own host)."""
        ...

    async def cancel(self, job_id: int, now: float, reason: str) -> CancelResult:
        """Cancel a pending job (and the pending rest of its chain) at once; mark a running
        one cancel-requested (listed by its host's next :meth:`dispatch_round`) and change
        nothing else.

        Raises ``JobNotFound``, or ``WrongState`` for a finished job.
        """
        ...

    async def retry(self, job_id: int, now: float) -> list[int]:
        """Put a failed or cancelled job back (due ``now``, fresh attempt budget) with the
        steps its failure cancelled; return the ids made pending, the job first.

        Raises ``JobNotFound``; ``WrongState`` for another status or when another pending or
        running job holds its ``unique_key``.
        """
        ...

    async def get(self, job_id: int) -> JobRecord | None:
        """The job with its attempt history (oldest first), or None."""
        ...

    async def list_jobs(self, *, status: Status | None = None, cls: str | None = None,
                        chain: int | None = None, limit: int = 50,
                        cursor: int | None = None) -> Page:
        """Jobs newest first (by id), filtered; ``cursor`` is the last id of the page before;
        attempt histories are not filled in."""
        ...

    async def stats(self, now: float) -> Stats:
        """Counts per status and class (kept exact by every write) and the last hour's
        finished attempts per minute."""
        ...

    async def prune(self, before: float, statuses: Sequence[Status], limit: int) -> int:
        """Delete up to ``limit`` jobs in ``statuses`` finished before ``before``, with their
        attempts; return how many."""
        ...

    # -- schedules -------------------------------------------------------------------------

    async def schedule_states(self) -> dict[str, ScheduleState]: ...

    async def save_schedule(self, name: str, *, expression: str, next_run: float) -> None:
        """Create or reset a schedule's timing (a new or changed expression)."""
        ...

    async def fire_schedule(self, name: str, *, expression: str, spec: JobSpec, slot: float,
                            next_run: float, now: float) -> int | None:
        """Fire the schedule's ``slot``: compare-and-set on its stored ``next_run == slot``.

        On a hit, enqueue ``spec`` and move ``next_run`` on, atomically, and return the job
        id.  On a miss (another scheduler fired the slot, or the schedule was reset) change
        nothing and return None.
        """
        ...
