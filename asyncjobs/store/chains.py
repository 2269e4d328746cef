"""A chain's steps, and the two operator actions that move them: cancel and retry (SQLite).

A finish follows its job's chain (:func:`follow_chains`: the next step made due with this
result as ``previous``, or the rest cancelled as ``ChainBroken``); a cancel of a pending job
breaks its chain the same way; a retry revives the steps its failure broke.  Plain functions
on a ``sqlite3`` connection, run by the store's writer like :mod:`.writes`;
:mod:`.postgres_chains` is this module's PostgreSQL twin.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import orjson

from ..errors import JobNotFound, WrongState
from ..models import TERMINAL, Status
from . import CancelResult, Finished, check_transition
from .rows import dumps
from .rules import retried_step_waits


def follow_chains(conn: sqlite3.Connection,
                  finished: Sequence[Finished]) -> tuple[list[int], list[int]]:
    """Advance or break the chains of the ``finished`` steps; return the steps made due and
    the steps cancelled (``ChainBroken``), so that both can be announced."""
    advanced: list[int] = []
    broken: list[int] = []
    for f in finished:
        if f.claimed.chain_id is None:
            continue
        if f.transition.status is Status.COMPLETED:
            advanced += _advance_chain(conn, f.claimed.id, f.transition.result, f.at)
        elif f.transition.status in TERMINAL:
            broken += break_chain(conn, f.claimed.id, f.transition.status, f.at)
    return advanced, broken


def _chain_position(conn: sqlite3.Connection, job_id: int) -> tuple[int, int] | None:
    row = conn.execute("SELECT chain_id, chain_pos FROM jobs WHERE id = ? AND chain_id IS NOT "
                       "NULL", (job_id,)).fetchone()
    return (row[0], row[1]) if row else None


def _advance_chain(conn: sqlite3.Connection, job_id: int, result: Any, now: float) -> list[int]:
    """Make the next step due, passing this step's result as ``previous``."""
    position = _chain_position(conn, job_id)
    if position is None:
        return []
    row = conn.execute("SELECT id, kwargs FROM jobs WHERE chain_id = ? AND chain_pos = ? AND "
                       "status = 'pending'", (position[0], position[1] + 1)).fetchone()
    if row is None:
        return []
    kwargs = orjson.loads(row[1])
    kwargs["previous"] = result
    conn.execute("UPDATE jobs SET kwargs = ?, run_at = ? WHERE id = ?", (dumps(kwargs), now,
                                                                        row[0]))
    return [row[0]]


def break_chain(conn: sqlite3.Connection, job_id: int, status: Status, now: float) -> list[int]:
    """Cancel the steps after ``job_id``, naming the step that broke the chain."""
    position = _chain_position(conn, job_id)
    if position is None:
        return []
    rows = conn.execute(
        "UPDATE jobs SET status = 'cancelled', finished_at = ?, error_type = 'ChainBroken', "
        "error_message = ? WHERE chain_id = ? AND chain_pos > ? AND status = 'pending' "
        "RETURNING id",
        (now, f"chain step {position[1] + 1} (job {job_id}) ended {status.value}",
         position[0], position[1])).fetchall()
    return [row[0] for row in rows]


def status_of(conn: sqlite3.Connection, job_id: int) -> Status:
    row = conn.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise JobNotFound(job_id)
    return Status(row[0])


