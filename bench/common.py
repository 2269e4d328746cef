"""Helpers shared by the benchmark's orchestrator (run.py) and its child processes."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
JOBS_DIR = BENCH / "jobs"
JOB_MODULE = "benchjobs"
JOB_CLASS = "Bench"
JOB_METHOD = "noop"
FAR_FUTURE = 365 * 86400.0  # a delay that keeps a job pending for the whole benchmark


def write_config(work: Path, *, isolation: str = "pool", durability: str = "normal",
                 workers: int = 2) -> Path:
    """A project directory with its config.json and the no-op job module next to it."""
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy(JOBS_DIR / f"{JOB_MODULE}.py", work / f"{JOB_MODULE}.py")
    config = {
        "jobs": {JOB_CLASS: {"module": JOB_MODULE, "methods": [JOB_METHOD]}},
        "workers": {"max": workers, "isolation": isolation},
        "api": {"host": "127.0.0.1", "port": 0},
        "data_dir": "data",
        "durability": durability,
        "shutdown_grace": 10,
    }
    path = work / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def job_body(seq: int, path: Path | str, **options: object) -> dict[str, object]:
    return {"class": JOB_CLASS, "method": JOB_METHOD,
            "args": [seq, time.time(), str(path)], **options}


@dataclass
class Record:
    seq: int
    enqueued: float
    started: float
    ended: float


def read_records(path: Path) -> list[Record]:
    out: list[Record] = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        seq, enq, start, end = line.split()
        out.append(Record(int(seq), float(enq), float(start), float(end)))
    return out


def count_lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def drain_rate(records: list[Record]) -> dict[str, float]:
    """Jobs per second from the first start to the last end."""
    first = min(r.started for r in records)
    last = max(r.ended for r in records)
    span = last - first
    return {"jobs": len(records), "seconds": span, "rate": len(records) / span if span else 0.0,
            "first_start": first, "last_end": last,
            "duplicates": len(records) - len({r.seq for r in records}),
            "max_idle_s": max_idle(records)}


def max_idle(records: list[Record]) -> float:
    """The longest stretch inside the drain during which no job was running."""
    ordered = sorted(records, key=lambda r: r.started)
    longest, busy_until = 0.0, ordered[0].ended
    for r in ordered[1:]:
        longest = max(longest, r.started - busy_until)
        busy_until = max(busy_until, r.ended)
    return longest


def abnormal_attempts(data_dir: Path) -> dict[str, int]:
    """Attempts that did not complete, by outcome, from the host's jobs.log."""
    out: dict[str, int] = {}
    for log in sorted((data_dir / "logs").glob("jobs.log*")):
        for line in log.read_text(errors="replace").splitlines():
            if " outcome=" in line:
                kind = line.split(" outcome=", 1)[1].split()[0]
                out[kind] = out.get(kind, 0) + 1
    return out


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, int(-(-q * len(ordered) // 100)))  # ceil(q/100 * n)
    return ordered[min(rank, len(ordered)) - 1]


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in bytes."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def proc_cpu(pid: int | str = "self") -> float:
    """User + system CPU seconds of a process (its own threads, not its children)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def wait_for_file(path: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size > 0:
            return True
        time.sleep(0.01)
    return False


async def paced(n: int, rate: float, one: Callable[[int], Awaitable[None]]) -> float:
    """Start ``one(i)`` for i in 0..n-1 at ``rate`` per second, each as its own task (paced,
    not closed-loop: a slow call does not delay the next one's start), wait for all of them;
    return the rate actually offered."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks = []
    for i in range(n):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    return n / (loop.time() - start)
