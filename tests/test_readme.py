"""The README stays true: its test command is CI's, and its CLI examples work."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_fixture import ServedHost, serve

from asyncjobs.client import cli

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def cli_examples() -> list[list[str]]:
    """Every ``asyncjobs ...`` command in the README's bash blocks, as argv (no shell)."""
    examples = []
    for block in bash_blocks(README):
        for line in block.splitlines():
            command = line.split(";")[0].split("#")[0].strip()
            if command.startswith("asyncjobs "):
                examples.append(shlex.split(command)[1:])
    return examples


def test_quick_start_test_command_is_what_ci_runs() -> None:
    quick_start = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [line for block in bash_blocks(quick_start) for line in block.splitlines()
                if line and not line.startswith("#")]
    assert len(commands) >= 2
    install_and_serve, install_and_test = commands[0], commands[1]
    assert install_and_serve.endswith("asyncjobs serve")
    assert install_and_test in (REPO / ".ci" / "run").read_text().splitlines()


@pytest.mark.parametrize("argv", cli_examples(), ids=lambda argv: " ".join(argv)[:60])
def test_every_cli_example_parses(argv: list[str]) -> None:
    args = cli.build_parser().parse_args(cli._json_args_flag(argv))
    assert callable(args.func)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedHost]:
    with serve(tmp_path_factory.mktemp("readme")) as host:
        yield host


def test_id_free_cli_examples_succeed_against_the_shipped_jobs(served: ServedHost) -> None:
    """The examples that do not name a job id run for real against config.json and jobs/."""
    ran = 0
    for example in cli_examples():
        if example[0] not in ("submit", "list", "logs", "stats", "run", "schedules"):
            continue
        slow = example[0] == "submit" and "SlowJob" in example
        # A slow job is delayed to keep the workers free: this checks the submit only.
        argv = [*example, "--delay", "3600"] if slow else example
        result = served.cli(*argv)
        expected = 1 if "UserLoginService" in argv and "--wait" in argv else 0
        assert result.returncode == expected, (argv, result.stdout, result.stderr)
        ran += 1
    assert ran >= 10


def _jobs(served: ServedHost) -> list[dict[str, object]]:
    listed = served.cli("list", "--json", "--limit", "100")
    assert listed.returncode == 0, listed.stderr
    jobs: list[dict[str, object]] = json.loads(listed.stdout)
    return jobs


def test_every_cli_example_does_what_it_says(served: ServedHost) -> None:
    """The submitted jobs end as their comments say; the examples naming a job id run on a
    job of the kind they are about (``cancel`` a waiting one, ``retry`` a failed one...)."""
    examples = cli_examples()
    for example in examples:  # the submits first, as a user would
        if example[0] == "submit":
            slow = "SlowJob" in example
            served.cli(*example, *(["--delay", "3600"] if slow else []))
    jobs = _jobs(served)
    for job in jobs:
        if not _for_later(job):
            assert served.cli("wait", str(job["id"]), "--timeout", "20").returncode in (0, 1)
    jobs = {int(str(job["id"])): job for job in _jobs(served)}
    ended = {job_id: job["status"] for job_id, job in jobs.items()}
    failed = [i for i, status in ended.items() if status == "failed"]
    # (the module's host also ran the id-free examples: their jobs are here too)
    assert failed and {jobs[i]["class"] for i in failed} == {"UserLoginService"}, ended
    later = {i for i, job in jobs.items() if _for_later(job)}
    assert all(status == "completed" for i, status in ended.items()
               if jobs[i]["class"] != "UserLoginService" and i not in later), ended
    typed = [job for job in jobs.values() if job["args"] == ["x", 2]]
    assert typed and typed[0]["result"] == {"processed": ["x", 2], "joined": "x,2"}
    waiting = next(i for i, job in jobs.items() if job["class"] == "SlowJob")
    completed = min(i for i, status in ended.items() if status == "completed")
    ids = {"cancel": waiting, "retry": failed[0], "status": completed, "wait": completed,
           "logs": completed}
    ran = 0
    for example in examples:
        if example[0] in ids and len(example) > 1 and example[1].isdigit():
            argv = [example[0], str(ids[example[0]]), *example[2:]]
            result = served.cli(*argv)
            assert result.returncode == 0, (argv, result.stdout, result.stderr)
            ran += 1
    assert ran >= 5
    assert _status(served, waiting) == "cancelled"
    assert _status(served, failed[0]) in ("pending", "running", "failed")  # retried


def _for_later(job: dict[str, object]) -> bool:
    """Submitted with --delay (pending is what it should be)."""
    return job["status"] == "pending" and job["run_at"] is not None and \
        str(job["run_at"]) > str(job["created_at"])


def _status(served: ServedHost, job_id: int) -> str:
    shown = served.cli("status", str(job_id), "--json")
    return str(json.loads(shown.stdout)["status"])


def test_the_unique_key_example_shows_a_duplicate(served: ServedHost) -> None:
    """Run as written (with a key of its own), the second submit finds the first job."""
    block = README.split("### Unique jobs", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [shlex.split(line.split("#")[0]) for line in block.splitlines() if line.strip()]
    assert len(lines) == 2 and lines[0] == lines[1]
    argv = [a.replace("report-2026-11", "readme-unique-test") for a in lines[0][1:]]
    first, second = served.cli(*argv), served.cli(*argv)
    assert first.returncode == second.returncode == 0, (first.stderr, second.stderr)
    job_id = re.fullmatch(r"submitted job (\d+) \(pending\)\n", first.stdout)
    assert job_id, first.stdout
    assert second.stdout.startswith(f"job {job_id[1]} is already pending"), second.stdout
    duplicate = served.cli(*argv, "--json")
    assert '"duplicate": true' in duplicate.stdout
    served.cli("cancel", job_id[1])


def test_the_exit_codes_mention_a_wait_that_ran_out() -> None:
    exit_codes = README.split("Exit codes: ", 1)[1].split("\n\n", 1)[0]
    assert "wait --timeout" in exit_codes and "ran out" in exit_codes
