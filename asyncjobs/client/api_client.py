"""The client: :class:`AsyncJobsClient` over the control API, and ``submit_job`` for apps.

Everything a client does goes through the HTTP API (§5), exactly as the CLI does; nothing
here opens the store.  Errors come back as the same :mod:`errors` classes the host raised,
mapped from the API's ``error.code``, so ``except JobNotFound`` works across the wire.
A host that does not answer at all is a :class:`HostUnreachable` naming the URL tried.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypedDict, Unpack

import aiohttp
import orjson

from ..errors import (
    AsyncJobsError,
    BadResponse,
    ConfigError,
    HostUnreachable,
    InvalidField,
    Unauthorized,
    from_wire,
)
from ..files import create_private
from ..models import TERMINAL, JSONValue
from .discovery import discover, token_places
from .events import EventStream

WAIT_SLICE = 30.0  # seconds per long-poll request; well under any proxy's idle timeout

Job = dict[str, JSONValue]
"""A job in the §6 JSON shape."""
JobList = list[Job]
IdList = list[int]
Lines = list[str]
Records = list[dict[str, JSONValue]]  # an alias: inside the class, ``list`` is a method
Step = Mapping[str, JSONValue] | tuple[str, str] | tuple[str, str, Sequence[JSONValue]]
"""A chain step: ``{"class", "method", "args", "kwargs"}`` or ``(class, method[, args])``."""


class SubmitOptions(TypedDict, total=False):
    """The optional §5 submit fields, as keyword arguments."""

    kwargs: Mapping[str, JSONValue] | None
    priority: str | None
    delay: float | None
    run_at: str | dt.datetime | None
    timeout: float | None
    max_attempts: int | None
    then: Sequence[Step] | None
    unique_key: str | None


def _error(status: int, body: bytes, url: str) -> AsyncJobsError:
    """The :mod:`errors` exception an API error response describes (see ``from_wire``)."""
    try:
        info = orjson.loads(body)["error"]
        code, message = str(info["code"]), str(info["message"])
        details = info.get("details")
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return BadResponse(url, status)
    return from_wire(code, message, details if isinstance(details, dict) else None)


def _step(step: Step) -> dict[str, JSONValue]:
    if isinstance(step, tuple):
        return {"class": step[0], "method": step[1],
                "args": list(step[2]) if len(step) > 2 else []}
    return dict(step)


def iso_time(moment: dt.datetime) -> str:
    """A datetime as §6 ISO 8601 UTC with milliseconds and ``Z`` (naive means UTC)."""
    moment = moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def submit_body(cls: str, method: str, args: Sequence[JSONValue] | None = None,
                **options: Unpack[SubmitOptions]) -> dict[str, JSONValue]:
    """The §5 submit object; options left at ``None`` are left out (the host's defaults).

    Refused here, before anything is sent: a ``str`` or ``bytes`` as ``args`` (a sequence
    too, which ``list()`` would split into characters), and a non-finite ``delay`` or
    ``timeout`` (JSON has no inf or nan; encoded as null, the host would see no field).
    """
    if isinstance(args, str | bytes | bytearray):
        raise TypeError(f"args must be a list of arguments, not {type(args).__name__}: "
                        f"pass [{args!r}] for one argument")
    for name in ("delay", "timeout"):
        value = options.get(name)
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidField(name, f"must be a finite number, got {value!r}")
    body: dict[str, JSONValue] = {"class": cls, "method": method, "args": list(args or [])}
    body.update({k: v for k, v in options.items() if v is not None})
    if (kwargs := options.get("kwargs")) is not None:
        body["kwargs"] = dict(kwargs)
    if isinstance(run_at := options.get("run_at"), dt.datetime):
        body["run_at"] = iso_time(run_at)
    if (then := options.get("then")) is not None:
        body["then"] = [_step(s) for s in then]
    return body


class AsyncJobsClient:
    """A client of one host's control API; reuses one HTTP session.

    ``async with AsyncJobsClient() as client: job_id = await client.submit("SampleJob",
    "process", ["a"])``.  ``url`` and ``token`` default as :func:`discover` says; ``config``
    is the config file to read them from (default: ``$ASYNCJOBS_CONFIG`` or ./config.json).
    """

    def __init__(self, url: str | None = None, token: str | None = None, *,
                 config: str | Path | None = None, connect_timeout: float = 5.0) -> None:
        self._config = config
        if url is None or token is None:
            found_url, found_token = discover(config)
            url, token = url or found_url, token or found_token
        if not url.startswith(("http://", "https://")):
            raise ConfigError("url", "an http:// or https:// URL of the host", url)
        self.url = url.rstrip("/")
        self.token = token
        self.connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"AsyncJobsClient(url={self.url!r})"

    async def __aenter__(self) -> AsyncJobsClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running loop (never in __init__).
        if self._session is None:
            headers = {"Accept": "application/json", "User-Agent": "asyncjobs-client"}
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            self._session = aiohttp.ClientSession(headers=headers)
        return self._session

    def _lost(self, exc: BaseException, what: str = "lost the connection to the asyncjobs host at",
              hint: str = "") -> HostUnreachable:
        """The error for a connection to the host that broke off mid-way."""
        return HostUnreachable(f"{what} {self.url} ({type(exc).__name__}){hint}")

    async def _open(self, method: str, path: str, *, body: JSONValue = None,
                    params: Mapping[str, str] | None = None,
                    read_timeout: float | None = 60.0) -> aiohttp.ClientResponse:
        url = self.url + path
        timeout = aiohttp.ClientTimeout(total=None, connect=self.connect_timeout,
                                        sock_read=read_timeout)
        data = orjson.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else None
        try:
            response = await self._http().request(method, url, data=data, params=params,
                                                  headers=headers, timeout=timeout)
        except aiohttp.ClientConnectorError as exc:
            reason = ("connection refused" if isinstance(exc.os_error, ConnectionRefusedError)
                      else str(exc.os_error.strerror or exc))
            raise HostUnreachable(f"no asyncjobs host is reachable at {self.url} ({reason}); "
                                  "start one with 'asyncjobs serve'") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._lost(exc, hint="; is 'asyncjobs serve' running?") from None
        if response.status >= 400:
            text = await response.read()
            response.release()
            error = _error(response.status, text, self.url)
            if isinstance(error, Unauthorized) and not self.token:
                # "wrong token" misleads when none was sent: say where one was looked for.
                raise Unauthorized(f"no API token was found (looked in {token_places(self._config)}"
                                   f"); the host at {self.url} needs one") from None
            raise error
        return response

    async def _call(self, method: str, path: str, *, body: JSONValue = None,
                    params: Mapping[str, str] | None = None,
                    read_timeout: float = 60.0) -> JSONValue:
        response = await self._open(method, path, body=body, params=params,
                                    read_timeout=read_timeout)
        try:
            data = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._lost(exc) from None
        finally:
            response.release()
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            raise _error(response.status, data, self.url) from None

    # -- jobs ------------------------------------------------------------------------------

    async def submit(self, cls: str, method: str, args: Sequence[JSONValue] | None = None,
                     **options: Unpack[SubmitOptions]) -> int:
        """Submit one job and return its id (an existing job's, for a live ``unique_key``)."""
        answer = await self.submit_info(cls, method, args, **options)
        return int(answer["id"])

    async def submit_info(self, cls: str, method: str, args: Sequence[JSONValue] | None = None,
                          **options: Unpack[SubmitOptions]) -> dict[str, JSONValue]:
        """Like :meth:`submit`, but return the API's answer: ``{"id", "status"}``, plus
        ``"duplicate": true`` when a job with the same ``unique_key`` was already live."""
        answer = await self._call("POST", "/api/jobs",
                                  body=submit_body(cls, method, args, **options))
        assert isinstance(answer, dict)
        return answer

    async def submit_batch(self, jobs: Sequence[Mapping[str, JSONValue]]) -> IdList:
        """Submit §5 submit objects in one transaction (all or none); return their ids."""
        answer = await self._call("POST", "/api/jobs/batch", body={"jobs": [dict(j)
                                                                            for j in jobs]})
        return [int(i) for i in answer["ids"]]

    async def get(self, job_id: int) -> Job:
        """One job with its attempt history (§6)."""
        job: Job = await self._call("GET", f"/api/jobs/{int(job_id)}")
        return job

    async def cancel(self, job_id: int) -> Job:
        """Cancel a pending job, or kill a running one; the job afterwards. Finished: 409."""
        job: Job = await self._call("POST", f"/api/jobs/{int(job_id)}/cancel")
        return job

    async def retry(self, job_id: int) -> Job:
        """Put a failed or cancelled job back in the queue with a fresh attempt budget."""
        job: Job = await self._call("POST", f"/api/jobs/{int(job_id)}/retry")
        return job

    async def wait(self, job_id: int, timeout: float | None = None) -> Job:
        """The job once it is finished, or as it is after ``timeout`` seconds (None: forever).

        Long-polls in slices of at most 30 s, so no connection idles for long.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + max(0.0, timeout)
        while True:
            left = WAIT_SLICE if deadline is None else min(WAIT_SLICE, deadline - loop.time())
            job: Job = await self._call(
                "GET", f"/api/jobs/{int(job_id)}/wait", params={"timeout": f"{max(0, left):.3f}"},
                read_timeout=max(0, left) + 30)
            if job["status"] in TERMINAL or (deadline is not None and loop.time() >= deadline):
                return job

    async def run(self, cls: str, method: str, args: Sequence[JSONValue] | None = None, *,
                  wait_timeout: float | None = None, **options: Unpack[SubmitOptions]) -> Job:
        """Submit a job and wait for it (see :meth:`wait`); return the job (§6)."""
        job_id = await self.submit(cls, method, args, **options)
        return await self.wait(job_id, wait_timeout)

    async def list(self, status: str | None = None, cls: str | None = None, limit: int = 50,
                   cursor: str | None = None, *, chain: int | None = None,
                   ) -> tuple[JobList, str | None]:
        """A page of jobs, newest first (without attempt history), and the cursor of the next
        page (``None`` on the last page); ``chain`` lists the steps of one chain."""
        params = {"limit": str(limit)}
        if chain is not None:
            params["chain"] = str(int(chain))
        if status:
            params["status"] = status
        if cls:
            params["class"] = cls
        if cursor:
            params["cursor"] = str(cursor)
        page = await self._call("GET", "/api/jobs", params=params)
        return page["jobs"], page["next_cursor"]

    # -- observation -----------------------------------------------------------------------

    async def stats(self) -> dict[str, JSONValue]:
        """Counts per status and per class, throughput, running workers, uptime."""
        stats: dict[str, JSONValue] = await self._call("GET", "/api/stats")
        return stats

    async def logs(self, job_id: int | None = None, *, errors: bool = False,
                   lines: int = 100) -> Lines:
        """The last ``lines`` lines of jobs.log (or jobs_errors.log), optionally of one job."""
        params = {"file": "errors" if errors else "jobs", "lines": str(lines)}
        if job_id is not None:
            params["job"] = str(int(job_id))
        answer = await self._call("GET", "/api/logs", params=params)
        lines_: Lines = answer["lines"]
        return lines_

    async def schedules(self) -> Records:
        """The configured recurring schedules with their next and last runs."""
        answer = await self._call("GET", "/api/schedules")
        schedules: Records = answer["schedules"]
        return schedules

    async def hosts(self) -> Records:
        """The hosts sharing the store: id, address, heartbeat, running attempts, alive."""
        answer = await self._call("GET", "/api/hosts")
        hosts: Records = answer["hosts"]
        return hosts

    async def prune(self) -> dict[str, int]:
        """Apply the retention rules now; how many finished jobs were deleted, per rule."""
        answer = await self._call("POST", "/api/prune")
        pruned: dict[str, int] = answer["pruned"]
        return pruned

    async def backup(self, path: str | Path) -> int:
        """Write a consistent copy of the host's live store to the new file ``path``; its
        size in bytes.  Written aside and renamed, so ``path`` is never half a copy."""
        target = Path(path)
        if target.exists():
            raise FileExistsError(f"{target} exists already; a backup never overwrites a file")
        if not target.parent.is_dir():  # said before asking the host for a copy
            raise FileNotFoundError(f"{target.parent} is not an existing directory")
        staged = target.with_name(f".{target.name}.partial")
        response = await self._open("POST", "/api/backup", read_timeout=600.0)
        size = 0
        try:
            # 0600, and never through a link: the copy holds every job's args and results.
            with create_private(staged) as f:
                async for chunk in response.content.iter_chunked(1 << 20):
                    f.write(chunk)
                    size += len(chunk)
                f.flush()
                os.fsync(f.fileno())
            if size != response.content_length:
                raise HostUnreachable(f"the backup from {self.url} ended after {size} bytes")
            os.replace(staged, target)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._lost(exc) from None
        finally:
            response.release()
            staged.unlink(missing_ok=True)
        return size

    async def health(self) -> dict[str, JSONValue]:
        health: dict[str, JSONValue] = await self._call("GET", "/api/health")
        return health

    def events(self) -> EventStream:
        """Server-sent events, one per state change (see :class:`EventStream`)."""
        return EventStream(self)

    async def revoke_sessions(self) -> int:
        """Sign every dashboard out (the API token stays valid); how many sessions ended."""
        answer = await self._call("POST", "/api/sessions/revoke")
        return int(answer["revoked"])

    async def login_link(self) -> str:
        """A one-time dashboard sign-in URL, valid for two minutes."""
        answer = await self._call("POST", "/api/login-links")
        return self.url + str(answer["path"])


async def submit_job(cls: str, method: str, args: Sequence[JSONValue] | None = None, *,
                     url: str | None = None, token: str | None = None,
                     config: str | Path | None = None,
                     **options: Unpack[SubmitOptions]) -> int:
    """Submit one job from async code and return its id: ``await submit_job("SampleJob",
    "process", ["a"], priority="high", delay=5)``.

    Opens one connection per call; to submit many jobs, keep an :class:`AsyncJobsClient`.
    """
    async with AsyncJobsClient(url, token, config=config) as client:
        return await client.submit(cls, method, args, **options)


def submit_job_sync(cls: str, method: str, args: Sequence[JSONValue] | None = None, *,
                    url: str | None = None, token: str | None = None,
                    config: str | Path | None = None,
                    **options: Unpack[SubmitOptions]) -> int:
    """:func:`submit_job` for synchronous code (a script, a Django view, a WSGI app).

    It runs its own event loop with :func:`asyncio.run`, so it must not be called from
    inside a running event loop (that would block the loop); there, ``await submit_job``.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("submit_job_sync() was called inside a running event loop, which "
                           "it would block; use 'await submit_job(...)' there instead")
    return asyncio.run(submit_job(cls, method, args, url=url, token=token, config=config,
                                  **options))
