"""One PostgreSQL peer (pgqueuer, procrastinate, Oban for Python) in one child process.

``python bench/pg_peer.py '<json params>'`` with ``{"peer": NAME, "dsn": ..., "action": ...}``;
it prints one JSON line per event and, last, ``{"result": ...}``, like bench/child.py.  The
peer's own code lives in ``pg_<NAME>.py`` next to this file (an *adapter*); this module only
knows the adapter protocol, so it runs under any interpreter that can import the peer:
Oban for Python needs Python >= 3.12 and runs from its own venv (see pg_run.py).

Actions:
  install  create the peer's schema in the (fresh, empty) database
  worker   start the peer's worker, print ``{"ready": pid}``, wait for a line ``go`` on
           stdin (so that every worker process of a drain starts at the same instant), run
           until SIGTERM/SIGINT or stdin closes, then stop it the peer's own way
  enqueue  ``n`` jobs (seq from ``first``), one call each (``batch`` 1) or ``batch`` jobs
           per call; jobs/s
  paced    ``n`` single enqueues at ``rate``/s (paced, not closed-loop) for start latency

An adapter module provides::

    async def install(dsn: str) -> None
    def worker(dsn: str) -> AsyncContextManager[Worker]
        # connected and registered on entry; Worker.run(stop) processes jobs until stop is set
    def client(dsn: str) -> AsyncContextManager[Client]
        # Client.single(seq, enqueued, path) and Client.many(list of (seq, enqueued, path))

Every job is the same no-op as everywhere in bench/: ``benchjobs.record`` appends
``seq enqueued started ended`` to the record file.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "jobs"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # bench/ itself, stdlib only: any interpreter runs it


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def run_worker(adapter: Any, p: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    stop, go = asyncio.Event(), asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def read_stdin() -> None:
        # Runs in a thread: a line "go" starts the drain, end of file stops the worker.
        for line in sys.stdin:
            if line.strip() == "go":
                loop.call_soon_threadsafe(go.set)
        loop.call_soon_threadsafe(stop.set)

    async with adapter.worker(p["dsn"]) as w:
        emit(ready=os.getpid())
        # A daemon thread: asyncio.run() must not wait for it to read end of file.
        threading.Thread(target=read_stdin, daemon=True).start()
        await asyncio.wait([asyncio.ensure_future(go.wait()),
                            asyncio.ensure_future(stop.wait())],
                           return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            return {"ran": False}
        started = time.time()
        await w.run(stop)
    return {"ran": True, "started": started, "stopped": time.time()}


async def enqueue(adapter: Any, p: dict[str, Any]) -> dict[str, Any]:
    n, batch, path = int(p["n"]), int(p.get("batch", 1)), str(p["records"])
    first = int(p.get("first", 0))  # seq numbers first..first+n-1
    async with adapter.client(p["dsn"]) as c:
        t0 = time.perf_counter()
        if batch <= 1:
            for i in range(first, first + n):
                await c.single(i, time.time(), path)
        else:
            for lo in range(first, first + n, batch):
                now = time.time()
                top = min(first + n, lo + batch)
                await c.many([(i, now, path) for i in range(lo, top)])
        elapsed = time.perf_counter() - t0
    return {"n": n, "batch": batch, "seconds": elapsed, "rate": n / elapsed}


async def paced(adapter: Any, p: dict[str, Any]) -> dict[str, Any]:
    """Single enqueues at a fixed rate, each its own task as independent producers send."""
    n, rate, path = int(p["n"]), float(p["rate"]), str(p["records"])
    times: list[float] = []
    async with adapter.client(p["dsn"]) as c:
        for i in range(3):  # warm the client's connection(s) and the worker
            await c.single(-1 - i, time.time(), str(p["warm"]))
        await asyncio.sleep(0.5)

        async def one(i: int) -> None:
            t = time.perf_counter()
            await c.single(i, time.time(), path)
            times.append(time.perf_counter() - t)

        offered = await common.paced(n, rate, one)
    ms = [t * 1000 for t in times]
    return {"n": n, "offered_rate": offered, "enqueue_p50_ms": common.percentile(ms, 50),
            "enqueue_p99_ms": common.percentile(ms, 99)}


async def install(adapter: Any, p: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    await adapter.install(p["dsn"])
    return {"seconds": time.perf_counter() - t0}


ACTIONS = {"install": install, "worker": run_worker, "enqueue": enqueue, "paced": paced}


def main() -> None:
    params = json.loads(sys.argv[1])
    adapter = importlib.import_module(f"pg_{params['peer']}")
    result = asyncio.run(ACTIONS[params["action"]](adapter, params))
    emit(result=result)


if __name__ == "__main__":
    main()
