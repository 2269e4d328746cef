"""asyncjobs benchmark suite: one command, one table.

    python bench/run.py                    # everything, 3 runs, scale figure at 100,000 jobs
    python bench/run.py --scale 1000000    # ... with the 1M-job database (builds it once)
    python bench/run.py --quick            # small sizes, 1 run: for iterating, not for quoting
    python bench/run.py --only drain,huey  # a subset (sections: drain huey latency submit
                                           #   scale ceiling)
    python bench/run.py --profile drain    # the pool drain under py-spy (or --profiler
                                           #   pyinstrument); report in bench/results/

Every job is the no-op in bench/jobs/benchjobs.py: it appends ``seq enqueued started ended``
(wall clock) to a record file, and every figure is computed from those lines.  Each
repetition runs every section once, in the same order, so ratios (asyncjobs / huey,
process mode / spawn ceiling, 1M / 1k) are taken within a repetition and then summarised:
median and min-max over the repetitions.  See bench/README.md and docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    BENCH,
    FAR_FUTURE,
    ROOT,
    count_lines,
    drain_rate,
    job_body,
    paced,
    percentile,
    proc_cpu,
    proc_status,
    read_records,
    summary,
    write_config,
)

PY = sys.executable
CODE = ROOT  # the directory whose asyncjobs/ package is measured (see --code)
SECTIONS = ("drain", "huey", "latency", "submit", "scale", "ceiling")
MB = 1024 * 1024


# -- sizes -------------------------------------------------------------------------------------

@dataclass
class Sizes:
    drain: int = 5000
    drain_process: int = 500
    latency: int = 2000
    latency_rate: float = 200.0
    submit_single: int = 3000
    submit_concurrent: int = 6000
    submit_batches: int = 40
    batch_size: int = 500
    host_submit: int = 3000
    scale_small: int = 1000
    scale: int = 100_000
    scale_drain: int = 5000
    scale_budget: float = 90.0  # seconds; a slower drain is measured on what ran by then
    get_requests: int = 200
    stats_requests: int = 100
    spawns: int = 200

    @classmethod
    def quick(cls) -> Sizes:
        return cls(drain=1000, drain_process=100, latency=400, submit_single=500,
                   submit_concurrent=800, submit_batches=6, host_submit=500, scale=10_000,
                   scale_drain=1000, scale_budget=30.0, get_requests=50, stats_requests=20,
                   spawns=40)


# -- child processes ---------------------------------------------------------------------------

def child_env() -> dict[str, str]:
    """The environment for the host and workers: no ASYNCJOBS_* overrides leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCJOBS_")}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(CODE), str(BENCH), env.get("PYTHONPATH")) if p)
    return env


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def prepare_code(spec: str, cache: Path) -> tuple[Path, str]:
    """The asyncjobs source to measure: the work tree as it is, or a commit (git archive);
    byte-compiled, as ``pip install`` leaves a package (see :func:`_compiled`)."""
    path, desc = _source(spec, cache)
    _compiled(path)
    return path, desc


def _compiled(code: Path) -> None:
    """Write the measured package's ``.pyc`` files.  Every worker start imports the worker's
    modules: without them (an editable install or a git archive, under a
    ``PYTHONDONTWRITEBYTECODE`` environment such as these machines') each start compiled
    them again, ~10-15 ms of CPU per worker that a user's installed package never pays."""
    subprocess.run([PY, "-m", "compileall", "-q", str(code / "asyncjobs")], check=True)


def _source(spec: str, cache: Path) -> tuple[Path, str]:
    if spec == "worktree":
        dirty = git("status", "--porcelain", "--", "asyncjobs").splitlines()
        head = git("rev-parse", "--short=10", "HEAD")
        desc = f"work tree at {head}"
        if dirty:
            desc += f" + uncommitted changes in {len(dirty)} asyncjobs file(s)"
        return ROOT, desc
    sha = git("rev-parse", "--verify", f"{spec}^{{commit}}")
    dest = cache / f"code-{sha[:12]}"
    if not (dest / "asyncjobs" / "__init__.py").exists():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", sha, "asyncjobs"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    subject = git("log", "-1", "--format=%s", sha)[:70]
    return dest, f"commit {sha[:10]} ({subject})"


def run_child(params: dict[str, Any], *, on_event: Callable[[dict[str, Any]], None] | None
              = None, timeout: float = 1800) -> dict[str, Any]:
    """Run one bench/child.py scenario in a fresh process; return its result."""
    proc = subprocess.Popen([PY, str(BENCH / "child.py"), json.dumps(params)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env(), cwd=params.get("work", str(BENCH)))
    result: dict[str, Any] | None = None
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "result" in msg:
                result = msg["result"]
            elif on_event is not None:
                on_event(msg)
        stderr = proc.stderr.read() if proc.stderr else ""
        proc.wait()
    finally:
        timer.cancel()
    if proc.returncode != 0 or result is None:
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"child {params['scenario']} failed ({proc.returncode}):\n{tail}")
    return result


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    url: str
    token: str
    startup_s: float


@contextlib.contextmanager
def serve(work: Path) -> Iterator[Served]:
    """``asyncjobs serve`` on port 0 over ``work``; start-up timed until /api/health answers."""
    import urllib.request  # noqa: PLC0415

    from asyncjobs.engine.datadir import HOST_FILE, TOKEN_FILE  # noqa: PLC0415

    env = child_env()
    env["ASYNCJOBS_PORT"] = "0"
    host_file = work / "data" / HOST_FILE
    host_file.unlink(missing_ok=True)
    log = (work / "serve.log").open("ab")
    t0 = time.perf_counter()
    proc = subprocess.Popen([PY, "-m", "asyncjobs", "serve", "--config",
                             str(work / "config.json")], cwd=work, env=env, stdout=log,
                            stderr=log)
    try:
        url = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"asyncjobs serve exited {proc.returncode}; see "
                                   f"{work / 'serve.log'}")
            if not url and host_file.exists():
                with contextlib.suppress(json.JSONDecodeError):
                    url = json.loads(host_file.read_text())["url"]
            if url:
                try:
                    with urllib.request.urlopen(f"{url}/api/health", timeout=5) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
            time.sleep(0.005)
        else:
            raise RuntimeError("asyncjobs serve did not become ready")
        startup = time.perf_counter() - t0
        token = (work / "data" / TOKEN_FILE).read_text().strip()
        yield Served(proc, url, token, startup)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


