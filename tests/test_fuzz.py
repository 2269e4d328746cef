"""Fuzzing the two inputs a user or a job controls besides the API: the worker's result
channel (a malicious job writes to it directly) and the config loader.

* Channel, live: a job finds the channel fd (the pipe its worker dup'd from its original
  stdout) and writes garbage; the attempt ends ``crashed`` with a ``ProtocolError`` and the
  host carries on.  Channel, in-process: hypothesis feeds random lines to
  ``protocol.decode``, which may only return a message or raise ``ProtocolError``.
* Config: hypothesis feeds random JSON values to ``parse_settings`` and random bytes to
  ``load_settings``; the only exception allowed out is ``ConfigError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from faultjobs.live import LiveServe, fault_classes, health, submit, wait_job, write_project
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncjobs.config import load_settings, parse_settings
from asyncjobs.errors import ConfigError
from asyncjobs.workers.protocol import Began, Done, Progress, ProtocolError, Skipped, decode

MAX_RESULT = 65536
MAX_OUTPUT = 2000
# What the host's channel reader accepts per line (see WorkerProcess.spawn).
LINE_LIMIT = MAX_RESULT * 2 + MAX_OUTPUT * 6 + (1 << 20)

# -- the channel, live -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServe]:
    config = write_project(tmp_path_factory.mktemp("channel"),
                           fault_classes("Faults", "Channel"),
                           workers={"max": 2}, max_result_bytes=MAX_RESULT,
                           max_output_bytes=MAX_OUTPUT)
    with LiveServe(config) as live:
        yield live
    assert "Traceback" not in live.log(), live.log()[-5000:]


CHANNEL_GARBAGE = [
    ("random", 0, "not JSON"),
    ("invalid_json", 0, "not JSON"),
    ("nul", 0, "not JSON"),
    ("partial", 0, "not JSON"),  # runs into the worker's own answer on the same line
    ("not_object", 0, "message without a job id"),
    ("no_id", 0, "message without a job id"),
    ("unknown_type", 0, "unknown message type 'pwn'"),
    ("other_id", 0, "answered for a job it was not running"),
    ("forged_skip", 0, "answered a skip that was not asked"),
    ("bad_error", 0, "error is not an object"),
    ("bad_mro", 0, "error.mro is not a list of names"),
    ("gigantic", 4 * LINE_LIMIT, "larger than allowed"),
]


@pytest.mark.parametrize(("kind", "size", "words"), CHANNEL_GARBAGE,
                         ids=[c[0] for c in CHANNEL_GARBAGE])
async def test_garbage_on_the_channel_is_a_protocol_error_and_the_host_carries_on(
        serve: LiveServe, kind: str, size: int, words: str) -> None:
    async with aiohttp.ClientSession() as session:
        bad = await submit(session, serve, "Channel", "write", kind, size)
        good = [await submit(session, serve, "Faults", "ok", i) for i in range(6)]
        bad_job, *good_jobs = await asyncio.gather(
            wait_job(session, serve, bad), *(wait_job(session, serve, g) for g in good))
        assert (await health(session, serve))["accepting"] is True
    attempts = bad_job["attempt_history"]
    assert [a["outcome"] for a in attempts] == ["crashed"], attempts
    assert attempts[0]["error"]["type"] == "ProtocolError"
    assert words in attempts[0]["error"]["message"]
    assert bad_job["status"] == "failed"
    for job in good_jobs:
        assert [a["outcome"] for a in job["attempt_history"]] == ["completed"], job


# -- the channel, in-process -----------------------------------------------------------------

JSON_SCALARS = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=20)
MESSAGE_KEYS = st.sampled_from(["t", "id", "ok", "result", "error", "retry", "delay", "fail",
                                "output", "fraction", "message", "skipped", "mro", "type",
                                "traceback"])
MESSAGES = st.fixed_dictionaries(
    {"t": st.sampled_from(["done", "progress", "skipped", "started", "job", "skip", ""])
     | JSON_SCALARS,
     "id": st.integers(-5, 2**63) | JSON_SCALARS},
    optional={"ok": JSON_VALUES, "result": JSON_VALUES, "retry": JSON_VALUES,
              "delay": JSON_VALUES, "fail": JSON_VALUES, "output": JSON_VALUES,
              "fraction": JSON_VALUES, "message": JSON_VALUES, "skipped": JSON_VALUES,
              "at": JSON_VALUES,
              "error": JSON_VALUES | st.dictionaries(MESSAGE_KEYS, JSON_VALUES, max_size=5)})


def _check_decoded(line: bytes) -> None:
    try:
        message = decode(line)
    except ProtocolError:
        return
    assert isinstance(message, Began | Progress | Skipped | Done)
    if isinstance(message, Began):
        assert math.isfinite(message.at)
    if isinstance(message, Progress):
        assert 0.0 <= message.fraction <= 1.0
    if isinstance(message, Done) and message.outcome.retry_delay is not None:
        assert message.outcome.retry_delay >= 0


@settings(max_examples=150, deadline=None, database=None)
@given(MESSAGES)
def test_decode_of_message_shaped_json_returns_a_message_or_protocol_error(
        message: dict[str, Any]) -> None:
    _check_decoded(orjson.dumps(message) + b"\n")


@settings(max_examples=150, deadline=None, database=None)
@given(st.binary(max_size=300) | JSON_VALUES.map(orjson.dumps))
def test_decode_of_random_bytes_returns_a_message_or_protocol_error(line: bytes) -> None:
    _check_decoded(line)


# -- the config loader -----------------------------------------------------------------------

SECTIONS = {
    "retry": ["max_attempts", "base_delay", "factor", "max_delay", "jitter"],
    "workers": ["max", "isolation", "max_jobs_per_worker", "kill_grace"],
    "api": ["host", "port", "max_body_bytes"],
    "logs": ["max_bytes", "backups"],
    "retention": ["completed_days", "failed_days"],
}
TOP_SCALARS = ["timeout", "data_dir", "durability", "shutdown_grace", "max_interruptions",
               "max_result_bytes", "max_output_bytes"]
JOB_KEYS = ["module", "methods", "priority", "timeout", "max_attempts", "retry_on",
            "no_retry_on", "concurrency", "isolation"]
# Every JSON value, with integers beyond what a double holds: valid JSON all the same.
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=4),
    max_leaves=25)
NAMES = st.text(string.ascii_letters + "_.0", min_size=1, max_size=12)


def _section(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(keys), ANY_JSON, max_size=len(keys))


JOB_ENTRY = st.dictionaries(st.sampled_from(JOB_KEYS), ANY_JSON | st.lists(NAMES, max_size=3),
                            max_size=6)
SCHEDULE = st.dictionaries(st.sampled_from(["class", "method", "args", "kwargs", "cron",
                                            "every"]),
                           ANY_JSON | st.sampled_from(["A", "run", "* * * * *", "61 * * * *",
                                                       "*/0 * * * *", "1-0 * * * *"]),
                           max_size=6)
CONFIG_DOCS = st.fixed_dictionaries({}, optional={
    "jobs": st.dictionaries(NAMES, JOB_ENTRY, max_size=3) | ANY_JSON,
    "schedules": st.dictionaries(NAMES, SCHEDULE, max_size=2) | ANY_JSON,
    **{name: _section(keys) | ANY_JSON for name, keys in SECTIONS.items()},
    **{name: ANY_JSON for name in TOP_SCALARS},
})


def _parse_only_config_errors(raw: object, base_dir: Path) -> None:
    try:
        parse_settings(raw, base_dir=base_dir)
    except ConfigError as exc:
        assert exc.message.startswith("config ")


@settings(max_examples=200, deadline=None, database=None)
@given(ANY_JSON)
def test_parse_settings_of_any_json_value_raises_only_config_error(raw: object) -> None:
    _parse_only_config_errors(raw, Path("/nonexistent-base"))


@settings(max_examples=200, deadline=None, database=None)
@given(CONFIG_DOCS)
def test_parse_settings_of_config_shaped_documents_raises_only_config_error(
        raw: dict[str, Any]) -> None:
    _parse_only_config_errors(raw, Path("/nonexistent-base"))


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400))
def test_load_settings_of_random_bytes_raises_only_config_error(tmp_path: Path,
                                                                data: bytes) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(data)
    with contextlib.suppress(ConfigError):
        load_settings(path, env={})


def _json_bytes(doc: dict[str, Any]) -> bytes | None:
    try:
        return orjson.dumps(doc)
    except TypeError:  # an integer orjson cannot write: not a file a user could have
        return None


@settings(max_examples=120, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(CONFIG_DOCS.map(_json_bytes).filter(lambda b: b is not None),
       st.dictionaries(st.sampled_from(["ASYNCJOBS_MAX_ATTEMPTS", "ASYNCJOBS_RETRY_DELAY",
                                        "ASYNCJOBS_PORT", "ASYNCJOBS_HOST",
                                        "ASYNCJOBS_WORKERS", "ASYNCJOBS_DATA_DIR",
                                        "ASYNCJOBS_DURABILITY"]),
                       st.text(max_size=12) | st.integers().map(str), max_size=4))
def test_load_settings_of_config_files_and_env_raises_only_config_error(
        tmp_path: Path, data: bytes, env: dict[str, str]) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(data)
    with contextlib.suppress(ConfigError):
        load_settings(path, env=env)


@pytest.mark.parametrize("doc", [
    {"timeout": 10**400},
    {"retry": {"base_delay": 10**400}},
    {"workers": {"kill_grace": -(10**400)}},
    {"jobs": {"A": {"methods": ["run"], "timeout": 10**309}}},
], ids=["timeout", "retry.base_delay", "workers.kill_grace", "jobs.A.timeout"])
def test_an_integer_too_large_for_a_float_is_a_config_error(doc: dict[str, Any]) -> None:
    """Valid JSON (Python's json module reads it): found by the fuzzer above."""
    with pytest.raises(ConfigError):
        parse_settings(doc, base_dir=Path("/nonexistent-base"))


@pytest.mark.parametrize("doc", [{"data_dir": "data\u0000x"}, {"api": {"host": "lo\u0000"}}],
                         ids=["data_dir", "api.host"])
def test_a_nul_character_in_a_path_or_host_is_a_config_error(doc: dict[str, Any]) -> None:
    """orjson reads ``\\u0000`` fine; the host would die later with a ValueError."""
    with pytest.raises(ConfigError):
        parse_settings(doc, base_dir=Path("/nonexistent-base"))
