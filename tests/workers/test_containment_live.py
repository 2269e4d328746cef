"""Containment against a live ``asyncjobs serve``: what the attempt JSON says about strays,
the memory limit under the retry policy, and a host killed with SIGKILL (§4 Containment).

The jobs are tests/jobs_fixture/escape.py; the per-attempt cases are in test_containment.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from conftest import config_doc, write_config
from fakes import wait_gone

from asyncjobs.client.display import job_detail
from asyncjobs.testing import ServeProcess
from asyncjobs.workers import procs

pytestmark = pytest.mark.skipif(not procs.CONTAINS, reason="containment needs Linux /proc")

METHODS = ["leak", "hog", "pid"]
JOBS = {"Escape": {"module": "jobs_fixture.escape", "methods": METHODS},
        "EscapeProc": {"module": "jobs_fixture.escape", "methods": METHODS,
                       "isolation": "process"}}


def project(tmp_path: Path, jobs: dict[str, Any] = JOBS) -> Path:
    doc = config_doc(jobs, retry={"max_attempts": 2, "base_delay": 0.05, "jitter": 0})
    return write_config(tmp_path, doc)


async def published(pidfile: Path, timeout: float = 15.0) -> int:
    async with asyncio.timeout(timeout):
        while not pidfile.exists():
            await asyncio.sleep(0.02)
    return int(pidfile.read_text())


async def test_the_attempt_json_counts_the_strays_and_the_memory_outcome_is_retried(
        tmp_path: Path) -> None:
    config = project(tmp_path, {**JOBS, "Hog": {"module": "jobs_fixture.escape",
                                                     "methods": ["hog"], "memory_limit": 64}})
    with ServeProcess(config) as serve:
        async with serve.client() as client:
            leaked = await client.submit("Escape", "leak", [str(tmp_path / "helper")])
            hog = await client.submit("Hog", "hog", [200])
            done = await client.wait(leaked, timeout=20)
            hogged = await client.wait(hog, timeout=20)

    assert done["status"] == "completed"
    assert [a["strays"] for a in done["attempt_history"]] == [1]
    assert "[1 stray process killed]" in job_detail(done)  # `asyncjobs status` shows it
    assert hogged["status"] == "failed"
    attempts = hogged["attempt_history"]
    assert [a["outcome"] for a in attempts] == ["crashed", "crashed"]  # max_attempts 2
    assert attempts[0]["error"]["type"] == "MemoryLimitExceeded"
    assert attempts[0]["error"]["message"].startswith("exceeded memory_limit 64 MiB")


@pytest.mark.parametrize("cls", ["Escape", "EscapeProc"])
@pytest.mark.parametrize("how", ["new_session", "double_fork"])
async def test_the_helpers_of_a_sigkilled_hosts_jobs_die(tmp_path: Path, cls: str,
                                                         how: str) -> None:
    pidfile = tmp_path / "helper"
    serve = ServeProcess(project(tmp_path))
    with serve:
        async with serve.client() as client:
            await client.submit(cls, "leak", [str(pidfile), how, "hang"])
        helper = await published(pidfile)
        serve.kill()  # SIGKILL: the host does nothing more

        await wait_gone(helper, timeout=5.0)
