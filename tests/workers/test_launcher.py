"""The launcher on real worker subprocesses: outcomes, timeouts, crashes, output, isolation."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fakes import SettingsFactory, process_gone, wait_gone

from asyncjobs.config import Settings
from asyncjobs.engine.foreground import run_once
from asyncjobs.errors import NotAllowed
from asyncjobs.models import Claimed, Isolation, Outcome, OutcomeKind
from asyncjobs.workers.launcher import SubprocessLauncher
from asyncjobs.workers.protocol import encode_skip

POOL, PROCESS = Isolation.POOL, Isolation.PROCESS
_ids = iter(range(1, 1_000_000))


def job(cls: str, method: str, *args: Any, timeout: float = 10.0, **kwargs: Any) -> Claimed:
    return Claimed(id=next(_ids), cls=cls, method=method, args=list(args), kwargs=kwargs,
                   attempt=1, attempts=1, max_attempts=1, timeout=timeout, interruptions=0)


@pytest.fixture
async def launcher(settings: Settings, tmp_path: Path) -> AsyncIterator[SubprocessLauncher]:
    launcher = SubprocessLauncher(settings, tmp_path / "run")
    yield launcher
    await launcher.aclose()


async def run(launcher: SubprocessLauncher, claimed: Claimed, isolation: Isolation = POOL,
              progress: list[tuple[int, float, str | None]] | None = None) -> Outcome:
    def on_progress(job_id: int, fraction: float, message: str | None) -> None:
        if progress is not None:
            progress.append((job_id, fraction, message))

    async with asyncio.timeout(15):
        return await launcher.run(claimed, isolation, on_progress)


@pytest.mark.parametrize("isolation", [POOL, PROCESS])
async def test_sync_and_async_jobs_complete(launcher: SubprocessLauncher,
                                            isolation: Isolation) -> None:
    sync = await run(launcher, job("Ok", "run", "a", 2, key={"n": None}), isolation)
    coro = await run(launcher, job("Ok", "arun", [1, 2]), isolation)

    assert (sync.kind, sync.result) == (OutcomeKind.COMPLETED,
                                        {"args": ["a", 2], "kwargs": {"key": {"n": None}}})
    assert (coro.kind, coro.result) == (OutcomeKind.COMPLETED, {"async": [1, 2]})
    assert sync.error is None
    if isolation is POOL:  # a warm worker says how long it spent on it (for queue depth)
        assert sync.busy is not None and 0 < sync.busy < 5
    # A fresh worker exits after its one job and is reaped; a warm one stays up.
    assert sync.exit_code == (0 if isolation is PROCESS else None)


async def test_an_exception_is_a_failed_outcome_with_its_mro(launcher: SubprocessLauncher,
                                                             ) -> None:
    outcome = await run(launcher, job("Boom", "connection_error"))

    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.error is not None
    assert (outcome.error.type, outcome.error.message) == ("ConnectionRefusedError",
                                                           "connection refused")
    assert "ConnectionError" in outcome.error.mro and "OSError" in outcome.error.mro
    assert "Traceback" in (outcome.error.traceback or "")
    assert "testjobs.py" in (outcome.error.traceback or "")
    assert not (outcome.retry_requested or outcome.fail_now)


async def test_fail_and_retry_are_reported(launcher: SubprocessLauncher, tmp_path: Path) -> None:
    fail = await run(launcher, job("Boom", "fail", str(tmp_path / "n")))
    retry = await run(launcher, job("Boom", "retry", 7.5))

    assert fail.fail_now and fail.error is not None and fail.error.type == "Fail"
    assert retry.retry_requested and retry.retry_delay == 7.5
    assert retry.error is not None and retry.error.message == "not yet"


async def test_progress_reaches_the_callback(launcher: SubprocessLauncher) -> None:
    seen: list[tuple[int, float, str | None]] = []
    claimed = job("Ok", "progress")

    outcome = await run(launcher, claimed, progress=seen)

    assert outcome.kind is OutcomeKind.COMPLETED
    assert seen == [(claimed.id, 0.5, "half")]


@pytest.mark.parametrize("stubborn", [False, True], ids=["plain", "ignores-sigterm"])
async def test_timeout_kills_the_worker_and_its_grandchild(
        launcher: SubprocessLauncher, tmp_path: Path, stubborn: bool) -> None:
    pidfile = tmp_path / "pids"
    # The timer starts when the attempt reaches its worker; a worker spawned for it starts
    # an interpreter first (~100 ms here, more on a loaded machine), which would eat into
    # the 0.5 s before the job could start its grandchild.  With a warm worker, the 0.5 s
    # covers the job's own start.
    warm = await run(launcher, job("Ok", "pid"))
    started = time.monotonic()

    outcome = await run(launcher, job("Sleepy", "grandchild", str(pidfile), stubborn,
                                      timeout=0.5))

    assert outcome.kind is OutcomeKind.TIMEOUT
    assert outcome.error is not None and outcome.error.type == "Timeout"
    assert "0.5s" in outcome.error.message
    worker_pid, grandchild_pid = map(int, pidfile.read_text().split())
    assert worker_pid == warm.result, "the attempt went to the warm worker"
    await wait_gone(grandchild_pid)
    assert process_gone(worker_pid)
    elapsed = time.monotonic() - started
    if stubborn:  # SIGTERM was ignored: only the SIGKILL after kill_grace ended it
        assert outcome.exit_code == -9
        assert elapsed >= 0.5 + 0.2
    assert elapsed < 5


@pytest.mark.parametrize("isolation", [POOL, PROCESS])
async def test_a_worker_that_exits_is_crashed_with_its_code_and_output(
        launcher: SubprocessLauncher, isolation: Isolation) -> None:
    outcome = await run(launcher, job("Boom", "exit", 3), isolation)

    assert outcome.kind is OutcomeKind.CRASHED
    assert outcome.exit_code == 3
    assert outcome.error is not None and outcome.error.type == "WorkerCrashed"
    assert "exited with code 3" in outcome.error.message
    assert "exiting now" in outcome.output  # read from the capture file by the host


async def test_a_worker_killed_by_a_signal_is_crashed(launcher: SubprocessLauncher) -> None:
    outcome = await run(launcher, job("Boom", "sigkill"))

    assert outcome.kind is OutcomeKind.CRASHED
    assert outcome.exit_code == -9
    assert outcome.error is not None and "killed by signal SIGKILL" in outcome.error.message


async def test_only_the_tail_of_the_output_is_kept(launcher: SubprocessLauncher,
                                                   settings: Settings) -> None:
    outcome = await run(launcher, job("Boom", "chatty", 20_000))

    assert outcome.kind is OutcomeKind.COMPLETED
    assert len(outcome.output.encode()) <= settings.max_output_bytes
    assert len(outcome.output) > settings.max_output_bytes // 2
    assert outcome.output.endswith("line 19999\n")
    assert "line 00000" not in outcome.output


async def test_a_result_that_is_not_json_fails_clearly(launcher: SubprocessLauncher) -> None:
    outcome = await run(launcher, job("Boom", "unserialisable"))

    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.error is not None and outcome.error.type == "ResultError"
    assert "return value is not JSON-serialisable" in outcome.error.message
    assert "object" in outcome.error.message


async def test_a_result_over_the_cap_fails_clearly(make_settings: SettingsFactory,
                                                   tmp_path: Path) -> None:
    launcher = SubprocessLauncher(make_settings(max_result_bytes=1000), tmp_path / "run")
    try:
        small = await run(launcher, job("Boom", "huge", 900))
        big = await run(launcher, job("Boom", "huge", 5000))
    finally:
        await launcher.aclose()

    assert small.kind is OutcomeKind.COMPLETED
    assert big.kind is OutcomeKind.FAILED
    assert big.error is not None and big.error.type == "ResultError"
    assert "return value is 5002 bytes as JSON; the limit is 1000" in big.error.message


@pytest.mark.parametrize(
    ("cls", "method"),
    [("Unlisted", "run"), ("Listed", "_x"), ("Listed", "__init__"), ("Nope", "run"),
     ("_Listed", "run")],
)
async def test_the_worker_rechecks_the_allow_list_before_importing(
        launcher: SubprocessLauncher, tmp_path: Path, cls: str, method: str) -> None:
    # These never pass the host's check; crafting the Claimed proves the worker's own one.
    outcome = await run(launcher, job(cls, method), PROCESS)

    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.fail_now
    assert outcome.error is not None and outcome.error.type == "NotAllowedError"
    assert "not in the allow-list" in outcome.error.message
    assert not (tmp_path / "jobs_fixture" / "imported.marker").exists()


async def test_the_marker_module_does_leave_a_trace_when_allowed(
        launcher: SubprocessLauncher, tmp_path: Path) -> None:
    outcome = await run(launcher, job("Listed", "run"), PROCESS)

    assert (outcome.kind, outcome.result) == (OutcomeKind.COMPLETED, "listed")
    assert (tmp_path / "jobs_fixture" / "imported.marker").exists()


async def test_a_listed_name_that_is_not_a_class_is_refused(make_settings: SettingsFactory,
                                                            tmp_path: Path) -> None:
    settings = make_settings(jobs={"not_a_class": {"module": "jobs_fixture.marker",
                                                   "methods": ["run"]}})
    launcher = SubprocessLauncher(settings, tmp_path / "run")
    try:
        outcome = await run(launcher, job("not_a_class", "run"))
    finally:
        await launcher.aclose()

    assert outcome.error is not None and outcome.error.type == "NotAllowedError"
    assert "has no class not_a_class" in outcome.error.message


async def test_pool_reuses_a_warm_worker(launcher: SubprocessLauncher) -> None:
    pids = [(await run(launcher, job("Ok", "pid"))).result for _ in range(3)]

    assert len(set(pids)) == 1


async def test_a_skip_answered_after_its_job_finished_keeps_the_worker(
        launcher: SubprocessLauncher) -> None:
    """A skip can cross the job's own answer on the channel (a steal that came too late);
    the worker's honest "not skipped" must not be taken for a protocol violation."""
    first = job("Ok", "pid")
    pid = (await run(launcher, first)).result
    (worker,) = launcher._pool
    assert worker.proc.stdin is not None
    worker.proc.stdin.write(encode_skip(first.id))  # as if a steal had raced its Done
    for _ in range(50):
        await asyncio.sleep(0.01)  # let the answer arrive and be read
    assert worker.alive
    assert (await run(launcher, job("Ok", "pid"))).result == pid


