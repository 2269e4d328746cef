"""The CPU one job costs each party of a PostgreSQL drain: the host, its workers, the database.

    python bench/drain_cpu.py                   # work tree vs HEAD, 3 interleaved pairs
    python bench/drain_cpu.py --base a8eea55 --pairs 4 --jobs 5000

``pg_run.py`` gives a drain's throughput, which moves by 20 % between runs on 2 shared cores;
this splits a drain's cost by process instead, which moves less.  One ``asyncjobs serve`` on a
fresh database (pool isolation, ``workers.max`` 2, ``max_jobs_per_worker`` 1,000, as in
``pg_run.py``) is warmed with 4 jobs, then gets ``--jobs`` no-op jobs due at one instant; from
the end of that submit to the last job's end it takes, per job:

* **host**: the ``asyncjobs serve`` process's own CPU;
* **workers**: every process below it -- the fork server and the warm workers, the workers'
  start-up and exit included (a reaped worker's time is in its parent's ``cutime``, and a
  spawned one's in the host's);
* **database**: the backends connected to the step's database (``pg_steps.BackendCpu``).

Each pair runs the base commit (git archive) and then the work tree, both byte-compiled first,
so a busy minute moves both sides.  Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import pg_steps  # noqa: E402 - after the bench directory is on the path

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, int, int, int] | None:
    """utime, stime, cutime, cstime of ``pid`` in clock ticks; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]), int(fields[12]), int(fields[13]), int(fields[14])


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            found += map(int, Path(f"/proc/{pid}/task/{task}/children").read_text().split())
    except OSError:
        pass
    return found


def sample(host: int) -> tuple[float, float]:
    """(the host's own CPU, its descendants' -- live and reaped) in seconds."""
    own = _stat(host)
    assert own is not None, "the host is gone"
    below = own[2] + own[3]  # workers it reaped itself (spawned ones)
    todo = _children(host)
    while todo:
        pid = todo.pop()
        todo += _children(pid)
        if (times := _stat(pid)) is not None:
            below += sum(times)  # its own, and what it reaped
    return (own[0] + own[1]) / TICK, below / TICK


def measure(admin: str, jobs: int) -> dict[str, float]:
    """In a child (the code measured is on its path): one drain's CPU per job, in µs."""
    work = Path(tempfile.mkdtemp(prefix="asyncjobs-drain-cpu-"))
    records, warm = work / "records.txt", work / "warm.txt"
    try:
        with pg_steps.fresh_db(admin, "draincpu") as dsn, \
                pg_steps.aj_hosts(work, dsn, 1) as served:
            host = served[0]
            asyncio.run(pg_steps._post_batches(
                host, [pg_steps.job_body(-1 - i, warm) for i in range(4)]))
            pg_steps._wait_lines(warm, 4, 60, served)
            run_at = dt.datetime.fromtimestamp(time.time() + 2.0, dt.UTC).isoformat()
            asyncio.run(pg_steps._post_batches(
                host, [pg_steps.job_body(i, records, run_at=run_at) for i in range(jobs)]))
            own0, below0 = sample(host.proc.pid)
            with pg_steps.BackendCpu(dsn) as db:
                pg_steps._wait_lines(records, jobs, jobs / 20 + 60, served)
            own1, below1 = sample(host.proc.pid)
            rate = pg_steps.drain_rate(pg_steps.read_records(records))["rate"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"rate": rate, "host_us": (own1 - own0) / jobs * 1e6,
            "workers_us": (below1 - below0) / jobs * 1e6, "db_us": db.seconds() / jobs * 1e6}


def run_one(code: Path, admin: str, jobs: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", str(jobs), "--dsn", admin,
                          "--code-path", str(code)],
                         env={**os.environ, "PYTHONPATH": str(code)},
                         capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="HEAD", help="git revision to compare against")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="a database used only to create and drop the step's own")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--code-path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        pg_steps.suite.CODE = Path(args.code_path)  # what the hosts it starts run
        print(json.dumps(measure(args.dsn, args.child)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        # Both byte-compiled (suite.prepare_code), as an installed package is.
        sides = {"base": pg_steps.suite.prepare_code(args.base, Path(tmp))[0],
                 "work tree": pg_steps.suite.prepare_code("worktree", Path(tmp))[0]}
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
        for _ in range(args.pairs):
            for name, code in sides.items():
                runs[name].append(run_one(code, args.dsn, args.jobs))
    print(f"{args.jobs:,} no-op jobs drained by 1 host on PostgreSQL, pool, workers.max 2, "
          f"{args.pairs} interleaved pairs; base = {args.base}; CPU per job, medians")
    for name, results in runs.items():
        med = {key: statistics.median(r[key] for r in results)
               for key in ("host_us", "workers_us", "db_us", "rate")}
        per_run = ", ".join(f"{r['host_us']:.0f}" for r in results)
        print(f"  {name:9}  host {med['host_us']:5.0f} us  workers {med['workers_us']:5.0f} us"
              f"  database {med['db_us']:5.0f} us  {med['rate']:7,.0f} jobs/s   "
              f"(host per run: {per_run})")


if __name__ == "__main__":
    main()
