"""The host's side of the fork server: start it, ask it for children, route what it says.

``process`` isolation on POSIX forks each attempt from one warm, single-threaded server
child (:class:`asyncjobs.workers.forkserver_server.ForkServer`) instead of starting an
interpreter per attempt.
This module owns that server process: it starts it lazily, writes ``fork`` and ``kill``
requests, and reads one channel on which the server forwards every line its children write
(behind the key of the attempt it belongs to) and says when a child started, broke the
protocol or was reaped.  Each attempt is a :class:`ForkedHandle` (the launcher's
``ForkedJob``): this module only routes, the attempt judges (strictly) what its child said.

If the server dies, every attempt whose child had started ends as crashed (with the tail
of the server's own stderr, also logged) and their process groups are killed from here (the
server can no longer do it); attempts whose child had not started are requeued; the launcher
starts a new server for the next attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import socket
from pathlib import Path
from typing import IO, Protocol

from ..config import Settings
from ..files import create_private, read_tail
from ..models import Claimed
from .channel import message_limit
from .child import command
from .procs import (
    describe_exit,
    kill_marked,
    new_group_options,
    signal_group,
    worker_environment,
    worker_label,
)
from .protocol import (
    Broken,
    Exited,
    Forwarded,
    ProtocolError,
    Started,
    decode_server,
    encode_fork,
    encode_kill,
    encode_pool,
)

log = logging.getLogger("asyncjobs.workers.forkserver")


async def spawn_worker(settings: Settings, allow_list: Path, mode: str, path: Path, *,
                       append: bool = False, extra: int = 0, pool_socket: int | None = None,
                       ) -> tuple[asyncio.subprocess.Process, IO[bytes]]:
    """Start ``python -m asyncjobs.workers.child`` in ``mode`` (pool, once or forkserver) in its own
    process group, its stderr to a new private file at ``path``, which is returned open
    (never reopened by path: a job could have put a symlink or FIFO there).  Its environment
    carries its label, :func:`worker_label` of ``path``, inherited by whatever its jobs start.
    ``pool_socket``: the fork server's end of its socket for warm workers' requests."""
    stderr = create_private(path, append=append)
    limit = message_limit(settings.max_result_bytes, settings.max_output_bytes) + extra
    passed = () if pool_socket is None else (pool_socket,)
    try:
        proc = await asyncio.create_subprocess_exec(
            *command(str(allow_list), str(settings.base_dir), settings.max_result_bytes,
                     settings.max_output_bytes, mode, *map(str, passed)),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr,
            limit=limit, env=worker_environment(worker_label(str(path))), pass_fds=passed,
            **new_group_options(),
        )
    except BaseException:
        stderr.close()
        path.unlink(missing_ok=True)
        raise
    return proc, stderr


class ForkedHandle(Protocol):
    """What the server's reader tells one attempt about its child."""

    def on_started(self, pid: int) -> None: ...

    def on_line(self, line: bytes) -> None: ...

    def on_broken(self, why: str) -> None: ...

    def on_exited(self, code: int | None, why: str | None, strays: int = 0) -> None: ...

    def on_server_lost(self, why: str, errors: str, *, requeue: bool) -> None:
        """The server went away: ``errors`` is the tail of its own stderr; ``requeue``: the
        child never started (no ``started`` came) from a server that had worked, so the
        attempt may simply run elsewhere."""
        ...


