"""The README stays true: its test command is CI's, and its CLI examples work."""

from __future__ import annotations

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
