"""PostgreSQL benchmark: asyncjobs on its PostgreSQL store beside pgqueuer, Oban for Python
and procrastinate, measured the same way in the same run; one command, one table.

    python bench/pg_run.py                 # everything, 3 runs (medians, min-max)
    python bench/pg_run.py --quick         # small sizes, 1 run: a smoke test, not figures
    python bench/pg_run.py --setup-oban    # make bench/.venv-oban (Python >= 3.12) first
    python bench/pg_run.py --only pgqueuer,asyncjobs --dsn postgresql://postgres@host/postgres

The database server is the one ``--dsn`` names (its database is only used to create and
drop one fresh database per step).  Each repetition runs every step once, and each ratio's
two sides (asyncjobs 1 host vs a peer's 1 process) run back to back, since other people's
work may share the machine.  Writes bench/results/pg-latest.txt and pg-latest.json.
See bench/README.md and docs/performance.md ("PostgreSQL").
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pg_steps as steps
import run as suite
from common import BENCH, summary

SYSTEMS = ("asyncjobs", *steps.PEERS)
LABEL = {"asyncjobs": "asyncjobs", "pgqueuer": "pgqueuer", "oban": "Oban for Python",
         "procrastinate": "procrastinate"}
OBAN_PYTHONS = ("3.12", "3.13")


@dataclass
class PgSizes:
    drain: int = 5000
    latency: int = 2000
    latency_rate: float = 200.0
    submit_single: int = 3000
    submit_batched: int = 20000
    hosts: tuple[int, ...] = (1, 2, 3)

    @classmethod
    def quick(cls) -> PgSizes:
        return cls(drain=1000, latency=400, submit_single=500, submit_batched=5000)

    def suite_sizes(self) -> suite.Sizes:
        """run.py's sizes for its HTTP submit helpers, scaled like ours."""
        return suite.Sizes(submit_single=self.submit_single,
                           submit_concurrent=2 * self.submit_single,
                           submit_batches=self.submit_batched // 500, batch_size=500,
                           host_submit=self.submit_single)


def repetition(args: argparse.Namespace, sizes: PgSizes, tmp: Path,
               errors: list[str]) -> dict[str, float]:
    f: dict[str, float] = {}
    meter, others = suite.CpuMeter(), []
    admin, only = args.dsn, args.only

    def step(label: str, fn: Callable[..., Any], *a: Any) -> Any:
        """A failing step is reported and the run goes on: one bug must not cost the rest."""
        meter.others()  # start this step's count of other processes' CPU
        print(f"  {label} ... (load {suite.loadavg():.2f})", flush=True)
        t0 = time.monotonic()
        try:
            return fn(*a)
        except Exception as exc:
            message = f"{label}: {(str(exc).strip().splitlines() or [repr(exc)])[-1][:300]}"
            print(f"  FAILED {message}", flush=True)
            errors.append(message)
            f["errors"] = f.get("errors", 0) + 1
            return None
        finally:
            f[f"seconds.{label}"] = time.monotonic() - t0
            if (busy := meter.others()) is not None:  # per step: pick the quiet ones
                others.append(busy)
                f[f"others.{label}"] = busy

    def drain(system: str, procs: int) -> None:
        if system not in only:
            return
        key = f"{system}.drain{procs}"
        if system == "asyncjobs":
            r = step(key, steps.aj_drain, admin, tmp, procs, sizes.drain)
        else:
            r = step(key, steps.peer_drain, admin, tmp, system, procs, sizes.drain)
        if r:
            f[key] = r["rate"]
            f[f"{key}.duplicates"] = r["duplicates"]
            f[f"{key}.max_idle_ms"] = 1000 * r["max_idle_s"]
            if r["db_cpu_s"]:
                f[f"{key}.db_us_per_job"] = 1e6 * r["db_cpu_s"] / sizes.drain

    def latency(system: str) -> None:
        if system not in only:
            return
        n, rate = sizes.latency, sizes.latency_rate
        if system == "asyncjobs":
            r = step(f"{system}.latency", steps.aj_latency, admin, tmp, n, rate)
        else:
            r = step(f"{system}.latency", steps.peer_latency, admin, tmp, system, n, rate)
        for k in ("p50_ms", "p99_ms", "max_ms", "offered_rate"):
            if r:
                f[f"{system}.latency.{k}"] = r[k]

    def submit(system: str) -> None:
        if system not in only:
            return
        if system == "asyncjobs":
            r = step(f"{system}.submit", steps.aj_submit, admin, tmp, sizes.suite_sizes())
            r = {**(r or {}), **(step(f"{system}.host_submit", steps.aj_host_submit, admin,
                                      tmp, sizes.submit_single) or {})}
        else:
            r = step(f"{system}.submit", steps.peer_submit, admin, tmp, system,
                     sizes.submit_single, sizes.submit_batched)
        for kind, rate in (r or {}).items():
            f[f"{system}.submit.{kind}"] = rate

    for system in SYSTEMS:  # asyncjobs x1 then each peer x1, back to back: the ratios
        drain(system, 1)
    for system in steps.PEERS:
        drain(system, 2)
    for hosts in sizes.hosts[1:]:
        drain("asyncjobs", hosts)
    for system in SYSTEMS:
        latency(system)
    for system in SYSTEMS:
        submit(system)
    if others:
        f["load.others_mean"] = sum(others) / len(others)
        f["load.others_max"] = max(others)
    for peer in steps.PEERS:
        if "asyncjobs.drain1" in f and f.get(f"{peer}.drain1"):
            f[f"ratio.asyncjobs_vs_{peer}"] = f["asyncjobs.drain1"] / f[f"{peer}.drain1"]
    return f


