"""config.json loading: validation errors that name the key path and the value, env overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from fakes import SettingsFactory

from asyncjobs.config import Settings, load_settings, parse_settings
from asyncjobs.errors import ConfigError
from asyncjobs.models import Isolation, Priority

REPO = Path(__file__).resolve().parents[1]


def load_doc(tmp_path: Path, doc: Any, env: dict[str, str] | None = None) -> Settings:
    path = tmp_path / "config.json"
    path.write_bytes(orjson.dumps(doc))
    return load_settings(path, env=env or {})


def config_error(tmp_path: Path, doc: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_doc(tmp_path, doc)
    return info.value


def test_shipped_config_loads() -> None:
    settings = load_settings(REPO / "config.json", env={})

    entry = settings.jobs["LessonCreatedService"]
    assert entry.module == "jobs.lessons"
    assert entry.priority is Priority.HIGH
    assert entry.no_retry_on == ("ValueError",)
    assert entry.concurrency == 2
    assert settings.jobs["CrashingJob"].isolation is Isolation.PROCESS
    assert settings.base_dir == REPO
    assert settings.data_dir == REPO / ".asyncjobs"


def test_defaults_and_relative_data_dir(tmp_path: Path) -> None:
    settings = load_doc(tmp_path, {"jobs": {"A": {"methods": ["run"]}}})

    assert settings.jobs["A"].module == "jobs"
    assert settings.jobs["A"].priority is Priority.MEDIUM
    assert settings.retry.max_attempts == 3
    assert settings.retry.base_delay == 5.0
    assert settings.workers.isolation is Isolation.POOL
    assert settings.timeout == 300.0
    assert settings.api.port == 8765
    assert settings.base_dir == tmp_path
    assert settings.data_dir == tmp_path / ".asyncjobs"
    assert settings.config_path == tmp_path / "config.json"


def test_test_config_points_at_the_fixture_jobs(tmp_path: Path,
                                                make_settings: SettingsFactory) -> None:
    settings = make_settings(workers={"max": 1})

    assert set(settings.jobs) >= {"Ok", "Flaky", "Boom", "Sleepy", "Chain", "Listed"}
    assert settings.workers.max == 1
    assert settings.workers.kill_grace == 0.2  # merged into the section, not replacing it
    assert settings.data_dir == tmp_path / "data"
    assert (tmp_path / "jobs_fixture" / "testjobs.py").exists()


@pytest.mark.parametrize(
    ("doc", "path", "found"),
    [
        ({"jobz": {}}, "jobz", "jobz"),
        ({"workers": {"maxx": 4}}, "workers.maxx", "maxx"),
        ({"retry": {"delay": 5}}, "retry.delay", "delay"),
        ({"jobs": {"A": {"methods": ["run"], "modul": "jobs"}}}, "jobs.A.modul", "modul"),
    ],
)
def test_unknown_keys_are_named(tmp_path: Path, doc: dict[str, Any], path: str,
                                found: str) -> None:
    error = config_error(tmp_path, doc)

    assert error.path == path
    assert f"config {path}:" in str(error)
    assert repr(found) in str(error)
    assert "expected one of the keys" in str(error)


@pytest.mark.parametrize(
    ("doc", "path", "found"),
    [
        ({"workers": {"max": "4"}}, "workers.max", "'4'"),
        ({"workers": {"max": True}}, "workers.max", "True"),  # a bool is not an int here
        ({"workers": {"max": 0}}, "workers.max", "0"),
        ({"timeout": "soon"}, "timeout", "'soon'"),
        ({"timeout": 0}, "timeout", "0"),
        ({"retry": {"jitter": 2}}, "retry.jitter", "2.0"),
        ({"api": {"port": 70000}}, "api.port", "70000"),
        ({"jobs": []}, "jobs", "[]"),
        ({"jobs": {"A": {"methods": "run"}}}, "jobs.A.methods", "'run'"),
        ({"jobs": {"A": {"methods": ["run", 3]}}}, "jobs.A.methods[1]", "3"),
        ({"jobs": {"A": {"methods": []}}}, "jobs.A.methods", "[]"),
        ({"jobs": {"A": {"methods": ["_hidden"]}}}, "jobs.A.methods[0]", "'_hidden'"),
        ({"jobs": {"A": {"methods": ["run"], "module": "../evil"}}}, "jobs.A.module",
         "'../evil'"),
        ({"jobs": {"_A": {"methods": ["run"]}}}, "jobs", "'_A'"),
        ({"jobs": {"A": {"methods": ["run"], "timeout": -1}}}, "jobs.A.timeout", "-1"),
        ({"durability": "sometimes"}, "durability", "'sometimes'"),
        ({"store": "mysql://db/jobs"}, "store", "'mysql://db/jobs'"),
        ({"store": "postgresql"}, "store", "'postgresql'"),
        ({"store": 5}, "store", "5"),
        ({"hosts": {"heartbeat": 0}}, "hosts.heartbeat", "0"),
        ({"hosts": {"heartbeat": 5, "lease": 5}}, "hosts.lease", "5.0"),
        ({"workers": {"memory_limit": 0}}, "workers.memory_limit", "0"),
        ({"workers": {"memory_limit": 1.5}}, "workers.memory_limit", "1.5"),
        ({"workers": {"max_memory_per_worker": "1G"}}, "workers.max_memory_per_worker",
         "'1G'"),
        ({"jobs": {"A": {"methods": ["run"], "memory_limit": -512}}}, "jobs.A.memory_limit",
         "-512"),
        ([1, 2], "(top level)", "[1, 2]"),
    ],
)
def test_wrong_types_and_values_name_path_and_value(tmp_path: Path, doc: Any, path: str,
                                                    found: str) -> None:
    error = config_error(tmp_path, doc)

    assert error.path == path
    assert str(error).startswith(f"config {path}: expected ")
    assert str(error).endswith(f"found {found}")


@pytest.mark.parametrize(
    ("doc", "path", "found"),
    [
        ({"workers": {"isolation": "thread"}}, "workers.isolation", "'thread'"),
        ({"jobs": {"A": {"methods": ["run"], "priority": "urgent"}}}, "jobs.A.priority",
         "'urgent'"),
        ({"jobs": {"A": {"methods": ["run"], "isolation": 1}}}, "jobs.A.isolation", "1"),
    ],
)
def test_bad_enum_values_list_the_choices(tmp_path: Path, doc: dict[str, Any], path: str,
                                          found: str) -> None:
    error = config_error(tmp_path, doc)

    assert error.path == path
    assert "expected one of" in str(error)
    assert str(error).endswith(f"found {found}")


def test_bad_json_names_the_file_and_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"jobs": {,}}')

    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})

    assert info.value.path == str(path)
    assert "expected valid JSON" in str(info.value)
    assert "line 1" in str(info.value)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "config.json"

    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})

    assert str(path) in str(info.value)
    assert "no such file" in str(info.value)


def test_env_overrides_beat_the_file(tmp_path: Path) -> None:
    env = {"ASYNCJOBS_MAX_ATTEMPTS": "7", "ASYNCJOBS_RETRY_DELAY": "0.5",
           "ASYNCJOBS_PORT": "9999", "ASYNCJOBS_DATA_DIR": str(tmp_path / "elsewhere")}

    settings = load_doc(tmp_path, {"retry": {"max_attempts": 2, "base_delay": 30},
                                   "api": {"port": 1234}}, env)

    assert settings.retry.max_attempts == 7
    assert settings.retry.base_delay == 0.5
    assert settings.retry.factor == 2.0  # untouched
    assert settings.api.port == 9999
    assert settings.data_dir == tmp_path / "elsewhere"


def test_empty_env_values_are_ignored(tmp_path: Path) -> None:
    settings = load_doc(tmp_path, {"api": {"port": 1234}}, {"ASYNCJOBS_PORT": ""})

    assert settings.api.port == 1234


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ASYNCJOBS_MAX_ATTEMPTS", "many"),
        ("ASYNCJOBS_MAX_ATTEMPTS", "0"),
        ("ASYNCJOBS_RETRY_DELAY", "soon"),
        ("ASYNCJOBS_RETRY_DELAY", "-1"),
        ("ASYNCJOBS_RETRY_DELAY", "nan"),
        ("ASYNCJOBS_RETRY_DELAY", "inf"),
        ("ASYNCJOBS_PORT", "http"),
        ("ASYNCJOBS_PORT", "70000"),
        ("ASYNCJOBS_PORT", "-1"),
    ],
)
def test_bad_env_values_name_the_variable(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_doc(tmp_path, {}, {name: value})

    assert info.value.path == f"${name}"
    assert value in str(info.value)


def test_asyncjobs_config_picks_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         ) -> None:
    path = tmp_path / "sub" / "mine.json"
    path.parent.mkdir()
    path.write_bytes(orjson.dumps({"timeout": 42}))
    monkeypatch.chdir(tmp_path)

    settings = load_settings(None, env={"ASYNCJOBS_CONFIG": str(path)})

    assert settings.timeout == 42.0
    assert settings.base_dir == path.parent


def test_parse_settings_checks_schedules_against_the_allow_list(tmp_path: Path) -> None:
    doc = {"jobs": {"A": {"methods": ["run"]}},
           "schedules": {"s": {"class": "B", "method": "run", "every": 60}}}

    with pytest.raises(ConfigError) as info:
        parse_settings(doc, base_dir=tmp_path)

    assert info.value.path == "schedules.s.class"
    assert "'B'" in str(info.value)


def test_store_setting_and_its_env_override(tmp_path: Path) -> None:
    assert load_doc(tmp_path, {}).store is None  # SQLite in data_dir
    url = "postgresql://jobs@db.internal:5432/jobs"
    assert load_doc(tmp_path, {"store": url}).store == url
    assert load_doc(tmp_path, {"store": "sqlite"},
                    {"ASYNCJOBS_STORE": "postgres://h/db"}).store == "postgres://h/db"
    with pytest.raises(ConfigError) as info:
        load_doc(tmp_path, {}, {"ASYNCJOBS_STORE": "oracle://h"})
    assert info.value.path == "$ASYNCJOBS_STORE"


def test_a_store_url_password_never_appears_in_an_error(tmp_path: Path) -> None:
    error = config_error(tmp_path, {"store": "mysql://jobs:hunter2@db/jobs"})

    assert error.path == "store"
    assert "hunter2" not in str(error)
    assert "mysql://jobs:***@db/jobs" in str(error)


@pytest.mark.parametrize("url", [
    "postgresql:/jobs:hunter2@db/jobs",  # a missing slash: refused, and still masked
    "postgresql//jobs:hunter2@db/jobs",
    "postgres:hunter2@db/jobs",
    "mysql://jobs:hunt@r2@db/jobs",  # an unescaped '@' in the password
    "oracle://jobs@db/jobs?password=hunter2",
])
def test_a_malformed_store_url_is_refused_without_its_password(tmp_path: Path,
                                                              url: str) -> None:
    error = config_error(tmp_path, {"store": url})

    assert error.path == "store"
    assert "hunter2" not in str(error) and "r2@db" not in str(error)
    assert "***" in str(error)


def test_a_bad_env_number_says_what_it_expected_in_plain_english(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as port:
        load_doc(tmp_path, {}, {"ASYNCJOBS_PORT": "abc"})
    assert port.value.expected == "an integer"
    with pytest.raises(ConfigError) as delay:
        load_doc(tmp_path, {}, {"ASYNCJOBS_RETRY_DELAY": "soon"})
    assert delay.value.expected == "a number"
