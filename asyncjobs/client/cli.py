"""The asyncjobs command: serve and run locally, every other command through the HTTP API.

Thin by design: each subcommand parses its arguments and makes one library call.
Exit codes (§7): 0 ok; 1 the job failed or was cancelled (or was not finished when a wait
ran out); 2 usage error or refused request; 3 no host reachable.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import orjson

from ..config import Settings, load_settings
from ..errors import AsyncJobsError, ConfigError, HostLocked, HostUnreachable, InvalidField
from ..models import JSONValue, OutcomeKind
from ..workers import procs
from . import display

if TYPE_CHECKING:
    from .api_client import AsyncJobsClient, SubmitOptions

T = TypeVar("T")

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
FINISHED_OK, FINISHED_BAD = "completed", frozenset({"failed", "cancelled"})


def parse_params(text: str | None, json_args: str | None) -> list[JSONValue]:
    """The seeds' ``"p1,p2"`` form (strings), or ``--json '[...]'`` for typed values."""
    if json_args is not None:
        try:
            value = orjson.loads(json_args)
        except orjson.JSONDecodeError as exc:
            raise InvalidField("--json", f"not valid JSON: {exc}") from None
        if not isinstance(value, list):
            raise InvalidField("--json", "must be a JSON array of arguments")
        return value
    if not text:
        return []
    return [part.strip() for part in text.split(",")]


def parse_kw(pairs: Sequence[str]) -> dict[str, JSONValue]:
    """``--kw key=value``; the value is JSON if it parses as JSON, else a string."""
    out: dict[str, JSONValue] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise InvalidField("--kw", f"expected key=value, got {pair!r}")
        try:
            out[key] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            out[key] = raw
    return out


def parse_step(text: str) -> dict[str, JSONValue]:
    """``--then CLASS:METHOD[:p1,p2]`` (or ``CLASS:METHOD:[json array]``) -> a chain step."""
    cls, _, rest = text.partition(":")
    method, _, params = rest.partition(":")
    if not cls or not method:
        raise InvalidField("--then", f"expected CLASS:METHOD[:p1,p2], got {text!r}")
    is_json = params.lstrip().startswith("[")
    return {"class": cls, "method": method,
            "args": parse_params(None if is_json else params, params if is_json else None)}


def _print_json(value: JSONValue) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


async def _serve(settings: Settings) -> int:
    from ..engine.host import Host  # noqa: PLC0415 - the client commands never need the host

    stop = asyncio.Event()
    # Before the host starts: a SIGTERM during start-up then means a clean stop right after.
    procs.on_stop_signals(asyncio.get_running_loop(), stop.set)
    async with Host(settings, serve_api=True) as host:
        print(f"asyncjobs host serving {host.url} (data in {settings.data_dir}); "
              "Ctrl+C to stop", file=sys.stderr, flush=True)
        await stop.wait()
        print("stopping: no new jobs; waiting for running ones "
              f"(up to {settings.shutdown_grace:g}s)", file=sys.stderr, flush=True)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s", stream=sys.stderr)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # aiohttp logs a malformed request with its raw header bytes (a token fragment, say);
    # the client already got its 400, and the host's log is no place for those bytes.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    settings = _settings(args)
    try:
        return asyncio.run(_serve(settings))
    except HostLocked as exc:
        print(f"asyncjobs: {exc.message}", file=sys.stderr)
        return EXIT_USAGE


def cmd_run(args: argparse.Namespace) -> int:
    from ..engine.foreground import run_once  # noqa: PLC0415

    settings = _settings(args)
    params = parse_params(args.params, args.json_args)
    # A refusal is this command's own answer (printed below); the registry's log line of it
    # is for a host's log, and would print it a second time here.
    logging.getLogger("asyncjobs.registry").addHandler(logging.NullHandler())
    outcome = asyncio.run(run_once(settings, args.cls, args.method, params,
                                   parse_kw(args.kw), timeout=args.timeout))
    if outcome.output:
        sys.stderr.write(outcome.output)
    if outcome.kind is OutcomeKind.COMPLETED:
        _print_json(outcome.result)
        return EXIT_OK
    error = outcome.error
    answer: dict[str, JSONValue] = {"outcome": outcome.kind.value}
    if outcome.exit_code:  # the worker's own exit status: shown only when it did not exit 0
        answer["worker_exit_code"] = outcome.exit_code
    answer["error"] = error.to_json(with_traceback=True) if error else None
    _print_json(answer)
    return EXIT_JOB_FAILED


