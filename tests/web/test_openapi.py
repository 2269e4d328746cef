"""``/api/openapi.json`` stays true: its paths are the app's routes, and real responses
validate against its schemas (JSON Schema 2020-12, as OpenAPI 3.1 uses)."""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator, FormatChecker  # type: ignore[import-untyped]
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from serve_fixture import InProcess, in_process

from asyncjobs.web.openapi import OPENAPI

DOC_URI = "urn:asyncjobs:openapi"
REGISTRY: Registry[Any] = Registry().with_resource(
    DOC_URI, Resource.from_contents(OPENAPI, default_specification=DRAFT202012))
# The dashboard's HTML pages: served by the same app, but not part of the JSON API.
HTML_ROUTES = {("GET", "/"), ("GET", "/login"), ("GET", "/static/{name}")}
NOT_JSON = {"/api/events", "/metrics", "/api/openapi.json", "/api/backup"}  # backup: test_backup
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

formats = FormatChecker()


@formats.checks("date-time")  # type: ignore[untyped-decorator]
def _is_iso_ms(value: object) -> bool:
    # Stricter than RFC 3339: §6 promises UTC with milliseconds and a Z.
    return not isinstance(value, str) or bool(ISO_MS.match(value))


def _pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def validate(path: str, method: str, status: int, body: Any) -> None:
    """Validate ``body`` against the documented response of ``method path`` -> ``status``."""
    operation = OPENAPI["paths"][path][method.lower()]
    assert str(status) in operation["responses"], f"{method} {path} -> {status} undocumented"
    ref = (f"{DOC_URI}#/" + _pointer("paths", path, method.lower(), "responses", str(status),
                                     "content", "application/json", "schema"))
    validator = Draft202012Validator({"$ref": ref}, registry=REGISTRY, format_checker=formats)
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.path))
    assert not errors, f"{method} {path} -> {status}: " + "; ".join(
        f"{list(e.path)}: {e.message}" for e in errors[:5])


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[InProcess]:
    async with in_process(tmp_path) as running:
        yield running