class ServedWorker:
    """A warm worker forked by the fork server, as its handle
    (:class:`~asyncjobs.workers.pool.WorkerProcess`) sees a process: its pid, its two pipes
    (straight to the host: the server never reads them), its exit status and a way to
    signal it -- the last two through the server, which alone knows whether the pid is
    still its unreaped child."""

    def __init__(self, server: ForkServerProcess, key: int) -> None:
        loop = asyncio.get_running_loop()
        self.server = server
        self.key = key
        self.pid = 0
        self.returncode: int | None = None
        self.strays = 0  # its jobs' processes the server killed with it
        self.lost: str | None = None  # the server went away: why (its status is unknown)
        self.stdin: asyncio.WriteTransport | None = None
        self.stdout: asyncio.StreamReader | None = None
        self._channel: asyncio.ReadTransport | None = None
        self.started: asyncio.Future[int] = loop.create_future()
        self._exited: asyncio.Future[int | None] = loop.create_future()

    async def connect(self, jobs: int, channel: int, limit: int) -> None:
        """Take the host's ends of the worker's pipes: ``jobs`` to write, ``channel`` to read."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=limit)
        try:
            self.stdin, _ = await loop.connect_write_pipe(
                asyncio.Protocol, os.fdopen(jobs, "wb", buffering=0))
        except BaseException:
            os.close(channel)
            raise
        self._channel, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(channel, "rb", buffering=0))
        self.stdout = reader

    def disconnect(self) -> None:
        """Close our ends of its pipes (it was never forked: nobody will close them)."""
        for transport in (self.stdin, self._channel):
            if transport is not None:
                transport.close()

    async def wait(self) -> int | None:
        """Until the server has reaped it (or itself went away): its exit status."""
        return await asyncio.shield(self._exited)

    def signal(self, *, force: bool) -> None:
        """SIGTERM (or SIGKILL) its group, through the server, unless it was reaped."""
        if not self._exited.done():
            self.server.kill(self.key, force=force)

    # -- what the server's reader tells us (ForkedHandle) ----------------------------------

    def on_started(self, pid: int) -> None:
        self.pid = pid
        if not self.started.done():
            self.started.set_result(pid)

    def on_line(self, line: bytes) -> None:
        """Never called: a warm worker's channel does not pass through the server."""

    def on_broken(self, why: str) -> None:
        """Never called, as :meth:`on_line`."""

    def on_exited(self, code: int | None, why: str | None, strays: int = 0) -> None:
        self.returncode = code
        self.strays = strays
        if not self.started.done():
            self.started.set_exception(OSError(why or "the fork server did not fork it"))
        if not self._exited.done():
            self._exited.set_result(code)

    def on_server_lost(self, why: str, errors: str, *, requeue: bool) -> None:
        # The server's own error output is logged by the server's handle, not repeated here.
        self.lost = why
        self.on_exited(None, why)


