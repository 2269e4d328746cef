"""How long a live backup stops intake: submit latency before and during ``POST /api/backup``.

A real ``asyncjobs serve`` on a temporary copy of the shipped project: ``--pending`` jobs
delayed a year make the database big enough for the copy to take a while, a drain of
``--drain`` jobs keeps the workers and the writer busy, and one client submits single jobs
in a closed loop the whole time.  Prints one JSON object: the longest and p99 submit latency
before the backup and while it ran, and the backup's own figures.

    python bench/backup_pause.py                       # 50,000 pending, 2,000 drained
    python bench/backup_pause.py --pending 200000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from asyncjobs.testing import ServeProcess

REPO = Path(__file__).resolve().parents[1]


def project(directory: Path) -> Path:
    shutil.copytree(REPO / "jobs", directory / "jobs")
    doc = json.loads((REPO / "config.json").read_text())
    doc.update(data_dir="data", schedules={})
    doc["workers"] = {**doc.get("workers", {}), "max": 2}
    (directory / "config.json").write_text(json.dumps(doc))
    return directory / "config.json"


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"n": len(ordered), "max_ms": round(ordered[-1] * 1000, 2),
            "p99_ms": round(ordered[int(len(ordered) * 0.99)] * 1000, 2),
            "median_ms": round(statistics.median(ordered) * 1000, 2)}


async def measure(serve: ServeProcess, pending: int, drain: int, out: Path) -> dict[str, Any]:
    async with serve.client() as client:
        later = {"class": "SampleJob", "method": "process", "args": ["later"],
                 "delay": 365 * 86400}
        for _ in range(pending // 500):
            await client.submit_batch([later] * 500)
        now = {"class": "SampleJob", "method": "process", "args": ["now"]}
        for _ in range(drain // 500):
            await client.submit_batch([now] * 500)
        samples: list[tuple[float, float]] = []  # (start, latency)
        stop = asyncio.Event()

        async def intake() -> None:
            while not stop.is_set():
                start = time.monotonic()
                await client.submit("SampleJob", "process", ["intake"])
                samples.append((start, time.monotonic() - start))

        task = asyncio.create_task(intake())
        await asyncio.sleep(2.0)
        began = time.monotonic()
        size = await client.backup(out)
        ended = time.monotonic()
        await asyncio.sleep(1.0)
        stop.set()
        await task
    before = [lat for start, lat in samples if start + lat < began]
    during = [lat for start, lat in samples if start < ended and start + lat > began]
    return {"pending": pending, "drain": drain, "backup_bytes": size,
            "backup_seconds": round(ended - began, 3),
            "submit_latency_before": summary(before),
            "submit_latency_during_backup": summary(during)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pending", type=int, default=50_000)
    parser.add_argument("--drain", type=int, default=2_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="asyncjobs-backup-") as tmp:
        config = project(Path(tmp))
        with ServeProcess(config, start_timeout=60) as serve:
            result = asyncio.run(measure(serve, args.pending, args.drain, Path(tmp) / "copy.db"))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
