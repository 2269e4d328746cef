"""The store's cost of dispatcher rounds that each carry the starts and ends of 3 short jobs.

A drain of no-op jobs is too noisy on a shared 2-core machine to show a change in the
store's write steps; this loop times only ``Store.dispatch_round`` (reserve 3, then start
and finish those 3 and reserve the next 3 in one round), so a write-path change can be
measured before/after back to back:

    CODE=/path/to/asyncjobs-source-root python bench/round_cost.py sqlite|pg [DSN]

``CODE`` is the directory holding the ``asyncjobs`` package to measure (e.g. a
``git archive REV asyncjobs | tar -x -C DIR``); the PostgreSQL run creates and drops
the database ``roundcost`` on the server (default ``postgresql://postgres@127.0.0.1:5432/postgres``).
"""

# asyncjobs is imported late, once CODE (the source to measure) is first on sys.path.
# ruff: noqa: PLC0415

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

N, PER = 3000, 3


async def _store(kind: str, dsn: str) -> Any:
    if kind == "sqlite":
        from asyncjobs.store.sqlite import SqliteStore
        return SqliteStore(Path(tempfile.mkdtemp()) / "jobs.db", durability="normal")
    import asyncpg

    from asyncjobs.store.postgres import PostgresStore
    conn = await asyncpg.connect(dsn)
    await conn.execute("DROP DATABASE IF EXISTS roundcost")
    await conn.execute("CREATE DATABASE roundcost")
    await conn.close()
    return PostgresStore(dsn.rsplit("/", 1)[0] + "/roundcost")


async def main(kind: str, dsn: str) -> None:
    from asyncjobs.models import JobSpec, Outcome, OutcomeKind, Priority, Status, Transition
    from asyncjobs.store import Finished, HostRow, Start
    store = await _store(kind, dsn)
    await store.open()
    now = time.time()
    await store.register_host(HostRow(id="h", url="http://h", pid=1, hostname="b",
                                      started_at=now, heartbeat_at=now, expires_at=now + 600))
    await store.submit([JobSpec(cls="A", method="run", args=[], kwargs={},
                                priority=Priority.MEDIUM, run_at=now, timeout=10.0,
                                max_attempts=3) for _ in range(N)], now)
    pending = (await store.dispatch_round(host="h", progress={}, finished=[], now=now,
                                          limit=PER, concurrency={})).claimed
    began, done = time.perf_counter(), 0
    while pending:
        ended = [Finished(c, Outcome(OutcomeKind.COMPLETED, exit_code=0),
                          Transition(Status.COMPLETED), now) for c in pending]
        pending = (await store.dispatch_round(
            host="h", progress={}, started=[Start(c, now) for c in pending], finished=ended,
            now=now, limit=PER, concurrency={})).claimed
        done += len(ended)
    took = time.perf_counter() - began
    print(f"{kind}: {done} jobs in rounds of {PER}: {done / took:,.0f} jobs/s, "
          f"{took / done * 1e6:.0f} us/job")
    await store.close()
    if kind != "sqlite":
        import asyncpg
        conn = await asyncpg.connect(dsn)
        await conn.execute("DROP DATABASE roundcost")
        await conn.close()


if __name__ == "__main__":
    sys.path.insert(0, os.environ.get("CODE", str(Path(__file__).resolve().parents[1])))
    asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2
                     else "postgresql://postgres@127.0.0.1:5432/postgres"))
