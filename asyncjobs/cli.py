"""The ``asyncjobs`` command: ``serve`` and ``run`` locally, everything else via the API.

Thin by design: each subcommand parses its arguments and makes one library call.
Exit codes (§7): 0 ok; 1 the job failed or was cancelled; 2 usage error or refused request;
3 no host reachable.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

import orjson

from . import procs
from .config import Settings, load_settings
from .errors import AsyncJobsError, ConfigError, HostLocked, InvalidField
from .models import JSONValue, OutcomeKind

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


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


def _print_json(value: JSONValue) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


async def _serve(settings: Settings) -> int:
    from .host import Host  # noqa: PLC0415 - the client commands never need the host

    stop = asyncio.Event()
    async with Host(settings, serve_api=True) as host:
        procs.on_stop_signals(asyncio.get_running_loop(), stop.set)
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
    settings = _settings(args)
    try:
        return asyncio.run(_serve(settings))
    except HostLocked as exc:
        print(f"asyncjobs: {exc.message}", file=sys.stderr)
        return EXIT_USAGE


def cmd_run(args: argparse.Namespace) -> int:
    from .foreground import run_once  # noqa: PLC0415

    settings = _settings(args)
    params = parse_params(args.params, args.json_args)
    outcome = asyncio.run(run_once(settings, args.cls, args.method, params,
                                   parse_kw(args.kw), timeout=args.timeout))
    if outcome.output:
        sys.stderr.write(outcome.output)
    if outcome.kind is OutcomeKind.COMPLETED:
        _print_json(outcome.result)
        return EXIT_OK
    error = outcome.error
    _print_json({"outcome": outcome.kind.value, "exit_code": outcome.exit_code,
                 "error": error.to_json(with_traceback=True) if error else None})
    return EXIT_JOB_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asyncjobs", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="config file (default: $ASYNCJOBS_CONFIG or "
                        "./config.json)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the host: store, workers, API and dashboard")
    serve.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    run = sub.add_parser("run", help="run one job in the foreground, without a host")
    run.add_argument("cls", metavar="CLASS")
    run.add_argument("method", metavar="METHOD")
    run.add_argument("params", nargs="?", metavar='"p1,p2"', help="comma-separated strings")
    run.add_argument("--json", dest="json_args", metavar="ARGS", help="arguments as a JSON array")
    run.add_argument("--kw", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--timeout", type=float)
    run.set_defaults(func=cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
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
