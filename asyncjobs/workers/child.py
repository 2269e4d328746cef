"""The worker child: the one entry point both isolation modes run.

It re-checks the allow-list against ``config.json`` itself, imports the job's module only
then, calls the method (sync, or async through ``asyncio.run``), and answers on a private
channel.  Imports are kept to the minimum because every worker pays for them; ``asyncio`` is
imported only when a job is a coroutine.  It never imports the store, the API or aiohttp:
dependencies point from the host to the worker, never back.

Three modes: ``pool`` (a warm worker running the jobs fed on its stdin), ``once`` (one job,
then exit: ``process`` isolation where there is no ``fork``), and ``forkserver`` (POSIX
``process`` isolation): a long-lived, single-threaded server that has imported this module
and nothing of any job, and ``fork()``s one child per attempt, so an attempt pays for a fork
instead of an interpreter start-up.  See :class:`ForkServer`.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib
import inspect
import os
import stat
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import orjson

from .. import files
from ..errors import Fail, Retry
from . import context, procs
from .guard import Limits, guarded
from .protocol import (
    ErrorReport,
    ForkRequest,
    JobRequest,
    Reply,
    SkipRequest,
    decode_request,
    decode_server_request,
    encode_began,
    encode_broken,
    encode_done,
    encode_exited,
    encode_progress,
    encode_server_started,
    encode_skipped,
)

PROGRESS_INTERVAL = 0.1  # seconds between forwarded progress updates


class NotAllowedError(Exception):
    """Raised in the child when the host asks for something outside the allow-list."""


class Channel:
    """Writes whole-line messages to the host on a private file descriptor."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.job_id = 0
        self._last_sent = 0.0
        self._pending: tuple[float, str | None] | None = None
        self._lock = threading.Lock()  # the inbox thread answers skips on the same channel

    def send(self, line: bytes) -> None:
        data = memoryview(line)
        with self._lock:
            while data:
                written = os.write(self.fd, data)
                data = data[written:]

    def progress(self, fraction: float, message: str | None) -> None:
        # Rate-limited so a job reporting in a tight loop cannot flood the host.
        now = time.monotonic()
        if now - self._last_sent >= PROGRESS_INTERVAL:
            self._last_sent = now
            self._pending = None
            self.send(encode_progress(self.job_id, fraction, message))
        else:
            self._pending = (fraction, message)

    def flush_progress(self) -> None:
        if self._pending is not None:
            fraction, message = self._pending
            self._pending = None
            self.send(encode_progress(self.job_id, fraction, message))


class Inbox:
    """Reads the host's messages ahead, on a thread, so queued jobs can be taken back.

    The host sends several jobs ahead to keep a warm worker busy.  A ``skip`` for a job still
    waiting here removes it and is answered at once (``skipped: true``), so a cancelled job
    never starts and an idle worker elsewhere can take it; a ``skip`` for a job already
    started is answered ``skipped: false``.  Every skip gets exactly one answer.
    """

    def __init__(self, stream: Any, channel: Channel) -> None:
        self.stream = stream
        self.channel = channel
        self.jobs: deque[JobRequest] = deque()
        self.closed = False
        self.busy = False  # a job is running on the main thread
        self._ready = threading.Condition()
        threading.Thread(target=self._read, name="asyncjobs-inbox", daemon=True).start()

    def _read(self) -> None:
        for line in self.stream:
            message = decode_request(line)
            with self._ready:
                if isinstance(message, SkipRequest):
                    found = next((j for j in self.jobs if j.id == message.id), None)
                    if found is not None:
                        self.jobs.remove(found)
                    self.channel.send(encode_skipped(message.id, found is not None))
                else:
                    self.jobs.append(message)
                self._ready.notify()
        with self._ready:
            self.closed = True
            self._ready.notify()
            if self.busy:
                # The host closes our input only when we are idle; closed mid-job means the
                # host died.  The next host runs this job again, so stop it (and whatever it
                # started) now rather than let two copies run at once.
                procs.kill_own_group()

    def job_done(self) -> None:
        """The job's answer is sent: from now on a closed input is a normal end."""
        with self._ready:
            self.busy = False

    def next_job(self) -> JobRequest | None:
        with self._ready:
            while not self.jobs and not self.closed:
                self._ready.wait()
            if not self.jobs:
                return None
            self.busy = True
            return self.jobs.popleft()


