"""A chain's steps, and the two operator actions that move them: cancel and retry (PostgreSQL).

The twin of :mod:`.chains` (same steps, same semantics), as coroutines on one asyncpg
connection inside the caller's transaction; a check and the change that follows it see the
same row (``FOR UPDATE``), whatever another host does meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import orjson

from ..errors import JobNotFound, WrongState
from ..models import TERMINAL, Status
from . import CancelResult, Finished, check_transition
from .rows import dumps
from .rules import retried_step_waits


async def follow_chains(conn: asyncpg.Connection,
                        finished: Sequence[Finished]) -> tuple[list[int], list[int]]:
    """Advance or break the chains of the ``finished`` steps; return the steps made due and
    the steps cancelled (as :func:`.chains.follow_chains`)."""
    advanced: list[int] = []
    broken: list[int] = []
    for f in finished:
        if f.claimed.chain_id is None:
            continue
        if f.transition.status is Status.COMPLETED:
            advanced += await _advance_chain(conn, f.claimed.id, f.transition.result, f.at)
        elif f.transition.status in TERMINAL:
            broken += await break_chain(conn, f.claimed.id, f.transition.status, f.at)
    return advanced, broken


async def _chain_position(conn: asyncpg.Connection, job_id: int) -> tuple[int, int] | None:
    row = await conn.fetchrow("SELECT chain_id, chain_pos FROM jobs WHERE id = $1 AND "
                              "chain_id IS NOT NULL", job_id)
    return (row[0], row[1]) if row else None


async def _advance_chain(conn: asyncpg.Connection, job_id: int, result: Any,
                         now: float) -> list[int]:
    """Make the next step due, passing this step's result as ``previous``."""
    position = await _chain_position(conn, job_id)
    if position is None:
        return []
    row = await conn.fetchrow("SELECT id, kwargs FROM jobs WHERE chain_id = $1 AND "
                              "chain_pos = $2 AND status = 'pending'",
                              position[0], position[1] + 1)
    if row is None:
        return []
    kwargs = orjson.loads(row[1])
    kwargs["previous"] = result
    await conn.execute("UPDATE jobs SET kwargs = $1, run_at = $2 WHERE id = $3",
                       dumps(kwargs), now, row[0])
    return [row[0]]


async def break_chain(conn: asyncpg.Connection, job_id: int, status: Status,
                      now: float) -> list[int]:
    """Cancel the steps after ``job_id``, naming the step that broke the chain."""
    position = await _chain_position(conn, job_id)
    if position is None:
        return []
    rows = await conn.fetch(
        "UPDATE jobs SET status = 'cancelled', finished_at = $1, error_type = 'ChainBroken', "
        "error_message = $2 WHERE chain_id = $3 AND chain_pos > $4 AND status = 'pending' "
        "RETURNING id",
        now, f"chain step {position[1] + 1} (job {job_id}) ended {status.value}", *position)
    return [row[0] for row in rows]


async def _status_of(conn: asyncpg.Connection, job_id: int) -> tuple[Status, bool]:
    """The job's status and whether it is reserved.  FOR UPDATE: the check and the change
    that follows it see the same state, whatever another host does meanwhile."""
    row = await conn.fetchrow("SELECT status, reserved_at IS NOT NULL FROM jobs WHERE id = $1 "
                              "FOR UPDATE", job_id)
    if row is None:
        raise JobNotFound(job_id)
    return Status(row[0]), bool(row[1])


async def cancel(conn: asyncpg.Connection, job_id: int, now: float,
                 reason: str) -> CancelResult:
    status, reserved = await _status_of(conn, job_id)
    if status in TERMINAL:
        raise WrongState(f"job {job_id} is already {status.value}")
    if status is Status.RUNNING or reserved:
        # Held by a worker (running, or reserved and maybe starting this very moment): only
        # its host can stop it there: the engine signals it, and the mark reaches it in its
        # next round should the signal be lost.
        await conn.execute("UPDATE jobs SET cancel_requested = true WHERE id = $1", job_id)
        return CancelResult(Status.RUNNING, [])
    check_transition(job_id, status, Status.CANCELLED)
    await conn.execute("UPDATE jobs SET status = 'cancelled', finished_at = $1, error_type = "
                       "'Cancelled', error_message = $2 WHERE id = $3 AND status = 'pending'",
                       now, reason, job_id)
    rest = await break_chain(conn, job_id, Status.CANCELLED, now)
    return CancelResult(status, [job_id, *rest])


