"""A real ``asyncjobs serve`` subprocess on a loopback port, for end-to-end fault tests.

Every wait here is bounded.  The server is only ever stopped by its own PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

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


class LiveServe:
    """``asyncjobs serve --config <config>`` with ``ASYNCJOBS_PORT=0``; URL from host.json."""

    def __init__(self, config: Path, *, env: dict[str, str] | None = None,
                 python_prelude: str | None = None) -> None:
        self.config = config
        self.data = config.parent / "data"
        self.env = env or {}
        self.prelude = python_prelude
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.token = ""
        self.log_path = config.parent / "serve.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def command(self) -> list[str]:
        if self.prelude is None:
            return [sys.executable, "-m", "asyncjobs", "serve", "--config", str(self.config)]
        # Runs the prelude (say, ignore SIGXFSZ) in the serve process itself, then serve.
        code = (f"{self.prelude}\nimport sys\nfrom asyncjobs.cli import main\n"
                f"sys.exit(main(['serve', '--config', {str(self.config)!r}]))")
        return [sys.executable, "-c", code]

    def start(self, timeout: float = 20.0) -> LiveServe:
        (self.data / "host.json").unlink(missing_ok=True)
        env = {**os.environ, "ASYNCJOBS_PORT": "0", **self.env}
        env.pop("ASYNCJOBS_TOKEN", None)
        env.pop("ASYNCJOBS_URL", None)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), env=env, stdout=log, stderr=log,
                                         cwd=self.config.parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                self.url = json.loads((self.data / "host.json").read_text())["url"]
                self.token = (self.data / "token").read_text().strip()
                return self
            except (OSError, ValueError, KeyError):
                time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"serve did not start within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (a clean shutdown), SIGKILL if it does not exit in ``timeout``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def rss_kb(self) -> int:
        """The serve process's resident set size now, from /proc/<pid>/status."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def __enter__(self) -> LiveServe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if exc[0] is not None:
            # Shown by pytest with the failure: what the host said while it went wrong.
            print(f"--- serve.log (tail) ---\n{self.log()[-8000:]}")


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
