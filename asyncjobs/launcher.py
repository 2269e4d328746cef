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
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class _Ended:
    """Why an attempt's future settled other than by the worker's own answer."""

    kind: OutcomeKind  # timeout, cancelled, interrupted, or crashed
    why: str | None = None
    error_type: str = "WorkerCrashed"


_TIMED_OUT = _Ended(OutcomeKind.TIMEOUT)
_STOP_ERRORS = {
    OutcomeKind.CANCELLED: ErrorInfo("Cancelled", "cancelled while running; worker killed"),
    OutcomeKind.INTERRUPTED: ErrorInfo("Interrupted", "the host shut down while this ran"),
}
AttemptFuture = asyncio.Future["Outcome | _Ended"]


def _settle(future: AttemptFuture, value: Outcome | _Ended) -> bool:
    """First answer wins: the worker's result, the timer, a stop request, or a crash."""
    if future.done():
        return False
    future.set_result(value)
    return True


@dataclass(slots=True)
class _Current:
    job_id: int
    future: AttemptFuture
    on_progress: ProgressCallback


class WorkerProcess:
    """One worker child: its process, its channel, and the file capturing job output.

    A single reader task per worker turns channel lines into progress callbacks and into the
    result of the current attempt's future; the attempt awaits only that future, which the
    timeout timer, a stop request or the reader (on a crash) may settle instead.
    """

    def __init__(self, proc: asyncio.subprocess.Process, output: IO[bytes], path: Path,
                 grace: float, output_limit: int) -> None:
        self.proc = proc
        self.output = output
        self.path = path
        self.grace = grace
        self.output_limit = output_limit
        self.jobs_done = 0
        self.broken = False  # killed, crashed or confused: never reused
        self._current: _Current | None = None
        self._reader = asyncio.create_task(self._read_loop(), name=f"worker-{proc.pid}")

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

    async def execute(self, job: Claimed, future: AttemptFuture,
                      on_progress: ProgressCallback) -> Outcome:
        self.jobs_done += 1
        self._current = _Current(job.id, future, on_progress)
        timer = asyncio.get_running_loop().call_later(job.timeout, _settle, future, _TIMED_OUT)
        try:
            stdin = self.proc.stdin
            assert stdin is not None
            stdin.write(encode_job(job))
            if stdin.transport.get_write_buffer_size() > 1 << 16:
                await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            _settle(future, _Ended(OutcomeKind.CRASHED, "the worker closed its input before "
                                   "the job started"))
        try:
            ended = await future
        finally:
            timer.cancel()
            self._current = None
        if isinstance(ended, Outcome):
            return ended
        if ended.kind is OutcomeKind.CRASHED:
            return await self._crashed(ended)
        await self.kill()
        if ended.kind is OutcomeKind.TIMEOUT:
            error = ErrorInfo("Timeout", f"exceeded its timeout of {job.timeout:g}s; "
                              "worker killed")
        else:
            error = _STOP_ERRORS[ended.kind]
        return Outcome(ended.kind, error=error, exit_code=self.proc.returncode,
                       output=self.output_tail())

    async def _read_loop(self) -> None:
        """Read the channel until the worker goes away or breaks the protocol."""
        assert self.proc.stdout is not None
        while True:
            try:
                line = await self.proc.stdout.readline()
            except ValueError:  # a line beyond the reader's limit
                return self._broken("the worker sent a message larger than allowed")
            if not line:
                self.broken = True
                if self._current is not None:
                    _settle(self._current.future, _Ended(OutcomeKind.CRASHED))
                return None
            try:
                message = decode(line)
            except ProtocolError as exc:
                return self._broken(f"invalid message from the worker: {exc}")
            current = self._current
            if current is None or message.job_id != current.job_id:
                return self._broken("the worker answered for a job it was not running")
            if isinstance(message, Progress):
                current.on_progress(current.job_id, message.fraction, message.message)
            elif isinstance(message, Done):
                _settle(current.future, message.outcome)

    def _broken(self, why: str) -> None:
        self.broken = True
        if self._current is not None:
            _settle(self._current.future, _Ended(OutcomeKind.CRASHED, why, "ProtocolError"))
        else:
            signal_group(self.proc.pid, force=True)

    async def _crashed(self, ended: _Ended) -> Outcome:
        self.broken = True
        if ended.error_type == "ProtocolError":
            await self.kill()
        code = await self.proc.wait()
        message = ended.why or f"the worker {describe_exit(code)} before reporting a result"
        return Outcome(OutcomeKind.CRASHED, error=ErrorInfo(ended.error_type, message),
                       exit_code=code, output=self.output_tail())

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
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
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
        self._attempts: dict[int, AttemptFuture] = {}
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
        future: AttemptFuture = asyncio.get_running_loop().create_future()
        self._attempts[job.id] = future
        try:
            try:
                worker = await self._acquire(isolation)
            except OSError as exc:
                return Outcome(OutcomeKind.CRASHED,
                               error=ErrorInfo("SpawnError", f"could not start a worker: {exc}"))
            outcome = await worker.execute(job, future, on_progress)
        finally:
            del self._attempts[job.id]
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
        future = self._attempts.get(job_id)
        return future is not None and _settle(future, _Ended(kind))

    @property
    def running(self) -> int:
        return len(self._attempts)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        await asyncio.gather(*(w.close() for w in idle), *self._closing)


def _with_exit_code(outcome: Outcome, code: int | None) -> Outcome:
    if outcome.exit_code is not None or code is None:
        return outcome
    return dataclasses.replace(outcome, exit_code=code)
