"""Runs attempts in worker subprocesses and reports each one as an :class:`Outcome`.

Two isolation modes share one child entry point (:mod:`asyncjobs.workers.child`): ``pool`` keeps
warm workers and feeds them jobs over their stdin, recycling each after
``max_jobs_per_worker`` jobs or after any kill; ``process`` gives each attempt a fresh
process.  On POSIX that process is forked by the fork server (:mod:`asyncjobs.workers.forkserver`,
one warm server started on first use: a fork costs a millisecond where an interpreter
start-up costs ~50), as a :class:`~asyncjobs.workers.forked.ForkedJob`; elsewhere, or with
``fork=False``, it is a ``once`` :class:`~asyncjobs.workers.pool.WorkerProcess` spawned per
attempt.  Both give the same :class:`Outcome`.  Warm workers are forked too, by a fork
server of their own (so a recycle costs a fork, and no warm worker is a copy of a server
that handled an attempt's arguments), or spawned as their own interpreter without fork.
Timeouts and cancels never rely on the job cooperating: the worker's whole process group
gets SIGTERM, then SIGKILL after ``kill_grace``, and the process is always reaped.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import itertools
import os
import stat
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Protocol

import orjson

from .. import files
from ..config import Settings
from ..errors import Unavailable
from ..models import Claimed, ErrorInfo, Isolation, Outcome, OutcomeKind
from . import procs
from .attempt import NOT_STARTED, Ended, ProgressCallback, Slot, StartCallback, settle
from .forked import ForkedJob
from .forkserver import ForkServerProcess
from .pool import ALLOW_LIST, PIPELINE_DEPTH, WorkerProcess

STEAL_AFTER = 0.05  # seconds a job must have run before an idle worker takes what waits behind it
QUEUE_AHEAD_COVERS = 0.005  # seconds of work a warm worker keeps queued ahead, at least ...
MAX_COVER = 0.05  # ... and at most, however slow the store's rounds are
RUNTIME_WEIGHT = 0.2  # of the newest sample in a class's moving average run time


class Launcher(Protocol):
    async def run(self, job: Claimed, isolation: Isolation, on_progress: ProgressCallback,
                  on_start: StartCallback | None = None) -> Outcome:
        """Run one attempt to its end, whatever that end is; never raises for job faults.

        ``on_start`` is called when a worker really begins the job, with how long ago that
        was by the worker's own clock (so the caller can place it on its own clock).
        """
        ...

    def stop(self, job_id: int, kind: OutcomeKind) -> bool:
        """Kill a running attempt, which then ends with ``kind`` (cancelled or interrupted)."""
        ...

    def release_waiting(self, kind: OutcomeKind) -> None:
        """End, as ``kind``, every attempt that has not reached a worker yet (shutdown)."""
        ...

    @property
    def capacity(self) -> int:
        """How many attempts it takes at once (running plus queued); the dispatcher's limit."""
        ...

    def pace(self, round_time: float) -> None:
        """The dispatcher's rounds take ``round_time`` seconds (a moving average): what a
        worker has queued must last that long, twice over, or it idles between rounds."""
        ...

    async def aclose(self) -> None: ...


Worker = WorkerProcess | ForkedJob


def prepare_run_dir(settings: Settings, run_dir: Path) -> None:
    """Write the allow-list snapshot the workers re-check, and clear a dead host's files."""
    _private_run_dir(run_dir)
    for pattern in ("worker-*.out", "forkserver-*.err"):
        for stale in run_dir.glob(pattern):
            stale.unlink(missing_ok=True)
    jobs = {name: {"module": job.module, "methods": list(job.methods),
                   "memory_limit": job.memory_limit or settings.workers.memory_limit}
            for name, job in settings.jobs.items()}
    # The bounds a worker enforces around each job (asyncjobs.workers.guard.Limits).
    limits = {"kill_grace": settings.workers.kill_grace,
              "max_memory_per_worker": settings.workers.max_memory_per_worker}
    # Written aside and renamed over: a symlink a job left at the name is replaced, not
    # followed.
    staged = run_dir / f"{ALLOW_LIST}.new"
    with files.create_private(staged) as f:
        f.write(orjson.dumps({"jobs": jobs, "limits": limits}))
    os.replace(staged, run_dir / ALLOW_LIST)


def _private_run_dir(run_dir: Path) -> None:
    """Create ``run_dir`` 0700, or make an existing one 0700: the workers' output and the
    allow-list snapshot are as private as the data directory around it.

    As for the data directory (:func:`asyncjobs.engine.datadir.prepare`), the directory is
    checked where it really is (a symlink is followed: it is this user's to make) and one
    owned by another user is refused: its owner could rewrite what the workers re-check.
    One of ours that others may write in (versions before this rule made it with the
    umask's mode, 0775 under a 002 umask) is narrowed, not refused: nothing planted in it
    is trusted, since every file the host reads there is cleared or created afresh here
    and by :func:`asyncjobs.files.create_private`.
    """
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.name != "posix":
        return
    info = run_dir.stat()
    if info.st_uid != os.geteuid():
        raise Unavailable(f"the workers' run directory {run_dir} belongs to another user "
                          f"(uid {info.st_uid}); remove it (the host makes a new one)")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(run_dir, 0o700)


