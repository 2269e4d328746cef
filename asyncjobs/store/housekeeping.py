"""The SQLite store's housekeeping writes: schedules, host rows, and retention.

Like :mod:`.writes`, plain functions on a ``sqlite3`` connection, run by the store's writer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from ..models import JobSpec, Status
from . import HostRow
from .writes import submit


def save_schedule(conn: sqlite3.Connection, name: str, *, expression: str, next_run: float,
                  last_run: float | None = None, last_job_id: int | None = None) -> None:
    conn.execute(
        "INSERT INTO schedules (name, expression, next_run, last_run, last_job_id) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET expression = excluded.expression,"
        " next_run = excluded.next_run, last_run = COALESCE(excluded.last_run, last_run), "
        "last_job_id = COALESCE(excluded.last_job_id, last_job_id)",
        (name, expression, next_run, last_run, last_job_id))


def fire_schedule(conn: sqlite3.Connection, name: str, *, expression: str, spec: JobSpec,
                  slot: float, next_run: float, now: float) -> int | None:
    """Compare-and-set on the slot: only the scheduler that moves ``next_run`` off ``slot``
    enqueues the job; any other (another host, a stale view) gets None."""
    moved = conn.execute("UPDATE schedules SET next_run = ?, last_run = ? WHERE name = ? AND "
                         "expression = ? AND next_run = ?",
                         (next_run, now, name, expression, slot)).rowcount
    if not moved:
        return None
    (submitted,) = submit(conn, [spec], now)
    conn.execute("UPDATE schedules SET last_job_id = ? WHERE name = ?", (submitted.id, name))
    return submitted.id


def register_host(conn: sqlite3.Connection, host: HostRow) -> None:
    """Insert ``host``; end every other host's lease (SQLite admits one host at a time: the
    one registering holds the data directory's lock, so the others are gone)."""
    conn.execute("UPDATE hosts SET expires_at = ? WHERE id != ? AND expires_at > ?",
                 (host.started_at, host.id, host.started_at))
    conn.execute("INSERT OR REPLACE INTO hosts (id, url, pid, hostname, started_at, "
                 "heartbeat_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                 (host.id, host.url, host.pid, host.hostname, host.started_at,
                  host.heartbeat_at, host.expires_at))


def heartbeat(conn: sqlite3.Connection, host_id: str, now: float, expires_at: float) -> None:
    conn.execute("UPDATE hosts SET heartbeat_at = ?, expires_at = ? WHERE id = ?",
                 (now, expires_at, host_id))


def prune(conn: sqlite3.Connection, before: float, statuses: Sequence[Status],
          limit: int) -> int:
    marks = ",".join("?" * len(statuses))
    # Pinned to the finished_at index: by status, a prune that finds nothing old would walk
    # every finished job, inside the writer, every ten minutes.
    rows = conn.execute(
        "SELECT id FROM jobs INDEXED BY jobs_finished WHERE finished_at < ? "  # noqa: S608
        f"AND status IN ({marks}) LIMIT ?", (before, *(s.value for s in statuses), limit),
    ).fetchall()
    ids = [(row[0],) for row in rows]
    conn.executemany("DELETE FROM attempts WHERE job_id = ?", ids)
    conn.executemany("DELETE FROM jobs WHERE id = ?", ids)
    # Throughput buckets follow the jobs' retention (only the last hour is ever read).
    conn.execute("DELETE FROM attempt_minutes WHERE minute < ?", (before,))
    return len(ids)
