"""Dispatching on a fake clock: retries and back-off, timeouts, crashes, order, limits, chains.

Every test drives ``host.dispatcher.drain()`` (tick until nothing is running or due) and
moves the fake clock to make retry waits due, so delays are exact numbers.  The jobs run in
real worker subprocesses.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest
from fakes import Drain, FakeClock, HostFactory, SettingsFactory, process_gone, wait_gone

from asyncjobs.config import Settings
from asyncjobs.engine.dispatcher import Dispatcher
from asyncjobs.engine.host import Host
from asyncjobs.errors import Unavailable
from asyncjobs.models import ErrorInfo, Isolation, JobRecord, Outcome, OutcomeKind, Status, iso
from asyncjobs.workers.launcher import SubprocessLauncher

COMPLETED, FAILED, TIMEOUT, CRASHED = (OutcomeKind.COMPLETED, OutcomeKind.FAILED,
                                       OutcomeKind.TIMEOUT, OutcomeKind.CRASHED)


def outcomes(job: JobRecord) -> list[OutcomeKind | None]:
    return [a.outcome for a in job.attempt_history]


async def run_job(host: Host, drain: Drain, cls: str, method: str, *args: Any,
                  **options: Any) -> JobRecord:
    submitted = await host.submit(cls, method, list(args), **options)
    await drain(host)
    return await host.get(submitted.id)


async def test_a_job_completes_with_its_result(settings: Settings, make_host: HostFactory,
                                               drain: Drain, clock: FakeClock) -> None:
    async with make_host(settings) as host:
        job = await run_job(host, drain, "Ok", "run", "a", kwargs={"b": 2})

    assert job.status is Status.COMPLETED
    assert job.result == {"args": ["a"], "kwargs": {"b": 2}}
    assert (job.attempts, job.error, job.started_at, job.finished_at) == (
        1, None, clock.now(), clock.now())
    assert outcomes(job) == [COMPLETED]


async def test_fail_then_succeed_backs_off_by_the_injected_clock(
        settings: Settings, make_host: HostFactory, drain: Drain, clock: FakeClock,
        tmp_path: Path) -> None:
    t0 = clock.now()
    async with make_host(settings) as host:
        job_id = (await host.submit("Flaky", "run", [str(tmp_path / "calls"), 2])).id
        await drain(host)
        job = await host.get(job_id)
        assert (job.status, job.run_at, job.attempts) == (Status.PENDING, t0 + 5, 1)

        clock.advance(4.9)
        await drain(host)  # not due yet: nothing runs
        assert len((await host.get(job_id)).attempt_history) == 1

        clock.advance(0.1)
        await drain(host)
        job = await host.get(job_id)
        assert (job.status, job.run_at, job.attempts) == (Status.PENDING, t0 + 5 + 10, 2)

        clock.advance(10)
        await drain(host)
        job = await host.get(job_id)

    assert (job.status, job.result, job.attempts, job.error) == (
        Status.COMPLETED, {"calls": 3}, 3, None)
    assert outcomes(job) == [FAILED, FAILED, COMPLETED]
    assert [a.started_at for a in job.attempt_history] == [t0, t0 + 5, t0 + 15]
    assert [a.error.type for a in job.attempt_history[:2]] == ["ConnectionError"] * 2  # type: ignore[union-attr]
    assert job.attempt_history[1].error.message == "flaky failure 2 of 2"  # type: ignore[union-attr]


async def test_retries_exhausted_end_failed(settings: Settings, make_host: HostFactory,
                                            drain: Drain, clock: FakeClock,
                                            tmp_path: Path) -> None:
    async with make_host(settings) as host:
        job_id = (await host.submit("Flaky", "run", [str(tmp_path / "calls"), 10])).id
        for wait in (5, 10):
            await drain(host)
            clock.advance(wait)
        await drain(host)
        clock.advance(3600)
        await drain(host)  # nothing more runs
        job = await host.get(job_id)

    assert (job.status, job.attempts) == (Status.FAILED, 3)
    assert job.error == ErrorInfo("ConnectionError", "flaky failure 3 of 10")
    assert outcomes(job) == [FAILED] * 3
    assert (tmp_path / "calls").read_text() == "3"


async def test_no_retry_on_stops_at_once(settings: Settings, make_host: HostFactory,
                                         drain: Drain) -> None:
    async with make_host(settings) as host:
        job = await run_job(host, drain, "Boom", "value_error")

    assert (job.status, job.attempts) == (Status.FAILED, 1)
    assert job.error == ErrorInfo("ValueError", "bad value")


async def test_fail_stops_at_once(settings: Settings, make_host: HostFactory, drain: Drain,
                                  tmp_path: Path) -> None:
    async with make_host(settings) as host:
        job = await run_job(host, drain, "Boom", "fail", str(tmp_path / "calls"))

    assert (job.status, job.attempts) == (Status.FAILED, 1)
    assert job.error == ErrorInfo("Fail", "giving up on purpose")
    assert (tmp_path / "calls").read_text() == "1"


async def test_retry_uses_the_delay_the_job_asked_for(settings: Settings,
                                                      make_host: HostFactory, drain: Drain,
                                                      clock: FakeClock) -> None:
    t0 = clock.now()
    async with make_host(settings) as host:
        job = await run_job(host, drain, "Boom", "retry", 42)
        assert (job.status, job.run_at) == (Status.PENDING, t0 + 42)
        clock.advance(41.9)
        await drain(host)
        assert len((await host.get(job.id)).attempt_history) == 1
        clock.advance(0.1)
        await drain(host)
        assert (await host.get(job.id)).run_at == t0 + 84
        clock.advance(42)
        await drain(host)
        job = await host.get(job.id)

    assert (job.status, job.attempts) == (Status.FAILED, 3)  # still bounded by max_attempts
    assert job.error == ErrorInfo("Retry", "not yet")


async def test_timeout_kills_worker_and_grandchild_then_retries(
        settings: Settings, make_host: HostFactory, drain: Drain, clock: FakeClock,
        tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    async with make_host(settings) as host:
        # The timer runs from the attempt's hand-over to its worker, which includes the
        # worker's start and the job's import: 1 s leaves room for a loaded machine.
        job = await run_job(host, drain, "Sleepy", "grandchild", str(pidfile), timeout=1.0,
                            max_attempts=2)
        first_pids = [int(p) for p in pidfile.read_text().split()]
        assert (job.status, outcomes(job)) == (Status.PENDING, [TIMEOUT])
        for pid in first_pids:
            await wait_gone(pid)

        clock.advance(5)
        await drain(host)
        job = await host.get(job.id)
        for pid in map(int, pidfile.read_text().split()):
            await wait_gone(pid)

    assert (job.status, outcomes(job)) == (Status.FAILED, [TIMEOUT, TIMEOUT])
    assert job.error is not None and job.error.type == "Timeout"
    assert "exceeded its timeout of 1s" in job.error.message


@pytest.mark.parametrize("isolation", ["pool", "process"])
async def test_a_worker_that_exits_is_crashed_and_retried(
        make_settings: SettingsFactory, make_host: HostFactory, drain: Drain, clock: FakeClock,
        tmp_path: Path, isolation: str) -> None:
    settings = make_settings(workers={"isolation": isolation})
    async with make_host(settings) as host:
        job = await run_job(host, drain, "Flaky", "crash_once", str(tmp_path / "calls"))
        clock.advance(5)
        await drain(host)
        job = await host.get(job.id)

    assert (job.status, job.result) == (Status.COMPLETED, "survived")
    assert outcomes(job) == [CRASHED, COMPLETED]
    crashed = job.attempt_history[0]
    assert crashed.exit_code == 3
    assert crashed.error is not None and crashed.error.type == "WorkerCrashed"


async def test_a_worker_killed_by_a_signal_is_crashed_until_failed(
        settings: Settings, make_host: HostFactory, drain: Drain, clock: FakeClock) -> None:
    async with make_host(settings) as host:
        job = await run_job(host, drain, "Boom", "sigkill", max_attempts=2)
        clock.advance(5)
        await drain(host)
        job = await host.get(job.id)

    assert (job.status, outcomes(job)) == (Status.FAILED, [CRASHED, CRASHED])
    assert [a.exit_code for a in job.attempt_history] == [-9, -9]
    assert job.error is not None and "killed by signal SIGKILL" in job.error.message


async def test_lots_of_output_keeps_only_the_tail(settings: Settings, make_host: HostFactory,
                                                  drain: Drain) -> None:
    async with make_host(settings) as host:
        job = await run_job(host, drain, "Boom", "chatty", 20_000)

    output = job.attempt_history[0].output
    assert job.status is Status.COMPLETED
    assert 1000 < len(output.encode()) <= settings.max_output_bytes
    assert output.endswith("line 19999\n") and "line 00000" not in output


async def test_unstorable_results_fail_with_a_clear_message(
        make_settings: SettingsFactory, make_host: HostFactory, drain: Drain) -> None:
    async with make_host(make_settings(max_result_bytes=1000)) as host:
        odd = await run_job(host, drain, "Boom", "unserialisable", max_attempts=1)
        big = await run_job(host, drain, "Boom", "huge", 2000, max_attempts=1)

    assert (odd.status, big.status) == (Status.FAILED, Status.FAILED)
    assert odd.error is not None and odd.error.type == "ResultError"
    assert "return value is not JSON-serialisable" in odd.error.message
    assert big.error == ErrorInfo(
        "ResultError", "return value is 2002 bytes as JSON; the limit is 1000")
    assert big.result is None


async def test_priority_then_run_at_then_id(make_settings: SettingsFactory,
                                            make_host: HostFactory, drain: Drain,
                                            clock: FakeClock, tmp_path: Path) -> None:
    order = tmp_path / "order"
    early, earlier = iso(clock.now() - 5), iso(clock.now() - 10)
    bodies: list[tuple[str, dict[str, Any]]] = [
        ("low", {"priority": "low"}), ("medium-1", {}), ("high-1", {"priority": "high"}),
        ("medium-2", {}), ("high-early", {"priority": "high", "run_at": earlier}),
        ("medium-early", {"run_at": early}), ("high-2", {"priority": "high"})]
    async with make_host(make_settings(workers={"max": 1})) as host:
        for name, options in bodies:
            await host.submit("Ok", "record", [str(order), name], **options)
        await drain(host)

    assert order.read_text().split() == ["high-early", "high-1", "high-2", "medium-early",
                                         "medium-1", "medium-2", "low"]


async def test_a_delayed_job_waits_for_the_clock(settings: Settings, make_host: HostFactory,
                                                 drain: Drain, clock: FakeClock) -> None:
    t0 = clock.now()
    async with make_host(settings) as host:
        job = await run_job(host, drain, "Ok", "run", delay=30)
        assert (job.status, job.run_at, job.attempt_history) == (Status.PENDING, t0 + 30, [])
        assert (await host.store.dispatch_round(
            host=host.id, progress={}, finished=[], now=t0, limit=1, concurrency={},
        )).next_due == t0 + 30
        clock.advance(29.9)
        await drain(host)
        assert (await host.get(job.id)).status is Status.PENDING
        clock.advance(0.1)
        await drain(host)
        job = await host.get(job.id)

    assert job.status is Status.COMPLETED
    assert job.started_at == t0 + 30


def intervals(path: Path) -> list[tuple[float, float]]:
    return sorted(tuple(map(float, line.split())) for line in path.read_text().splitlines())  # type: ignore[misc]


@pytest.mark.parametrize(("concurrency", "seconds"), [(1, 0.15), (None, 0.4)])
async def test_class_concurrency_is_never_exceeded(
        make_settings: SettingsFactory, make_host: HostFactory, drain: Drain, tmp_path: Path,
        concurrency: int | None, seconds: float) -> None:
    limit = {"Sleepy": {"concurrency": concurrency}} if concurrency else None
    settings = make_settings(job_overrides=limit, workers={"max": 4})
    record = tmp_path / "intervals"
    async with make_host(settings) as host:
        for _ in range(3):
            await host.submit("Sleepy", "interval", [str(record), seconds])
        await drain(host)

    spans = intervals(record)
    assert len(spans) == 3
    overlapping = any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))
    # The unlimited run is the control: it shows the check would see an overlap (its jobs
    # sleep longer, so that workers starting at different moments still overlap).
    assert overlapping is (concurrency is None)


@pytest.mark.parametrize(
    ("workers", "class_isolation", "distinct_pids"),
    [
        ({"isolation": "pool"}, None, 1),
        ({"isolation": "process"}, None, 4),
        ({"isolation": "pool", "max_jobs_per_worker": 2}, None, 2),
        ({"isolation": "pool"}, "process", 4),  # the per-class override wins
        ({"isolation": "process"}, "pool", 1),
    ],
)
async def test_isolation_modes(make_settings: SettingsFactory, make_host: HostFactory,
                               drain: Drain, workers: dict[str, Any],
                               class_isolation: str | None, distinct_pids: int) -> None:
    override = {"Ok": {"isolation": class_isolation}} if class_isolation else None
    settings = make_settings(job_overrides=override, workers={"max": 1, **workers})
    async with make_host(settings) as host:
        ids = [(await host.submit("Ok", "pid")).id for _ in range(4)]
        await drain(host)
        pids = [(await host.get(i)).result for i in ids]

    assert len(set(pids)) == distinct_pids
    if distinct_pids == 2:
        assert pids[0] == pids[1] != pids[2] == pids[3]
    if distinct_pids == 4:
        assert all(process_gone(pid) for pid in pids)


async def test_a_chain_passes_previous_along(settings: Settings, make_host: HostFactory,
                                             drain: Drain) -> None:
    steps = [{"class": "Chain", "method": "step", "args": [2]},
             {"class": "Chain", "method": "step", "args": [3]}]
    async with make_host(settings) as host:
        head = await run_job(host, drain, "Chain", "step", 1, then=steps)
        second, third = await host.get(head.id + 1), await host.get(head.id + 2)

    assert [j.status for j in (head, second, third)] == [Status.COMPLETED] * 3
    assert (head.result, second.result, third.result) == ([1], [1, 2], [1, 2, 3])
    assert third.kwargs == {"previous": [1, 2]}
    assert {head.chain_id, second.chain_id, third.chain_id} == {head.id}


async def test_a_failed_middle_step_cancels_the_rest(settings: Settings,
                                                     make_host: HostFactory,
                                                     drain: Drain) -> None:
    steps = [{"class": "Boom", "method": "value_error"},
             {"class": "Chain", "method": "step", "args": [3]}]
    async with make_host(settings) as host:
        with host.events.subscribe() as events:
            head = await run_job(host, drain, "Chain", "step", 1, then=steps)
            heard = [e for e in _queued(events) if e.get("id") == head.id + 2]
        middle, last = await host.get(head.id + 1), await host.get(head.id + 2)

    assert (head.status, middle.status, last.status) == (Status.COMPLETED, Status.FAILED,
                                                         Status.CANCELLED)
    assert last.error is not None and last.error.type == "ChainBroken"
    assert f"job {middle.id}" in last.error.message
    assert last.attempt_history == []
    # ... and says so to whoever waits on that step (wait, the event stream).
    assert [e["status"] for e in heard] == ["cancelled"]


async def test_a_cancel_that_meets_a_failing_attempt_is_not_lost_to_the_retry(
        settings: Settings, make_host: HostFactory, drain: Drain, tmp_path: Path) -> None:
    # The cancel lands in the store while the attempt is held, but the attempt fails
    # (retryable) before any kill: the job ends cancelled, not pending for a retry, and
    # whoever waits on it hears so.
    async with make_host(settings) as host:
        job_id = (await host.submit("Flaky", "run", [str(tmp_path / "calls"), 5])).id
        with host.events.subscribe() as events:
            await host.dispatcher.tick()  # reserved and handed to a worker
            async with asyncio.timeout(10):
                while host.dispatcher.running:  # it failed; the next round records that
                    await asyncio.sleep(0.01)
            await host.store.cancel(job_id, host.clock.now(), "by request")  # no signal
            await drain(host)
            heard = [e for e in _queued(events) if e.get("id") == job_id]
        job = await host.get(job_id)

    assert job.status is Status.CANCELLED
    assert job.error is not None and job.error.type == "Cancelled"
    assert outcomes(job) == [FAILED]
    assert heard[-1]["status"] == "cancelled"


def _queued(queue: asyncio.Queue[Any]) -> list[Any]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


async def test_progress_and_the_job_logs(settings: Settings, make_host: HostFactory,
                                         drain: Drain) -> None:
    async with make_host(settings) as host:
        job = await run_job(host, drain, "Ok", "progress")
        failed = await run_job(host, drain, "Boom", "value_error")
        events = host.log_tail("jobs", 50)
        errors = host.log_tail("errors", 50)

    assert job.progress == (0.5, "half")
    assert any(f"job={job.id} class=Ok method=progress attempt=1 status=completed" in line
               for line in events)
    assert any(f"job={failed.id} " in line and "error=ValueError: bad value" in line
               for line in errors)
    assert any("Traceback" in line for line in errors)


class BrokenLauncher:
    """A launcher whose ``run`` raises: the dispatcher must record a crash, not die."""

    capacity = 4

    async def run(self, job: object, isolation: Isolation, on_progress: object,
                  on_start: object = None) -> Outcome:
        raise RuntimeError("launcher bug")

    def stop(self, job_id: int, kind: OutcomeKind) -> bool:
        return False

    def pace(self, round_time: float) -> None:
        return None

    def release_waiting(self, kind: OutcomeKind) -> None:
        pass

    async def aclose(self) -> None:
        pass


async def test_a_launcher_error_is_recorded_as_a_crash(settings: Settings,
                                                       make_host: HostFactory,
                                                       drain: Drain) -> None:
    async with make_host(settings, launcher=BrokenLauncher()) as host:
        job = await run_job(host, drain, "Ok", "run", max_attempts=1)

    assert (job.status, outcomes(job)) == (Status.FAILED, [CRASHED])
    assert job.error == ErrorInfo("LauncherError", "RuntimeError: launcher bug")


async def test_a_round_that_cannot_be_stored_is_kept_and_written_later(
        settings: Settings, make_host: HostFactory, drain: Drain) -> None:
    # The round (finish + claim) is one transaction; if it fails, the ended attempt stays
    # "running" on disk and its outcome is written by a later round, not lost.
    async with make_host(settings) as host:
        real_round = host.store.dispatch_round
        failures = 0

        async def flaky_round(**kwargs: Any) -> Any:
            nonlocal failures
            if kwargs["finished"] and failures == 0:
                failures += 1
                raise Unavailable("storage unavailable: disk I/O error")
            return await real_round(**kwargs)

        host.store.dispatch_round = flaky_round  # type: ignore[method-assign]
        job = await run_job(host, drain, "Ok", "run", "kept")

    assert failures == 1
    assert job.status is Status.COMPLETED
    assert job.result == {"args": ["kept"], "kwargs": {}}
    assert outcomes(job) == [COMPLETED]


async def test_class_concurrency_holds_with_two_dispatchers_sharing_one_store(
        make_settings: SettingsFactory, make_host: HostFactory, clock: FakeClock,
        tmp_path: Path) -> None:
    # Two hosts' dispatchers on one store (on SQLite: in one process, sharing the host's
    # store): the cap is counted by the claim in the store, not in either one's memory.
    settings = make_settings(job_overrides={"Sleepy": {"concurrency": 1}}, workers={"max": 2})
    record = tmp_path / "intervals"
    async with make_host(settings) as host:
        other = Dispatcher(store=host.store, launcher=SubprocessLauncher(settings, tmp_path / "b"),
                           settings=settings, clock=clock, events=host.events,
                           job_log=host.job_log, host_id="other")
        try:
            for _ in range(4):
                await host.submit("Sleepy", "interval", [str(record), 0.15])
            async with asyncio.timeout(20):
                await asyncio.gather(host.dispatcher.drain(), other.drain())
        finally:
            other.close()
            await other.launcher.aclose()
        hosts = {a.host for job in (await host.list_jobs()).jobs
                 for a in (await host.get(job.id)).attempt_history}

    spans = intervals(record)
    assert len(spans) == 4
    assert not any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))
    assert hosts <= {host.id, "other"}
