"""Kill a real ``asyncjobs serve`` with SIGKILL at random moments and check nothing is lost.

A stream of jobs is submitted over HTTP while the host is killed and restarted, again and
again.  Each job appends its key to a record file (fsynced), so afterwards we know exactly
which jobs ran and how often.  The checks are the §4 guarantee:

* every job acknowledged with 201 exists and reached a final state (none missing);
* a job ran more than once only if the host died while it was running (it has an
  ``interrupted`` attempt);
* no job is left ``running``; the database passes ``PRAGMA integrity_check``.

``python stress/crash.py --kills 100`` is the long run; ``tests/test_crash.py`` runs a short one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sqlite3
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from asyncjobs.testing import ServeProcess

HERE = Path(__file__).resolve().parent


@dataclass
class Report:
    kills: int = 0
    acknowledged: int = 0
    submit_errors: int = 0
    completed: int = 0
    failed: int = 0
    missing: list[int] = field(default_factory=list)
    not_final: list[int] = field(default_factory=list)
    ran_twice: int = 0
    ran_twice_unexplained: list[str] = field(default_factory=list)
    never_ran_but_completed: list[str] = field(default_factory=list)
    interrupted_attempts: int = 0
    integrity: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (not self.missing and not self.not_final and not self.ran_twice_unexplained
                and not self.never_ran_but_completed and self.integrity == "ok")


def write_config(workdir: Path) -> Path:
    shutil.copy(HERE / "crashjobs.py", workdir / "crashjobs.py")
    config = {
        "jobs": {"Record": {"module": "crashjobs", "methods": ["run"], "max_attempts": 5,
                            "timeout": 10}},
        "retry": {"base_delay": 0.05, "factor": 2, "max_delay": 0.5, "jitter": 0},
        "workers": {"max": 2, "kill_grace": 0.5},
        "max_interruptions": 1000,  # here we want every job to complete, however often killed
        "shutdown_grace": 2,
        "data_dir": "data",
    }
    path = workdir / "config.json"
    path.write_text(json.dumps(config))
    return path


async def submit_stream(server: ServeProcess, session: aiohttp.ClientSession, record: Path,
                        acked: dict[str, int], counter: list[int], rng: random.Random,
                        stop: asyncio.Event, report: Report) -> None:
    """Submit jobs one by one until ``stop``; remember each key acknowledged with 201."""
    while not stop.is_set():
        counter[0] += 1
        key = f"k{counter[0]}"
        body = {"class": "Record", "method": "run",
                "args": [key, str(record)],
                "kwargs": {"fail_first": rng.random() < 0.2,
                           "sleep": rng.choice([0, 0, 0.01, 0.05])}}
        if rng.random() < 0.1:
            body["delay"] = rng.choice([0.05, 0.2])
        try:
            async with session.post(f"{server.url}/api/jobs", json=body,
                                    headers=server.auth_headers) as resp:
                if resp.status == 201:
                    acked[key] = (await resp.json())["id"]
                else:
                    report.submit_errors += 1
        except (aiohttp.ClientError, OSError):
            report.submit_errors += 1  # the host died mid-request: not acknowledged
            await asyncio.sleep(0.01)


async def wait_settled(server: ServeProcess, session: aiohttp.ClientSession,
                       timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with session.get(f"{server.url}/api/stats", headers=server.auth_headers) as resp:
            counts = (await resp.json())["counts"]
        if counts["pending"] == 0 and counts["running"] == 0:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"jobs did not settle within {timeout} s: {counts}")


async def fetch_jobs(server: ServeProcess, session: aiohttp.ClientSession,
                     ids: list[int]) -> dict[int, Any]:
    jobs: dict[int, Any] = {}
    for job_id in ids:
        async with session.get(f"{server.url}/api/jobs/{job_id}",
                               headers=server.auth_headers) as resp:
            if resp.status == 200:
                jobs[job_id] = await resp.json()
    return jobs


def check(report: Report, acked: dict[str, int], jobs: dict[int, Any], record: Path) -> None:
    runs = Counter(record.read_text().split()) if record.exists() else Counter()
    for key, job_id in acked.items():
        job = jobs.get(job_id)
        if job is None:
            report.missing.append(job_id)
            continue
        if job["status"] not in ("completed", "failed", "cancelled"):
            report.not_final.append(job_id)
        report.completed += job["status"] == "completed"
        report.failed += job["status"] == "failed"
        outcomes = [a["outcome"] for a in job["attempt_history"]]
        report.interrupted_attempts += outcomes.count("interrupted")
        if runs[key] > 1:
            report.ran_twice += 1
            if "interrupted" not in outcomes:
                report.ran_twice_unexplained.append(key)
        if job["status"] == "completed" and runs[key] == 0:
            report.never_ran_but_completed.append(key)


async def crash_test(workdir: Path, *, kills: int, seed: int = 1,
                     min_up: float = 0.05, max_up: float = 0.6) -> Report:
    started = time.monotonic()
    rng = random.Random(seed)
    report = Report()
    config = write_config(workdir)
    record = workdir / "record.txt"
    server = ServeProcess(config)  # its output: workdir/serve.log
    acked: dict[str, int] = {}
    counter = [0]
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(kills):
                await asyncio.to_thread(server.start)
                stop = asyncio.Event()
                stream = asyncio.create_task(submit_stream(server, session, record, acked,
                                                           counter, rng, stop, report))
                await asyncio.sleep(rng.uniform(min_up, max_up))
                server.kill()  # at whatever instant: submit, dispatch, run, retry wait, write
                report.kills += 1
                stop.set()
                await stream
            await asyncio.to_thread(server.start)
            await wait_settled(server, session, timeout=120)
            jobs = await fetch_jobs(server, session, sorted(acked.values()))
    finally:
        server.stop()
    report.acknowledged = len(acked)
    check(report, acked, jobs, record)
    with sqlite3.connect(workdir / "data" / "asyncjobs.db") as db:
        report.integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    report.seconds = round(time.monotonic() - started, 1)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(os.environ.get("TMPDIR", "/tmp")) / "asyncjobs-crash"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    report = asyncio.run(crash_test(workdir, kills=args.kills, seed=args.seed))
    print(json.dumps(report.__dict__ | {"ok": report.ok}, indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
