"""The control API's guards and refusals (§5): token, Host, Origin, allow-list, bad input.

In-process: a real :class:`Host` (store, dispatcher, workers) behind aiohttp's test server.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from serve_fixture import InProcess, in_process


@pytest.fixture
async def inprocess(tmp_path: Path) -> AsyncIterator[InProcess]:
    async with in_process(tmp_path) as env:
        yield env


SUBMIT = {"class": "SampleJob", "method": "process", "args": ["a"]}


async def call(env: InProcess, method: str, path: str, body: Any = None, *,
               raw: bytes | io.BytesIO | None = None, headers: dict[str, str] | None = None,
               auth: bool = True) -> tuple[int, Any]:
    sent = dict(env.auth if auth else {}, **(headers or {}))
    data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
    async with env.http.request(method, path, data=data, headers=sent) as response:
        payload = await response.read()
        content_type = response.headers.get("Content-Type", "")
        return response.status, orjson.loads(payload) if "json" in content_type else payload


def error_code(body: Any) -> str:
    assert set(body) == {"error"}, body
    assert {"code", "message"} <= set(body["error"]) <= {"code", "message", "details"}, body
    assert body["error"]["message"]
    return str(body["error"]["code"])


# -- authentication and browser guards --------------------------------------------------------

async def test_no_token_is_401(inprocess: InProcess) -> None:
    status, body = await call(inprocess, "GET", "/api/jobs", auth=False)
    assert (status, error_code(body)) == (401, "unauthorized")
    status, body = await call(inprocess, "POST", "/api/jobs", SUBMIT, auth=False)
    assert (status, error_code(body)) == (401, "unauthorized")


@pytest.mark.parametrize("header", ["Bearer wrong", "Bearer ", "Basic abc", "bearer",
                                    "Token x"])
async def test_wrong_token_is_401(inprocess: InProcess, header: str) -> None:
    status, body = await call(inprocess, "GET", "/api/stats", auth=False,
                              headers={"Authorization": header})
    assert (status, error_code(body)) == (401, "unauthorized")


async def test_health_needs_no_token_and_tells_no_secret(inprocess: InProcess) -> None:
    status, body = await call(inprocess, "GET", "/api/health", auth=False)
    assert status == 200
    assert body == {"status": "ok", "accepting": True}
    assert inprocess.host.token not in orjson.dumps(body).decode()


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8765", "127.0.0.1.evil.com",
                                  "localhost.evil.com:80"])
async def test_non_loopback_host_header_is_403_bad_host(inprocess: InProcess,
                                                        host: str) -> None:
    status, body = await call(inprocess, "GET", "/api/jobs", headers={"Host": host})
    assert (status, error_code(body)) == (403, "bad_host")
    # Even the public health check: a rebinding page must not learn the host is there.
    status, body = await call(inprocess, "GET", "/api/health", headers={"Host": host})
    assert (status, error_code(body)) == (403, "bad_host")


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "https://127.0.0.1.evil.com",
                                    "http://localhost:1"])
async def test_cross_site_origin_on_post_is_403_bad_origin(inprocess: InProcess,
                                                           origin: str) -> None:
    status, body = await call(inprocess, "POST", "/api/jobs", SUBMIT,
                              headers={"Origin": origin})
    assert (status, error_code(body)) == (403, "bad_origin")
    assert (await inprocess.host.list_jobs()).jobs == [], "a refused request stored a job"


async def test_same_origin_post_is_accepted(inprocess: InProcess) -> None:
    origin = str(inprocess.http.make_url("")).rstrip("/")
    status, body = await call(inprocess, "POST", "/api/jobs", SUBMIT, headers={"Origin": origin})
    assert status == 201, body


async def test_token_file_is_private(inprocess: InProcess) -> None:
    mode = stat.S_IMODE((inprocess.host.data_dir / "token").stat().st_mode)
    assert mode == 0o600


# -- the allow-list ----------------------------------------------------------------------------

REFUSED_CLASSES = ["os", "jobs.lessons.Foo", "__import__", "../x", "jobs.demo.SlowJob",
                   "probe.Probe", "probe", "Unlisted", "", "_Probe"]
REFUSED_METHODS = ["__init__", "_private", "__class__", "__dict__", "missing", "run.__globals__",
                   ""]


async def test_names_outside_the_allow_list_are_refused_before_any_import(
        inprocess: InProcess) -> None:
    marker = inprocess.project / "probe.imported"
    bodies: list[dict[str, Any]] = [{"class": c, "method": "run"} for c in REFUSED_CLASSES]
    bodies += [{"class": "Probe", "method": m} for m in REFUSED_METHODS]
    bodies += [{"class": "SampleJob", "method": "process",
                "then": [{"class": "Probe", "method": "_private"}]}]
    for body in bodies:
        status, answer = await call(inprocess, "POST", "/api/jobs", body)
        assert (status, error_code(answer)) == (403, "not_allowed"), body
        status, answer = await call(inprocess, "POST", "/api/jobs/batch", {"jobs": [body]})
        assert (status, error_code(answer)) == (403, "not_allowed"), body
    await asyncio.sleep(0.2)  # would a worker have picked anything up?
    assert not marker.exists()
    assert "probe" not in sys.modules
    assert (await inprocess.host.list_jobs()).jobs == []

    # The control: the allow-listed method runs, in a worker, and so imports the module.
    status, answer = await call(inprocess, "POST", "/api/jobs", {"class": "Probe",
                                                                "method": "run"})
    assert status == 201
    job = await inprocess.host.wait(answer["id"], 15)
    assert (job.status, job.result) == ("completed", "probed")
    assert marker.exists()
    assert "probe" not in sys.modules, "the host itself never imports job code"


# -- malformed, invalid and oversized input ----------------------------------------------------

async def test_oversized_body_is_413(inprocess: InProcess) -> None:
    limit = inprocess.host.settings.api.max_body_bytes
    body = orjson.dumps({**SUBMIT, "args": ["x" * (limit + 10)]})
    status, answer = await call(inprocess, "POST", "/api/jobs", raw=io.BytesIO(body))
    assert (status, error_code(answer)) == (413, "too_large")


@pytest.mark.parametrize("raw", [b"{", b"not json", b"", b"{'class': 1}", b"\xff\xfe",
                                 b"[1, 2", b"NaN"])
async def test_malformed_json_is_400(inprocess: InProcess, raw: bytes) -> None:
    status, answer = await call(inprocess, "POST", "/api/jobs", raw=raw)
    assert (status, error_code(answer)) == (400, "bad_request")


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_body_that_does_not_match_its_content_encoding_is_400(
        inprocess: InProcess, encoding: str) -> None:
    status, answer = await call(inprocess, "POST", "/api/jobs", SUBMIT,
                                headers={"Content-Encoding": encoding})
    assert (status, error_code(answer)) == (400, "bad_request")


async def test_a_gzipped_body_is_fine(inprocess: InProcess) -> None:
    status, answer = await call(inprocess, "POST", "/api/jobs",
                                raw=gzip.compress(orjson.dumps(SUBMIT)),
                                headers={"Content-Encoding": "gzip"})
    assert status == 201, answer


@pytest.mark.parametrize("raw", [b"[]", b"1", b'"SampleJob"', b"null"])
async def test_a_body_that_is_not_an_object_is_400(inprocess: InProcess, raw: bytes) -> None:
    status, answer = await call(inprocess, "POST", "/api/jobs", raw=raw)
    assert (status, error_code(answer)) == (400, "bad_request")


@pytest.mark.parametrize("extra", [
    {"args": "a,b"}, {"args": {"a": 1}}, {"kwargs": []}, {"kwargs": "x"},
    {"priority": "urgent"}, {"priority": 1}, {"delay": "soon"}, {"delay": -1},
    {"delay": True}, {"run_at": "yesterday"}, {"run_at": 5}, {"delay": 1, "run_at":
                                                               "2030-01-01T00:00:00Z"},
    {"timeout": 0}, {"timeout": "1"}, {"max_attempts": 0}, {"max_attempts": 1.5},
    {"max_attempts": 1001}, {"then": "SampleJob"}, {"then": [1]},
    {"unique_key": ""}, {"unique_key": 7}, {"unexpected": 1},
])
async def test_wrong_field_types_are_422(inprocess: InProcess, extra: dict[str, Any]) -> None:
    status, answer = await call(inprocess, "POST", "/api/jobs", {**SUBMIT, **extra})
    assert (status, error_code(answer)) == (422, "invalid_field"), extra


@pytest.mark.parametrize("body", [{"method": "process"}, {"class": "SampleJob"},
                                  {"class": 1, "method": "process"},
                                  {"class": "SampleJob", "method": ["process"]}])
async def test_missing_or_mistyped_names_are_422(inprocess: InProcess,
                                                 body: dict[str, Any]) -> None:
    status, answer = await call(inprocess, "POST", "/api/jobs", body)
    assert (status, error_code(answer)) == (422, "invalid_field")


@pytest.mark.parametrize("body", [{}, {"jobs": {}}, {"jobs": []}, {"jobs": [SUBMIT], "x": 1}])
async def test_bad_batches_are_422(inprocess: InProcess, body: dict[str, Any]) -> None:
    status, answer = await call(inprocess, "POST", "/api/jobs/batch", body)
    assert (status, error_code(answer)) == (422, "invalid_field")


async def test_a_batch_is_all_or_nothing(inprocess: InProcess) -> None:
    status, answer = await call(inprocess, "POST", "/api/jobs/batch",
                                {"jobs": [SUBMIT, {**SUBMIT, "priority": "urgent"}]})
    assert (status, error_code(answer)) == (422, "invalid_field")
    assert (await inprocess.host.list_jobs()).jobs == []


@pytest.mark.parametrize("query", ["status=done", "limit=0", "limit=x", "limit=501",
                                   "cursor=abc", "cursor=-1"])
async def test_bad_list_filters_are_422(inprocess: InProcess, query: str) -> None:
    status, answer = await call(inprocess, "GET", f"/api/jobs?{query}")
    assert (status, error_code(answer)) == (422, "invalid_field")


# -- unknown jobs and wrong states -------------------------------------------------------------

@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/api/jobs/999"), ("POST", "/api/jobs/999/cancel"),
    ("POST", "/api/jobs/999/retry"), ("GET", "/api/jobs/999/wait?timeout=0"),
])
async def test_unknown_job_is_404(inprocess: InProcess, method: str, path: str) -> None:
    status, answer = await call(inprocess, method, path)
    assert (status, error_code(answer)) == (404, "not_found")


@pytest.mark.parametrize("path", ["/api/jobs/abc", "/api/jobs/0", "/api/jobs/-3",
                                  "/api/jobs/99999999999999999999999"])
async def test_bad_job_ids_are_422(inprocess: InProcess, path: str) -> None:
    status, answer = await call(inprocess, "GET", path)
    assert (status, error_code(answer)) == (422, "invalid_field")


async def test_unknown_route_is_a_json_404(inprocess: InProcess) -> None:
    status, answer = await call(inprocess, "GET", "/api/nothing-here")
    assert (status, error_code(answer)) == (404, "not_found")


async def test_cancel_of_a_finished_job_is_409(inprocess: InProcess) -> None:
    status, answer = await call(inprocess, "POST", "/api/jobs", {**SUBMIT, "delay": 3600})
    assert status == 201
    job_id = answer["id"]
    status, job = await call(inprocess, "POST", f"/api/jobs/{job_id}/cancel")
    assert (status, job["status"]) == (200, "cancelled")
    status, answer = await call(inprocess, "POST", f"/api/jobs/{job_id}/cancel")
    assert (status, error_code(answer)) == (409, "wrong_state")

    status, answer = await call(inprocess, "POST", "/api/jobs", SUBMIT)
    completed = await inprocess.host.wait(answer["id"], 15)
    assert completed.status == "completed"
    status, answer = await call(inprocess, "POST", f"/api/jobs/{completed.id}/cancel")
    assert (status, error_code(answer)) == (409, "wrong_state")
    status, answer = await call(inprocess, "POST", f"/api/jobs/{completed.id}/retry")
    assert (status, error_code(answer)) == (409, "wrong_state")


async def test_retry_of_a_pending_job_is_409(inprocess: InProcess) -> None:
    status, answer = await call(inprocess, "POST", "/api/jobs", {**SUBMIT, "delay": 3600})
    status, answer = await call(inprocess, "POST", f"/api/jobs/{answer['id']}/retry")
    assert (status, error_code(answer)) == (409, "wrong_state")


@pytest.mark.parametrize("query", ["timeout=x", "timeout=-1", "timeout=4000", "timeout=nan"])
async def test_bad_wait_timeouts_are_422(inprocess: InProcess, query: str) -> None:
    status, answer = await call(inprocess, "POST", "/api/jobs", {**SUBMIT, "delay": 3600})
    status, answer = await call(inprocess, "GET", f"/api/jobs/{answer['id']}/wait?{query}")
    assert (status, error_code(answer)) == (422, "invalid_field")


@pytest.mark.parametrize("query", ["file=secrets", "file=../token", "lines=0", "lines=x",
                                   "job=abc"])
async def test_bad_log_queries_are_422(inprocess: InProcess, query: str) -> None:
    status, answer = await call(inprocess, "GET", f"/api/logs?{query}")
    assert (status, error_code(answer)) == (422, "invalid_field")
