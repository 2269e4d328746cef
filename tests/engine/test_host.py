"""The host: submit and refusals, cancel, manual retry, restart recovery, the data-dir lock."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fakes import Drain, FakeClock, HostFactory, SettingsFactory, wait_gone
from store_support import claim_as

from asyncjobs.config import Settings
from asyncjobs.errors import HostLocked, JobNotFound, NotAllowed, Unavailable, WrongState
from asyncjobs.models import OutcomeKind, Status
from asyncjobs.store import Start
from asyncjobs.store.factory import DB_FILE

REPO = Path(__file__).resolve().parents[2]
INTERRUPTED, COMPLETED = OutcomeKind.INTERRUPTED, OutcomeKind.COMPLETED


async def wait_for_file(path: Path, timeout: float = 5.0) -> str:
    async with asyncio.timeout(timeout):
        while not path.exists() or not path.read_text():
            await asyncio.sleep(0.02)
    return path.read_text()


def integrity(settings: Settings) -> str:
    with contextlib.closing(sqlite3.connect(settings.data_dir / DB_FILE)) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


# -- submit and the allow-list ---------------------------------------------------------------


async def test_submit_stores_a_pending_job(settings: Settings, make_host: HostFactory,
                                           clock: FakeClock) -> None:
    async with make_host(settings) as host:
        submitted = await host.submit("Ok", "run", ["a"], kwargs={"k": 1}, priority="high")
        job = await host.get(submitted.id)
        with pytest.raises(JobNotFound):
            await host.get(submitted.id + 1)

    assert (submitted.status, submitted.duplicate) == (Status.PENDING, False)
    assert (job.cls, job.method, list(job.args), dict(job.kwargs)) == ("Ok", "run", ["a"],
                                                                       {"k": 1})
    assert (job.status, job.priority.value, job.created_at) == (Status.PENDING, "high",
                                                                clock.now())


@pytest.mark.parametrize(("cls", "method"), [("Unlisted", "run"), ("Listed", "_x"),
                                             ("Listed", "__init__"), ("Listed", "nope"),
                                             ("jobs_fixture.marker.Listed", "run")])
async def test_a_name_outside_the_allow_list_is_refused_without_import(
        settings: Settings, make_host: HostFactory, tmp_path: Path, cls: str,
        method: str) -> None:
    async with make_host(settings) as host:
        await host.submit("Ok", "run")
        with pytest.raises(NotAllowed, match="allow-list"):
            await host.submit(cls, method)
        with pytest.raises(NotAllowed):  # one bad body refuses the whole batch
            await host.submit_many([{"class": "Ok", "method": "run"},
                                    {"class": cls, "method": method}])
        page = await host.list_jobs()

    assert [j.cls for j in page.jobs] == ["Ok"]  # nothing else stored
    assert not (tmp_path / "jobs_fixture" / "imported.marker").exists()


async def test_unique_key_returns_the_same_job(settings: Settings,
                                               make_host: HostFactory) -> None:
    async with make_host(settings) as host:
        first = await host.submit("Ok", "run", unique_key="report-2027-01")
        second = await host.submit("Ok", "run", ["other"], unique_key="report-2027-01")
        count = len((await host.list_jobs()).jobs)

    assert (second.id, second.duplicate, first.duplicate) == (first.id, True, False)
    assert count == 1


async def test_a_closed_host_accepts_nothing(settings: Settings, make_host: HostFactory,
                                             ) -> None:
    host = make_host(settings)
    async with host:
        pass

    with pytest.raises(Unavailable):
        await host.submit("Ok", "run")


async def test_a_taken_port_is_refused_before_the_store_is_touched(
        make_settings: SettingsFactory, make_host: HostFactory) -> None:
    # It was found only after the store was opened and migrated and the host registered.
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        settings = make_settings(api={"host": "127.0.0.1", "port": port})
        with pytest.raises(Unavailable, match=f"cannot listen on 127.0.0.1:{port}"):
            async with make_host(settings, serve_api=True):
                pass

    assert not (settings.data_dir / DB_FILE).stat().st_size  # never opened


# -- cancel and manual retry ---------------------------------------------------------------


async def test_cancel_a_pending_job(settings: Settings, make_host: HostFactory, drain: Drain,
                                    clock: FakeClock) -> None:
    async with make_host(settings) as host:
        job_id = (await host.submit("Ok", "run", delay=60)).id
        job = await host.cancel(job_id)
        clock.advance(60)
        await drain(host)
        after = await host.get(job_id)
        with pytest.raises(WrongState, match="already cancelled"):
            await host.cancel(job_id)

    assert job.status is Status.CANCELLED
    assert (after.status, after.attempt_history) == (Status.CANCELLED, [])
    assert after.error is not None and after.error.type == "Cancelled"


async def test_cancel_a_running_job_kills_it_and_does_not_retry(
        settings: Settings, make_host: HostFactory, drain: Drain, clock: FakeClock,
        tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    async with make_host(settings) as host:
        job_id = (await host.submit("Sleepy", "run", [30, str(pidfile)])).id
        draining = asyncio.create_task(drain(host))
        worker_pid = int(await wait_for_file(pidfile))

        async with asyncio.timeout(5):
            job = await host.cancel(job_id)
        await draining
        await wait_gone(worker_pid)
        clock.advance(3600)
        await drain(host)
        after = await host.get(job_id)

    assert job.status is Status.CANCELLED
    assert (after.status, after.attempts) == (Status.CANCELLED, 1)
    assert [a.outcome for a in after.attempt_history] == [OutcomeKind.CANCELLED]
    assert after.error is not None and after.error.type == "Cancelled"


async def test_cancelling_a_running_chain_step_cancels_the_rest(
        settings: Settings, make_host: HostFactory, drain: Drain, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    async with make_host(settings) as host:
        head = (await host.submit("Sleepy", "run", [30, str(pidfile)],
                                  then=[{"class": "Chain", "method": "step", "args": [2]}])).id
        draining = asyncio.create_task(drain(host))
        await wait_for_file(pidfile)
        async with asyncio.timeout(5):
            await host.cancel(head)
        await draining
        rest = await host.get(head + 1)

    assert rest.status is Status.CANCELLED
    assert rest.error is not None and rest.error.type == "ChainBroken"
    assert rest.attempt_history == []


async def test_cancel_a_job_queued_behind_another_never_runs_it(
        make_settings: SettingsFactory, make_host: HostFactory, drain: Drain,
        tmp_path: Path) -> None:
    hold, record = tmp_path / "hold", tmp_path / "record"
    hold.touch()
    async with make_host(make_settings(workers={"max": 1})) as host:
        # Short jobs measured first: the host then reserves more than it runs (jobs queued
        # ahead of the worker), which is where this cancel must find the second one.
        for _ in range(50):
            if host.dispatcher.launcher.capacity > 1:
                break
            await host.submit("Ok", "run")
            await drain(host)
        assert host.dispatcher.launcher.capacity > 1
        first = (await host.submit("Sleepy", "hold", [str(tmp_path), "first", str(hold)])).id
        second = (await host.submit("Ok", "record", [str(record), "second"])).id
        draining = asyncio.create_task(drain(host))
        await wait_for_file(tmp_path / "first.started")
        # Reserved with the first (waiting for the one worker) but not started: pending.
        assert (await host.get(second)).status is Status.PENDING

        async with asyncio.timeout(5):
            cancelled = await host.cancel(second)
        hold.unlink()
        await draining
        done = await host.get(first)

    assert cancelled.status is Status.CANCELLED
    # It never ran, so it has no attempt (and used up none); the error says why.
    assert cancelled.attempt_history == []
    assert cancelled.attempts == 0
    assert cancelled.error is not None
    assert cancelled.error.message == "cancelled before it started"
    assert not record.exists()
    assert done.status is Status.COMPLETED


async def test_cancel_a_finished_job_is_a_wrong_state(settings: Settings,
                                                      make_host: HostFactory,
                                                      drain: Drain) -> None:
    async with make_host(settings) as host:
        job_id = (await host.submit("Ok", "run")).id
        await drain(host)
        with pytest.raises(WrongState, match="already completed"):
            await host.cancel(job_id)
        with pytest.raises(JobNotFound):
            await host.cancel(job_id + 100)


async def test_manual_retry_gives_a_fresh_budget_and_keeps_history(
        settings: Settings, make_host: HostFactory, drain: Drain, clock: FakeClock,
        tmp_path: Path) -> None:
    counter = str(tmp_path / "calls")
    async with make_host(settings) as host:
        job_id = (await host.submit("Flaky", "run", [counter, 3], max_attempts=2)).id
        await drain(host)
        clock.advance(5)
        await drain(host)
        failed = await host.get(job_id)

        retried = await host.retry(job_id)
        await drain(host)  # attempt 3 fails (third failure), attempt 4 succeeds after 5 s
        clock.advance(5)
        await drain(host)
        done = await host.get(job_id)
        with pytest.raises(WrongState, match="only failed or cancelled"):
            await host.retry(job_id)

    assert (failed.status, failed.attempts) == (Status.FAILED, 2)
    assert (retried.status, retried.attempts, retried.error) == (Status.PENDING, 0, None)
    assert len(retried.attempt_history) == 2
    assert (done.status, done.attempts, done.result) == (Status.COMPLETED, 2, {"calls": 4})
    assert [a.number for a in done.attempt_history] == [1, 2, 3, 4]
    assert [a.outcome for a in done.attempt_history] == [OutcomeKind.FAILED] * 3 + [COMPLETED]


async def test_manual_retry_of_a_cancelled_job(settings: Settings, make_host: HostFactory,
                                               drain: Drain) -> None:
    async with make_host(settings) as host:
        job_id = (await host.submit("Ok", "run", delay=60)).id
        await host.cancel(job_id)
        await host.retry(job_id)
        await drain(host)  # a manual retry is due at once, whatever the original delay
        job = await host.get(job_id)

    assert job.status is Status.COMPLETED


# -- one host per data directory -----------------------------------------------------------


async def test_a_second_host_on_the_same_data_dir_is_refused(settings: Settings,
                                                             make_host: HostFactory,
                                                             drain: Drain) -> None:
    async with make_host(settings) as first:
        with pytest.raises(HostLocked) as info:
            async with make_host(settings):
                pass
        # The refused host touched nothing: the first still works.
        job_id = (await first.submit("Ok", "run")).id
        await drain(first)
        assert (await first.get(job_id)).status is Status.COMPLETED

    message = str(info.value)
    assert "another asyncjobs host is already running" in message
    assert str(settings.data_dir) in message
    async with make_host(settings):  # the lock went with the first host
        pass


# -- restart: interrupted attempts ---------------------------------------------------------


async def leave_running(make_host: HostFactory, settings: Settings, clock: FakeClock) -> None:
    """Open a host that claims the due jobs and goes away without recording any outcome,
    the way a host killed mid-attempt leaves its data directory."""
    async with make_host(settings) as host:
        claimed = (await host.store.dispatch_round(
            host=host.id, progress={}, finished=[], now=clock.now(), limit=10,
            concurrency={})).claimed
        assert claimed
        # ... and its workers started them.
        await host.store.dispatch_round(
            host=host.id, progress={}, started=[Start(c, clock.now()) for c in claimed],
            finished=[], now=clock.now(), limit=0, concurrency={})


async def test_an_interruption_does_not_use_up_an_attempt(settings: Settings,
                                                          make_host: HostFactory,
                                                          drain: Drain, clock: FakeClock,
                                                          ) -> None:
    async with make_host(settings) as host:
        job_id = (await host.submit("Ok", "run", max_attempts=1)).id
    await leave_running(make_host, settings, clock)

    async with make_host(settings) as host:
        recovered = await host.get(job_id)
        await drain(host)
        job = await host.get(job_id)

    assert (recovered.status, recovered.attempts) == (Status.PENDING, 0)
    assert recovered.attempt_history[0].error is not None
    assert recovered.attempt_history[0].error.type == "Interrupted"
    assert (job.status, job.attempts) == (Status.COMPLETED, 1)
    assert [a.outcome for a in job.attempt_history] == [INTERRUPTED, COMPLETED]


async def test_five_interruptions_in_a_row_fail_the_job(settings: Settings,
                                                        make_host: HostFactory,
                                                        clock: FakeClock) -> None:
    async with make_host(settings) as host:
        job_id = (await host.submit("Ok", "run")).id
    for round_ in range(1, 6):
        await leave_running(make_host, settings, clock)
        async with make_host(settings) as host:
            job = await host.get(job_id)
        assert [a.outcome for a in job.attempt_history] == [INTERRUPTED] * round_
        assert job.status is (Status.PENDING if round_ < 5 else Status.FAILED)
        assert job.attempts == 0

    assert job.error is not None and job.error.type == "Interrupted"
    assert "interrupted 5 times in a row" in job.error.message


async def test_shutdown_interrupts_a_running_job_which_runs_again_after_restart(
        settings: Settings, make_host: HostFactory, drain: Drain, tmp_path: Path) -> None:
    hold = tmp_path / "hold"
    hold.touch()
    clock = FakeClock(time.time())
    async with make_host(settings, clock=clock, dispatch=True) as host:  # real dispatch loop
        job_id = (await host.submit("Sleepy", "hold", [str(tmp_path), "k", str(hold)],
                                    max_attempts=1)).id
        await wait_for_file(tmp_path / "k.started")
    # Closing waited shutdown_grace (0.5 s), then interrupted the attempt.
    hold.unlink()

    async with make_host(settings, clock=clock) as host:
        interrupted = await host.get(job_id)
        await drain(host)
        job = await host.get(job_id)

    assert (interrupted.status, interrupted.attempts) == (Status.PENDING, 0)
    assert [a.outcome for a in interrupted.attempt_history] == [INTERRUPTED]
    assert (job.status, job.result, job.attempts) == (Status.COMPLETED, "k", 1)


SUBMITTER = """
import asyncio, sys
from asyncjobs.config import load_settings
from asyncjobs.engine.host import Host

