"""One ``process``-isolation attempt in a child of the fork server: the host's handle.

Its crash, kill and close handling is the shared one of
:class:`~asyncjobs.workers.attempt.WorkerHandle`; the server signals and reaps.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from pathlib import Path

from .. import files
from ..config import Settings
from ..models import Outcome, OutcomeKind
from .attempt import (
    NOT_STARTED,
    REQUEUE,
    START_ALLOWANCE,
    TIMED_OUT,
    Ended,
    Slot,
    WorkerHandle,
    report,
    settle,
    stopped,
)
from .forkserver import ForkServerProcess
from .protocol import Done, ProtocolError, Skipped, decode

log = logging.getLogger("asyncjobs.workers.forked")


class ForkedJob(WorkerHandle):
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
        self.queue: deque[Slot] = deque()  # its one attempt, from execute() on
        self.key = 0
        self.pid: int | None = None
        self.returncode: int | None = None
        self.strays = 0  # its job's processes the server killed when it was killed or died
        self._exited: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._answered = False  # a done line came: later ones are the job's own doing
        self._broken = False
        self._server_errors = ""  # the server's own stderr, if it died under this attempt

    async def execute(self, slot: Slot) -> Outcome | Ended:
        """Run ``slot`` in a forked child; ``REQUEUE`` if the server died before it started."""
        if slot.future.done():
            # Stopped while the server was starting: never fork it.
            ended = slot.future.result()
            assert isinstance(ended, Ended)
            slot.turn.set_result(False)
            self._exited.set_result(None)
            return Outcome(ended.kind, error=NOT_STARTED[ended.kind], started=False)
        self.queue.append(slot)
        loop = asyncio.get_running_loop()
        slot.began = loop.time()
        slot.timer = loop.call_later(slot.job.timeout + START_ALLOWANCE, settle, slot.future,
                                     TIMED_OUT)
        slot.turn.set_result(True)
        info = os.fstat(self.output.fileno())
        self.key = self.server.fork(slot.job, self.path, (info.st_dev, info.st_ino), self)
        ended = await slot.future
        slot.timer.cancel()
        if isinstance(ended, Outcome) or ended is REQUEUE:
            return ended
        if isinstance(slot.observed, Outcome):
            return slot.observed  # it finished before the stop could act
        if ended.kind is OutcomeKind.CRASHED:
            return await self.crashed(ended)
        if slot.observed is not None:
            return await self.crashed(slot.observed)  # it died before the stop could act
        await self.kill()
        return stopped(slot, ended.kind, self.returncode, self.output_tail(), self.strays)

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
        elif not isinstance(message, Done):
            report(slot, message)
        else:
            self._answered = True
            slot.observed = message.outcome
            settle(slot.future, message.outcome)

    def on_broken(self, why: str) -> None:
        self._protocol_error(why)  # the server has SIGKILLed the group already

    def on_exited(self, code: int | None, why: str | None, strays: int = 0) -> None:
        self.returncode = code
        self.strays = strays
        if self.queue and not self._answered:
            slot = self.queue[0]
            if slot.observed is None:
                slot.observed = Ended(OutcomeKind.CRASHED, why)
            settle(slot.future, slot.observed)
        if not self._exited.done():
            self._exited.set_result(code)

    def on_server_lost(self, why: str, errors: str, *, requeue: bool) -> None:
        self._server_errors = errors
        if requeue and self.pid is None and self.queue and not self._answered:
            settle(self.queue[0].future, REQUEUE)  # a stop that came first keeps its answer
        self.on_exited(None, why)

    def _protocol_error(self, why: str) -> None:
        self._broken = True
        if self.queue and not self._answered:
            slot = self.queue[0]
            slot.observed = Ended(OutcomeKind.CRASHED, why, "ProtocolError")
            settle(slot.future, slot.observed)
        self.server.kill(self.key, force=True)

    # -- ending ----------------------------------------------------------------------------

    # -- the WorkerHandle hooks -----------------------------------------------------------

    @property
    def ended(self) -> bool:
        return self._exited.done()

    def _signal(self, *, force: bool) -> None:
        # Through the server, which alone knows whether the pid is still its child; it
        # SIGKILLs the group when it reaps a child it was asked to kill, so grandchildren
        # that ignored SIGTERM end with it.
        if not self._exited.done():
            self.server.kill(self.key, force=force)

    async def wait(self) -> int | None:
        """Until the server has reaped the child (or itself went away): its exit status."""
        return await asyncio.shield(self._exited)

    def _ask_to_exit(self) -> bool:
        return not self._exited.done()  # it exits by itself once it has answered

    def output_tail(self) -> str:
        """What the job printed, read by the host when the child cannot tell us itself;
        then, if the server died under it, the end of what the server wrote to stderr."""
        tail = files.read_tail(self.output, self.output_limit)
        if self._server_errors:
            tail += f"\n[the fork server's own error output]\n{self._server_errors}"
            tail = tail[-self.output_limit:]
        return tail
