"""Benchmark scenarios that run an asyncjobs Host in-process, one per child process.

``python bench/child.py '<json params>'``: prints progress events and, last, the result as
one JSON line each.  run.py starts a fresh child for every measurement so that no run
inherits another's warm caches, threads or garbage.

Scenarios:
  drain        submit N jobs due at one instant (``Host.submit_many`` in batches), then
               measure first start -> last end from the record file
  host_submit  ``Host.submit`` in a loop, jobs delayed far into the future
  build_db     create a DB with asyncjobs' own migrations, then bulk-insert pending filler
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from common import (
    FAR_FUTURE,
    JOB_CLASS,
    JOB_METHOD,
    abnormal_attempts,
    count_lines,
    drain_rate,
    job_body,
    proc_cpu,
    proc_status,
    read_records,
)

from asyncjobs.config import load_settings
from asyncjobs.engine.host import Host
from asyncjobs.models import Priority
from asyncjobs.store.factory import DB_FILE


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def wait_lines(path: Path, n: int, timeout: float, poll: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if count_lines(path) >= n:
            return True
        await asyncio.sleep(poll)
    return False


class OpTimer:
    """Wraps the store's write steps (bench-side monkeypatch) to time them on the writer."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self.rows: dict[str, int] = {}

    def install(self) -> None:
        from asyncjobs.store import sqlite_writer, writes  # noqa: PLC0415

        for name in ("claim", "finish", "submit"):
            setattr(writes, name, self._wrap(name, getattr(writes, name)))
        sqlite_writer._transaction = self._wrap("transaction", sqlite_writer._transaction)

    def _wrap(self, name: str, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t
                self.calls[name] = self.calls.get(name, 0) + 1
            if isinstance(result, list):
                self.rows[name] = self.rows.get(name, 0) + len(result)
            return result

        return timed

    def reset(self) -> None:
        self.calls.clear()
        self.seconds.clear()
        self.rows.clear()

    def report(self) -> dict[str, Any]:
        return {name: {"calls": self.calls[name], "seconds": self.seconds[name],
                       "rows": self.rows.get(name, 0)} for name in self.calls}


def iso_exact(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


async def drain(p: dict[str, Any]) -> dict[str, Any]:
    work = Path(p["work"])
    settings = load_settings(work / "config.json", env={})
    n, batch, lead = int(p["n"]), int(p.get("batch", 500)), float(p.get("lead", 2.0))
    records, warm = work / "records.txt", work / "warm.txt"
    timer = OpTimer() if p.get("optime") else None
    if timer is not None:
        timer.install()
    t0 = time.perf_counter()
    host = Host(settings)
    await host.start()
    startup = time.perf_counter() - t0
    try:
        # Warm-up: one job per worker slot, so pool workers exist before the clock starts.
        slots = settings.workers.max
        await host.submit_many([job_body(-1 - i, warm) for i in range(slots)])
        if not await wait_lines(warm, slots, 60):
            raise RuntimeError("warm-up jobs did not run")
        due = time.time() + lead
        run_at = iso_exact(due)
        s0 = time.perf_counter()
        for start in range(0, n, batch):
            await host.submit_many([job_body(i, records, run_at=run_at)
                                    for i in range(start, min(n, start + batch))])
        submit_s = time.perf_counter() - s0
        late = time.time() > due
        emit(event="due", at=due, pid=os.getpid())
        if timer is not None:
            await asyncio.sleep(max(0.0, due - time.time() - 0.01))
            timer.reset()
        profiler = None
        if p.get("profile") == "pyinstrument":
            from pyinstrument import Profiler  # noqa: PLC0415 - only in profile mode

            await asyncio.sleep(max(0.0, due - time.time() - 0.05))
            profiler = Profiler(interval=0.0005, async_mode="disabled")
            profiler.start()
        cpu0 = proc_cpu()
        # A drain that outlives its budget is measured on the jobs that did run.
        budget = float(p.get("budget", n / 20 + 60))
        ok = await wait_lines(records, n, timeout=max(0.0, due - time.time()) + budget)
        cpu1 = proc_cpu()
        ops = timer.report() if timer is not None else None
        if profiler is not None:
            profiler.stop()
            out = Path(p["profile_out"])
            out.with_suffix(".txt").write_text(profiler.output_text(unicode=False, color=False,
                                                                     show_all=False))
            out.with_suffix(".html").write_text(profiler.output_html())
        mem = proc_status()
    finally:
        c0 = time.perf_counter()
        await host.aclose()
        close_s = time.perf_counter() - c0
    recs = read_records(records)
    if len(recs) < 10:
        raise RuntimeError(f"only {len(recs)} of {n} jobs ran")
    stats = drain_rate(recs)
    stats["complete"] = ok and len(recs) >= n
    stats["abnormal"] = abnormal_attempts(settings.data_dir)
    first_lag = stats["first_start"] - due
    return {**stats, "startup_s": startup, "submit_s": submit_s, "late_submit": late,
            "first_start_after_due_s": first_lag, "host_cpu_s": cpu1 - cpu0,
            "rss": mem.get("VmRSS", 0), "peak_rss": mem.get("VmHWM", 0), "close_s": close_s,
            "store_ops": ops}


async def host_submit(p: dict[str, Any]) -> dict[str, Any]:
    work = Path(p["work"])
    settings = load_settings(work / "config.json", env={})
    k = int(p["k"])
    sink = work / "never.txt"
    async with Host(settings) as host:
        for i in range(50):  # warm-up
            await host.submit(JOB_CLASS, JOB_METHOD, [i, time.time(), str(sink)],
                              delay=FAR_FUTURE)
        t0 = time.perf_counter()
        for i in range(k):
            await host.submit(JOB_CLASS, JOB_METHOD, [i, time.time(), str(sink)],
                              delay=FAR_FUTURE)
        elapsed = time.perf_counter() - t0
    return {"submits": k, "seconds": elapsed, "rate": k / elapsed}


async def build_db(p: dict[str, Any]) -> dict[str, Any]:
    """Run the migrations through a real Host, then bulk-insert ``size`` pending jobs."""
    work = Path(p["work"])
    size = int(p["size"])
    settings = load_settings(work / "config.json", env={})
    async with Host(settings, dispatch=False):
        pass
    db = settings.data_dir / DB_FILE
    t0 = time.perf_counter()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    now = time.time()
    far = now + 10 * FAR_FUTURE
    rank = Priority.MEDIUM.rank
    args = json.dumps([0, now, "/dev/null"])
    cols = ("class, method, args, kwargs, status, priority, run_at, timeout, max_attempts, "
            "created_at")
    conn.execute("BEGIN")
    chunk = 50_000
    for start in range(0, size, chunk):
        rows = [(JOB_CLASS, JOB_METHOD, args, "{}", "pending", rank, far + i, 300.0, 3, now)
                for i in range(start, min(size, start + chunk))]
        conn.executemany(f"INSERT INTO jobs ({cols}) VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    count = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    conn.close()
    return {"rows": count, "seconds": time.perf_counter() - t0,
            "bytes": db.stat().st_size}


SCENARIOS = {"drain": drain, "host_submit": host_submit, "build_db": build_db}


def main() -> None:
    params = json.loads(sys.argv[1])
    result = asyncio.run(SCENARIOS[params["scenario"]](params))
    emit(result=result, cpu_s=proc_cpu())


if __name__ == "__main__":
    main()