# -- client commands: each makes one library call through the HTTP API ---------------------

def _with_client(args: argparse.Namespace,
                 call: Callable[[AsyncJobsClient], Awaitable[T]]) -> T:
    from .api_client import AsyncJobsClient  # noqa: PLC0415 - serve and run never need aiohttp

    async def go() -> T:
        async with AsyncJobsClient(config=args.config) as client:
            return await call(client)

    return asyncio.run(go())


def _show_job(args: argparse.Namespace, job: dict[str, JSONValue]) -> None:
    if args.json:
        _print_json(job)
    else:
        print(display.job_detail(job))


def _finished_code(job: dict[str, JSONValue]) -> int:
    """0 completed; 1 failed, cancelled, or not finished when the wait ran out."""
    if job["status"] == FINISHED_OK:
        return EXIT_OK
    if job["status"] not in FINISHED_BAD:
        print(f"asyncjobs: job {job['id']} is still {job['status']}; stopped waiting",
              file=sys.stderr)
    return EXIT_JOB_FAILED


def _submit_options(args: argparse.Namespace) -> SubmitOptions:
    return {"kwargs": parse_kw(args.kw) or None, "priority": args.priority,
            "delay": args.delay, "run_at": args.run_at, "timeout": args.timeout,
            "max_attempts": args.max_attempts,
            "then": [parse_step(t) for t in args.then] or None, "unique_key": args.unique_key}


def cmd_submit(args: argparse.Namespace) -> int:
    params = parse_params(args.params, args.json_args)
    options = _submit_options(args)

    async def call(client: AsyncJobsClient) -> dict[str, JSONValue]:
        answer = await client.submit_info(args.cls, args.method, params, **options)
        if not args.wait:
            return answer
        return await client.wait(int(answer["id"]), args.wait_timeout)

    result = _with_client(args, call)
    if args.wait:
        _show_job(args, result)
        return _finished_code(result)
    if args.json:
        _print_json({"id": result["id"], "status": result["status"]})
    elif result.get("duplicate"):
        print(f"job {result['id']} is already {result['status']} with unique key "
              f"{args.unique_key!r}; not submitted again")
    else:
        print(f"submitted job {result['id']} ({result['status']})")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    _show_job(args, _with_client(args, lambda c: c.get(args.id)))
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    jobs, cursor = _with_client(args, lambda c: c.list(args.status, args.cls, args.limit,
                                                       args.cursor, chain=args.chain))
    if args.json:
        _print_json(jobs)
    else:
        print(display.job_rows(jobs) if jobs else "no jobs")
    if cursor:
        print(f"more: asyncjobs list --cursor {cursor}", file=sys.stderr)
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    job = _with_client(args, lambda c: c.cancel(args.id))
    if args.json:
        _print_json(job)
    else:
        print(f"job {job['id']} {job['status']}")
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    job = _with_client(args, lambda c: c.retry(args.id))
    if args.json:
        _print_json(job)
    else:
        print(f"job {job['id']} is {job['status']} again (attempt budget "
              f"{job['max_attempts']})")
    return EXIT_OK


def cmd_wait(args: argparse.Namespace) -> int:
    job = _with_client(args, lambda c: c.wait(args.id, args.timeout))
    _show_job(args, job)
    return _finished_code(job)


def cmd_logs(args: argparse.Namespace) -> int:
    lines = _with_client(args, lambda c: c.logs(args.id, errors=args.errors, lines=args.lines))
    if args.json:
        _print_json(lines)
    else:
        print("\n".join(lines) if lines else "(no log lines)")
    return EXIT_OK


def cmd_stats(args: argparse.Namespace) -> int:
    stats = _with_client(args, lambda c: c.stats())
    if args.json:
        _print_json(stats)
    else:
        print(display.stats_text(stats))
    return EXIT_OK


def cmd_schedules(args: argparse.Namespace) -> int:
    schedules = _with_client(args, lambda c: c.schedules())
    if args.json:
        _print_json(schedules)
    else:
        print(display.schedule_rows(schedules))
    return EXIT_OK


