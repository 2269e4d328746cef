"""A chain step runs only after the step before it completed, with that result as ``previous``.

Retrying a step by hand keeps that rule: the step before still pending or running puts the
retried step back to waiting for it; the step before failed or cancelled refuses the retry
(409) and names the step to retry instead.  Real workers, a fake clock, bounded waits.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fakes import Drain, HostFactory

from asyncjobs.config import Settings
from asyncjobs.engine.host import Host
from asyncjobs.errors import WrongState
from asyncjobs.models import Status


async def _wait_for_file(path: Path, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not path.exists():
            await asyncio.sleep(0.02)


async def _step_cancelled_while_the_first_runs(
        host: Host, drain: Drain, tmp_path: Path) -> tuple[int, int, Path, asyncio.Task[None]]:
    """A chain whose first step runs until the returned file is removed, then ``Ok.run``;
    the second step cancelled while the first runs.  Also the drain's task."""
    hold = tmp_path / "hold"
    hold.touch()
    head = (await host.submit("Sleepy", "hold", [str(tmp_path), "first", str(hold)],
                              then=[{"class": "Ok", "method": "run"}])).id
    draining = asyncio.create_task(drain(host))
    try:
        await _wait_for_file(tmp_path / "first.started")
        await host.cancel(head + 1)
    except BaseException:
        hold.unlink(missing_ok=True)  # else the host would wait 30 s for it to end
        raise
    return head, head + 1, hold, draining


async def test_a_step_retried_while_its_predecessor_runs_waits_for_it(
        settings: Settings, make_host: HostFactory, drain: Drain, tmp_path: Path) -> None:
    async with make_host(settings) as host:
        head, step, hold, draining = await _step_cancelled_while_the_first_runs(
            host, drain, tmp_path)
        try:
            retried = await host.retry(step)
            assert (retried.status, retried.run_at) == (Status.PENDING, None)  # waiting
            await asyncio.sleep(0.3)  # a step that were due would have run by now
            assert (await host.get(step)).attempt_history == []
        finally:
            hold.unlink(missing_ok=True)  # else the host would wait 30 s for it to end
        await draining
        await drain(host)
        first, second = await host.get(head), await host.get(step)

    assert first.status is Status.COMPLETED and first.result == "first"
    assert second.status is Status.COMPLETED
    assert second.result == {"args": [], "kwargs": {"previous": "first"}}
    assert second.attempt_history[0].started_at >= first.finished_at  # type: ignore[operator]


async def test_a_step_retried_after_its_predecessor_completed_gets_its_result(
        settings: Settings, make_host: HostFactory, drain: Drain, tmp_path: Path) -> None:
    async with make_host(settings) as host:
        _, step, hold, draining = await _step_cancelled_while_the_first_runs(
            host, drain, tmp_path)
        hold.unlink()
        await draining
        assert (await host.get(step)).status is Status.CANCELLED

        await host.retry(step)
        await drain(host)
        second = await host.get(step)

    assert second.status is Status.COMPLETED
    assert second.result == {"args": [], "kwargs": {"previous": "first"}}


@pytest.mark.parametrize("end", ["failed", "cancelled"])
async def test_a_step_whose_predecessor_did_not_complete_cannot_be_retried_alone(
        settings: Settings, make_host: HostFactory, drain: Drain, tmp_path: Path,
        end: str) -> None:
    async with make_host(settings) as host:
        if end == "failed":  # ValueError is in Boom's no_retry_on: fails at once
            head = (await host.submit("Boom", "value_error",
                                      then=[{"class": "Ok", "method": "run"}])).id
            await drain(host)
        else:
            head = (await host.submit("Ok", "run", then=[{"class": "Ok", "method": "run"}],
                                      delay=60)).id
            await host.cancel(head)
        assert (await host.get(head)).status.value == end
        assert (await host.get(head + 1)).status is Status.CANCELLED

        with pytest.raises(WrongState) as refused:
            await host.retry(head + 1)
        step = await host.get(head + 1)

    assert f"step 1 (job {head}) ended {end}: retry job {head}" in str(refused.value)
    assert (step.status, step.attempt_history) == (Status.CANCELLED, [])


async def test_retrying_the_failed_step_resumes_the_chain(
        settings: Settings, make_host: HostFactory, drain: Drain) -> None:
    async with make_host(settings) as host:
        head = (await host.submit("Ok", "run", then=[{"class": "Chain", "method": "step",
                                                      "args": [2]}], delay=60)).id
        await host.cancel(head)
        await host.retry(head)
        await drain(host)  # the head is due at once again (a retry runs now)
        step = await host.get(head + 1)

    assert step.status is Status.COMPLETED
    assert step.result == ["args", "kwargs", 2]  # its previous: the head's result, a dict
