"""Runs attempts in worker subprocesses and reports each one as an :class:`Outcome`.

Two isolation modes share one child entry point (:mod:`asyncjobs.workers.child`): ``pool`` keeps
warm workers and feeds them jobs over their stdin, recycling each after
``max_jobs_per_worker`` jobs or after any kill; ``process`` gives each attempt a fresh
process.  On POSIX that process is forked by the fork server (:mod:`asyncjobs.workers.forkserver`,
one warm server started on first use: a fork costs a millisecond where an interpreter
start-up costs ~50), as a :class:`ForkedJob`; elsewhere, or with ``fork=False``, it is a
``once`` :class:`WorkerProcess` spawned per attempt.  Both give the same :class:`Outcome`.
Timeouts and cancels never rely on the job cooperating: the worker's whole process group
gets SIGTERM, then SIGKILL after ``kill_grace``, and the process is always reaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import orjson

from .. import files
from ..config import Settings
from ..models import Claimed, ErrorInfo, Isolation, Outcome, OutcomeKind
from . import procs
from .forkserver import ForkServerProcess, spawn_worker
from .procs import describe_exit, signal_group
from .protocol import Done, Progress, ProtocolError, Skipped, decode, encode_job, encode_skip

log = logging.getLogger("asyncjobs.workers.launcher")

ALLOW_LIST = "allow.json"
PIPELINE_DEPTH = 8  # attempts sent ahead to one warm worker (see WorkerProcess)
STEAL_AFTER = 0.05  # seconds a job must have run before an idle worker takes what waits behind it

ProgressCallback = Callable[[int, float, "str | None"], None]


class Launcher(Protocol):
    async def run(self, job: Claimed, isolation: Isolation,
                  on_progress: ProgressCallback) -> Outcome:
        """Run one attempt to its end, whatever that end is; never raises for job faults."""
        ...

    def stop(self, job_id: int, kind: OutcomeKind) -> bool:
        """Kill a running attempt, which then ends with ``kind`` (cancelled or interrupted)."""
        ...

    def release_waiting(self, kind: OutcomeKind) -> None:
        """End, as ``kind``, every attempt that has not reached a worker yet (shutdown)."""
        ...

    capacity: int
    """How many attempts it takes at once (running plus queued); the dispatcher's limit."""

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class _Ended:
    """Why an attempt's future settled other than by the worker's own answer."""

    kind: OutcomeKind  # timeout, cancelled, interrupted, or crashed
    why: str | None = None
    error_type: str = "WorkerCrashed"


_TIMED_OUT = _Ended(OutcomeKind.TIMEOUT)
_REQUEUE = _Ended(OutcomeKind.INTERRUPTED, "the worker went away before this started")
_STOP_ERRORS = {
    OutcomeKind.CANCELLED: ErrorInfo("Cancelled", "cancelled while running; worker killed"),
    OutcomeKind.INTERRUPTED: ErrorInfo("Interrupted", "the host shut down while this ran"),
}
_NOT_STARTED = {
    OutcomeKind.CANCELLED: ErrorInfo("Cancelled", "cancelled before it started"),
    OutcomeKind.INTERRUPTED: ErrorInfo("Interrupted", "the host shut down before it started"),
}
AttemptFuture = asyncio.Future["Outcome | _Ended"]


def _stopped(slot: _Slot, kind: OutcomeKind, exit_code: int | None, output: str,
             strays: int) -> Outcome:
    """The outcome of an attempt killed for its timeout, a cancel or a shutdown; ``strays``:
    its job's processes outside the worker's group, killed with it."""
    if kind is OutcomeKind.TIMEOUT:
        error = ErrorInfo("Timeout", f"exceeded its timeout of {slot.job.timeout:g}s; "
                          "worker killed")
    else:
        error = _STOP_ERRORS[kind]
    return Outcome(kind, error=error, exit_code=exit_code, output=output, strays=strays)


