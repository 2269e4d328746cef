"""``process`` isolation through the fork server, on real processes (POSIX only).

Each attempt must be a fresh process sharing no module state with any other, and must end
exactly as a spawned ``once`` worker's would: timeouts and cancels kill the job's whole
group, a child that dies is ``crashed`` with its exit status, garbage on its pipe is a
``ProtocolError`` for that attempt alone.  Around that: the server's own death, the host's
death, a clean close, the ``workers.max`` bound, and the spawn fallback kept for Windows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import DEFAULT_JOBS
from fakes import SettingsFactory, process_gone, wait_gone

from asyncjobs.config import Settings
from asyncjobs.models import Claimed, Isolation, Outcome, OutcomeKind
from asyncjobs.workers import procs
from asyncjobs.workers.channel import message_limit
from asyncjobs.workers.launcher import ForkedJob, SubprocessLauncher
from asyncjobs.workers.protocol import (
    Broken,
    Exited,
    Forwarded,
    ProtocolError,
    Started,
    decode_server,
)

pytestmark = pytest.mark.skipif(not procs.CAN_FORK, reason="the fork server needs fork()")

PROCESS = Isolation.PROCESS
FAULTJOBS = Path(__file__).parents[1] / "faultjobs"
_ids = iter(range(1, 1_000_000))

STATE_JOBS = '''
import os

calls = []  # module state: a second job in the same process would see the first one's call


class State:
    def touch(self):
        calls.append(os.getpid())
        return {"pid": os.getpid(), "calls": len(calls)}

    def inherited(self):
        """What the child had loaded before its job's module (which imports only os)."""
        import sys
        return sorted(name for name in sys.modules
                      if name.startswith(("asyncio", "jobs_fixture", "faultjobs", "aiohttp",
                                          "aiosqlite", "sqlite3")))
'''


TRICK_JOBS = '''
import glob
import os

_LOG = None  # a module-level file, written but never flushed by the job


class Tricks:
    def swap(self, run_dir, kind, target):
        """Replace this attempt's capture file (the host's business) by a FIFO or symlink."""
        print("before the swap", flush=True)
        [path] = glob.glob(os.path.join(run_dir, "worker-f*.out"))
        os.unlink(path)
        if kind == "fifo":
            os.mkfifo(path)
        else:
            os.symlink(target, path)
        os._exit(3)

    def finishing(self, path):
        """Side effects that only a normal interpreter exit completes."""
        import atexit
        import threading
        import time
        global _LOG
        _LOG = open(path, "a")
        _LOG.write("buffered\\n")

        def later():
            time.sleep(0.05)
            with open(path, "a") as f:
                f.write("thread\\n")

        threading.Thread(target=later).start()  # not a daemon: the exit waits for it

        def at_exit():
            with open(path, "a") as f:
                f.write("atexit\\n")

        atexit.register(at_exit)
        return "ok"

    def spy(self, reversed_needle):
        """Look through the memory inherited from the server for another attempt's data."""
        import gc
        import sys
        needle = reversed_needle[::-1]

        def has(value):
            if isinstance(value, str):
                return needle in value
            if isinstance(value, (bytes, bytearray, memoryview)):
                return needle.encode() in bytes(value)
            return False

        hits = []
        for obj in gc.get_objects():
            if isinstance(obj, dict):
                values = list(obj.values())
            elif isinstance(obj, (list, tuple)):
                values = list(obj)
            else:
                slots = getattr(type(obj), "__slots__", ())
                values = [getattr(obj, name, None) for name in slots]
            hits += [type(obj).__name__ for value in values if has(value)]
        frame = sys._getframe().f_back  # not this one: it has the needle
        while frame is not None:
            hits += [f"{frame.f_code.co_name}:{name}" for name, value in frame.f_locals.items()
                     if has(value)]
            frame = frame.f_back
        return hits

    def memscan(self, head, tail):
        """How often ``head + tail`` is in this process's writable memory (the two parts are
        searched apart: the job never makes the string itself)."""
        head, tail = head.encode(), tail.encode()
        hits = 0
        with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", 0) as mem:
            for line in maps:
                fields = line.split()
                low, high = (int(x, 16) for x in fields[0].split("-"))
                if "rw" not in fields[1] or (len(fields) > 5 and fields[5].startswith("[v")):
                    continue
                try:
                    mem.seek(low)
                    data = mem.read(high - low)
                except (OSError, ValueError, OverflowError):
                    continue
                at = data.find(head)
                while at >= 0:
                    hits += data[at + len(head):at + len(head) + len(tail)] == tail
                    at = data.find(head, at + 1)
        return hits

    def descriptors(self):
        """What this child has open, besides the listing's own descriptor."""
        names = os.listdir("/proc/self/fd")
        return sorted(int(n) for n in names if os.path.exists(f"/proc/self/fd/{n}"))

    def late_big(self, first, second):
        """A line over the limit, most of it still in the pipe when we are reaped."""
        import fcntl
        import time
        fds = []
        for name in os.listdir("/proc/self/fd"):
            try:
                if int(name) > 2 and os.readlink(f"/proc/self/fd/{name}").startswith("pipe:"):
                    fds.append(int(name))
            except OSError:
                pass  # the directory listing's own descriptor, closed by now
        [fd] = fds
        fcntl.fcntl(fd, 1031, 1 << 20)  # F_SETPIPE_SZ: room for all of the second part
        for size in (first, second):
            view = memoryview(b"x" * size)
            while view:
                view = view[os.write(fd, view):]
            if size == first:
                time.sleep(0.3)  # the server reads the first part
        os._exit(0)  # and we are gone before it has read the rest
