"""The asyncjobs command line: the argument parser, and ``main`` (the console script).

Each subcommand's parser names its implementation in :mod:`asyncjobs.client.commands`;
``main`` runs it and turns an error into a one-line message and a §7 exit code: 2 usage
error or refused request, 3 no host reachable.  Only light modules load before a command
runs: the client commands never import the store or the host.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence

from ..errors import AsyncJobsError, ConfigError, HostUnreachable
from ..models import Status
from .commands import (
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    cmd_backup,
    cmd_cancel,
    cmd_dashboard,
    cmd_hosts,
    cmd_list,
    cmd_logs,
    cmd_prune,
    cmd_retry,
    cmd_run,
    cmd_schedules,
    cmd_serve,
    cmd_stats,
    cmd_status,
    cmd_submit,
    cmd_wait,
)

EXIT_BROKEN_PIPE = 141  # as a shell reports a command killed by SIGPIPE

DESCRIPTION = ("The asyncjobs command: serve and run locally, every other command through "
               "the HTTP API.")


def seconds(text: str) -> float:
    """An argparse type: a finite number (JSON has no inf or nan: the host would get null)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds, got {text!r}")
    return value


def _job_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cls", metavar="CLASS")
    parser.add_argument("method", metavar="METHOD")
    parser.add_argument("params", nargs="?", metavar='"p1,p2"', help="comma-separated strings")
    parser.add_argument("--kw", action="append", default=[], metavar="KEY=VALUE",
                        help="a keyword argument (VALUE is JSON if it parses, else a string)")


def _submit_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                   common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("submit", parents=[common], help="submit a job to the host")
    _job_args(p)
    p.add_argument("--args", dest="json_args", metavar="ARGS",
                   help="arguments as a JSON array; --json '[...]' works too")
    # What ``--json '[...]'`` becomes (see _json_args_flag), so errors name the flag typed.
    p.add_argument("--json-array", dest="json_array", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true",
                   help='print {"id", "status"} (with --wait: the finished job, for a chain '
                        'its last step) as JSON')
    p.add_argument("--priority", choices=["high", "medium", "low"])
    p.add_argument("--delay", type=seconds, metavar="S", help="run no sooner than S seconds")
    p.add_argument("--run-at", metavar="TIME", help="run no sooner than this ISO 8601 time")
    p.add_argument("--timeout", type=seconds, metavar="S", help="kill an attempt after S seconds")
    p.add_argument("--max-attempts", type=int, metavar="N")
    p.add_argument("--then", action="append", default=[], metavar="CLASS:METHOD[:p1,p2]",
                   help="a further chain step (repeatable); it gets previous=<result>")
    p.add_argument("--unique-key", metavar="K",
                   help="do not submit again while a job with this key is pending or running")
    p.add_argument("--wait", action="store_true",
                   help="wait until the job is finished (with --then: the whole chain; exit 0 "
                        "only if its last step completed)")
    p.add_argument("--wait-timeout", type=seconds, metavar="S", help="stop waiting after S s")
    p.set_defaults(func=cmd_submit)


