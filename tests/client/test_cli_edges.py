"""What a new user trips over first, against a real host: input the client and the CLI must
refuse with a clear message (and never send), private files, closed pipes, a missing token.

Each test here reproduces one finding of a review done from the README, as a user would.
"""

from __future__ import annotations

import argparse
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_fixture import ServedHost, clean_env, closed_port_url, serve

from asyncjobs import AsyncJobsClient, submit_job_sync
from asyncjobs.client import cli
from asyncjobs.client.api_client import submit_body
from asyncjobs.engine import datadir
from asyncjobs.errors import InvalidField


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedHost]:
    with serve(tmp_path_factory.mktemp("edges")) as host:
        yield host


def job_count(served: ServedHost) -> int:
    listed = served.cli("list", "--limit", "1000", "--json")
    return len(re.findall(r'"id":', listed.stdout))


def test_a_backup_is_created_0600_whatever_the_umask(served: ServedHost, tmp_path: Path,
                                                     ) -> None:
    old = os.umask(0o022)  # the usual one; the CLI subprocess inherits it
    try:
        done = served.cli("backup", str(tmp_path / "copy.db"))
    finally:
        os.umask(old)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE((tmp_path / "copy.db").stat().st_mode) == 0o600


def test_a_backup_into_a_missing_folder_names_that_folder(served: ServedHost,
                                                          tmp_path: Path) -> None:
    done = served.cli("backup", str(tmp_path / "nowhere" / "copy.db"))

    assert done.returncode == 2
    assert f"{tmp_path / 'nowhere'} is not an existing directory" in done.stderr
    assert ".partial" not in done.stderr


def test_a_bare_string_as_args_is_refused_not_split(served: ServedHost) -> None:
    before = job_count(served)
    with pytest.raises(TypeError, match=r"not str: pass \['Intro to SQL'\]"):
        submit_job_sync("LessonCreatedService", "handle", "Intro to SQL",  # type: ignore[arg-type]
                        url=served.url, token=served.token)
    with pytest.raises(TypeError, match="not bytes"):
        submit_body("A", "m", b"xy")  # type: ignore[arg-type]
    assert job_count(served) == before


@pytest.mark.parametrize("flags", [["--delay", "inf"], ["--delay", "nan"],
                                   ["--timeout", "inf"], ["--wait-timeout", "Infinity"]])
def test_non_finite_seconds_are_a_usage_error(served: ServedHost, flags: list[str]) -> None:
    before = job_count(served)
    refused = served.cli("submit", "SampleJob", "process", "q", *flags)
    assert refused.returncode == 2
    assert f"argument {flags[0]}: expected a finite number of seconds" in refused.stderr
    assert job_count(served) == before
    waited = served.cli("wait", "1", "--timeout", flags[1])
    assert waited.returncode == 2 and "finite" in waited.stderr


def test_non_finite_seconds_are_refused_by_the_library_too() -> None:
    for field in ("delay", "timeout"):
        with pytest.raises(InvalidField, match=f"{field}: must be a finite number"):
            submit_body("A", "m", [], **{field: float("nan")})  # type: ignore[misc]


def test_run_at_is_bounded_like_delay(served: ServedHost) -> None:
    far = served.cli("submit", "SampleJob", "process", "q", "--run-at", "9999-12-31T00:00:00Z")
    assert far.returncode == 2 and "run_at: must be at most ten years" in far.stderr
    delay = served.cli("submit", "SampleJob", "process", "q", "--delay", "1e12")
    assert delay.returncode == 2 and "must be at most ten years" in delay.stderr


async def test_events_without_async_with_is_a_type_error() -> None:
    async with AsyncJobsClient(closed_port_url(), "t") as client:
        with pytest.raises(TypeError, match=r"async with client\.events"):
            async for _ in client.events():
                pass


def test_json_help_says_what_each_command_prints() -> None:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {}
    for name, command in sub.choices.items():
        for action in command._actions:
            if action.dest == "json" and action.help:
                helps[name] = action.help
    assert not [h for h in helps.values() if "§" in h]
    assert helps["stats"] != helps["status"] != helps["backup"] != helps["hosts"]
    assert "path" in helps["backup"] and "url" in helps["dashboard"]


def test_no_token_found_says_where_it_looked(served: ServedHost, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "asyncjobs", "stats"], cwd=tmp_path,
                          env=clean_env(ASYNCJOBS_URL=served.url), capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert "no API token was found" in done.stderr
    assert "$ASYNCJOBS_TOKEN" in done.stderr
    assert str(tmp_path / ".asyncjobs" / "token") in done.stderr


def test_a_closed_stdout_exits_141_without_a_traceback(served: ServedHost) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone, as after `| head -3`
    try:
        done = subprocess.run([sys.executable, "-m", "asyncjobs", "stats"], cwd=served.directory,
                              env=clean_env(ASYNCJOBS_CONFIG=str(served.config)),
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=30,
                              check=False)
    finally:
        os.close(write_end)
    assert done.returncode == cli.EXIT_BROKEN_PIPE == 141
    assert done.stderr == ""


def test_the_logs_directory_is_private(served: ServedHost) -> None:
    served.cli("submit", "SampleJob", "process", "logged", "--wait")
    assert stat.S_IMODE((served.data_dir / "logs").stat().st_mode) == 0o700


def test_an_old_open_logs_directory_is_narrowed(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir(mode=0o755)
    os.chmod(tmp_path / "logs", 0o755)
    datadir.prepare(tmp_path)
    assert stat.S_IMODE((tmp_path / "logs").stat().st_mode) == 0o700


def test_argument_errors_name_the_flag_typed(served: ServedHost) -> None:
    via_args = served.cli("submit", "SampleJob", "process", "--args", '{"a":1}')
    assert via_args.returncode == 2
    assert "--args: must be a JSON array" in via_args.stderr
    via_json = served.cli("submit", "SampleJob", "process", "--json", "[oops")
    assert via_json.returncode == 2 and "--json: not valid JSON" in via_json.stderr


def test_both_argument_forms_at_once_are_refused(served: ServedHost) -> None:
    before = job_count(served)
    both = served.cli("submit", "SampleJob", "process", "a,b", "--args", '["c"]')
    assert both.returncode == 2
    assert "either as \"p1,p2\" ('a,b') or with --args, not both" in both.stderr
    twice = served.cli("submit", "SampleJob", "process", "--args", '["c"]', "--json", '["d"]')
    assert twice.returncode == 2 and "not both" in twice.stderr
    assert job_count(served) == before