async def honour_cancel_marks(conn: asyncpg.Connection, ids: Sequence[int],
                              now: float) -> list[int]:
    """Cancel those of ``ids`` that carry a cancel mark and are pending again, with the rest
    of their chains; return the jobs cancelled (as :func:`.chains.honour_cancel_marks`,
    whose docstring says why)."""
    rows = await conn.fetch(
        "UPDATE jobs SET status = 'cancelled', finished_at = $2, error_type = 'Cancelled', "
        "error_message = 'cancelled by request', cancel_requested = false "
        "WHERE id = ANY($1::bigint[]) AND cancel_requested AND status = 'pending' "
        "AND reserved_at IS NULL RETURNING id", list(ids), now)
    cancelled: list[int] = []
    for job_id in sorted(int(r[0]) for r in rows):
        cancelled += [job_id, *await break_chain(conn, job_id, Status.CANCELLED, now)]
    return cancelled


async def retry(conn: asyncpg.Connection, job_id: int, now: float) -> list[int]:
    """Put a failed or cancelled job back with a fresh budget; revive its chain's rest."""
    status, _ = await _status_of(conn, job_id)
    if status not in (Status.FAILED, Status.CANCELLED):  # running -> pending is the policy's
        raise WrongState(f"job {job_id} is {status.value}; only failed or cancelled jobs can "
                         "be retried")
    twin = await conn.fetchval(
        "SELECT other.id FROM jobs AS this JOIN jobs AS other ON other.unique_key = "
        "this.unique_key AND other.id != this.id WHERE this.id = $1 AND other.status IN "
        "('pending', 'running')", job_id)
    if twin is not None:
        raise WrongState(f"job {job_id} cannot be retried while job {twin} with the same "
                         "unique_key is pending or running")
    position = await _chain_position(conn, job_id)
    run_at = await _retried_step_due(conn, job_id, position, now) if position else now
    await conn.execute("UPDATE jobs SET status = 'pending', run_at = $1, attempts = 0, "
                       "interruptions = 0, finished_at = NULL, error_type = NULL, "
                       "error_message = NULL, result = NULL, cancel_requested = false "
                       "WHERE id = $2 AND status = $3",
                       run_at, job_id, status.value)
    ids = [job_id]
    if position is not None:
        rows = await conn.fetch(
            "UPDATE jobs SET status = 'pending', run_at = NULL, finished_at = NULL, "
            "error_type = NULL, error_message = NULL, attempts = 0, cancel_requested = false "
            "WHERE chain_id = $1 "
            "AND chain_pos > $2 AND status = 'cancelled' AND error_type = 'ChainBroken' "
            "RETURNING id", *position)
        ids += [row[0] for row in rows]
    return ids


async def _retried_step_due(conn: asyncpg.Connection, job_id: int, position: tuple[int, int],
                            now: float) -> float | None:
    """When a retried chain step may run: only after the step before it completed, with
    that result as ``previous`` (as :func:`.chains._retried_step_due`).

    Completed: due now, ``previous`` set afresh.  Pending or running: back to waiting (run_at
    NULL) until it completes.  Failed or cancelled: refused, naming the step to retry.
    """
    chain_id, pos = position
    if pos == 0:
        return now
    row = await conn.fetchrow("SELECT id, status, result FROM jobs WHERE chain_id = $1 AND "
                              "chain_pos = $2", chain_id, pos - 1)
    if retried_step_waits(job_id, position, None if row is None else (row[0], row[1])):
        return None
    result = row[2]
    kwargs = orjson.loads(await conn.fetchval("SELECT kwargs FROM jobs WHERE id = $1", job_id))
    kwargs["previous"] = orjson.loads(result) if result is not None else None
    await conn.execute("UPDATE jobs SET kwargs = $1 WHERE id = $2", dumps(kwargs), job_id)
    return now
