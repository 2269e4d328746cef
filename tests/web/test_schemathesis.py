"""Schemathesis against a live ``asyncjobs serve``: every operation of ``/api/openapi.json``,
with the bearer token, through all its phases (coverage, fuzzing, stateful).

Two runs, each bounded (``--max-examples``, ``--request-timeout``, a subprocess timeout):

* the document exactly as served: mostly refused input (names outside the allow-list,
  out-of-range fields), which must be a 4xx in the documented shape, never a 5xx;
* the same document with test-data hints (``class``/``method`` limited to an allow-listed
  job, ``wait`` capped at 1 s), so that submits succeed and the stateful phase drives get,
  cancel, retry and wait on real job ids.

The contract checks (no 5xx, status codes, content types and bodies as documented, schema-
invalid input refused, auth enforced) must pass.  Two further checks, about the document's
own accuracy, are reported by a separate test: a request the document calls valid must not be
refused (``positive_data_acceptance``), and a 405 must carry ``Allow`` (``unsupported_method``).

``/api/events`` is excluded from the runs (an endless event stream: every call would run into
the request timeout) and tested here by hand instead.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from faultjobs.live import LiveServe, fault_classes, submit, wait_job, write_project

MAX_EXAMPLES = 10
SEED = 20261122
# Checks for the document's own accuracy; everything else schemathesis reports is contract.
ACCURACY = {"RejectedPositiveData", "UnsupportedMethodResponse"}
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_headers_conformance,response_schema_conformance,negative_data_rejection,"
          "ignored_auth,use_after_free,ensure_resource_availability,"
          "positive_data_acceptance,unsupported_method")

pytestmark = pytest.mark.skipif(shutil.which("st", path=str(Path(sys.executable).parent))
                                is None, reason="schemathesis is not installed")


def _live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServe]:
    config = write_project(tmp_path_factory.mktemp("schemathesis"), fault_classes("Faults"),
                           workers={"max": 2})
    with LiveServe(config) as live:
        yield live
    assert "unexpected error serving" not in live.log(), live.log()[-5000:]


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServe]:
    yield from _live(tmp_path_factory)


@pytest.fixture(scope="module")
def served_alone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServe]:
    """The served run's own host: the hinted run's real jobs (some delayed for years) must
    not be in reach of the served run's ``wait`` calls, which have no timeout cap."""
    yield from _live(tmp_path_factory)