async def main():
    config, started_dir, hold = sys.argv[1:]
    async with Host(load_settings(config, env={})) as host:
        for i in range(10_000):
            submitted = await host.submit("Sleepy", "hold", [started_dir, f"k{i}", hold])
            print(submitted.id, flush=True)
            await asyncio.sleep(0.002)

asyncio.run(main())
"""


async def test_no_accepted_job_is_lost_when_the_host_is_killed(
        make_settings: SettingsFactory, make_host: HostFactory, drain: Drain,
        tmp_path: Path) -> None:
    settings = make_settings(workers={"max": 1})
    assert settings.config_path is not None
    hold = tmp_path / "hold"
    hold.touch()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SUBMITTER, str(settings.config_path), str(tmp_path), str(hold),
        stdout=asyncio.subprocess.PIPE, cwd=REPO)
    assert proc.stdout is not None
    printed: list[int] = []
    try:
        async with asyncio.timeout(20):
            # Kill it mid-stream of submits, while its first job runs in a worker.
            while len(printed) < 20 or not (tmp_path / "k0.started").exists():
                line = await proc.stdout.readline()
                assert line, "the submitter ended early"
                printed.append(int(line))
    finally:
        proc.send_signal(signal.SIGKILL)
        rest, _ = await proc.communicate()
    printed += [int(line) for line in rest.split()]
    # The orphaned worker may still hold k0 (it ends itself, or the fork server ends it, once
    # it sees the host gone; at-least-once allows the overlap): end it before re-running.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(int(await wait_for_file(tmp_path / "k0.started")), signal.SIGKILL)
    hold.unlink()

    async with make_host(settings, clock=FakeClock(time.time())) as host:
        await drain(host, timeout=30)
        jobs = {i: await host.get(i) for i in printed}
        everything = (await host.list_jobs(limit=100_000)).jobs

    assert jobs, "nothing was accepted before the kill"
    assert all(job.status is Status.COMPLETED for job in jobs.values())
    assert all(job.status is Status.COMPLETED for job in everything)  # accepted, not printed too
    first = jobs[printed[0]]
    assert [a.outcome for a in first.attempt_history] == [INTERRUPTED, COMPLETED]
    assert first.attempts == 1
    assert integrity(settings) == "ok"


# -- the seams: cancel through the notifier, recovery by host ------------------------------


async def test_a_cancel_reaches_the_running_job_through_the_notifier(
        settings: Settings, make_host: HostFactory, drain: Drain, tmp_path: Path) -> None:
    # What another host sharing the store does to cancel a job running here: mark it in the
    # store and signal on the notifier; it never touches this host's dispatcher.
    pidfile = tmp_path / "pid"
    async with make_host(settings) as host:
        job_id = (await host.submit("Sleepy", "run", [30, str(pidfile)])).id
        draining = asyncio.create_task(drain(host))
        worker_pid = int(await wait_for_file(pidfile))

        with host.events.subscribe() as queue:
            assert (await host.store.cancel(job_id, time.time(), "from elsewhere")).previous \
                is Status.RUNNING
            host.events.publish({"type": "cancel", "id": job_id})
            async with asyncio.timeout(5):
                # (its "running" event is published by the round that stores the start,
                # which may come a few ms after the job's first line)
                while (event := await queue.get()).get("type") != "job" or \
                        event.get("status") == "running":
                    pass
        await draining
        await wait_gone(worker_pid)
        job = await host.get(job_id)

    assert event == {"type": "job", "id": job_id, "status": "cancelled", "attempt": 1}
    assert job.status is Status.CANCELLED
    assert [a.outcome for a in job.attempt_history] == [OutcomeKind.CANCELLED]


async def test_a_cancel_between_claim_and_launch_is_not_lost(
        settings: Settings, make_host: HostFactory, drain: Drain, tmp_path: Path) -> None:
    # The cancel lands after the round claimed the job and before the dispatcher launched
    # it: the dispatcher is not running it yet when the signal comes, so the store's mark,
    # read back by the next round, is what stops it.
    record = tmp_path / "record"
    async with make_host(settings) as host:
        job_id = (await host.submit("Ok", "record", [str(record), "ran"])).id
        real_round = host.store.dispatch_round
        cancelling: list[asyncio.Task[Any]] = []

        async def round_then_cancel(**kwargs: Any) -> Any:
            done = await real_round(**kwargs)
            if any(c.id == job_id for c in done.claimed):
                cancelling.append(asyncio.create_task(host.cancel(job_id)))
                await asyncio.sleep(0.05)  # the cancel is stored and signalled meanwhile
            return done

        host.store.dispatch_round = round_then_cancel  # type: ignore[method-assign]
        await drain(host)
        async with asyncio.timeout(5):
            cancelled = await cancelling[0]

    assert cancelled.status is Status.CANCELLED
    assert not record.exists() or record.read_text() == "ran"  # killed at once if it started


async def test_recovery_leaves_a_live_hosts_attempts_alone(
        settings: Settings, make_host: HostFactory, clock: FakeClock) -> None:
    async with make_host(settings) as host:
        job_id = (await host.submit("Ok", "run")).id
        # Another host (a row with a live lease) claims the job and runs it.
        await claim_as(host.store, "other", clock.now())

        assert await host.dispatcher.recover() == 0
        assert (await host.get(job_id)).status is Status.RUNNING
        clock.advance(16)  # its lease runs out: now it is gone, and its attempt an orphan
        assert await host.dispatcher.recover() == 1
        job = await host.get(job_id)

    assert job.status is Status.PENDING
    (attempt,) = job.attempt_history
    assert (attempt.host, attempt.outcome) == ("other", OutcomeKind.INTERRUPTED)


async def test_a_cancel_for_a_job_whose_host_died_is_recorded_by_recovery(
        settings: Settings, make_host: HostFactory, clock: FakeClock, drain: Drain) -> None:
    # Its host cannot kill it any more; the leader's rescue records it cancelled rather than
    # running it again, and the waiting cancel returns.
    async with make_host(settings) as host:
        job_id = (await host.submit("Ok", "run")).id
        await claim_as(host.store, "doomed", clock.now())
        cancelling = asyncio.create_task(host.cancel(job_id))
        await asyncio.sleep(0.05)
        assert not cancelling.done()
        clock.advance(16)  # the lease of "doomed" runs out
        assert await host.dispatcher.recover() == 1
        async with asyncio.timeout(5):
            job = await cancelling
        await drain(host)
        after = await host.get(job_id)

    assert job.status is Status.CANCELLED
    assert (after.status, [a.outcome for a in after.attempt_history]) == (
        Status.CANCELLED, [OutcomeKind.CANCELLED])