# -- HTTP clients ------------------------------------------------------------------------------

def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


async def _post(session: Any, url: str, body: Any) -> dict[str, Any]:
    async with session.post(url, data=json.dumps(body)) as resp:
        data: dict[str, Any] = await resp.json()
        if resp.status not in (200, 201):
            raise RuntimeError(f"POST {url}: {resp.status} {data}")
        return data


async def http_latency(served: Served, work: Path, n: int, rate: float) -> dict[str, Any]:
    """n single submits at ``rate``/s to an idle host; start - enqueue from the records."""
    import aiohttp  # noqa: PLC0415

    records, warm = work / "records.txt", work / "warm.txt"
    url = f"{served.url}/api/jobs"
    response_times: list[float] = []
    async with aiohttp.ClientSession(headers=_headers(served.token)) as session:
        for i in range(2):  # warm the pool: both workers exist before we measure
            await _post(session, url, job_body(-1 - i, warm))
        while count_lines(warm) < 2:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)  # idle

        async def one(i: int) -> None:
            t = time.perf_counter()
            await _post(session, url, job_body(i, records))
            response_times.append(time.perf_counter() - t)

        offered = await paced(n, rate, one)
        deadline = time.monotonic() + 60
        while count_lines(records) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    recs = read_records(records)
    if len(recs) < n:
        raise RuntimeError(f"latency: only {len(recs)} of {n} jobs ran")
    lat = [(r.started - r.enqueued) * 1000 for r in recs]
    return {"p50_ms": percentile(lat, 50), "p90_ms": percentile(lat, 90),
            "p99_ms": percentile(lat, 99), "max_ms": max(lat), "offered_rate": offered,
            "http_p50_ms": percentile(response_times, 50) * 1000,
            "http_p99_ms": percentile(response_times, 99) * 1000}


def raw_single_submits(served: Served, body: bytes, k: int) -> float:
    """``k`` single submits, one at a time, from a minimal client: one keep-alive socket and
    a request built once.  The aiohttp client spends about as much CPU per request as the
    host does, so this shows what the host itself sustains."""
    import socket  # noqa: PLC0415
    from urllib.parse import urlsplit  # noqa: PLC0415

    where = urlsplit(served.url)
    request = (f"POST /api/jobs HTTP/1.1\r\nHost: {where.netloc}\r\n"
               f"Authorization: Bearer {served.token}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection((where.hostname, where.port)) as sock, \
            sock.makefile("rb") as reply:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def one() -> None:
            sock.sendall(request)
            status, length = reply.readline(), 0
            while (line := reply.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            reply.read(length)
            if b" 201 " not in status:
                raise RuntimeError(f"raw submit: {status!r}")

        for _ in range(50):
            one()
        t0 = time.perf_counter()
        for _ in range(k):
            one()
        return k / (time.perf_counter() - t0)


async def http_submits(served: Served, sizes: Sizes) -> dict[str, Any]:
    """Single submits from one client, from 8 clients, and batches of 500: jobs/s."""
    import aiohttp  # noqa: PLC0415

    url = f"{served.url}/api/jobs"
    sink = "/dev/null"
    out: dict[str, Any] = {}
    pid = served.proc.pid

    def body(i: int) -> dict[str, Any]:
        return job_body(i, sink, delay=FAR_FUTURE)

    async with aiohttp.ClientSession(headers=_headers(served.token)) as session:
        for i in range(50):
            await _post(session, url, body(i))
        k = sizes.submit_single
        c0, t0 = proc_cpu(pid), time.perf_counter()
        for i in range(k):
            await _post(session, url, body(i))
        elapsed = time.perf_counter() - t0
        out["single"] = {"rate": k / elapsed, "host_cpu": (proc_cpu(pid) - c0) / elapsed}

        c0, t0 = proc_cpu(pid), time.perf_counter()
        rate = await asyncio.to_thread(raw_single_submits, served,
                                       json.dumps(body(0)).encode(), k)
        out["single_raw"] = {"rate": rate,
                             "host_cpu": (proc_cpu(pid) - c0) / (time.perf_counter() - t0)}

        b = sizes.batch_size
        await _post(session, f"{url}/batch", {"jobs": [body(i) for i in range(b)]})
        c0, t0 = proc_cpu(pid), time.perf_counter()
        for _ in range(sizes.submit_batches):
            await _post(session, f"{url}/batch", {"jobs": [body(i) for i in range(b)]})
        elapsed = time.perf_counter() - t0
        out["batch"] = {"rate": sizes.submit_batches * b / elapsed,
                        "host_cpu": (proc_cpu(pid) - c0) / elapsed}

    clients = 8
    per = sizes.submit_concurrent // clients
    sessions = [aiohttp.ClientSession(headers=_headers(served.token)) for _ in range(clients)]
    try:
        async def client(s: Any, n: int) -> None:
            for i in range(n):
                await _post(s, url, body(i))

        await asyncio.gather(*(client(s, 10) for s in sessions))
        c0, t0 = proc_cpu(pid), time.perf_counter()
        await asyncio.gather(*(client(s, per) for s in sessions))
        elapsed = time.perf_counter() - t0
        out["concurrent8"] = {"rate": per * clients / elapsed,
                              "host_cpu": (proc_cpu(pid) - c0) / elapsed}
    finally:
        await asyncio.gather(*(s.close() for s in sessions))
    return out


async def http_gets(served: Served, path: str, count: int, budget: float) -> dict[str, Any]:
    import aiohttp  # noqa: PLC0415

    times: list[float] = []
    async with aiohttp.ClientSession(headers=_headers(served.token)) as session:
        for _ in range(3):  # warm
            async with session.get(served.url + path) as resp:
                await resp.read()
        deadline = time.monotonic() + budget
        while len(times) < count and time.monotonic() < deadline:
            t = time.perf_counter()
            async with session.get(served.url + path) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"GET {path}: {resp.status}")
            times.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99),
            "max_ms": max(times), "requests": len(times)}


# -- the sections --------------------------------------------------------------------------

