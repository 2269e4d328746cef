"""Factory fixtures for the engine tests: settings on disk, hosts on a fake clock, drains.

Each test gets its own project directory (``tmp_path``) holding a ``config.json`` and a copy
of the ``jobs_fixture`` package, so the worker child finds the fixture jobs the way it finds a
user's ``jobs/``: with the config's directory first on ``sys.path``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fakes import Drain, FakeClock, HostFactory, ProjectFactory, SettingsFactory, fixed_rand
from pg_fixture import (  # noqa: F401 - the PostgreSQL tests' fixtures and collection hooks
    pg_database,
    pg_url,
    pytest_collection_modifyitems,
    pytest_terminal_summary,
)

from asyncjobs.config import Settings, load_settings
from asyncjobs.engine.host import Host
from asyncjobs.workers import procs

FIXTURE_PACKAGE = Path(__file__).parent / "jobs_fixture"
TESTJOBS = "jobs_fixture.testjobs"

DEFAULT_JOBS: dict[str, dict[str, Any]] = {
    "Ok": {"module": TESTJOBS, "methods": ["run", "arun", "pid", "parent", "remember", "record",
                                         "progress"]},
    "Flaky": {"module": TESTJOBS, "methods": ["run", "crash_once"]},
    "Boom": {"module": TESTJOBS, "no_retry_on": ["ValueError"],
             "methods": ["value_error", "connection_error", "fail", "retry", "exit", "sigkill",
                         "chatty", "unserialisable", "huge"]},
    "Sleepy": {"module": TESTJOBS, "methods": ["run", "interval", "hold", "grandchild"]},
    "Chain": {"module": TESTJOBS, "methods": ["step"]},
    "Listed": {"module": "jobs_fixture.marker", "methods": ["run"]},
}

BASE_CONFIG: dict[str, Any] = {
    "retry": {"max_attempts": 3, "base_delay": 5, "factor": 2, "max_delay": 3600,
              "jitter": 0.1},
    "timeout": 10,
    "workers": {"max": 2, "isolation": "pool", "max_jobs_per_worker": 1000, "kill_grace": 0.2},
    "data_dir": "data",
    "shutdown_grace": 0.5,
    "max_output_bytes": 2000,
}


def write_config(directory: Path, doc: dict[str, Any]) -> Path:
    """Write ``doc`` as ``config.json`` next to a fresh copy of the fixture jobs package."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copytree(FIXTURE_PACKAGE, directory / "jobs_fixture", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.marker"))
    path = directory / "config.json"
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    return path


def config_doc(jobs: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """The test config with ``overrides``; an object value is merged into its section."""
    doc: dict[str, Any] = {key: dict(value) if isinstance(value, dict) else value
                           for key, value in BASE_CONFIG.items()}
    doc["jobs"] = DEFAULT_JOBS if jobs is None else jobs
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key].update(value)
        else:
            doc[key] = value
    return doc


@pytest.fixture
def make_settings(tmp_path: Path) -> SettingsFactory:
    """``make_settings(jobs=None, *, job_overrides=None, **overrides)``: a config.json in
    tmp_path, loaded for real.  ``jobs`` replaces the fixture allow-list; ``job_overrides``
    merges fields into its entries, e.g. ``{"Sleepy": {"concurrency": 1}}``."""

    def make(jobs: dict[str, Any] | None = None, *,
             job_overrides: dict[str, dict[str, Any]] | None = None,
             **overrides: Any) -> Settings:
        if job_overrides:
            jobs = {name: {**entry, **job_overrides.get(name, {})}
                    for name, entry in (DEFAULT_JOBS if jobs is None else jobs).items()}
        path = write_config(tmp_path, config_doc(jobs, **overrides))
        return load_settings(path, env={})

    return make


@pytest.fixture
def make_project() -> ProjectFactory:
    """``make_project(directory, *, job_overrides=None, **overrides)``: write a config.json
    (and the fixture jobs) into ``directory`` and return its path, for a real ``serve``."""

    def make(directory: Path, *, job_overrides: dict[str, dict[str, Any]] | None = None,
             **overrides: Any) -> Path:
        jobs = {name: {**entry, **(job_overrides or {}).get(name, {})}
                for name, entry in DEFAULT_JOBS.items()}
        return write_config(directory, config_doc(jobs, **overrides))

    return make


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_host(clock: FakeClock) -> HostFactory:
    """``make_host(settings, **options)``: a Host on the fake clock that dispatches only when
    a test drains it, with jitter fixed at zero (``rand=0.5``)."""

    def make(settings: Settings, **options: Any) -> Host:
        options.setdefault("clock", clock)
        options.setdefault("rand", fixed_rand)
        options.setdefault("dispatch", False)
        return Host(settings, **options)

    return make


@pytest.fixture
def drain() -> Drain:
    """``await drain(host)``: dispatch until nothing is running or due, bounded in time."""

    async def run(host: Host, timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            await host.dispatcher.drain()

    return run


SESSION_MARK = "PYTEST_ASYNCJOBS_SESSION"
"""Set for the whole test run and inherited by every process it starts (hosts, workers,
what jobs start), so that any of them still running at the end can be found."""


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_suite() -> Iterator[None]:
    """Fail the run if a process it started (and its descendants) is still running at the
    end: a leaked worker, fork server, host or job helper (§4 Containment)."""
    mark = f"{os.getpid()}-{time.time_ns()}"
    os.environ[SESSION_MARK] = mark
    yield
    deadline = time.monotonic() + 10  # what is being shut down right now may finish
    while (left := [p for p in procs.marked(SESSION_MARK, mark) if p != os.getpid()]) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    described = [f"{pid}: {_cmdline(pid)}" for pid in left]
    for pid in left:  # ours: started by this run
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    assert not left, "processes started by the tests outlived them:\n" + "\n".join(described)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return "?"
