"""Storage faults under a live ``asyncjobs serve``: the database made read-only, and writes
past a file-size limit (the disk-full fault without a mount).

While the fault lasts, submits get a 503 with a clear message, nothing acknowledged is lost,
and jobs that were running when the fault began are not lost either; once the fault is cleared
the host recovers by itself: submits succeed again and every job reaches a final state.

How each fault is made, as root (chmod does not stop root from writing, and does not affect a
file SQLite already holds open anyway):

* read-only database: ``chattr +i`` on ``asyncjobs.db`` and ``asyncjobs.db-wal``: writes
  through the host's open descriptors then fail with EPERM, as on a file system gone
  read-only.  (Not on ``-shm``: SQLite maps it into memory, and a write to an immutable
  mapped page is a SIGBUS that kills any process, which no host can survive.)
* file-size limit: ``RLIMIT_FSIZE`` lowered on the running serve process (``prlimit``) with
  SIGXFSZ ignored, so writes past the limit fail with EFBIG; works without any mount.

A mechanism the machine does not allow (no ``chattr``) skips its test with the reason.
Tests of a full tmpfs, an unwritable job log and a read-only data directory at start-up wait
for fixes (docs/reliability.md, "Defects these tests found").
"""

from __future__ import annotations

import asyncio
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from faultjobs.live import LiveServe, fault_classes, get_job, wait_job, write_project

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux-only fault injection")

BIG_ARG = "x" * 60_000  # each submit then needs fresh pages in the WAL


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


def _chattr_works(directory: Path) -> str | None:
    if shutil.which("chattr") is None:
        return "chattr is not installed"
    probe = directory / "chattr-probe"
    probe.write_text("x")
    done = _run("chattr", "+i", str(probe))
    if done.returncode != 0:
        return f"chattr +i is refused here: {done.stderr.strip()}"
    _run("chattr", "-i", str(probe))
    probe.unlink()
    return None


async def post_job(session: aiohttp.ClientSession, serve: LiveServe,
                   body: dict[str, Any]) -> tuple[int, Any]:
    async with session.post(f"{serve.url}/api/jobs", json=body, headers=serve.headers,
                            timeout=aiohttp.ClientTimeout(total=15)) as resp:
        return resp.status, await resp.json()


async def submit_until_refused(session: aiohttp.ClientSession, serve: LiveServe,
                               acknowledged: list[int], attempts: int = 40) -> Any:
    """Submit big jobs until one gets a 503 (bounded); remember every 201."""
    for _ in range(attempts):
        status, body = await post_job(session, serve, {"class": "Faults", "method": "ok",
                                                       "args": [BIG_ARG]})
        if status == 201:
            acknowledged.append(body["id"])
            continue
        assert status == 503, (status, body)
        return body
    raise AssertionError(f"no submit was refused in {attempts} tries")


async def submit_when_recovered(session: aiohttp.ClientSession, serve: LiveServe,
                                timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        status, body = await post_job(session, serve, {"class": "Faults", "method": "ok",
                                                       "args": ["after"]})
        if status == 201:
            return int(body["id"])
        assert status == 503, (status, body)
        assert time.monotonic() < deadline, f"still refused {timeout}s after the fault: {body}"
        await asyncio.sleep(0.2)


@asynccontextmanager
async def running_jobs(session: aiohttp.ClientSession, serve: LiveServe,
                       release: Path) -> AsyncIterator[tuple[int, int]]:
    """Two jobs running (on disk and in workers) until ``release`` is created; then one
    completes and the other fails with a long error (a big entry for jobs_errors.log)."""
    ids = []
    for method, args in (("hold", [str(release)]),
                         ("hold_then_fail", [str(release), 30_000])):
        status, body = await post_job(session, serve, {"class": "Faults", "method": method,
                                                       "args": args})
        assert status == 201, body
        ids.append(int(body["id"]))
    deadline = time.monotonic() + 10
    for job_id in ids:
        while (await get_job(session, serve, job_id))["status"] != "running":
            assert time.monotonic() < deadline, "the held jobs never started"
            await asyncio.sleep(0.05)
    try:
        yield ids[0], ids[1]
    finally:
        release.write_text("go")


async def fault_scenario(serve: LiveServe, tmp_path: Path, *, inject: Callable[[], None],
                         clear: Callable[[], None], words: tuple[str, ...]) -> None:
    """The common shape: jobs running and one waiting; fault; 503s; clear; all finish."""
    acknowledged: list[int] = []
    async with aiohttp.ClientSession() as session:
        status, body = await post_job(session, serve, {"class": "Faults", "method": "ok",
                                                       "args": ["before"], "delay": 1.5})
        assert status == 201
        acknowledged.append(body["id"])
        async with running_jobs(session, serve, tmp_path / "release") as (held, failing):
            inject()
            try:
                refusal = await submit_until_refused(session, serve, acknowledged)
                assert refusal["error"]["code"] == "unavailable"
                message = refusal["error"]["message"]
                assert message.startswith("storage unavailable: ")
                assert any(w in message for w in words), message
                # Reads and liveness go on while writes fail.
                assert (await get_job(session, serve, held))["status"] == "running"
                async with session.get(f"{serve.url}/api/health") as resp:
                    assert resp.status == 200
            except BaseException:
                clear()
                raise
        # The held jobs now end while their ends cannot be written.
        await asyncio.sleep(1.5)
        clear()
        acknowledged.append(await submit_when_recovered(session, serve))
        for job_id in [held, *acknowledged]:
            job = await wait_job(session, serve, job_id, timeout=10)
            assert job["status"] == "completed", job
        job = await wait_job(session, serve, failing, timeout=10)
        assert job["status"] == "failed", job
        assert [a["outcome"] for a in job["attempt_history"]] == ["failed"]
        assert job["error"]["type"] == "ValueError"
    assert serve.proc is not None and serve.proc.poll() is None, "the host died"


# -- the faults ------------------------------------------------------------------------------

async def test_a_read_only_database_refuses_submits_and_recovers(tmp_path: Path) -> None:
    reason = _chattr_works(tmp_path)
    if reason:
        pytest.skip(reason)
    config = write_project(tmp_path / "project", fault_classes("Faults"))
    with LiveServe(config) as serve:
        db = serve.data / "asyncjobs.db"
        files = [str(db), f"{db}-wal"]
        try:
            await fault_scenario(serve, tmp_path,
                                 inject=lambda: _run("chattr", "+i", *files).check_returncode(),
                                 clear=lambda: _run("chattr", "-i", *files).check_returncode(),
                                 words=("disk I/O error", "readonly", "read-only"))
        finally:
            _run("chattr", "-i", *files)


async def test_a_file_size_limit_refuses_submits_and_recovers(tmp_path: Path) -> None:
    """RLIMIT_FSIZE on the serve process: the disk-full fault without a mount."""
    config = write_project(tmp_path / "project", fault_classes("Faults"))
    serve = LiveServe(config, python_prelude="import signal\n"
                      "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)")
    wal = serve.data / "asyncjobs.db-wal"
    unlimited = resource.getrlimit(resource.RLIMIT_FSIZE)

    def limit() -> None:
        size = max(wal.stat().st_size, 4096)
        resource.prlimit(serve.pid, resource.RLIMIT_FSIZE, (size, unlimited[1]))

    with serve:
        await fault_scenario(serve, tmp_path, inject=limit,
                             clear=lambda: resource.prlimit(serve.pid, resource.RLIMIT_FSIZE,
                                                            unlimited),
                             words=("database or disk is full", "disk I/O error"))
