"""Storage faults under a live ``asyncjobs serve``: the database made read-only, the disk full,
the job log unwritable, and a data directory that is read-only at start-up.

While the fault lasts, submits get a 503 with a clear message, nothing acknowledged is lost,
and a job that was running when the fault began is not lost either; once the fault is cleared
the host recovers by itself: submits succeed again and every job reaches a final state.

How each fault is made, as root (chmod does not stop root from writing, and does not affect a
file SQLite already holds open anyway):

* read-only database: ``chattr +i`` on ``asyncjobs.db`` and ``asyncjobs.db-wal``: writes
  through the host's open descriptors then fail with EPERM, as on a file system gone
  read-only.  (Not on ``-shm``: SQLite maps it into memory, and a write to an immutable
  mapped page is a SIGBUS that kills any process, which no host can survive.)
* disk full: the data directory on a small tmpfs (``mount -t tmpfs -o size=...``), filled
  with a filler file until ENOSPC; clearing the fault deletes the filler.
* file-size limit: ``RLIMIT_FSIZE`` lowered on the running serve process (``prlimit``) with
  SIGXFSZ ignored, so writes past the limit fail with EFBIG; works without any mount.
* read-only at start-up: the tmpfs remounted read-only while no host runs.

A mechanism the machine does not allow (no ``chattr``, no mount privilege) skips its test with
the reason.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
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


@contextmanager
def tmpfs(mountpoint: Path, size: str) -> Iterator[Path]:
    mountpoint.mkdir(parents=True, exist_ok=True)
    done = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mountpoint))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        _run("umount", "-l", str(mountpoint))


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


async def test_a_full_disk_refuses_submits_and_recovers(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt", "16m") as mnt:
        config = write_project(tmp_path / "project", fault_classes("Faults"),
                               data_dir=str(mnt / "data"))
        serve = LiveServe(config)
        serve.data = mnt / "data"
        filler = mnt / "filler"

        def fill() -> None:
            # Unbuffered: a buffered file keeps the part of its last write that did not fit
            # and fails again at close, depending on how much room the database left.
            with open(filler, "wb", buffering=0) as f:
                try:
                    while True:
                        f.write(b"\0" * (1 << 16))
                        f.flush()
                except OSError:
                    pass

        with serve:
            await fault_scenario(serve, tmp_path, inject=fill,
                                 clear=lambda: filler.unlink(missing_ok=True),
                                 words=("database or disk is full",))


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


async def test_an_unwritable_job_log_does_not_stop_the_host(tmp_path: Path) -> None:
    """The operator logs are not the store: when they cannot be written (here immutable),
    jobs are still accepted with 201, run, and are recorded."""
    reason = _chattr_works(tmp_path)
    if reason:
        pytest.skip(reason)
    config = write_project(tmp_path / "project", fault_classes("Faults"))
    serve = LiveServe(config)
    logs = [str(serve.data / "logs" / "jobs.log"), str(serve.data / "logs" / "jobs_errors.log")]
    with serve, _immutable(logs):
        async with aiohttp.ClientSession() as session:
            ids = []
            for i in range(120):  # well past one write buffer of log lines
                status, body = await post_job(session, serve, {
                    "class": "Faults", "method": "exits" if i % 10 == 0 else "ok"})
                assert status == 201, body
                ids.append(body["id"])
            for job_id in ids:
                job = await wait_job(session, serve, job_id, timeout=20)
                assert job["status"] in ("completed", "failed"), job
        assert serve.proc is not None and serve.proc.poll() is None, "the host died"


@contextmanager
def _immutable(paths: list[str]) -> Iterator[None]:
    _run("chattr", "+i", *paths).check_returncode()
    try:
        yield
    finally:
        _run("chattr", "-i", *paths)


def test_serve_on_a_read_only_data_dir_exits_with_a_clear_message(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt", "4m") as mnt:
        config = write_project(tmp_path / "project", fault_classes("Faults"),
                               data_dir=str(mnt / "data"))
        first = LiveServe(config)
        first.data = mnt / "data"
        first.start()
        first.stop()
        done = _run("mount", "-o", "remount,ro", str(mnt))
        if done.returncode != 0:
            pytest.skip(f"cannot remount read-only: {done.stderr.strip()}")
        env = {**os.environ, "ASYNCJOBS_PORT": "0"}
        result = subprocess.run([sys.executable, "-m", "asyncjobs", "serve", "--config",
                                 str(config)], capture_output=True, text=True, timeout=30,
                                env=env, check=False)
        _run("mount", "-o", "remount,rw", str(mnt))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert "read-only" in result.stderr.lower() or "read only" in result.stderr.lower(), \
        result.stderr
    assert str(mnt / "data") in result.stderr
