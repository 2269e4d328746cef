"""The worker child: the one entry point both isolation modes run.

It re-checks the allow-list against ``config.json`` itself, imports the job's module only
then, calls the method (sync, or async through ``asyncio.run``), and answers on a private
channel.  Imports are kept to the minimum because every worker pays for them; ``asyncio`` is
imported only when a job is a coroutine.  It never imports the store, the API or aiohttp:
dependencies point from the host to the worker, never back.

Three modes: ``pool`` (a warm worker running the jobs fed on its stdin), ``once`` (one job,
then exit: ``process`` isolation where there is no ``fork``), and ``forkserver`` (POSIX):
a long-lived, single-threaded server that has imported this module and nothing of any job,
and ``fork()``s one child per ``process`` attempt and every warm worker, so an attempt or a
worker's recycle pays for a fork instead of an interpreter start-up.  See
:class:`~asyncjobs.workers.forkserver_server.ForkServer`.  ``pool`` and ``once`` are what
runs where the OS cannot fork.

This module is only the entry point.  The rest of a worker lives by concept:
:mod:`~asyncjobs.workers.warm` (the warm worker's loop), :mod:`~asyncjobs.workers.channel`
(the channel to the host, the inbox, the output capture), :mod:`~asyncjobs.workers.jobcall`
(allow-list, import, signature check, call, reply),
:mod:`~asyncjobs.workers.forkserver_server` (the fork server's loop) and
:mod:`~asyncjobs.workers.forkserver_child` (a forked child, from ``fork()`` to its exit).
"""

from __future__ import annotations

import sys

from . import procs
from .exiting import exit_child
from .jobcall import load_allow_list
from .warm import run_jobs


def command(allow_list: str, base_dir: str, max_result: int, output_limit: int,
            mode: str, *extra: str) -> list[str]:
    """How the host starts this module (see :func:`main`): ``mode`` is ``pool``, ``once``
    or ``forkserver`` (whose ``extra`` is the descriptor of its socket for warm workers'
    requests)."""
    return [sys.executable, "-m", "asyncjobs.workers.child", allow_list, base_dir, str(max_result),
            str(output_limit), mode, *extra]


def serve(config_path: str, base_dir: str, max_result: int, output_limit: int,
          once: bool) -> None:
    """A spawned worker: its stdin and stdout are the host's pipes, its stderr the capture
    file the host created for it."""
    sys.path.insert(0, base_dir)
    allow, limits = load_allow_list(config_path)
    procs.become_subreaper()  # what a job starts stays below us, to be killed at its end
    run_jobs(allow, limits, max_result, output_limit, once=once)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    config_path, base_dir, max_result, output_limit, mode, *extra = args
    if mode == "forkserver":
        # Imported here: a pool or once worker never pays for the fork server's module.
        from .forkserver_server import fork_serve  # noqa: PLC0415

        fork_serve(config_path, base_dir, int(max_result), int(output_limit), int(extra[0]))
        return
    serve(config_path, base_dir, int(max_result), int(output_limit), mode == "once")
    exit_child(0)  # its jobs' threads, atexit and files as at any exit; no teardown


if __name__ == "__main__":
    main()