def _client_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                    common: argparse.ArgumentParser) -> None:
    def add(name: str, func: Callable[[argparse.Namespace], int], text: str, json: str,
            job_id: bool | None = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("--json", action="store_true", help=f"print {json} as JSON")
        if job_id is not None:
            p.add_argument("id", type=int, metavar="ID", nargs=None if job_id else "?")
        p.set_defaults(func=func)
        return p

    job = "the job (every field, with its attempt history)"
    add("status", cmd_status, "show one job: progress, result, last error, attempts", job)
    p = add("list", cmd_list, "list jobs, newest first", "the list of jobs (without their "
            "attempt histories)", job_id=None)
    p.add_argument("--status", choices=[s.value for s in Status])
    p.add_argument("--class", dest="cls", metavar="CLASS")
    p.add_argument("--chain", type=int, metavar="ID",
                   help="the steps of the chain with this id, in their order")
    p.add_argument("--limit", type=int, default=50, metavar="N")
    p.add_argument("--cursor", metavar="C", help="the page after the one that printed C")
    add("cancel", cmd_cancel, "cancel a pending or running job", job)
    add("retry", cmd_retry, "retry a failed or cancelled job", job)
    p = add("wait", cmd_wait, "wait until a job is finished; exit 1 unless it completed", job)
    p.add_argument("--timeout", type=seconds, metavar="S", help="stop waiting after S seconds")
    p = add("logs", cmd_logs, "tail jobs.log (or jobs_errors.log), optionally of one job",
            "the log lines (a list of strings)", job_id=False)
    p.add_argument("--errors", action="store_true", help="jobs_errors.log instead")
    p.add_argument("--lines", type=int, default=50, metavar="N")
    add("stats", cmd_stats, "counts per status and class, throughput, workers",
        "the counts, throughput, workers and uptime", job_id=None)
    add("schedules", cmd_schedules, "list recurring schedules with their next run",
        "the list of schedules", job_id=None)
    add("hosts", cmd_hosts, "list the hosts sharing the store: heartbeat, running jobs, leader",
        "the list of hosts", job_id=None)
    add("prune", cmd_prune, "delete finished jobs past their retention now",
        "how many jobs were deleted, per rule", job_id=None)
    add("dashboard", cmd_dashboard, "print a one-time sign-in URL for the dashboard",
        '{"url"}', job_id=None)
    p = add("backup", cmd_backup, "write a consistent copy of the live store to PATH",
            '{"path", "bytes"}', job_id=None)
    p.add_argument("path", metavar="PATH", help="a new file (never overwritten)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asyncjobs", description=DESCRIPTION)
    parser.add_argument("--config", help="config file (default: $ASYNCJOBS_CONFIG or "
                        "./config.json)")
    # Lets --config come after the subcommand too, without overriding one given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", parents=[common],
                           help="run the host: store, workers, API and dashboard")
    serve.set_defaults(func=cmd_serve)

    run = sub.add_parser("run", parents=[common],
                         help="run one job in the foreground, without a host")
    _job_args(run)
    run.add_argument("--json", dest="json_args", metavar="ARGS", help="arguments as a JSON array")
    run.add_argument("--timeout", type=seconds)
    run.set_defaults(func=cmd_run)

    _submit_parser(sub, common)
    _client_parsers(sub, common)
    for command_parser in sub.choices.values():  # so a stray argument is told with its usage
        command_parser.set_defaults(command_parser=command_parser)
    return parser


def _json_args_flag(argv: list[str]) -> list[str]:
    """In ``submit``, ``--json '[...]'`` means typed arguments and a bare ``--json`` means JSON
    output (§7 has both spellings); a JSON array of arguments always starts with ``[``."""
    if "submit" not in argv:
        return argv
    out, i = argv[: argv.index("submit")], argv.index("submit")
    while i < len(argv):
        arg = argv[i]
        following = argv[i + 1] if i + 1 < len(argv) else ""
        if arg.startswith("--json=") and arg[7:].lstrip().startswith("["):
            out.append("--json-array=" + arg[7:])
        elif arg == "--json" and following.lstrip().startswith("["):
            out += ["--json-array", following]
            i += 1
        else:
            out.append(arg)
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, stray = parser.parse_known_args(
        _json_args_flag(list(sys.argv[1:] if argv is None else argv)))
    if stray:  # the command's usage, not the top level's, and what was probably meant
        hint = ""
        if args.command == "submit" and any(a.lstrip().startswith("{") for a in stray):
            hint = ("; --json takes no value here (it prints the answer as JSON): give "
                    "keyword arguments as --kw KEY=VALUE and positional ones as --args '[...]'")
        args.command_parser.error(f"unrecognized arguments: {' '.join(stray)}{hint}")
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # here, so that a closed pipe is caught below, not at exit
    except BrokenPipeError:
        # The reader went away (``asyncjobs wait 5 | head -3``): no traceback.  Point stdout
        # at devnull so the interpreter's final flush cannot fail again, and exit 141 as a
        # shell reports a command killed by SIGPIPE (128 + 13), so pipelines see the cut.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    except HostUnreachable as exc:
        print(f"asyncjobs: {exc.message}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ConfigError as exc:
        print(f"asyncjobs: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except AsyncJobsError as exc:
        print(f"asyncjobs: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
