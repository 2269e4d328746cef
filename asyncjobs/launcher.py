"""Runs attempts in worker subprocesses and reports each one as an :class:`Outcome`.

Two isolation modes share one child entry point (:mod:`asyncjobs.worker`): ``pool`` keeps
warm workers and feeds them jobs over their stdin, recycling each after
``max_jobs_per_worker`` jobs or after any kill; ``process`` starts a fresh worker per
attempt.  Timeouts and cancels never rely on the job cooperating: the worker's whole process
group gets SIGTERM, then SIGKILL after ``kill_grace``, and the process is always reaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

import orjson

from .config import Settings
from .models import Claimed, ErrorInfo, Isolation, Outcome, OutcomeKind
from .procs import describe_exit, new_group_options, signal_group
from .protocol import Done, Progress, ProtocolError, decode, encode_job

log = logging.getLogger("asyncjobs.launcher")

ALLOW_LIST = "allow.json"

ProgressCallback = Callable[[int, float, "str | None"], None]


class Launcher(Protocol):
    async def run(self, job: Claimed, isolation: Isolation,
                  on_progress: ProgressCallback) -> Outcome:
        """Run one attempt to its end, whatever that end is; never raises for job faults."""
        ...

    def stop(self, job_id: int, kind: OutcomeKind) -> bool:
        """Kill a running attempt, which then ends with ``kind`` (cancelled or interrupted)."""
        ...

    async def aclose(self) -> None: ...


@dataclass
class _StopRequest:
    event: asyncio.Event = field(default_factory=asyncio.Event)
    kind: OutcomeKind = OutcomeKind.CANCELLED


_STOP_ERRORS = {
    OutcomeKind.CANCELLED: ErrorInfo("Cancelled", "cancelled while running; worker killed"),
    OutcomeKind.INTERRUPTED: ErrorInfo("Interrupted", "the host shut down while this ran"),
}


class WorkerProcess:
    """One worker child: its process, its channel, and the file capturing job output."""

    def __init__(self, proc: asyncio.subprocess.Process, output: IO[bytes], path: Path,
                 grace: float, output_limit: int) -> None:
        self.proc = proc
        self.output = output
        self.path = path
        self.grace = grace
        self.output_limit = output_limit
        self.jobs_done = 0
        self.broken = False  # killed, crashed or confused: never reused

    @classmethod
    async def spawn(cls, settings: Settings, run_dir: Path, *, once: bool,
                    number: int) -> WorkerProcess:
        path = run_dir / f"worker-{number}.out"
        output = open(path, "a+b")  # noqa: SIM115 - lives as long as the worker
        # The result line may carry a result up to the cap, plus traceback and output.
        limit = settings.max_result_bytes * 2 + settings.max_output_bytes * 6 + (1 << 20)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "asyncjobs.worker", str(run_dir / ALLOW_LIST),
                str(settings.base_dir), str(settings.max_result_bytes),
                str(settings.max_output_bytes), "once" if once else "pool",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=output,
                limit=limit, **new_group_options(),
            )
        except BaseException:
            output.close()
            path.unlink(missing_ok=True)
            raise
        return cls(proc, output, path, settings.workers.kill_grace, settings.max_output_bytes)

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None and not self.broken

    def output_tail(self) -> str:
        """What the job printed, read by the host when the worker cannot tell us itself."""
        try:
            self.output.seek(0, 2)
            size = self.output.tell()
            self.output.seek(max(0, size - self.output_limit))
            return self.output.read(self.output_limit).decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""

    async def execute(self, job: Claimed, stop: _StopRequest,
                      on_progress: ProgressCallback) -> Outcome:
        self.jobs_done += 1
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(encode_job(job))
            await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            return await self._crashed("the worker closed its input before the job started")
        reader = asyncio.ensure_future(self._read_until_done(job.id, on_progress))
        stopper = asyncio.ensure_future(stop.event.wait())
        try:
            done, _ = await asyncio.wait({reader, stopper}, timeout=job.timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not reader.done():
                reader.cancel()
        if reader in done:
            return reader.result()
        await self.kill()
        if stopper in done:
            kind, error = stop.kind, _STOP_ERRORS[stop.kind]
        else:
            kind = OutcomeKind.TIMEOUT
            error = ErrorInfo("Timeout", f"exceeded its timeout of {job.timeout:g}s; "
                              "worker killed")
        return Outcome(kind, error=error, exit_code=self.proc.returncode,
                       output=self.output_tail())

    async def _read_until_done(self, job_id: int, on_progress: ProgressCallback) -> Outcome:
        assert self.proc.stdout is not None
        while True:
            try:
                line = await self.proc.stdout.readline()
            except ValueError:  # a line beyond the reader's limit
                await self.kill()
                return await self._crashed("the worker sent a message larger than allowed",
                                           kind="ProtocolError")
            if not line:
                return await self._crashed(None)
            try:
                message = decode(line)
            except ProtocolError as exc:
                await self.kill()
                return await self._crashed(f"invalid message from the worker: {exc}",
                                           kind="ProtocolError")
            if message.job_id != job_id:
                await self.kill()
                return await self._crashed("the worker answered for another job",
                                           kind="ProtocolError")
            if isinstance(message, Progress):
                on_progress(job_id, message.fraction, message.message)
            elif isinstance(message, Done):
                return message.outcome

    async def _crashed(self, why: str | None, kind: str = "WorkerCrashed") -> Outcome:
        self.broken = True
        code = await self.proc.wait()
        message = why or f"the worker {describe_exit(code)} before reporting a result"
        return Outcome(OutcomeKind.CRASHED, error=ErrorInfo(kind, message), exit_code=code,
                       output=self.output_tail())

    async def kill(self) -> None:
        """SIGTERM to the group, SIGKILL after the grace, and always reap."""
        self.broken = True
        signal_group(self.proc.pid, force=False)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), self.grace)
        # Also after a clean exit: grandchildren that ignored SIGTERM are still in the group.
        signal_group(self.proc.pid, force=True)
        await self.proc.wait()

    async def close(self) -> None:
        """Let the worker exit on end of input, or kill it; then remove its capture file."""
        if self.proc.returncode is None and not self.broken and self.proc.stdin is not None:
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), self.grace)
            except TimeoutError:
                await self.kill()
        elif self.proc.returncode is None:
            await self.kill()
        else:
            await self.proc.wait()
        self.output.close()
        self.path.unlink(missing_ok=True)


def prepare_run_dir(settings: Settings, run_dir: Path) -> None:
    """Write the allow-list snapshot the workers re-check, and clear a dead host's files."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in run_dir.glob("worker-*.out"):
        stale.unlink(missing_ok=True)
    jobs = {name: {"module": job.module, "methods": list(job.methods)}
            for name, job in settings.jobs.items()}
    (run_dir / ALLOW_LIST).write_bytes(orjson.dumps({"jobs": jobs}))


