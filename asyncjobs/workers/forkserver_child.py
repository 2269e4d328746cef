"""What runs in a child of the fork server, from the ``fork()`` to its exit.

The forked child leaves the server's world first (its own session, only its own descriptors,
the server's signal set-up undone), then runs its one job exactly as a spawned worker does
(:mod:`asyncjobs.workers.jobcall`, :mod:`asyncjobs.workers.channel`) -- or, forked as a warm
worker (:func:`run_pool`), the jobs the host feeds it (:mod:`asyncjobs.workers.warm`) -- and
ends like one (:func:`exit_child`) without paying for an interpreter's teardown.  The
server's loop is :mod:`asyncjobs.workers.forkserver_server`; its host side
:mod:`asyncjobs.workers.forkserver`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

from .. import files
from . import context, procs
from .channel import Capture, Channel, send_reply
from .guard import Limits, guarded
from .jobcall import run_job
from .protocol import ForkRequest, PoolRequest
from .warm import run_jobs


class ChildExit(BaseException):
    """Raised in a forked child after its job, caught by
    :func:`asyncjobs.workers.forkserver_server.fork_serve` to exit."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def run_forked(request: ForkRequest, read_fd: int, write_fd: int, *, server_pid: int,
               allow: dict[str, Any], limits: Limits, max_result: int, output_limit: int,
               fd_limit: int) -> NoReturn:
    """The forked child: a fresh session, only its own descriptors, then the job.

    Called by the server right after ``fork()`` with what it knows: its own pid (to notice
    it died already), the allow-list and bounds it loaded, and ``fd_limit``
    (:func:`open_max`, computed once in the server rather than once per attempt).  Never
    returns: it ends in ``os._exit`` or raises :class:`ChildExit`.
    """
    def setup() -> Callable[[], None]:
        os.close(read_fd)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)  # the server's input (the host's requests) is not the job's
        # The host created the file (and reads it through its own handle): open that very
        # file, never a FIFO, symlink or other file a job may have put at its path.
        capture_fd = files.open_existing(request.output, request.identity)
        # Keep only the pipe and the capture file: not the host's channel (fd 1 until
        # Capture.reset), not the other children's pipes, not the server's self-pipe.
        _close_fds_except(write_fd, capture_fd, limit=fd_limit)
        capture = Capture(capture_fd, output_limit)
        capture.reset()
        channel = Channel(write_fd)

        def work() -> None:
            channel.job_id = request.job.id
            context.set_reporter(channel.progress)
            reply = guarded(request.job, limits,
                            functools.partial(run_job, request.job, allow, max_result, channel),
                            functools.partial(send_reply, request.job, channel=channel,
                                              capture=capture))
            send_reply(request.job, reply, channel, capture)

        return work

    _child(server_pid, setup)


def run_pool(request: PoolRequest, jobs_fd: int, channel_fd: int, *, server_pid: int,
             allow: dict[str, Any], limits: Limits, max_result: int, output_limit: int,
             fd_limit: int) -> NoReturn:
    """A warm worker forked by the server: the host's two pipes (``jobs_fd``, ``channel_fd``,
    passed to the server with the request) become its fds 0 and 1, the capture file the
    host created its fd 2, and then it is a warm worker like a spawned one
    (:func:`asyncjobs.workers.warm.run_jobs`) until the host closes its input.

    Only the fork costs: the interpreter, asyncjobs' worker modules and the allow-list are
    the server's, already loaded.  Never returns (see :func:`run_forked`).
    """
    def setup() -> Callable[[], None]:
        # What its jobs start carries its label, as a spawned worker's do (procs.MARKER).
        os.environ[procs.MARKER] = request.label
        capture_fd = files.open_existing(request.output, request.identity, append=True)
        os.dup2(jobs_fd, 0)
        os.dup2(channel_fd, 1)
        os.dup2(capture_fd, 2)
        _close_fds_except(limit=fd_limit)  # the server's channel, pipes and sockets
        return functools.partial(run_jobs, allow, limits, max_result, output_limit,
                                 once=False)

    _child(server_pid, setup)


def _child(server_pid: int, setup: Callable[[], Callable[[], None]]) -> NoReturn:
    """Every forked child's life: leave the server, ``setup`` its descriptors, run what
    ``setup`` returned, and end.

    Until ``setup`` is done fds 1 and 2 are still the server's (its channel to the host, its
    error log), so a failure there leaves at once, writing nothing.  After it, the child ends
    like a spawned worker (non-daemon threads joined, atexit handlers run --
    logging.shutdown among them -- files flushed): it unwinds out of the server's frames to
    :func:`~asyncjobs.workers.forkserver_server.fork_serve`, which ends it with
    :func:`exit_child`.  Nothing between here and there catches :class:`ChildExit`, so the
    child never runs the server's loop.
    """
    code = 1
    ready = False
    try:
        _leave_server(server_pid)
        work = setup()
        ready = True
        work()
        code = 0
    except BaseException:
        if ready:  # else fd 2 is still the server's error log: not this child's to write
            with contextlib.suppress(BaseException):
                traceback.print_exc()
                sys.stderr.flush()
    finally:
        if not ready:
            os._exit(code)  # still on the server's descriptors: leave at once
    raise ChildExit(code)


def _leave_server(server_pid: int) -> None:
    """A forked child's first steps: its own session, and nothing of the server's signals."""
    import signal  # noqa: PLC0415 - already loaded by the server; a dict lookup

    os.setsid()  # its own group, so a kill reaches whatever the job starts
    # Nothing links a session leader to the server: die with it (Linux), and if it died
    # already -- between the fork and here, maybe before it could tell the host our pid --
    # do not start any job at all.
    procs.set_parent_death_signal()
    if os.getppid() != server_pid:
        os._exit(1)
    procs.become_subreaper()  # what the job starts stays below us (see guard)
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def open_max() -> int:
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