'''

SIGNAL_TRACE = '''
import os
import asyncjobs.workers.procs as procs

_signal_forked = procs.signal_forked


def traced(pid, *, force, reaped=False):
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        state = "unreaped"
    except ChildProcessError:
        state = "reaped"
    with open({log!r}, "a") as log:
        log.write(f"{{pid}} {{state}} reaped={{reaped}}\\n")
    return _signal_forked(pid, force=force, reaped=reaped)


procs.signal_forked = traced
'''


def job(cls: str, method: str, *args: Any, timeout: float = 10.0) -> Claimed:
    return Claimed(id=next(_ids), cls=cls, method=method, args=list(args), kwargs={},
                   attempt=1, attempts=1, max_attempts=1, timeout=timeout, interruptions=0)


@pytest.fixture
def settings(make_settings: SettingsFactory, tmp_path: Path) -> Settings:
    (tmp_path / "statejobs.py").write_text(textwrap.dedent(STATE_JOBS))
    (tmp_path / "trickjobs.py").write_text(TRICK_JOBS)
    shutil.copytree(FAULTJOBS, tmp_path / "faultjobs",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return make_settings({
        **DEFAULT_JOBS,
        "State": {"module": "statejobs", "methods": ["touch", "inherited"]},
        "Channel": {"module": "faultjobs.hostile", "methods": ["write"]},
        "Tricks": {"module": "trickjobs",
                   "methods": ["swap", "late_big", "finishing", "spy", "descriptors",
                               "memscan"]},
    })


@pytest.fixture
async def launcher(settings: Settings, tmp_path: Path) -> AsyncIterator[SubprocessLauncher]:
    launcher = SubprocessLauncher(settings, tmp_path / "run")
    assert launcher.fork, "process isolation should default to the fork server here"
    yield launcher
    await launcher.aclose()


async def run(launcher: SubprocessLauncher, claimed: Claimed,
              progress: list[tuple[int, float, str | None]] | None = None) -> Outcome:
    def on_progress(job_id: int, fraction: float, message: str | None) -> None:
        if progress is not None:
            progress.append((job_id, fraction, message))

    async with asyncio.timeout(10):
        return await launcher.run(claimed, PROCESS, on_progress)


def server_pid(launcher: SubprocessLauncher, isolation: Isolation = PROCESS) -> int:
    server = launcher._servers.get(isolation)
    assert server is not None
    return server.proc.pid


async def until_published(path: Path) -> str:
    async with asyncio.timeout(5):
        while not path.exists() or not path.read_text():
            await asyncio.sleep(0.01)
    return path.read_text()


# -- isolation ---------------------------------------------------------------------------

async def test_each_attempt_is_a_fresh_child_sharing_no_module_state(
        launcher: SubprocessLauncher) -> None:
    outcomes = [await run(launcher, job("State", "touch")) for _ in range(3)]

    assert [o.kind for o in outcomes] == [OutcomeKind.COMPLETED] * 3
    assert [o.exit_code for o in outcomes] == [0, 0, 0]
    results = [o.result for o in outcomes]
    assert all(isinstance(r, dict) and r["calls"] == 1 for r in results), results
    pids = {r["pid"] for r in results if isinstance(r, dict)}
    assert len(pids) == 3
    assert server_pid(launcher) not in pids
    assert all(process_gone(pid) for pid in pids)  # exited and reaped by the server


async def test_one_server_serves_every_attempt_and_imports_no_job(
        launcher: SubprocessLauncher, tmp_path: Path) -> None:
    outcomes = [await run(launcher, job("Listed", "run"))]
    first = server_pid(launcher)
    outcomes += [await run(launcher, job("Listed", "run")) for _ in range(2)]

    assert [o.result for o in outcomes] == ["listed"] * 3
    assert server_pid(launcher) == first
    # The module leaves a line per import: each child imported it afresh, nothing was
    # inherited from the server or from a sibling.
    marker = tmp_path / "jobs_fixture" / "imported.marker"
    assert marker.read_text().splitlines() == ["imported"] * 3


async def test_the_server_never_loaded_asyncio_or_any_job(launcher: SubprocessLauncher) -> None:
    await run(launcher, job("Ok", "run"))  # another job module, imported by its child only
    outcome = await run(launcher, job("State", "inherited"))

    assert (outcome.kind, outcome.result) == (OutcomeKind.COMPLETED, [])


async def test_the_allow_list_is_rechecked_in_the_child(launcher: SubprocessLauncher,
                                                        tmp_path: Path) -> None:
    outcome = await run(launcher, job("Unlisted", "run"))

    assert outcome.kind is OutcomeKind.FAILED and outcome.fail_now
    assert outcome.error is not None and outcome.error.type == "NotAllowedError"
    assert not (tmp_path / "jobs_fixture" / "imported.marker").exists()


# -- what a job says -------------------------------------------------------------------------

async def test_output_and_progress_reach_the_host(launcher: SubprocessLauncher,
                                                  settings: Settings) -> None:
    seen: list[tuple[int, float, str | None]] = []
    claimed = job("Ok", "progress")
    progress = await run(launcher, claimed, seen)
    chatty = await run(launcher, job("Boom", "chatty", 20_000))

    assert (progress.kind, progress.result) == (OutcomeKind.COMPLETED, "done")
    assert seen == [(claimed.id, 0.5, "half")]
    assert chatty.kind is OutcomeKind.COMPLETED
    assert len(chatty.output.encode()) <= settings.max_output_bytes
    assert chatty.output.endswith("line 19999\n")


async def test_failures_keep_type_message_traceback_and_mro(launcher: SubprocessLauncher,
                                                            tmp_path: Path) -> None:
    failed = await run(launcher, job("Boom", "connection_error"))
    retry = await run(launcher, job("Boom", "retry", 2.5))

    assert failed.kind is OutcomeKind.FAILED and failed.error is not None
    assert (failed.error.type, failed.error.message) == ("ConnectionRefusedError",
                                                         "connection refused")
    assert "OSError" in failed.error.mro and "testjobs.py" in (failed.error.traceback or "")
    assert failed.exit_code == 0
    assert retry.retry_requested and retry.retry_delay == 2.5


async def test_a_big_result_line_is_forwarded_whole(make_settings: SettingsFactory,
                                                    tmp_path: Path) -> None:
    launcher = SubprocessLauncher(make_settings(max_result_bytes=3_000_000), tmp_path / "run")
    try:
        outcome = await run(launcher, job("Boom", "huge", 2_500_000))
    finally:
        await launcher.aclose()

    assert outcome.kind is OutcomeKind.COMPLETED
    assert outcome.result == "x" * 2_500_000


async def test_a_child_finishes_like_an_interpreter_exit(launcher: SubprocessLauncher,
                                                         tmp_path: Path) -> None:
    record = tmp_path / "record"

    outcome = await run(launcher, job("Tricks", "finishing", str(record)))

    assert (outcome.kind, outcome.exit_code) == (OutcomeKind.COMPLETED, 0)
    assert sorted(record.read_text().splitlines()) == ["atexit", "buffered", "thread"]


@pytest.mark.parametrize("isolation", [Isolation.POOL, Isolation.PROCESS])
async def test_a_spawned_worker_finishes_like_an_interpreter_exit_too(
        settings: Settings, tmp_path: Path, isolation: Isolation) -> None:
    # Spawned workers (pool, and once without the fork server) skip the interpreter's
    # teardown as well (exiting.exit_child): what a job left must still be completed.
    record = tmp_path / "record"
    launcher = SubprocessLauncher(settings, tmp_path / "run", fork=False)
    try:
        async with asyncio.timeout(10):
            outcome = await launcher.run(job("Tricks", "finishing", str(record)), isolation,
                                         lambda *_: None)
    finally:
        await launcher.aclose()  # a pool worker exits at the end of its input

    assert outcome.kind is OutcomeKind.COMPLETED
    assert sorted(record.read_text().splitlines()) == ["atexit", "buffered", "thread"]


@pytest.mark.parametrize("spy_first", [True, False], ids=["spy-first", "spy-second"])
async def test_a_child_cannot_read_another_attempts_request(launcher: SubprocessLauncher,
                                                            spy_first: bool) -> None:
    await run(launcher, job("Ok", "run"))
    server = server_pid(launcher)
    needle = f"SECRET-{os.getpid()}-{spy_first}"
    # Both requests in one read of the server: it is stopped while the host sends them.
    os.kill(server, signal.SIGSTOP)
    try:
        attempts = [job("Tricks", "spy", needle[::-1]), job("Ok", "run", needle)]
        if not spy_first:
            attempts.reverse()
        tasks = [asyncio.create_task(run(launcher, a)) for a in attempts]
        await asyncio.sleep(0.2)
    finally:
        os.kill(server, signal.SIGCONT)
    outcomes = await asyncio.gather(*tasks)

    spied = outcomes[0 if spy_first else 1]
    assert spied.kind is OutcomeKind.COMPLETED
    assert spied.result == [], spied.result


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/fd")
async def test_a_child_keeps_only_its_own_descriptors(launcher: SubprocessLauncher) -> None:
    # Two attempts at once: the second child must not hold the first one's pipe.
    first = asyncio.create_task(run(launcher, job("Sleepy", "run", 0.5)))
    await asyncio.sleep(0.1)
    outcome = await run(launcher, job("Tricks", "descriptors"))
    await first

    fds = outcome.result
    assert isinstance(fds, list) and fds[:3] == [0, 1, 2]
    assert len(fds) == 5, fds  # stdin, stdout, stderr, its pipe, its capture file


# -- what a job can do to the files around it -----------------------------------------------

@pytest.mark.parametrize("kind", ["fifo", "symlink"])
async def test_the_host_never_opens_a_capture_path_the_job_replaced(
        launcher: SubprocessLauncher, tmp_path: Path, kind: str) -> None:
    secret = tmp_path / "secret"
    secret.write_text("a file the job must not get the host to read\n")
    run_dir = tmp_path / "run"
    stop = threading.Event()

    def unblock() -> None:
        # A host that opens the FIFO blocks its whole event loop: open the other end after
        # 1.5 s so that the test fails instead of hanging.
        if stop.wait(1.5):
            return
        while not stop.wait(0.02):
            for path in run_dir.glob("worker-f*.out"):
                with contextlib.suppress(OSError):
                    os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))

    rescuer = threading.Thread(target=unblock, daemon=True)
    rescuer.start()
    started = time.monotonic()
    try:
        outcome = await run(launcher, job("Tricks", "swap", str(run_dir), kind, str(secret)))
    finally:
        stop.set()
        rescuer.join()

    assert time.monotonic() - started < 1.0
    assert (outcome.kind, outcome.exit_code) == (OutcomeKind.CRASHED, 3)
    assert outcome.output == "before the swap\n"  # through the host's own handle


# -- deaths and kills ------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "args", "code", "words"), [
    ("exit", [3], 3, "exited with code 3"),
    ("sigkill", [], -9, "killed by signal SIGKILL"),
])
async def test_a_child_that_dies_is_crashed_with_its_status(
        launcher: SubprocessLauncher, method: str, args: list[Any], code: int,
        words: str) -> None:
    outcome = await run(launcher, job("Boom", method, *args))

    assert outcome.kind is OutcomeKind.CRASHED
    assert outcome.exit_code == code
    assert outcome.error is not None and outcome.error.type == "WorkerCrashed"
    assert f"the worker {words} before reporting a result" == outcome.error.message
    if method == "exit":
        assert "exiting now" in outcome.output  # read from the capture file by the host


@pytest.mark.parametrize("stubborn", [False, True], ids=["plain", "ignores-sigterm"])
async def test_a_timeout_kills_the_child_and_its_grandchild(
        launcher: SubprocessLauncher, tmp_path: Path, stubborn: bool) -> None:
    pidfile = tmp_path / "pids"
    # The timer starts when the fork is asked for; the fork server starts on first use
    # (an interpreter start: ~120 ms here, more on a loaded machine), which would eat into
    # the 0.4 s before the job could start its grandchild.  Started first, the 0.4 s covers
    # what this test is about: a fork and the job's start (~15 ms).
    assert (await run(launcher, job("Ok", "run"))).kind is OutcomeKind.COMPLETED
    started = time.monotonic()

    outcome = await run(launcher, job("Sleepy", "grandchild", str(pidfile), stubborn,
                                      timeout=0.4))

    elapsed = time.monotonic() - started
    assert outcome.kind is OutcomeKind.TIMEOUT
    assert outcome.error is not None and "exceeded its timeout of 0.4s" in outcome.error.message
    child, grandchild = map(int, pidfile.read_text().split())
    await wait_gone(grandchild)
    assert process_gone(child)
    assert outcome.exit_code == (-9 if stubborn else -15)
    if stubborn:
        assert elapsed >= 0.4 + 0.2  # only the SIGKILL after kill_grace ended it
    assert elapsed < 3


async def test_a_running_forked_job_can_be_cancelled(launcher: SubprocessLauncher,
                                                     tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    claimed = job("Sleepy", "run", 30, str(pidfile))
    task = asyncio.create_task(run(launcher, claimed))
    pid = int(await until_published(pidfile))

    assert launcher.stop(claimed.id, OutcomeKind.CANCELLED)
    outcome = await task

    assert outcome.kind is OutcomeKind.CANCELLED
    assert outcome.error is not None and outcome.error.type == "Cancelled"
    assert outcome.exit_code == -15
    await wait_gone(pid)
    assert not launcher.stop(claimed.id, OutcomeKind.CANCELLED)


@pytest.mark.parametrize(("kind", "size", "words"), [
    ("random", 0, "not JSON"),
    ("partial", 0, "not JSON"),
    ("other_id", 0, "answered for a job it was not running"),
    ("forged_skip", 0, "answered a skip that was not asked"),
    ("gigantic", 8 << 20, "larger than allowed"),
])
async def test_garbage_from_a_child_crashes_only_its_attempt(
        launcher: SubprocessLauncher, kind: str, size: int, words: str) -> None:
    await run(launcher, job("Ok", "run"))
    server = server_pid(launcher)

    outcome = await run(launcher, job("Channel", "write", kind, size))

    assert outcome.kind is OutcomeKind.CRASHED
    assert outcome.error is not None and outcome.error.type == "ProtocolError"
    assert words in outcome.error.message
    after = await run(launcher, job("Ok", "run", "after"))
    assert after.kind is OutcomeKind.COMPLETED
    assert server_pid(launcher) == server  # the server was never the victim


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="F_SETPIPE_SZ, /proc")
async def test_the_server_never_signals_a_pid_it_has_reaped(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The server's signal_forked is traced (a sitecustomize on its PYTHONPATH): at each call,
    # is the pid still its unreaped child (alive or zombie), or free for anyone to reuse?
    hook, trace = tmp_path / "hook", tmp_path / "signals"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SIGNAL_TRACE.format(log=str(trace)))
    monkeypatch.setenv("PYTHONPATH", str(hook))
    limit = message_limit(settings.max_result_bytes, settings.max_output_bytes)
    launcher = SubprocessLauncher(settings, tmp_path / "run")
    try:
        outcome = await run(launcher, job("Tricks", "late_big", limit - 600_000, 700_000))
    finally:
        await launcher.aclose()

    assert outcome.kind is OutcomeKind.CRASHED and outcome.error is not None
    assert "larger than allowed" in outcome.error.message
    calls = trace.read_text().splitlines()
    assert calls and all(" unreaped " in call for call in calls), calls


async def test_a_killed_fork_server_crashes_its_attempts_and_is_replaced(
        launcher: SubprocessLauncher, tmp_path: Path) -> None:
    pidfiles = [tmp_path / "a", tmp_path / "b"]
    tasks = [asyncio.create_task(run(launcher, job("Sleepy", "run", 30, str(p))))
             for p in pidfiles]
    children = [int(await until_published(p)) for p in pidfiles]
    old = server_pid(launcher)

    os.kill(old, signal.SIGKILL)
    outcomes = await asyncio.gather(*tasks)

    for outcome in outcomes:
        assert outcome.kind is OutcomeKind.CRASHED
        assert outcome.error is not None and outcome.error.type == "WorkerCrashed"
        assert outcome.error.message \
            == "the fork server went away (killed by signal SIGKILL) while this attempt ran"
    for pid in children:
        await wait_gone(pid)  # orphans are not left running
    after = await run(launcher, job("Ok", "pid"))
    assert after.kind is OutcomeKind.COMPLETED
    assert server_pid(launcher) != old


async def test_a_dead_server_requeues_the_attempts_it_had_not_started(
        launcher: SubprocessLauncher, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    running = asyncio.create_task(run(launcher, job("Sleepy", "run", 30, str(pidfile))))
    child = int(await until_published(pidfile))
    old = server_pid(launcher)
    os.kill(old, signal.SIGSTOP)  # the next request waits, unread, in the server's input
    waiting = asyncio.create_task(run(launcher, job("Ok", "pid")))
    await asyncio.sleep(0.1)
    os.kill(old, signal.SIGKILL)

    crashed, requeued = await asyncio.gather(running, waiting)

    assert crashed.kind is OutcomeKind.CRASHED
    assert requeued.kind is OutcomeKind.COMPLETED, requeued.error
    assert server_pid(launcher) != old  # it ran on the next server
    assert launcher._fresh == set()
    await wait_gone(child)


async def test_a_killed_fork_server_takes_its_warm_workers_and_is_replaced(
        launcher: SubprocessLauncher, tmp_path: Path) -> None:
    """Warm workers are the server's children too: with it gone, the one running a job
    crashes (saying why), what it had queued runs elsewhere, and a new server forks the
    next warm worker."""
    pidfile = tmp_path / "pid"
    running = asyncio.create_task(launcher.run(job("Sleepy", "run", 30, str(pidfile)),
                                               Isolation.POOL, lambda *_: None))
    worker = int(await until_published(pidfile))
    old = server_pid(launcher, Isolation.POOL)

    os.kill(old, signal.SIGKILL)
    crashed = await asyncio.wait_for(running, 10)

    assert crashed.kind is OutcomeKind.CRASHED
    assert crashed.error is not None and crashed.error.message \
        == "the fork server went away (killed by signal SIGKILL) while this attempt ran"
    await wait_gone(worker)
    after = await asyncio.wait_for(
        launcher.run(job("Ok", "parent"), Isolation.POOL, lambda *_: None), 10)
    assert after.kind is OutcomeKind.COMPLETED, after.error
    assert after.result == server_pid(launcher, Isolation.POOL) != old


async def test_a_warm_worker_holds_nothing_of_a_process_attempt(
        launcher: SubprocessLauncher) -> None:
    """A fork copies the parent's memory, freed buffers too: warm workers come from a server
    of their own, which never handled an attempt's arguments or results.  (Forked from the
    attempts' server, a warm worker found them there in a reviewer's probe, though not at
    every try -- it depends on what was reused since -- so the server check comes too.)"""
    head, tail = "SECRET-", f"{os.getpid()}-arguments"
    for _ in range(3):
        done = await run(launcher, job("Ok", "run", head + tail))
        assert done.kind is OutcomeKind.COMPLETED and head + tail in str(done.result)

    scan = await asyncio.wait_for(launcher.run(job("Tricks", "memscan", head, tail),
                                               Isolation.POOL, lambda *_: None), 10)

    assert scan.kind is OutcomeKind.COMPLETED and scan.result == 0
    assert server_pid(launcher, Isolation.POOL) != server_pid(launcher)


async def test_a_pool_attempt_is_not_charged_for_a_fork_server_that_died_unseen(
        make_settings: SettingsFactory, tmp_path: Path) -> None:
    """The warm workers' server dies with a worker's request unread: the attempt waiting
    for that worker never started, so it runs on a worker of the next server."""
    launcher = SubprocessLauncher(make_settings(workers={"max": 1, "max_jobs_per_worker": 1}),
                                  tmp_path / "run")
    try:
        first = await asyncio.wait_for(
            launcher.run(job("Ok", "pid"), Isolation.POOL, lambda *_: None), 10)
        old = server_pid(launcher, Isolation.POOL)
        os.kill(old, signal.SIGSTOP)  # it will never read the next worker's request
        second = asyncio.create_task(launcher.run(job("Ok", "parent"), Isolation.POOL,
                                                  lambda *_: None))
        await asyncio.sleep(0.3)
        os.kill(old, signal.SIGKILL)
        outcome = await asyncio.wait_for(second, 10)
    finally:
        await launcher.aclose()

    assert first.kind is OutcomeKind.COMPLETED
    assert outcome.kind is OutcomeKind.COMPLETED, outcome.error
    assert outcome.result not in (old, None)


async def test_a_failing_servers_own_traceback_is_logged_and_in_the_output(
        launcher: SubprocessLauncher, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "run" / "allow.json").write_text("this is not JSON")  # the server dies on it

    outcome = await run(launcher, job("Ok", "run"))

    assert outcome.kind is OutcomeKind.CRASHED  # not requeued: that server never worked
    assert outcome.error is not None and "the fork server went away" in outcome.error.message
    assert "JSONDecodeError" in outcome.output
    assert any("JSONDecodeError" in r.getMessage() for r in caplog.records)


async def test_a_job_stopped_while_the_server_starts_is_never_forked(
        launcher: SubprocessLauncher, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    claimed = job("Sleepy", "run", 30, str(pidfile))
    task = asyncio.create_task(run(launcher, claimed))
    async with asyncio.timeout(5):
        while not launcher._server_lock.locked():  # the first attempt starts the server
            await asyncio.sleep(0)
    assert launcher.stop(claimed.id, OutcomeKind.CANCELLED)

    outcome = await task

    assert (outcome.kind, outcome.started) == (OutcomeKind.CANCELLED, False)
    assert outcome.error is not None and outcome.error.message == "cancelled before it started"
    await run(launcher, job("Ok", "run"))  # any child of it would have started by now
    assert not pidfile.exists()


async def test_closing_the_launcher_leaves_no_process(settings: Settings,
                                                      tmp_path: Path) -> None:
    launcher = SubprocessLauncher(settings, tmp_path / "run")
    pidfile = tmp_path / "pids"
    done = await run(launcher, job("Ok", "pid"))
    running = asyncio.create_task(run(launcher, job("Sleepy", "grandchild", str(pidfile))))
    child, grandchild = map(int, (await until_published(pidfile)).split())
    server = server_pid(launcher)

    await launcher.aclose()
    outcome = await running

    assert outcome.kind is OutcomeKind.CRASHED
    for pid in (server, child, grandchild, int(str(done.result))):
        await wait_gone(pid)
    assert not list((tmp_path / "run").glob("*.out"))
    assert not list((tmp_path / "run").glob("*.err"))


HOST_THAT_DIES = '''
import asyncio, os, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from asyncjobs.config import load_settings
from asyncjobs.workers.launcher import SubprocessLauncher
from asyncjobs.models import Claimed, Isolation

