"""Claims due jobs, launches their attempts, and turns outcomes into stored transitions.

One ``tick()`` does one round: make ``running`` the attempts workers reported starting
since the last round (with the worker's own start time), record the attempts that ended
(each decided by :func:`policy.decide`), then reserve as many due jobs as the launcher can
take (``launcher.capacity``: the workers plus, for short jobs, enough queued per warm worker
to last twice the measured round time, so workers never wait for the store between two
jobs; the round's duration is passed on with ``launcher.pace``) and launch them.  A
reserved job is still ``pending`` to every reader: ``running`` means a worker runs it, never
more than ``workers.max``.  When
the launcher is full and a due job outranks a reserved one that has not started, the round
reserves the better one anyway: the launcher puts it ahead, taking the worse one back from
its worker's queue.  All of it, with any progress to store and the next due time to read,
is one store op: one transaction.
``run()`` ticks, then sleeps until the earliest future ``run_at`` or until woken by new work
or a finished attempt: a timer, not a polling loop.  That earliest ``run_at`` is read in the
round's own transaction, and a submit wakes the dispatcher only when its job is due before
the timer would fire, so a job submitted for later costs the dispatcher nothing.
``drain()`` ticks until nothing is due or running, which makes tests deterministic with an
injected clock.

The dispatcher hears other parties only through the notifier (``due`` wakes it, ``cancel``
stops an attempt it runs) and keeps no truth another host would need: per-class
``concurrency`` is counted by the store inside the claim, and a cancel is also a mark in the
store that each round reads back, so one that raced the claim or lost its signal still lands.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass

from ..clock import Clock
from ..config import Settings
from ..models import Claimed, ErrorInfo, Isolation, Outcome, OutcomeKind, Status
from ..store import Finished, Round, Start, Store
from ..workers.launcher import Launcher
from . import policy
from .logs import JobLog
from .roles import Event, Notifier

log = logging.getLogger("asyncjobs.engine.dispatcher")

STORAGE_RETRY = 1.0  # seconds between attempts to write after a storage error
PROGRESS_FLUSH = 2.0  # seconds between progress writes to the store
START_FLUSH = 0.005  # seconds a reported start may wait for a round that would come anyway
ROUND_TIME_WEIGHT = 0.2  # of the newest round in the moving average the launcher paces on


@dataclass(slots=True)
class _Running:
    """An attempt handed to the launcher: reserved, and running once ``began`` is set."""

    claimed: Claimed
    started: float  # monotonic, at launch
    launched_at: float  # clock.now() at launch: no attempt starts before it
    task: asyncio.Task[None]
    began: float | None = None  # clock.now() when the worker started it


class Dispatcher:
    def __init__(self, *, store: Store, launcher: Launcher, settings: Settings, clock: Clock,
                 events: Notifier, job_log: JobLog, host_id: str = "local",
                 rand: policy.Random = random.random) -> None:
        self.host_id = host_id
        self.store = store
        self.launcher = launcher
        self.settings = settings
        self.clock = clock
        self.events = events
        self.job_log = job_log
        self.rand = rand
        self.running: dict[int, _Running] = {}
        self._concurrency = {name: job.concurrency for name, job in settings.jobs.items()
                             if job.concurrency is not None}
        # Attempts stopped before the launcher took them (cancelled right after the claim).
        self._stop_before_start: dict[int, OutcomeKind] = {}
        self._ended: list[tuple[Claimed, Outcome, float, float]] = []
        self._starts: list[Start] = []
        self._unwritten: list[Finished] = []
        self._unwritten_starts: list[Start] = []
        self._dirty_progress: dict[int, tuple[float, str | None]] = {}
        self._last_progress_flush = 0.0
        self._woken = False
        self._start_timer: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._next_due: float | None = None  # earliest future run_at, as of the last round
        self._stopping = False
        self._storage_ok = True
        self._round_time: float | None = None  # moving average, seconds
        self._unlisten = events.listen(self._on_event)

    def close(self) -> None:
        """Stop hearing the notifier (the host is closing)."""
        self._unlisten()

    def _on_event(self, event: Event) -> None:
        kind = event.get("type")
        if kind == "due":
            self.due_at(float(event["run_at"]))
        elif kind == "cancel" and not self.stop_attempt(int(event["id"])):
            self.wake()  # claimed a moment ago, perhaps: the round reads the store's mark

    # -- waking ------------------------------------------------------------------------------

    def wake(self) -> None:
        """New work may be due: tick soon instead of sleeping out the timer."""
        self._woken = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def due_at(self, run_at: float) -> None:
        """A job was stored to run at ``run_at``: wake only if that is before the timer."""
        if run_at <= self.clock.now() or self._next_due is None or run_at < self._next_due:
            self._next_due = run_at
            self.wake()

    async def _wait(self, timeout: float | None) -> None:
        """Sleep until :meth:`wake` or ``timeout`` seconds, whichever comes first.

        A bare future and a timer handle: cheaper than ``wait_for`` on an Event, which
        makes a task per sleep, and the dispatcher sleeps once per round.
        """
        if self._woken:
            return
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = (loop.call_later(timeout, _resolve, waiter) if timeout is not None else None)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    # -- one round ---------------------------------------------------------------------------

    async def tick(self) -> int:
        """Record ended attempts, then claim and launch due jobs; return how many launched."""
        self._woken = False
        now = self.clock.now()
        started = self._unwritten_starts + self._starts
        finished = self._unwritten + [self._decide(*ended) for ended in self._ended]
        self._ended, self._starts = [], []
        self._unwritten, self._unwritten_starts = [], []
        free = 0 if self._stopping else self.launcher.capacity - len(self.running)
        outrank = self._outrank() if free <= 0 and not self._stopping else None
        progress = self._take_progress(force=bool(finished))
        if not (finished or started or progress or free > 0 or outrank):
            return 0
        began = self.clock.monotonic()
        try:
            done = await self.store.dispatch_round(
                host=self.host_id, progress=progress, started=started, finished=finished,
                now=now, limit=max(free, 0), concurrency=self._concurrency, outrank=outrank)
        except Exception as exc:  # storage trouble (or a bug in a write): keep, retry later
            # The attempts are still as they were on disk until this write succeeds.
            self._unwritten, self._unwritten_starts = finished, started
            for job_id, value in progress.items():
                self._dirty_progress.setdefault(job_id, value)
            self._storage_error("record the dispatcher's round", exc)
            self.job_log.flush()
            return 0
        self.job_log.flush()
        self._storage_ok = True
        self._paced(self.clock.monotonic() - began)
        self._publish_round(done, started, finished, now)
        if free > 0:
            self._next_due = done.next_due
        for job in done.claimed:
            self._launch(job)
        for job_id in done.cancel:
            self.stop_attempt(job_id)
        return len(done.claimed)

    def _paced(self, took: float) -> None:
        """Tell the launcher how long rounds take: what it queues per worker covers them."""
        average = self._round_time
        self._round_time = took if average is None else \
            average + ROUND_TIME_WEIGHT * (took - average)
        self.launcher.pace(self._round_time)

    def _publish_round(self, done: Round, started: list[Start], finished: list[Finished],
                       now: float) -> None:
        """Tell readers what the round stored (only now: one woken by an event must find
        the change in the store)."""
        for s in started:
            self._publish(s.claimed.id, Status.RUNNING, s.claimed.attempt, s.at)
        for f in finished:
            self._publish(f.claimed.id, f.transition.status, f.claimed.attempt, f.at)
        for step_id in done.advanced:
            self.events.publish({"type": "job", "id": step_id, "status": "pending"})
        if not done.cancelled:
            return
        # Cancelled by the round: a broken chain's rest, or jobs a cancel came for while an
        # attempt held them, which then ended in a retry or gave them back.
        ended = {f.claimed.id: f.claimed for f in finished}
        for job_id in done.cancelled:
            self.events.publish({"type": "job", "id": job_id, "status": "cancelled"})
            c = ended.get(job_id)
            if c is not None:
                self.job_log.event(now, job_id, cls=c.cls, method=c.method, attempt=None,
                                   status="cancelled", note="cancel_requested=true")
        self.job_log.flush()

    def _outrank(self) -> tuple[int, int] | None:
        """With no room left: the worst priority rank among the attempts not started yet,
        and how many those are; a due job ranked better may still be reserved (it goes
        ahead of them).  None if nothing waits or all that waits is of the best rank."""
        waiting = [r.claimed.priority for r in self.running.values() if r.began is None]
        worst = max(waiting, default=0)
        return (worst, len(waiting)) if worst > 0 else None

    @property
    def started(self) -> int:
        """Attempts a worker has started and that have not ended: what ``running`` counts."""
        return sum(1 for r in self.running.values() if r.began is not None)

    def _take_progress(self, *, force: bool) -> dict[int, tuple[float, str | None]]:
        now = self.clock.monotonic()
        if not self._dirty_progress or (not force and
                                        now - self._last_progress_flush < PROGRESS_FLUSH):
            return {}
        self._last_progress_flush = now
        dirty, self._dirty_progress = self._dirty_progress, {}
        return dirty

    def _storage_error(self, what: str, exc: BaseException | None) -> None:
        self._storage_ok = False
        log.error("could not %s: %s; retrying in %ss", what, exc, STORAGE_RETRY)

    def _decide(self, claimed: Claimed, outcome: Outcome, at: float,
                duration: float) -> Finished:
        transition = policy.decide(
            claimed, outcome, job_class=self.settings.job_class(claimed.cls),
            retry=self.settings.retry, now=at, max_interruptions=self.settings.max_interruptions,
            rand=self.rand)
        self._log_attempt(claimed, outcome, transition.status, at, duration)
        return Finished(claimed, outcome, transition, at)

    def _log_attempt(self, c: Claimed, outcome: Outcome, status: Status, at: float,
                     duration: float) -> None:
        note = f"outcome={outcome.kind.value}" if outcome.kind.value != status.value else ""
        self.job_log.event(at, c.id, cls=c.cls, method=c.method, attempt=c.attempt,
                           status=status.value, duration=duration, note=note)
        if outcome.error is not None and outcome.kind is not OutcomeKind.CANCELLED:
            self.job_log.error(at, c.id, cls=c.cls, method=c.method, attempt=c.attempt,
                               outcome=outcome.kind.value, error=outcome.error)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("job %s attempt %s ended %s -> %s", c.id, c.attempt, outcome.kind.value,
                      status.value)

    def _publish(self, job_id: int, status: Status, attempt: int, at: float) -> None:
        self.events.publish({"type": "job", "id": job_id, "status": status.value,
                             "attempt": attempt})

    # -- attempts ----------------------------------------------------------------------------

    def _isolation(self, cls: str) -> Isolation:
        job = self.settings.job_class(cls)
        return (job.isolation if job and job.isolation else None) or \
            self.settings.workers.isolation

    def _launch(self, claimed: Claimed) -> None:
        # Unnamed: a name is formatted and set per task, and the coroutine's repr already
        # says what it is (Dispatcher._attempt) in a dump of the tasks.
        task = asyncio.create_task(self._attempt(claimed))
        self.running[claimed.id] = _Running(claimed, self.clock.monotonic(), self.clock.now(),
                                            task)

    def _on_start(self, job_id: int, ago: float) -> None:
        """A worker reports it started ``job_id`` ``ago`` seconds ago: running from then."""
        entry = self.running.get(job_id)
        if entry is None or entry.began is not None:
            return
        entry.began = at = max(entry.launched_at, self.clock.now() - ago)
        self._starts.append(Start(entry.claimed, at))
        c = entry.claimed
        self.job_log.event(at, c.id, cls=c.cls, method=c.method, attempt=c.attempt,
                           status="running")
        # Published once the round has stored it (see tick): a reader woken by the event
        # must find the job running.  Short jobs end (and wake us) within a few ms: their
        # start rides with that round, which halves the rounds of a drain; a long job shows
        # ``running`` a moment later.
        if self._start_timer is None:
            self._start_timer = asyncio.get_running_loop().call_later(START_FLUSH,
                                                                      self._flush_starts)

    def _flush_starts(self) -> None:
        self._start_timer = None
        if self._starts:
            self.wake()

    async def _attempt(self, claimed: Claimed) -> None:
        try:
            stopped = self._stop_before_start.pop(claimed.id, None)
            if stopped is not None:  # never reached a worker: no execution to count
                outcome = Outcome(stopped, error=ErrorInfo(
                    stopped.value.capitalize(), f"{stopped.value} before it started"),
                    started=False)
            else:
                outcome = await self.launcher.run(claimed, self._isolation(claimed.cls),
                                                  self._on_progress, self._on_start)
        except asyncio.CancelledError:
            # The host is going down hard; the attempt stays "running" on disk and is
            # recovered as interrupted at the next start.  Never a job failure.
            raise
        except Exception as exc:
            log.exception("launcher failed for job %s", claimed.id)
            outcome = Outcome(OutcomeKind.CRASHED, error=ErrorInfo(
                "LauncherError", f"{type(exc).__name__}: {exc}"))
        entry = self.running[claimed.id]
        now = self.clock.now()
        duration = self.clock.monotonic() - entry.started
        if outcome.started and entry.began is None:
            # Ran but never said when it started (it died first, was refused, or the launcher
            # does not report starts): it started at most ``duration`` ago.
            self._on_start(claimed.id, duration)
        elif entry.began is not None:
            duration = max(0.0, now - entry.began)
        self.running.pop(claimed.id)
        self._stop_before_start.pop(claimed.id, None)  # asked when it had already ended
        self._ended.append((claimed, outcome, now, duration))
        self.wake()

    def _on_progress(self, job_id: int, fraction: float, message: str | None) -> None:
        self._dirty_progress[job_id] = (fraction, message)
        self.events.publish({"type": "progress", "id": job_id, "fraction": fraction,
                             "message": message})

    def stop_attempt(self, job_id: int, kind: OutcomeKind = OutcomeKind.CANCELLED) -> bool:
        """Kill an attempt this host runs (cancel, or interrupt at shutdown); False if it
        runs no such attempt."""
        if job_id not in self.running:
            return False
        if not self.launcher.stop(job_id, kind):
            # Launched a moment ago and not yet handed to the launcher: stop it at the door.
            self._stop_before_start.setdefault(job_id, kind)
        return True

    # -- loops -------------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        return not (self.running or self._ended or self._unwritten or self._starts
                    or self._unwritten_starts)

    async def drain(self) -> None:
        """Tick until nothing is running and nothing is due at the clock's current time."""
        while True:
            launched = await self.tick()
            if self.running:
                await self._wait(None)
            elif not launched and self.idle and self._storage_ok:
                return

    def _sleep_time(self) -> float | None:
        if not self._storage_ok:
            return STORAGE_RETRY
        timeout: float | None = None
        if self._dirty_progress:
            timeout = PROGRESS_FLUSH
        if self._stopping or len(self.running) >= self.launcher.capacity:
            return timeout
        now = self.clock.now()
        due = self._next_due
        if due is not None:
            timeout = min(timeout or due - now, max(0.0, due - now))
        return timeout

    async def run(self) -> None:
        """Dispatch until :meth:`stop`: tick, then sleep until due or woken."""
        while True:
            try:
                await self.tick()
            except Exception:
                # A bug must not stop dispatching for good: say so loudly, then go on.
                log.exception("dispatcher round failed; trying again in %ss", STORAGE_RETRY)
                self._storage_ok = False
            if self._stopping and self.idle:
                return
            await self._wait(self._sleep_time())

    async def recover(self) -> int:
        """Record attempts dead hosts left running as interrupted (their jobs run again) or,
        if a cancel came for them meanwhile, cancelled.

        Only attempts whose host is gone (see :meth:`Store.orphans`): a live host's are
        left alone, and so are this host's own."""
        orphans = await self.store.orphans(self.clock.now(), alive=self.host_id)
        now = self.clock.now()
        finished = [self._decide(c, _orphaned(c), now, 0.0) for c in orphans]
        if finished:
            await self.store.finish(finished)
            for f in finished:
                self._publish(f.claimed.id, f.transition.status, f.claimed.attempt, f.at)
            log.warning("recovered %d interrupted job(s): %s", len(finished),
                        ", ".join(str(c.id) for c in orphans[:20]))
        return len(finished)

    def begin_stop(self) -> None:
        """Claim nothing more; give back what has not started; running attempts go on."""
        self._stopping = True
        self.launcher.release_waiting(OutcomeKind.INTERRUPTED)
        self.wake()

    def interrupt_all(self) -> None:
        for job_id in list(self.running):
            self.launcher.stop(job_id, OutcomeKind.INTERRUPTED)


def _orphaned(claimed: Claimed) -> Outcome:
    """How an attempt whose host died ends: interrupted (it runs again), or cancelled if a
    cancel came for it meanwhile (the host that would have killed it is gone)."""
    if claimed.cancel_requested:
        return Outcome(OutcomeKind.CANCELLED, error=ErrorInfo(
            "Cancelled", "cancelled by request; its host stopped while it ran"))
    return Outcome(OutcomeKind.INTERRUPTED, error=ErrorInfo(
        "Interrupted", "the host stopped while this attempt ran"))


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