def start_schemathesis(serve: LiveServe, location: str, phases: str,
                       workdir: Path) -> subprocess.Popen[str]:
    """Start one ``st run`` writing its JSON report to ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    command = [
        str(Path(sys.executable).parent / "st"), "run", location, "--url", serve.url,
        "-H", f"Authorization: Bearer {serve.token}", "--checks", CHECKS,
        "--phases", phases, "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED),
        # 30 s: above the longest a cancel may wait for a running job to be recorded
        # (kill_grace + 10 s), which the stateful phase has hit; see docs/reliability.md.
        "--workers", "1", "--request-timeout", "30", "--max-failures", "50",
        "--exclude-path", "/api/events",
        "--report", "json", "--report-json-path", str(workdir / "report.json"),
    ]
    return subprocess.Popen(command, cwd=workdir, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish_schemathesis(proc: subprocess.Popen[str], workdir: Path) -> dict[str, Any]:
    try:
        output, _ = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        raise AssertionError(f"schemathesis ran over 150 s:\n{output[-5000:]}") from None
    report: dict[str, Any] = json.loads((workdir / "report.json").read_text())
    report["console"] = output[-20000:]
    return report


def hinted_document(document: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(document)
    submit_schema = doc["components"]["schemas"]["Submit"]["properties"]
    submit_schema["class"] = {"type": "string", "enum": ["Faults"]}
    submit_schema["method"] = {"type": "string", "enum": ["ok"]}
    # The host refuses a run_at over ten years ahead, which a schema cannot say of a time
    # relative to now: the fuzzer gets one that is in range (a year ahead) instead.
    ahead = dt.datetime.now(dt.UTC) + dt.timedelta(days=365)
    submit_schema["run_at"] = {"type": "string", "enum": [ahead.strftime("%Y-%m-%dT%H:%M:%SZ")]}
    step = doc["components"]["schemas"]["Step"]["properties"]
    step["class"] = {"type": "string", "enum": ["Faults"]}
    step["method"] = {"type": "string", "enum": ["ok"]}
    # Real jobs here may be delayed for years, and a wait on one without a timeout takes
    # the default 30 s, past the run's request timeout: the served run covers /wait.
    del doc["paths"]["/api/jobs/{job_id}/wait"]
    return doc


@pytest.fixture(scope="module")
def reports(serve: LiveServe, served_alone: LiveServe,
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("st")

    async def fetch() -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.get(
                f"{serve.url}/api/openapi.json", headers=serve.headers) as resp:
            assert resp.status == 200
            document: dict[str, Any] = await resp.json()
            return document

    document = asyncio.run(fetch())
    hinted = workdir / "hinted-openapi.json"
    hinted.write_text(json.dumps(hinted_document(document)))
    # The two runs go side by side; the served document gets the phases that probe input
    # validation, the hinted one those that need real jobs.
    runs = {
        "served": (served_alone, f"{served_alone.url}/api/openapi.json",
                   "examples,coverage,fuzzing"),
        "hinted": (serve, str(hinted), "fuzzing,stateful"),
    }
    procs = {name: start_schemathesis(host, location, phases, workdir / name)
             for name, (host, location, phases) in runs.items()}
    return {name: finish_schemathesis(proc, workdir / name) for name, proc in procs.items()}


def _summary(report: dict[str, Any], types: set[str] | None, exclude: set[str]) -> list[Any]:
    return [f for f in report["failures"]
            if (types is None or f["type"] in types) and f["type"] not in exclude]


@pytest.mark.parametrize("run", ["served", "hinted"])
def test_no_server_error_and_no_response_outside_the_schema(
        reports: dict[str, dict[str, Any]], run: str) -> None:
    report = reports[run]
    assert report["complete"], report["console"]
    assert report["operations"]["tested"] >= 14, report["operations"]
    assert report["test_cases"]["generated"] > 100
    failures = _summary(report, None, ACCURACY)
    assert failures == [], report["console"]
    assert report["errors"] == [], report["console"]


def test_the_hinted_run_reached_real_jobs(reports: dict[str, dict[str, Any]]) -> None:
    """The stateful phase must have had real ids to work on, or it proved little."""
    report = reports["hinted"]
    assert "POST /api/jobs" not in report["warnings"]["missing_test_data"]
    accepted = report["valid_rates"].get("POST /api/jobs", {})
    assert sum(phase.get("accepted", 0) for phase in accepted.values()) > 0, accepted


@pytest.mark.parametrize("run", ["served", "hinted"])
def test_the_document_accepts_what_it_promises_and_405s_carry_allow(
        reports: dict[str, dict[str, Any]], run: str) -> None:
    report = reports[run]
    failures = _summary(report, ACCURACY, set())
    assert failures == [], report["console"]


async def test_the_event_stream_serves_events_and_refuses_without_token(
        serve: LiveServe) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{serve.url}/api/events") as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "unauthorized"
        timeout = aiohttp.ClientTimeout(total=15)
        async with session.get(f"{serve.url}/api/events", headers=serve.headers,
                               timeout=timeout) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            assert (await resp.content.readline()).startswith(b": connected")
            job_id = await submit(session, serve, "Faults", "ok", 1)
            seen = b""
            async with asyncio.timeout(10):
                while f'"id":{job_id}'.encode() not in seen:
                    seen += await resp.content.readline()
            assert b"event: job" in seen
        assert (await wait_job(session, serve, job_id))["status"] == "completed"