# -- report --------------------------------------------------------------------------------

ROWS: list[tuple[str, str, str, str]] = [
    # (key suffix, label, unit, format)
    ("drain1", "drain, 1 process (asyncjobs: 1 host)", "jobs/s", "{:,.0f}"),
    ("drain2", "drain, 2 processes (asyncjobs: 2 hosts)", "jobs/s", "{:,.0f}"),
    ("drain3", "drain, 3 hosts", "jobs/s", "{:,.0f}"),
    ("drain1.db_us_per_job", "  database CPU per job, 1 process/host", "us", "{:,.0f}"),
    ("drain2.db_us_per_job", "  database CPU per job, 2 processes/hosts", "us", "{:,.0f}"),
    ("drain3.db_us_per_job", "  database CPU per job, 3 hosts", "us", "{:,.0f}"),
    ("latency.p50_ms", "start latency p50", "ms", "{:.1f}"),
    ("latency.p99_ms", "start latency p99", "ms", "{:.1f}"),
    ("submit.single", "submit, single (1 client, sequential)", "jobs/s", "{:,.0f}"),
    ("submit.single_raw", "  single, raw-socket HTTP client", "jobs/s", "{:,.0f}"),
    ("submit.concurrent8", "  single, 8 HTTP clients", "jobs/s", "{:,.0f}"),
    ("submit.host_submit", "  single, Host.submit in-process", "jobs/s", "{:,.0f}"),
    ("submit.batch", "submit, batches of 500", "jobs/s", "{:,.0f}"),
]


def cell(reps: list[dict[str, float]], key: str, fmt: str) -> str:
    values = [rep[key] for rep in reps if key in rep]
    if not values:
        return "-"
    s = summary(values)
    text = fmt.format(s["median"])
    return text if len(values) == 1 else f"{text} ({fmt.format(s['min'])}-" \
                                          f"{fmt.format(s['max'])})"


