"""Random bodies and headers at ``POST /api/jobs`` of a real host: never a 5xx, the host
stays up, and the jobs stored before are untouched (§5, §9)."""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from serve_fixture import ServedHost, serve


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedHost]:
    with serve(tmp_path_factory.mktemp("fuzz")) as host:
        yield host


scalars = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)
names = st.sampled_from(["SampleJob", "UserLogoutService", "os", "__import__", "_SampleJob",
                         "jobs.sample.SampleJob", "../x", "", "SampleJob ", "sAmPlEjOb"])
methods = st.sampled_from(["process", "handle", "__init__", "_private", "__class__", ""])
numbers = st.one_of(st.integers(min_value=-5, max_value=10**12),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5))
times = st.one_of(st.datetimes().map(lambda d: d.isoformat()), st.text(max_size=30),
                  st.sampled_from(["2030-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "0", "Z"]))
step = st.fixed_dictionaries({"class": names | json_values, "method": methods | json_values},
                             optional={"args": json_values, "kwargs": json_values,
                                       "extra": json_values})
submit_like = st.fixed_dictionaries({}, optional={
    "class": names | json_values,
    "method": methods | json_values,
    "args": st.lists(json_values, max_size=3) | json_values,
    "kwargs": st.dictionaries(st.text(max_size=8), json_values, max_size=3) | json_values,
    "priority": st.sampled_from(["high", "medium", "low", "urgent"]) | json_values,
    "delay": numbers | json_values,
    "run_at": times | json_values,
    "timeout": numbers | json_values,
    "max_attempts": numbers | json_values,
    "then": st.lists(step, max_size=3) | json_values,
    "unique_key": st.text(max_size=250) | json_values,
    "surprise": json_values,
})


def _encode(value: Any) -> bytes:
    # The stdlib encoder: it also writes what orjson refuses (huge integers, NaN).
    return json.dumps(value).encode()


bodies = st.one_of(
    submit_like.map(_encode),
    json_values.map(_encode),
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    st.integers(min_value=1, max_value=3000).map(lambda n: b"[" * n + b"]" * n),  # deep nesting
    st.sampled_from([b"", b"{", b"NaN", b"\x00", b'{"class": "SampleJob", "method": "process"'
                     b', "args": [1e999]}', b'{"class": "SampleJob", "class": "os"}']),
)
header_text = st.text(alphabet=string.printable.strip("\r\n\t\x0b\x0c"), max_size=40)
headers = st.fixed_dictionaries({}, optional={
    "Content-Type": header_text | st.sampled_from(["application/json", "text/plain",
                                                   "multipart/form-data; boundary=x"]),
    "Authorization": header_text.map(lambda v: f"Bearer {v}"),
    "Origin": header_text,
    "Accept": header_text,
    "Content-Encoding": st.sampled_from(["gzip", "deflate", "br", "identity"]) | header_text,
    "X-Anything": header_text,
})


def snapshot(served: ServedHost, ids: list[int]) -> list[Any]:
    jobs = []
    for job_id in ids:
        status, body = served.request("GET", f"/api/jobs/{job_id}", headers=served.headers())
        assert status == 200
        jobs.append(json.loads(body))
    return jobs


def submit(served: ServedHost, body: dict[str, Any]) -> int:
    status, answer = served.request("POST", "/api/jobs", json.dumps(body).encode(),
                                    served.headers(**{"Content-Type": "application/json"}))
    assert status == 201, answer
    return int(json.loads(answer)["id"])


def test_random_submissions_never_break_the_host(served: ServedHost) -> None:
    ids = [submit(served, {"class": "SampleJob", "method": "process", "args": ["kept"]}),
           submit(served, {"class": "UserLoginService", "method": "handle", "args": [""]}),
           submit(served, {"class": "SampleJob", "method": "process", "delay": 86400,
                           "unique_key": "fuzz-kept"})]
    for job_id in ids[:2]:
        served.request("GET", f"/api/jobs/{job_id}/wait?timeout=20", headers=served.headers())
    before = snapshot(served, ids)
    assert [j["status"] for j in before] == ["completed", "failed", "pending"]
    seen: set[int] = set()

    @settings(max_examples=150, deadline=None, database=None)
    @given(body=bodies, extra=headers, authorised=st.booleans())
    def fuzz(body: bytes, extra: dict[str, str], authorised: bool) -> None:
        sent = {**(served.headers() if authorised else {}), **extra}
        status, answer = served.request("POST", "/api/jobs", body, sent)
        seen.add(status)
        assert status < 500, (status, answer[:300])
        if status >= 400:
            try:
                error = json.loads(answer)["error"]
            except ValueError:
                # aiohttp's HTTP parser refuses a body it cannot decode (Content-Encoding br
                # without Brotli; a broken deflate body that arrived with the headers) before
                # any middleware runs: a plain-text 400, the one non-JSON refusal.
                assert status == 400, (status, answer[:200])
                return
            assert {"code", "message"} <= set(error) <= {"code", "message", "details"}

    fuzz()
    assert not any(s >= 500 for s in seen)
    status, health = served.request("GET", "/api/health")
    assert (status, json.loads(health)["status"]) == (200, "ok")
    assert snapshot(served, ids) == before
    alive = submit(served, {"class": "SampleJob", "method": "process", "args": ["after"]})
    status, answer = served.request("GET", f"/api/jobs/{alive}/wait?timeout=20",
                                    headers=served.headers())
    assert json.loads(answer)["status"] == "completed"
    assert served.proc is not None and served.proc.poll() is None
