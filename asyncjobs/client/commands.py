"""The asyncjobs commands: ``serve`` and ``run`` locally, every other one through the API.

Thin by design: each command turns its parsed arguments into one library call and prints
the answer, as text or (``--json``) as JSON.  The argument parser and the exit-code
mapping of errors are in :mod:`asyncjobs.client.cli`.  Exit codes (§7): 0 ok; 1 the job
failed or was cancelled (or was not finished when a wait ran out); 2 usage error or
refused request; 3 no host reachable.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import orjson

from ..config import Settings, load_settings
from ..errors import HostLocked, InvalidField
from ..models import TERMINAL, JSONValue, OutcomeKind, Status
from ..registry import MAX_CHAIN
from ..workers import procs
from . import display

if TYPE_CHECKING:
    from .api_client import AsyncJobsClient, SubmitOptions

T = TypeVar("T")

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def parse_params(text: str | None, json_args: str | None,
                 flag: str = "--json") -> list[JSONValue]:
    """The seeds' ``"p1,p2"`` form (strings), or ``flag '[...]'`` for typed values (not both:
    one of them would be silently dropped)."""
    if json_args is not None:
        if text:
            raise InvalidField(flag, f'give the arguments either as "p1,p2" ({text!r}) or '
                                     f"with {flag}, not both")
        try:
            value = orjson.loads(json_args)
        except orjson.JSONDecodeError as exc:
            raise InvalidField(flag, f"not valid JSON: {exc}") from None
        if not isinstance(value, list):
            raise InvalidField(flag, "must be a JSON array of arguments")
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
            "args": parse_params(None if is_json else params, params if is_json else None,
                                 "--then")}


def _print_json(value: JSONValue) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def _tune_collector() -> None:
    """The cycle collector, tuned for a long-running host (this process is ours: an
    application embedding a :class:`Host` keeps its own settings).

    What the host loaded to start (aiohttp, asyncpg, its own state: most of its objects)
    moves to the permanent generation (``gc.freeze``), out of every later full collection;
    and a young collection runs every 20,000 net allocations instead of 700.  A request or a
    round allocates thousands of short-lived objects that reference counting frees, and at
    700 the collector ran ~3 times per batch submit of 500 (0.55 ms of its ~7 ms); cyclic
    garbage waits a little longer, which costs a few hundred kilobytes at most.
    """
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)


async def _serve(settings: Settings) -> int:
    from ..engine.host import Host  # noqa: PLC0415 - the client commands never need the host

    stop = asyncio.Event()
    # Before the host starts: a SIGTERM during start-up then means a clean stop right after.
    procs.on_stop_signals(asyncio.get_running_loop(), stop.set)
    async with Host(settings, serve_api=True) as host:
        _tune_collector()
        print(f"asyncjobs host serving {host.url} (data in {settings.data_dir}); "
              "Ctrl+C to stop", file=sys.stderr, flush=True)
        await stop.wait()
        print("stopping: no new jobs; waiting for running ones "
              f"(up to {settings.shutdown_grace:g}s)", file=sys.stderr, flush=True)
    print("asyncjobs host stopped", file=sys.stderr, flush=True)
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


def _emit(args: argparse.Namespace, value: T, render: Callable[[T], str]) -> int:
    """Print ``value`` as JSON with ``--json``, else the text ``render`` makes of it."""
    if args.json:
        _print_json(value)
    else:
        print(render(value))
    return EXIT_OK


def _finished_code(job: dict[str, JSONValue]) -> int:
    """0 completed; 1 failed, cancelled, or not finished when the wait ran out."""
    if job["status"] == Status.COMPLETED:
        return EXIT_OK
    if job["status"] not in TERMINAL:
        print(f"asyncjobs: job {job['id']} is still {job['status']}; stopped waiting",
              file=sys.stderr)
    return EXIT_JOB_FAILED


def _submit_options(args: argparse.Namespace) -> SubmitOptions:
    return {"kwargs": parse_kw(args.kw) or None, "priority": args.priority,
            "delay": args.delay, "run_at": args.run_at, "timeout": args.timeout,
            "max_attempts": args.max_attempts,
            "then": [parse_step(t) for t in args.then] or None, "unique_key": args.unique_key}


def _submit_params(args: argparse.Namespace) -> list[JSONValue]:
    """The arguments of ``submit``, from whichever of its forms the user typed (one only)."""
    if args.json_args is not None and args.json_array is not None:
        raise InvalidField("--args", "give the arguments with --args or --json '[...]', "
                                     "not both")
    if args.json_array is not None:
        return parse_params(args.params, args.json_array, "--json")
    return parse_params(args.params, args.json_args, "--args")


@dataclasses.dataclass(frozen=True)
class ChainEnd:
    """What ``submit --then ... --wait`` waited for: every step, in order, as the chain
    ended; its last step (whose outcome is the chain's); and the step shown in detail."""

    steps: list[dict[str, JSONValue]]
    last: dict[str, JSONValue]
    decided: dict[str, JSONValue]


def cmd_submit(args: argparse.Namespace) -> int:
    params = _submit_params(args)
    options = _submit_options(args)

    async def call(client: AsyncJobsClient) -> dict[str, JSONValue] | ChainEnd:
        answer = await client.submit_info(args.cls, args.method, params, **options)
        if not args.wait:
            return answer
        if args.then:
            return await _wait_chain(client, int(answer["id"]), args.wait_timeout)
        return await client.wait(int(answer["id"]), args.wait_timeout)

    result = _with_client(args, call)
    if isinstance(result, ChainEnd):  # --json: the last step, as for any --wait (§7)
        _emit(args, result.last, lambda _: display.chain_detail(result.steps, result.decided))
        return _finished_code(result.last)
    if args.wait:
        _emit(args, result, display.job_detail)
        return _finished_code(result)
    if args.json:
        _print_json({"id": result["id"], "status": result["status"],
                     **({"duplicate": True} if result.get("duplicate") else {})})
    elif result.get("duplicate"):
        print(f"job {result['id']} is already {result['status']} with unique key "
              f"{args.unique_key!r}; not submitted again")
    else:
        print(f"submitted job {result['id']} ({result['status']})")
    return EXIT_OK


async def _wait_chain(client: AsyncJobsClient, head: int, timeout: float | None) -> ChainEnd:
    """Wait for a chain's outcome, which is its last step's.

    The submit answer names only the head (§5), whose id is the chain's id, so the steps
    are read as ``list --chain`` reads them (ids grow with the step's position).  They are
    waited for one after the other, until one does not complete: a step that fails or is
    cancelled has cancelled every later one (``ChainBroken``) in the same write.  Not just
    the last step: the host publishes no event for the steps a break cancels, so a wait on
    one of them would notice only when its long-poll slice ran out.  A ``unique_key``
    duplicate that is no chain has no steps: then the head is the job.
    Shown in detail: the last step if it completed, else the step the wait stopped at (the
    one that broke the chain: its error and traceback say why).
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    steps = await _chain_steps(client, head)
    job: dict[str, JSONValue] = {}
    for step in steps or [{"id": head}]:
        left = None if deadline is None else max(0.0, deadline - loop.time())
        job = await client.wait(int(step["id"]), left)
        if job["status"] != Status.COMPLETED:
            break
    if not steps:
        return ChainEnd([job], job, job)
    last = job if job["id"] == steps[-1]["id"] else await client.get(int(steps[-1]["id"]))
    steps = await _chain_steps(client, head)  # again: the outcomes, as of the wait's end
    return ChainEnd(steps, last, job)


async def _chain_steps(client: AsyncJobsClient, head: int) -> list[dict[str, JSONValue]]:
    steps: list[dict[str, JSONValue]] = []
    cursor = None
    while True:
        page, cursor = await client.list(limit=500, cursor=cursor, chain=head)
        steps += page
        if not cursor:
            return sorted(steps, key=lambda job: int(job["id"]))


def cmd_status(args: argparse.Namespace) -> int:
    return _emit(args, _with_client(args, lambda c: c.get(args.id)), display.job_detail)


def cmd_list(args: argparse.Namespace) -> int:
    # A chain (at most MAX_CHAIN + 1 jobs) comes in one page and in step order, as `submit
    # --then --wait` and the dashboard show it; other lists are newest first.
    limit = max(args.limit, MAX_CHAIN + 1) if args.chain and not args.cursor else args.limit
    jobs, cursor = _with_client(args, lambda c: c.list(args.status, args.cls, limit,
                                                       args.cursor, chain=args.chain))
    if args.chain and not cursor:
        jobs = sorted(jobs, key=lambda job: int(str(job["id"])))
    _emit(args, jobs, lambda jobs: display.job_rows(jobs) if jobs else "no jobs")
    if cursor:
        print(f"more: asyncjobs list --cursor {cursor}", file=sys.stderr)
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    return _emit(args, _with_client(args, lambda c: c.cancel(args.id)),
                 lambda job: f"job {job['id']} {job['status']}")


def cmd_retry(args: argparse.Namespace) -> int:
    return _emit(args, _with_client(args, lambda c: c.retry(args.id)),
                 lambda job: f"job {job['id']} is {job['status']} again (attempt budget "
                             f"{job['max_attempts']})")


def cmd_wait(args: argparse.Namespace) -> int:
    job = _with_client(args, lambda c: c.wait(args.id, args.timeout))
    _emit(args, job, display.job_detail)
    return _finished_code(job)


def cmd_logs(args: argparse.Namespace) -> int:
    lines = _with_client(args, lambda c: c.logs(args.id, errors=args.errors, lines=args.lines))
    return _emit(args, lines, lambda lines: "\n".join(lines) if lines else "(no log lines)")


def cmd_stats(args: argparse.Namespace) -> int:
    return _emit(args, _with_client(args, lambda c: c.stats()), display.stats_text)


def cmd_schedules(args: argparse.Namespace) -> int:
    return _emit(args, _with_client(args, lambda c: c.schedules()), display.schedule_rows)


def cmd_hosts(args: argparse.Namespace) -> int:
    return _emit(args, _with_client(args, lambda c: c.hosts()), display.host_rows)


def cmd_prune(args: argparse.Namespace) -> int:
    return _emit(args, _with_client(args, lambda c: c.prune()),
                 lambda pruned: f"pruned {pruned.get('completed', 0)} completed and "
                                f"{pruned.get('failed', 0)} failed or cancelled job(s)")


def cmd_backup(args: argparse.Namespace) -> int:
    """A consistent copy of the live store, through the API (the host must be running;
    with it stopped, ``asyncjobs.db`` itself is consistent and may be copied as it is)."""
    path = Path(args.path).absolute()
    try:
        size = _with_client(args, lambda c: c.backup(path))
    except OSError as exc:
        print(f"asyncjobs: cannot write the backup: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        _print_json({"path": str(path), "bytes": size})
    else:
        print(f"backed up the store to {path} ({size} bytes)")
    return EXIT_OK


def cmd_dashboard(args: argparse.Namespace) -> int:
    url = _with_client(args, lambda c: c.login_link())
    if args.json:
        _print_json({"url": url})
    else:
        print(url)
        print("open it within two minutes; it signs in one browser once", file=sys.stderr)
    return EXIT_OK
