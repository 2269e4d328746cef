"""The PostgreSQL store's housekeeping writes: schedules, host rows and pruning.

Like :mod:`.postgres_writes`, each runs on one asyncpg connection inside the caller's
transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from ..models import JobSpec, Status
from . import HostRow
from .postgres_writes import submit


async def save_schedule(conn: asyncpg.Connection, name: str, *, expression: str,
                        next_run: float, last_run: float | None = None,
                        last_job_id: int | None = None) -> None:
    await conn.execute(
        "INSERT INTO schedules (name, expression, next_run, last_run, last_job_id) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO UPDATE SET "
        "expression = excluded.expression, next_run = excluded.next_run, "
        "last_run = coalesce(excluded.last_run, schedules.last_run), "
        "last_job_id = coalesce(excluded.last_job_id, schedules.last_job_id)",
        name, expression, next_run, last_run, last_job_id)


async def fire_schedule(conn: asyncpg.Connection, name: str, *, expression: str,
                        spec: JobSpec, slot: float, next_run: float, now: float) -> int | None:
    """Compare-and-set on the slot: of several hosts firing it, one moves ``next_run`` off
    ``slot`` and enqueues the job (the others' update waits on its row lock, then matches
    nothing); the rest get None."""
    moved = await conn.fetchval(
        "UPDATE schedules SET next_run = $1, last_run = $2 WHERE name = $3 AND expression = $4 "
        "AND next_run = $5 RETURNING name", next_run, now, name, expression, slot)
    if moved is None:
        return None
    (submitted,) = await submit(conn, [spec], now)
    await conn.execute("UPDATE schedules SET last_job_id = $1 WHERE name = $2", submitted.id,
                       name)
    return submitted.id


async def register_host(conn: asyncpg.Connection, host: HostRow) -> None:
    """Insert or replace ``host``'s row; other hosts' rows are theirs to keep alive."""
    await conn.execute(
        "INSERT INTO hosts (id, url, pid, hostname, started_at, heartbeat_at, expires_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO UPDATE SET url = excluded.url, "
        "pid = excluded.pid, hostname = excluded.hostname, started_at = excluded.started_at, "
        "heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at",
        host.id, host.url, host.pid, host.hostname, host.started_at, host.heartbeat_at,
        host.expires_at)


async def heartbeat(conn: asyncpg.Connection, host_id: str, now: float,
                    expires_at: float) -> None:
    await conn.execute("UPDATE hosts SET heartbeat_at = $1, expires_at = $2 WHERE id = $3",
                       now, expires_at, host_id)


async def prune(conn: asyncpg.Connection, before: float, statuses: Sequence[Status],
                limit: int) -> int:
    rows = await conn.fetch(
        "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE finished_at < $1 AND "
        "status = ANY($2::text[]) LIMIT $3) RETURNING id",
        before, [s.value for s in statuses], limit)
    return len(rows)