class SubprocessLauncher:
    """The real :class:`Launcher`: worker subprocesses, warm or fresh.

    At most ``workers.max`` workers are busy at once (a pool worker with a non-empty queue,
    or a ``process`` attempt), which is the §4 limit on concurrent attempts.  Attempts beyond
    what can run wait -- reserved on disk, still ``pending`` to readers -- here, best first
    (priority, then claim order), or a few in a warm worker's queue: only as many as cover
    the host's round trip for that class's measured run time (so none behind long jobs).
    Whatever waits in a queue is taken back (a skip) when an attempt of a better priority
    needs its place, or when an idle worker could start that better one now.

    ``fork``: fork ``process`` attempts and warm workers from fork servers (the default
    where the OS can fork, :data:`asyncjobs.workers.procs.CAN_FORK`), or spawn an
    interpreter per attempt and per warm worker.
    """

    def __init__(self, settings: Settings, run_dir: Path, *, fork: bool | None = None) -> None:
        self.settings = settings
        self.run_dir = run_dir
        prepare_run_dir(settings, run_dir)
        self._cover = QUEUE_AHEAD_COVERS
        self.fork = procs.CAN_FORK if fork is None else fork
        self._pool: list[WorkerProcess] = []
        self._fresh: set[Worker] = set()  # process-isolation attempts, one each
        # One fork server per isolation mode: warm workers are forked from one that never
        # handles an attempt's request, so none inherits another job's arguments or results
        # (a fork copies the freed memory too, which no object reaches any more).
        self._servers: dict[Isolation, ForkServerProcess] = {}
        self._server_lock = asyncio.Lock()
        self._spawning = 0
        self._attempts: dict[int, Slot] = {}
        self._waiting: list[Slot] = []  # in _assign, sorted by key: only the first may pick
        self._claims = itertools.count()
        self._runtime: dict[str, float] = {}  # moving average run time per class, seconds
        self._typical: float | None = None  # the same over every class run on warm workers
        self._steal_timer: asyncio.TimerHandle | None = None
        self._numbers = itertools.count(1)
        self._closing: set[asyncio.Task[None]] = set()

    def _room_changed(self) -> None:
        self._wake_first()
        self._steal()

    def _wake_first(self) -> None:
        if self._waiting:
            _wake(self._waiting[0])

    def _steal(self) -> None:
        """An idle warm worker takes work queued behind a *long* job on another one.

        Only behind a job that has run ``STEAL_AFTER`` seconds: a short one ends before a
        steal could pay off, and stealing costs a round trip.  A timer looks again when the
        youngest candidate comes of age.
        """
        if not any(not w.queue and w.accepting for w in self._pool) or \
                self._busy() >= self.settings.workers.max:
            return  # no idle warm worker (a drain's usual case: found first, cheaply)
        now = asyncio.get_running_loop().time()
        wait: float | None = None
        for worker in self._pool:
            found = worker.stealable()
            if found is None:
                continue
            slot, began = found
            if now - began >= STEAL_AFTER:
                worker.request_skip(slot)  # if taken back, run() assigns it again
                return
            wait = min(wait or STEAL_AFTER, began + STEAL_AFTER - now)
        if wait is not None and (self._steal_timer is None or self._steal_timer.cancelled()
                                 or self._steal_timer.when() <= now):
            self._steal_timer = asyncio.get_running_loop().call_later(wait, self._steal)

    def _busy(self) -> int:
        return sum(1 for w in self._pool if w.queue) + len(self._fresh) + self._spawning

    @property
    def capacity(self) -> int:
        """Each worker's running attempt plus as many queued as a typical job needs (see
        :meth:`_depth`): short jobs are claimed in large rounds, which is what makes a
        drain fast; long ones (or jobs never measured) one per worker, so a host never sits
        on reserved work that another host's idle workers could run."""
        return self.settings.workers.max * self._ahead(self._typical)

    def pace(self, round_time: float) -> None:
        self._cover = min(MAX_COVER, max(QUEUE_AHEAD_COVERS, 2 * round_time))

    def _depth(self, cls: str) -> int:
        """How many attempts of ``cls`` one warm worker may hold (the running one included):
        enough queued ahead to cover the dispatcher's rounds, none behind a long job (nor
        behind one never measured: it may be long)."""
        return self._ahead(self._runtime.get(cls))

    def _ahead(self, runtime: float | None) -> int:
        if runtime is None:
            return 1
        return 1 + min(PIPELINE_DEPTH - 1, int(self._cover / max(runtime, 1e-6)))

    def _measured(self, cls: str, seconds: float, *, warm: bool) -> None:
        old = self._runtime.get(cls)
        self._runtime[cls] = seconds if old is None else \
            old + RUNTIME_WEIGHT * (seconds - old)
        if not warm:  # a fresh worker per attempt: nothing is ever queued ahead of one
            return
        typical = self._typical
        # At most double per sample: a reading inflated by the host's own busy moment (it
        # read the answer late) would otherwise shrink every queue, and the next claims.
        self._typical = seconds if typical is None else \
            typical + RUNTIME_WEIGHT * (min(seconds, 2 * typical) - typical)

    def _queued(self) -> list[tuple[WorkerProcess, Slot]]:
        """Attempts waiting in a warm worker's queue that it has not started (nor is asked
        to give back): the ones a better attempt may take back."""
        return [(w, slot) for w in self._pool if w.alive for slot in list(w.queue)[1:]
                if not slot.skip_pending and not slot.turn.done()]

    def _overtake(self, slot: Slot) -> bool:
        """Keep priority order across workers; True if ``slot`` must wait for it.

        A queued attempt of a better priority goes first: it is taken back (to start on the
        worker ``slot`` would take), and ``slot`` waits.  Attempts of a worse priority queued
        ahead are taken back, so ``slot`` goes before them.
        """
        rank = slot.key[0]
        if all(not w.ranks or (len(w.ranks) == 1 and rank in w.ranks) for w in self._pool):
            return False  # nothing queued of another rank: the common case, found cheaply
        queued = self._queued()
        better = [(w, s) for w, s in queued if s.key[0] < rank]
        for worker, other in better or [(w, s) for w, s in queued if s.key[0] > rank]:
            worker.request_skip(other)
        return bool(better)

    def _pick(self, slot: Slot, isolation: Isolation) -> WorkerProcess | None:
        """A worker with room for ``slot``, or None (then spawn, or wait)."""
        for worker in [w for w in self._pool if not w.accepting and not w.queue]:
            self._pool.remove(worker)
            self._retire(worker)
        if self._busy() < self.settings.workers.max:
            # A free slot: an idle warm worker, else (None) the caller starts a new worker.
            # Queueing behind a busy worker comes only when all slots are busy.
            if isolation is Isolation.POOL:
                return next((w for w in self._pool if w.accepting and not w.queue), None)
            return None
        if isolation is Isolation.POOL:
            depth = self._depth(slot.job.cls)
            queued = [w for w in self._pool if w.accepting and 0 < len(w.queue) < depth]
            if queued:
                return min(queued, key=lambda w: len(w.queue))
        return None

    async def _assign(self, isolation: Isolation, slot: Slot) -> Worker | None:
        """Find or start a worker for ``slot``, best attempt first; None if it was stopped
        while waiting."""
        bisect.insort(self._waiting, slot, key=_key)
        try:
            while not slot.future.done():
                if self._waiting[0] is slot and not self._overtake(slot):
                    worker = self._pick(slot, isolation)
                    if worker is not None:
                        return worker
                    if self._busy() < self.settings.workers.max:
                        self._waiting.remove(slot)  # the next may go while this one spawns
                        self._wake_first()
                        return await self._spawn(isolation)
                slot.wake = asyncio.get_running_loop().create_future()
                await slot.wake
            return None
        finally:
            if slot in self._waiting:
                self._waiting.remove(slot)
            self._wake_first()

    async def _spawn(self, isolation: Isolation) -> Worker:
        self._spawning += 1
        try:
            if isolation is Isolation.PROCESS and self.fork:
                server = await self._fork_server(Isolation.PROCESS)
                forked = ForkedJob(server, self.run_dir / f"worker-f{next(self._numbers)}.out",
                                   settings=self.settings)
                self._fresh.add(forked)
                return forked
            if isolation is Isolation.POOL:
                worker = await self._warm_worker()
                self._pool.append(worker)
                return worker
            worker = await WorkerProcess.spawn(self.settings, self.run_dir, once=True,
                                               number=next(self._numbers),
                                               on_room=self._room_changed)
            self._fresh.add(worker)
            return worker
        finally:
            self._spawning -= 1

    async def _warm_worker(self) -> WorkerProcess:
        """A new warm worker: forked by the warm workers' fork server where the OS can fork
        (a recycle then costs a fork), else its own interpreter.  A server found dead on
        the way (it went away before it forked this one) is replaced once: the attempt
        waiting for this worker has not started, and must not be charged for it."""
        if not self.fork:
            return await WorkerProcess.spawn(self.settings, self.run_dir, once=False,
                                             number=next(self._numbers),
                                             on_room=self._room_changed)
        server = await self._fork_server(Isolation.POOL)
        try:
            return await self._fork_warm(server)
        except OSError:
            if server.alive:
                raise
        return await self._fork_warm(await self._fork_server(Isolation.POOL))

    async def _fork_warm(self, server: ForkServerProcess) -> WorkerProcess:
        return await WorkerProcess.fork(server, self.settings, self.run_dir,
                                        number=next(self._numbers), on_room=self._room_changed)

    async def _fork_server(self, isolation: Isolation) -> ForkServerProcess:
        """The running fork server for ``isolation``; started on first use, and again after
        one died."""
        async with self._server_lock:
            server = self._servers.pop(isolation, None)
            if server is not None and server.alive:
                self._servers[isolation] = server
                return server
            if server is not None:
                self._track(server.close())
            self._servers[isolation] = server = await ForkServerProcess.start(
                self.settings, self.run_dir / ALLOW_LIST,
                self.run_dir / f"forkserver-{next(self._numbers)}.err")
            return server

    def _retire(self, worker: WorkerProcess) -> None:
        self._track(worker.close())

    def _track(self, closing: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(closing)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def run(self, job: Claimed, isolation: Isolation, on_progress: ProgressCallback,
                  on_start: StartCallback | None = None) -> Outcome:
        loop = asyncio.get_running_loop()
        key = (job.priority, next(self._claims))
        try:
            while True:
                slot = Slot(job, loop.create_future(), on_progress, loop.create_future(),
                             on_start, key)
                self._attempts[job.id] = slot
                try:
                    worker = await self._assign(isolation, slot)
                except OSError as exc:
                    return Outcome(OutcomeKind.CRASHED, error=ErrorInfo(
                        "SpawnError", f"could not start a worker: {exc}"))
                if worker is None:
                    ended = slot.future.result()
                    assert isinstance(ended, Ended)
                    return Outcome(ended.kind, error=NOT_STARTED[ended.kind], started=False)
                outcome = await worker.execute(slot)
                if isinstance(outcome, Outcome):
                    if outcome.started and slot.began:
                        # The worker's own account if it gave one: the host's reading
                        # of the answer may come late.
                        self._measured(job.cls, outcome.busy if outcome.busy is not None
                                       else loop.time() - slot.began, warm=not worker.once)
                    return await self._release(worker, outcome)
                # It never started (the worker died with it queued): run it elsewhere.
                if isinstance(worker, ForkedJob):
                    self._fresh.discard(worker)
                    await worker.close()
        finally:
            self._attempts.pop(job.id, None)
            self._room_changed()

    async def _release(self, worker: Worker, outcome: Outcome) -> Outcome:
        if worker.once:
            # A fresh worker exits by itself after its one job; reap it to get its code.
            self._fresh.discard(worker)
            await worker.close()
            return _with_exit_code(outcome, worker.returncode)
        assert isinstance(worker, WorkerProcess)
        if not worker.accepting and not worker.queue and worker in self._pool:
            self._pool.remove(worker)
            self._retire(worker)
        return outcome

    def stop(self, job_id: int, kind: OutcomeKind) -> bool:
        slot = self._attempts.get(job_id)
        if slot is None or not settle(slot.future, Ended(kind)):
            return False
        _wake(slot)  # if it was waiting for a worker
        self._room_changed()
        return True

    def release_waiting(self, kind: OutcomeKind) -> None:
        """Stop every attempt not yet sent to a worker (at shutdown)."""
        sent = {id(slot) for w in (*self._pool, *self._fresh) for slot in w.queue}
        for job_id, slot in list(self._attempts.items()):
            if id(slot) not in sent:
                self.stop(job_id, kind)

    async def aclose(self) -> None:
        if self._steal_timer is not None:
            self._steal_timer.cancel()
        pool, fresh = self._pool, self._fresh
        self._pool, self._fresh = [], set()
        # Warm workers first: forked ones are their fork server's children, and its close
        # would kill them before they could finish and exit by themselves.
        await asyncio.gather(*(w.close() for w in pool), *self._closing)
        # A fork server's end of input makes it kill, reap and report every child it still
        # runs (as a ``once`` worker does when its input closes mid-job).
        servers, self._servers = list(self._servers.values()), {}
        await asyncio.gather(*(w.close() for w in fresh), *(s.close() for s in servers))


def _key(slot: Slot) -> tuple[int, int]:
    return slot.key


def _wake(slot: Slot) -> None:
    if slot.wake is not None and not slot.wake.done():
        slot.wake.set_result(None)


def _with_exit_code(outcome: Outcome, code: int | None) -> Outcome:
    if outcome.exit_code is not None or code is None:
        return outcome
    return dataclasses.replace(outcome, exit_code=code)