async def test_a_fresh_worker_exits_cleanly_after_its_job(launcher: SubprocessLauncher) -> None:
    """Closing a finished worker's input is a normal end, never taken for a dead host (which
    makes the child kill its own group): every attempt here must exit 0, not -9."""
    outcomes = [await run(launcher, job("Ok", "run", i), PROCESS) for i in range(12)]
    assert [o.exit_code for o in outcomes] == [0] * 12


async def test_process_isolation_starts_a_worker_per_attempt(launcher: SubprocessLauncher,
                                                             ) -> None:
    pids = [(await run(launcher, job("Ok", "pid"), PROCESS)).result for _ in range(3)]

    assert len(set(pids)) == 3


async def test_pool_recycles_after_max_jobs_per_worker(make_settings: SettingsFactory,
                                                       tmp_path: Path) -> None:
    settings = make_settings(workers={"max_jobs_per_worker": 2})
    launcher = SubprocessLauncher(settings, tmp_path / "run")
    try:
        pids = [(await run(launcher, job("Ok", "pid"))).result for _ in range(5)]
    finally:
        await launcher.aclose()

    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
    assert process_gone(pids[0])


@pytest.mark.parametrize("fork", [True, False], ids=["forked", "spawned"])
async def test_a_recycled_warm_worker_starts_clean(make_settings: SettingsFactory,
                                                   tmp_path: Path, fork: bool) -> None:
    """A warm worker is forked by the fork server (a recycle costs a fork), or spawned as
    its own interpreter where the OS cannot fork; either way its successor inherits nothing
    of the jobs it ran: the server never imports job code."""
    settings = make_settings(workers={"max": 1, "max_jobs_per_worker": 2})
    launcher = SubprocessLauncher(settings, tmp_path / "run", fork=fork)
    try:
        remembered = [(await run(launcher, job("Ok", "remember", v))).result for v in "abcd"]
        parent = (await run(launcher, job("Ok", "parent"))).result
        servers = dict(launcher._servers)
    finally:
        await launcher.aclose()

    assert remembered == [None, "a", None, "c"]
    if fork:
        assert list(servers) == [POOL] and parent == servers[POOL].proc.pid
    else:
        assert not servers and parent == os.getpid()