class ForkServerProcess:
    """One running fork server and the attempts and warm workers it has children for."""

    def __init__(self, proc: asyncio.subprocess.Process, errors: IO[bytes], path: Path, *,
                 grace: float, pool_socket: socket.socket, limit: int) -> None:
        self.proc = proc
        self.errors = errors
        self.path = path
        self.grace = grace
        self.pool_socket = pool_socket  # our end: warm workers' requests, with their pipes
        self.limit = limit  # the longest line a warm worker may send
        self.handles: dict[int, ForkedHandle] = {}
        self.pids: dict[int, int] = {}  # key -> pid, to clean up if the server dies
        self._keys = itertools.count(1)
        self.dead = False
        self.healthy = False  # it has forked a child: it got past its start-up
        self.closing = False
        self._reader = asyncio.create_task(self._read_loop(), name=f"forkserver-{proc.pid}")

    @classmethod
    async def start(cls, settings: Settings, allow_list: Path, path: Path) -> ForkServerProcess:
        """Start the server in its own session; its stderr (its own faults only) to ``path``."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            # Its forwarded lines carry a key in front: a little more than a worker's limit.
            proc, errors = await spawn_worker(settings, allow_list, "forkserver", path,
                                              extra=64, pool_socket=theirs.fileno())
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        return cls(proc, errors, path, grace=settings.workers.kill_grace, pool_socket=ours,
                   limit=message_limit(settings.max_result_bytes, settings.max_output_bytes))

    @property
    def alive(self) -> bool:
        return not self.dead and self.proc.returncode is None

    def fork(self, job: Claimed, output: Path, identity: tuple[int, int],
             handle: ForkedHandle) -> int:
        """Ask for a child running ``job``; its messages go to ``handle``.  Returns its key.

        ``output`` is the capture file the caller created (and reads through its own
        handle); ``identity`` its ``(st_dev, st_ino)``, so the child opens only that file.
        """
        key = next(self._keys)
        if self.dead:  # it went away after the launcher picked it: as if it had been queued
            asyncio.get_running_loop().call_soon(functools.partial(
                handle.on_server_lost, "the fork server went away before this attempt ran",
                self.error_tail(), requeue=self.healthy))
            return key
        self.handles[key] = handle
        self._write(encode_fork(key, str(output), identity, job))
        return key

    async def fork_pool(self, output: Path, identity: tuple[int, int],
                        label: str) -> ServedWorker:
        """A new warm worker, forked; ``output`` and ``identity`` as for :meth:`fork`,
        ``label`` its :func:`worker_label`.  Raises ``OSError`` if it could not be forked."""
        if self.dead:
            raise OSError("the fork server went away")
        key = next(self._keys)
        try:
            request = encode_pool(key, str(output), identity, label)
        except TypeError as exc:  # a path that is not valid UTF-8
            raise OSError(f"cannot ask the fork server for a worker at {output}: {exc}") from None
        worker = ServedWorker(self, key)
        jobs_r, jobs_w = os.pipe()
        channel_r, channel_w = os.pipe()
        try:
            # A datagram, whole or not at all; it cannot block (tiny, and read at once).
            socket.send_fds(self.pool_socket, [request], [jobs_r, channel_w])
        except OSError:
            os.close(jobs_w)
            os.close(channel_r)
            raise
        finally:
            os.close(jobs_r)  # the server has its copies now (or never will)
            os.close(channel_w)
        self.handles[key] = worker
        try:
            await worker.connect(jobs_w, channel_r, self.limit)
            await worker.started
        except BaseException:
            self.handles.pop(key, None)
            worker.disconnect()
            raise
        return worker

    def kill(self, key: int, *, force: bool) -> None:
        """SIGTERM (or SIGKILL) the child's group, if the server has not reaped it yet."""
        if key in self.handles:
            self._write(encode_kill(key, force=force))

    def _write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        # On a broken pipe the reader sees the channel end and fails the attempts.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.proc.stdin.write(data)

    async def _read_loop(self) -> None:
        assert self.proc.stdout is not None
        try:
            while line := await self.proc.stdout.readline():
                self._dispatch(line)
        except (ValueError, ProtocolError) as exc:  # a bug in the server, not in a job
            log.error("fork server %s broke its protocol: %s", self.proc.pid, exc)
            signal_group(self.proc.pid, force=True)
        finally:
            await self._lost()

    def _dispatch(self, line: bytes) -> None:
        message = decode_server(line)
        if isinstance(message, Forwarded):
            handle = self.handles.get(message.key)
            if handle is not None:
                handle.on_line(message.line)
        elif isinstance(message, Started):
            self.healthy = True
            if (handle := self.handles.get(message.key)) is not None:
                self.pids[message.key] = message.pid
                handle.on_started(message.pid)
        elif isinstance(message, Broken):
            if (handle := self.handles.get(message.key)) is not None:
                handle.on_broken(message.why)
        else:
            assert isinstance(message, Exited)
            self.pids.pop(message.key, None)
            if (handle := self.handles.pop(message.key, None)) is not None:
                handle.on_exited(message.code, message.why, message.strays)

    async def _lost(self) -> None:
        """The server's channel ended: each child it still had is killed and crashed; an
        attempt whose child never started is requeued (if the server had worked at all)."""
        self.dead = True
        handles, self.handles = self.handles, {}
        pids, self.pids = self.pids, {}
        for pid in pids.values():
            # Orphaned by the server: nobody else will stop them.  Their groups outlive a
            # reap by init only while a member lives, so a stale id is a tiny, brief risk.
            signal_group(pid, force=True)
        if pids:
            # And what their jobs started in other sessions, reparented to init with the
            # server (a subreaper) gone: found by the label they inherited.
            await asyncio.to_thread(kill_marked, worker_label(str(self.path)))
        if self.closing and not handles:
            return
        code: int | None = None
        with contextlib.suppress(TimeoutError):
            code = await asyncio.wait_for(asyncio.shield(self.proc.wait()), 1.0)
        gone = "the fork server went away" + (
            f" ({describe_exit(code)})" if code is not None else "")
        errors = self.error_tail()
        log.error("fork server %s: %s (%d attempts)%s", self.proc.pid, gone, len(handles),
                  f"; it wrote:\n{errors}" if errors else "")
        why = gone + " while this attempt ran"
        for key, handle in handles.items():
            # Not while closing: the launcher is going away, nothing would run it again.
            handle.on_server_lost(why, errors, requeue=(
                self.healthy and not self.closing and key not in pids))

    def error_tail(self, limit: int = 4000) -> str:
        """What the server itself wrote to stderr (a traceback if it failed)."""
        return read_tail(self.errors, limit)

    async def close(self) -> None:
        """End of input: the server kills and reaps what it still runs, reports, and exits;
        one that does not within the grace is killed.  Then its error file is removed."""
        self.closing = True
        if self.proc.returncode is None and self.proc.stdin is not None:
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), self.grace + 1.0)
            except TimeoutError:
                signal_group(self.proc.pid, force=True)
                await self.proc.wait()
        await asyncio.gather(self._reader, return_exceptions=True)
        self.pool_socket.close()
        self.errors.close()
        self.path.unlink(missing_ok=True)
