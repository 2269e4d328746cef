"""procrastinate adapter for bench/pg_peer.py: its ``App`` over its psycopg connector.

The worker is ``App.run_worker_async`` with ``concurrency`` CONCURRENCY (its default is 1,
which serialises the per-job database round trips; 10 lets them overlap as the other
peers' in-loop workers do) and its defaults otherwise (LISTEN/NOTIFY on, jobs kept after
they succeed).  The task is an ``async def`` run in procrastinate's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import benchjobs
import procrastinate

TASK = "noop"
CONCURRENCY = 10


def make_app(dsn: str) -> tuple[procrastinate.App, Any]:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    @app.task(name=TASK)
    async def noop(seq: int, enqueued: float, path: str) -> None:
        benchjobs.record(seq, enqueued, path)

    return app, noop


async def install(dsn: str) -> None:
    app, _ = make_app(dsn)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()


class Worker:
    def __init__(self, app: procrastinate.App) -> None:
        self.app = app

    async def run(self, stop: asyncio.Event) -> None:
        task = asyncio.create_task(self.app.run_worker_async(
            concurrency=CONCURRENCY, install_signal_handlers=False))
        await asyncio.wait([task, asyncio.ensure_future(stop.wait())],
                           return_when=asyncio.FIRST_COMPLETED)
        task.cancel()  # procrastinate's documented way to stop a worker it did not signal
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def worker(dsn: str) -> AsyncIterator[Worker]:
    app, _ = make_app(dsn)
    async with app.open_async():
        yield Worker(app)


class Client:
    def __init__(self, task: Any) -> None:
        self.task = task

    async def single(self, seq: int, enqueued: float, path: str) -> None:
        await self.task.defer_async(seq=seq, enqueued=enqueued, path=path)

    async def many(self, jobs: list[tuple[int, float, str]]) -> None:
        await self.task.batch_defer_async(
            *({"seq": s, "enqueued": e, "path": p} for s, e, p in jobs))


@contextlib.asynccontextmanager
async def client(dsn: str) -> AsyncIterator[Client]:
    app, task = make_app(dsn)
    async with app.open_async():
        yield Client(task)