def render(reps: list[dict[str, float]], sizes: PgSizes) -> str:
    width = 26
    head = f"  {'':40}" + "".join(f"{LABEL[s]:>{width}}" for s in SYSTEMS) + "  unit"
    lines = [f"\nDrain {sizes.drain:,} no-op jobs (first start -> last end); latency at "
             f"{sizes.latency_rate:g} jobs/s ({sizes.latency:,} jobs); median (min-max)", head]
    for suffix, label, unit, fmt in ROWS:
        cells = [cell(reps, f"{s}.{suffix}", fmt) for s in SYSTEMS]
        if any(c != "-" for c in cells):
            lines.append(f"  {label:40}" + "".join(f"{c:>{width}}" for c in cells)
                         + f"  {unit}")
    lines.append("\nasyncjobs 1 host / peer 1 process (within each run)")
    for peer in steps.PEERS:
        lines.append(f"  vs {LABEL[peer]:36} {cell(reps, f'ratio.asyncjobs_vs_{peer}', '{:.2f}')}")
    lines.append("\nAnomalies (ran twice: total over runs; longest idle in a drain: max)")
    for system in SYSTEMS:
        for procs in (1, 2, 3):
            key = f"{system}.drain{procs}"
            dups = [int(rep[f"{key}.duplicates"]) for rep in reps if f"{key}.duplicates" in rep]
            idle = [rep[f"{key}.max_idle_ms"] for rep in reps if f"{key}.max_idle_ms" in rep]
            if dups:
                lines.append(f"  {key:26} ran twice {sum(dups):4}   longest idle "
                             f"{max(idle):8.1f} ms")
    busy = [rep["load.others_mean"] for rep in reps if "load.others_mean" in rep]
    peak = [rep["load.others_max"] for rep in reps if "load.others_max" in rep]
    if busy:
        lines.append(f"\nOther processes' CPU during the steps: {max(busy):.2f} cores on "
                     f"average (worst run), {max(peak):.2f} in the busiest step")
    took = sorted({k for rep in reps for k in rep if k.startswith("seconds.")})
    if took:
        lines.append("\nSeconds per step (median): " + ", ".join(
            f"{k[8:]} {summary([r[k] for r in reps if k in r])['median']:.0f}" for k in took))
    lines.append("\nTargets (issue 16, medians)")
    for label, key, ok, wanted in targets():
        values = [rep[key] for rep in reps if key in rep]
        if values:
            med = summary(values)["median"]
            lines.append(f"  {label:44} {med:10.2f}  want {wanted:10} "
                         f"{'met' if ok(med) else 'NOT MET'}")
    return "\n".join(lines)


def targets() -> list[tuple[str, str, Callable[[float], bool], str]]:
    return [
        ("1 host drain / pgqueuer 1 process", "ratio.asyncjobs_vs_pgqueuer",
         lambda v: v >= 1.0, ">= 1.0"),
        ("1 host drain / Oban for Python 1 process", "ratio.asyncjobs_vs_oban",
         lambda v: v >= 2.0, ">= 2.0"),
        ("1 host drain / procrastinate 1 process", "ratio.asyncjobs_vs_procrastinate",
         lambda v: v >= 2.0, ">= 2.0"),
        ("start latency p50 (ms)", "asyncjobs.latency.p50_ms", lambda v: v <= 3.0, "<= 3"),
        ("start latency p99 (ms)", "asyncjobs.latency.p99_ms", lambda v: v <= 10.0, "<= 10"),
        ("batch submit (jobs/s)", "asyncjobs.submit.batch", lambda v: v >= 30_000,
         ">= 30,000"),
    ]


