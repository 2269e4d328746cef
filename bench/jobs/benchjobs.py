"""The benchmark's no-op job, shared by asyncjobs (``Bench.noop``) and the huey peer.

Its only side effect is one line appended to a record file: ``seq enqueued started ended``
(wall-clock epoch seconds).  The file is opened in append mode and written with one
``write`` per job, so lines from concurrent workers never interleave.  Every figure of the
benchmark is computed from these lines, the same way for both systems.
"""

from __future__ import annotations

import os
import time


def record(seq: int, enqueued: float, path: str) -> None:
    started = time.time()
    # No work: the job is the line below.
    ended = time.time()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{seq} {enqueued:.6f} {started:.6f} {ended:.6f}\n".encode())
    finally:
        os.close(fd)


class Bench:
    def noop(self, seq: int, enqueued: float, path: str) -> None:
        record(seq, enqueued, path)