def _settle(future: AttemptFuture, value: Outcome | _Ended) -> bool:
    """First answer wins: the worker's result, the timer, a stop request, or a crash."""
    if future.done():
        return False
    future.set_result(value)
    return True


@dataclass(slots=True, eq=False)
class _Slot:
    """One attempt sent to a worker.  The head of a worker's queue is the one running."""

    job: Claimed
    future: AttemptFuture
    on_progress: ProgressCallback
    turn: asyncio.Future[bool]  # True once it runs; False if it never will on this worker
    observed: Outcome | _Ended | None = None  # what the worker said, even after a stop won
    timer: asyncio.TimerHandle | None = None
    skip_pending: bool = False  # a skip was sent; its answer decides ``turn``
    began: float = 0.0  # loop time it reached the head


class WorkerProcess:
    """One worker child: its process, its channel, its queue, and its output capture file.

    Jobs are sent ahead (up to ``PIPELINE_DEPTH``) so the worker never waits for the host
    between two jobs; the child runs them strictly in order, which is what makes this safe:
    when a worker dies, every attempt behind the running one has not started and is simply
    requeued on another worker.  A single reader task turns channel lines into progress
    callbacks and settles the running attempt's future; a timeout timer starts only when an
    attempt reaches the head of the queue.  What is sent in one turn of the event loop goes
    out in one write: a write per job cost ~45 us, mostly waking the child once per job.
    """

    def __init__(self, proc: asyncio.subprocess.Process, output: IO[bytes], path: Path, *,
                 settings: Settings, once: bool, on_room: Callable[[], None]) -> None:
        self.proc = proc
        self.output = output
        self.path = path
        self.once = once
        self.grace = settings.workers.kill_grace
        self.output_limit = settings.max_output_bytes
        self.max_jobs = 1 if once else settings.workers.max_jobs_per_worker
        self.on_room = on_room
        self.sent = 0
        self.strays = 0  # processes of its job killed with it (kill, crash)
        self.exiting = False  # it said it is going away: what it still holds never started
        self.broken = False  # killed, crashed or confused: never reused
        self.queue: deque[_Slot] = deque()
        # Jobs this worker already answered for: a late or forged second answer from one of
        # them is the job's own doing and is ignored, never blamed on the job behind it.
        self._answered: deque[int] = deque(maxlen=2 * PIPELINE_DEPTH)
        self._outbox: list[bytes] = []  # written together at the end of this loop turn
        self._reader = asyncio.create_task(self._read_loop(), name=f"worker-{proc.pid}")

    @classmethod
    async def spawn(cls, settings: Settings, run_dir: Path, *, once: bool, number: int,
                    on_room: Callable[[], None]) -> WorkerProcess:
        path = run_dir / f"worker-{number}.out"
        # The child's stderr is its capture file, appended to by the job's fds 1 and 2.
        proc, output = await spawn_worker(settings, run_dir / ALLOW_LIST,
                                          "once" if once else "pool", path, append=True)
        return cls(proc, output, path, settings=settings, once=once, on_room=on_room)

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None and not self.broken

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    @property
    def accepting(self) -> bool:
        return self.alive and self.sent < self.max_jobs

    def output_tail(self) -> str:
        """What the job printed, read by the host when the worker cannot tell us itself."""
        return files.read_tail(self.output, self.output_limit)

    def _begin(self, slot: _Slot) -> None:
        """``slot`` is now the head: the worker runs it, unless a skip took it back first."""
        if slot.skip_pending:
            return  # the skip's answer tells which: see _skipped
        loop = asyncio.get_running_loop()
        slot.began = loop.time()
        slot.timer = loop.call_later(slot.job.timeout, _settle, slot.future, _TIMED_OUT)
        if not slot.turn.done():
            slot.turn.set_result(True)

    def request_skip(self, slot: _Slot) -> None:
        """Ask the worker to take ``slot`` back if it has not started it (one answer comes)."""
        if slot.skip_pending or slot.turn.done() or slot not in self.queue:
            return
        slot.skip_pending = True
        self._post(encode_skip(slot.job.id))

    def _post(self, message: bytes) -> None:
        """Queue ``message`` for the worker's stdin, in order with everything sent before."""
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append(message)

    def _flush(self) -> None:
        if not self._outbox or self.proc.stdin is None or self.proc.stdin.is_closing():
            self._outbox.clear()
            return
        data = b"".join(self._outbox)
        self._outbox.clear()
        # On a broken pipe the reader sees the channel end and settles the attempts.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.proc.stdin.write(data)

    def stealable(self) -> tuple[_Slot, float] | None:
        """The last attempt queued behind the running one, and since when that one runs."""
        if len(self.queue) < 2 or not self.alive:
            return None
        last = self.queue[-1]
        if last.skip_pending or last.turn.done():
            return None
        return last, self.queue[0].began

    def _skipped(self, job_id: int, skipped: bool) -> bool:
        slot = next((s for s in self.queue if s.job.id == job_id), None)
        if slot is None and job_id in self._answered:
            return True  # it finished before the skip reached the worker: nothing to do
        if slot is None or not slot.skip_pending:
            return self._broken("the worker answered a skip that was not asked")
        slot.skip_pending = False
        if not skipped:
            self._begin(slot)  # it had started; it is the head (answers come in order)
            return True
        was_head = self.queue[0] is slot
        self.queue.remove(slot)
        slot.turn.set_result(False)
        _settle(slot.future, _REQUEUE)  # stolen; a stop that came first keeps its own answer
        if was_head and self.queue:
            self._begin(self.queue[0])
        self.on_room()
        return True

    def send(self, slot: _Slot) -> None:
        # A retry of a job this worker answered for before: its answers are not "second" ones.
        with contextlib.suppress(ValueError):
            self._answered.remove(slot.job.id)
        self.queue.append(slot)
        self.sent += 1
        self._post(encode_job(slot.job))
        if len(self.queue) == 1:
            self._begin(slot)

    async def execute(self, slot: _Slot) -> Outcome | _Ended:
        """Run ``slot`` on this worker; ``_REQUEUE`` means it never started and may go on."""
        self.send(slot)
        ended = await slot.future
        if isinstance(ended, Outcome) or ended is _REQUEUE:
            return ended
        if ended.kind is OutcomeKind.CRASHED:
            return await self._crashed(ended)
        # Timed out or stopped.  A stop may come while the attempt still waits in the queue:
        # take it back if it has not started; otherwise stop it where it runs, never
        # touching someone else's job.
        self.request_skip(slot)
        if not await slot.turn:
            return Outcome(ended.kind, error=_NOT_STARTED[ended.kind], started=False)
        if not (self.queue and self.queue[0] is slot):
            if isinstance(slot.observed, Outcome):
                return slot.observed  # it finished before the stop could act
            return await self._crashed(slot.observed or _Ended(OutcomeKind.CRASHED))
        await self.kill()
        return _stopped(slot, ended.kind, self.proc.returncode, self.output_tail(), self.strays)

    async def _read_loop(self) -> None:
        """Read the channel until the worker goes away or breaks the protocol."""
        assert self.proc.stdout is not None
        try:
            while await self._read_one(self.proc.stdout):
                pass
        finally:
            self._lost()

    async def _read_one(self, stdout: asyncio.StreamReader) -> bool:
        try:
            line = await stdout.readline()
        except ValueError:  # a line beyond the reader's limit
            return self._broken("the worker sent a message larger than allowed")
        if not line:
            return False
        try:
            message = decode(line)
        except ProtocolError as exc:
            return self._broken(f"invalid message from the worker: {exc}")
        if isinstance(message, Skipped):
            return self._skipped(message.job_id, message.skipped)
        if message.job_id in self._answered:
            log.warning("ignoring a second answer for job %s from worker %s", message.job_id,
                        self.proc.pid)
            return True
        if not self.queue or message.job_id != self.queue[0].job.id:
            return self._broken("the worker answered for a job it was not running")
        head = self.queue[0]
        if isinstance(message, Progress):
            head.on_progress(head.job.id, message.fraction, message.message)
            return True
        assert isinstance(message, Done)
        self._done(head, message.outcome)
        return True

    def _done(self, head: _Slot, outcome: Outcome) -> None:
        """The running attempt's answer: settle it, and start the next one."""
        self.queue.popleft()
        self._answered.append(head.job.id)
        if head.timer is not None:
            head.timer.cancel()
        head.observed = outcome
        _settle(head.future, outcome)
        if outcome.kind is OutcomeKind.CRASHED:
            # The worker answered for a job it is killing itself over (its memory limit):
            # nothing queued behind it will start there.
            self.broken = self.exiting = True
        elif self.queue:
            self._begin(self.queue[0])
        self.on_room()

    def _broken(self, why: str) -> bool:
        if self.queue:
            head = self.queue[0]
            head.observed = _Ended(OutcomeKind.CRASHED, why, "ProtocolError")
            _settle(head.future, head.observed)
        self.broken = True
        signal_group(self.proc.pid, force=True)
        return False

    def _lost(self) -> None:
        """The channel is gone: the head crashed; everything behind it never started."""
        self.broken = True
        for i, slot in enumerate(self.queue):
            if slot.timer is not None:
                slot.timer.cancel()
            if i == 0 and not self.exiting:
                if slot.observed is None:
                    slot.observed = _Ended(OutcomeKind.CRASHED)
                _settle(slot.future, slot.observed)
            else:
                _settle(slot.future, _REQUEUE)
            if not slot.turn.done():
                slot.turn.set_result(i == 0 and not self.exiting)
        self.queue.clear()
        self.on_room()

    async def _crashed(self, ended: _Ended) -> Outcome:
        self.broken = True
        if ended.error_type == "ProtocolError":
            await self.kill()
        code = await self.proc.wait()
        # It died by itself: what its job started in other sessions went to init; the
        # label they inherited names them (procs.kill_marked: a /proc scan, ~10 ms).
        self.strays += await asyncio.to_thread(procs.kill_marked,
                                               procs.worker_label(str(self.path)))
        message = ended.why or f"the worker {describe_exit(code)} before reporting a result"
        return Outcome(OutcomeKind.CRASHED, error=ErrorInfo(ended.error_type, message),
                       exit_code=code, output=self.output_tail(), strays=self.strays)

    async def kill(self) -> None:
        """SIGTERM to the group, SIGKILL after the grace, and always reap.

        Processes of its job outside the group get the same (``procs.signal_tree``)."""
        self.broken = True
        signal_group(self.proc.pid, force=False)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), self.grace)
        # Also after a clean exit: grandchildren that ignored SIGTERM are still in the group.
        self.strays = max(self.strays, signal_group(self.proc.pid, force=True))
        await self.proc.wait()

    async def close(self) -> None:
        """Let the worker exit on end of input, or kill it; then remove its capture file."""
        if self.proc.returncode is None and not self.broken and self.proc.stdin is not None:
            self._flush()
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), self.grace)
            except TimeoutError:
                await self.kill()
        elif self.proc.returncode is None:
            await self.kill()
        else:
            await self.proc.wait()
        await asyncio.gather(self._reader, return_exceptions=True)
        self.output.close()
        self.path.unlink(missing_ok=True)


