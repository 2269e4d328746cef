"""How a worker process ends: as an interpreter exit looks to its job, without the teardown.

Shared by the spawned workers (:mod:`asyncjobs.workers.child`, at the end of their input) and
the fork server's children (:mod:`asyncjobs.workers.forkserver_child`, after their one job).
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
from typing import NoReturn


def exit_child(code: int) -> NoReturn:
    """End a worker as an interpreter ends, minus the interpreter's teardown.

    What a job can observe of a normal exit happens: non-daemon threads are joined,
    ``atexit`` handlers run (``logging.shutdown`` among them), and open files are flushed.
    What it cannot observe is skipped: tearing down every module and object, which costs a
    full interpreter finalisation (~10-14 ms of CPU: a fifth of what a recycled pool
    worker's replacement costs, paid every ``max_jobs_per_worker`` jobs, or per attempt in
    ``process`` isolation).  ``multiprocessing`` ends its forked children the same way.
    The scan for open files sees only what the job made: the worker froze everything it
    had loaded before its first job (``gc.freeze``), as the fork server does before a fork.
    """
    import atexit  # noqa: PLC0415 - only a worker's end needs these
    import io  # noqa: PLC0415
    import sys  # noqa: PLC0415

    with contextlib.suppress(BaseException):
        threading._shutdown()  # type: ignore[attr-defined]  # joins non-daemon threads
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    with contextlib.suppress(BaseException):
        for generation in range(3):  # not the worker's own objects: frozen before any job
            for obj in gc.get_objects(generation):
                if isinstance(obj, io.BufferedWriter | io.BufferedRandom | io.TextIOWrapper) \
                        and not obj.closed:
                    with contextlib.suppress(BaseException):
                        obj.flush()
    for stream in (sys.stdout, sys.stderr):  # made before the freeze: not in the scan
        with contextlib.suppress(BaseException):
            stream.flush()
    os._exit(code)
