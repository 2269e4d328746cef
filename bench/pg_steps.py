"""The PostgreSQL benchmark's measurements, one function per step (pg_run.py orders them).

Every step gets a fresh database (``CREATE DATABASE`` on the server, dropped afterwards), so
no system and no run sees another's rows, and every figure comes from the record file that
the no-op job appends to (bench/jobs/benchjobs.py), the same way for every system:

  drain    N jobs queued, then all workers told to start at one instant (peers: enqueued
           before the worker processes start, which wait for a ``go`` line; asyncjobs: a
           batch submit with one ``delay`` so that all jobs fall due at once, the hosts
           already running and their pools warm); rate = jobs / (first start -> last end)
  latency  single enqueues paced at a fixed rate to an idle worker; p50/p99 of
           started - enqueued
  submit   single enqueues one after another, and batches of 500, with no worker running

The peers run in bench/pg_peer.py children (Oban for Python from its Python >= 3.12 venv);
asyncjobs runs as ``asyncjobs serve`` processes with ``"store": <database URL>``, started
and driven by run.py's own helpers (serve, http_latency, http_submits, run_child).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import run as suite
from common import BENCH, count_lines, drain_rate, job_body, percentile, read_records, write_config

OBAN_VENV = BENCH / ".venv-oban"
PEERS = ("pgqueuer", "oban", "procrastinate")
_db_counter = itertools.count()


# -- databases ---------------------------------------------------------------------------------

def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


async def _admin(dsn: str, sql: str) -> None:
    import asyncpg  # noqa: PLC0415

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def fresh_db(admin_dsn: str, label: str) -> Iterator[str]:
    """A new, empty database for one step; dropped (even with connections left) after it."""
    name = f"bench_{label}_{os.getpid()}_{next(_db_counter)}"
    asyncio.run(_admin(admin_dsn, f'CREATE DATABASE "{name}"'))
    try:
        yield with_database(admin_dsn, name)
    finally:
        asyncio.run(_admin(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class BackendCpu:
    """CPU seconds the PostgreSQL backends serving one database used while this is open
    (local server only; 0 otherwise).  Sampled from /proc every 20 ms by a thread, since a
    backend's time leaves /proc when it exits; a backend's time before the start is not
    counted.  Shared server processes (WAL writer, checkpointer) are not included."""

    def __init__(self, dsn: str) -> None:
        self.marker = f" {urlsplit(dsn).path.lstrip('/')} "  # in a backend's process title
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.others: set[int] = set()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.ticks = os.sysconf("SC_CLK_TCK")

    def _sample(self) -> None:
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in self.others:
                continue
            pid = int(entry)
            try:
                if pid not in self.first:
                    title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                    if not title.startswith(b"postgres: ") or \
                            self.marker.encode() not in title:
                        self.others.add(pid)
                        continue
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            cpu = (int(fields[11]) + int(fields[12])) / self.ticks
            # A backend there at the start counts from its time then, a later one from 0.
            self.first.setdefault(pid, 0.0 if self.thread.is_alive() else cpu)
            self.last[pid] = cpu

    def _run(self) -> None:
        while not self.done.wait(0.02):
            self._sample()
        self._sample()

    def __enter__(self) -> BackendCpu:
        self._sample()  # backends already there: their time so far is the baseline
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(5)

    def seconds(self) -> float:
        return sum(self.last[p] - self.first[p] for p in self.last)


# -- peers -------------------------------------------------------------------------------------

def peer_python(peer: str) -> str | None:
    """The interpreter that can run the peer, or None when it is not installed."""
    try:
        __import__(peer)  # the module is named like the peer
    except ImportError:
        py = OBAN_VENV / "bin" / "python"  # Oban for Python needs >= 3.12: its own venv
        return str(py) if peer == "oban" and py.exists() else None
    return sys.executable


def peer_version(peer: str) -> str:
    py = peer_python(peer)
    if py is None:
        return "not installed"
    dist = {"pgqueuer": "pgqueuer", "procrastinate": "procrastinate", "oban": "oban"}[peer]
    out = subprocess.run([py, "-c", "import importlib.metadata as m, platform; "
                          f"print(m.version('{dist}'), platform.python_version())"],
                         capture_output=True, text=True, check=False).stdout.split()
    return f"{out[0]} (Python {out[1]})" if len(out) == 2 else "unknown"


class PeerProc:
    """One pg_peer.py child; its stdout lines are read by a thread into a queue."""

    def __init__(self, peer: str, params: dict[str, Any], *, stdin: bool = False) -> None:
        py = peer_python(peer)
        if py is None:
            raise RuntimeError(f"{peer} is not installed")
        self.log = Path(params.get("log", os.devnull)).open("ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [py, str(BENCH / "pg_peer.py"), json.dumps({"peer": peer, **params})],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=self.log, text=True, cwd=BENCH, env=suite.child_env())
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                self.lines.put(json.loads(line))
        self.lines.put({"eof": self.proc.wait()})

    def expect(self, key: str, timeout: float) -> Any:
        msg = self.lines.get(timeout=timeout)
        if key not in msg:
            raise RuntimeError(f"pg_peer.py: expected {key!r}, got {msg}")
        return msg[key]

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self, timeout: float = 30) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # end of file: the worker stops
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def peer_call(peer: str, params: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
    p = PeerProc(peer, params)
    try:
        result: dict[str, Any] = p.expect("result", timeout)
        return result
    finally:
        p.stop()


@contextlib.contextmanager
def peer_workers(peer: str, dsn: str, count: int, log: Path) -> Iterator[list[PeerProc]]:
    """``count`` worker processes, connected and idle; the caller sends ``go``."""
    procs: list[PeerProc] = []
    try:
        for _ in range(count):
            procs.append(PeerProc(peer, {"dsn": dsn, "action": "worker", "log": str(log)},
                                  stdin=True))
        for p in procs:
            p.expect("ready", 60)
        yield procs
    finally:
        for p in procs:
            p.stop()


def wait_records(path: Path, n: int, timeout: float, procs: list[PeerProc]) -> None:
    deadline = time.monotonic() + timeout
    while count_lines(path) < n and time.monotonic() < deadline:
        if any(p.proc.poll() is not None for p in procs):
            raise RuntimeError(f"a worker exited early; see {procs[0].log.name}")
        time.sleep(0.02)


@contextlib.contextmanager
def peer_db(admin: str, tmp: Path, peer: str, step: str) -> Iterator[tuple[str, Path]]:
    """A fresh database with the peer's schema installed, and a work directory for the
    step's record and log files (kept when the step fails, for its worker.log)."""
    work = tmp / f"{peer}-{step}"
    work.mkdir(parents=True)
    with fresh_db(admin, peer) as dsn:
        peer_call(peer, {"dsn": dsn, "action": "install"})
        yield dsn, work
    shutil.rmtree(work, ignore_errors=True)


