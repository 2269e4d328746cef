"""The PostgreSQL store: many hosts, one queue, on an asyncpg connection pool.

Every write is one transaction on a pooled connection (the steps are in
:mod:`.postgres_writes`); PostgreSQL's own locking takes the place of SQLite's single writer,
so several hosts write at once.  Reads run on the pool outside any explicit transaction.
A connection error (the server restarting, a network cut, ``pg_terminate_backend``) becomes
:class:`~asyncjobs.errors.Unavailable`, which the API answers with 503 and the dispatcher
retries; the pool opens fresh connections as they are needed, so the store heals itself once
the server is back.  The connection URL's password never leaves this module: every message
names the server by :func:`~asyncjobs.backend_url.redact_url`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg

from ..backend_url import redact_url
from ..engine.roles import Leader, Notifier
from ..errors import ConfigError, Unavailable
from ..models import Claimed, JobRecord, JobSpec, Status
from . import (
    CancelResult,
    Finished,
    HostRow,
    Page,
    Round,
    ScheduleState,
    Start,
    Stats,
    Submitted,
)
from . import postgres_chains as chains
from . import postgres_housekeeping as housekeeping
from . import postgres_writes as writes
from .postgres_roles import PgLeader, PgNotifier
from .postgres_schema import migrate
from .postgres_stats import FreshStatistics
from .rows import (
    CLAIM_COLUMNS,
    JOB_COLUMNS,
    attempt_from_row,
    claimed_from_row,
    job_from_row,
    page_from_rows,
    stats_from_rows,
)

log = logging.getLogger("asyncjobs.store")

T = TypeVar("T")
POOL_SIZE = 10  # connections per host: the dispatcher, API requests, the roles
CONNECT_TIMEOUT = 10.0  # seconds to reach the server before "unavailable"
COMMAND_TIMEOUT = 30.0  # seconds one statement may take before it is abandoned

# What a lost or unreachable server looks like through asyncpg (and the OS beneath it).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError, asyncpg.TooManyConnectionsError,
    # What asyncpg raises on a pooled connection the server ended while it sat idle.
    asyncpg.InternalClientError)


class PostgresStore:
    """The :class:`~asyncjobs.store.Store` on a PostgreSQL database shared by many hosts."""

    def __init__(self, url: str, *, durability: str = "full",
                 pool_size: int = POOL_SIZE) -> None:
        self.url = url
        self.where = redact_url(url)
        # "normal" acknowledges a commit before its WAL record is on disk: a crash of the
        # server may lose the last moments of writes, never corrupt the database.
        self._settings = {"synchronous_commit": "on" if durability == "full" else "off",
                          "application_name": "asyncjobs"}
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._notifier = PgNotifier(url, self.where)
        self._leaders: dict[str, PgLeader] = {}
        self._statistics = FreshStatistics(self._connection)

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            conn = await asyncpg.connect(self.url, timeout=CONNECT_TIMEOUT)
        except ValueError:
            # asyncpg could not read the URL (an unescaped '@' or ':' in the password, a port
            # that is not a number, an unknown sslmode): a config mistake, and its message
            # may quote part of the password, so it is not repeated.
            raise ConfigError("store", "a PostgreSQL URL asyncpg can read (percent-encode "
                              "special characters in the password: '@' as %40, ':' as %3A, "
                              "'/' as %2F; a numeric port)", self.where) from None
        except CONNECTION_ERRORS as exc:
            raise self._unavailable(exc) from None
        except asyncpg.PostgresError as exc:  # a wrong database or role, say
            raise Unavailable(f"PostgreSQL at {self.where} refused the connection: "
                              f"{_message(exc)}") from None
        try:
            await migrate(conn)
        finally:
            await conn.close()
        try:
            self._pool = await asyncpg.create_pool(
                self.url, min_size=1, max_size=self._pool_size, timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT, server_settings=self._settings,
                reset=_no_session_state)
        except CONNECTION_ERRORS as exc:
            raise self._unavailable(exc) from None

    async def close(self) -> None:
        """Close the pool and the roles' own connections (closing a role twice is harmless)."""
        await self._statistics.close()
        for leader in self._leaders.values():
            await leader.close()
        await self._notifier.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def notifier(self) -> Notifier:
        """LISTEN/NOTIFY on a connection of its own (see :mod:`.postgres_roles`)."""
        return self._notifier

    def leader(self, host_id: str) -> Leader:
        """A session advisory lock held on a connection of its own."""
        if host_id not in self._leaders:
            self._leaders[host_id] = PgLeader(self.url, self.where, host_id)
        return self._leaders[host_id]

    def _unavailable(self, exc: BaseException) -> Unavailable:
        return Unavailable(f"cannot reach PostgreSQL at {self.where}: {_message(exc)}")

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        if self._pool is None:
            raise Unavailable("the store is closed")
        try:
            async with self._pool.acquire() as conn:
                try:
                    yield conn
                except CONNECTION_ERRORS:
                    # Not back into the pool: it would fail the next caller the same way.
                    conn.terminate()
                    raise
        except CONNECTION_ERRORS as exc:
            log.error("store: lost PostgreSQL at %s: %s", self.where, _message(exc))
            raise self._unavailable(exc) from None

    async def _write(self, step: Callable[..., Awaitable[T]], /, **kwargs: Any) -> T:
        """Run one write step in its own transaction."""
        async with self._connection() as conn, conn.transaction():
            return await step(conn, **kwargs)

    async def _fetch(self, sql: str, *params: Any) -> list[asyncpg.Record]:
        async with self._connection() as conn:
            rows: list[asyncpg.Record] = await conn.fetch(sql, *params)
            return rows

    # -- writes ----------------------------------------------------------------------------

    async def submit(self, specs: Sequence[JobSpec], now: float) -> list[Submitted]:
        if writes.plain(specs):  # one INSERT: atomic by itself, no BEGIN/COMMIT round trips
            async with self._connection() as conn:
                submitted = await writes.submit(conn, specs=specs, now=now)
        else:
            submitted = await self._write(writes.submit, specs=specs, now=now)
        self._statistics.inserted(len(submitted))  # see postgres_stats: claims stay cheap
        return submitted

    async def dispatch_round(self, *, host: str,
                             progress: Mapping[int, tuple[float, str | None]],
                             started: Sequence[Start] = (), finished: Sequence[Finished],
                             now: float, limit: int, concurrency: Mapping[str, int],
                             outrank: tuple[int, int] | None = None) -> Round:
        whole = writes.in_one_statement(progress=progress, started=started, finished=finished,
                                        concurrency=concurrency, outrank=outrank)
        if whole is not None:
            async with self._connection() as conn:
                return await writes.quick_round(conn, host=host, whole=whole, now=now,
                                                limit=limit)
        return await self._write(writes.dispatch_round, host=host, progress=progress,
                                 started=started, finished=finished, now=now, limit=limit,
                                 concurrency=concurrency, outrank=outrank)

    async def finish(self, finished: Sequence[Finished]) -> list[int]:
        advanced, _ = await self._write(writes.finish, finished=finished)
        return advanced

    async def cancel(self, job_id: int, now: float, reason: str) -> CancelResult:
        return await self._write(chains.cancel, job_id=job_id, now=now, reason=reason)

    async def retry(self, job_id: int, now: float) -> list[int]:
        return await self._write(chains.retry, job_id=job_id, now=now)

    async def prune(self, before: float, statuses: Sequence[Status], limit: int) -> int:
        return await self._write(housekeeping.prune, before=before, statuses=statuses, limit=limit)

    async def save_schedule(self, name: str, *, expression: str, next_run: float) -> None:
        await self._write(housekeeping.save_schedule, name=name, expression=expression,
                          next_run=next_run)

    async def fire_schedule(self, name: str, *, expression: str, spec: JobSpec, slot: float,
                            next_run: float, now: float) -> int | None:
        return await self._write(housekeeping.fire_schedule, name=name, expression=expression,
                                 spec=spec, slot=slot, next_run=next_run, now=now)

    # -- hosts -----------------------------------------------------------------------------

    async def register_host(self, host: HostRow) -> None:
        await self._write(housekeeping.register_host, host=host)

    async def heartbeat(self, host_id: str, now: float, expires_at: float) -> None:
        await self._write(housekeeping.heartbeat, host_id=host_id, now=now, expires_at=expires_at)

    async def shared_token(self, proposed: str) -> str:
        # The first host's token wins; the rest adopt it, so a client holding it may talk to
        # any host.  Whoever can read this table can run jobs anyway.
        async with self._connection() as conn:
            value: str = await conn.fetchval(
                "WITH ins AS (INSERT INTO cluster_secrets VALUES ('api_token', $1) "
                "ON CONFLICT (name) DO NOTHING RETURNING value) SELECT value FROM ins "
                "UNION ALL SELECT value FROM cluster_secrets WHERE name = 'api_token' LIMIT 1",
                proposed)
            return value

    async def retire_host(self, host_id: str, now: float) -> None:
        await self._write(housekeeping.heartbeat, host_id=host_id, now=now, expires_at=now)

    async def hosts(self, now: float) -> list[HostRow]:
        rows = await self._fetch(
            "SELECT id, url, pid, hostname, started_at, heartbeat_at, expires_at, "
            "(SELECT count(*) FROM jobs WHERE status = 'running' AND host = hosts.id), "
            # The leader's session is named after its host (postgres_roles.connect).
            "EXISTS (SELECT FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid "
            "WHERE a.application_name = 'asyncjobs-leader-' || hosts.id AND a.datname = "
            "current_database() AND l.locktype = 'advisory' AND l.granted) "
            "FROM hosts WHERE expires_at > $1 ORDER BY started_at, id", now - 86400)
        return [HostRow(*row) for row in rows]

    # -- reads -----------------------------------------------------------------------------

    async def schedule_states(self) -> dict[str, ScheduleState]:
        rows = await self._fetch("SELECT name, expression, next_run, last_run, last_job_id "
                                 "FROM schedules")
        return {row[0]: ScheduleState(*row) for row in rows}

    async def orphans(self, now: float, *, alive: str) -> list[Claimed]:
        """Also makes the jobs that dead hosts had only reserved due again, each with an
        ``interrupted`` attempt row (the running ones are the caller's to record)."""
        return await self._write(_orphans, now=now, alive=alive)

    async def get(self, job_id: int) -> JobRecord | None:
        rows = await self._fetch(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1",  # noqa: S608
                                 job_id)
        if not rows:
            return None
        attempts = await self._fetch(
            "SELECT number, outcome, started_at, finished_at, exit_code, error_type, "
            "error_message, traceback, output, strays, host FROM attempts WHERE job_id = $1 "
            "ORDER BY number",
            job_id)
        return job_from_row(rows[0], [attempt_from_row(a) for a in attempts])

    async def list_jobs(self, *, status: Status | None = None, cls: str | None = None,
                        chain: int | None = None, limit: int = 50,
                        cursor: int | None = None) -> Page:
        where: list[str] = []
        params: list[object] = []
        for column, value in (("chain_id =", chain), ("status =", status and status.value),
                              ("class =", cls), ("id <", cursor)):
            if value is not None:
                params.append(value)
                where.append(f"{column} ${len(params)}")
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self._fetch(
            f"SELECT {JOB_COLUMNS} FROM jobs {clause} ORDER BY id DESC "  # noqa: S608
            f"LIMIT ${len(params) + 1}", *params, limit + 1)
        return page_from_rows(rows, limit)

    async def stats(self, now: float) -> Stats:
        # Counted, not kept in counter rows: a counter row per class would be one hot row
        # that every host's claims and finishes queue on.  The cost is a scan of the jobs
        # table per call (about 0.1 s per million rows kept: see docs/scaling.md).
        minute = int(now // 60) * 60
        return stats_from_rows(
            await self._fetch("SELECT class, status, count(*) FROM jobs GROUP BY 1, 2"),
            await self._fetch(
                "SELECT (floor(finished_at / 60) * 60)::bigint, count(*) FILTER (WHERE "
                "outcome = 'completed'), count(*) FILTER (WHERE outcome <> 'completed') "
                "FROM attempts WHERE finished_at >= $1 GROUP BY 1", float(minute - 59 * 60)),
            now)


async def _orphans(conn: asyncpg.Connection, *, now: float, alive: str) -> list[Claimed]:
    released = await writes.release(conn, now, alive)
    if released:
        log.warning("made due again %d job(s) that dead hosts had reserved", released)
    rows = await conn.fetch(
        f"SELECT {CLAIM_COLUMNS}, cancel_requested FROM jobs "  # noqa: S608
        "WHERE status = 'running' AND (host IS NULL OR (host <> $1 AND host NOT IN "
        "(SELECT id FROM hosts WHERE expires_at > $2)))", alive, now)
    orphans = []
    for row in rows:
        orphan = claimed_from_row(row, attempt=row[5], attempts=row[6])
        orphan.cancel_requested = row[12]  # after CLAIM_COLUMNS
        orphans.append(orphan)
    return orphans


async def _no_session_state(conn: asyncpg.Connection) -> None:
    """What a pooled connection needs on its way back to the pool: nothing beyond the
    rollback of an open transaction that asyncpg always does.

    asyncpg's default reset (``RESET ALL``, ``UNLISTEN *``, ``pg_advisory_unlock_all()``,
    ``CLOSE ALL``) is a round trip per release, 140 us of every dispatcher round; pooled
    connections here never hold session state (``LISTEN`` and the leader's session lock
    live on the roles' own connections, every other lock is transaction-level).
    """


def _message(exc: BaseException) -> str:
    """An error's text, one line, without anything asyncpg echoed from the URL."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text
