"""Load: concurrent clients submit many no-op jobs to a real ``asyncjobs serve`` while they run.

Half the clients submit one job per request (``POST /api/jobs``), the other half small
batches (``POST /api/jobs/batch``).  Meanwhile the serve process's resident memory is sampled
from ``/proc/<pid>/status`` (VmRSS, and the kernel's own high-water mark VmHWM at the end).
The checks:

* every acknowledged job exists and completed (none missing, none failed, none left over);
* the host's memory stays bounded: its peak RSS stays under ``--max-rss-mb``.

``python stress/load.py`` is the full run (20,000 jobs, 8 clients, 4 workers) and prints its
figures as JSON; ``tests/test_load.py`` runs a smaller one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

from asyncjobs.testing import ServeProcess

NOOP_JOB = '''
class Noop:
    def run(self, n):
        return None
'''


@dataclass
class LoadReport:
    jobs: int = 0
    clients: int = 0
    batch: int = 0
    workers: int = 0
    acknowledged: int = 0
    submit_errors: int = 0
    submit_seconds: float = 0.0
    submits_per_second: float = 0.0
    total_seconds: float = 0.0
    jobs_per_second: float = 0.0
    completed: int = 0
    failed: int = 0
    missing: int = 0
    not_completed: int = 0
    other_attempts: int = 0  # attempts that did not complete (a no-op job has no reason to)
    errors: dict[str, int] = field(default_factory=dict)
    rss_start_mb: float = 0.0
    rss_peak_mb: float = 0.0
    rss_end_mb: float = 0.0
    vm_hwm_mb: float = 0.0
    rss_samples: int = 0
    max_rss_mb: float = 0.0
    integrity: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.acknowledged == self.jobs and self.completed == self.jobs
                and not self.failed and not self.missing and not self.not_completed
                and not self.other_attempts
                and self.rss_peak_mb <= self.max_rss_mb and self.vm_hwm_mb <= self.max_rss_mb
                and self.integrity == "ok")


def write_config(workdir: Path, workers: int) -> Path:
    (workdir / "loadjobs.py").write_text(NOOP_JOB)
    config = {
        "jobs": {"Noop": {"module": "loadjobs", "methods": ["run"]}},
        "workers": {"max": workers, "isolation": "pool", "kill_grace": 1},
        "retry": {"max_attempts": 1},
        "shutdown_grace": 5,
        "data_dir": "data",
    }
    path = workdir / "config.json"
    path.write_text(json.dumps(config))
    return path


def status_kb(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


async def sample_rss(pid: int, samples: list[int], stop: asyncio.Event,
                     interval: float) -> None:
    while not stop.is_set():
        try:
            samples.append(status_kb(pid, "VmRSS"))
        except OSError:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


async def client(server: ServeProcess, session: aiohttp.ClientSession, numbers: range, batch: int,
                 acked: list[int], report: LoadReport) -> None:
    """Submit ``numbers`` as jobs, one per request (batch 1) or ``batch`` per request."""
    step = max(1, batch)
    for start in range(numbers.start, numbers.stop, step):
        chunk = range(start, min(start + step, numbers.stop))
        bodies = [{"class": "Noop", "method": "run", "args": [n]} for n in chunk]
        for attempt in range(5):
            try:
                if batch > 1:
                    url, payload = f"{server.url}/api/jobs/batch", {"jobs": bodies}
                else:
                    url, payload = f"{server.url}/api/jobs", bodies[0]
                async with session.post(url, json=payload, headers=server.auth_headers) as resp:
                    data = await resp.json()
                    if resp.status == 201:
                        acked.extend(data["ids"] if batch > 1 else [data["id"]])
                        break
                    report.submit_errors += 1
            except (aiohttp.ClientError, OSError):
                report.submit_errors += 1
            await asyncio.sleep(0.05 * (attempt + 1))
        else:
            report.notes.append(f"gave up on jobs {chunk.start}..{chunk.stop - 1}")


async def wait_done(server: ServeProcess, session: aiohttp.ClientSession, expected: int,
                    timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        async with session.get(f"{server.url}/api/stats", headers=server.auth_headers) as resp:
            counts = (await resp.json())["counts"]
        finished = counts["completed"] + counts["failed"] + counts["cancelled"]
        if finished >= expected and counts["pending"] == 0 and counts["running"] == 0:
            return counts
        await asyncio.sleep(0.1)
    raise RuntimeError(f"jobs did not finish within {timeout} s: {counts}")


def check_store(db_path: Path, acked: list[int], report: LoadReport) -> None:
    """Read the stopped host's database: every acknowledged id there and completed."""
    with sqlite3.connect(db_path) as db:
        status = dict(db.execute("SELECT id, status FROM jobs").fetchall())
        report.integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        for outcome, error_type, message, count in db.execute(
                "SELECT outcome, error_type, error_message, COUNT(*) FROM attempts "
                "WHERE outcome IS NOT 'completed' GROUP BY 1, 2, 3"):
            report.other_attempts += count
            report.errors[f"{outcome}: {error_type}: {message}"] = count
    report.missing = sum(1 for job_id in acked if job_id not in status)
    report.completed = sum(1 for job_id in acked if status.get(job_id) == "completed")
    report.failed = sum(1 for job_id in acked if status.get(job_id) == "failed")
    report.not_completed = sum(1 for job_id in acked
                               if status.get(job_id) not in (None, "completed", "failed"))


