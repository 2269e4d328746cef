"""pgqueuer adapter for bench/pg_peer.py: the peer's own Python API, over one asyncpg
connection per process, as its documentation shows.

Its worker is started through ``QueueManager.run`` (its ``pgq run`` command fails with the
current typer release), with the defaults of that call: batch_size 10, no cap on concurrent
tasks.  The job is an ``async def`` entrypoint and runs inside pgqueuer's own event loop: no
process isolation, no attempt rows (finished jobs move to its log table).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import benchjobs
from pgqueuer import AsyncpgDriver, Job, QueueManager
from pgqueuer.queries import Queries

ENTRYPOINT = "noop"


async def install(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await Queries(AsyncpgDriver(conn)).install()
    finally:
        await conn.close()


class Worker:
    def __init__(self, qm: QueueManager) -> None:
        self.qm = qm

    async def run(self, stop: asyncio.Event) -> None:
        task = asyncio.create_task(self.qm.run())
        await asyncio.wait([task, asyncio.ensure_future(stop.wait())],
                           return_when=asyncio.FIRST_COMPLETED)
        self.qm.shutdown.set()  # its own graceful stop: in-flight jobs finish
        await task


@contextlib.asynccontextmanager
async def worker(dsn: str) -> AsyncIterator[Worker]:
    conn = await asyncpg.connect(dsn)
    qm = QueueManager(Queries(AsyncpgDriver(conn)))

    @qm.entrypoint(ENTRYPOINT)
    async def noop(job: Job) -> None:
        seq, enqueued, path = json.loads(job.payload or b"[]")
        benchjobs.record(seq, enqueued, path)

    try:
        yield Worker(qm)
    finally:
        await conn.close()


class Client:
    def __init__(self, queries: Queries) -> None:
        self.queries = queries

    async def single(self, seq: int, enqueued: float, path: str) -> None:
        await self.queries.enqueue(ENTRYPOINT, json.dumps([seq, enqueued, path]).encode())

    async def many(self, jobs: list[tuple[int, float, str]]) -> None:
        payloads: list[Any] = [json.dumps(list(j)).encode() for j in jobs]
        await self.queries.enqueue([ENTRYPOINT] * len(jobs), payloads, [0] * len(jobs))


@contextlib.asynccontextmanager
async def client(dsn: str) -> AsyncIterator[Client]:
    conn = await asyncpg.connect(dsn)
    try:
        yield Client(Queries(AsyncpgDriver(conn)))
    finally:
        await conn.close()
