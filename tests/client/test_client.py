"""AsyncJobsClient and submit_job: discovery, error mapping, and the whole lifecycle end to end
against a real ``asyncjobs serve`` subprocess (one per module; tests keep to their own jobs).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from serve_fixture import (
    InProcess,
    ServedHost,
    clean_env,
    closed_port_url,
    in_process,
    make_project,
    serve,
)

from asyncjobs import AsyncJobsClient, submit_job, submit_job_sync
from asyncjobs.client.api_client import submit_body
from asyncjobs.client.discovery import discover
from asyncjobs.errors import (
    AsyncJobsError,
    ConfigError,
    HostUnreachable,
    InvalidField,
    JobNotFound,
    NotAllowed,
    Unauthorized,
    WrongState,
)

JOB_KEYS = {"id", "class", "method", "args", "kwargs", "status", "priority", "attempts",
            "max_attempts", "timeout", "created_at", "run_at", "started_at", "finished_at",
            "result", "error", "progress", "chain_id", "unique_key", "attempt_history"}
ATTEMPT_KEYS = {"number", "host", "outcome", "started_at", "finished_at", "exit_code", "error",
                "output", "strays"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedHost]:
    with serve(tmp_path_factory.mktemp("client")) as host:
        yield host


@pytest.fixture
async def client(served: ServedHost) -> AsyncIterator[AsyncJobsClient]:
    async with served.client() as c:
        yield c


@pytest.fixture
async def inprocess(tmp_path: Path) -> AsyncIterator[InProcess]:
    async with in_process(tmp_path) as env:
        yield env


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


# -- finding the host ---------------------------------------------------------------------------

def test_discover_prefers_the_environment(tmp_path: Path) -> None:
    config = make_project(tmp_path)
    env = {"ASYNCJOBS_URL": "http://127.0.0.1:9/", "ASYNCJOBS_TOKEN": "t0k",
           "ASYNCJOBS_CONFIG": str(config)}
    assert discover(None, env) == ("http://127.0.0.1:9", "t0k")


def test_discover_reads_host_json_and_token_of_the_config(tmp_path: Path) -> None:
    config = make_project(tmp_path)
    data = tmp_path / ".asyncjobs"
    data.mkdir()
    (data / "host.json").write_text(json.dumps({"url": "http://127.0.0.1:4321"}))
    (data / "token").write_text("secret\n")
    assert discover(config, {}) == ("http://127.0.0.1:4321", "secret")
    assert discover(None, {"ASYNCJOBS_CONFIG": str(config)}) == ("http://127.0.0.1:4321",
                                                                 "secret")
    # A URL from the environment still takes the token from the data directory.
    assert discover(config, {"ASYNCJOBS_URL": "http://localhost:1"}) == ("http://localhost:1",
                                                                        "secret")


def test_discover_falls_back_to_the_configured_port(tmp_path: Path) -> None:
    config = make_project(tmp_path, api={"host": "0.0.0.0", "port": 9999})
    assert discover(config, {}) == ("http://127.0.0.1:9999", None)


def test_discover_without_any_config_uses_the_defaults(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert discover(None, {}) == ("http://127.0.0.1:8765", None)
    (tmp_path / ".asyncjobs").mkdir()
    (tmp_path / ".asyncjobs" / "token").write_text("abc")
    assert discover(None, {}) == ("http://127.0.0.1:8765", "abc")


def test_a_config_asked_for_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        discover(tmp_path / "missing.json", {})
    with pytest.raises(ConfigError):
        discover(None, {"ASYNCJOBS_CONFIG": str(tmp_path / "missing.json")})


def test_explicit_arguments_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASYNCJOBS_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("ASYNCJOBS_TOKEN", "from-env")
    client = AsyncJobsClient("http://localhost:2/", "explicit")
    assert (client.url, client.token) == ("http://localhost:2", "explicit")
    assert AsyncJobsClient(token="explicit").url == "http://127.0.0.1:1"
    assert "explicit" not in repr(client), "the token stays out of reprs and logs"


def test_a_url_without_a_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="http://"):
        AsyncJobsClient("localhost:8765", "token")


def test_submit_body_leaves_out_unset_options_and_encodes_the_rest() -> None:
    at = dt.datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    body = submit_body("SampleJob", "process", ("a",), kwargs={"k": 1}, priority="high",
                       delay=None, run_at=at, then=[("SampleJob", "process"),
                                                    ("SampleJob", "process", ["x"]),
                                                    {"class": "SampleJob", "method": "process"}])
    assert body == {"class": "SampleJob", "method": "process", "args": ["a"],
                    "kwargs": {"k": 1}, "priority": "high", "run_at": "2030-01-02T01:04:05.678Z",
                    "then": [{"class": "SampleJob", "method": "process", "args": []},
                             {"class": "SampleJob", "method": "process", "args": ["x"]},
                             {"class": "SampleJob", "method": "process"}]}


async def test_no_host_is_host_unreachable_naming_the_url() -> None:
    url = closed_port_url()
    async with AsyncJobsClient(url, "token") as client:
        with pytest.raises(HostUnreachable) as caught:
            await client.stats()
    assert url in caught.value.message
    assert "asyncjobs serve" in caught.value.message
    assert caught.value.code == "unreachable"


async def test_submit_job_sync_refuses_to_block_a_running_loop() -> None:
    with pytest.raises(RuntimeError, match="await submit_job"):
        submit_job_sync("SampleJob", "process", url=closed_port_url(), token="x")


# -- errors come back as the host's classes ----------------------------------------------------

async def test_api_errors_are_raised_as_the_matching_classes(inprocess: InProcess) -> None:
    url = str(inprocess.http.make_url("")).rstrip("/")
    async with AsyncJobsClient(url, inprocess.host.token) as client:
        with pytest.raises(JobNotFound) as not_found:
            await client.get(424242)
        assert not_found.value.job_id == 424242
        assert not_found.value.message == "no job with id 424242"

        with pytest.raises(NotAllowed) as refused:
            await client.submit("os", "system", ["true"])
        assert refused.value.code == "not_allowed" and "allow-list" in refused.value.message

        with pytest.raises(InvalidField) as invalid:
            await client.submit("SampleJob", "process", priority="urgent")
        assert invalid.value.field == "priority"
        assert invalid.value.problem == "must be 'high', 'medium' or 'low'"

        job_id = await client.submit("SampleJob", "process", delay=3600)
        assert (await client.cancel(job_id))["status"] == "cancelled"
        with pytest.raises(WrongState) as wrong:
            await client.cancel(job_id)
        assert isinstance(wrong.value, AsyncJobsError) and wrong.value.code == "wrong_state"
        assert "WrongState(" in repr(wrong.value)

    async with AsyncJobsClient(url, "wrong-token") as client:
        with pytest.raises(Unauthorized):
            await client.list()


async def test_manual_retry_on_the_same_warm_worker(tmp_path: Path) -> None:
    # One pool worker: the retry's attempt lands on the worker that ran the first one.
    workers = {"max": 1, "isolation": "pool", "max_jobs_per_worker": 1000, "kill_grace": 0.5}
    async with in_process(tmp_path, workers=workers) as env:
        url = str(env.http.make_url("")).rstrip("/")
        async with AsyncJobsClient(url, env.host.token) as client:
            job_id = await client.submit("UserLoginService", "handle", [""])
            assert (await client.wait(job_id, 20))["status"] == "failed"
            await client.retry(job_id)
            job = await client.wait(job_id, 20)
    assert job["status"] == "failed"
    assert [(a["outcome"], a["error"]["type"]) for a in job["attempt_history"]] == [
        ("failed", "ValueError"), ("failed", "ValueError")]


# -- the lifecycle, end to end -------------------------------------------------------------------

async def test_submit_wait_completed_with_result(client: AsyncJobsClient) -> None:
    job_id = await client.submit("SampleJob", "process", ["a", "b"], priority="high")
    job = await asyncio.wait_for(client.wait(job_id, 20), 30)
    assert set(job) == JOB_KEYS
    assert job["status"] == "completed"
    assert job["result"] == {"processed": ["a", "b"], "joined": "a,b"}
    assert job["priority"] == "high"
    assert [a["outcome"] for a in job["attempt_history"]] == ["completed"]
    assert set(job["attempt_history"][0]) == ATTEMPT_KEYS
    assert job["created_at"].endswith("Z") and len(job["created_at"]) == 24


async def test_an_async_job_and_submit_job(served: ServedHost) -> None:
    job_id = await submit_job("LessonEndedService", "handle", ["maths"], url=served.url,
                              token=served.token)
    async with served.client() as client:
        job = await client.wait(job_id, 20)
    assert (job["status"], job["result"]) == ("completed", {"ended": "maths"})
    assert "lesson ended: maths" in job["attempt_history"][0]["output"]


def test_submit_job_sync_finds_the_host_through_the_config(
        served: ServedHost, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("ASYNCJOBS_")]:
        monkeypatch.delenv(name)
    job_id = submit_job_sync("UserLogoutService", "handle", ["ann"], config=served.config)

    async def wait() -> dict[str, Any]:
        async with AsyncJobsClient(config=served.config) as client:
            return await client.wait(job_id, 20)

    job = asyncio.run(wait())
    assert (job["status"], job["result"], job["priority"]) == ("completed",
                                                               {"logged_out": "ann"}, "low")


async def test_a_failing_job_ends_failed_with_its_history(client: AsyncJobsClient) -> None:
    job_id = await client.submit("UserLoginService", "handle", [""])
    job = await client.wait(job_id, 20)
    assert job["status"] == "failed"
    assert job["error"] == {"type": "ValueError", "message": "user must not be empty"}
    (attempt,) = job["attempt_history"]  # no_retry_on ValueError: one attempt only
    assert attempt["outcome"] == "failed"
    assert attempt["error"]["type"] == "ValueError"
    assert "raise ValueError" in attempt["error"]["traceback"]


async def test_retries_then_manual_retry(client: AsyncJobsClient) -> None:
    # FlakyJob fails `failures` times (counted in a file), max_attempts 5 in config.json.
    job_id = await client.submit("FlakyJob", "run", kwargs={"key": "manual", "failures": 5})
    job = await client.wait(job_id, 30)
    assert job["status"] == "failed"
    assert job["attempts"] == 5
    assert [a["outcome"] for a in job["attempt_history"]] == ["failed"] * 5
    assert all(a["error"]["type"] == "ConnectionError" for a in job["attempt_history"])

    retried = await client.retry(job_id)
    assert retried["status"] in ("pending", "running", "completed")
    job = await client.wait(job_id, 30)
    assert job["status"] == "completed"
    assert job["result"] == {"succeeded_after": 5}
    assert [a["outcome"] for a in job["attempt_history"]] == ["failed"] * 5 + ["completed"]


async def test_cancel_a_pending_delayed_job(client: AsyncJobsClient) -> None:
    job_id = await client.submit("LessonEndedService", "handle", ["later"], delay=3600)
    assert (await client.get(job_id))["status"] == "pending"
    job = await client.cancel(job_id)
    assert job["status"] == "cancelled"
    assert job["attempt_history"] == []
    with pytest.raises(WrongState):
        await client.cancel(job_id)


async def test_cancel_a_running_job_kills_its_worker(client: AsyncJobsClient,
                                                     served: ServedHost) -> None:
    pidfile = served.directory / "cancel-running.pid"
    job_id = await client.submit("PidJob", "sleep", [str(pidfile), 60])
    async with asyncio.timeout(15):
        while not pidfile.exists() or not pidfile.read_text():
            await asyncio.sleep(0.02)
    pid = int(pidfile.read_text())
    assert pid_alive(pid)
    assert (await client.get(job_id))["status"] == "running"

    started = time.monotonic()
    job = await client.cancel(job_id)
    assert job["status"] == "cancelled"
    assert [a["outcome"] for a in job["attempt_history"]] == ["cancelled"]
    assert time.monotonic() - started < 10
    async with asyncio.timeout(5):
        while pid_alive(pid):
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)
    assert (await client.get(job_id))["status"] == "cancelled", "a cancelled job is not retried"


async def test_cancel_a_running_slow_job(client: AsyncJobsClient) -> None:
    job_id = await client.submit("SlowJob", "run", kwargs={"seconds": 30, "steps": 300})
    async with asyncio.timeout(15):
        while (job := await client.get(job_id))["progress"] is None:
            await asyncio.sleep(0.05)
    assert job["status"] == "running"
    assert job["progress"]["message"].startswith("step ")
    job = await client.cancel(job_id)
    assert job["status"] == "cancelled"
    assert job["attempt_history"][-1]["outcome"] == "cancelled"


async def test_list_filters_and_pages(client: AsyncJobsClient) -> None:
    ids = [await client.submit("LessonStartedService", "handle", [f"l{i}"], delay=3600)
           for i in range(5)]
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        jobs, cursor = await client.list(cls="LessonStartedService", limit=2, cursor=cursor)
        pages += 1
        assert len(jobs) <= 2
        assert all(set(j) == JOB_KEYS - {"attempt_history"} for j in jobs)
        seen += [j["id"] for j in jobs]
        if cursor is None:
            break
    assert pages == 3
    assert seen == sorted(ids, reverse=True), "newest first, each job once"

    pending, _ = await client.list(status="pending", cls="LessonStartedService")
    assert sorted(j["id"] for j in pending) == ids
    await client.cancel(ids[0])
    cancelled, _ = await client.list(status="cancelled", cls="LessonStartedService")
    assert [j["id"] for j in cancelled] == [ids[0]]
    assert (await client.list(status="completed", cls="LessonStartedService"))[0] == []


async def test_chain_unique_key_and_batch(client: AsyncJobsClient) -> None:
    first = await client.submit("SampleJob", "process", ["one"], unique_key="chain-test",
                                then=[("SampleJob", "process", ["two"])])
    again = await client.submit_info("SampleJob", "process", ["one"], unique_key="chain-test")
    assert again == {"id": first, "status": again["status"], "duplicate": True}
    job = await client.wait(first, 20)
    assert job["status"] == "completed"
    chained, _ = await client.list(cls="SampleJob", limit=20)
    step = next(j for j in chained if j["chain_id"] == job["chain_id"] and j["id"] != first)
    step = await client.wait(step["id"], 20)
    assert step["result"]["previous"] == {"processed": ["one"], "joined": "one"}

    ids = await client.submit_batch([{"class": "UserLogoutService", "method": "handle",
                                      "args": [f"u{i}"]} for i in range(3)])
    assert len(ids) == 3 and ids == sorted(ids)
    results = [(await client.wait(i, 20))["result"] for i in ids]
    assert results == [{"logged_out": f"u{i}"} for i in range(3)]


async def test_logs_and_stats(client: AsyncJobsClient) -> None:
    ok = await client.submit("LessonCreatedService", "handle", ["logs"])
    bad = await client.submit("UserLoginService", "handle", [""])
    await client.wait(ok, 20)
    await client.wait(bad, 20)

    lines = await client.logs(ok)
    assert lines and all(f" job={ok} " in line for line in lines)
    assert any("status=completed" in line for line in lines)
    assert any(f"job={bad}" in line for line in await client.logs(lines=500))
    errors = await client.logs(errors=True, lines=500)
    assert any(f"job={bad} " in line and "ValueError" in line for line in errors)
    assert any("Traceback" in line for line in errors)
    assert len(await client.logs(lines=1)) == 1

    stats = await client.stats()
    assert set(stats) == {"counts", "classes", "throughput", "workers", "uptime", "store"}
    assert stats["store"] == "sqlite"
    assert stats["counts"]["completed"] >= 1 and stats["counts"]["failed"] >= 1
    assert stats["classes"]["LessonCreatedService"]["completed"] >= 1
    assert stats["workers"]["max"] == 4
    assert (await client.health())["status"] == "ok"


async def test_events_deliver_state_changes_in_order(client: AsyncJobsClient) -> None:
    statuses: list[str] = []
    async with client.events() as stream:
        job_id = await client.submit("LessonCreatedService", "handle", ["sse"])
        async with asyncio.timeout(15):
            async for event in stream:
                if event.get("type") == "job" and event.get("id") == job_id:
                    statuses.append(str(event["status"]))
                    if event["status"] == "completed":
                        break
    assert statuses == ["pending", "running", "completed"]


async def test_events_carry_only_the_public_types(client: AsyncJobsClient) -> None:
    """The host's own signals ("due" for each stored job, "cancel" to the host running one)
    travel on the same notifier, but a client is sent only job, progress and overflow."""
    kinds: set[str] = set()
    async with client.events() as stream:
        later = await client.submit("LessonEndedService", "handle", ["later"], delay=3600)
        running = await client.submit("SlowJob", "run", [30, 30])
        async with asyncio.timeout(15):
            async for event in stream:
                kinds.add(str(event.get("type")))
                if event.get("id") == running and event.get("status") == "running":
                    await client.cancel(running)
                if event.get("id") == running and event.get("status") == "cancelled":
                    break
    await client.cancel(later)
    assert kinds <= {"job", "progress"}, kinds


async def test_wait_returns_an_unfinished_job_when_its_timeout_passes(
        client: AsyncJobsClient) -> None:
    job_id = await client.submit("LessonEndedService", "handle", ["much later"], delay=3600)
    started = time.monotonic()
    job = await client.wait(job_id, 0.3)
    assert job["status"] == "pending"
    assert 0.25 < time.monotonic() - started < 5
    await client.cancel(job_id)


async def test_login_link_is_a_full_url(client: AsyncJobsClient, served: ServedHost) -> None:
    link = await client.login_link()
    assert link.startswith(served.url + "/login?code=")


def test_clean_env_drops_asyncjobs_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASYNCJOBS_URL", "http://x")
    assert "ASYNCJOBS_URL" not in clean_env()