class SubprocessLauncher:
    """The real :class:`Launcher`: worker subprocesses, warm or fresh."""

    def __init__(self, settings: Settings, run_dir: Path) -> None:
        self.settings = settings
        self.run_dir = run_dir
        prepare_run_dir(settings, run_dir)
        self._idle: list[WorkerProcess] = []
        self._stops: dict[int, _StopRequest] = {}
        self._numbers = itertools.count(1)
        self._closing: set[asyncio.Task[None]] = set()

    async def _acquire(self, isolation: Isolation) -> WorkerProcess:
        if isolation is Isolation.POOL:
            while self._idle:
                worker = self._idle.pop()
                if worker.alive:
                    return worker
                self._retire(worker)
        return await WorkerProcess.spawn(self.settings, self.run_dir,
                                         once=isolation is Isolation.PROCESS,
                                         number=next(self._numbers))

    def _retire(self, worker: WorkerProcess) -> None:
        task = asyncio.ensure_future(worker.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def run(self, job: Claimed, isolation: Isolation,
                  on_progress: ProgressCallback) -> Outcome:
        stop = self._stops[job.id] = _StopRequest()
        try:
            try:
                worker = await self._acquire(isolation)
            except OSError as exc:
                return Outcome(OutcomeKind.CRASHED,
                               error=ErrorInfo("SpawnError", f"could not start a worker: {exc}"))
            outcome = await worker.execute(job, stop, on_progress)
        finally:
            del self._stops[job.id]
        reusable = (isolation is Isolation.POOL and worker.alive
                    and worker.jobs_done < self.settings.workers.max_jobs_per_worker)
        if reusable:
            self._idle.append(worker)
        elif isolation is Isolation.PROCESS and worker.alive:
            # A fresh worker exits by itself after its one job; reap it to get its code.
            await worker.close()
            outcome = _with_exit_code(outcome, worker.proc.returncode)
        else:
            self._retire(worker)
        return outcome

    def stop(self, job_id: int, kind: OutcomeKind) -> bool:
        stop = self._stops.get(job_id)
        if stop is None:
            return False
        stop.kind = kind
        stop.event.set()
        return True

    @property
    def running(self) -> int:
        return len(self._stops)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        await asyncio.gather(*(w.close() for w in idle), *self._closing)


def _with_exit_code(outcome: Outcome, code: int | None) -> Outcome:
    if outcome.exit_code is not None or code is None:
        return outcome
    return dataclasses.replace(outcome, exit_code=code)
