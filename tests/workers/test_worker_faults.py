"""Worker faults against a live ``asyncjobs serve``: each hostile job ends as the right attempt
outcome with a clear message, while a well-behaved job submitted next to it completes and the
host keeps serving (§4 Attempts, Timeout, Isolation).

Every fault runs in both isolation modes: ``Faults`` (warm pool workers, pipelined) and
``FaultsProc`` (a fresh process per attempt).  The jobs live in tests/faultjobs/hostile.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from faultjobs.live import LiveServe, fault_classes, health, submit, wait_job, write_project

KILL_GRACE = 0.5
MAX_RESULT = 65536
MAX_OUTPUT = 2000
ISOLATIONS = pytest.mark.parametrize("cls", ["Faults", "FaultsProc"])


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServe]:
    config = write_project(tmp_path_factory.mktemp("faults"), fault_classes(),
                           workers={"max": 3, "kill_grace": KILL_GRACE},
                           max_result_bytes=MAX_RESULT, max_output_bytes=MAX_OUTPUT)
    with LiveServe(config) as live:
        yield live
    assert "Traceback" not in live.log(), live.log()[-5000:]


async def run_fault(serve: LiveServe, cls: str, method: str, *args: Any,
                    wait: float = 20.0, **options: Any) -> dict[str, Any]:
    """Submit the fault and, beside it, two good jobs; all must finish; the host must serve."""
    async with aiohttp.ClientSession() as session:
        fault = await submit(session, serve, cls, method, *args, **options)
        good = [await submit(session, serve, name, "slow", 0.3) for name in ("Faults",
                                                                             "FaultsProc")]
        jobs = await asyncio.gather(wait_job(session, serve, fault, wait),
                                    *(wait_job(session, serve, g, wait) for g in good))
        for job in jobs[1:]:
            assert job["status"] == "completed", job
            assert job["result"] == "slept"
            assert [a["outcome"] for a in job["attempt_history"]] == ["completed"], job
        assert (await health(session, serve))["accepting"] is True
    assert "Traceback" not in serve.log(), serve.log()[-5000:]
    result: dict[str, Any] = jobs[0]
    return result


def attempt(job: dict[str, Any]) -> dict[str, Any]:
    assert len(job["attempt_history"]) == 1, job["attempt_history"]
    only: dict[str, Any] = job["attempt_history"][0]
    return only


@ISOLATIONS
async def test_a_worker_killed_by_sigkill_is_crashed(serve: LiveServe, cls: str) -> None:
    job = await run_fault(serve, cls, "sigkill")
    a = attempt(job)
    assert job["status"] == "failed"
    assert a["outcome"] == "crashed"
    assert a["exit_code"] == -9
    assert a["error"]["type"] == "WorkerCrashed"
    assert "killed by signal SIGKILL before reporting a result" in a["error"]["message"]


@ISOLATIONS
async def test_a_segfaulting_worker_is_crashed(serve: LiveServe, cls: str) -> None:
    job = await run_fault(serve, cls, "segfault")
    a = attempt(job)
    assert a["outcome"] == "crashed"
    assert a["exit_code"] == -11
    assert "killed by signal SIGSEGV" in a["error"]["message"]


@ISOLATIONS
async def test_a_job_that_exhausts_its_memory_limit_fails_with_memory_error(
        serve: LiveServe, cls: str) -> None:
    job = await run_fault(serve, cls, "oom", 64, 1024)
    a = attempt(job)
    assert a["outcome"] == "failed"
    assert a["error"]["type"] == "MemoryError"
    assert "bytearray" in a["error"]["traceback"]
    # The pool worker keeps its lowered limit, but still runs ordinary jobs afterwards.
    async with aiohttp.ClientSession() as session:
        after = [await submit(session, serve, cls, "ok", i) for i in range(4)]
        for job_id in after:
            assert (await wait_job(session, serve, job_id))["status"] == "completed"


@ISOLATIONS
async def test_a_job_that_closes_its_stdout_fails_on_its_own_print(serve: LiveServe,
                                                                  cls: str) -> None:
    """fd 1 is the job's capture file, not the channel: closing it hurts only the job."""
    job = await run_fault(serve, cls, "close_stdout")
    a = attempt(job)
    assert a["outcome"] == "failed", a
    assert a["error"]["type"] == "OSError"
    assert "Bad file descriptor" in a["error"]["message"]
    assert "before closing" in a["output"]


@ISOLATIONS
async def test_a_job_that_closes_the_workers_descriptors_is_crashed(serve: LiveServe,
                                                                   cls: str) -> None:
    job = await run_fault(serve, cls, "close_all_fds")
    a = attempt(job)
    assert a["outcome"] == "crashed"
    assert a["error"]["type"] == "WorkerCrashed"
    assert "before reporting a result" in a["error"]["message"]
    assert a["exit_code"] not in (None, 0)


@ISOLATIONS
async def test_a_job_that_writes_garbage_to_every_fd_is_a_protocol_error(
        serve: LiveServe, cls: str) -> None:
    job = await run_fault(serve, cls, "scribble")
    a = attempt(job)
    assert a["outcome"] == "crashed"
    assert a["error"]["type"] == "ProtocolError"
    assert "invalid message from the worker: not JSON" in a["error"]["message"]


@ISOLATIONS
async def test_megabytes_of_output_keep_only_a_bounded_tail(serve: LiveServe, cls: str) -> None:
    job = await run_fault(serve, cls, "flood", 4)
    a = attempt(job)
    assert job["status"] == "completed", job
    assert job["result"] == "flooded"
    assert 0 < len(a["output"]) <= MAX_OUTPUT
    assert a["output"].rstrip().endswith("LAST LINE")


