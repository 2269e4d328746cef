"""Three real hosts on one PostgreSQL database drain 3,000 jobs while one is SIGKILLed again and
again; then check the cluster's at-least-once guarantee from the attempt rows.

Jobs are submitted round-robin to the hosts (batches of 50).  Every ``--kill-every`` seconds
one host, chosen at random, is killed with SIGKILL and started again on the same data
directory (a new host id).  Each job appends its key to a record file, so afterwards we know
exactly which jobs ran and how often.  The checks:

* every acknowledged job reached ``completed`` (none missing, none left running);
* a job has more than one attempt only if every earlier one was ``interrupted`` and ran on a
  host that was killed (it ran twice only because its host died running it);
* the jobs of a killed host were rescued within ``lease + heartbeat + --slack`` seconds.

    python stress/pg_hosts.py --url postgresql://postgres@127.0.0.1:5432/test --jobs 3000

It creates (and drops) a database ``asyncjobs_stress_<random>`` on that server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import time
import uuid
from pathlib import Path
from tempfile import mkdtemp
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from asyncjobs.testing import ServeProcess

REPO = Path(__file__).resolve().parents[1]
HOSTS = {"heartbeat": 0.5, "lease": 2.0}


def project(directory: Path, url: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "tests" / "jobs_fixture", directory / "jobs_fixture",
                    dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    doc = {"jobs": {"Ok": {"module": "jobs_fixture.testjobs", "methods": ["record"]}},
           "workers": {"max": 2, "kill_grace": 0.5}, "store": url, "hosts": HOSTS,
           "shutdown_grace": 1, "data_dir": "data"}
    (directory / "config.json").write_text(json.dumps(doc))
    return directory / "config.json"


async def run(url: str, jobs: int, kill_every: float, slack: float) -> int:
    parts = urlsplit(url)
    name = f"asyncjobs_stress_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    db_url = urlunsplit(parts._replace(path=f"/{name}"))
    root = Path(mkdtemp(prefix="asyncjobs-pg-stress-"))
    record = root / "ran.txt"
    hosts = [ServeProcess(project(root / f"host{i}", db_url)) for i in range(3)]
    kills: list[tuple[float, str]] = []  # (when, url of the killed host)
    try:
        for host in hosts:
            await asyncio.to_thread(host.start)
        started = time.time()
        submitter = asyncio.create_task(submit(hosts, record, jobs))
        while not submitter.done() or not await drained(db_url, jobs):
            await asyncio.sleep(kill_every)
            victim = random.choice(hosts)
            kills.append((time.time(), victim.url))
            victim.kill()
            await asyncio.to_thread(victim.start)
        ok = await check(db_url, record, jobs, kills, slack)
        print(f"{jobs} jobs, {len(kills)} kills, {time.time() - started:.1f} s: "
              f"{'OK' if ok else 'FAILED'}")
        return 0 if ok else 1
    finally:
        for host in hosts:
            host.stop()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        shutil.rmtree(root, ignore_errors=True)


async def submit(hosts: list[ServeProcess], record: Path, jobs: int) -> None:
    for start in range(0, jobs, 50):
        body = [{"class": "Ok", "method": "record", "args": [str(record), f"j{i}"]}
                for i in range(start, min(start + 50, jobs))]
        for attempt in range(50):  # the chosen host may be down this moment: try another
            host = hosts[(start // 50 + attempt) % len(hosts)]
            try:
                async with host.client() as client:
                    await client.submit_batch(body)
                break
            except Exception:  # a killed host: the batch goes to another
                await asyncio.sleep(0.1)


async def drained(url: str, jobs: int) -> bool:
    conn = await asyncpg.connect(url)
    try:
        done = await conn.fetchval("SELECT count(*) FROM jobs WHERE status = 'completed'")
    finally:
        await conn.close()
    return bool(done >= jobs)


async def check(url: str, record: Path, jobs: int, kills: list[tuple[float, str]],
                slack: float) -> bool:
    conn = await asyncpg.connect(url)
    try:
        statuses = dict(await conn.fetch("SELECT status, count(*) FROM jobs GROUP BY 1"))
        killed_ids = {r[0] for r in await conn.fetch(
            "SELECT id FROM hosts WHERE url = ANY($1)", [u for _, u in kills])}
        rows = await conn.fetch("SELECT job_id, number, host, outcome, finished_at "
                                "FROM attempts ORDER BY job_id, number")
    finally:
        await conn.close()
    history: dict[int, list[asyncpg.Record]] = {}
    for row in rows:
        history.setdefault(row[0], []).append(row)
    unexplained = [job for job, h in history.items()
                   if any(a[3] != "interrupted" or a[2] not in killed_ids for a in h[:-1])]
    ran = record.read_text().split()
    bound = HOSTS["lease"] + HOSTS["heartbeat"] + slack
    late = [job for job, h in history.items() for a in h[:-1]
            if not any(0 <= a[4] - at < bound for at, _ in kills)]
    print(f"statuses {statuses}; {len(set(ran))} distinct jobs ran, {len(ran)} runs; "
          f"{sum(len(h) > 1 for h in history.values())} jobs rescued; "
          f"{len(unexplained)} unexplained repeats; {len(late)} rescues later than {bound} s")
    # A batch whose host died before answering is sent again: its jobs may exist twice.
    return (set(statuses) == {"completed"} and len(set(ran)) == jobs and not unexplained
            and not late)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--kill-every", type=float, default=2.0)
    parser.add_argument("--slack", type=float, default=3.0)
    args = parser.parse_args()
    return asyncio.run(run(args.url, args.jobs, args.kill_every, args.slack))


if __name__ == "__main__":
    sys.exit(main())
