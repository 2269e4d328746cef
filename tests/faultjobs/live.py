"""A real ``asyncjobs serve`` subprocess on a loopback port, for end-to-end fault tests.

The process itself is :class:`asyncjobs.testing.ServeProcess` (every wait bounded, stopped
only by its own PID); this module adds the hostile-jobs project and a few API helpers.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import aiohttp

from asyncjobs.testing import ServeProcess

HERE = Path(__file__).resolve().parent
HOSTILE = "faultjobs.hostile"
TERMINAL = ("completed", "failed", "cancelled")


def write_project(directory: Path, jobs: dict[str, Any], **settings: Any) -> Path:
    """config.json plus a copy of the hostile jobs package in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    package = directory / "faultjobs"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("")
    shutil.copy(HERE / "hostile.py", package / "hostile.py")
    doc: dict[str, Any] = {"jobs": jobs, "data_dir": "data", "shutdown_grace": 1,
                           "retry": {"max_attempts": 1, "base_delay": 0.05, "jitter": 0},
                           "workers": {"max": 2, "isolation": "pool", "kill_grace": 0.5},
                           "timeout": 20, "max_output_bytes": 2000}
    for key, value in settings.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    path = directory / "config.json"
    path.write_text(json.dumps(doc, indent=2))
    return path


def fault_classes(*names: str, **extra: Any) -> dict[str, Any]:
    methods = ["ok", "slow", "hold", "hold_then_fail", "sigkill", "segfault", "oom",
               "close_stdout", "close_all_fds", "scribble", "flood", "unserialisable", "huge",
               "deep", "bigint", "stubborn", "exits", "bad_exception", "printer"]
    jobs: dict[str, Any] = {
        "Faults": {"module": HOSTILE, "methods": methods},
        "FaultsProc": {"module": HOSTILE, "methods": methods, "isolation": "process"},
        "Channel": {"module": HOSTILE, "methods": ["write", "forge_done"]},
    }
    if names:
        jobs = {name: jobs[name] for name in names}
    jobs.update(extra)
    return jobs


class LiveServe(ServeProcess):
    """:class:`ServeProcess` with an optional Python prelude run in the serve process itself
    (say, ignore SIGXFSZ) before ``serve``."""

    def __init__(self, config: Path, *, env: dict[str, str] | None = None,
                 python_prelude: str | None = None) -> None:
        super().__init__(config, env=env)
        self.prelude = python_prelude

    @property
    def data(self) -> Path:
        return self.data_dir

    @data.setter
    def data(self, path: Path) -> None:
        self.data_dir = path

    @property
    def headers(self) -> dict[str, str]:
        return self.auth_headers

    def command(self) -> list[str]:
        if self.prelude is None:
            return super().command()
        code = (f"{self.prelude}\nimport sys\nfrom asyncjobs.client.cli import main\n"
                f"sys.exit(main(['serve', '--config', {str(self.config)!r}]))")
        return [sys.executable, "-c", code]

    def rss_kb(self) -> int:
        """The serve process's resident set size now, from /proc/<pid>/status."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


async def submit(session: aiohttp.ClientSession, serve: LiveServe, cls: str, method: str,
                 *args: Any, **options: Any) -> int:
    body = {"class": cls, "method": method, "args": list(args), **options}
    async with session.post(f"{serve.url}/api/jobs", json=body, headers=serve.headers) as resp:
        data = await resp.json()
        assert resp.status == 201, (resp.status, data)
        return int(data["id"])


async def get_job(session: aiohttp.ClientSession, serve: LiveServe, job_id: int) -> Any:
    async with session.get(f"{serve.url}/api/jobs/{job_id}", headers=serve.headers) as resp:
        assert resp.status == 200, (resp.status, await resp.text())
        return await resp.json()


async def wait_job(session: aiohttp.ClientSession, serve: LiveServe, job_id: int,
                   timeout: float = 20.0) -> Any:
    """The job once finished; fails the test if it is not finished within ``timeout``."""
    url = f"{serve.url}/api/jobs/{job_id}/wait?timeout={timeout}"
    client_timeout = aiohttp.ClientTimeout(total=timeout + 10)
    async with session.get(url, headers=serve.headers, timeout=client_timeout) as resp:
        assert resp.status == 200, (resp.status, await resp.text())
        job = await resp.json()
    assert job["status"] in TERMINAL, f"job {job_id} still {job['status']} after {timeout}s"
    return job


async def health(session: aiohttp.ClientSession, serve: LiveServe) -> Any:
    async with session.get(f"{serve.url}/api/health",
                           timeout=aiohttp.ClientTimeout(total=10)) as resp:
        assert resp.status == 200
        return await resp.json()