def drain_once(tmp: Path, name: str, isolation: str, durability: str, n: int,
               on_event: Callable[[dict[str, Any]], None] | None = None,
               **extra: Any) -> dict[str, Any]:
    work = tmp / name
    write_config(work, isolation=isolation, durability=durability)
    try:
        return run_child({"scenario": "drain", "work": str(work), "n": n, "optime": True,
                          **extra}, on_event=on_event)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def huey_drain(tmp: Path, mode: str, n: int) -> dict[str, Any]:
    """Enqueue n tasks, then start ``huey_consumer -k process -w 2`` and time the drain."""
    work = tmp / f"huey-{mode}"
    work.mkdir(parents=True)
    records = work / "records.txt"
    env = child_env()
    env.update(BENCH_HUEY_DB=str(work / "huey.db"),
               BENCH_HUEY_MODE="normal" if mode == "normal" else "defaults")
    enq = subprocess.run([PY, "-c", "import huey_peer; huey_peer.main()", "enqueue", str(n),
                          str(records)], cwd=BENCH, env=env, capture_output=True, text=True,
                         check=True)
    enqueued = json.loads(enq.stdout.strip().splitlines()[-1])
    consumer = [PY, "-m", "huey.bin.huey_consumer", "huey_peer.huey", "-k", "process",
                "-w", "2"]
    if mode == "normal":
        consumer += ["-d", "0.005", "-m", "0.005"]
    log = (work / "consumer.log").open("wb")
    proc = subprocess.Popen(consumer, cwd=BENCH, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + n / 20 + 60
        while count_lines(records) < n and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"huey_consumer exited {proc.returncode}")
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    recs = read_records(records)
    shutil.rmtree(work, ignore_errors=True)
    if len(recs) < n:
        raise RuntimeError(f"huey: only {len(recs)} of {n} tasks ran")
    return {**drain_rate(recs), "enqueue_rate": enqueued["rate"],
            "synchronous": enqueued["synchronous"]}


def latency_once(tmp: Path, sizes: Sizes) -> dict[str, Any]:
    work = tmp / "latency"
    write_config(work, isolation="pool", durability="normal")
    try:
        with serve(work) as served:
            return asyncio.run(http_latency(served, work, sizes.latency, sizes.latency_rate))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def submit_once(tmp: Path, sizes: Sizes, durability: str) -> dict[str, Any]:
    work = tmp / f"submit-{durability}"
    write_config(work, isolation="pool", durability=durability)
    try:
        with serve(work) as served:
            out = asyncio.run(http_submits(served, sizes))
        shutil.rmtree(work / "data")
        out["host_submit"] = run_child({"scenario": "host_submit", "work": str(work),
                                        "k": sizes.host_submit})
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def schema_key() -> str:
    from asyncjobs.store.schema import MIGRATIONS  # noqa: PLC0415

    return hashlib.sha256("".join(MIGRATIONS).encode()).hexdigest()[:12]


def template_db(cache: Path, size: int) -> Path:
    """A DB with ``size`` pending far-future jobs, built once and cached by schema version."""
    base = cache / f"pending-{size}-{schema_key()}"
    db = base / "data" / "asyncjobs.db"
    if db.exists():
        return db
    shutil.rmtree(base, ignore_errors=True)
    write_config(base)
    print(f"  building a database of {size:,} pending jobs in {base} ...", flush=True)
    info = run_child({"scenario": "build_db", "work": str(base), "size": size}, timeout=3600)
    print(f"  built: {info['rows']:,} rows, {info['bytes'] / MB:.0f} MB in "
          f"{info['seconds']:.1f}s", flush=True)
    return db


def scale_once(tmp: Path, cache: Path, size: int, sizes: Sizes) -> dict[str, Any]:
    template = template_db(cache, size)
    work = tmp / f"scale-{size}"
    write_config(work, isolation="pool", durability="normal")
    (work / "data").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, work / "data" / "asyncjobs.db")
    try:
        drained = run_child({"scenario": "drain", "work": str(work), "n": sizes.scale_drain,
                             "optime": True, "budget": sizes.scale_budget})
        (work / "records.txt").unlink(missing_ok=True)
        park_leftovers(work / "data" / "asyncjobs.db")
        with serve(work) as served:
            budget = 60.0
            listing = asyncio.run(http_gets(served, "/api/jobs", sizes.get_requests, budget))
            stats = asyncio.run(http_gets(served, "/api/stats", sizes.stats_requests, budget))
            mem = proc_status(served.proc.pid)
            startup = served.startup_s
        return {"drain": drained["rate"], "drained": drained, "host_start_s": drained["startup_s"],
                "drain_peak_rss": drained["peak_rss"], "serve_startup_s": startup,
                "serve_rss": mem.get("VmRSS", 0), "serve_peak_rss": mem.get("VmHWM", 0),
                "list": listing, "stats": stats}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def park_leftovers(db: Path) -> None:
    """Jobs a drain that ran out of budget left due: push them far out before serving, so
    the start-up and GET figures are taken on an idle host (bench-side edit of the copy)."""
    import sqlite3  # noqa: PLC0415

    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("UPDATE jobs SET run_at = ? WHERE status = 'pending' AND run_at <= ?",
                     (time.time() + FAR_FUTURE, time.time() + 60))
    finally:
        conn.close()


def spawn_ceiling(concurrency: int, total: int) -> dict[str, Any]:
    """Spawns/s of ``python -c pass`` (this interpreter, site enabled) at a concurrency."""
    per = total // concurrency

    def worker() -> None:
        for _ in range(per):
            subprocess.run([PY, "-c", "pass"], check=True)

    subprocess.run([PY, "-c", "pass"], check=True)
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    return {"rate": per * concurrency / elapsed}


# -- one repetition ------------------------------------------------------------------------