@ISOLATIONS
@pytest.mark.parametrize(("method", "args", "words"), [
    ("unserialisable", [], "not JSON-serialisable"),
    ("bigint", [], "not JSON-serialisable"),
    ("deep", [1000], "not JSON-serialisable"),
    ("huge", [MAX_RESULT * 2], f"the limit is {MAX_RESULT}"),
])
async def test_a_result_the_host_cannot_store_fails_clearly(
        serve: LiveServe, cls: str, method: str, args: list[Any], words: str) -> None:
    job = await run_fault(serve, cls, method, *args)
    a = attempt(job)
    assert job["status"] == "failed"
    assert a["outcome"] == "failed"
    assert a["error"]["type"] == "ResultError"
    assert words in a["error"]["message"]
    assert job["result"] is None


@ISOLATIONS
async def test_a_job_ignoring_sigterm_is_sigkilled_after_the_grace(serve: LiveServe, cls: str,
                                                                   tmp_path: Path) -> None:
    pidfile = tmp_path / f"stubborn-{cls}.pid"
    started = time.monotonic()
    job = await run_fault(serve, cls, "stubborn", 60, str(pidfile), timeout=1)
    elapsed = time.monotonic() - started
    a = attempt(job)
    assert a["outcome"] == "timeout"
    assert a["error"]["type"] == "Timeout"
    assert "exceeded its timeout of 1s" in a["error"]["message"]
    assert a["exit_code"] == -9, "SIGTERM was ignored, so only SIGKILL can have ended it"
    assert 1 + KILL_GRACE <= elapsed < 15
    pid = int(pidfile.read_text())
    assert not Path(f"/proc/{pid}").exists() or \
        Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


@ISOLATIONS
async def test_sys_exit_in_a_job_is_a_failure_not_a_dead_worker(serve: LiveServe,
                                                               cls: str) -> None:
    job = await run_fault(serve, cls, "exits")
    a = attempt(job)
    assert a["outcome"] == "failed"
    assert a["error"]["type"] == "SystemExit"


@ISOLATIONS
async def test_an_exception_whose_str_raises_is_a_clear_failure(serve: LiveServe,
                                                              cls: str) -> None:
    job = await run_fault(serve, cls, "bad_exception")
    a = attempt(job)
    assert a["outcome"] == "failed", a
    assert a["error"]["type"] == "Nasty"


async def test_faults_interleaved_with_a_stream_of_good_jobs(serve: LiveServe,
                                                            tmp_path: Path) -> None:
    """Pipelined pool workers: jobs queued behind a dying worker run elsewhere, once."""
    faults = [("sigkill", []), ("segfault", []), ("scribble", []), ("close_all_fds", [])]
    async with aiohttp.ClientSession() as session:
        ids: list[tuple[int, str]] = []
        for i in range(40):
            if i % 10 == 5:
                method, args = faults[(i // 10) % len(faults)]
                ids.append((await submit(session, serve, "Faults", method, *args), method))
            else:
                ids.append((await submit(session, serve, "Faults", "ok", i), "ok"))
        jobs = await asyncio.gather(*(wait_job(session, serve, job_id) for job_id, _ in ids))
    for job, (_, method) in zip(jobs, ids, strict=True):
        outcomes = [a["outcome"] for a in job["attempt_history"]]
        if method == "ok":
            assert outcomes == ["completed"], job
        else:
            assert outcomes == ["crashed"], job


# -- one warm worker: what a job leaves behind must not hurt the next job on that worker ----

@pytest.fixture(scope="module")
def solo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServe]:
    config = write_project(tmp_path_factory.mktemp("solo"), fault_classes(),
                           workers={"max": 1, "kill_grace": KILL_GRACE},
                           max_result_bytes=MAX_RESULT, max_output_bytes=MAX_OUTPUT)
    with LiveServe(config) as live:
        yield live


async def run_in_order(serve: LiveServe, *specs: tuple[Any, ...]) -> list[dict[str, Any]]:
    """Submit ``specs`` back to back (so they queue on the one worker) and wait for all."""
    async with aiohttp.ClientSession() as session:
        ids = [await submit(session, serve, *spec) for spec in specs]
        return list(await asyncio.gather(*(wait_job(session, serve, i) for i in ids)))


async def test_a_warm_worker_recovers_its_stdout_after_a_job_closed_it(solo: LiveServe) -> None:
    """A job that closes fd 1 must not break printing for the jobs after it (pool mode)."""
    closer, printer = await run_in_order(solo, ("Faults", "close_stdout"),
                                         ("Faults", "printer", "hello from the next job"))
    assert closer["status"] == "failed"
    assert printer["status"] == "completed", printer["attempt_history"]
    assert "hello from the next job" in printer["attempt_history"][0]["output"]


async def test_a_forged_result_does_not_crash_the_next_job_on_the_worker(
        solo: LiveServe) -> None:
    """A job may lie about its own result; the job queued behind it must not pay for it."""
    forger, innocent, later = await run_in_order(solo, ("Channel", "forge_done", "forged"),
                                                 ("Faults", "ok", 1), ("Faults", "ok", 2))
    assert forger["status"] in ("completed", "failed")
    for job in (innocent, later):
        assert [a["outcome"] for a in job["attempt_history"]] == ["completed"], \
            job["attempt_history"]


async def test_ordinary_jobs_still_run_on_a_worker_whose_memory_limit_a_job_lowered(
        solo: LiveServe) -> None:
    jobs = await run_in_order(solo, ("Faults", "oom", 64, 1024),
                              *(("Faults", "ok", i) for i in range(3)))
    assert jobs[0]["attempt_history"][0]["error"]["type"] == "MemoryError"
    assert [j["status"] for j in jobs[1:]] == ["completed"] * 3