def setup_oban() -> int:
    """bench/.venv-oban with a Python >= 3.12 (pyenv's, or on PATH) and the oban package."""
    # The oldest interpreter that Oban for Python supports: the one its releases are tried on.
    pyenv = sorted((Path.home() / ".pyenv" / "versions").glob("3.1[2-9].*"))
    found = next((str(v / "bin" / "python") for v in pyenv if (v / "bin" / "python").exists()),
                 None)
    for name in (f"python{v}" for v in OBAN_PYTHONS):
        found = found or shutil.which(name)
    if not found:
        print("no Python >= 3.12 found (pyenv or PATH): the Oban for Python rows are skipped")
        return 1
    venv = steps.OBAN_VENV
    subprocess.run([found, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "oban>=0.7"], check=True)
    print(f"{venv}: oban {steps.peer_version('oban')}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 run by default")
    parser.add_argument("--runs", type=int, help="repetitions (default 3; --quick: 1)")
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="a database on the server to measure on (used to create and "
                        "drop one fresh database per step)")
    parser.add_argument("--only", default=",".join(SYSTEMS),
                        help=f"comma-separated systems from {','.join(SYSTEMS)}")
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    parser.add_argument("--code", default="worktree",
                        help="asyncjobs source to measure: 'worktree' or a git revision")
    parser.add_argument("--setup-oban", action="store_true",
                        help="create bench/.venv-oban (Python >= 3.12 + oban) and exit")
    args = parser.parse_args()
    if args.setup_oban:
        return setup_oban()
    args.only = {s.strip() for s in args.only.split(",") if s.strip()}
    if unknown := args.only - set(SYSTEMS):
        parser.error(f"unknown systems {sorted(unknown)}; choose from {SYSTEMS}")
    args.out.mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.gettempdir()) / "asyncjobs-bench-cache"
    suite.CODE, code_desc = suite.prepare_code(args.code, cache)
    sys.path.insert(0, str(suite.CODE))
    sizes = PgSizes.quick() if args.quick else PgSizes()
    runs = args.runs or (1 if args.quick else 3)
    notes: list[str] = []
    versions = {p: steps.peer_version(p) for p in steps.PEERS}
    for peer, version in versions.items():
        if peer in args.only and version == "not installed":
            args.only.discard(peer)
            notes.append(f"{LABEL[peer]} is not installed: its rows are skipped (pip install "
                         "-e '.[bench]'" + ("; python bench/pg_run.py --setup-oban"
                                             if peer == "oban" else "") + ")")
    with tempfile.TemporaryDirectory(prefix="asyncjobs-pgbench-") as probe:
        why = steps.aj_unsupported(Path(probe), args.dsn)
    if "asyncjobs" in args.only and why:
        args.only.discard("asyncjobs")
        notes.append(f"asyncjobs ({code_desc}) cannot use PostgreSQL: {why}")
    for n in notes:
        print(f"note: {n}", flush=True)
    info = suite.machine()
    print(f"machine: {info['nproc']} cpu ({info['cpu']}); asyncjobs: {code_desc}; peers: "
          + ", ".join(f"{LABEL[p]} {v}" for p, v in versions.items()), flush=True)
    reps: list[dict[str, float]] = []
    errors: list[str] = []
    started = time.time()

    def save() -> None:
        (args.out / "pg-latest.json").write_text(json.dumps(
            {"argv": sys.argv[1:], "code": code_desc, "machine": info, "peers": versions,
             "server": server_version(args.dsn), "sizes": sizes.__dict__, "runs": reps,
             "errors": errors, "notes": notes, "seconds": time.time() - started,
             "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1))

    for i in range(runs):
        print(f"run {i + 1}/{runs}", flush=True)
        with tempfile.TemporaryDirectory(prefix="asyncjobs-pgbench-") as tmp:
            reps.append(repetition(args, sizes, Path(tmp), errors))
        save()
    header = (f"asyncjobs PostgreSQL benchmark: {' '.join(sys.argv[1:]) or '(defaults)'}; "
              f"{info['nproc']} cpu ({info['cpu']}); {server_version(args.dsn)}; {runs} "
              f"run(s), {(time.time() - started) / 60:.1f} min\nasyncjobs: {code_desc}; "
              + "; ".join(f"{LABEL[p]} {v}" for p, v in versions.items()))
    table = render(reps, sizes) + "".join(f"\nnote: {n}" for n in notes + [
        f"FAILED step: {e}" for e in errors])
    print("\n" + header + table)
    (args.out / "pg-latest.txt").write_text(header + table + "\n")
    save()
    return 0


def server_version(dsn: str) -> str:
    import asyncio  # noqa: PLC0415

    import asyncpg  # noqa: PLC0415

    async def ask() -> str:
        conn = await asyncpg.connect(dsn)
        try:
            return str(await conn.fetchval("SELECT version()")).split(" on ")[0]
        finally:
            await conn.close()

    return asyncio.run(ask())


if __name__ == "__main__":
    sys.exit(main())
