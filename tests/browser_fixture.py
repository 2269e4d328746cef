"""A real ``asyncjobs serve`` in a throw-away project, and a headless Chromium to drive it.

Shared by ``test_dashboard_browser.py`` and ``screenshots.py``.  The project is a copy of the
repository's ``config.json`` and ``jobs/`` with two changes that keep runs deterministic and
short: no recurring schedules (a cron job firing mid-test would change the counts) and a
one-second shutdown grace (so stopping the host does not wait for SlowJobs).
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from asyncjobs.testing import ServeProcess

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking"]
START_TIMEOUT = 15.0


class ApiFailure(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class Server(ServeProcess):
    """A host on a copy of the shipped project in ``project`` (made on first use): its URL,
    bearer token and process, and the API calls the browser tests make."""

    def __init__(self, project: Path, *, port: int = 0) -> None:
        if not (project / "config.json").exists():
            make_project(project)
        (project / "tmp").mkdir(exist_ok=True)
        # TMPDIR: FlakyJob keeps its failure count there.
        super().__init__(project / "config.json", env={"TMPDIR": str(project / "tmp")},
                         port=port, start_timeout=START_TIMEOUT, stop_timeout=8.0)
        self.project = project

    def request(self, method: str, path: str, body: Any = None, *,
                timeout: float = 10.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                raise ApiFailure(exc.code, json.loads(exc.read() or b"null")) from None

    def submit(self, cls: str, method: str, args: list[Any] | None = None,
               **options: Any) -> int:
        body = {"class": cls, "method": method, "args": args or [], **options}
        job_id: int = self.request("POST", "/api/jobs", body)["id"]
        return job_id

    def job(self, job_id: int) -> dict[str, Any]:
        job: dict[str, Any] = self.request("GET", f"/api/jobs/{job_id}")
        return job

    def wait(self, job_id: int, timeout: float = 5.0) -> dict[str, Any]:
        """The job once finished (or as it is after ``timeout`` seconds)."""
        job: dict[str, Any] = self.request("GET", f"/api/jobs/{job_id}/wait?timeout={timeout}",
                                           timeout=timeout + 5)
        return job

    def wait_for_status(self, job_id: int, status: str, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] == status or time.monotonic() > deadline:
                return job
            time.sleep(0.05)

    def login_path(self) -> str:
        """A one-time sign-in path, as ``asyncjobs dashboard`` would print."""
        path: str = self.request("POST", "/api/login-links")["path"]
        return path

    def crash(self) -> None:
        """SIGKILL the host, as a power cut would."""
        self.kill()

    def restart(self) -> None:
        """Start the host again on the same port and data (after :meth:`crash`)."""
        self.port = urlsplit(self.url).port or 0
        self.start()


def make_project(directory: Path) -> Path:
    """Copy config.json and jobs/ into ``directory``; return the config path."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "jobs", directory / "jobs",
                    ignore=shutil.ignore_patterns("__pycache__"))
    config = json.loads((REPO / "config.json").read_text())
    config.pop("schedules", None)
    config["shutdown_grace"] = 1
    path = directory / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def start_server(directory: Path, *, port: int = 0) -> Server:
    """``asyncjobs serve`` in a copy of the shipped project (made on first use), on ``port``
    (0: a free one).  Starting again on the same directory restarts on the same data."""
    return Server(directory, port=port).start()


def launch_chromium(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                      headless=True)


def signed_in_page(browser: Any, server: Server, *, width: int = 1280,
                   height: int = 800) -> Any:
    """A fresh browser context signed in through a one-time link, showing the dashboard
    (the sign-in page trades the link's code for a session, then goes to ``/``)."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.goto(server.url + server.login_path())
    page.wait_for_url(server.url + "/")
    return page