@pytest.mark.parametrize("isolation", [POOL, PROCESS])
async def test_a_timeout_counts_from_the_jobs_start_not_the_workers(
        make_settings: SettingsFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        isolation: Isolation) -> None:
    # Every worker (and the fork server) takes 0.5 s to start; a 0.2 s job with a 0.4 s
    # timeout fits its timeout, so it completes: the start-up is not the job's time.
    slow = tmp_path / "slowstart"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(
        "import os, time\nif os.environ.get('ASYNCJOBS_WORKER'):\n    time.sleep(0.5)\n")
    monkeypatch.setenv("PYTHONPATH", f"{slow}:{os.environ.get('PYTHONPATH', '')}")
    launcher = SubprocessLauncher(make_settings(), tmp_path / "run")
    try:
        outcome = await run(launcher, job("Sleepy", "run", 0.2, timeout=0.4), isolation)
        late = await run(launcher, job("Sleepy", "run", 5, timeout=0.4), isolation)
    finally:
        await launcher.aclose()

    assert (outcome.kind, outcome.result) == (OutcomeKind.COMPLETED, "woke")
    assert late.kind is OutcomeKind.TIMEOUT  # and a job over its timeout still ends so


async def test_a_crashed_worker_is_replaced(launcher: SubprocessLauncher) -> None:
    before = (await run(launcher, job("Ok", "pid"))).result
    await run(launcher, job("Boom", "sigkill"))
    after = (await run(launcher, job("Ok", "pid"))).result

    assert before != after


