"""A real ``asyncjobs serve`` in a child process, for integration tests and scripts.

:class:`ServeProcess` starts ``python -m asyncjobs serve --config CONFIG`` (no shell) on a
free port on 127.0.0.1, waits until it answers ``GET /api/health``, and then gives you its
``url``, its ``token`` and a :meth:`~ServeProcess.client`.  It stops only the process it
started, by its PID: SIGTERM (a clean shutdown), then SIGKILL if that has not ended it in
time; the process is always reaped.  Every wait is bounded.  The host's output is appended
to ``serve.log`` next to the config; a failed start raises with that log in the message, and
an exception inside ``with ServeProcess(...)`` prints its tail.

The child gets this process's environment without any ``ASYNCJOBS_*`` variable (a
developer's own settings must not leak into a test host), plus ``env``.  Start it again
after :meth:`~ServeProcess.kill` or :meth:`~ServeProcess.stop` to restart on the same data.

In a test suite of your own (the worker finds ``myapp`` next to the config, as in
production)::

    import json
    from asyncjobs import submit_job_sync
    from asyncjobs.testing import ServeProcess

    def test_the_mailer_runs(tmp_path):
        config = tmp_path / "config.json"
        config.write_text(json.dumps(
            {"jobs": {"Mailer": {"module": "myapp.jobs", "methods": ["send"]}}}))
        with ServeProcess(config) as host:
            job_id = submit_job_sync("Mailer", "send", ["ann"], url=host.url,
                                     token=host.token)
            # or, in async code: async with host.client() as client: ...

Like Celery's ``celery.contrib.testing.worker``, it is a helper for tests, not a way to run
production hosts.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Self

from .config import load_settings
from .engine.datadir import HOST_FILE, TOKEN_FILE

if TYPE_CHECKING:
    from .client.api_client import AsyncJobsClient

__all__ = ["LOOPBACK", "ServeProcess", "clean_env"]

LOOPBACK = "127.0.0.1"


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any ``ASYNCJOBS_*`` variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCJOBS_")}
    env.update(extra)
    return env


class ServeProcess:
    """``asyncjobs serve --config <config>`` in a child process on 127.0.0.1.

    ``port`` 0 (the default) lets the system pick a free one; the URL is read from the
    host's ``host.json``.  ``env`` is added to the child's environment (``ASYNCJOBS_PORT``
    and ``ASYNCJOBS_HOST`` are always set by this class).  ``start_timeout`` bounds the wait
    for the host to come up, ``stop_timeout`` the wait after SIGTERM, ``kill_timeout`` the
    wait after SIGKILL.
    """

    def __init__(self, config: str | Path, *, env: Mapping[str, str] | None = None,
                 port: int = 0, start_timeout: float = 20.0, stop_timeout: float = 15.0,
                 kill_timeout: float = 10.0) -> None:
        self.config = Path(config).absolute()
        self.directory = self.config.parent
        self.env = dict(env or {})
        self.port = port
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.kill_timeout = kill_timeout
        self.data_dir = load_settings(self.config, env=self.environment()).data_dir
        self.log_path = self.directory / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.token = ""

    # -- what is run ----------------------------------------------------------------------

    def command(self) -> list[str]:
        """The argv of the host process (override to run it differently; never a shell)."""
        return [sys.executable, "-m", "asyncjobs", "serve", "--config", str(self.config)]

    def environment(self) -> dict[str, str]:
        return {**clean_env(**self.env), "ASYNCJOBS_PORT": str(self.port),
                "ASYNCJOBS_HOST": LOOPBACK}

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the host has not been started")
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float | None = None) -> Self:
        """Start the host and wait (at most ``timeout`` s) until it answers its health check."""
        if self.running:
            raise RuntimeError(f"the host is already running (pid {self.pid})")
        timeout = self.start_timeout if timeout is None else timeout
        host_file = self.data_dir / HOST_FILE
        # So that we wait for this run's URL, not the last one's.  (No directory, or not a
        # directory: serve will say so in its log.)
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            host_file.unlink()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), cwd=self.directory,
                                         env=self.environment(), stdout=log, stderr=log)
        # Also at interpreter exit: a run that dies mid-way must not leave a host behind.
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                atexit.unregister(self.stop)
                raise RuntimeError(f"asyncjobs serve exited with {self.proc.returncode}; "
                                   f"its log ({self.log_path}):\n{self.log()}")
            if self._read_host_file(host_file) and self._healthy():
                return self
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"asyncjobs serve did not come up within {timeout} s; "
                           f"its log ({self.log_path}):\n{self.log()}")

    def _read_host_file(self, host_file: Path) -> bool:
        try:
            self.url = json.loads(host_file.read_text())["url"]
            self.token = (self.data_dir / TOKEN_FILE).read_text().strip()
        except (OSError, ValueError, KeyError):
            return False  # not written yet, or written only in part
        return True

    def _healthy(self) -> bool:
        host, _, port = self.url.removeprefix("http://").rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=2.0)
        try:
            conn.request("GET", "/api/health")
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def kill(self) -> None:
        """SIGKILL the host now (as a power cut would) and reap it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL (TerminateProcess on Windows); a no-op once reaped
            try:
                self.proc.wait(self.kill_timeout)
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"asyncjobs serve (pid {self.proc.pid}) survived SIGKILL "
                                   f"for {self.kill_timeout} s") from None
        atexit.unregister(self.stop)

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM (a clean shutdown), SIGKILL if it has not exited within ``timeout`` s;
        returns the exit status (None if never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: the host's clean shutdown
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(self.stop_timeout if timeout is None else timeout)
        self.kill()  # a no-op if SIGTERM was enough
        return self.proc.returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if exc[0] is not None:
            # Shown with the failure (pytest prints captured output): what the host said.
            print(f"--- {self.log_path} (tail) ---\n{self.log()[-8000:]}")

    # -- using it -------------------------------------------------------------------------

    def log(self) -> str:
        """Everything the host has written to its log so far ("" if none)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self) -> AsyncJobsClient:
        """An :class:`~asyncjobs.AsyncJobsClient` for this host (use ``async with``)."""
        from .client.api_client import AsyncJobsClient  # noqa: PLC0415 - aiohttp only when asked for

        return AsyncJobsClient(self.url, self.token)