def cmd_prune(args: argparse.Namespace) -> int:
    pruned = _with_client(args, lambda c: c.prune())
    if args.json:
        _print_json(pruned)
    else:
        print(f"pruned {pruned.get('completed', 0)} completed and {pruned.get('failed', 0)} "
              "failed or cancelled job(s)")
    return EXIT_OK


def cmd_dashboard(args: argparse.Namespace) -> int:
    url = _with_client(args, lambda c: c.login_link())
    if args.json:
        _print_json({"url": url})
    else:
        print(url)
        print("open it within two minutes; it signs in one browser once", file=sys.stderr)
    return EXIT_OK


# -- the parser ------------------------------------------------------------------------------

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
    p.add_argument("--json", action="store_true",
                   help='print {"id", "status"} (with --wait: the finished job) as JSON')
    p.add_argument("--priority", choices=["high", "medium", "low"])
    p.add_argument("--delay", type=float, metavar="S", help="run no sooner than S seconds")
    p.add_argument("--run-at", metavar="TIME", help="run no sooner than this ISO 8601 time")
    p.add_argument("--timeout", type=float, metavar="S", help="kill an attempt after S seconds")
    p.add_argument("--max-attempts", type=int, metavar="N")
    p.add_argument("--then", action="append", default=[], metavar="CLASS:METHOD[:p1,p2]",
                   help="a further chain step (repeatable); it gets previous=<result>")
    p.add_argument("--unique-key", metavar="K",
                   help="do not submit again while a job with this key is pending or running")
    p.add_argument("--wait", action="store_true", help="wait until the job is finished")
    p.add_argument("--wait-timeout", type=float, metavar="S", help="stop waiting after S s")
    p.set_defaults(func=cmd_submit)


def _client_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                    common: argparse.ArgumentParser) -> None:
    reader = argparse.ArgumentParser(add_help=False, parents=[common])
    reader.add_argument("--json", action="store_true", help="print JSON (the §6 job shape)")

    def add(name: str, func: Callable[[argparse.Namespace], int], text: str,
            job_id: bool | None = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[reader], help=text)
        if job_id is not None:
            p.add_argument("id", type=int, metavar="ID", nargs=None if job_id else "?")
        p.set_defaults(func=func)
        return p

    add("status", cmd_status, "show one job: progress, result, last error, attempts")
    p = add("list", cmd_list, "list jobs, newest first", job_id=None)
    p.add_argument("--status", choices=["pending", "running", "completed", "failed",
                                        "cancelled"])
    p.add_argument("--class", dest="cls", metavar="CLASS")
    p.add_argument("--chain", type=int, metavar="ID", help="the steps of the chain with this id")
    p.add_argument("--limit", type=int, default=50, metavar="N")
    p.add_argument("--cursor", metavar="C", help="the page after the one that printed C")
    add("cancel", cmd_cancel, "cancel a pending or running job")
    add("retry", cmd_retry, "retry a failed or cancelled job")
    p = add("wait", cmd_wait, "wait until a job is finished; exit 1 unless it completed")
    p.add_argument("--timeout", type=float, metavar="S", help="stop waiting after S seconds")
    p = add("logs", cmd_logs, "tail jobs.log (or jobs_errors.log), optionally of one job",
            job_id=False)
    p.add_argument("--errors", action="store_true", help="jobs_errors.log instead")
    p.add_argument("--lines", type=int, default=50, metavar="N")
    add("stats", cmd_stats, "counts per status and class, throughput, workers", job_id=None)
    add("schedules", cmd_schedules, "list recurring schedules with their next run",
        job_id=None)
    add("prune", cmd_prune, "delete finished jobs past their retention now", job_id=None)
    add("dashboard", cmd_dashboard, "print a one-time sign-in URL for the dashboard",
        job_id=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asyncjobs", description=__doc__.splitlines()[0])
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
    run.add_argument("--timeout", type=float)
    run.set_defaults(func=cmd_run)

    _submit_parser(sub, common)
    _client_parsers(sub, common)
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
            out.append("--args=" + arg[7:])
        elif arg == "--json" and following.lstrip().startswith("["):
            out += ["--args", following]
            i += 1
        else:
            out.append(arg)
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_json_args_flag(list(sys.argv[1:] if argv is None else argv)))
    try:
        code: int = args.func(args)
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
