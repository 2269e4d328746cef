"""What a worker does around each job so that the job stays within its bounds.

Two bounds, both enforced inside the worker (pool worker, ``once`` worker or fork server's
child), so the host needs no per-attempt polling:

* **Memory**: a class's ``memory_limit`` (MiB) is watched by a thread that samples the
  resident set of the worker and of every process below it every ``INTERVAL`` seconds.
  Over the limit, the worker answers for the job itself (a ``crashed`` attempt whose error
  is ``MemoryLimitExceeded``) and kills its own process group and every stray: a Python
  job cannot be stopped half-way in a state the next job could trust.  The thread needs
  the interpreter lock: a single C call that allocates while holding it (``b"x" * n``) is
  checked when it returns.  ``RLIMIT_AS`` was not chosen: it counts address space, not
  memory, and a Python process reserves far more of it than it touches.
* **Processes**: when the job returns, every process it started and left running --
  whatever session or group it moved to -- gets SIGTERM, then SIGKILL after ``kill_grace``
  (:func:`asyncjobs.workers.procs.end_strays`); the count goes into the answer as
  ``strays``.  The worker is a child subreaper, so nothing escapes its tree.

Imports stay light: every worker loads this module.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from . import procs
from .protocol import ErrorReport, JobRequest, Reply

INTERVAL = 0.05  # seconds between two samples of a limited job's memory
MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class Limits:
    """What the host wrote in the run directory's allow-list about bounds (``limits``)."""

    kill_grace: float = 5.0
    memory_limit: dict[str, int] = field(default_factory=dict)  # job class -> MiB
    max_memory_per_worker: int | None = None  # MiB; a pool worker past it after a job exits

    @classmethod
    def from_doc(cls, doc: object) -> Limits:
        """Read from the allow-list document; anything malformed falls back to no limit."""
        if not isinstance(doc, dict):
            return cls()
        raw = doc.get("limits")
        raw = raw if isinstance(raw, dict) else {}
        jobs = doc.get("jobs")
        memory = {name: entry["memory_limit"] for name, entry in
                  (jobs.items() if isinstance(jobs, dict) else ())
                  if isinstance(entry, dict) and isinstance(entry.get("memory_limit"), int)}
        grace = raw.get("kill_grace")
        recycle = raw.get("max_memory_per_worker")
        return cls(kill_grace=float(grace) if isinstance(grace, int | float) else 5.0,
                   memory_limit=memory,
                   max_memory_per_worker=recycle if isinstance(recycle, int) else None)

    def worker_too_big(self) -> bool:
        """Whether this pool worker has grown past ``max_memory_per_worker`` (then it exits)."""
        limit = self.max_memory_per_worker
        return limit is not None and procs.resident_bytes(os.getpid()) > limit * MIB


class MemoryWatch:
    """A thread that calls ``on_exceeded(resident bytes)`` once the tree passes ``limit``."""

    def __init__(self, limit_mib: int, on_exceeded: Callable[[int], None]) -> None:
        self.limit = limit_mib * MIB
        self.on_exceeded = on_exceeded
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="asyncjobs-memory",
                                        daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        pid = os.getpid()
        while not self._stop.wait(INTERVAL):
            resident = procs.tree_resident_bytes(pid)
            if resident > self.limit:
                self.on_exceeded(resident)  # does not return: the worker is killed
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def exceeded_reply(limit_mib: int, resident: int, strays: int) -> Reply:
    """The answer a worker sends for a job it kills for its memory (see ``protocol``)."""
    reply = Reply(False, crashed=True, error=ErrorReport(
        "MemoryLimitExceeded", f"exceeded memory_limit {limit_mib} MiB (resident "
        f"{resident // MIB} MiB); worker killed", "", ["MemoryLimitExceeded"]))
    reply.strays = strays
    return reply


def guarded(job: JobRequest, limits: Limits, run: Callable[[], Reply],
            send: Callable[[Reply], None]) -> Reply:
    """Run one job (``run`` returns its answer) within ``limits``; the answer with its
    ``strays``.  Over its memory limit, ``send`` gets the worker's own answer and the worker
    dies (this never returns)."""
    limit = limits.memory_limit.get(job.cls)
    watch = None
    if limit is not None:
        def exceeded(resident: int) -> None:
            strays = procs.end_strays(0.0)
            send(exceeded_reply(limit, resident, strays))
            procs.kill_own_group()

        watch = MemoryWatch(limit, exceeded)
    try:
        reply = run()
    finally:
        if watch is not None:
            watch.stop()
    strays = procs.end_strays(limits.kill_grace)
    reply.strays = strays
    return reply