def peer_drain(admin: str, tmp: Path, peer: str, procs: int, n: int) -> dict[str, Any]:
    with peer_db(admin, tmp, peer, f"drain{procs}") as (dsn, work):
        records, log = work / "records.txt", work / "worker.log"
        with BackendCpu(dsn) as db:
            enq = peer_call(peer, {"dsn": dsn, "action": "enqueue", "n": n, "batch": 500,
                                   "records": str(records)})
            with peer_workers(peer, dsn, procs, log) as workers:
                for w in workers:
                    w.send("go")
                wait_records(records, n, n / 20 + 60, workers)
        recs = read_records(records)
        if len(recs) < n:
            raise RuntimeError(f"{peer}: only {len(recs)} of {n} jobs ran; see {log}")
    return {**drain_rate(recs), "enqueue_rate": enq["rate"], "db_cpu_s": db.seconds()}


def latency_figures(records: Path, n: int) -> dict[str, float]:
    recs = read_records(records)
    if len(recs) < n:
        raise RuntimeError(f"latency: only {len(recs)} of {n} jobs ran")
    lat = [(r.started - r.enqueued) * 1000 for r in recs]
    return {"p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "max_ms": max(lat)}


def peer_latency(admin: str, tmp: Path, peer: str, n: int, rate: float) -> dict[str, Any]:
    with peer_db(admin, tmp, peer, "latency") as (dsn, work):
        records = work / "records.txt"
        with peer_workers(peer, dsn, 1, work / "worker.log") as workers:
            workers[0].send("go")
            sent = peer_call(peer, {"dsn": dsn, "action": "paced", "n": n, "rate": rate,
                                    "records": str(records), "warm": str(work / "warm.txt")})
            wait_records(records, n, 60, workers)
        return {**latency_figures(records, n), **sent}


def peer_submit(admin: str, tmp: Path, peer: str, single: int, batched: int
                ) -> dict[str, float]:
    """Enqueue rates with no worker: ``single`` one call each, ``batched`` in 500s."""
    with peer_db(admin, tmp, peer, "submit") as (dsn, work):
        sink = str(work / "never.txt")
        one = peer_call(peer, {"dsn": dsn, "action": "enqueue", "n": single, "batch": 1,
                               "records": sink})
        many = peer_call(peer, {"dsn": dsn, "action": "enqueue", "n": batched, "batch": 500,
                                "records": sink, "first": single})
    return {"single": one["rate"], "batch": many["rate"]}


# -- asyncjobs on its PostgreSQL store ----------------------------------------------------------

def aj_config(work: Path, dsn: str) -> Path:
    """bench's usual project (pool isolation, workers.max 2) with ``"store": dsn``.
    ``durability: full`` is ``synchronous_commit=on`` on PostgreSQL: the server default the
    peers run with (``normal`` would turn it off for asyncjobs alone)."""
    path = write_config(work, isolation="pool", durability="full", workers=2)
    config = json.loads(path.read_text())
    config["store"] = dsn
    path.write_text(json.dumps(config, indent=2))
    return path


def aj_unsupported(tmp: Path, admin: str) -> str | None:
    """Why the measured asyncjobs cannot run on PostgreSQL, or None when it can."""
    from asyncjobs.config import load_settings  # noqa: PLC0415

    try:
        settings = load_settings(aj_config(tmp / "probe", admin), env={})
        from asyncjobs.store.factory import open_store  # noqa: PLC0415

        open_store(settings)  # builds the store object, does not connect
    except Exception as exc:  # any refusal means: no PostgreSQL store in this code
        return str(exc).splitlines()[0][:120]
    finally:
        shutil.rmtree(tmp / "probe", ignore_errors=True)
    return None


@contextlib.contextmanager
def aj_hosts(tmp: Path, dsn: str, count: int) -> Iterator[list[suite.Served]]:
    """``count`` ``asyncjobs serve`` processes over one database, each its own project
    directory (data_dir, logs) on its own loopback port."""
    with contextlib.ExitStack() as stack:
        served = []
        for i in range(count):
            work = tmp / f"host{i}"
            aj_config(work, dsn)
            try:
                served.append(stack.enter_context(suite.serve(work)))
            except RuntimeError as exc:  # the run's temporary directory goes: quote the log
                log = (work / "serve.log").read_text(errors="replace").strip().splitlines()
                raise RuntimeError(f"{exc}: {' | '.join(log[-3:])}") from exc
        yield served


async def _post_batches(s: suite.Served, bodies: list[dict[str, Any]]) -> None:
    import aiohttp  # noqa: PLC0415

    async with aiohttp.ClientSession(headers=suite._headers(s.token)) as session:
        for lo in range(0, len(bodies), 500):
            await suite._post(session, f"{s.url}/api/jobs/batch",
                              {"jobs": bodies[lo:lo + 500]})


def _wait_lines(path: Path, n: int, timeout: float, hosts: list[suite.Served]) -> None:
    deadline = time.monotonic() + timeout
    while count_lines(path) < n and time.monotonic() < deadline:
        if any(h.proc.poll() is not None for h in hosts):
            raise RuntimeError("an asyncjobs host exited during the drain")
        time.sleep(0.02)


def aj_drain(admin: str, tmp: Path, hosts: int, n: int, lead: float = 2.0
             ) -> dict[str, Any]:
    """n jobs submitted to the first host with one due instant ``lead`` s ahead, after a
    warm-up through every host."""
    work = tmp / f"asyncjobs-drain{hosts}"
    records, warm = work / "records.txt", work / "warm.txt"
    with fresh_db(admin, "asyncjobs") as dsn, aj_hosts(work, dsn, hosts) as served:
        # Workers start on demand: 4 jobs through each host's own API, one host after the
        # other, so that (most likely) every host's 2 pool workers exist before the drain.
        for h, s in enumerate(served):
            asyncio.run(_post_batches(s, [job_body(-1 - 4 * h - i, warm) for i in range(4)]))
            _wait_lines(warm, 4 * (h + 1), 60, served)
        # One due instant for all, however long the submit takes (ISO 8601, microseconds).
        run_at = dt.datetime.fromtimestamp(time.time() + lead, dt.UTC).isoformat()
        bodies = [job_body(i, records, run_at=run_at) for i in range(n)]
        with BackendCpu(dsn) as db:
            t0 = time.perf_counter()
            asyncio.run(_post_batches(served[0], bodies))
            submit_s = time.perf_counter() - t0
            _wait_lines(records, n, n / 20 + 60, served)
    recs = read_records(records)
    if len(recs) < n:
        raise RuntimeError(f"asyncjobs x{hosts}: only {len(recs)} of {n} jobs ran")
    shutil.rmtree(work, ignore_errors=True)
    return {**drain_rate(recs), "submit_s": submit_s, "late_submit": submit_s > lead,
            "db_cpu_s": db.seconds()}


def aj_latency(admin: str, tmp: Path, n: int, rate: float) -> dict[str, Any]:
    work = tmp / "asyncjobs-latency"
    with fresh_db(admin, "asyncjobs") as dsn, aj_hosts(work, dsn, 1) as served:
        out = asyncio.run(suite.http_latency(served[0], work, n, rate))
    shutil.rmtree(work, ignore_errors=True)
    return out


def aj_submit(admin: str, tmp: Path, sizes: suite.Sizes) -> dict[str, float]:
    """run.py's HTTP submit figures against one host."""
    work = tmp / "asyncjobs-submit"
    with fresh_db(admin, "asyncjobs") as dsn, aj_hosts(work, dsn, 1) as served:
        r = asyncio.run(suite.http_submits(served[0], sizes))
    shutil.rmtree(work, ignore_errors=True)
    return {kind: v["rate"] for kind, v in r.items()}


def aj_host_submit(admin: str, tmp: Path, k: int) -> dict[str, float]:
    """``Host.submit`` in a loop, in-process (bench/child.py), jobs delayed far ahead."""
    work = tmp / "asyncjobs-host-submit"
    with fresh_db(admin, "asyncjobs") as dsn:
        aj_config(work, dsn)
        r = suite.run_child({"scenario": "host_submit", "work": str(work), "k": k})
    shutil.rmtree(work, ignore_errors=True)
    return {"host_submit": r["rate"]}