def _reserved(conn: sqlite3.Connection, job_id: int) -> bool:
    row = conn.execute("SELECT reserved_at FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return row is not None and row[0] is not None


def cancel(conn: sqlite3.Connection, job_id: int, now: float, reason: str) -> CancelResult:
    status = status_of(conn, job_id)
    if status in TERMINAL:
        raise WrongState(f"job {job_id} is already {status.value}")
    if status is Status.RUNNING or _reserved(conn, job_id):
        # Held by a worker (running, or reserved and maybe starting this very moment): only
        # its host can stop it there; it records the outcome when the attempt ends.
        conn.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
        return CancelResult(Status.RUNNING, [])
    check_transition(job_id, status, Status.CANCELLED)
    conn.execute("UPDATE jobs SET status = 'cancelled', finished_at = ?, error_type = "
                 "'Cancelled', error_message = ? WHERE id = ? AND status = 'pending'",
                 (now, reason, job_id))
    rest = break_chain(conn, job_id, Status.CANCELLED, now)
    return CancelResult(status, [job_id, *rest])


def honour_cancel_marks(conn: sqlite3.Connection, ids: Sequence[int],
                        now: float) -> list[int]:
    """Cancel those of ``ids`` that carry a cancel mark and are pending again, with the rest
    of their chains; return the jobs cancelled.

    A cancel of a reserved or running job is only a mark (see :func:`cancel`) for its host
    to act on; it stays until the job is finished.  The attempt may still end otherwise than
    killed -- failed and to be retried, or given back before it started -- and then the
    job, pending again, is cancelled here (``ids``: the jobs a round or a release just made
    pending), never claimed again.
    """
    marks = ",".join("?" * len(ids))
    rows = conn.execute(
        "UPDATE jobs SET status = 'cancelled', finished_at = ?, error_type = 'Cancelled', "  # noqa: S608
        "error_message = 'cancelled by request', cancel_requested = 0 "
        f"WHERE id IN ({marks}) AND cancel_requested = 1 AND status = 'pending' "
        "AND reserved_at IS NULL RETURNING id", (now, *ids)).fetchall()
    cancelled: list[int] = []
    for (job_id,) in sorted(rows):
        cancelled += [job_id, *break_chain(conn, job_id, Status.CANCELLED, now)]
    return cancelled


def retry(conn: sqlite3.Connection, job_id: int, now: float) -> list[int]:
    """Put a failed or cancelled job back with a fresh budget; revive its chain's rest."""
    status = status_of(conn, job_id)
    if status not in (Status.FAILED, Status.CANCELLED):  # running -> pending is the policy's
        raise WrongState(f"job {job_id} is {status.value}; only failed or cancelled jobs can "
                         "be retried")
    # Its unique_key may have gone to a newer job meanwhile; two live jobs may not share one.
    twin = conn.execute("SELECT other.id FROM jobs AS this JOIN jobs AS other "
                        "ON other.unique_key = this.unique_key AND other.id != this.id "
                        "WHERE this.id = ? AND other.status IN ('pending', 'running')",
                        (job_id,)).fetchone()
    if twin is not None:
        raise WrongState(f"job {job_id} cannot be retried while job {twin[0]} with the same "
                         "unique_key is pending or running")
    check_transition(job_id, status, Status.PENDING)
    position = _chain_position(conn, job_id)
    run_at = _retried_step_due(conn, job_id, position, now) if position else now
    conn.execute("UPDATE jobs SET status = 'pending', run_at = ?, attempts = 0, "
                 "interruptions = 0, finished_at = NULL, error_type = NULL, "
                 "error_message = NULL, result = NULL, cancel_requested = 0 "
                 "WHERE id = ? AND status = ?",
                 (run_at, job_id, status.value))
    if position is None:
        return [job_id]
    rows = conn.execute(
        "UPDATE jobs SET status = 'pending', run_at = NULL, finished_at = NULL, "
        "error_type = NULL, error_message = NULL, attempts = 0, cancel_requested = 0 "
        "WHERE chain_id = ? "
        "AND chain_pos > ? AND status = 'cancelled' AND error_type = 'ChainBroken' "
        "RETURNING id", position).fetchall()
    return [job_id, *(row[0] for row in rows)]


def _retried_step_due(conn: sqlite3.Connection, job_id: int, position: tuple[int, int],
                      now: float) -> float | None:
    """When a retried chain step may run: a step runs only after the one before it
    completed, with that result as ``previous``.

    Completed: due now, ``previous`` set afresh.  Pending or running: back to waiting (run_at
    NULL) until it completes.  Failed or cancelled: refused, naming the step to retry.
    """
    chain_id, pos = position
    if pos == 0:
        return now
    row = conn.execute("SELECT id, status, result FROM jobs WHERE chain_id = ? AND "
                       "chain_pos = ?", (chain_id, pos - 1)).fetchone()
    if retried_step_waits(job_id, position, None if row is None else (row[0], row[1])):
        return None
    result = row[2]
    kwargs = orjson.loads(conn.execute("SELECT kwargs FROM jobs WHERE id = ?",
                                       (job_id,)).fetchone()[0])
    kwargs["previous"] = orjson.loads(result) if result is not None else None
    conn.execute("UPDATE jobs SET kwargs = ? WHERE id = ?", (dumps(kwargs), job_id))
    return now