async def load_test(workdir: Path, *, jobs: int = 20_000, clients: int = 8, batch: int = 10,
                    workers: int = 4, max_rss_mb: float = 300.0, timeout: float = 600.0,
                    sample_interval: float = 0.05) -> LoadReport:
    report = LoadReport(jobs=jobs, clients=clients, batch=batch, workers=workers,
                        max_rss_mb=max_rss_mb)
    server = ServeProcess(write_config(workdir, workers))
    acked: list[int] = []
    samples: list[int] = []
    stop_sampling = asyncio.Event()
    try:
        await asyncio.to_thread(server.start)
        pid = server.pid
        report.rss_start_mb = round(status_kb(pid, "VmRSS") / 1024, 1)
        sampler = asyncio.create_task(sample_rss(pid, samples, stop_sampling, sample_interval))
        connector = aiohttp.TCPConnector(limit=clients * 2)
        async with aiohttp.ClientSession(connector=connector) as session:
            started = time.monotonic()
            share = -(-jobs // clients)
            await asyncio.gather(*(
                client(server, session, range(i * share, min(jobs, (i + 1) * share)),
                       1 if i % 2 == 0 else batch, acked, report)
                for i in range(clients)))
            report.submit_seconds = round(time.monotonic() - started, 2)
            await wait_done(server, session, len(acked), timeout)
            report.total_seconds = round(time.monotonic() - started, 2)
        report.vm_hwm_mb = round(status_kb(pid, "VmHWM") / 1024, 1)
        report.rss_end_mb = round(status_kb(pid, "VmRSS") / 1024, 1)
        stop_sampling.set()
        await sampler
    finally:
        stop_sampling.set()
        server.stop()
    report.acknowledged = len(acked)
    report.rss_samples = len(samples)
    report.rss_peak_mb = round(max(samples, default=0) / 1024, 1)
    report.submits_per_second = round(len(acked) / max(report.submit_seconds, 1e-9))
    report.jobs_per_second = round(len(acked) / max(report.total_seconds, 1e-9))
    check_store(workdir / "data" / "asyncjobs.db", acked, report)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--batch", type=int, default=10,
                        help="jobs per request for the batch clients (half the clients)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--max-rss-mb", type=float, default=300.0)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(os.environ.get("TMPDIR", "/tmp")) / "asyncjobs-load"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    report = asyncio.run(load_test(workdir, jobs=args.jobs, clients=args.clients,
                                   batch=args.batch, workers=args.workers,
                                   max_rss_mb=args.max_rss_mb))
    print(json.dumps(asdict(report) | {"ok": report.ok}, indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
