"""A warm (``pool``) or one-off (``once``) worker subprocess and its queue of attempts.

The host feeds it jobs over its stdin and reads its answers on its channel (see
:mod:`asyncjobs.workers.protocol`); its crash, kill and close handling is the shared one of
:class:`~asyncjobs.workers.attempt.WorkerHandle`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Protocol

from .. import files
from ..config import Settings
from ..models import Outcome, OutcomeKind
from . import procs
from .attempt import (
    NOT_STARTED,
    REQUEUE,
    TIMED_OUT,
    Ended,
    Slot,
    WorkerHandle,
    report,
    settle,
    stopped,
)
from .forkserver import ForkServerProcess, spawn_worker
from .procs import signal_group
from .protocol import Done, ProtocolError, Skipped, decode, encode_job, encode_skip

log = logging.getLogger("asyncjobs.workers.pool")

ALLOW_LIST = "allow.json"  # the allow-list snapshot in the run directory (see launcher)
PIPELINE_DEPTH = 64  # at most, attempts in one warm worker's queue


class _Input(Protocol):
    """The worker's stdin as the host writes it (a ``StreamWriter`` or a pipe transport)."""

    def write(self, data: bytes) -> None: ...

    def is_closing(self) -> bool: ...

    def close(self) -> None: ...


class WorkerChild(Protocol):
    """A warm worker's process as its handle uses it: spawned (:class:`Spawned`) or forked
    by the fork server (:class:`~asyncjobs.workers.forkserver.ServedWorker`)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    @property
    def stdin(self) -> _Input | None: ...

    @property
    def stdout(self) -> asyncio.StreamReader | None: ...

    @property
    def strays(self) -> int:
        """Processes of its jobs outside its group killed when it was killed."""
        ...

    @property
    def lost(self) -> str | None:
        """Why it is gone when its exit status cannot be known (its fork server died)."""
        ...

    async def wait(self) -> int | None: ...

    def signal(self, *, force: bool) -> None:
        """SIGTERM (or SIGKILL, ``force``) its process group and its jobs' escapees."""
        ...