def repetition(args: argparse.Namespace, sizes: Sizes, tmp: Path,
               errors: list[str]) -> dict[str, float]:
    """Run every selected section once; return flat figures for this repetition."""
    f: dict[str, float] = {}
    loads: list[float] = []
    others: list[float] = []
    meter = CpuMeter()

    def step(label: str) -> None:
        loads.append(loadavg())
        if (busy := meter.others()) is not None:
            others.append(busy)
        print(f"  {label} ... (load {loads[-1]:.2f}; others used "
              f"{others[-1] if others else 0:.2f} cores in the previous step)", flush=True)

    def drain(isolation: str, durability: str, n: int) -> None:
        step(f"drain {isolation} {durability} N={n}")
        key = f"drain.{isolation}.{durability}"
        r = drain_once(tmp, key, isolation, durability, n)
        f[key] = r["rate"]
        f[f"{key}.host_cpu"] = r["host_cpu_s"] / r["seconds"]
        f[f"{key}.peak_rss_mb"] = r["peak_rss"] / MB
        add_store_ops(f, key, r)
        add_anomalies(f, key, r)

    def peer(mode: str) -> None:
        if "huey" not in args.only or not huey_available():
            return
        step(f"huey {mode} N={sizes.drain}")
        r = huey_drain(tmp, mode, sizes.drain)
        f[f"huey.{mode}"] = r["rate"]
        f[f"huey.{mode}.enqueue"] = r["enqueue_rate"]
        f[f"huey.{mode}.synchronous"] = r["synchronous"]
        add_anomalies(f, f"huey.{mode}", r)

    def ceiling(c: int) -> None:
        if "ceiling" in args.only:
            step(f"spawn ceiling c={c}")
            f[f"ceiling.c{c}"] = spawn_ceiling(c, sizes.spawns)["rate"]

    def latency() -> None:
        step(f"latency {sizes.latency} submits at {sizes.latency_rate:g}/s")
        r = latency_once(tmp, sizes)
        for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms", "http_p50_ms", "http_p99_ms",
                    "offered_rate"):
            f[f"latency.{key}"] = r[key]

    def submit(durability: str) -> None:
        step(f"submit ({durability})")
        r = submit_once(tmp, sizes, durability)
        for kind in ("single", "single_raw", "concurrent8", "batch", "host_submit"):
            f[f"submit.{durability}.{kind}"] = r[kind]["rate"]
            if "host_cpu" in r[kind]:
                f[f"submit.{durability}.{kind}.host_cpu"] = r[kind]["host_cpu"]

    def scale(label: str, size: int) -> None:
        step(f"scale {size:,} pending")
        r = scale_once(tmp, args.cache_dir, size, sizes)
        f[f"scale.{label}.drain"] = r["drain"]
        add_store_ops(f, f"scale.{label}", r["drained"])
        add_anomalies(f, f"scale.{label}", r["drained"])
        f[f"scale.{label}.host_start_s"] = r["host_start_s"]
        f[f"scale.{label}.serve_startup_s"] = r["serve_startup_s"]
        f[f"scale.{label}.rss_mb"] = r["serve_rss"] / MB
        f[f"scale.{label}.peak_rss_mb"] = max(r["serve_peak_rss"], r["drain_peak_rss"]) / MB
        for what in ("list", "stats"):
            f[f"scale.{label}.{what}_p50_ms"] = r[what]["p50_ms"]
            f[f"scale.{label}.{what}_p99_ms"] = r[what]["p99_ms"]

    def guard(fn: Callable[..., None], *a: Any) -> None:
        """A failing step is reported and the run goes on: one bug must not cost the rest."""
        try:
            fn(*a)
        except Exception as exc:
            message = f"{fn.__name__}{a}: {str(exc).strip().splitlines()[-1][:300]}"
            print(f"  FAILED {message}", flush=True)
            errors.append(message)
            f["errors"] = f.get("errors", 0) + 1

    # Each ratio's two sides run back to back, so they see the same machine load.
    if "drain" in args.only:
        guard(drain, "pool", "full", sizes.drain)
    guard(peer, "defaults")
    if "drain" in args.only:
        guard(drain, "pool", "normal", sizes.drain)
    guard(peer, "normal")
    guard(ceiling, 2)
    if "drain" in args.only:
        guard(drain, "process", "normal", sizes.drain_process)
        guard(drain, "process", "full", sizes.drain_process)
    guard(ceiling, 1)
    if "latency" in args.only:
        guard(latency)
    if "submit" in args.only:
        for durability in ("full", "normal"):
            guard(submit, durability)
    if "scale" in args.only:
        for label, size in (("small", sizes.scale_small), ("big", sizes.scale)):
            if size > 0:
                guard(scale, label, size)
    loads.append(loadavg())
    if (busy := meter.others()) is not None:
        others.append(busy)
    f["load.mean"] = sum(loads) / len(loads)
    f["load.max"] = max(loads)
    if others:
        f["load.others_mean"] = sum(others) / len(others)
        f["load.others_max"] = max(others)
    add_ratios(f)
    return f