class ForkedJob:
    """One ``process``-isolation attempt run by a child of the fork server.

    The twin of a ``once`` :class:`WorkerProcess`, and it must end every attempt the same
    way: the child's lines are decoded here as strictly (anything invalid crashes this
    attempt with a ``ProtocolError``, never the server or the host); a child that exits
    without an answer is ``crashed`` with its exit status and output tail; a timeout or stop
    SIGTERMs its group, SIGKILLs it after the grace, and waits for the reap.  The server does
    the signalling and the reaping (it alone knows whether the pid is still its child) and
    reports ``exited`` only after forwarding all the child wrote.
    """

    once = True

    def __init__(self, server: ForkServerProcess, path: Path, *, settings: Settings) -> None:
        self.server = server
        self.path = path
        self.grace = settings.workers.kill_grace
        self.output_limit = settings.max_output_bytes
        # Created here and read only through this handle: the job knows the path and may
        # put a FIFO or a symlink there, which the host must never open.
        self.output = files.create_private(path)
        self.queue: deque[_Slot] = deque()  # its one attempt, from execute() on
        self.key = 0
        self.pid: int | None = None
        self.returncode: int | None = None
        self.strays = 0  # its job's processes the server killed when it was killed or died
        self._exited: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._answered = False  # a done line came: later ones are the job's own doing
        self._broken = False
        self._server_errors = ""  # the server's own stderr, if it died under this attempt

    async def execute(self, slot: _Slot) -> Outcome | _Ended:
        """Run ``slot`` in a forked child; ``_REQUEUE`` if the server died before it started."""
        if slot.future.done():
            # Stopped while the server was starting: never fork it.
            ended = slot.future.result()
            assert isinstance(ended, _Ended)
            slot.turn.set_result(False)
            self._exited.set_result(None)
            return Outcome(ended.kind, error=_NOT_STARTED[ended.kind], started=False)
        self.queue.append(slot)
        loop = asyncio.get_running_loop()
        slot.began = loop.time()
        slot.timer = loop.call_later(slot.job.timeout, _settle, slot.future, _TIMED_OUT)
        slot.turn.set_result(True)
        info = os.fstat(self.output.fileno())
        self.key = self.server.fork(slot.job, self.path, (info.st_dev, info.st_ino), self)
        ended = await slot.future
        slot.timer.cancel()
        if isinstance(ended, Outcome) or ended is _REQUEUE:
            return ended
        if isinstance(slot.observed, Outcome):
            return slot.observed  # it finished before the stop could act
        if ended.kind is OutcomeKind.CRASHED:
            return await self._crashed(ended)
        if slot.observed is not None:
            return await self._crashed(slot.observed)  # it died before the stop could act
        await self.kill()
        return _stopped(slot, ended.kind, self.returncode, self.output_tail(), self.strays)

    # -- what the server's reader tells us (ForkedHandle) ----------------------------------

    def on_started(self, pid: int) -> None:
        self.pid = pid

    def on_line(self, line: bytes) -> None:
        if self._broken or not self.queue:
            return
        slot = self.queue[0]
        try:
            message = decode(line)
        except ProtocolError as exc:
            return self._protocol_error(f"invalid message from the worker: {exc}")
        if isinstance(message, Skipped):
            return self._protocol_error("the worker answered a skip that was not asked")
        if message.job_id != slot.job.id:
            return self._protocol_error("the worker answered for a job it was not running")
        if self._answered:
            log.warning("ignoring a second answer for job %s from forked worker %s",
                        message.job_id, self.pid)
        elif isinstance(message, Progress):
            slot.on_progress(slot.job.id, message.fraction, message.message)
        else:
            assert isinstance(message, Done)
            self._answered = True
            slot.observed = message.outcome
            _settle(slot.future, message.outcome)

    def on_broken(self, why: str) -> None:
        self._protocol_error(why)  # the server has SIGKILLed the group already

    def on_exited(self, code: int | None, why: str | None, strays: int = 0) -> None:
        self.returncode = code
        self.strays = strays
        if self.queue and not self._answered:
            slot = self.queue[0]
            if slot.observed is None:
                slot.observed = _Ended(OutcomeKind.CRASHED, why)
            _settle(slot.future, slot.observed)
        if not self._exited.done():
            self._exited.set_result(code)

    def on_server_lost(self, why: str, errors: str, *, requeue: bool) -> None:
        self._server_errors = errors
        if requeue and self.pid is None and self.queue and not self._answered:
            _settle(self.queue[0].future, _REQUEUE)  # a stop that came first keeps its answer
        self.on_exited(None, why)

    def _protocol_error(self, why: str) -> None:
        self._broken = True
        if self.queue and not self._answered:
            slot = self.queue[0]
            slot.observed = _Ended(OutcomeKind.CRASHED, why, "ProtocolError")
            _settle(slot.future, slot.observed)
        self.server.kill(self.key, force=True)

    # -- ending ----------------------------------------------------------------------------

    async def wait(self) -> int | None:
        """Until the server has reaped the child (or itself went away): its exit status."""
        return await asyncio.shield(self._exited)

    async def kill(self) -> None:
        """SIGTERM to the group, SIGKILL after the grace, and always reaped (by the server)."""
        if self._exited.done():
            return
        self.server.kill(self.key, force=False)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._exited), self.grace)
        # The server SIGKILLs the group when it reaps a child it was asked to kill, so
        # grandchildren that ignored SIGTERM end with it.
        self.server.kill(self.key, force=True)
        await self.wait()

    async def _crashed(self, ended: _Ended) -> Outcome:
        if ended.error_type == "ProtocolError":
            await self.kill()
        code = await self.wait()
        message = ended.why or f"the worker {describe_exit(code)} before reporting a result"
        return Outcome(OutcomeKind.CRASHED, error=ErrorInfo(ended.error_type, message),
                       exit_code=code, output=self.output_tail(), strays=self.strays)

    def output_tail(self) -> str:
        """What the job printed, read by the host when the child cannot tell us itself;
        then, if the server died under it, the end of what the server wrote to stderr."""
        tail = files.read_tail(self.output, self.output_limit)
        if self._server_errors:
            tail += f"\n[the fork server's own error output]\n{self._server_errors}"
            tail = tail[-self.output_limit:]
        return tail

    async def close(self) -> None:
        """Let the child exit by itself (it has answered), or kill it; remove its file."""
        if not self._exited.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._exited), self.grace)
            except TimeoutError:
                await self.kill()
        self.output.close()
        self.path.unlink(missing_ok=True)