class Spawned:
    """A worker started as its own interpreter: a child of the host, signalled from here."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.stdin = proc.stdin
        self.stdout = proc.stdout
        self.strays = 0
        self.lost: str | None = None  # its own child: its status is always known

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    async def wait(self) -> int:
        return await self.proc.wait()

    def signal(self, *, force: bool) -> None:
        killed = signal_group(self.pid, force=force)
        if force:
            self.strays = max(self.strays, killed)


class WorkerProcess(WorkerHandle):
    """One worker child: its process, its channel, its queue, and its output capture file.

    Jobs are sent ahead (up to ``PIPELINE_DEPTH``) so the worker never waits for the host
    between two jobs; the child runs them strictly in order, which is what makes this safe:
    when a worker dies, every attempt behind the running one has not started and is simply
    requeued on another worker.  A single reader task turns channel lines into progress
    callbacks and settles the running attempt's future; an attempt's timeout counts only from
    when it reaches the head of the queue (one timer per worker: see :meth:`_begin`).  What
    is sent in one turn of the event loop goes out in one write: a write per job cost
    ~45 us, mostly waking the child once per job.
    """

    def __init__(self, proc: WorkerChild, output: IO[bytes], path: Path, *,
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
        self.queue: deque[Slot] = deque()
        # How many of the queue's attempts are of each priority rank: whether a new attempt
        # could overtake any, known without walking every queue (they hold up to 64 each).
        self.ranks: Counter[int] = Counter()
        # Jobs this worker already answered for: a late or forged second answer from one of
        # them is the job's own doing and is ignored, never blamed on the job behind it.
        self._answered: dict[int, None] = {}  # the last 2 * PIPELINE_DEPTH, oldest first
        self._outbox: list[bytes] = []  # written together at the end of this loop turn
        self._timer: asyncio.TimerHandle | None = None  # the head's timeout (see _begin)
        self._reader = asyncio.create_task(self._read_loop(), name=f"worker-{proc.pid}")

    @classmethod
    async def spawn(cls, settings: Settings, run_dir: Path, *, once: bool, number: int,
                    on_room: Callable[[], None]) -> WorkerProcess:
        """A worker started as a new interpreter (where the OS cannot fork, and ``once``)."""
        path = run_dir / f"worker-{number}.out"
        # The child's stderr is its capture file, appended to by the job's fds 1 and 2.
        proc, output = await spawn_worker(settings, run_dir / ALLOW_LIST,
                                          "once" if once else "pool", path, append=True)
        return cls(Spawned(proc), output, path, settings=settings, once=once, on_room=on_room)

    @classmethod
    async def fork(cls, server: ForkServerProcess, settings: Settings, run_dir: Path, *,
                   number: int, on_room: Callable[[], None]) -> WorkerProcess:
        """A warm worker forked by the fork server: a fork (~2 ms), not an interpreter's
        start-up (~45 ms of CPU), which a pool pays at every recycle."""
        path = run_dir / f"worker-{number}.out"
        output = files.create_private(path, append=True)
        try:
            info = os.fstat(output.fileno())
            proc = await server.fork_pool(path, (info.st_dev, info.st_ino),
                                          procs.worker_label(str(path)))
        except BaseException:
            output.close()
            path.unlink(missing_ok=True)
            raise
        return cls(proc, output, path, settings=settings, once=False, on_room=on_room)

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

    def _begin(self, slot: Slot) -> None:
        """``slot`` is now the head: the worker runs it, unless a skip took it back first."""
        if slot.skip_pending:
            return  # the skip's answer tells which: see _skipped
        loop = asyncio.get_running_loop()
        slot.began = loop.time()
        # One timer for the worker, not one per job: it is due by the head's earliest
        # possible deadline (its hand-over plus its timeout: its job cannot start sooner),
        # and when it fires it looks at the head of that moment (see _timed).
        earliest = slot.began + slot.job.timeout
        if self._timer is None or self._timer.when() > earliest:
            self._arm(earliest)
        if not slot.turn.done():
            slot.turn.set_result(True)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(when, self._timed)

    def _timed(self) -> None:
        """The worker's timer: time the head out if its deadline passed, else wait for it."""
        self._timer = None
        if not self.queue or self.queue[0].skip_pending:
            return  # nothing runs (a next head arms it again)
        head = self.queue[0]
        deadline = head.deadline()
        if asyncio.get_running_loop().time() >= deadline:
            settle(head.future, TIMED_OUT)
        else:
            self._arm(deadline)

    def request_skip(self, slot: Slot) -> None:
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

    def stealable(self) -> tuple[Slot, float] | None:
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
        self._uncount(slot)
        slot.turn.set_result(False)
        settle(slot.future, REQUEUE)  # stolen; a stop that came first keeps its own answer
        if was_head and self.queue:
            self._begin(self.queue[0])
        self.on_room()
        return True

    def send(self, slot: Slot) -> None:
        # A retry of a job this worker answered for before: its answers are not "second" ones.
        self._answered.pop(slot.job.id, None)
        self.queue.append(slot)
        self.ranks[slot.key[0]] += 1
        self.sent += 1
        self._post(encode_job(slot.job))
        if len(self.queue) == 1:
            self._begin(slot)

    async def execute(self, slot: Slot) -> Outcome | Ended:
        """Run ``slot`` on this worker; ``REQUEUE`` means it never started and may go on."""
        self.send(slot)
        ended = await slot.future
        if isinstance(ended, Outcome) or ended is REQUEUE:
            return ended
        if ended.kind is OutcomeKind.CRASHED:
            return await self.crashed(ended)
        # Timed out or stopped.  A stop may come while the attempt still waits in the queue:
        # take it back if it has not started; otherwise stop it where it runs, never
        # touching someone else's job.
        self.request_skip(slot)
        if not await slot.turn:
            return Outcome(ended.kind, error=NOT_STARTED[ended.kind], started=False)
        if not (self.queue and self.queue[0] is slot):
            if isinstance(slot.observed, Outcome):
                return slot.observed  # it finished before the stop could act
            return await self.crashed(slot.observed or Ended(OutcomeKind.CRASHED))
        await self.kill()
        return stopped(slot, ended.kind, self.proc.returncode, self.output_tail(), self.strays)

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
        if not isinstance(message, Done):
            report(head, message)
            if head.started is not None and (self._timer is None
                                             or self._timer.when() > head.deadline()):
                # It started before it became the head here (this host read the previous
                # answer late): its deadline is earlier than the timer armed at hand-over.
                self._arm(head.deadline())
            return True
        self._done(head, message.outcome)
        return True

    def _done(self, head: Slot, outcome: Outcome) -> None:
        """The running attempt's answer: settle it, and start the next one."""
        self.queue.popleft()
        self._uncount(head)
        self._answered[head.job.id] = None
        if len(self._answered) > 2 * PIPELINE_DEPTH:
            del self._answered[next(iter(self._answered))]
        head.observed = outcome
        settle(head.future, outcome)
        if outcome.kind is OutcomeKind.CRASHED:
            # The worker answered for a job it is killing itself over (its memory limit):
            # nothing queued behind it will start there.
            self.broken = self.exiting = True
        elif self.queue:
            self._begin(self.queue[0])
        self.on_room()

    def _uncount(self, slot: Slot) -> None:
        rank = slot.key[0]
        self.ranks[rank] -= 1
        if not self.ranks[rank]:
            del self.ranks[rank]

    def _broken(self, why: str) -> bool:
        if self.queue:
            head = self.queue[0]
            head.observed = Ended(OutcomeKind.CRASHED, why, "ProtocolError")
            settle(head.future, head.observed)
        self.broken = True
        self.proc.signal(force=True)
        return False

    def _lost(self) -> None:
        """The channel is gone: the head crashed; everything behind it never started."""
        self.broken = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for i, slot in enumerate(self.queue):
            if i == 0 and not self.exiting:
                if slot.observed is None:
                    slot.observed = Ended(OutcomeKind.CRASHED)
                settle(slot.future, slot.observed)
            else:
                settle(slot.future, REQUEUE)
            if not slot.turn.done():
                slot.turn.set_result(i == 0 and not self.exiting)
        self.queue.clear()
        self.ranks.clear()
        self.on_room()

    # -- the WorkerHandle hooks -----------------------------------------------------------

    @property
    def ended(self) -> bool:
        return self.proc.returncode is not None

    def _signal(self, *, force: bool) -> None:
        """Processes of its job outside the group get the same (``procs.signal_tree``)."""
        self.broken = True
        self.proc.signal(force=force)

    def _death(self, code: int | None) -> str:
        return self.proc.lost or super()._death(code)

    async def _after_death(self) -> None:
        # What its job started in other sessions went to init; the label they inherited
        # names them (procs.kill_marked: a /proc scan, ~10 ms).
        self.strays += await asyncio.to_thread(procs.kill_marked,
                                               procs.worker_label(str(self.path)))

    async def wait(self) -> int | None:
        code = await self.proc.wait()
        # Gone: what its killer counted of its job's processes outside its group is final.
        self.strays = max(self.strays, self.proc.strays)
        return code

    def _ask_to_exit(self) -> bool:
        """End of input: a warm worker exits when it has nothing left to run."""
        if self.proc.returncode is not None or self.broken or self.proc.stdin is None:
            return False
        self._flush()
        self.proc.stdin.close()
        return True

    async def _closed(self) -> None:
        await asyncio.gather(self._reader, return_exceptions=True)