async def test_stop_kills_a_running_attempt(launcher: SubprocessLauncher, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    claimed = job("Sleepy", "run", 30, str(pidfile))
    task = asyncio.create_task(run(launcher, claimed))
    async with asyncio.timeout(5):
        while not pidfile.exists() or not pidfile.read_text():
            await asyncio.sleep(0.02)

    assert launcher.stop(claimed.id, OutcomeKind.CANCELLED)
    outcome = await task

    assert outcome.kind is OutcomeKind.CANCELLED
    assert outcome.error is not None and outcome.error.type == "Cancelled"
    await wait_gone(int(pidfile.read_text()))
    assert not launcher.stop(claimed.id, OutcomeKind.CANCELLED)  # nothing left to stop


async def test_foreground_run_refuses_before_starting_a_worker(settings: Settings,
                                                               tmp_path: Path) -> None:
    with pytest.raises(NotAllowed):
        await run_once(settings, "Unlisted", "run", [], {})
    outcome = await run_once(settings, "Ok", "run", ["x"], {})

    assert (outcome.kind, outcome.result) == (OutcomeKind.COMPLETED,
                                              {"args": ["x"], "kwargs": {}})
    assert not (tmp_path / "jobs_fixture" / "imported.marker").exists()


async def test_planted_symlinks_in_the_run_dir_are_replaced_not_followed(
        settings: Settings, tmp_path: Path) -> None:
    # The run directory is writable by jobs; a symlink left at the name of the allow-list
    # or of a future worker's capture file must not make the host write or read elsewhere.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    (run_dir / "allow.json").symlink_to(victim)
    (run_dir / "allow.json.new").symlink_to(victim)
    (run_dir / "worker-1.out").symlink_to(victim)
    pool = SubprocessLauncher(settings, run_dir)
    try:
        outcome = await run(pool, job("Ok", "run", "x"))
    finally:
        await pool.aclose()
    assert outcome.kind is OutcomeKind.COMPLETED
    assert victim.read_text() == "untouched"
    assert not (run_dir / "allow.json").is_symlink()