class CpuMeter:
    """CPU used by *other* people's processes: the machine's busy time (/proc/stat) minus
    this benchmark's own (this process plus every descendant it has reaped, which includes
    the hosts' reaped workers), per step."""

    def __init__(self) -> None:
        self.last = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float]:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        ticks = [int(x) for x in fields]
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
        busy = (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")
        t = os.times()
        return time.monotonic(), busy, t.user + t.system + t.children_user + t.children_system

    def others(self) -> float | None:
        """Cores used by others since the last call (None if too short to say)."""
        now = self._read()
        wall = now[0] - self.last[0]
        busy, mine = now[1] - self.last[1], now[2] - self.last[2]
        self.last = now
        return max(0.0, (busy - mine) / wall) if wall > 1.0 else None


def loadavg() -> float:
    """The machine's 1-minute load average: other people's work shares these 2 cores."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError):
        return float("nan")


def add_store_ops(f: dict[str, float], prefix: str, r: dict[str, Any]) -> None:
    """Writer-thread figures from the drain child's timers around the store's write steps."""
    ops = r.get("store_ops") or {}
    tx, claim = ops.get("transaction"), ops.get("claim")
    if tx and r.get("seconds"):
        f[f"{prefix}.writer_busy"] = tx["seconds"] / r["seconds"]
    if claim and claim["calls"]:
        f[f"{prefix}.claim_ms"] = 1000 * claim["seconds"] / claim["calls"]
        f[f"{prefix}.jobs_per_claim"] = claim["rows"] / claim["calls"]


def add_anomalies(f: dict[str, float], prefix: str, r: dict[str, Any]) -> None:
    """What should be zero in a no-op drain: jobs run twice, attempts not completed, stalls."""
    f[f"{prefix}.duplicates"] = r.get("duplicates", 0)
    if "abnormal" in r:
        f[f"{prefix}.abnormal"] = sum(r["abnormal"].values())
    f[f"{prefix}.max_idle_ms"] = 1000 * r.get("max_idle_s", 0.0)
    if r.get("complete") is False:
        f[f"{prefix}.incomplete_jobs"] = r["jobs"]


def add_ratios(f: dict[str, float]) -> None:
    def ratio(name: str, a: str, b: str) -> None:
        if a in f and b in f and f[b]:
            f[name] = f[a] / f[b]

    ratio("ratio.pool_normal_vs_huey_normal", "drain.pool.normal", "huey.normal")
    ratio("ratio.pool_full_vs_huey_defaults", "drain.pool.full", "huey.defaults")
    ratio("ratio.process_normal_vs_ceiling2", "drain.process.normal", "ceiling.c2")
    ratio("ratio.process_full_vs_ceiling2", "drain.process.full", "ceiling.c2")
    ratio("ratio.scale_drain_big_vs_small", "scale.big.drain", "scale.small.drain")


def huey_available() -> bool:
    try:
        import huey  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


# -- report --------------------------------------------------------------------------------

@dataclass
class Row:
    key: str
    label: str
    unit: str
    fmt: str = "{:,.0f}"
    note: str = ""


@dataclass
class Target:
    label: str
    key: str
    check: Callable[[float], bool]
    wanted: str
    fmt: str = "{:.2f}"


def rows(sizes: Sizes) -> list[tuple[str, list[Row]]]:
    big = f"{sizes.scale:,}"
    small = f"{sizes.scale_small:,}"
    return [
        (f"1. Drain: {sizes.drain:,} queued jobs (process: {sizes.drain_process:,}), "
         "workers.max=2, first start -> last end", [
            Row("drain.pool.full", "pool, durability full", "jobs/s"),
            Row("drain.pool.normal", "pool, durability normal", "jobs/s"),
            Row("drain.process.full", "process, durability full", "jobs/s"),
            Row("drain.process.normal", "process, durability normal", "jobs/s"),
            Row("drain.pool.full.host_cpu", "  host CPU during pool/full drain", "cores",
                "{:.2f}"),
            Row("drain.pool.normal.host_cpu", "  host CPU during pool/normal drain", "cores",
                "{:.2f}"),
            Row("drain.pool.normal.writer_busy", "  store writer busy, pool/normal", "frac",
                "{:.2f}"),
            Row("drain.pool.normal.claim_ms", "  claim step per call, pool/normal", "ms",
                "{:.2f}"),
            Row("drain.pool.normal.jobs_per_claim", "  jobs claimed per call, pool/normal",
                "jobs", "{:.1f}"),
        ]),
        (f"5. Peer: huey SqliteHuey, huey_consumer -k process -w 2, {sizes.drain:,} tasks", [
            Row("huey.defaults", "huey defaults (synchronous=FULL, -d 0.1)", "jobs/s"),
            Row("huey.normal", "huey synchronous=NORMAL, -d/-m 0.005", "jobs/s"),
            Row("huey.defaults.enqueue", "  huey enqueue, in-process, defaults", "jobs/s"),
            Row("huey.normal.enqueue", "  huey enqueue, in-process, NORMAL", "jobs/s"),
        ]),
        (f"2. Latency: {sizes.latency:,} single HTTP submits at {sizes.latency_rate:g}/s, "
         "idle host (pool, normal): start - enqueue", [
            Row("latency.p50_ms", "p50", "ms", "{:.2f}"),
            Row("latency.p90_ms", "p90", "ms", "{:.2f}"),
            Row("latency.p99_ms", "p99", "ms", "{:.2f}"),
            Row("latency.max_ms", "max", "ms", "{:.2f}"),
            Row("latency.http_p50_ms", "  HTTP response time p50", "ms", "{:.2f}"),
            Row("latency.http_p99_ms", "  HTTP response time p99", "ms", "{:.2f}"),
        ]),
        ("3. Submit (jobs delayed a year; pool; host = asyncjobs serve)", [
            Row("submit.full.single", "HTTP single, 1 client, full", "jobs/s"),
            Row("submit.full.single_raw", "  same, minimal raw-socket client, full", "jobs/s"),
            Row("submit.full.concurrent8", "HTTP single, 8 clients, full", "jobs/s"),
            Row("submit.full.batch", f"HTTP batch of {sizes.batch_size}, full", "jobs/s"),
            Row("submit.full.host_submit", "Host.submit in-process, full", "jobs/s"),
            Row("submit.normal.single", "HTTP single, 1 client, normal", "jobs/s"),
            Row("submit.normal.single_raw", "  same, minimal raw-socket client, normal",
                "jobs/s"),
            Row("submit.normal.concurrent8", "HTTP single, 8 clients, normal", "jobs/s"),
            Row("submit.normal.batch", f"HTTP batch of {sizes.batch_size}, normal", "jobs/s"),
            Row("submit.normal.host_submit", "Host.submit in-process, normal", "jobs/s"),
            Row("submit.normal.single.host_cpu", "  host CPU, single 1 client, normal",
                "cores", "{:.2f}"),
            Row("submit.normal.single_raw.host_cpu", "  host CPU, minimal client, normal",
                "cores", "{:.2f}"),
            Row("submit.normal.concurrent8.host_cpu", "  host CPU, 8 clients, normal",
                "cores", "{:.2f}"),
        ]),
        (f"4. Scale: pending jobs in the DB ({small} vs {big}); pool, normal, drain of "
         f"{sizes.scale_drain:,}", [
            Row("scale.small.drain", f"drain with {small} pending", "jobs/s"),
            Row("scale.big.drain", f"drain with {big} pending", "jobs/s"),
            Row("scale.small.claim_ms", f"  claim step per call, {small}", "ms", "{:.2f}"),
            Row("scale.big.claim_ms", f"  claim step per call, {big}", "ms", "{:.2f}"),
            Row("scale.small.serve_startup_s", f"serve start-up, {small} (spawn -> health)",
                "s", "{:.2f}"),
            Row("scale.big.serve_startup_s", f"serve start-up, {big} (spawn -> health)", "s",
                "{:.2f}"),
            Row("scale.big.host_start_s", f"  Host.start() in-process, {big}", "s", "{:.3f}"),
            Row("scale.small.peak_rss_mb", f"host peak RSS, {small}", "MB", "{:.0f}"),
            Row("scale.big.peak_rss_mb", f"host peak RSS, {big}", "MB", "{:.0f}"),
            Row("scale.big.rss_mb", f"  serve RSS after the GETs, {big}", "MB", "{:.0f}"),
            Row("scale.small.list_p99_ms", f"GET /api/jobs p99, {small}", "ms", "{:.1f}"),
            Row("scale.big.list_p99_ms", f"GET /api/jobs p99, {big}", "ms", "{:.1f}"),
            Row("scale.small.stats_p99_ms", f"GET /api/stats p99, {small}", "ms", "{:.1f}"),
            Row("scale.big.stats_p50_ms", f"GET /api/stats p50, {big}", "ms", "{:.1f}"),
            Row("scale.big.stats_p99_ms", f"GET /api/stats p99, {big}", "ms", "{:.1f}"),
        ]),
        ("6. Ceiling: spawns/s of `python -c pass` (site enabled)", [
            Row("ceiling.c1", "concurrency 1", "spawns/s"),
            Row("ceiling.c2", "concurrency 2", "spawns/s"),
        ]),
        ("Machine load: CPU used by other people's processes during each step (2 cores)", [
            Row("load.others_mean", "others' CPU, mean over the steps", "cores", "{:.2f}"),
            Row("load.others_max", "others' CPU, busiest step", "cores", "{:.2f}"),
            Row("load.mean", "  1-min load average (includes this benchmark)", "", "{:.2f}"),
        ]),
        ("Ratios (within each repetition)", [
            Row("ratio.pool_normal_vs_huey_normal", "pool+normal / huey NORMAL-5ms", "x",
                "{:.2f}"),
            Row("ratio.pool_full_vs_huey_defaults", "pool+full / huey defaults", "x", "{:.2f}"),
            Row("ratio.process_normal_vs_ceiling2", "process+normal / spawn ceiling c=2", "x",
                "{:.2f}"),
            Row("ratio.process_full_vs_ceiling2", "process+full / spawn ceiling c=2", "x",
                "{:.2f}"),
            Row("ratio.scale_drain_big_vs_small", f"drain {big} / drain {small}", "x",
                "{:.2f}"),
        ]),
    ]


def targets(sizes: Sizes) -> list[Target]:
    big = f"{sizes.scale:,}"
    return [
        Target("drain pool normal >= 1.5x huey NORMAL-5ms", "ratio.pool_normal_vs_huey_normal",
               lambda v: v >= 1.5, ">= 1.50x"),
        Target("drain pool full >= 3x huey defaults", "ratio.pool_full_vs_huey_defaults",
               lambda v: v >= 3.0, ">= 3.00x"),
        Target("process drain >= 75% of spawn ceiling c=2", "ratio.process_normal_vs_ceiling2",
               lambda v: v >= 0.75, ">= 0.75"),
        Target("latency p50 <= 2 ms", "latency.p50_ms", lambda v: v <= 2.0, "<= 2 ms"),
        Target("latency p99 <= 5 ms", "latency.p99_ms", lambda v: v <= 5.0, "<= 5 ms"),
        Target("single HTTP submit >= 2,000/s (full)", "submit.full.single",
               lambda v: v >= 2000, ">= 2,000/s", "{:,.0f}"),
        Target("single HTTP submit >= 2,000/s (normal)", "submit.normal.single",
               lambda v: v >= 2000, ">= 2,000/s", "{:,.0f}"),
        Target("batch submit >= 30,000/s (full)", "submit.full.batch",
               lambda v: v >= 30000, ">= 30,000/s", "{:,.0f}"),
        Target("batch submit >= 30,000/s (normal)", "submit.normal.batch",
               lambda v: v >= 30000, ">= 30,000/s", "{:,.0f}"),
        Target(f"drain with {big} within 20% of 1k", "ratio.scale_drain_big_vs_small",
               lambda v: v >= 0.8, ">= 0.80"),
        Target(f"host peak RSS with {big} <= 150 MB", "scale.big.peak_rss_mb",
               lambda v: v <= 150, "<= 150 MB", "{:.0f}"),
        Target(f"start-up with {big} <= 2 s", "scale.big.serve_startup_s",
               lambda v: v <= 2.0, "<= 2 s"),
        Target(f"GET /api/jobs p99 with {big} <= 50 ms", "scale.big.list_p99_ms",
               lambda v: v <= 50, "<= 50 ms", "{:.1f}"),
        Target(f"GET /api/stats p99 with {big} <= 50 ms", "scale.big.stats_p99_ms",
               lambda v: v <= 50, "<= 50 ms", "{:.1f}"),
    ]


def render(reps: list[dict[str, float]], sizes: Sizes, notes: list[str]) -> str:
    lines: list[str] = []
    for title, section in rows(sizes):
        present = [r for r in section if any(r.key in rep for rep in reps)]
        if not present:
            continue
        lines.append(f"\n{title}")
        lines.append(f"  {'':44} {'median':>10} {'min - max':>23}  unit  runs")
        for r in present:
            values = [rep[r.key] for rep in reps if r.key in rep]
            s = summary(values)
            spread = f"{r.fmt.format(s['min'])} - {r.fmt.format(s['max'])}"
            lines.append(f"  {r.label:44} {r.fmt.format(s['median']):>10} {spread:>23}  "
                         f"{r.unit:5} {len(values)}")
    anomalies = []
    for prefix in ("drain.pool.full", "drain.pool.normal", "drain.process.full",
                   "drain.process.normal", "huey.defaults", "huey.normal", "scale.small",
                   "scale.big"):
        if not any(f"{prefix}.max_idle_ms" in rep for rep in reps):
            continue
        dups = [int(rep.get(f"{prefix}.duplicates", 0)) for rep in reps]
        bad = [int(rep[f"{prefix}.abnormal"]) for rep in reps if f"{prefix}.abnormal" in rep]
        idle = [rep[f"{prefix}.max_idle_ms"] for rep in reps if f"{prefix}.max_idle_ms" in rep]
        anomalies.append(f"  {prefix:22} ran twice {sum(dups):3} {dups!s:14} "
                         f"not completed {sum(bad) if bad else '-':>3} {str(bad) if bad else '':12}"
                         f" longest idle {max(idle):8.1f} ms")
        cut = [int(rep[f"{prefix}.incomplete_jobs"]) for rep in reps
               if f"{prefix}.incomplete_jobs" in rep]
        if cut:
            anomalies.append(f"  {'':22} out of time budget in {len(cut)} run(s): rate taken "
                             f"on the {cut} jobs that had run")
    if anomalies:
        lines.append("\nAnomalies in the drains (should be 0 / 0 / a few ms): totals, per run")
        lines += anomalies
    checks = []
    for t in targets(sizes):
        values = [rep[t.key] for rep in reps if t.key in rep]
        if not values:
            continue
        med = summary(values)["median"]
        verdict = "met" if t.check(med) else "NOT MET"
        checks.append(f"  {t.label:48} {t.fmt.format(med):>10}  want {t.wanted:12} {verdict}")
    if checks:
        lines.append("\nTargets (medians)")
        lines += checks
    if sizes.scale < 1_000_000 and any("scale.big.drain" in rep for rep in reps):
        lines.append(f"  (scale targets are defined at 1,000,000 pending jobs; this run used "
                     f"{sizes.scale:,}: run with --scale 1000000)")
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "python": platform.python_version(),
            "platform": platform.platform()}


# -- profile mode ----------------------------------------------------------------------------

def profile_drain(args: argparse.Namespace, out: Path) -> None:
    n = args.profile_n
    target = out / f"profile-drain-{args.profiler}"
    print(f"profiling a pool drain of {n:,} jobs (durability {args.durability}) with "
          f"{args.profiler} ...", flush=True)
    with tempfile.TemporaryDirectory(prefix="asyncjobs-prof-") as tmp:
        if args.profiler == "pyinstrument":
            r = drain_once(Path(tmp), "prof", "pool", args.durability, n, lead=3.0,
                           profile="pyinstrument", profile_out=str(target))
            print(f"drain: {r['rate']:,.0f} jobs/s under the profiler")
            print(store_ops_text(r))
            report = target.with_suffix(".txt")
            report.write_text(
                f"asyncjobs: {args.code_desc}\npyinstrument (main thread, wall clock) of the "
                f"host during a pool drain of {n:,} no-op jobs, workers.max=2, durability "
                f"{args.durability}: {r['rate']:,.0f} jobs/s under the profiler, host CPU "
                f"{r['host_cpu_s'] / r['seconds']:.2f} cores.\n" + store_ops_text(r) + "\n"
                + report.read_text())
            print(f"report: {target.with_suffix('.txt')} and .html")
            print(target.with_suffix(".txt").read_text()[:6000])
            return
        spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
        raw = target.with_suffix(".raw")
        results: list[dict[str, Any]] = []
        raws: list[Path] = []
        for i in range(args.profile_repeat):
            part = Path(tmp) / f"part-{i}.raw"
            spies: list[subprocess.Popen[bytes]] = []

            def attach(event: dict[str, Any], part: Path = part,
                       spies: list[subprocess.Popen[bytes]] = spies) -> None:
                if event.get("event") == "due":
                    spies.append(subprocess.Popen(
                        [spy, "record", "--pid", str(event["pid"]), "--rate", str(args.rate),
                         "--format", "raw", "--threads", "--nonblocking", *spy_mode(args),
                         "-o", str(part)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))

            results.append(drain_once(Path(tmp), f"prof-{i}", "pool", args.durability, n,
                                      lead=3.0, on_event=attach))
            for sp in spies:
                _, err = sp.communicate(timeout=60)
                if sp.returncode not in (0, None):
                    print(err.decode()[-2000:])
            if part.exists():
                raws.append(part)
            print(f"  drain {i + 1}/{args.profile_repeat}: {results[-1]['rate']:,.0f} jobs/s",
                  flush=True)
        raw.write_text("".join(p.read_text() for p in raws))
    wall = sum(r["seconds"] for r in results)
    rates = ", ".join(f"{r['rate']:,.0f}" for r in results)
    cpu = sum(r["host_cpu_s"] for r in results) / wall
    text = (summarize_raw(raw, top=args.top, rate=args.rate, wall=wall)
            + "".join(store_ops_text(r) for r in results))
    header = (f"asyncjobs: {args.code_desc}\n"
              f"{spy_label(args)}\n"
              f"py-spy record --rate {args.rate} --threads --nonblocking of the host process "
              f"during {len(results)} pool drains of {n:,} no-op jobs, workers.max=2, "
              f"durability {args.durability}: {rates} jobs/s under the profiler; "
              f"{wall:.2f}s of drain in all, host CPU {cpu:.2f} cores.\n")
    target.with_suffix(".txt").write_text(header + text)
    print(header + text)
    print(f"report: {target.with_suffix('.txt')}; raw stacks (flamegraph.pl / speedscope "
          f"input): {raw}")


def spy_mode(args: argparse.Namespace) -> list[str]:
    return ["--gil"] if args.spy_mode == "gil" else []


def spy_label(args: argparse.Namespace) -> str:
    if args.spy_mode == "gil":
        return ("py-spy --gil: only the thread holding the GIL is sampled, so this is where "
                "the host's Python CPU time goes (SQLite's C work runs without the GIL and is "
                "timed separately below)")
    return "py-spy, all threads (py-spy's idle filter misses some waits: read with care)"


def profile_submit(args: argparse.Namespace, out: Path) -> None:
    """py-spy on ``asyncjobs serve`` while one client sends single submits over HTTP."""
    import aiohttp  # noqa: PLC0415

    k = args.profile_n
    target = out / "profile-submit-py-spy"
    raw = target.with_suffix(".raw")
    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    print(f"profiling {k:,} single HTTP submits (1 client, durability {args.durability}) ...",
          flush=True)

    async def submits(served: Served, n: int) -> float:
        url = f"{served.url}/api/jobs"
        async with aiohttp.ClientSession(headers=_headers(served.token)) as session:
            t0 = time.perf_counter()
            for i in range(n):
                await _post(session, url, job_body(i, "/dev/null", delay=FAR_FUTURE))
            return n / (time.perf_counter() - t0)

    with tempfile.TemporaryDirectory(prefix="asyncjobs-prof-") as tmp:
        work = Path(tmp) / "prof"
        write_config(work, isolation="pool", durability=args.durability)
        with serve(work) as served:
            asyncio.run(submits(served, 100))
            spy_proc = subprocess.Popen(
                [spy, "record", "--pid", str(served.proc.pid), "--rate", str(args.rate),
                 "--format", "raw", "--threads", "--nonblocking", *spy_mode(args), "-o",
                 str(raw)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(0.5)
            cpu0, t0 = proc_cpu(served.proc.pid), time.perf_counter()
            rate = asyncio.run(submits(served, k))
            cpu = (proc_cpu(served.proc.pid) - cpu0) / (time.perf_counter() - t0)
            spy_proc.send_signal(signal.SIGINT)
            spy_proc.communicate(timeout=60)
    header = (f"asyncjobs: {args.code_desc}\n"
              f"{spy_label(args)}\n"
              f"py-spy record --rate {args.rate} --threads --nonblocking of "
              f"asyncjobs serve during {k:,} single HTTP submits from one keep-alive client, "
              f"durability {args.durability}: {rate:,.0f} submits/s under the profiler, host "
              f"CPU {cpu:.2f} cores.\n")
    text = summarize_raw(raw, top=args.top)
    target.with_suffix(".txt").write_text(header + text)
    print(header + text)
    print(f"report: {target.with_suffix('.txt')}; raw stacks: {raw}")


def store_ops_text(r: dict[str, Any]) -> str:
    ops = r.get("store_ops") or {}
    span = r["seconds"]
    out = [f"\nstore write steps on the writer thread during the drain ({span:.2f}s):"]
    for name, op in sorted(ops.items(), key=lambda kv: -kv[1]["seconds"]):
        per = 1000 * op["seconds"] / op["calls"]
        out.append(f"  {name:12} {op['calls']:6} calls  {op['seconds']:7.3f}s  "
                   f"{100 * op['seconds'] / span:5.1f}% of the drain  {per:7.3f} ms/call  "
                   f"{op['rows']} rows")
    return "\n".join(out) + "\n"


def _func(frame: str) -> str:
    """'name (path/to/file.py:123)' -> 'name (file.py)': aggregate over lines."""
    name, _, where = frame.rpartition(" (")
    if not name:
        return frame
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"


def summarize_raw(raw: Path, top: int = 25, rate: int = 0, wall: float = 0.0) -> str:
    per_thread: Counter[str] = Counter()
    self_time: dict[str, Counter[str]] = defaultdict(Counter)
    inclusive: dict[str, Counter[str]] = defaultdict(Counter)
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1]
        if thread.startswith("asyncjobs-store-writer"):
            thread = "asyncjobs-store-writer"
        funcs = [_func(fr) for fr in frames[1:]]
        per_thread[thread] += count
        if funcs:
            self_time[thread][funcs[-1]] += count
        for fn in set(funcs):
            inclusive[thread][fn] += count
    total = sum(per_thread.values()) or 1
    out = [f"samples: {total}", "per thread:"]
    for t, c in per_thread.most_common():
        line = f"  {t:32} {c:7}  {100 * c / total:5.1f}%"
        if rate and wall:
            line += f"   ~{c / rate:.2f}s = {100 * c / rate / wall:.0f}% of the drain's wall time"
        out.append(line)
    for thread, count in per_thread.most_common():
        out.append(f"\n[{thread}] top {top} by self time (% of this thread's samples)")
        for fn, c in self_time[thread].most_common(top):
            out.append(f"  {100 * c / count:5.1f}%  {fn}")
        out.append(f"[{thread}] top {top} by inclusive time")
        for fn, c in inclusive[thread].most_common(top):
            out.append(f"  {100 * c / count:5.1f}%  {fn}")
    return "\n".join(out) + "\n"


# -- main ------------------------------------------------------------------------------------

def main() -> int:
    # SIGTERM unwinds like Ctrl+C, so the hosts and consumers we started are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 run by default")
    parser.add_argument("--runs", type=int, help="repetitions (default 3; --quick: 1)")
    parser.add_argument("--scale", type=int, help="pending jobs for the big scale figure "
                        "(default 100000; --quick 10000; 1000000 for the targets; 0 skips)")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections from {','.join(SECTIONS)}")
    parser.add_argument("--out", type=Path, default=BENCH / "results",
                        help="where latest.json/latest.txt and profiles go")
    parser.add_argument("--cache-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "asyncjobs-bench-cache",
                        help="where built scale databases are kept between invocations")
    parser.add_argument("--code", default="worktree",
                        help="asyncjobs source to measure: 'worktree' (as checked out, with any "
                        "uncommitted changes) or a git revision such as HEAD")
    parser.add_argument("--profile", choices=["drain", "submit"],
                        help="profile the pool drain (or single HTTP submits) instead")
    parser.add_argument("--profiler", choices=["py-spy", "pyinstrument"], default="py-spy")
    parser.add_argument("--profile-repeat", type=int, default=4,
                        help="drains profiled (samples are added up)")
    parser.add_argument("--profile-n", type=int, default=5000,
                        help="jobs drained (or submits sent) while profiling")
    parser.add_argument("--durability", choices=["full", "normal"], default="normal",
                        help="durability for --profile")
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples/s")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--spy-mode", choices=["gil", "all"], default="gil",
                        help="py-spy: sample the GIL holder only (CPU view) or all threads")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    global CODE
    CODE, code_desc = prepare_code(args.code, args.cache_dir)
    sys.path.insert(0, str(CODE))
    print(f"measuring asyncjobs from {code_desc}", flush=True)

    if args.profile:
        args.code_desc = code_desc
        (profile_drain if args.profile == "drain" else profile_submit)(args, args.out)
        return 0

    sizes = Sizes.quick() if args.quick else Sizes()
    if args.scale is not None:
        sizes.scale = args.scale
    runs = args.runs or (1 if args.quick else 3)
    args.only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = args.only - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    notes: list[str] = []
    if "huey" in args.only and not huey_available():
        notes.append("huey is not installed: the peer rows and ratios are skipped. Install "
                     "the benchmark extra with: pip install -e '.[bench]'")
        print(notes[-1], flush=True)
    info = machine()
    print(f"machine: {info['nproc']} cpu ({info['cpu']}), Python {info['python']}; "
          f"{runs} run(s); sections: {', '.join(s for s in SECTIONS if s in args.only)}",
          flush=True)
    reps: list[dict[str, float]] = []
    errors: list[str] = []
    started = time.time()

    def save() -> None:
        (args.out / "latest.json").write_text(json.dumps(
            {"argv": sys.argv[1:], "code": code_desc, "machine": info,
             "sizes": sizes.__dict__, "runs": reps, "errors": errors,
             "seconds": time.time() - started,
             "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1))

    for i in range(runs):
        print(f"run {i + 1}/{runs}", flush=True)
        with tempfile.TemporaryDirectory(prefix="asyncjobs-bench-") as tmp:
            reps.append(repetition(args, sizes, Path(tmp), errors))
        save()
    notes += [f"FAILED step: {e}" for e in errors]
    table = render(reps, sizes, notes)
    elapsed = time.time() - started
    header = (f"asyncjobs benchmark: {' '.join(sys.argv[1:]) or '(defaults)'}; "
              f"{info['nproc']} cpu ({info['cpu']}), Python {info['python']}; {runs} run(s), "
              f"{elapsed / 60:.1f} min; median and min - max over runs\nasyncjobs: {code_desc}")
    print("\n" + header + table)
    (args.out / "latest.txt").write_text(header + table + "\n")
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
