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
instead of an interpreter start-up.  See :class:`~asyncjobs.workers.forkserver_server.ForkServer`.

This module is only the entry point and the pool/once serve loop.  The rest of a worker lives
by concept: :mod:`~asyncjobs.workers.channel` (the channel to the host, the inbox, the output
capture), :mod:`~asyncjobs.workers.jobcall` (allow-list, import, signature check, call, reply),
:mod:`~asyncjobs.workers.forkserver_server` (the fork server's loop) and
:mod:`~asyncjobs.workers.forkserver_child` (a forked child, from ``fork()`` to its exit).
"""

from __future__ import annotations

import functools
import gc
import os
import sys
import time

from . import context, procs
from .channel import Capture, Channel, Inbox, send_reply
from .exiting import exit_child
from .guard import guarded
from .jobcall import load_allow_list, run_job


def command(allow_list: str, base_dir: str, max_result: int, output_limit: int,
            mode: str) -> list[str]:
    """How the host starts this module (see :func:`main`): ``mode`` is ``pool``, ``once``
    or ``forkserver``."""
    return [sys.executable, "-m", "asyncjobs.workers.child", allow_list, base_dir, str(max_result),
            str(output_limit), mode]



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
    # What the worker loaded is kept for its life: out of the collector's way (its full
    # collections walk only what the jobs made), and out of exit_child's scan.
    gc.freeze()
    host_pid = os.getppid()
    while (job := inbox.next_job()) is not None:
        took_up = time.perf_counter()
        if os.getppid() != host_pid:
            # The host died: jobs still queued for us will be rerun by the next host (they
            # are "running" on disk), so starting them here would only run them twice.
            break
        channel.job_id = job.id
        capture.reset()
        reply = guarded(job, limits, functools.partial(run_job, job, allow, max_result, channel),
                        functools.partial(send_reply, job, channel=channel, capture=capture))
        inbox.job_done()  # the job's code has returned: nothing left to stop if input closes
        send_reply(job, reply, channel, capture, time.perf_counter() - took_up)
        if once or limits.worker_too_big():
            # Grown too big to keep (max_memory_per_worker): exit; the host requeues what it
            # sent ahead, which never started, and starts a fresh worker.
            break


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    config_path, base_dir, max_result, output_limit, mode = args
    if mode == "forkserver":
        # Imported here: a pool or once worker never pays for the fork server's module.
        from .forkserver_server import fork_serve  # noqa: PLC0415

        fork_serve(config_path, base_dir, int(max_result), int(output_limit))
        return
    serve(config_path, base_dir, int(max_result), int(output_limit), mode == "once")
    exit_child(0)  # its jobs' threads, atexit and files as at any exit; no teardown


if __name__ == "__main__":
    main()
