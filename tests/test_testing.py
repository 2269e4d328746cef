"""asyncjobs.testing.ServeProcess: the documented example works, and a host that fails to
start, hangs, or ignores SIGTERM is still reaped within its bounds, with its log shown."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asyncjobs import submit_job_sync
from asyncjobs.testing import ServeProcess

MAILER = '''
class Mailer:
    def send(self, name):
        return f"sent to {name}"
'''

STUCK = ("import signal, sys, time\n"
         "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
         "print('stuck here', flush=True)\n"
         "time.sleep(60)\n")


def user_project(directory: Path) -> Path:
    (directory / "myapp").mkdir()
    (directory / "myapp" / "__init__.py").write_text("")
    (directory / "myapp" / "jobs.py").write_text(MAILER)
    config = directory / "config.json"
    config.write_text(json.dumps(
        {"jobs": {"Mailer": {"module": "myapp.jobs", "methods": ["send"]}}}))
    return config


class Stuck(ServeProcess):
    """Never comes up, and ignores SIGTERM."""

    def command(self) -> list[str]:
        return [sys.executable, "-c", STUCK]


def test_the_documented_example(tmp_path: Path) -> None:
    with ServeProcess(user_project(tmp_path)) as host:
        assert host.url.startswith("http://127.0.0.1:")
        job_id = submit_job_sync("Mailer", "send", ["ann"], url=host.url, token=host.token)
        assert job_id > 0
    assert host.proc is not None and host.proc.returncode == 0, host.log()
    assert not host.running


async def test_the_client_sees_the_job_finish(tmp_path: Path) -> None:
    with ServeProcess(user_project(tmp_path)) as host:
        async with host.client() as client:
            job = await client.wait(await client.submit("Mailer", "send", ["bo"]), timeout=20)
    assert job["status"] == "completed", job
    assert job["result"] == "sent to bo"


def test_a_host_that_exits_at_start_raises_with_its_log(tmp_path: Path) -> None:
    config = user_project(tmp_path)
    config.write_text(json.dumps({**json.loads(config.read_text()), "data_dir": "a-file"}))
    (tmp_path / "a-file").write_text("not a directory")
    host = ServeProcess(config)
    with pytest.raises(RuntimeError, match="exited with") as failure:
        host.start()
    assert "a-file" in str(failure.value)  # serve's own message, from its log
    assert not host.running


def test_a_start_that_hangs_is_killed_within_its_bound(tmp_path: Path) -> None:
    host = Stuck(user_project(tmp_path))
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="did not come up within 1") as failure:
        host.start(timeout=1)
    assert time.monotonic() - started < 10
    assert "stuck here" in str(failure.value)  # the log, in the error
    assert host.proc is not None and host.proc.returncode == -signal.SIGKILL


def test_stop_escalates_to_sigkill_and_reaps(tmp_path: Path) -> None:
    host = Stuck(user_project(tmp_path), stop_timeout=0.5)
    host.proc = subprocess.Popen(host.command())
    time.sleep(0.3)  # let it install its SIGTERM handler
    started = time.monotonic()
    assert host.stop() == -signal.SIGKILL
    assert time.monotonic() - started < 5
    assert host.stop() == -signal.SIGKILL  # again: nothing left to signal