class Capture:
    """The job's stdout and stderr (fds 1 and 2) go to one file; we keep its tail."""

    def __init__(self, fd: int, limit: int) -> None:
        self.fd = fd
        self.limit = limit

    def reset(self) -> None:
        """Start a job with fds 1 and 2 (and sys.stdout/err) on an empty capture file.

        Repointed before every job: one that closed or redirected them must not break
        printing for the jobs after it on a warm worker.
        """
        os.dup2(self.fd, 1)
        os.dup2(self.fd, 2)
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if stream is None or stream.closed:
                fd = 1 if name == "stdout" else 2
                setattr(sys, name, open(fd, "w", buffering=1, closefd=False))  # noqa: SIM115
        os.ftruncate(self.fd, 0)

    def tail(self) -> str:
        for stream in (sys.stdout, sys.stderr):
            # The job may have closed or broken its own stream; keep what reached the file.
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        size = os.fstat(self.fd).st_size
        start = max(0, size - self.limit)
        os.lseek(self.fd, start, os.SEEK_SET)
        data = os.read(self.fd, self.limit)
        return data.decode("utf-8", "replace")


def load_allow_list(config_path: str) -> tuple[dict[str, Any], Limits]:
    """The allow-list the host wrote in the run directory, and the bounds it set."""
    # In the run directory, which a job can write: a regular file only (not a FIFO that
    # would block us, not a symlink to something else).
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    with open(os.open(config_path, flags), "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(f"{config_path!r} is not a regular file")
        doc = orjson.loads(f.read())
    jobs = doc.get("jobs", {}) if isinstance(doc, dict) else {}
    return (jobs if isinstance(jobs, dict) else {}), Limits.from_doc(doc)


def resolve(allow: dict[str, Any], cls_name: str, method: str) -> Any:
    """Allow-list first, import second: nothing is imported for a refused name."""
    entry = allow.get(cls_name)
    if (not isinstance(entry, dict) or cls_name.startswith("_") or method.startswith("_")
            or method not in entry.get("methods", [])):
        raise NotAllowedError(f"{cls_name}.{method} is not in the allow-list")
    module = importlib.import_module(entry.get("module", "jobs"))
    target = getattr(module, cls_name, None)
    if not isinstance(target, type):
        raise NotAllowedError(f"{entry.get('module', 'jobs')} has no class {cls_name}")
    return getattr(target(), method)


def call(func: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
    result = func(*args, **kwargs)
    if hasattr(result, "__await__"):
        import asyncio  # noqa: PLC0415 - only async jobs pay for asyncio's import

        async def _await() -> Any:
            return await result

        result = asyncio.run(_await())
    return result


def check_arguments(func: Any, job: JobRequest) -> None:
    """Arguments that cannot fit the method's signature fail now, not as a retryable error.

    A ``TypeError`` from the call itself can never succeed on a retry; one raised inside
    the job may.  ``inspect`` is loaded already (by ``dataclasses``), so this costs no import.
    """
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):  # no signature to check (a builtin, say): let it run
        return
    try:
        signature.bind(*job.args, **job.kwargs)
    except TypeError as exc:
        # Names and defaults only: annotations are often strings (postponed evaluation).
        bare = signature.replace(return_annotation=inspect.Signature.empty, parameters=[
            p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()])
        raise ArgumentsError(f"{job.cls}.{job.method}{bare} cannot take the arguments given: "
                             f"{exc}") from None


def _describe(exc: BaseException) -> tuple[str, str]:
    """The message and traceback of ``exc``, even when its ``__str__`` itself raises."""
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not take the worker down
        message = f"<{type(exc).__name__} whose str() raised>"
    try:
        tb = "".join(traceback.format_exception(exc))
    except Exception:
        tb = f"{type(exc).__name__}: {message}\n(traceback unavailable)"
    return message, tb


def error_reply(exc: BaseException, *, retry: bool = False, delay: float | None = None,
                fail: bool = False) -> Reply:
    message, tb = _describe(exc)
    return Reply(False, retry=retry, delay=delay, fail=fail, error=ErrorReport(
        type(exc).__name__, message[:2000], tb[-20000:], [c.__name__ for c in type(exc).__mro__]))


def run_job(job: JobRequest, allow: dict[str, Any], max_result: int, channel: Channel) -> Reply:
    """Resolve, check and call the job; tell the host ``started`` just before its code runs."""
    try:
        func = resolve(allow, job.cls, job.method)
        check_arguments(func, job)
        channel.send(encode_began(job.id, time.time()))
        result = call(func, job.args, job.kwargs)
    except Retry as exc:
        return error_reply(exc, retry=True, delay=exc.delay)
    except (Fail, NotAllowedError, ArgumentsError) as exc:
        return error_reply(exc, fail=True)
    except BaseException as exc:
        return error_reply(exc)
    try:
        encoded = orjson.dumps(result)
    except TypeError as exc:
        return error_reply(ResultError(f"return value is not JSON-serialisable: {exc}"))
    if len(encoded) > max_result:
        return error_reply(ResultError(
            f"return value is {len(encoded)} bytes as JSON; the limit is {max_result}"))
    return Reply(True, result=result)


class ResultError(Exception):
    """The job returned something the host cannot store."""


class ArgumentsError(TypeError):
    """The job's arguments do not fit its method's signature: no retry can help."""


def send_reply(job: JobRequest, reply: Reply, channel: Channel, capture: Capture) -> None:
    """The job's answer: the last progress update, then its result with its output tail."""
    channel.flush_progress()
    channel.send(encode_done(job.id, reply, capture.tail()))


def command(allow_list: str, base_dir: str, max_result: int, output_limit: int,
            mode: str) -> list[str]:
    """How the host starts this module (see :func:`main`): ``mode`` is ``pool``, ``once``
    or ``forkserver``."""
    return [sys.executable, "-m", "asyncjobs.workers.child", allow_list, base_dir, str(max_result),
            str(output_limit), mode]


def message_limit(max_result: int, output_limit: int) -> int:
    """The longest line the host reads from a worker: a result up to its cap (JSON escaping
    may double it), plus a traceback and the output tail (escaped), plus headroom."""
    return max_result * 2 + output_limit * 6 + (1 << 20)


def serve(config_path: str, base_dir: str, max_result: int, output_limit: int,
          once: bool) -> None:
    # The channel is our original stdout; the job's fds 1 and 2 both go to the capture file
    # the host gave us as stderr, and stdin becomes /dev/null so a job cannot read our input.
    channel = Channel(os.dup(1))
    inbox = Inbox(os.fdopen(os.dup(0), "rb"), channel)
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.path.insert(0, base_dir)
    capture = Capture(os.dup(2), output_limit)  # a private fd the job cannot close by accident
    allow, limits = load_allow_list(config_path)
    context.set_reporter(channel.progress)
    procs.become_subreaper()  # what a job starts stays below us, to be killed at its end
    host_pid = os.getppid()
    while (job := inbox.next_job()) is not None:
        if os.getppid() != host_pid:
            # The host died: jobs still queued for us will be rerun by the next host (they
            # are "running" on disk), so starting them here would only run them twice.
            break
        channel.job_id = job.id
        capture.reset()
        reply = guarded(job, limits, functools.partial(run_job, job, allow, max_result, channel),
                        functools.partial(send_reply, job, channel=channel, capture=capture))
        inbox.job_done()  # the job's code has returned: nothing left to stop if input closes
        send_reply(job, reply, channel, capture)
        if once or limits.worker_too_big():
            # Grown too big to keep (max_memory_per_worker): exit; the host requeues what it
            # sent ahead, which never started, and starts a fresh worker.
            break


READ_SIZE = 1 << 16


class _ChildExit(BaseException):
    """Raised in a forked child after its job, caught by :func:`fork_serve` to exit."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass(slots=True, eq=False)
class _Forked:
    """One child of the fork server: its pipe, what it has written so far, how it ended."""

    key: int
    pid: int
    fd: int | None  # read end of its pipe; None once at end of file (or given up on)
    buffer: bytearray
    code: int | None = None  # its exit status (like Popen.returncode) once reaped
    reaped: bool = False  # its pid may belong to someone else: never signal it again
    killed: bool = False  # a kill was asked: its group is SIGKILLed when it is reaped
    strays: set[int] = field(default_factory=set)  # its job's processes killed by the server
    broken: bool = False  # it broke the protocol: nothing more of it is forwarded


class ForkServer:
    """``process`` isolation by ``fork()``: one child per attempt from a warm parent.

    Why this shape:

    * **Single-threaded, no asyncio.**  ``fork()`` copies only the calling thread; a lock
      held by another thread would stay locked forever in the child.  So the server is one
      ``poll()`` loop over its stdin (requests from the host), its children's pipes and a
      self-pipe that SIGCHLD wakes (``signal.set_wakeup_fd``), plus a 1 s tick.
    * **Nothing of any job is imported here.**  The child imports the job's module after it
      re-checks the allow-list, exactly as a spawned worker does, so no job state is ever
      inherited and two attempts share nothing but this module's code.
    * **One writer on the host's channel.**  Each child writes its own pipe; the server
      forwards every complete line as ``<key> <line>`` (the key is assigned by the host, so
      a job cannot speak for another), never interleaved.  A line over ``limit`` is a
      protocol violation: the child's group is SIGKILLed and the host told ``broken``.
    * **Kills go through the server**, which alone knows whether a pid is still its
      unreaped child, so it never signals a recycled pid.  ``exited`` is reported only after
      everything the child wrote has been forwarded, so the host sees the answer first.
    * **The host's death ends everything**: end of input (or a new parent) means the host
      is gone; the next host reruns these attempts (they are ``running`` on disk), so every
      child's group is SIGKILLed rather than let two copies run.

    Messages to the host, besides forwarded lines: ``{"t": "started", "n", "pid"}``,
    ``{"t": "broken", "n", "why"}`` and ``{"t": "exited", "n", "code", "why"?, "strays"}``.

    **Containment** (Linux): the server and each child are child subreapers.  A child kills
    what its job left before it answers (:func:`asyncjobs.workers.guard.guarded`); a child
    killed or crashed leaves its job's escaped processes to the server, which kills them
    (the tree it walked when asked to kill, and its own children that are no attempt's).
    """

    def __init__(self, allow: dict[str, Any], max_result: int, output_limit: int,
                 limits: Limits) -> None:
        import select  # noqa: PLC0415 - only the fork server needs these
        import signal  # noqa: PLC0415

        self.allow = allow
        self.limits = limits
        # A child that dies (killed, crashed) leaves what its job started to us, to kill.
        procs.become_subreaper()
        self.max_result = max_result
        self.output_limit = output_limit
        self.limit = message_limit(max_result, output_limit)
        self.host_pid = os.getppid()
        self.pid = os.getpid()
        procs.prepare_parent_death_signal()
        self.children: dict[int, _Forked] = {}  # by key
        self.by_pid: dict[int, _Forked] = {}
        self.by_fd: dict[int, _Forked] = {}
        self.requests = bytearray()
        self.closed = False
        self.open_max = _open_max()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # the wakeup byte is what we want
        self.poll = select.poll()
        self.poll.register(0, select.POLLIN)
        self.poll.register(self.wake_r, select.POLLIN)
        self._pollin = select.POLLIN

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> None:
        while not self.closed:
            for fd, _ in self.poll.poll(1000):
                if fd == 0:
                    self._read_requests()
                elif fd == self.wake_r:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self.wake_r, 512):
                            pass
                elif (child := self.by_fd.get(fd)) is not None:
                    self._read_child(child)
            self._reap()
            if os.getppid() != self.host_pid:
                self.closed = True  # the host died without closing our input
        self._shutdown()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(1, view):]
        except OSError:
            self.closed = True  # nobody reads us any more: the host is gone

    # -- requests from the host ------------------------------------------------------------

    def _read_requests(self) -> None:
        """Read what the host sent, and handle it one request at a time.

        A child is forked in the middle of this: nothing of another attempt's request may be
        left where it can find it -- not in a local of this frame (it is on the child's stack
        while its job runs), not in the consumed part of the buffer (zeroed before it is
        dropped); what is still pending there is zeroed by the child (:meth:`_forget`).
        """
        try:
            chunk = os.read(0, READ_SIZE)
        except OSError:
            chunk = b""
        if not chunk:
            self.closed = True
            return
        self.requests += chunk
        del chunk
        while not self.closed and (end := self.requests.find(b"\n")) >= 0:
            line = bytes(self.requests[:end])
            self.requests[:end + 1] = bytes(end + 1)
            del self.requests[:end + 1]
            request = decode_server_request(line)
            del line
            if isinstance(request, ForkRequest):
                self._fork(request)
            else:
                self._kill(request.key, force=request.force)
            del request

    def _kill(self, key: int, *, force: bool) -> None:
        child = self.children.get(key)
        if child is None or child.reaped:
            return  # already reaped (and reported): its pid may belong to someone else now
        child.killed = True
        child.strays |= procs.signal_forked(child.pid, force=force)

    # -- children --------------------------------------------------------------------------

    def _fork(self, request: ForkRequest) -> None:
        key = request.key
        if os.getppid() != self.host_pid:
            self.closed = True  # the host is gone: this attempt will be rerun by the next one
            return
        read_fd, write_fd = os.pipe()
        # Everything the server holds goes to the collector's permanent generation for the
        # fork: the child's collections (and _exit_child's scan for open files) then see
        # only what the job made, and do not touch -- and copy -- the server's pages.
        gc.freeze()
        try:
            pid = os.fork()
        except OSError as exc:
            gc.unfreeze()
            os.close(read_fd)
            os.close(write_fd)
            self._write(encode_exited(key, None, f"could not fork: {exc}"))
            return
        if pid == 0:
            try:
                self._forget()
                self._child(request, read_fd, write_fd)  # raises _ChildExit
            except _ChildExit:
                raise
            except BaseException:  # noqa: S110 - nothing else may unwind into the server
                pass
            os._exit(1)
        gc.unfreeze()  # the server's own garbage stays collectable
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        child = _Forked(key, pid, read_fd, bytearray())
        self.children[key] = child
        self.by_pid[pid] = child
        self.by_fd[read_fd] = child
        self.poll.register(read_fd, self._pollin)
        self._write(encode_server_started(key, pid))

    def _forget(self) -> None:
        """In a child, first thing: wipe the server's data about every other attempt.

        The requests still pending (with their jobs' arguments) and what the other children
        wrote and the server has not forwarded yet (their results).  A job can still read
        the raw memory of its process image -- it is a fork -- where freed buffers may hold
        older requests; but no object it can reach holds another attempt's data.
        """
        self.requests[:] = bytes(len(self.requests))
        self.requests.clear()
        for other in self.children.values():
            other.buffer[:] = bytes(len(other.buffer))
            other.buffer.clear()
        self.children.clear()
        self.by_pid.clear()
        self.by_fd.clear()

    def _child(self, request: ForkRequest, read_fd: int, write_fd: int) -> None:
        """The forked child: a fresh session, only its own descriptors, then the job."""
        import signal  # noqa: PLC0415 - already loaded by the server; a dict lookup

        code = 1
        ready = False  # fds 1 and 2 are on the capture file: an interpreter exit is safe
        try:
            os.setsid()  # its own group, so a kill reaches whatever the job starts
            # Nothing links a session leader to the server: die with it (Linux), and if it
            # died already -- between the fork and here, maybe before it could tell the
            # host our pid -- do not start the job at all.
            procs.set_parent_death_signal()
            if os.getppid() != self.pid:
                os._exit(1)
            procs.become_subreaper()  # what the job starts stays below us (see guard)
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.close(read_fd)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)  # the server's input (the host's requests) is not the job's
            # The host created the file (and reads it through its own handle): open that very
            # file, never a FIFO, symlink or other file a job may have put at its path.
            capture_fd = files.open_existing(request.output, request.identity)
            # Keep only the pipe and the capture file: not the host's channel (fd 1 until
            # Capture.reset), not the other children's pipes, not the server's self-pipe.
            _close_fds_except(write_fd, capture_fd, limit=self.open_max)
            capture = Capture(capture_fd, self.output_limit)
            capture.reset()
            ready = True
            channel = Channel(write_fd)
            channel.job_id = request.job.id
            context.set_reporter(channel.progress)
            reply = guarded(request.job, self.limits,
                            functools.partial(run_job, request.job, self.allow,
                                              self.max_result, channel),
                            functools.partial(send_reply, request.job, channel=channel,
                                              capture=capture))
            send_reply(request.job, reply, channel, capture)
            code = 0
        except BaseException:
            with contextlib.suppress(BaseException):
                traceback.print_exc()
                sys.stderr.flush()
        finally:
            if not ready:
                os._exit(code)  # still on the server's descriptors: leave at once
        # End like a spawned worker (non-daemon threads joined, atexit handlers run --
        # logging.shutdown among them -- files flushed): unwind out of the server's frames
        # to fork_serve, which ends the child with _exit_child.  Nothing between here and
        # there catches it, so the child never runs the server's loop.
        raise _ChildExit(code)

    def _read_child(self, child: _Forked, *, final: bool = False) -> None:
        """Forward the complete lines ``child`` has written; at its end, the rest too.

        ``final``: it has been reaped, so all it wrote is in the pipe now; read that much
        and stop, even if a grandchild still holds the pipe open.
        """
        budget = self.limit + READ_SIZE
        while child.fd is not None:
            try:
                data = os.read(child.fd, READ_SIZE)
            except BlockingIOError:
                if not final:
                    return
                data = b""
            except OSError:
                data = b""
            if not data:
                if child.buffer and not child.broken:
                    child.buffer += b"\n"  # a last partial line: the host judges it
                    self._forward(child)
                self._close_pipe(child)
                return
            child.buffer += data
            self._forward(child)
            budget -= len(data)
            if not final or budget <= 0:
                if final:
                    self._close_pipe(child)
                return

    def _forward(self, child: _Forked) -> None:
        if child.broken:
            child.buffer.clear()
            return
        end = child.buffer.rfind(b"\n")
        if end >= 0:
            # Split on b"\n" only (not splitlines, which also splits on b"\r"): the host's
            # framing is b"\n", so each forwarded line is exactly one line the child wrote.
            lines = bytes(child.buffer[:end]).split(b"\n")
            del child.buffer[:end + 1]
            if any(len(line) >= self.limit for line in lines):
                return self._broken(child)
            prefix = b"%d " % child.key
            self._write(b"".join(prefix + line + b"\n" for line in lines))
        if len(child.buffer) >= self.limit:
            self._broken(child)

    def _broken(self, child: _Forked) -> None:
        child.broken = True
        child.buffer.clear()
        child.killed = True
        # Also from its final read in _ended: then it is a zombie (still ours) or, without
        # waitid, reaped -- and only its group may be signalled.
        procs.signal_forked(child.pid, force=True, reaped=child.reaped)
        self._write(encode_broken(child.key, "the worker sent a message larger than allowed"))

    def _close_pipe(self, child: _Forked) -> None:
        if child.fd is not None:
            self.poll.unregister(child.fd)
            del self.by_fd[child.fd]
            os.close(child.fd)
            child.fd = None

    def _reap(self) -> None:
        while True:
            try:
                if _PEEK:
                    # Find an exited child without reaping it: while it is a zombie its pid
                    # (and so its group id) are still ours to signal.
                    info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                    pid, status = (0 if info is None else info.si_pid), None
                else:
                    pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.by_pid.get(pid)
            if child is not None:
                self._ended(child, status)
            elif status is None:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)

    def _ended(self, child: _Forked, status: int | None) -> None:
        """``child`` has exited: forward what it wrote, finish off its group, reap, report.

        ``status`` is None while it is still an unreaped zombie (``_PEEK``): everything that
        signals it (a broken last line, the kill of its group) happens before the reap, so
        no pid is ever signalled after it is free for reuse.  Without ``waitid`` the reap
        comes first and only the group is signalled (see :func:`procs.signal_forked`).
        """
        child.reaped = status is not None
        self._read_child(child, final=True)
        if child.killed:
            # Whatever ignored the SIGTERM (grandchildren included) ends now.
            child.strays |= procs.signal_forked(child.pid, force=True, reaped=child.reaped)
        # What its job started outside its group, orphaned to us when it died (a crash).
        # Another child dying at the same moment could have its orphans counted here.
        child.strays |= procs.kill_orphans(set(self.by_pid))
        if status is None:
            _, status = os.waitpid(child.pid, 0)
            child.reaped = True
        self.by_pid.pop(child.pid, None)
        child.code = os.waitstatus_to_exitcode(status)
        del self.children[child.key]
        self._write(encode_exited(child.key, child.code, strays=len(child.strays)))

    def _shutdown(self) -> None:
        """The host is gone or closed our input: kill every child's group, reap, report."""
        for child in self.children.values():
            child.killed = True
            procs.signal_forked(child.pid, force=True)  # none is reaped yet
        for child in list(self.children.values()):
            try:
                if _PEEK:
                    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
                    status = None
                else:
                    _, status = os.waitpid(child.pid, 0)
            except ChildProcessError:
                continue
            self._ended(child, status)
        procs.end_strays(0.0)  # and every orphan left to us, before we go


_PEEK = hasattr(os, "waitid") and hasattr(os, "WNOWAIT")
"""Whether an exited child can be found without reaping it (``waitid`` with ``WNOWAIT``)."""


def _open_max() -> int:
    try:
        return max(256, min(os.sysconf("SC_OPEN_MAX"), 1 << 16))
    except (OSError, ValueError):
        return 1 << 16


def _close_fds_except(*keep: int, limit: int) -> None:
    """Close every descriptor above 2 but ``keep``: those ``/proc/self/fd`` (or ``/dev/fd``)
    lists, or, where neither can be read, the range up to ``limit`` (capped, not a possibly
    huge ``SC_OPEN_MAX``)."""
    for listing in ("/proc/self/fd", "/dev/fd"):
        try:
            names = os.listdir(listing)
        except OSError:
            continue
        for name in names:
            fd = int(name) if name.isdigit() else -1
            if fd > 2 and fd not in keep:
                with contextlib.suppress(OSError):  # the listing's own, closed already
                    os.close(fd)
        return
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, limit)


def fork_serve(config_path: str, base_dir: str, max_result: int, output_limit: int) -> None:
    # fd 0: requests from the host; fd 1: our channel to it; fd 2: our own error log.
    sys.path.insert(0, base_dir)
    try:
        allow, limits = load_allow_list(config_path)
        ForkServer(allow, max_result, output_limit, limits).run()
    except _ChildExit as done:  # only ever in a forked child, its job answered
        code = done.code
        del done  # the traceback holds the server's frames
        _exit_child(code)


def _exit_child(code: int) -> NoReturn:
    """End a forked child as a spawned worker ends, minus the interpreter's teardown.

    What a job can observe of a normal exit happens: non-daemon threads are joined,
    ``atexit`` handlers run (``logging.shutdown`` among them), and open files are flushed.
    What it cannot observe is skipped: tearing down every module and object, which costs a
    full interpreter finalisation (~10 ms) per attempt.  ``multiprocessing`` ends its
    forked children the same way.
    """
    import atexit  # noqa: PLC0415 - only forked children get here
    import io  # noqa: PLC0415

    with contextlib.suppress(BaseException):
        threading._shutdown()  # type: ignore[attr-defined]  # joins non-daemon threads
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    with contextlib.suppress(BaseException):
        for generation in range(3):  # not the server's objects: frozen before the fork
            for obj in gc.get_objects(generation):
                if isinstance(obj, io.BufferedWriter | io.BufferedRandom | io.TextIOWrapper) \
                        and not obj.closed:
                    with contextlib.suppress(BaseException):
                        obj.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    config_path, base_dir, max_result, output_limit, mode = args
    if mode == "forkserver":
        fork_serve(config_path, base_dir, int(max_result), int(output_limit))
        return
    serve(config_path, base_dir, int(max_result), int(output_limit), mode == "once")


if __name__ == "__main__":
    main()
