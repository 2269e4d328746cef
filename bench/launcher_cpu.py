"""The CPU a job costs the host's launcher and the worker processes, without a store.

    python bench/launcher_cpu.py                 # work tree vs HEAD, 4 interleaved pairs
    python bench/launcher_cpu.py --base 9d347bb --pairs 6 --jobs 6000

A drain's throughput on 2 shared cores moves by 20 % between runs, which hides a change of
5-10 % in what a job costs.  This takes the store, the dispatcher and PostgreSQL out: one
process runs :class:`~asyncjobs.workers.launcher.SubprocessLauncher` itself (pool isolation,
``workers.max`` 2, ``max_jobs_per_worker`` 1000, so recycling is in the figure) and hands it
no-op jobs 64 at a time, as the dispatcher's rounds do; it reports the host process's own
CPU per job and its workers' (every worker's whole life, start-up and exit included, through
``RUSAGE_CHILDREN``).  Each pair runs the base commit (git archive) then the work tree, both
byte-compiled first, so a busy minute moves both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
JOBS = "class Noop:\n    def run(self, i):\n        return None\n"


async def measure(jobs: int) -> dict[str, float]:
    """In a child: run ``jobs`` no-op attempts through a launcher; CPU per job."""
    from asyncjobs.config import load_settings  # noqa: PLC0415 - the code measured
    from asyncjobs.models import Claimed, Isolation  # noqa: PLC0415
    from asyncjobs.workers.launcher import SubprocessLauncher  # noqa: PLC0415

    work = Path(tempfile.mkdtemp(prefix="asyncjobs-launcher-"))
    (work / "noopjobs.py").write_text(JOBS)
    (work / "config.json").write_text(json.dumps({
        "jobs": {"Noop": {"module": "noopjobs", "methods": ["run"]}},
        "workers": {"max": 2, "isolation": "pool", "max_jobs_per_worker": 1000},
        "data_dir": "data"}))
    settings = load_settings(work / "config.json", env={})
    ids = itertools.count(1)
    launcher = SubprocessLauncher(settings, work / "run")

    async def one() -> None:
        claimed = Claimed(id=next(ids), cls="Noop", method="run", args=[1], kwargs={},
                          attempt=1, attempts=1, max_attempts=1, timeout=10, interruptions=0)
        await launcher.run(claimed, Isolation.POOL, lambda *_: None)

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    for low in range(0, jobs, 64):
        await asyncio.gather(*(one() for _ in range(min(64, jobs - low))))
    await launcher.aclose()
    elapsed = time.perf_counter() - started
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    own_after = resource.getrusage(resource.RUSAGE_SELF)

    def cpu(before: resource.struct_rusage, after: resource.struct_rusage) -> float:
        return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime

    return {"rate": jobs / elapsed, "host_us": cpu(own, own_after) / jobs * 1e6,
            "workers_us": cpu(children, children_after) / jobs * 1e6}


def code_of(rev: str, dest: Path) -> Path:
    """``rev``'s asyncjobs package (git archive) in ``dest``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "asyncjobs"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def run_one(code: Path, jobs: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(code)}
    out = subprocess.run([sys.executable, __file__, "--child", str(jobs)], env=env,
                         capture_output=True, text=True, check=True, cwd=tempfile.gettempdir())
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="HEAD", help="git revision to compare against")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=6000)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(measure(args.child))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        sides = {"base": code_of(args.base, Path(tmp)), "work tree": ROOT}
        for code in sides.values():
            subprocess.run([sys.executable, "-m", "compileall", "-q", str(code / "asyncjobs")],
                           check=True)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
        for _ in range(args.pairs):
            for name, code in sides.items():
                runs[name].append(run_one(code, args.jobs))
    print(f"{args.jobs} no-op jobs through the launcher, pool, workers.max 2, "
          f"{args.pairs} interleaved pairs; base = {args.base}")
    for name, results in runs.items():
        figures = {key: [r[key] for r in results] for key in ("host_us", "workers_us", "rate")}
        print(f"  {name:9}  host {statistics.median(figures['host_us']):6.1f} us/job  "
              f"workers {statistics.median(figures['workers_us']):6.1f} us/job  "
              f"{statistics.median(figures['rate']):7,.0f} jobs/s   (host per run: "
              f"{', '.join(f'{v:.1f}' for v in figures['host_us'])})")


if __name__ == "__main__":
    main()
