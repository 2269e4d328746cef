"""The allow-list and submit validation: refusals happen here, in the host, before any import."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import pytest
from fakes import SettingsFactory

from asyncjobs.config import Settings
from asyncjobs.errors import BadRequest, InvalidField, NotAllowed
from asyncjobs.models import Priority, iso
from asyncjobs.registry import check_allowed, parse_submit, unfound_modules
from asyncjobs.web.responses import status_of

NOW = 1_800_000_000.0
JOBS = {
    "Report": {"module": "jobs_fixture.testjobs", "methods": ["build", "send"],
               "priority": "high", "timeout": 30, "max_attempts": 7},
    "Ok": {"module": "jobs_fixture.testjobs", "methods": ["run"]},
}


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(jobs=JOBS, timeout=99, retry={"max_attempts": 4})


def submit(settings: Settings, **body: Any) -> Any:
    body.setdefault("class", "Ok")
    body.setdefault("method", "run")
    return parse_submit(settings, body, NOW)


def test_defaults_come_from_the_class_then_the_settings(settings: Settings) -> None:
    report = submit(settings, **{"class": "Report", "method": "send"})
    plain = submit(settings, args=["a"], kwargs={"k": 1})

    assert (report.priority, report.timeout, report.max_attempts) == (Priority.HIGH, 30.0, 7)
    assert (plain.priority, plain.timeout, plain.max_attempts) == (Priority.MEDIUM, 99.0, 4)
    assert (plain.args, plain.kwargs, plain.run_at) == (["a"], {"k": 1}, NOW)
    assert plain.then == [] and plain.unique_key is None


def test_submit_fields_override_the_defaults(settings: Settings) -> None:
    spec = submit(settings, priority="low", timeout=2.5, max_attempts=1, delay=30,
                  unique_key="k1")

    assert (spec.priority, spec.timeout, spec.max_attempts) == (Priority.LOW, 2.5, 1)
    assert spec.run_at == NOW + 30
    assert spec.unique_key == "k1"


def test_run_at_is_parsed_as_iso_utc(settings: Settings) -> None:
    assert submit(settings, run_at=iso(NOW + 60)).run_at == NOW + 60
    assert submit(settings, run_at="2027-01-15T08:01:00").run_at == NOW + 60  # naive = UTC


@pytest.mark.parametrize(
    ("cls", "method"),
    [
        ("Nope", "run"),
        ("_Ok", "run"),
        ("jobs_fixture.testjobs.Ok", "run"),  # dotted paths never resolve
        ("ok", "run"),
        ("Ok", "build"),  # a method listed for another class
        ("Ok", "_secret"),
        ("Ok", "__init__"),
        ("Ok", "__class__"),
        ("Ok", "run.__globals__"),
    ],
)
def test_names_outside_the_allow_list_are_refused_and_logged(
        settings: Settings, caplog: pytest.LogCaptureFixture, cls: str, method: str) -> None:
    with caplog.at_level(logging.WARNING, logger="asyncjobs.registry"):
        with pytest.raises(NotAllowed) as info:
            check_allowed(settings, cls, method)

    assert info.value.code == "not_allowed" and status_of(info.value) == 403
    assert "allow-list" in str(info.value)
    assert any("refused" in r.getMessage() for r in caplog.records)


def test_parse_submit_refuses_before_looking_at_anything_else(settings: Settings) -> None:
    with pytest.raises(NotAllowed):
        submit(settings, method="__init__", args="not even a list")


def test_every_chain_step_is_checked_against_the_allow_list(settings: Settings) -> None:
    ok = submit(settings, then=[{"class": "Report", "method": "build", "args": [1]}])
    assert [(s.cls, s.method, list(s.args)) for s in ok.then] == [("Report", "build", [1])]

    with pytest.raises(NotAllowed):
        submit(settings, then=[{"class": "Ok", "method": "run"},
                               {"class": "Ok", "method": "_secret"}])


def test_a_body_that_is_not_an_object_is_a_bad_request(settings: Settings) -> None:
    with pytest.raises(BadRequest):
        parse_submit(settings, ["Ok", "run"], NOW)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"class": 3}, "class"),
        ({"method": None}, "method"),
        ({"clas": "Ok"}, "clas"),
        ({"priority": "urgent"}, "priority"),
        ({"priority": 1}, "priority"),
        ({"args": "a,b"}, "args"),
        ({"kwargs": ["a"]}, "kwargs"),
        ({"delay": -1}, "delay"),
        ({"delay": "5"}, "delay"),
        ({"delay": float("nan")}, "delay"),
        ({"delay": 1e12}, "delay"),
        ({"delay": 5, "run_at": "2027-01-01T00:00:00Z"}, "run_at"),
        ({"run_at": "tomorrow"}, "run_at"),
        ({"run_at": 5}, "run_at"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 1001}, "max_attempts"),
        ({"max_attempts": True}, "max_attempts"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"unique_key": ""}, "unique_key"),
        ({"unique_key": "k" * 201}, "unique_key"),
        ({"then": {"class": "Ok"}}, "then"),
        ({"then": ["Ok"]}, "then[0]"),
        ({"then": [{"class": "Ok", "method": "run", "delay": 1}]}, "then[0].delay"),
        ({"then": [{"class": "Ok", "method": "run", "args": {}}]}, "then[0].args"),
    ],
)
def test_invalid_fields_are_named(settings: Settings, body: dict[str, Any], field: str) -> None:
    body = {"class": "Ok", "method": "run", **body}

    with pytest.raises(InvalidField) as info:
        parse_submit(settings, body, NOW)

    assert info.value.field == field
    assert status_of(info.value) == 422
    assert str(info.value).startswith(f"{field}: ")


@pytest.mark.parametrize("missing", ["class", "method"])
def test_class_and_method_are_required(settings: Settings, missing: str) -> None:
    body = {"class": "Ok", "method": "run"}
    del body[missing]

    with pytest.raises(InvalidField) as info:
        parse_submit(settings, body, NOW)

    assert info.value.field == missing


@pytest.mark.parametrize("ts", [
    0.0, 1_800_000_000.0, 1_800_000_000.0005, 1_800_000_000.9999996, 1_700_000_000.2079995,
    -0.0005, -1e-7, -1.5, -1_000_000_000.9999996, -51_931_368_926.7405,  # year 324
    253_402_300_799.999,  # 9999-12-31T23:59:59.999
])
def test_iso_matches_datetime_everywhere(ts: float) -> None:
    # iso() caches the part down to the second; it must still agree with datetime's own
    # formatting (rounding, years before 1000, before 1970) on every timestamp.
    expected = dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds")
    assert iso(ts) == expected[:-6] + "Z"
    assert iso(ts) == iso(ts)  # the cached prefix gives the same answer


def test_a_job_module_the_workers_will_not_find_is_named_without_importing_anything(
        make_settings: SettingsFactory, tmp_path: Path) -> None:
    # A typo in "module" showed only as every job of the class failing, one by one.
    trap = tmp_path / "trapjobs"
    trap.mkdir()
    (trap / "__init__.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\n")
    settings = make_settings(jobs={
        "Here": {"module": "trapjobs.tasks", "methods": ["run"]},  # the package exists
        "Typo": {"module": "trapjbos.tasks", "methods": ["run"]},
        "Installed": {"module": "orjson", "methods": ["run"]}})  # from site-packages

    assert unfound_modules(settings) == {"Typo": "trapjbos.tasks"}
    assert not (tmp_path / "imported").exists()  # trapjobs/__init__.py never ran here
