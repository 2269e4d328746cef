"""Hosts for the client, CLI and API tests: a real ``asyncjobs serve`` subprocess, or an
in-process :class:`Host` behind aiohttp's test server.

Both run on a project made in a temporary directory from the shipped ``config.json`` and
``jobs/`` (plus two tiny modules: ``jobs/e2e.py`` and ``probe.py``, which records its own
import), with fast retries so that failing jobs finish in well under a second.

Test modules wrap :func:`serve` and :func:`in_process` in fixtures of their own scope.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from asyncjobs.config import load_settings
from asyncjobs.engine.host import Host
from asyncjobs.testing import ServeProcess, clean_env
from asyncjobs.web.api import build_app

REPO = Path(__file__).resolve().parents[1]

E2E_MODULE = '''"""Jobs only the end-to-end tests use."""

import os
import time
from pathlib import Path


class PidJob:
    def sleep(self, pidfile: str, seconds: float = 30.0) -> str:
        """Write this worker's PID to ``pidfile``, then sleep."""
        Path(pidfile).write_text(str(os.getpid()))
        time.sleep(seconds)
        return "woke"
'''

PROBE_MODULE = '''"""Leaves a marker file when imported: proof that refused names import nothing."""

from pathlib import Path

Path(__file__).with_name("probe.imported").write_text("imported")


class Probe:
    def run(self) -> str:
        return "probed"

    def _private(self) -> str:
        return "never"
'''

EXTRA_JOBS: dict[str, Any] = {
    "PidJob": {"module": "jobs.e2e", "methods": ["sleep"], "max_attempts": 1},
    "Probe": {"module": "probe", "methods": ["run"]},
}


def make_project(directory: Path, **overrides: Any) -> Path:
    """Copy config.json and jobs/ into ``directory`` with test settings; return the config."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "jobs", directory / "jobs", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    (directory / "jobs" / "e2e.py").write_text(E2E_MODULE)
    (directory / "probe.py").write_text(PROBE_MODULE)
    doc = json.loads((REPO / "config.json").read_text())
    doc["jobs"].update(EXTRA_JOBS)
    doc.pop("schedules", None)  # an hourly job appearing mid-test would only add noise
    doc["retry"].update(base_delay=0.05, max_delay=0.5, jitter=0)
    doc["workers"].update(kill_grace=0.5)
    doc["shutdown_grace"] = 1
    doc.update(overrides)
    path = directory / "config.json"
    path.write_text(json.dumps(doc, indent=2))
    return path


class ServedHost(ServeProcess):
    """:class:`ServeProcess` on a fresh test project in ``directory``, with the plain-HTTP
    and CLI helpers the tests use."""

    def __init__(self, directory: Path) -> None:
        # TMPDIR: the shipped FlakyJob keeps its counters there.
        super().__init__(make_project(directory), env={"TMPDIR": str(directory)},
                         stop_timeout=10.0)

    def headers(self, **extra: str) -> dict[str, str]:
        return {**self.auth_headers, **extra}

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: Mapping[str, str] | None = None,
                timeout: float = 10.0) -> tuple[int, bytes]:
        """A plain HTTP request (http.client) with exactly the headers given."""
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def cli(self, *args: str, env: Mapping[str, str] | None = None,
            timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``python -m asyncjobs ARGS`` the way a user would: it finds the host through
        the config (``$ASYNCJOBS_CONFIG`` -> data_dir -> host.json and token)."""
        run_env = clean_env(ASYNCJOBS_CONFIG=str(self.config), **dict(env or {}))
        return subprocess.run([sys.executable, "-m", "asyncjobs", *args], cwd=self.directory,
                              env=run_env, capture_output=True, text=True, timeout=timeout,
                              check=False)


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[ServedHost]:
    """A started real host in ``directory``, stopped (SIGTERM, then SIGKILL) at the end;
    also at interpreter exit, should the test run die mid-way."""
    with ServedHost(directory) as host:
        yield host


class InProcess:
    """A :class:`Host` in this process behind aiohttp's test server (no subprocess, no port
    of its own); ``http`` sends the token unless a test passes its own headers."""

    def __init__(self, host: Host, http: TestClient[Any, Any], project: Path) -> None:
        self.host = host
        self.http = http
        self.project = project
        self.auth = {"Authorization": f"Bearer {host.token}"}


@contextlib.asynccontextmanager
async def in_process(directory: Path, **overrides: Any) -> AsyncIterator[InProcess]:
    """A started in-process host (dispatching to real workers) and a test client for it;
    ``overrides`` replace top-level config keys."""
    config = make_project(directory / "project", **overrides)
    settings = load_settings(config, env={})
    async with Host(settings, serve_api=False) as host:
        server = TestServer(build_app(host))
        async with TestClient(server) as http:
            yield InProcess(host, http, config.parent)


def closed_port_url() -> str:
    """A loopback URL where nothing listens (the port was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
