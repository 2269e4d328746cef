"""The SQLite store: one writer connection with group commit, one reader connection.

The host is the only writer, so there is no "database is locked": every write is an *op*
queued to a single writer task, which runs all queued ops in one transaction (one fsync at
``durability: full``) and only then resolves their futures.  A submit is therefore on disk
before it is acknowledged, and many concurrent submits share one fsync.  Each op runs inside
a savepoint, so one op's error (a wrong state, say) does not undo its neighbours'.
Reads go through a second connection; WAL lets them proceed while the writer writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import orjson

from ..errors import JobNotFound, Unavailable, WrongState
from ..models import (
    TERMINAL,
    Attempt,
    Claimed,
    ErrorInfo,
    JobRecord,
    JobSpec,
    OutcomeKind,
    Priority,
    Status,
)
from . import CancelResult, Finished, Page, Stats, Submitted
from .schema import MIGRATIONS

log = logging.getLogger("asyncjobs.store")

T = TypeVar("T")
Op = Callable[[aiosqlite.Connection], Awaitable[Any]]

JOB_COLUMNS = (
    "id, class, method, args, kwargs, status, priority, attempts, max_attempts, timeout, "
    "created_at, run_at, started_at, finished_at, result, error_type, error_message, "
    "progress, progress_message, chain_id, unique_key"
)
CLAIM_COLUMNS = "id, class, method, args, kwargs, runs, attempts, max_attempts, timeout, " \
                "interruptions"


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _job(row: Sequence[Any], history: Sequence[Attempt] = ()) -> JobRecord:
    error = ErrorInfo(row[15], row[16] or "") if row[15] else None
    return JobRecord(
        id=row[0], cls=row[1], method=row[2], args=orjson.loads(row[3]),
        kwargs=orjson.loads(row[4]), status=Status(row[5]), priority=Priority.from_rank(row[6]),
        attempts=row[7], max_attempts=row[8], timeout=row[9], created_at=row[10],
        run_at=row[11], started_at=row[12], finished_at=row[13],
        result=orjson.loads(row[14]) if row[14] is not None else None, error=error,
        progress=(row[17], row[18]) if row[17] is not None else None,
        chain_id=row[19], unique_key=row[20], attempt_history=history,
    )


def _attempt(row: Sequence[Any]) -> Attempt:
    error = ErrorInfo(row[5], row[6] or "", row[7]) if row[5] else None
    return Attempt(number=row[0], outcome=OutcomeKind(row[1]) if row[1] else None,
                   started_at=row[2], finished_at=row[3], exit_code=row[4], error=error,
                   output=row[8] or "")


def _claimed(row: Sequence[Any], *, attempt: int, attempts: int) -> Claimed:
    return Claimed(id=row[0], cls=row[1], method=row[2], args=orjson.loads(row[3]),
                   kwargs=orjson.loads(row[4]), attempt=attempt, attempts=attempts,
                   max_attempts=row[7], timeout=row[8], interruptions=row[9])


def _storage_error(exc: sqlite3.Error) -> Unavailable:
    return Unavailable(f"storage unavailable: {exc}")


class SqliteStore:
    """The :class:`~asyncjobs.store.Store` on a SQLite file in WAL mode."""

    def __init__(self, path: Path, *, durability: str = "full") -> None:
        self.path = path
        self.durability = durability
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._queue: deque[tuple[Op, asyncio.Future[Any]]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        self._writer = await aiosqlite.connect(self.path, isolation_level=None)
        sync = "FULL" if self.durability == "full" else "NORMAL"
        for pragma in ("journal_mode=WAL", f"synchronous={sync}", "busy_timeout=5000",
                       "temp_store=MEMORY", "cache_size=-16000"):
            await self._writer.execute(f"PRAGMA {pragma}")
        await self._migrate(self._writer)
        self._reader = await aiosqlite.connect(self.path, isolation_level=None)
        await self._reader.execute("PRAGMA query_only=1")
        await self._reader.execute("PRAGMA busy_timeout=5000")
        self._task = asyncio.create_task(self._write_loop(), name="asyncjobs-store-writer")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    @staticmethod
    async def _migrate(conn: aiosqlite.Connection) -> None:
        rows = await conn.execute_fetchall("PRAGMA user_version")
        version = next(iter(rows))[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            await conn.executescript(f"BEGIN IMMEDIATE; {script}; PRAGMA user_version={number};"
                                     " COMMIT;")
            log.info("store schema migrated to version %s", number)

    # -- the group-commit writer -----------------------------------------------------------

    async def _write(self, op: Op) -> Any:
        if self._task is None or self._task.done():
            raise Unavailable("the store is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((op, future))
        self._wake.set()
        return await future

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch = list(self._queue)
            self._queue.clear()
            if batch:
                await self._apply(batch)

    async def _apply(self, batch: list[tuple[Op, asyncio.Future[Any]]]) -> None:
        conn = self._writer
        assert conn is not None
        try:
            results = await self._transaction(conn, batch)
        except sqlite3.Error as exc:
            log.error("store write failed, %d operation(s) not applied: %s", len(batch), exc)
            with contextlib.suppress(sqlite3.Error):  # no transaction left to roll back
                await conn.execute("ROLLBACK")
            failure = _storage_error(exc)
            results = [(None, failure)] * len(batch)
        for (_, future), (value, error) in zip(batch, results, strict=True):
            if future.done():
                continue  # the caller gave up waiting
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)

    @staticmethod
    async def _transaction(conn: aiosqlite.Connection, batch: list[tuple[Op, Any]]
                           ) -> list[tuple[Any, BaseException | None]]:
        """Run the ops in one transaction; storage errors propagate and fail them all."""
        # A lone op needs no savepoint: the transaction is its boundary (two fewer hops).
        savepoints = len(batch) > 1
        results: list[tuple[Any, BaseException | None]] = []
        await conn.execute("BEGIN IMMEDIATE")
        for op, _ in batch:
            if savepoints:
                await conn.execute("SAVEPOINT op")
            try:
                results.append((await op(conn), None))
            except sqlite3.IntegrityError as exc:
                results.append((None, exc))
            except sqlite3.Error:
                raise
            except Exception as exc:  # the op's own error (a wrong state...), for its caller
                results.append((None, exc))
            if savepoints:
                if results[-1][1] is not None:
                    await conn.execute("ROLLBACK TO op")
                await conn.execute("RELEASE op")
        if not savepoints and results[0][1] is not None:
            await conn.execute("ROLLBACK")
        else:
            await conn.execute("COMMIT")
        return results

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> Iterable[Any]:
        assert self._reader is not None, "store is not open"
        try:
            return await self._reader.execute_fetchall(sql, params)
        except sqlite3.Error as exc:
            raise _storage_error(exc) from exc

    # -- writes ----------------------------------------------------------------------------

    async def submit(self, specs: Sequence[JobSpec], now: float) -> list[Submitted]:
        async def op(conn: aiosqlite.Connection) -> list[Submitted]:
            return [await self._insert(conn, spec, now) for spec in specs]

        result: list[Submitted] = await self._write(op)
        return result

    @staticmethod
    async def _insert(conn: aiosqlite.Connection, spec: JobSpec, now: float) -> Submitted:
        if spec.unique_key is not None:
            rows = await conn.execute_fetchall(
                "SELECT id, status FROM jobs WHERE unique_key = ? AND status IN "
                "('pending', 'running')", (spec.unique_key,))
            for row in rows:
                return Submitted(row[0], Status(row[1]), duplicate=True)
        sql = ("INSERT INTO jobs (class, method, args, kwargs, status, priority, run_at, "
               "timeout, max_attempts, created_at, chain_id, chain_pos, unique_key) "
               "VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?)")
        cursor = await conn.execute(sql, (
            spec.cls, spec.method, _dumps(list(spec.args)), _dumps(dict(spec.kwargs)),
            spec.priority.rank, spec.run_at, spec.timeout, spec.max_attempts, now, None,
            None, spec.unique_key))
        job_id = cursor.lastrowid
        assert job_id is not None
        if spec.then:
            await conn.execute("UPDATE jobs SET chain_id = ?, chain_pos = 0 WHERE id = ?",
                               (job_id, job_id))
            await conn.executemany(sql, [
                (step.cls, step.method, _dumps(list(step.args)), _dumps(dict(step.kwargs)),
                 spec.priority.rank, None, spec.timeout, spec.max_attempts, now, job_id, pos,
                 None)
                for pos, step in enumerate(spec.then, start=1)])
        return Submitted(job_id, Status.PENDING)

    async def claim(self, now: float, limit: int, capacity: Mapping[str, int]) -> list[Claimed]:
        async def op(conn: aiosqlite.Connection) -> list[Claimed]:
            return await self._claim(conn, now, limit, dict(capacity))

        result: list[Claimed] = await self._write(op)
        return result

    @staticmethod
    async def _claim(conn: aiosqlite.Connection, now: float, limit: int,
                     capacity: dict[str, int]) -> list[Claimed]:
        claimed: list[Claimed] = []
        while len(claimed) < limit:
            full = [cls for cls, left in capacity.items() if left <= 0]
            exclude = f"AND class NOT IN ({','.join('?' * len(full))})" if full else ""
            want = limit - len(claimed)
            rows = list(await conn.execute_fetchall(
                f"SELECT {CLAIM_COLUMNS} FROM jobs WHERE status = 'pending' AND run_at <= ? "  # noqa: S608
                f"{exclude} ORDER BY priority, run_at, id LIMIT ?", (now, *full, want)))
            capped = False
            for row in rows:
                left = capacity.get(row[1])
                if left is not None:
                    if left <= 0:
                        capped = True  # this class filled up within this batch: ask again
                        continue
                    capacity[row[1]] = left - 1
                claimed.append(_claimed(row, attempt=row[5] + 1, attempts=row[6] + 1))
            if not capped or len(rows) < want:
                break
        if claimed:
            await conn.executemany(
                "UPDATE jobs SET status = 'running', runs = runs + 1, attempts = attempts + 1, "
                "started_at = ? WHERE id = ? AND status = 'pending'",
                [(now, c.id) for c in claimed])
            await conn.executemany(
                "INSERT INTO attempts (job_id, number, started_at) VALUES (?, ?, ?)",
                [(c.id, c.attempt, now) for c in claimed])
        return claimed

    async def finish(self, finished: Sequence[Finished]) -> list[int]:
        async def op(conn: aiosqlite.Connection) -> list[int]:
            return await self._finish(conn, finished)

        result: list[int] = await self._write(op)
        return result

    async def _finish(self, conn: aiosqlite.Connection, finished: Sequence[Finished]) -> list[int]:
        await conn.executemany(
            "UPDATE attempts SET outcome = ?, finished_at = ?, exit_code = ?, error_type = ?, "
            "error_message = ?, traceback = ?, output = ? WHERE job_id = ? AND number = ?",
            [(f.outcome.kind.value, f.at, f.outcome.exit_code,
              f.outcome.error.type if f.outcome.error else None,
              f.outcome.error.message if f.outcome.error else None,
              f.outcome.error.traceback if f.outcome.error else None,
              f.outcome.output, f.claimed.id, f.claimed.attempt) for f in finished])
        rows = []
        for f in finished:
            t = f.transition
            interrupted = f.outcome.kind is OutcomeKind.INTERRUPTED
            rows.append((
                t.status.value, t.run_at, f.at if t.status in TERMINAL else None,
                _dumps(t.result) if t.status is Status.COMPLETED else None,
                t.error.type if t.error else None, t.error.message if t.error else None,
                0 if t.counts else 1, 1 if interrupted else 0, 1 if interrupted else 0,
                f.claimed.id))
        await conn.executemany(
            "UPDATE jobs SET status = ?, run_at = COALESCE(?, run_at), finished_at = ?, "
            "result = ?, error_type = ?, error_message = ?, attempts = attempts - ?, "
            "interruptions = (interruptions + ?) * ? WHERE id = ? AND status = 'running'",
            rows)
        advanced: list[int] = []
        for f in finished:
            if f.transition.status is Status.COMPLETED:
                advanced += await self._advance_chain(conn, f.claimed.id, f.transition.result,
                                                      f.at)
            elif f.transition.status in TERMINAL:
                await self._break_chain(conn, f.claimed.id, f.transition.status, f.at)
        return advanced

    @staticmethod
    async def _chain_position(conn: aiosqlite.Connection,
                              job_id: int) -> tuple[int, int] | None:
        rows = await conn.execute_fetchall(
            "SELECT chain_id, chain_pos FROM jobs WHERE id = ? AND chain_id IS NOT NULL",
            (job_id,))
        for row in rows:
            return row[0], row[1]
        return None

    async def _advance_chain(self, conn: aiosqlite.Connection, job_id: int, result: Any,
                             now: float) -> list[int]:
        """Make the next step due, passing this step's result as ``previous``."""
        position = await self._chain_position(conn, job_id)
        if position is None:
            return []
        rows = await conn.execute_fetchall(
            "SELECT id, kwargs FROM jobs WHERE chain_id = ? AND chain_pos = ? AND "
            "status = 'pending'", (position[0], position[1] + 1))
        for step_id, kwargs_text in rows:
            kwargs = orjson.loads(kwargs_text)
            kwargs["previous"] = result
            await conn.execute("UPDATE jobs SET kwargs = ?, run_at = ? WHERE id = ?",
                               (_dumps(kwargs), now, step_id))
            return [step_id]
        return []

    async def _break_chain(self, conn: aiosqlite.Connection, job_id: int, status: Status,
                           now: float) -> list[int]:
        position = await self._chain_position(conn, job_id)
        if position is None:
            return []
        rows = await conn.execute_fetchall(
            "UPDATE jobs SET status = 'cancelled', finished_at = ?, error_type = 'ChainBroken',"
            " error_message = ? WHERE chain_id = ? AND chain_pos > ? AND status = 'pending' "
            "RETURNING id",
            (now, f"chain step {position[1] + 1} (job {job_id}) ended {status.value}",
             position[0], position[1]))
        return [row[0] for row in rows]

    async def running(self) -> list[Claimed]:
        rows = await self._read(f"SELECT {CLAIM_COLUMNS} FROM jobs WHERE status = 'running'")  # noqa: S608
        return [_claimed(row, attempt=row[5], attempts=row[6]) for row in rows]

    async def _status(self, conn: aiosqlite.Connection, job_id: int) -> Status:
        rows = await conn.execute_fetchall("SELECT status FROM jobs WHERE id = ?", (job_id,))
        for row in rows:
            return Status(row[0])
        raise JobNotFound(job_id)

    async def cancel(self, job_id: int, now: float, reason: str) -> CancelResult:
        async def op(conn: aiosqlite.Connection) -> CancelResult:
            status = await self._status(conn, job_id)
            if status in TERMINAL:
                raise WrongState(f"job {job_id} is already {status.value}")
            if status is Status.RUNNING:
                return CancelResult(status, [])
            await conn.execute(
                "UPDATE jobs SET status = 'cancelled', finished_at = ?, error_type = "
                "'Cancelled', error_message = ? WHERE id = ? AND status = 'pending'",
                (now, reason, job_id))
            rest = await self._break_chain(conn, job_id, Status.CANCELLED, now)
            return CancelResult(status, [job_id, *rest])

        result: CancelResult = await self._write(op)
        return result

    async def cancel_rest_of_chain(self, job_id: int, now: float) -> list[int]:
        async def op(conn: aiosqlite.Connection) -> list[int]:
            return await self._break_chain(conn, job_id, Status.CANCELLED, now)

        result: list[int] = await self._write(op)
        return result

    async def retry(self, job_id: int, now: float) -> list[int]:
        async def op(conn: aiosqlite.Connection) -> list[int]:
            status = await self._status(conn, job_id)
            if status not in (Status.FAILED, Status.CANCELLED):
                raise WrongState(f"job {job_id} is {status.value}; only failed or cancelled "
                                 "jobs can be retried")
            await conn.execute(
                "UPDATE jobs SET status = 'pending', run_at = ?, attempts = 0, "
                "interruptions = 0, finished_at = NULL, error_type = NULL, "
                "error_message = NULL, result = NULL WHERE id = ? AND status = ?",
                (now, job_id, status.value))
            # Later chain steps cancelled by this step's failure wait for it again.
            position = await self._chain_position(conn, job_id)
            if position is None:
                return [job_id]
            rows = await conn.execute_fetchall(
                "UPDATE jobs SET status = 'pending', run_at = NULL, finished_at = NULL, "
                "error_type = NULL, error_message = NULL, attempts = 0 WHERE chain_id = ? "
                "AND chain_pos > ? AND status = 'cancelled' AND error_type = 'ChainBroken' "
                "RETURNING id", position)
            return [job_id, *(row[0] for row in rows)]

        result: list[int] = await self._write(op)
        return result

    async def set_progress(self, updates: Mapping[int, tuple[float, str | None]]) -> None:
        async def op(conn: aiosqlite.Connection) -> None:
            await conn.executemany(
                "UPDATE jobs SET progress = ?, progress_message = ? WHERE id = ?",
                [(fraction, message, job_id) for job_id, (fraction, message) in updates.items()])

        await self._write(op)

    async def prune(self, before: float, statuses: Sequence[Status], limit: int) -> int:
        async def op(conn: aiosqlite.Connection) -> int:
            marks = ",".join("?" * len(statuses))
            rows = list(await conn.execute_fetchall(
                f"SELECT id FROM jobs WHERE finished_at < ? AND status IN ({marks}) "  # noqa: S608
                "LIMIT ?", (before, *(s.value for s in statuses), limit)))
            ids = [(row[0],) for row in rows]
            await conn.executemany("DELETE FROM attempts WHERE job_id = ?", ids)
            await conn.executemany("DELETE FROM jobs WHERE id = ?", ids)
            return len(ids)

        result: int = await self._write(op)
        return result

    # -- reads -----------------------------------------------------------------------------

    async def next_due(self, after: float) -> float | None:
        rows = await self._read(
            "SELECT MIN(run_at) FROM jobs WHERE status = 'pending' AND run_at > ?", (after,))
        value: float | None = next(iter(rows))[0]
        return value

    async def get(self, job_id: int) -> JobRecord | None:
        rows = list(await self._read(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)))  # noqa: S608
        if not rows:
            return None
        attempts = await self._read(
            "SELECT number, outcome, started_at, finished_at, exit_code, error_type, "
            "error_message, traceback, output FROM attempts WHERE job_id = ? ORDER BY number",
            (job_id,))
        return _job(rows[0], [_attempt(a) for a in attempts])

    async def list_jobs(self, *, status: Status | None = None, cls: str | None = None,
                   limit: int = 50, cursor: int | None = None) -> Page:
        where: list[str] = []
        params: list[object] = []
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
        more = len(rows) > limit
        jobs = [_job(row) for row in rows[:limit]]
        return Page(jobs, jobs[-1].id if more and jobs else None)

    async def stats(self, now: float) -> Stats:
        counts = {s.value: 0 for s in Status}
        by_class: dict[str, dict[str, int]] = {}
        for cls, status, n in await self._read(
                "SELECT class, status, COUNT(*) FROM jobs GROUP BY class, status"):
            counts[status] += n
            by_class.setdefault(cls, {s.value: 0 for s in Status})[status] = n
        minute = int(now // 60) * 60
        per_minute: dict[int, list[int]] = {minute - 60 * i: [0, 0] for i in range(60)}
        last_minute = 0
        for bucket, outcome, n in await self._read(
                "SELECT CAST(finished_at / 60 AS INTEGER) * 60, outcome, COUNT(*) "
                "FROM attempts WHERE finished_at >= ? GROUP BY 1, 2", (minute - 59 * 60,)):
            slot = per_minute.get(int(bucket))
            if slot is not None:
                slot[0 if outcome == "completed" else 1] += n
        for (n,) in await self._read(
                "SELECT COUNT(*) FROM attempts WHERE finished_at >= ?", (now - 60,)):
            last_minute = n
        return Stats(
            counts=counts, by_class=by_class, finished_last_minute=last_minute,
            finished_last_hour=sum(c + f for c, f in per_minute.values()),
            per_minute=sorted((t, c, f) for t, (c, f) in per_minute.items()),
        )
