"""The SQLite store: one writer thread with group commit, one aiosqlite reader.

The host is the only writer, so there is no "database is locked".  Every write is an *op*
(a function from :mod:`.writes`) queued to one writer thread, which runs all the ops queued
meanwhile in a single transaction — one fsync at ``durability: full`` — and only then
resolves their futures.  A submit is therefore on disk before it is acknowledged, many
concurrent submits share one fsync, and a dispatcher round (finish + claim) is one commit.
The whole transaction is one hop to the thread: per-statement hops (what an aiosqlite call
costs) would cap the host near a thousand state changes a second.  Each op runs inside a
savepoint when it shares its transaction, so one op's error (a wrong state, say) does not
undo its neighbours'.  Reads go through an aiosqlite connection; WAL lets them proceed while
the writer writes.

At ``durability: normal`` a commit only appends to the WAL (no fsync), which takes tens of
microseconds: less than the hop to a thread and back.  There, small transactions run on
the event loop itself, and only ``heavy`` ones (bulk submits, pruning) and checkpoints go to
the writer thread.  A checkpoint is the one step that does fsync, so SQLite's automatic one
(run inside whichever commit crosses the threshold) is switched off and the store runs its
own in two phases: the bulk of the copy from a second connection while writes go on, then
a short one between two batches for the little written meanwhile, after which the WAL
starts over.  Blocking writes for the whole copy put 20 ms stalls in the latency p99.
``full`` keeps every commit on the thread, because its fsync may take milliseconds.
The writer (queue, thread, inline commits, checkpoints) is :mod:`.sqlite_writer`; this
module opens and migrates the file, reads, and names each write's op.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import IO, Any

import aiosqlite

from ..engine.events import EventBus
from ..engine.roles import FixedLeader, Leader, Notifier
from ..errors import Unavailable
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
    chains,
    housekeeping,
    writes,
)
from .backup import BackupInfo, backup
from .rows import (
    CLAIM_COLUMNS,
    JOB_COLUMNS,
    attempt_from_row,
    claimed_from_row,
    job_from_row,
    page_from_rows,
    stats_from_rows,
)
from .schema import MIGRATIONS
from .sqlite_io import storage_error, take_lock
from .sqlite_writer import GroupWriter

log = logging.getLogger("asyncjobs.store")

HEAVY_SUBMIT = 50  # jobs in one submit beyond which it is written on the thread


class SqliteStore:
    """The :class:`~asyncjobs.store.Store` on a SQLite file in WAL mode."""

    def __init__(self, path: Path, *, durability: str = "full") -> None:
        self.path = path
        self.durability = durability
        self._inline = durability == "normal"
        self._writer = GroupWriter(path, inline=self._inline)
        self._write = self._writer.write  # every write is an op queued to the one writer
        self._reader: aiosqlite.Connection | None = None
        self._notifier = EventBus()
        self._lock: IO[bytes] | None = None  # held while open: one host per SQLite store
        self._leader = FixedLeader()

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        self._lock = take_lock(self.path)
        try:
            await self._writer.connect(self._connect)
            self._reader = await aiosqlite.connect(self.path, isolation_level=None)
            await self._reader.execute("PRAGMA query_only=1")
            await self._reader.execute("PRAGMA busy_timeout=5000")
        except BaseException:
            await self.close()
            raise
        self._writer.start()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        sync = "FULL" if self.durability == "full" else "NORMAL"
        for pragma in ("journal_mode=WAL", f"synchronous={sync}", "busy_timeout=5000",
                       "temp_store=MEMORY", "cache_size=-16000"):
            conn.execute(f"PRAGMA {pragma}")
        if self._inline:
            conn.execute("PRAGMA wal_autocheckpoint=0")  # see GroupWriter._committed
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            conn.executescript(f"BEGIN IMMEDIATE; {script}; PRAGMA user_version={number}; "
                               "COMMIT;")
            if version:  # a new store is created, not migrated: one line below, not nine
                log.info("store schema migrated to version %s", number)
        if not version:
            log.info("store created (schema version %s)", len(MIGRATIONS))
        # One host per SQLite file, and it is only starting: every reservation is a dead
        # host's, and its jobs are due again.
        conn.execute("BEGIN IMMEDIATE")
        if writes.release_reservations(conn):
            log.warning("released the jobs a stopped host had handed to its workers")
        conn.execute("COMMIT")
        return conn

    async def close(self) -> None:
        await self._writer.stop()
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        await self._writer.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def notifier(self) -> Notifier:
        """In-process: every party that can share a SQLite store is in this process."""
        return self._notifier

    def leader(self, host_id: str) -> Leader:
        return self._leader

    async def backup(self, target: Path) -> BackupInfo:
        """A consistent copy of the live database at the new file ``target`` (absolute):
        one read snapshot on a thread of its own, so intake goes on (see :mod:`.backup`)."""
        if not self._writer.started:
            raise Unavailable("the store is closed")
        try:
            return await asyncio.to_thread(backup, self.path, target)
        except sqlite3.Error as exc:
            raise storage_error(exc) from exc

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> Iterable[Any]:
        if self._reader is None:
            raise Unavailable("the store is closed")
        try:
            return await self._reader.execute_fetchall(sql, params)
        except sqlite3.Error as exc:
            raise storage_error(exc) from exc

    # -- writes ----------------------------------------------------------------------------

    async def submit(self, specs: Sequence[JobSpec], now: float) -> list[Submitted]:
        result: list[Submitted] = await self._write(
            partial(writes.submit, specs=specs, now=now), heavy=len(specs) > HEAVY_SUBMIT)
        return result

    async def dispatch_round(self, *, host: str,
                             progress: Mapping[int, tuple[float, str | None]],
                             started: Sequence[Start] = (), finished: Sequence[Finished],
                             now: float, limit: int, concurrency: Mapping[str, int],
                             outrank: tuple[int, int] | None = None) -> Round:
        result: Round = await self._write(partial(
            writes.dispatch_round, host=host, progress=dict(progress), started=started,
            finished=finished, now=now, limit=limit, concurrency=dict(concurrency),
            outrank=outrank))
        return result

    async def finish(self, finished: Sequence[Finished]) -> list[int]:
        result: tuple[list[int], list[int]] = await self._write(
            partial(writes.finish, finished=finished))
        return result[0]

    async def cancel(self, job_id: int, now: float, reason: str) -> CancelResult:
        result: CancelResult = await self._write(partial(chains.cancel, job_id=job_id, now=now,
                                                         reason=reason))
        return result

    async def retry(self, job_id: int, now: float) -> list[int]:
        result: list[int] = await self._write(partial(chains.retry, job_id=job_id, now=now))
        return result

    async def prune(self, before: float, statuses: Sequence[Status], limit: int) -> int:
        result: int = await self._write(partial(
            housekeeping.prune, before=before, statuses=statuses, limit=limit), heavy=True)
        return result

    async def save_schedule(self, name: str, *, expression: str, next_run: float) -> None:
        await self._write(partial(housekeeping.save_schedule, name=name, expression=expression,
                                  next_run=next_run))

    async def fire_schedule(self, name: str, *, expression: str, spec: JobSpec, slot: float,
                            next_run: float, now: float) -> int | None:
        result: int | None = await self._write(partial(
            housekeeping.fire_schedule, name=name, expression=expression, spec=spec, slot=slot,
            next_run=next_run, now=now))
        return result

    # -- hosts -----------------------------------------------------------------------------

    async def register_host(self, host: HostRow) -> None:
        await self._write(partial(housekeeping.register_host, host=host))

    async def heartbeat(self, host_id: str, now: float, expires_at: float) -> None:
        await self._write(partial(housekeeping.heartbeat, host_id=host_id, now=now,
                                  expires_at=expires_at))

    async def shared_token(self, proposed: str) -> str:
        return proposed  # one host at a time: its own token file is the truth

    async def retire_host(self, host_id: str, now: float) -> None:
        await self._write(partial(housekeeping.heartbeat, host_id=host_id, now=now, expires_at=now))

    async def hosts(self, now: float) -> list[HostRow]:
        rows = await self._read(
            "SELECT id, url, pid, hostname, started_at, heartbeat_at, expires_at, "
            "(SELECT COUNT(*) FROM jobs WHERE status = 'running' AND host = hosts.id), "
            "expires_at > ? "  # one host at a time, and it leads
            "FROM hosts WHERE expires_at > ? ORDER BY started_at, id", (now, now - 86400))
        return [HostRow(id=row[0], url=row[1], pid=row[2], hostname=row[3], started_at=row[4],
                        heartbeat_at=row[5], expires_at=row[6], running=row[7],
                        leader=bool(row[8])) for row in rows]

    async def schedule_states(self) -> dict[str, ScheduleState]:
        rows = await self._read("SELECT name, expression, next_run, last_run, last_job_id "
                                "FROM schedules")
        return {row[0]: ScheduleState(*row) for row in rows}

    # -- reads -----------------------------------------------------------------------------

    async def orphans(self, now: float, *, alive: str) -> list[Claimed]:
        rows = await self._read(
            f"SELECT {CLAIM_COLUMNS}, cancel_requested FROM jobs "  # noqa: S608
            "WHERE status = 'running' AND (host IS NULL OR (host != ? AND host NOT IN "
            "(SELECT id FROM hosts WHERE expires_at > ?)))", (alive, now))
        orphans = []
        for row in rows:
            orphan = claimed_from_row(row, attempt=row[5], attempts=row[6])
            orphan.cancel_requested = bool(row[12])  # after CLAIM_COLUMNS
            orphans.append(orphan)
        return orphans

    async def get(self, job_id: int) -> JobRecord | None:
        rows = list(await self._read(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)))  # noqa: S608
        if not rows:
            return None
        attempts = await self._read(
            "SELECT number, outcome, started_at, finished_at, exit_code, error_type, "
            "error_message, traceback, output, strays, host FROM attempts WHERE job_id = ? "
            "ORDER BY number",
            (job_id,))
        return job_from_row(rows[0], [attempt_from_row(a) for a in attempts])

    async def list_jobs(self, *, status: Status | None = None, cls: str | None = None,
                        chain: int | None = None, limit: int = 50,
                        cursor: int | None = None) -> Page:
        where: list[str] = []
        params: list[object] = []
        if chain is not None:
            where.append("chain_id = ?")
            params.append(chain)
        if status is not None:
            where.append("status = ?")
            params.append(status.value)
        if cls is not None:
            where.append("class = ?")
            params.append(cls)
        if cursor is not None:
            where.append("id < ?")
            params.append(cursor)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = list(await self._read(
            f"SELECT {JOB_COLUMNS} FROM jobs {clause} ORDER BY id DESC LIMIT ?",  # noqa: S608
            (*params, limit + 1)))
        return page_from_rows(rows, limit)

    async def stats(self, now: float) -> Stats:
        minute = int(now // 60) * 60
        return stats_from_rows(
            await self._read("SELECT class, status, n FROM job_counts"),
            await self._read("SELECT minute, completed, failed FROM attempt_minutes "
                             "WHERE minute >= ?", (minute - 59 * 60,)), now)
