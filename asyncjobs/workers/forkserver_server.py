"""The fork server's own process: one ``poll()`` loop that forks, forwards, kills and reaps.

``python -m asyncjobs.workers.child ... forkserver`` runs :func:`fork_serve`; see
:class:`ForkServer` for why it is shaped as it is.  What a forked child does is
:mod:`asyncjobs.workers.forkserver_child`; the host's side is :mod:`asyncjobs.workers.forkserver`.
Only the fork server imports this module: a pool or once worker never pays for it.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from . import procs
from .channel import message_limit
from .exiting import exit_child
from .forkserver_child import ChildExit, open_max, run_forked, run_pool
from .guard import Limits
from .jobcall import load_allow_list
from .protocol import (
    ForkRequest,
    KillRequest,
    PoolRequest,
    decode_server_request,
    encode_broken,
    encode_exited,
    encode_server_started,
)

READ_SIZE = 1 << 16


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
    * **Warm workers are forked here too** (:meth:`_fork_pool`).  Their requests come on a
      datagram socket, each with the host's two pipe ends for that worker attached
      (``SCM_RIGHTS``); those pipes are its channel, so nothing it says passes through the
      server, which only signals and reaps it and reports its exit, as for any child.  A
      recycled worker costs a fork, not an interpreter start-up (~45 ms of CPU).
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
                 limits: Limits, pool_socket: int) -> None:
        import select  # noqa: PLC0415 - only the fork server needs these
        import signal  # noqa: PLC0415
        import socket  # noqa: PLC0415

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
        self.open_max = open_max()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # the wakeup byte is what we want
        self.poll = select.poll()
        self.poll.register(0, select.POLLIN)
        self.poll.register(self.wake_r, select.POLLIN)
        # Warm workers' requests come on a datagram socket: each with the worker's two pipe
        # ends attached (SCM_RIGHTS), which a pipe cannot carry.
        self.pool_socket = socket.socket(fileno=pool_socket)
        self.pool_socket.setblocking(False)
        self.poll.register(pool_socket, select.POLLIN)
        self._pollin = select.POLLIN

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> None:
        while not self.closed:
            for fd, _ in self.poll.poll(1000):
                if fd == 0:
                    self._read_requests()
                elif fd == self.pool_socket.fileno():
                    self._read_pool_requests()
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
        # A kill on this channel may be for a warm worker asked for on the socket, sent
        # before it: the socket's requests are handled first.
        self._read_pool_requests()
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
                self._fork_job(request)
            elif isinstance(request, KillRequest):
                self._kill(request.key, force=request.force)
            del request

    def _read_pool_requests(self) -> None:
        """Fork a warm worker for each request waiting on the socket (see :meth:`_fork_pool`)."""
        import socket  # noqa: PLC0415 - loaded by __init__: a dict lookup

        while not self.closed:
            try:
                data, fds, _, _ = socket.recv_fds(self.pool_socket, READ_SIZE, 2)
            except BlockingIOError:
                return
            except OSError:
                self.closed = True  # the host's end is gone: so is the host
                return
            request = decode_server_request(data)
            if isinstance(request, PoolRequest) and len(fds) == 2:
                self._fork_pool(request, fds[0], fds[1])  # closes them (no finally here:
                continue  # a forked child unwinds through this frame, see _fork)
            for fd in fds:
                os.close(fd)
            self._write(encode_exited(request.key, None,
                                      "a warm worker's request came without its pipes"))

    def _kill(self, key: int, *, force: bool) -> None:
        child = self.children.get(key)
        if child is None or child.reaped:
            return  # already reaped (and reported): its pid may belong to someone else now
        child.killed = True
        child.strays |= procs.signal_forked(child.pid, force=force)

    # -- children --------------------------------------------------------------------------

    def _fork_job(self, request: ForkRequest) -> None:
        """A child for one ``process`` attempt, its channel a pipe that the server forwards."""
        read_fd, write_fd = os.pipe()
        self._fork(request.key, read_fd, (write_fd,), functools.partial(
            run_forked, request, read_fd, write_fd, server_pid=self.pid, allow=self.allow,
            limits=self.limits, max_result=self.max_result, output_limit=self.output_limit,
            fd_limit=self.open_max))

    def _fork_pool(self, request: PoolRequest, jobs_fd: int, channel_fd: int) -> None:
        """A warm worker: its channel is the host's own pipes, nothing passes through here;
        the server only signals and reaps it, and reports its exit, as for any child."""
        self._fork(request.key, None, (jobs_fd, channel_fd), functools.partial(
            run_pool, request, jobs_fd, channel_fd, server_pid=self.pid, allow=self.allow,
            limits=self.limits, max_result=self.max_result, output_limit=self.output_limit,
            fd_limit=self.open_max))

    def _fork(self, key: int, read_fd: int | None, handed: tuple[int, ...],
              run: Callable[[], NoReturn]) -> None:
        """Fork a child that calls ``run``.  ``read_fd``: the pipe it writes, to forward;
        ``handed``: descriptors only the child keeps, closed here once it has them.

        The child never returns here: it unwinds (:class:`ChildExit`) out of the server's
        frames to :func:`fork_serve`, so no ``finally`` on this path may touch anything.
        """
        unused = handed if read_fd is None else (*handed, read_fd)  # if there is no child
        if os.getppid() != self.host_pid:
            self.closed = True  # the host is gone: this attempt will be rerun by the next one
            for fd in unused:
                os.close(fd)
            return
        gc.freeze()
        try:
            pid = os.fork()
        except OSError as exc:
            gc.unfreeze()
            for fd in unused:
                os.close(fd)
            self._write(encode_exited(key, None, f"could not fork: {exc}"))
            return
        if pid == 0:
            try:
                self._forget()
                run()
            except ChildExit:
                raise
            except BaseException:  # noqa: S110 - nothing else may unwind into the server
                pass
            os._exit(1)
        gc.unfreeze()  # the server's own garbage stays collectable
        for fd in handed:
            os.close(fd)
        child = _Forked(key, pid, read_fd, bytearray())
        self.children[key] = child
        self.by_pid[pid] = child
        if read_fd is not None:
            os.set_blocking(read_fd, False)
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


def fork_serve(config_path: str, base_dir: str, max_result: int, output_limit: int,
               pool_socket: int) -> None:
    # fd 0: requests from the host; fd 1: our channel to it; fd 2: our own error log;
    # pool_socket: warm workers' requests, with their pipes.
    sys.path.insert(0, base_dir)
    try:
        allow, limits = load_allow_list(config_path)
        ForkServer(allow, max_result, output_limit, limits, pool_socket).run()
    except ChildExit as done:  # only ever in a forked child, its job answered
        code = done.code
        del done  # the traceback holds the server's frames
        exit_child(code)