def test_the_document_itself_is_well_formed() -> None:
    assert OPENAPI["openapi"].startswith("3.1")
    for name, schema in OPENAPI["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema)
        assert name[0].isupper()
    for path, item in OPENAPI["paths"].items():
        for method, operation in item.items():
            assert operation["operationId"], (method, path)
            assert operation["responses"], (method, path)
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path":
                    assert "{" + parameter["name"] + "}" in path


async def test_every_route_is_documented_and_every_documented_path_is_a_route(
        env: InProcess) -> None:
    routes = {(route.method, route.resource.canonical)
              for route in env.http.app.router.routes()
              if route.method != "HEAD" and route.resource is not None}
    documented = {(method.upper(), path) for path, item in OPENAPI["paths"].items()
                  for method in item}
    assert documented == routes - HTML_ROUTES
    assert routes >= HTML_ROUTES


async def test_served_document_is_the_module_document(env: InProcess) -> None:
    async with env.http.get("/api/openapi.json", headers=env.auth) as response:
        assert response.status == 200
        assert await response.json() == orjson.loads(orjson.dumps(OPENAPI))


async def send(env: InProcess, method: str, url: str, body: Any = None, *,
               auth: bool = True, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
    async with env.http.request(method, url, data=io.BytesIO(data) if data else None,
                                headers=env.auth if auth else {}) as response:
        return response.status, orjson.loads(await response.read())


async def test_real_responses_match_the_schemas(env: InProcess) -> None:
    checked: list[tuple[str, str, int]] = []

    async def check(method: str, path: str, url: str, expect: int, body: Any = None,
                    **options: Any) -> Any:
        status, answer = await send(env, method, url, body, **options)
        assert status == expect, (method, url, answer)
        validate(path, method, status, answer)
        checked.append((method, path, status))
        return answer

    jobs = "/api/jobs"
    one = "/api/jobs/{job_id}"
    ok = await check("POST", jobs, jobs, 201, {"class": "SampleJob", "method": "process",
                                               "args": ["a"],
                                               "then": [{"class": "SampleJob",
                                                         "method": "process"}]})
    bad = await check("POST", jobs, jobs, 201, {"class": "UserLoginService", "method": "handle",
                                                "args": [""]})
    slow = await check("POST", jobs, jobs, 201, {"class": "SlowJob", "method": "run",
                                                 "kwargs": {"seconds": 0.6, "steps": 3}})
    later = await check("POST", jobs, jobs, 201, {"class": "SampleJob", "method": "process",
                                                  "delay": 3600, "unique_key": "openapi"})
    await check("POST", jobs, jobs, 200, {"class": "SampleJob", "method": "process",
                                          "unique_key": "openapi"})
    await check("POST", "/api/jobs/batch", "/api/jobs/batch", 201,
                {"jobs": [{"class": "SampleJob", "method": "process"}] * 2})

    wait = "/api/jobs/{job_id}/wait"
    await check("GET", wait, f"/api/jobs/{ok['id']}/wait?timeout=20", 200)
    await check("GET", wait, f"/api/jobs/{bad['id']}/wait?timeout=20", 200)
    await check("GET", wait, f"/api/jobs/{later['id']}/wait?timeout=0", 200)
    for _ in range(100):  # a running job, with progress
        _, job = await send(env, "GET", f"/api/jobs/{slow['id']}")
        if job["progress"] is not None:
            break
        await env.host.wait(slow["id"], 0.02)
    await check("GET", one, f"/api/jobs/{slow['id']}", 200)
    await check("GET", wait, f"/api/jobs/{slow['id']}/wait?timeout=20", 200)
    for job_id in (ok["id"], bad["id"], later["id"]):
        await check("GET", one, f"/api/jobs/{job_id}", 200)
    await check("GET", jobs, jobs, 200)
    page = await check("GET", jobs, f"{jobs}?limit=2&status=completed", 200)
    await check("GET", jobs, f"{jobs}?limit=2&cursor={page['next_cursor']}", 200)
    await check("GET", jobs, f"{jobs}?class=SampleJob", 200)

    cancel, retry = "/api/jobs/{job_id}/cancel", "/api/jobs/{job_id}/retry"
    await check("POST", cancel, f"/api/jobs/{later['id']}/cancel", 200)
    await check("POST", retry, f"/api/jobs/{later['id']}/retry", 200)
    await check("POST", retry, f"/api/jobs/{bad['id']}/retry", 200)

    await check("GET", "/api/stats", "/api/stats", 200)
    await check("GET", "/api/logs", "/api/logs?lines=5", 200)
    await check("GET", "/api/logs", f"/api/logs?file=errors&job={bad['id']}", 200)
    await check("GET", "/api/health", "/api/health", 200, auth=False)
    await check("GET", "/api/schedules", "/api/schedules", 200)
    await check("GET", "/api/hosts", "/api/hosts", 200)
    await check("POST", "/api/prune", "/api/prune", 200)
    link = await check("POST", "/api/login-links", "/api/login-links", 201)
    code = link["path"].partition("code=")[2]
    await check("POST", "/api/sessions", "/api/sessions", 201, {"code": code}, auth=False)
    await check("POST", "/api/events/tickets", "/api/events/tickets", 201)
    await check("POST", "/api/sessions/revoke", "/api/sessions/revoke", 200)

    # Errors, each in the documented shape and under a documented status.
    await check("GET", jobs, jobs, 401, auth=False)
    await check("POST", jobs, jobs, 403, {"class": "os", "method": "system"})
    await check("POST", jobs, jobs, 400, raw=b"{nope")
    await check("POST", jobs, jobs, 422, {"class": "SampleJob", "method": "process",
                                          "priority": 3})
    await check("POST", jobs, jobs, 413, {"class": "SampleJob", "method": "process",
                                          "args": ["x" * 1_100_000]})
    await check("GET", one, "/api/jobs/99999", 404)
    await check("GET", one, "/api/jobs/x", 422)
    await check("POST", cancel, f"/api/jobs/{ok['id']}/cancel", 409)
    await check("POST", retry, f"/api/jobs/{ok['id']}/retry", 409)
    await check("GET", wait, f"/api/jobs/{ok['id']}/wait?timeout=-1", 422)
    await check("GET", "/api/logs", "/api/logs?file=token", 422)

    # Every documented JSON success response was met for real (the stream, the metrics text
    # and the document itself are checked elsewhere).
    successes = {(method.upper(), path, int(code)) for path, item in OPENAPI["paths"].items()
                 for method, operation in item.items() for code in operation["responses"]
                 if code.startswith("2") and path not in NOT_JSON}
    assert successes <= set(checked), successes - set(checked)
    errors = {status for _, _, status in checked if status >= 400}
    assert errors == {400, 401, 403, 404, 409, 413, 422}
