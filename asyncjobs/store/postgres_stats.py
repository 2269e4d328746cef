"""Keeps PostgreSQL's statistics of the jobs table fresh after a burst of submits.

Why it matters: the claim is a prepared statement, which PostgreSQL soon plans once for any
parameters, from the table's statistics.  Autovacuum refreshes those at most once a minute,
and only once a tenth of the table changed; right after a burst (5,000 jobs into a new or
small table, say) they still describe a handful of rows, and the cached plan then sorts
*every* pending job at each claim instead of reading the first few from the ``jobs_due``
index: each claim costs in proportion to the backlog (measured: reserving 40 of 20,000
pending jobs took 19 ms with stale statistics, 3 ms with fresh ones).

So each host counts the jobs it inserts and, past :data:`AFTER_ROWS` and as many rows as the
last count (the table at least doubled), runs ``ANALYZE jobs`` in the background.  ANALYZE
reads a sample (30,000 rows at the default statistics target), blocks no reader or writer,
and its new statistics make PostgreSQL plan the cached statements afresh.  Doubling, not a
tenth as autovacuum does: it is a table grown by orders of magnitude that misleads the
planner, and ANALYZE is not free -- at a tenth, a stream of batch submits into a table of
10,000 rows ran it every 1,000 to 3,000 jobs, each a scan of the whole table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import asyncpg

log = logging.getLogger("asyncjobs.store")

AFTER_ROWS = 1000  # inserted by this host since the last ANALYZE, at least ...
AFTER_FRACTION = 1.0  # ... and this share of the rows the last ANALYZE counted


class FreshStatistics:
    """Runs ``ANALYZE jobs`` (one at a time, in the background) once enough jobs were added."""

    def __init__(self, connection: Callable[[], AbstractAsyncContextManager[asyncpg.Connection]],
                 ) -> None:
        self._connection = connection
        self._inserted = 0
        self._rows = 0.0  # pg_class.reltuples after the last ANALYZE
        self._task: asyncio.Task[None] | None = None

    def inserted(self, count: int) -> None:
        """``count`` jobs were just inserted (committed) through this host."""
        self._inserted += count
        if self._task is None and self._inserted >= max(AFTER_ROWS,
                                                        AFTER_FRACTION * self._rows):
            self._inserted = 0
            self._task = asyncio.get_running_loop().create_task(self._analyze())

    async def _analyze(self) -> None:
        try:
            async with self._connection() as conn, conn.transaction():
                # Never queue behind autovacuum (or another host) doing the same.
                await conn.execute("SET LOCAL lock_timeout = '1s'")
                await conn.execute("ANALYZE jobs")
                self._rows = float(await conn.fetchval(
                    "SELECT reltuples FROM pg_class WHERE oid = 'jobs'::regclass"))
        except Exception as exc:  # statistics are an optimisation: never fail a submit
            log.debug("ANALYZE jobs skipped: %s", exc)
        finally:
            self._task = None

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
