"""A job's processes never outlive its attempt (§4 Containment), on real worker processes.

Each job here starts a helper that leaves the worker's process group -- with
``start_new_session=True``, the ``setsid`` command, or a double fork -- and then returns,
hangs until its timeout or a cancel, or kills its own worker.  Whatever the end, the helper
must be gone, and the attempt must say how many such strays were killed.  Linux only: the
mechanism is the kernel's child subreaper and ``/proc`` (elsewhere only the group is killed).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fakes import SettingsFactory, process_gone, wait_gone

from asyncjobs.config import Settings
from asyncjobs.models import Claimed, Isolation, Outcome, OutcomeKind
from asyncjobs.workers import procs
from asyncjobs.workers.launcher import SubprocessLauncher

pytestmark = pytest.mark.skipif(not procs.CONTAINS, reason="containment needs Linux /proc")

POOL, PROCESS = Isolation.POOL, Isolation.PROCESS
ISOLATIONS = pytest.mark.parametrize("isolation", [POOL, PROCESS])
HOWS = pytest.mark.parametrize("how", ["new_session", "setsid", "double_fork"])
ESCAPE = {"Escape": {"module": "jobs_fixture.escape",
                     "methods": ["leak", "zombie", "hog", "keep", "pid"]}}
_ids = iter(range(1, 1_000_000))


def job(method: str, *args: Any, timeout: float = 10.0, **kwargs: Any) -> Claimed:
    return Claimed(id=next(_ids), cls="Escape", method=method, args=list(args), kwargs=kwargs,
                   attempt=1, attempts=1, max_attempts=1, timeout=timeout, interruptions=0)


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(ESCAPE)


@pytest.fixture
async def launcher(settings: Settings, tmp_path: Path) -> AsyncIterator[SubprocessLauncher]:
    launcher = SubprocessLauncher(settings, tmp_path / "run")
    yield launcher
    await launcher.aclose()


async def run(launcher: SubprocessLauncher, claimed: Claimed, isolation: Isolation) -> Outcome:
    async with asyncio.timeout(20):
        return await launcher.run(claimed, isolation, lambda *_: None)


async def published(pidfile: Path, timeout: float = 10.0) -> int:
    async with asyncio.timeout(timeout):
        while not pidfile.exists():
            await asyncio.sleep(0.01)
    return int(pidfile.read_text())


@ISOLATIONS
@HOWS
async def test_a_helper_left_by_a_job_that_returns_is_killed_and_counted(
        launcher: SubprocessLauncher, tmp_path: Path, isolation: Isolation, how: str) -> None:
    pidfile = tmp_path / "helper"

    outcome = await run(launcher, job("leak", str(pidfile), how), isolation)

    assert outcome.kind is OutcomeKind.COMPLETED, outcome
    helper = outcome.result
    assert isinstance(helper, int) and helper == await published(pidfile)
    assert process_gone(helper)  # killed (and reaped) before the answer was sent
    assert outcome.strays == 1


@ISOLATIONS
async def test_a_helper_ignoring_sigterm_is_sigkilled_after_the_grace(
        launcher: SubprocessLauncher, settings: Settings, tmp_path: Path,
        isolation: Isolation) -> None:
    pidfile = tmp_path / "helper"
    started = time.monotonic()

    outcome = await run(launcher, job("leak", str(pidfile), "double_fork", stubborn=True),
                        isolation)

    assert outcome.kind is OutcomeKind.COMPLETED and outcome.strays == 1
    assert process_gone(await published(pidfile))
    assert time.monotonic() - started >= settings.workers.kill_grace  # SIGTERM, then the grace


@ISOLATIONS
@pytest.mark.parametrize("how", ["new_session", "double_fork"])
@pytest.mark.parametrize("stubborn", [False, True], ids=["plain", "ignores-sigterm"])
async def test_a_helper_of_a_job_that_times_out_is_killed(
        launcher: SubprocessLauncher, tmp_path: Path, isolation: Isolation, how: str,
        stubborn: bool) -> None:
    pidfile = tmp_path / "helper"

    outcome = await run(launcher, job("leak", str(pidfile), how, "hang", stubborn,
                                      timeout=1.0), isolation)

    assert outcome.kind is OutcomeKind.TIMEOUT, outcome
    await wait_gone(await published(pidfile))
    assert outcome.strays == 1


@ISOLATIONS
@pytest.mark.parametrize("how", ["setsid", "double_fork"])
async def test_a_helper_of_a_cancelled_job_is_killed(
        launcher: SubprocessLauncher, tmp_path: Path, isolation: Isolation, how: str) -> None:
    pidfile = tmp_path / "helper"
    claimed = job("leak", str(pidfile), how, "hang")
    running = asyncio.ensure_future(run(launcher, claimed, isolation))
    helper = await published(pidfile)

    assert launcher.stop(claimed.id, OutcomeKind.CANCELLED)
    outcome = await running

    assert outcome.kind is OutcomeKind.CANCELLED
    await wait_gone(helper)
    assert outcome.strays == 1


@ISOLATIONS
@pytest.mark.parametrize("how", ["new_session", "double_fork"])
async def test_a_helper_of_a_job_whose_worker_crashes_is_killed(
        launcher: SubprocessLauncher, tmp_path: Path, isolation: Isolation, how: str) -> None:
    pidfile = tmp_path / "helper"

    outcome = await run(launcher, job("leak", str(pidfile), how, "crash"), isolation)

    assert outcome.kind is OutcomeKind.CRASHED and outcome.exit_code == -9, outcome
    await wait_gone(await published(pidfile))
    assert outcome.strays == 1
    # The next job runs normally (a fresh pool worker, or the same fork server).
    assert (await run(launcher, job("pid"), isolation)).kind is OutcomeKind.COMPLETED


async def test_the_helpers_of_a_sigkilled_fork_servers_children_die(
        launcher: SubprocessLauncher, tmp_path: Path) -> None:
    pidfile = tmp_path / "helper"
    claimed = job("leak", str(pidfile), "double_fork", "hang")
    running = asyncio.ensure_future(run(launcher, claimed, PROCESS))
    helper = await published(pidfile)
    server = launcher._servers.get(Isolation.PROCESS)
    assert server is not None
    (child,) = server.pids.values()

    # Both at once (as the OOM killer might): no tree is left to walk, the helper is init's.
    os.kill(server.proc.pid, signal.SIGKILL)
    os.kill(child, signal.SIGKILL)
    outcome = await running

    assert outcome.kind is OutcomeKind.CRASHED, outcome
    assert outcome.error is not None and "fork server went away" in outcome.error.message
    await wait_gone(helper)  # reparented to init: found by the server's label


@pytest.mark.parametrize("then", ["return", "hang", "crash"])
async def test_a_spawned_once_worker_contains_its_job_too(
        settings: Settings, tmp_path: Path, then: str) -> None:
    """``process`` isolation without the fork server (Windows' way, ``fork=False``)."""
    launcher = SubprocessLauncher(settings, tmp_path / "run", fork=False)
    pidfile = tmp_path / "helper"
    try:
        outcome = await run(launcher, job("leak", str(pidfile), "double_fork", then,
                                          timeout=1.0), PROCESS)
    finally:
        await launcher.aclose()

    expected = {"return": OutcomeKind.COMPLETED, "hang": OutcomeKind.TIMEOUT,
                "crash": OutcomeKind.CRASHED}
    assert outcome.kind is expected[then]
    await wait_gone(await published(pidfile))
    assert outcome.strays == 1


@ISOLATIONS
async def test_an_exited_unreaped_child_is_reaped_not_counted(
        launcher: SubprocessLauncher, isolation: Isolation) -> None:
    outcome = await run(launcher, job("zombie"), isolation)

    assert outcome.kind is OutcomeKind.COMPLETED and outcome.strays == 0
    assert process_gone(outcome.result)  # type: ignore[arg-type]


@ISOLATIONS
async def test_a_job_over_its_memory_limit_is_crashed_with_the_limit_named(
        make_settings: SettingsFactory, tmp_path: Path, isolation: Isolation) -> None:
    settings = make_settings(ESCAPE, job_overrides={"Escape": {"memory_limit": 64}})
    launcher = SubprocessLauncher(settings, tmp_path / "run")
    try:
        over = await run(launcher, job("hog", 200), isolation)
        # The class's limit is per job: a small one on the next worker is unaffected.
        small = await run(launcher, job("hog", 4, 0.1), isolation)
    finally:
        await launcher.aclose()

    assert over.kind is OutcomeKind.CRASHED, over
    assert over.error is not None and over.error.type == "MemoryLimitExceeded"
    assert over.error.message.startswith("exceeded memory_limit 64 MiB (resident ")
    assert (small.kind, small.result) == (OutcomeKind.COMPLETED, "held 4 MiB")


async def test_the_workers_memory_limit_is_the_default_for_every_class(
        make_settings: SettingsFactory, tmp_path: Path) -> None:
    settings = make_settings(ESCAPE, workers={"memory_limit": 64})
    launcher = SubprocessLauncher(settings, tmp_path / "run")
    try:
        outcome = await run(launcher, job("hog", 200), POOL)
    finally:
        await launcher.aclose()

    assert outcome.kind is OutcomeKind.CRASHED
    assert outcome.error is not None and "memory_limit 64 MiB" in outcome.error.message


async def test_a_pool_worker_grown_past_max_memory_per_worker_is_replaced(
        make_settings: SettingsFactory, tmp_path: Path) -> None:
    settings = make_settings(ESCAPE, workers={"max": 1, "max_memory_per_worker": 100})
    launcher = SubprocessLauncher(settings, tmp_path / "run")
    try:
        small = await run(launcher, job("keep", 1), POOL)
        same = await run(launcher, job("pid"), POOL)
        big = await run(launcher, job("keep", 150), POOL)
        fresh = await run(launcher, job("pid"), POOL)
    finally:
        await launcher.aclose()

    assert small.kind is big.kind is OutcomeKind.COMPLETED  # the job itself is fine
    assert small.result == same.result == big.result  # one warm worker so far
    assert isinstance(big.result, int) and fresh.result != big.result
    await wait_gone(big.result)


def test_the_worker_label_names_only_that_workers_processes(tmp_path: Path) -> None:
    label = procs.worker_label(str(tmp_path / "w"))
    env = procs.worker_environment(label)
    other = procs.worker_environment(label + "0")  # a prefix of another label is not it
    import subprocess  # noqa: PLC0415

    mine = subprocess.Popen(["sleep", "30"], env=env, start_new_session=True)
    theirs = subprocess.Popen(["sleep", "30"], env=other, start_new_session=True)
    try:
        assert procs.kill_marked(label) == 1
        assert mine.wait(5) == -9
        assert theirs.poll() is None
    finally:
        theirs.kill()
        theirs.wait(5)
    assert os.environ.get(procs.MARKER) is None  # our own environment is untouched
