"""A warm worker's loop: jobs in on fd 0, answers out on fd 1, the jobs' output to fd 2.

Both kinds of warm worker run it: one spawned as its own interpreter
(:func:`asyncjobs.workers.child.serve`) and one forked by the fork server
(:func:`asyncjobs.workers.forkserver_child.run_pool`), which differ only in how they got
those three descriptors and the allow-list.
"""

from __future__ import annotations

import functools
import gc
import os
import time
from typing import Any

from . import context
from .channel import Capture, Channel, Inbox, send_reply
from .guard import Limits, guarded
from .jobcall import run_job


def run_jobs(allow: dict[str, Any], limits: Limits, max_result: int, output_limit: int, *,
             once: bool) -> None:
    """Run the jobs the host sends, in order, until it closes our input (or we must go).

    The channel moves to a private descriptor; the job's fds 1 and 2 both go to the capture
    file, and stdin becomes /dev/null, so a job can neither corrupt the channel with a
    ``print`` nor read our input.  Our parent is watched: if it dies (the host, or the
    fork server, which dies with the host), jobs still queued here are not started -- the
    next host reruns them (they are ``running`` on disk).
    """
    channel = Channel(os.dup(1))
    inbox = Inbox(os.fdopen(os.dup(0), "rb"), channel)
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    capture = Capture(os.dup(2), output_limit)  # a private fd the job cannot close by accident
    context.set_reporter(channel.progress)
    # What the worker loaded is kept for its life: out of the collector's way (its full
    # collections walk only what the jobs made), and out of exit_child's scan.
    gc.freeze()
    parent = os.getppid()
    while (job := inbox.next_job()) is not None:
        took_up = time.perf_counter()
        if os.getppid() != parent:
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