async def main():
    launcher = SubprocessLauncher(load_settings(Path({config!r}), env={{}}), Path({run!r}))
    claimed = Claimed(id=1, cls="Sleepy", method={method!r}, args={args!r}, kwargs={{}},
                      attempt=1, attempts=1, max_attempts=1, timeout=30, interruptions=0)
    task = asyncio.create_task(launcher.run(claimed, Isolation.PROCESS, lambda *a: None))
    while not os.path.exists({pidfile!r}):
        await asyncio.sleep(0.01)
    server = launcher._servers[Isolation.PROCESS]
    print(server.proc.pid, flush=True)
    if {kill_server!r}:
        os.kill(server.proc.pid, 9)  # the server dies, and the host with it
    os._exit(0)  # the host dies without closing anything

asyncio.run(main())
'''


async def test_the_hosts_death_ends_the_server_and_its_children(settings: Settings,
                                                                tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    script = HOST_THAT_DIES.format(tests=str(Path(__file__).parents[1]),
                                   config=str(tmp_path / "config.json"),
                                   run=str(tmp_path / "run"), pidfile=str(pidfile),
                                   method="grandchild", args=[str(pidfile)], kill_server=False)
    host = await asyncio.create_subprocess_exec(sys.executable, "-c", script,
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(host.communicate(), 10)
    server = int(out)
    child, grandchild = map(int, pidfile.read_text().split())

    for pid in (server, child, grandchild):
        await wait_gone(pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
async def test_a_child_dies_with_the_server_when_the_host_dies_too(settings: Settings,
                                                                   tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    script = HOST_THAT_DIES.format(tests=str(Path(__file__).parents[1]),
                                   config=str(tmp_path / "config.json"),
                                   run=str(tmp_path / "run"), pidfile=str(pidfile),
                                   method="run", args=[30, str(pidfile)], kill_server=True)
    host = await asyncio.create_subprocess_exec(sys.executable, "-c", script,
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(host.communicate(), 10)
    server = int(out)
    child = int(await until_published(pidfile))

    try:
        await wait_gone(server)
        await wait_gone(child, timeout=1.0)  # nobody was left to kill it: the kernel did
    finally:
        if not process_gone(child):
            os.kill(child, signal.SIGKILL)


# -- limits --------------------------------------------------------------------------------

async def test_workers_max_bounds_forked_attempts(make_settings: SettingsFactory,
                                                  tmp_path: Path) -> None:
    launcher = SubprocessLauncher(make_settings(workers={"max": 2}), tmp_path / "run")
    record = tmp_path / "intervals"
    try:
        outcomes = await asyncio.gather(*(
            run(launcher, job("Sleepy", "interval", str(record), 0.15)) for _ in range(5)))
    finally:
        await launcher.aclose()

    assert [o.kind for o in outcomes] == [OutcomeKind.COMPLETED] * 5
    spans = [tuple(map(float, line.split())) for line in record.read_text().splitlines()]
    for start, _ in spans:
        assert sum(1 for s, e in spans if s <= start < e) <= 2


# -- the spawn fallback (Windows), kept working and tested here -------------------------------

async def test_the_spawn_fallback_still_runs_process_attempts(settings: Settings,
                                                              tmp_path: Path) -> None:
    launcher = SubprocessLauncher(settings, tmp_path / "run", fork=False)
    pidfile = tmp_path / "pids"
    try:
        fresh = []
        slowest = 0.0
        for _ in range(2):
            begun = time.monotonic()
            fresh.append(await run(launcher, job("State", "touch")))
            slowest = max(slowest, time.monotonic() - begun)
        crashed = await run(launcher, job("Boom", "exit", 3))
        # Without the fork server every attempt starts an interpreter inside its timeout
        # (~100 ms idle, several times that on a loaded machine); the job must be running,
        # its grandchild started, when the timeout strikes.  So the timeout is a few whole
        # attempts as they were just measured on this machine, and 0.4 s at least.
        limit = max(0.4, 4 * slowest)
        timeout = await run(launcher, job("Sleepy", "grandchild", str(pidfile), timeout=limit))
        assert not launcher._servers  # none ever started
        assert not any(isinstance(w, ForkedJob) for w in launcher._fresh)
    finally:
        await launcher.aclose()

    results = [o.result for o in fresh]
    assert all(isinstance(r, dict) and r["calls"] == 1 for r in results)
    assert len({r["pid"] for r in results if isinstance(r, dict)}) == 2
    assert [o.exit_code for o in fresh] == [0, 0]
    assert crashed.exit_code == 3 and crashed.error is not None
    assert "exited with code 3" in crashed.error.message
    assert timeout.kind is OutcomeKind.TIMEOUT
    await wait_gone(int(pidfile.read_text().split()[1]))


# -- the server's messages, parsed strictly ------------------------------------------------

def test_server_messages_decode_strictly() -> None:
    assert decode_server(b'12 {"t": "done"}\n') == Forwarded(12, b'{"t": "done"}\n')
    assert decode_server(b'{"t": "started", "n": 3, "pid": 99}\n') == Started(3, 99)
    assert decode_server(b'{"t": "broken", "n": 3, "why": "big"}\n') == Broken(3, "big")
    assert decode_server(b'{"t": "exited", "n": 3, "code": -9}\n') == Exited(3, -9, None)
    for bad in (b"x {}\n", b"12\n", b'{"t": "exited"}\n', b'{"t": "what", "n": 1}\n',
                b"{nope\n", b"[1]\n"):
        with pytest.raises(ProtocolError):
            decode_server(bad)