Worker = WorkerProcess | ForkedJob


def prepare_run_dir(settings: Settings, run_dir: Path) -> None:
    """Write the allow-list snapshot the workers re-check, and clear a dead host's files."""
    run_dir.mkdir(parents=True, exist_ok=True)
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


class SubprocessLauncher:
    """The real :class:`Launcher`: worker subprocesses, warm or fresh.

    At most ``workers.max`` workers are busy at once (a pool worker with a non-empty queue,
    or a ``process`` attempt), which is the §4 limit on concurrent attempts.  Attempts beyond
    what can run wait here — already ``running`` on disk, as claimed — either in a warm
    worker's queue or for a free worker.

    ``fork``: run ``process`` attempts through the fork server (the default where the OS
    can fork, :data:`asyncjobs.workers.procs.CAN_FORK`), or spawn an interpreter per attempt.
    """

    def __init__(self, settings: Settings, run_dir: Path, *, fork: bool | None = None) -> None:
        self.settings = settings
        self.run_dir = run_dir
        prepare_run_dir(settings, run_dir)
        self.capacity = settings.workers.max * PIPELINE_DEPTH
        self.fork = procs.CAN_FORK if fork is None else fork
        self._pool: list[WorkerProcess] = []
        self._fresh: set[Worker] = set()  # process-isolation attempts, one each
        self._server: ForkServerProcess | None = None
        self._server_lock = asyncio.Lock()
        self._spawning = 0
        self._attempts: dict[int, _Slot] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._steal_timer: asyncio.TimerHandle | None = None
        self._numbers = itertools.count(1)
        self._closing: set[asyncio.Task[None]] = set()

    def _room_changed(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._steal()

    def _steal(self) -> None:
        """An idle warm worker takes work queued behind a *long* job on another one.

        Only behind a job that has run ``STEAL_AFTER`` seconds: a short one ends before a
        steal could pay off, and stealing costs a round trip.  A timer looks again when the
        youngest candidate comes of age.
        """
        if self._busy() >= self.settings.workers.max or not any(
                w.accepting and not w.queue for w in self._pool):
            return
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

    def _pick(self, isolation: Isolation) -> WorkerProcess | None:
        """A worker with room for one more attempt, or None (then spawn, or wait)."""
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
            queued = [w for w in self._pool if w.accepting and 0 < len(w.queue) < PIPELINE_DEPTH]
            if queued:
                return min(queued, key=lambda w: len(w.queue))
        return None

    async def _assign(self, isolation: Isolation, slot: _Slot) -> Worker | None:
        """Find or start a worker for ``slot``; None if it was stopped while waiting."""
        while not slot.future.done():
            worker = self._pick(isolation)
            if worker is not None:
                return worker
            if self._busy() < self.settings.workers.max:
                return await self._spawn(isolation)
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
        return None

    async def _spawn(self, isolation: Isolation) -> Worker:
        self._spawning += 1
        try:
            if isolation is Isolation.PROCESS and self.fork:
                server = await self._fork_server()
                forked = ForkedJob(server, self.run_dir / f"worker-f{next(self._numbers)}.out",
                                   settings=self.settings)
                self._fresh.add(forked)
                return forked
            worker = await WorkerProcess.spawn(
                self.settings, self.run_dir, once=isolation is Isolation.PROCESS,
                number=next(self._numbers), on_room=self._room_changed)
        finally:
            self._spawning -= 1
        (self._fresh.add if worker.once else self._pool.append)(worker)
        return worker

    async def _fork_server(self) -> ForkServerProcess:
        """The running fork server; started on first use, and again after one died."""
        async with self._server_lock:
            server = self._server
            if server is not None and server.alive:
                return server
            if server is not None:
                self._track(server.close())
            self._server = None
            self._server = await ForkServerProcess.start(
                self.settings, self.run_dir / ALLOW_LIST,
                self.run_dir / f"forkserver-{next(self._numbers)}.err")
            return self._server

    def _retire(self, worker: WorkerProcess) -> None:
        self._track(worker.close())

    def _track(self, closing: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(closing)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def run(self, job: Claimed, isolation: Isolation,
                  on_progress: ProgressCallback) -> Outcome:
        loop = asyncio.get_running_loop()
        try:
            while True:
                slot = _Slot(job, loop.create_future(), on_progress, loop.create_future())
                self._attempts[job.id] = slot
                try:
                    worker = await self._assign(isolation, slot)
                except OSError as exc:
                    return Outcome(OutcomeKind.CRASHED, error=ErrorInfo(
                        "SpawnError", f"could not start a worker: {exc}"))
                if worker is None:
                    ended = slot.future.result()
                    assert isinstance(ended, _Ended)
                    return Outcome(ended.kind, error=_NOT_STARTED[ended.kind], started=False)
                outcome = await worker.execute(slot)
                if isinstance(outcome, Outcome):
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
        if slot is None or not _settle(slot.future, _Ended(kind)):
            return False
        self._room_changed()  # wakes it if it was waiting for a worker
        return True

    def release_waiting(self, kind: OutcomeKind) -> None:
        """Stop every attempt not yet sent to a worker (at shutdown)."""
        sent = {id(slot) for w in (*self._pool, *self._fresh) for slot in w.queue}
        for job_id, slot in list(self._attempts.items()):
            if id(slot) not in sent:
                self.stop(job_id, kind)

    @property
    def running(self) -> int:
        return len(self._attempts)

    async def aclose(self) -> None:
        if self._steal_timer is not None:
            self._steal_timer.cancel()
        workers: list[Worker] = [*self._pool, *self._fresh]
        self._pool, self._fresh = [], set()
        # The fork server's end of input makes it kill, reap and report every child it
        # still runs (as a ``once`` worker does when its input closes mid-job).
        server, self._server = self._server, None
        closing = [server.close()] if server is not None else []
        await asyncio.gather(*(w.close() for w in workers), *closing, *self._closing)


def _with_exit_code(outcome: Outcome, code: int | None) -> Outcome:
    if outcome.exit_code is not None or code is None:
        return outcome
    return dataclasses.replace(outcome, exit_code=code)
