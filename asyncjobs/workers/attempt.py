"""One attempt on its way through a worker: its slot, how it ended, and the handle base.

Shared by the two kinds of worker handle (:class:`~asyncjobs.workers.pool.WorkerProcess`,
:class:`~asyncjobs.workers.forked.ForkedJob`): the record of an attempt sent to a worker
(:class:`Slot`), the ways its future settles other than by the worker's answer
(:class:`Ended`), and :class:`WorkerHandle`: what every handle does on crash, kill and
close, written once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..models import Claimed, ErrorInfo, Outcome, OutcomeKind
from .procs import describe_exit
from .protocol import Began, Progress

ProgressCallback = Callable[[int, float, "str | None"], None]
StartCallback = Callable[[int, float], None]  # job id, seconds since the worker started it


@dataclass(frozen=True, slots=True)
class Ended:
    """Why an attempt's future settled other than by the worker's own answer."""

    kind: OutcomeKind  # timeout, cancelled, interrupted, or crashed
    why: str | None = None
    error_type: str = "WorkerCrashed"


TIMED_OUT = Ended(OutcomeKind.TIMEOUT)
# Seconds an attempt may take, beyond its timeout, before its job starts (a fresh worker's
# interpreter, the fork server's first start, the job module's import): the timer set when
# it is handed over; the worker's ``started`` resets it to the timeout from the job's start.
START_ALLOWANCE = 10.0
REQUEUE = Ended(OutcomeKind.INTERRUPTED, "the worker went away before this started")
STOP_ERRORS = {
    OutcomeKind.CANCELLED: ErrorInfo("Cancelled", "cancelled while running; worker killed"),
    OutcomeKind.INTERRUPTED: ErrorInfo("Interrupted", "the host shut down while this ran"),
}
NOT_STARTED = {
    OutcomeKind.CANCELLED: ErrorInfo("Cancelled", "cancelled before it started"),
    OutcomeKind.INTERRUPTED: ErrorInfo("Interrupted", "the host shut down before it started"),
}
AttemptFuture = asyncio.Future["Outcome | Ended"]


def stopped(slot: Slot, kind: OutcomeKind, exit_code: int | None, output: str,
            strays: int) -> Outcome:
    """The outcome of an attempt killed for its timeout, a cancel or a shutdown; ``strays``:
    its job's processes outside the worker's group, killed with it."""
    if kind is OutcomeKind.TIMEOUT:
        error = ErrorInfo("Timeout", f"exceeded its timeout of {slot.job.timeout:g}s; "
                          "worker killed")
    else:
        error = STOP_ERRORS[kind]
    return Outcome(kind, error=error, exit_code=exit_code, output=output, strays=strays)


def settle(future: AttemptFuture, value: Outcome | Ended) -> bool:
    """First answer wins: the worker's result, the timer, a stop request, or a crash."""
    if future.done():
        return False
    future.set_result(value)
    return True


@dataclass(slots=True, eq=False)
class Slot:
    """One attempt sent to a worker.  The head of a worker's queue is the one running."""

    job: Claimed
    future: AttemptFuture
    on_progress: ProgressCallback
    turn: asyncio.Future[bool]  # True once it runs; False if it never will on this worker
    on_start: StartCallback | None = None
    key: tuple[int, int] = (0, 0)  # (priority rank, claim order): the better, the sooner
    wake: asyncio.Future[None] | None = None  # while it waits for a worker (see _assign)
    observed: Outcome | Ended | None = None  # what the worker said, even after a stop won
    timer: asyncio.TimerHandle | None = None  # its timeout (a warm worker keeps one of its own)
    skip_pending: bool = False  # a skip was sent; its answer decides ``turn``
    began: float = 0.0  # loop time it reached the head
    started: float | None = None  # loop time its job started, by the worker's report

    def deadline(self) -> float:
        """When it times out (loop time): its timeout from the job's start, or, until the
        worker reports that, from the hand-over plus :data:`START_ALLOWANCE`."""
        if self.started is not None:
            return self.started + self.job.timeout
        return self.began + self.job.timeout + START_ALLOWANCE


def report(slot: Slot, message: Began | Progress) -> None:
    """What a worker says about its running attempt before the answer."""
    if isinstance(message, Progress):
        slot.on_progress(slot.job.id, message.fraction, message.message)
        return
    # Host and worker share the machine's wall clock: the message's age is exact even when
    # the host reads it late (a busy loop), and it holds for any injected clock.
    age = max(0.0, time.time() - message.at)
    loop = asyncio.get_running_loop()
    # The timeout counts from the job's own start: the time since the hand-over also ran
    # while a fresh worker (or the fork server) started up.
    slot.started = loop.time() - age
    if slot.timer is not None:
        slot.timer.cancel()
        slot.timer = loop.call_at(slot.deadline(), settle, slot.future, TIMED_OUT)
    if slot.on_start is not None:
        slot.on_start(slot.job.id, age)


class WorkerHandle:
    """What every worker handle does on crash, kill and close, in one place.

    A handle provides how to signal its process group (:meth:`_signal`: SIGTERM, or SIGKILL
    with ``force``), how to wait for its exit status (:meth:`wait`), whether it has exited
    (:attr:`ended`), how to ask it to exit by itself (:meth:`_ask_to_exit`) and the end of its
    output (:meth:`output_tail`).
    """

    grace: float
    output: IO[bytes]
    path: Path
    strays: int  # processes of its job killed with it (kill, crash)

    @property
    def ended(self) -> bool:
        raise NotImplementedError

    def _signal(self, *, force: bool) -> None:
        raise NotImplementedError

    async def wait(self) -> int | None:
        raise NotImplementedError

    def _ask_to_exit(self) -> bool:
        """Ask it to exit by itself; False if it cannot be asked (then it is killed)."""
        raise NotImplementedError

    def output_tail(self) -> str:
        raise NotImplementedError

    async def _closed(self) -> None:
        """After the process is gone: what else the handle must wait for."""

    async def _after_death(self) -> None:
        """It died by itself: end what its job left behind (counted in ``strays``)."""

    def _death(self, code: int | None) -> str:
        """How it died, for the attempt it ran without answering (``code``: its status)."""
        return f"the worker {describe_exit(code)} before reporting a result"

    async def kill(self) -> None:
        """SIGTERM to the group, SIGKILL after the grace, and always reaped.

        SIGKILL also after a clean exit within the grace: grandchildren that ignored the
        SIGTERM are still in the group.
        """
        self._signal(force=False)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wait(), self.grace)
        self._signal(force=True)
        await self.wait()

    async def crashed(self, ended: Ended) -> Outcome:
        """The outcome of an attempt whose worker died (or broke the protocol) under it."""
        if ended.error_type == "ProtocolError":
            await self.kill()
        code = await self.wait()
        await self._after_death()
        message = ended.why or self._death(code)
        return Outcome(OutcomeKind.CRASHED, error=ErrorInfo(ended.error_type, message),
                       exit_code=code, output=self.output_tail(), strays=self.strays)

    async def close(self) -> None:
        """Let it exit by itself (it has answered), or kill it; then remove its file."""
        if self._ask_to_exit():
            try:
                await asyncio.wait_for(self.wait(), self.grace)
            except TimeoutError:
                await self.kill()
        elif not self.ended:
            await self.kill()
        await self.wait()
        await self._closed()
        self.output.close()
        self.path.unlink(missing_ok=True)
