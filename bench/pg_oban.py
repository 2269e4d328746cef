"""Oban for Python adapter for bench/pg_peer.py (Python >= 3.12: runs from its own venv,
bench/.venv-oban, made by ``python bench/pg_run.py --setup-oban``).

The worker is an ``Oban`` instance over ``Oban.create_pool`` (psycopg, its defaults) with
one queue of limit QUEUE_LIMIT, its defaults otherwise (stager every 1 s, LISTEN/NOTIFY
notifier, completed jobs kept and pruned after a day).  The job is an ``async def``
decorated with ``@job``, run in Oban's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import benchjobs
from oban import Oban, job
from oban.schema import install as oban_install

QUEUE = "default"
QUEUE_LIMIT = 10


@job(queue=QUEUE)
async def noop(seq: int, enqueued: float, path: str) -> None:
    benchjobs.record(seq, enqueued, path)


async def install(dsn: str) -> None:
    pool = await Oban.create_pool(dsn)
    try:
        await oban_install(pool)
    finally:
        await pool.close()


class Worker:
    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def run(self, stop: asyncio.Event) -> None:
        async with Oban(pool=self.pool, queues={QUEUE: QUEUE_LIMIT}):
            await stop.wait()


@contextlib.asynccontextmanager
async def worker(dsn: str) -> AsyncIterator[Worker]:
    pool = await Oban.create_pool(dsn)
    try:
        yield Worker(pool)
    finally:
        await pool.close()


class Client:
    def __init__(self, oban: Oban) -> None:
        self.oban = oban

    async def single(self, seq: int, enqueued: float, path: str) -> None:
        await self.oban.enqueue(noop.new(seq, enqueued, path))

    async def many(self, jobs: list[tuple[int, float, str]]) -> None:
        await self.oban.enqueue_many([noop.new(s, e, p) for s, e, p in jobs])


@contextlib.asynccontextmanager
async def client(dsn: str) -> AsyncIterator[Client]:
    pool = await Oban.create_pool(dsn)
    try:
        async with Oban(pool=pool) as oban:
            yield Client(oban)
    finally:
        await pool.close()
