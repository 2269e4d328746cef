"""The ``asyncjobs`` client commands (§7) against a real host: output, ``--json``, exit codes.

The main flows run the CLI as a subprocess, exactly as a user does; the rest call
``cli.main(argv)`` in this process (same code, no interpreter start-up per command).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from serve_fixture import ServedHost, clean_env, closed_port_url, serve

from asyncjobs.client import cli, commands, display
from asyncjobs.errors import InvalidField

JOB_KEYS = {"id", "class", "method", "args", "kwargs", "status", "priority", "attempts",
            "max_attempts", "timeout", "created_at", "run_at", "started_at", "finished_at",
            "result", "error", "progress", "chain_id", "unique_key", "attempt_history"}
SUMMARY_KEYS = JOB_KEYS - {"attempt_history"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedHost]:
    with serve(tmp_path_factory.mktemp("cli")) as host:
        yield host


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def run(served: ServedHost, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> Any:
    """``run(*argv)``: ``cli.main`` in this process, finding the host through the config."""
    for name in [k for k in os.environ if k.startswith("ASYNCJOBS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ASYNCJOBS_CONFIG", str(served.config))

    def call(*argv: str) -> Result:
        capsys.readouterr()
        code = cli.main(list(argv))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return call


# -- as a subprocess ---------------------------------------------------------------------------

def test_submit_wait_prints_the_finished_job(served: ServedHost) -> None:
    done = served.cli("submit", "SampleJob", "process", "a, b", "--wait")
    assert done.returncode == 0, done.stderr
    assert re.search(r"^job \d+  SampleJob\.process$", done.stdout, re.M)
    assert re.search(r"^  status\s+completed$", done.stdout, re.M)
    assert '{"processed":["a","b"],"joined":"a,b"}' in done.stdout


def test_submit_json_then_wait_and_status_json(served: ServedHost) -> None:
    submitted = served.cli("submit", "SampleJob", "process", "--json", '["x", "y"]', "--json",
                           "--priority", "low")
    assert submitted.returncode == 0, submitted.stderr
    answer = json.loads(submitted.stdout)
    assert set(answer) == {"id", "status"} and answer["status"] == "pending"

    waited = served.cli("wait", str(answer["id"]), "--timeout", "20", "--json")
    assert waited.returncode == 0, waited.stderr
    job = json.loads(waited.stdout)
    assert set(job) == JOB_KEYS
    assert (job["status"], job["priority"], job["result"]["joined"]) == ("completed", "low",
                                                                         "x,y")
    status = served.cli("status", str(answer["id"]), "--json")
    assert json.loads(status.stdout) == job


def test_a_failed_job_exits_1_and_shows_its_error(served: ServedHost) -> None:
    failed = served.cli("submit", "UserLoginService", "handle", "--json", '[""]', "--wait",
                        "--json")
    assert failed.returncode == 1, failed.stderr
    job = json.loads(failed.stdout)
    assert set(job) == JOB_KEYS
    assert job["status"] == "failed"
    assert job["attempt_history"][0]["error"]["type"] == "ValueError"

    shown = served.cli("status", str(job["id"]))
    assert shown.returncode == 0
    assert re.search(r"^  error\s+ValueError: user must not be empty$", shown.stdout, re.M)
    assert "attempts:" in shown.stdout and "Traceback" in shown.stdout


def test_refused_requests_and_usage_errors_exit_2(served: ServedHost) -> None:
    refused = served.cli("submit", "os", "system", "id")
    assert refused.returncode == 2
    assert refused.stderr.strip() == ("asyncjobs: not_allowed: class 'os' is not in the "
                                      "allow-list")
    assert served.cli("status", "987654").returncode == 2
    usage = served.cli("status", "not-a-number")
    assert usage.returncode == 2 and "invalid int value" in usage.stderr
    assert served.cli("frobnicate").returncode == 2


def test_no_host_exits_3_with_a_one_line_hint(served: ServedHost) -> None:
    url = closed_port_url()
    down = served.cli("stats", env={"ASYNCJOBS_URL": url})
    assert down.returncode == 3
    assert down.stdout == ""
    (line,) = down.stderr.splitlines()
    assert url in line and "asyncjobs serve" in line


# -- in process --------------------------------------------------------------------------------

def test_cancel_retry_and_wait_exit_codes(run: Any) -> None:
    pending = run("submit", "LessonEndedService", "handle", "later", "--delay", "3600",
                  "--json")
    job_id = str(pending.json()["id"])
    short = run("wait", job_id, "--timeout", "0.2")
    assert short.code == 1
    assert f"job {job_id} is still pending" in short.err

    cancelled = run("cancel", job_id)
    assert (cancelled.code, cancelled.out.strip()) == (0, f"job {job_id} cancelled")
    again = run("cancel", job_id)
    assert again.code == 2 and "wrong_state" in again.err
    assert run("wait", job_id).code == 1, "a cancelled job is not a success"

    retried = run("retry", job_id, "--json")
    assert retried.code == 0 and retried.json()["status"] == "pending"
    assert set(retried.json()) == JOB_KEYS
    assert run("cancel", job_id, "--json").json()["status"] == "cancelled"


def test_retry_of_a_failed_job_runs_it_again(run: Any) -> None:
    failed = run("submit", "UserLoginService", "handle", "--json", '[""]', "--wait", "--json")
    assert failed.code == 1
    job_id = str(failed.json()["id"])
    assert run("retry", job_id).code == 0
    again = run("wait", job_id, "--timeout", "20", "--json")
    assert again.code == 1
    assert [a["outcome"] for a in again.json()["attempt_history"]] == ["failed", "failed"]


def test_list_table_json_filters_and_cursor(run: Any) -> None:
    ids = [run("submit", "LessonStartedService", "handle", f"t{i}", "--delay", "3600",
               "--json").json()["id"] for i in range(3)]
    listed = run("list", "--class", "LessonStartedService", "--json")
    assert listed.code == 0
    jobs = listed.json()
    assert isinstance(jobs, list)
    assert [j["id"] for j in jobs] == ids[::-1]
    assert all(set(j) == SUMMARY_KEYS for j in jobs)

    page = run("list", "--class", "LessonStartedService", "--limit", "2", "--json")
    assert [j["id"] for j in page.json()] == ids[:0:-1]
    match = re.search(r"--cursor (\S+)", page.err)
    assert match
    rest = run("list", "--class", "LessonStartedService", "--limit", "2", "--cursor",
               match.group(1), "--json")
    assert [j["id"] for j in rest.json()] == ids[:1]
    assert rest.err == ""

    table = run("list", "--class", "LessonStartedService", "--status", "pending")
    lines = table.out.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "JOB", "PRIORITY", "ATTEMPTS", "CREATED",
                                "DETAIL"]
    assert len(lines) == 4
    width = len(str(max(ids)))
    assert all(line[:max(width, 2)].strip().isdigit() for line in lines[1:])
    assert all("LessonStartedService.handle" in line and "runs in" in line
               for line in lines[1:])
    assert run("list", "--class", "LessonStartedService", "--status", "failed").out == \
        "no jobs\n"


def test_list_rejects_an_unknown_status(run: Any) -> None:
    with pytest.raises(SystemExit) as caught:
        run("list", "--status", "nonsense")
    assert caught.value.code == 2


def test_chain_and_kwargs_from_the_command_line(run: Any) -> None:
    done = run("submit", "SampleJob", "process", "one", "--then", "SampleJob:process:two,three",
               "--wait", "--json")
    assert done.code == 0, done.err
    step = done.json()  # --wait on a chain: its last step
    assert step["args"] == ["two", "three"]
    assert step["result"]["previous"]["joined"] == "one"

    slow = run("submit", "SlowJob", "run", "--kw", "seconds=0.2", "--kw", "steps=2",
               "--timeout", "30", "--max-attempts", "1", "--wait", "--json")
    assert slow.code == 0, slow.err
    job = slow.json()
    assert (job["kwargs"], job["timeout"], job["max_attempts"]) == (
        {"seconds": 0.2, "steps": 2}, 30.0, 1)
    assert job["progress"] == {"fraction": 1.0, "message": "step 2 of 2"}


def test_list_a_whole_chain(run: Any) -> None:
    first = run("submit", "SampleJob", "process", "a", "--then", "SampleJob:process:b",
                "--then", "SampleJob:process:c", "--json").json()["id"]
    run("wait", str(first + 2))
    steps = run("list", "--chain", str(first), "--json").json()
    assert [j["id"] for j in steps] == [first, first + 1, first + 2]  # in step order
    assert {j["chain_id"] for j in steps} == {first}
    assert {j["status"] for j in steps} == {"completed"}
    assert run("list", "--chain", str(first + 1000), "--json").json() == []


def test_submit_wait_on_a_chain_waits_for_its_last_step(run: Any) -> None:
    done = run("submit", "SampleJob", "process", "a", "--then", "SampleJob:process:b",
               "--then", "SampleJob:process:c", "--wait", "--json")
    assert done.code == 0, done.err
    last = done.json()
    assert set(last) == JOB_KEYS
    assert (last["id"], last["status"], last["args"]) == (last["chain_id"] + 2, "completed",
                                                          ["c"])
    assert last["result"]["previous"]["previous"]["joined"] == "a"

    shown = run("submit", "SampleJob", "process", "a", "--then", "SampleJob:process:b",
                "--wait")
    assert shown.code == 0, shown.err
    head = int(re.match(r"chain (\d+):\n", shown.out).group(1))  # type: ignore[union-attr]
    assert re.search(rf"^ +{head} +completed +SampleJob.process .*-> ", shown.out, re.M)
    assert re.search(rf"^job {head + 1}  SampleJob.process$", shown.out, re.M)

    # The head completes, the second step fails (it takes no ``previous``), the third is
    # cancelled: the chain did not complete, whatever its head did.
    broken = run("submit", "SampleJob", "process", "a", "--then", "UserLoginService:handle:x",
                 "--then", "SampleJob:process:c", "--max-attempts", "1", "--wait")
    assert broken.code == 1, broken.out
    head = int(re.match(r"chain (\d+):\n", broken.out).group(1))  # type: ignore[union-attr]
    table = broken.out.partition("\n\n")[0]  # the steps, before the detail of one
    statuses = re.findall(r"^ +(\d+) +(\w+) ", table, re.M)
    assert statuses == [(str(head), "completed"), (str(head + 1), "failed"),
                        (str(head + 2), "cancelled")]
    assert "ChainBroken" in broken.out
    # In detail, the step that broke the chain, with its attempts: why it failed.
    assert re.search(rf"^job {head + 1}  UserLoginService.handle$", broken.out, re.M)
    assert "attempts:" in broken.out and "previous" in broken.out
    as_json = run("submit", "SampleJob", "process", "a", "--then", "UserLoginService:handle:x",
                  "--then", "SampleJob:process:c", "--max-attempts", "1", "--wait", "--json")
    assert as_json.code == 1
    assert as_json.json()["status"] == "cancelled"
    assert as_json.json()["error"]["type"] == "ChainBroken"

    later = run("submit", "SampleJob", "process", "--delay", "3600", "--then",
                "SampleJob:process", "--wait", "--wait-timeout", "0.2", "--json")
    assert later.code == 1
    assert later.json()["status"] == "pending"
    assert f"job {later.json()['id']} is still pending" in later.err


def test_unique_key_duplicate_is_reported(run: Any) -> None:
    first = run("submit", "SampleJob", "process", "--delay", "3600", "--unique-key", "cli-k")
    assert re.fullmatch(r"submitted job \d+ \(pending\)\n", first.out)
    second = run("submit", "SampleJob", "process", "--delay", "3600", "--unique-key", "cli-k")
    assert second.code == 0 and "already pending" in second.out
    job_id = first.out.split()[2]
    run("cancel", job_id)


def test_logs_stats_and_dashboard(run: Any, served: ServedHost) -> None:
    done = run("submit", "LessonCreatedService", "handle", "logged", "--wait", "--json")
    job_id = done.json()["id"]
    logs = run("logs", str(job_id))
    assert logs.code == 0
    assert all(f"job={job_id} " in line for line in logs.out.splitlines())
    assert "status=completed" in logs.out
    assert len(run("logs", "--lines", "2").out.splitlines()) == 2
    as_json = run("logs", str(job_id), "--json").json()
    assert isinstance(as_json, list) and as_json == logs.out.splitlines()
    run("submit", "UserLoginService", "handle", "--json", '[""]', "--wait")
    assert "ValueError" in run("logs", "--errors", "--lines", "200").out

    stats = run("stats")
    assert stats.code == 0
    assert stats.out.splitlines()[0].split() == ["pending", "running", "completed", "failed",
                                                 "cancelled"]
    assert "LessonCreatedService" in stats.out and "workers:" in stats.out
    stats_json = run("stats", "--json").json()
    assert stats_json["workers"]["max"] == 4

    link = run("dashboard").out.strip()
    assert link.startswith(served.url + "/login?code=")
    code = link.partition("code=")[2]
    status, _ = served.request("POST", "/api/sessions", body=json.dumps({"code": code}).encode(),
                               headers={"Host": served.url.removeprefix("http://")})
    assert status == 201, "the link's code signs a browser in (once)"
    assert run("dashboard", "--json").json()["url"].startswith(served.url + "/login?code=")


def test_schedules_and_prune(run: Any) -> None:
    # The served project drops the shipped schedule (see serve_fixture), so: none listed.
    assert run("schedules").out.strip() == "(no schedules in the config)"
    assert run("schedules", "--json").json() == []
    pruned = run("prune")
    assert pruned.code == 0
    assert pruned.out.startswith("pruned 0 completed")  # nothing is past its retention
    assert run("prune", "--json").json() == {"completed": 0, "failed": 0}


def test_schedule_table() -> None:
    now = 1_800_000_000.0  # 2027-01-15T08:00:00Z
    listing = [{"name": "hourly-sample", "class": "SampleJob", "method": "process",
                "expression": "0 * * * *", "next_run": "2027-01-15T09:00:00.000Z",
                "last_run": None, "last_job_id": None}]
    header, row = display.schedule_rows(listing, now).splitlines()
    assert header.split() == ["NAME", "JOB", "WHEN", "NEXT", "RUN", "LAST", "RUN", "LAST", "JOB"]
    assert row.split() == ["hourly-sample", "SampleJob.process", "0", "*", "*", "*", "*", "in",
                           "1h00m", "never"]


# -- parsing and formatting (no host) -----------------------------------------------------------

@pytest.mark.parametrize(("argv", "expected"), [
    (["submit", "A", "m", "--json", '["x"]'], ["submit", "A", "m", "--json-array", '["x"]']),
    (["submit", "A", "m", "--json=[1]", "--json"], ["submit", "A", "m", "--json-array=[1]",
                                                    "--json"]),
    (["submit", "A", "m", "p", "--json"], ["submit", "A", "m", "p", "--json"]),
    (["--config", "c.json", "submit", "A", "m", "--json", " [1]"],
     ["--config", "c.json", "submit", "A", "m", "--json-array", " [1]"]),
    (["run", "A", "m", "--json", '["x"]'], ["run", "A", "m", "--json", '["x"]']),
])
def test_json_flag_means_arguments_only_before_an_array(argv: list[str],
                                                        expected: list[str]) -> None:
    assert cli._json_args_flag(argv) == expected


def test_parse_step() -> None:
    assert commands.parse_step("A:m") == {"class": "A", "method": "m", "args": []}
    assert commands.parse_step("A:m:x,y") == {"class": "A", "method": "m", "args": ["x", "y"]}
    assert commands.parse_step('A:m:[1, {"k": "a:b"}]') == {"class": "A", "method": "m",
                                                       "args": [1, {"k": "a:b"}]}
    with pytest.raises(InvalidField):
        commands.parse_step("A")


def test_bad_kw_and_json_args_exit_2(run: Any) -> None:
    bad = run("submit", "SampleJob", "process", "--kw", "novalue")
    assert bad.code == 2 and "--kw" in bad.err
    assert run("submit", "SampleJob", "process", "--json", "[oops").code == 2
    assert run("submit", "SampleJob", "process", "--then", "Nope").code == 2


def test_display_helpers() -> None:
    assert display.span(0.25) == "0.25s"
    assert display.span(42) == "42s"
    assert display.span(200) == "3m20s"
    assert display.span(7500) == "2h05m"
    assert display.ago("2026-01-01T00:00:00.000Z", now=1767225603.0) == "3.0s ago"
    assert display.ago("2026-01-01T00:05:00.000Z", now=1767225600.0) == "in 5m00s"
    assert display.ago(None) == "-"
    text = display.table(["ID", "NAME"], [["7", "a"], ["123", "bbbb"]], right=frozenset({0}))
    assert text.splitlines() == [" ID  NAME", "  7  a", "123  bbbb"]
    assert display.progress_text({"fraction": 0.5, "message": "half"}) == (
        "[##########..........] 50% half")


def test_a_stray_argument_is_told_with_its_commands_usage(
        capsys: pytest.CaptureFixture[str]) -> None:
    # An object after --json (which takes no value in submit) was reported with the top-level
    # usage, which says nothing about submit's flags.
    with pytest.raises(SystemExit) as caught:
        cli.main(["submit", "SampleJob", "process", "--json", '{"x": 1}'])
    err = capsys.readouterr().err
    assert caught.value.code == 2
    assert err.startswith("usage: asyncjobs submit ")
    assert "unrecognized arguments: {\"x\": 1}" in err and "--kw KEY=VALUE" in err

    with pytest.raises(SystemExit):
        cli.main(["status", "7", "--bogus"])
    assert capsys.readouterr().err.startswith("usage: asyncjobs status ")


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for command in ["serve", "run", "submit", "status", "list", "cancel", "retry", "wait",
                    "logs", "stats", "dashboard"]:
        assert command in out


def test_client_commands_never_load_the_store_or_the_host(served: ServedHost) -> None:
    code = ("import sys; from asyncjobs.client import cli; "
            "rc = cli.main(['list', '--limit', '1']); "
            "print(rc, sorted(m for m in sys.modules if m.startswith(('asyncjobs.store', "
            "'asyncjobs.engine.host', 'aiosqlite', 'sqlite3'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=clean_env(ASYNCJOBS_CONFIG=str(served.config)), check=False,
                          timeout=30)
    assert done.stdout.splitlines()[-1] == "0 []", done.stderr


def test_hosts_lists_the_serving_host(run: Any, served: ServedHost) -> None:
    (host,) = run("hosts", "--json").json()
    assert (host["url"], host["alive"], host["this"], host["running"], host["leader"]) == (
        served.url, True, True, 0, True)
    assert len(host["id"]) == 32
    table = run("hosts").out
    assert f"{host['id']} *" in table and served.url in table and "alive" in table
    assert "LEADER" in table and "yes" in table


# -- rough edges of `run` and of arguments (issue #14) -------------------------------------

def test_run_prints_a_refusal_once(served: ServedHost) -> None:
    refused = served.cli("run", "NotAllowed", "run")

    assert refused.returncode == 2
    assert refused.stderr.count("is not in the allow-list") == 1, refused.stderr


def test_run_of_a_failing_job_shows_no_exit_status_of_a_worker_that_exited_normally(
        served: ServedHost) -> None:
    failed = served.cli("run", "UserLoginService", "handle", "--json", '[""]')

    assert failed.returncode == 1
    answer = json.loads(failed.stdout)
    assert answer["outcome"] == "failed" and answer["error"]["type"] == "ValueError"
    assert "exit_code" not in answer and "worker_exit_code" not in answer


def test_arguments_that_do_not_fit_the_signature_fail_at_once(served: ServedHost) -> None:
    submitted = served.cli("submit", "SampleJob", "process", "--kw", "nope=1", "--json")
    job_id = str(json.loads(submitted.stdout)["id"])
    assert served.cli("wait", job_id, "--timeout", "20").returncode == 1
    job = json.loads(served.cli("status", job_id, "--json").stdout)

    assert (job["status"], job["attempts"]) == ("failed", 1)  # no retry: it can never fit
    assert job["error"]["type"] == "ArgumentsError"
    assert "SampleJob.process(*params, previous=None) cannot take" in job["error"]["message"]
    assert "unexpected keyword argument 'nope'" in job["error"]["message"]
    # Refused before the job's code ran: a traceback would show only asyncjobs' own frames.
    assert not job["attempt_history"][-1]["error"]["traceback"]
