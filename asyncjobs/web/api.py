"""The control API (§5): the aiohttp application, its JSON routes, and how it is served.

Served by the host through ``AppRunner`` and a :class:`~.guard.GuardedSite` (the host owns
the event loop and the lifecycle; aiohttp only serves).  Two middlewares wrap every route:
:func:`.responses.errors_middleware` (every error in the §5 shape, security headers) and
:func:`.auth.security_middleware` (Host, Origin, credential).  The dashboard's pages and
sign-in routes are in :mod:`.signin`; the API knows the host only through
:class:`.contract.HostAPI`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from ..errors import InvalidField, Unavailable
from ..models import Status
from . import signin
from .auth import connect_host, security_middleware
from .contract import CLOSING_KEY, HOST_KEY, SESSIONS_KEY, STREAMS_KEY, HostAPI
from .guard import GuardedSite, connection_cap
from .metrics import render_metrics
from .openapi import OPENAPI
from .requests import MAX_ID, int_param, job_id, read_json
from .responses import errors_middleware, json_response
from .sessions import SESSIONS_FILE, Sessions

log = logging.getLogger("asyncjobs.web.api")

SSE_HEARTBEAT = 15.0


# -- job routes ------------------------------------------------------------------------------

async def submit(request: web.Request) -> web.Response:
    host = request.app[HOST_KEY]
    (result,) = await host.submit_many([await read_json(request)])
    body: dict[str, Any] = {"id": result.id, "status": result.status.value}
    if result.duplicate:
        body["duplicate"] = True
    return json_response(body, 200 if result.duplicate else 201)


async def submit_batch(request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) != {"jobs"} or not isinstance(body["jobs"], list):
        raise InvalidField("jobs", "the body must be {\"jobs\": [<submit objects>]}")
    if not 0 < len(body["jobs"]) <= 10000:
        raise InvalidField("jobs", "must hold 1 to 10000 jobs")
    results = await request.app[HOST_KEY].submit_many(body["jobs"])
    return json_response({"ids": [r.id for r in results],
                          "duplicates": [r.id for r in results if r.duplicate]}, 201)


async def list_jobs(request: web.Request) -> web.Response:
    status = request.query.get("status") or None
    if status is not None and status not in Status.__members__.values():
        raise InvalidField("status", f"must be one of {[s.value for s in Status]}")
    page = await request.app[HOST_KEY].list_jobs(
        status=Status(status) if status else None, cls=request.query.get("class") or None,
        chain=int_param(request, "chain", None, 1, MAX_ID),
        limit=int_param(request, "limit", 50, 1, 500) or 50,
        cursor=int_param(request, "cursor", None, 1, MAX_ID))
    return json_response({"jobs": [j.to_json(with_history=False) for j in page.jobs],
                          "next_cursor": str(page.next_cursor) if page.next_cursor else None})


async def get_job(request: web.Request) -> web.Response:
    return json_response((await request.app[HOST_KEY].get(job_id(request))).to_json())


async def cancel_job(request: web.Request) -> web.Response:
    return json_response((await request.app[HOST_KEY].cancel(job_id(request))).to_json())


async def retry_job(request: web.Request) -> web.Response:
    return json_response((await request.app[HOST_KEY].retry(job_id(request))).to_json())


async def wait_job(request: web.Request) -> web.Response:
    timeout = request.query.get("timeout", "30")
    try:
        seconds = float(timeout)
    except ValueError:
        raise InvalidField("timeout", f"must be a number of seconds, got {timeout[:50]!r}")  \
            from None
    if not 0 <= seconds <= 3600:
        raise InvalidField("timeout", "must be between 0 and 3600 seconds")
    job = await request.app[HOST_KEY].wait(job_id(request), seconds)
    return json_response(job.to_json())


# -- observation -----------------------------------------------------------------------------

async def stats(request: web.Request) -> web.Response:
    return json_response(await request.app[HOST_KEY].stats())


async def logs(request: web.Request) -> web.Response:
    name = request.query.get("file", "jobs")
    if name not in ("jobs", "errors"):
        raise InvalidField("file", "must be 'jobs' or 'errors'")
    lines = int_param(request, "lines", 100, 1, 10000) or 100
    job = int_param(request, "job", None, 1, MAX_ID)
    return json_response({"file": name,
                          "lines": request.app[HOST_KEY].log_tail(name, lines, job)})


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: one ``job`` event per state change, ``progress`` while running.

    At most ``api.max_event_streams`` at once (503 beyond).  A subscriber that falls behind
    gets ``overflow`` and its stream ends: the browser reconnects and reloads what it shows,
    rather than the host queueing events for a reader that does not read.
    """
    streams = request.app[STREAMS_KEY]
    limit = request.app[HOST_KEY].settings.api.max_event_streams
    if streams[0] >= limit:
        raise Unavailable(f"too many event streams open (the limit is {limit}); close one "
                          "or try again shortly")
    streams[0] += 1
    try:
        return await _stream_events(request)
    finally:
        streams[0] -= 1


# What a client may see: the notifier also carries the hosts' own signals ("due" wakes
# dispatchers, "cancel" tells the running host to kill an attempt), which say nothing a
# client can use and are not part of the documented stream (§5, openapi.py).
PUBLIC_EVENTS = frozenset({"job", "progress", "overflow"})


async def _stream_events(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    closing = asyncio.ensure_future(request.app[CLOSING_KEY].wait())
    # Subscribe before the headers go out: a browser reloads what it shows once the stream
    # opens, so an event published between that "open" and a later subscription would be
    # lost for good (neither in the reload, if it read first, nor on the stream).
    with request.app[HOST_KEY].events.subscribe() as queue:
        try:
            await response.prepare(request)
            await response.write(b": connected\nretry: 2000\n\n")
            while True:
                getting = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getting, closing}, timeout=SSE_HEARTBEAT,
                                             return_when=asyncio.FIRST_COMPLETED)
                if getting not in done:
                    getting.cancel()
                    if closing in done:
                        break  # the host is stopping: end the stream now, not at a heartbeat
                    await response.write(b": heartbeat\n\n")
                    continue
                event = getting.result()
                kind = event.get("type", "job")
                if kind not in PUBLIC_EVENTS:
                    continue
                await response.write(b"event: " + kind.encode() + b"\ndata: "
                                     + orjson.dumps(event) + b"\n\n")
                if kind == "overflow":
                    break
        finally:
            closing.cancel()
    return response


async def schedules(request: web.Request) -> web.Response:
    return json_response({"schedules": await request.app[HOST_KEY].schedules()})


async def hosts(request: web.Request) -> web.Response:
    return json_response({"hosts": await request.app[HOST_KEY].hosts()})


async def prune(request: web.Request) -> web.Response:
    return json_response({"pruned": await request.app[HOST_KEY].prune()})


async def backup(request: web.Request) -> web.StreamResponse:
    """A consistent copy of the live SQLite store, sent as the response body.

    Made beside the database (the data directory is the host's own), streamed, removed: the
    API writes no file anywhere a caller chooses.
    """
    host = request.app[HOST_KEY]
    info = await host.backup(host.data_dir / f"backup-{secrets.token_hex(8)}.db")
    path = Path(info.path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    response = web.StreamResponse(headers={
        "Content-Type": "application/vnd.sqlite3", "Content-Length": str(info.bytes),
        "Content-Disposition": f'attachment; filename="asyncjobs-{stamp}.db"',
        "X-Backup-Pages": str(info.pages), "X-Backup-Seconds": f"{info.seconds:.4f}"})
    try:
        with path.open("rb") as f:
            await response.prepare(request)
            while chunk := await asyncio.to_thread(f.read, 1 << 20):
                await response.write(chunk)
    finally:
        path.unlink(missing_ok=True)
    await response.write_eof()
    return response


async def health(request: web.Request) -> web.Response:
    host = request.app[HOST_KEY]
    return json_response({"status": "ok" if host.accepting else "stopping",
                          "accepting": host.accepting})


async def metrics(request: web.Request) -> web.Response:
    text = render_metrics(await request.app[HOST_KEY].stats())
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


async def openapi(request: web.Request) -> web.Response:
    return json_response(OPENAPI)


def build_app(host: HostAPI) -> web.Application:
    app = web.Application(middlewares=[errors_middleware, security_middleware],
                          client_max_size=host.settings.api.max_body_bytes)
    app[HOST_KEY] = host
    app[SESSIONS_KEY] = Sessions(host.settings.api.session_ttl,
                                 path=host.data_dir / SESSIONS_FILE)
    app[CLOSING_KEY] = asyncio.Event()
    app[STREAMS_KEY] = [0]

    async def on_shutdown(app: web.Application) -> None:
        app[CLOSING_KEY].set()

    app.on_shutdown.append(on_shutdown)
    r = app.router
    r.add_post("/api/jobs", submit)
    r.add_post("/api/jobs/batch", submit_batch)
    r.add_get("/api/jobs", list_jobs)
    # "batch" is not a job id: GET /api/jobs/batch must be a 405, not a bad-id 422.
    r.add_get(r"/api/jobs/{job_id:(?!batch$)[^/]+}", get_job)
    r.add_post("/api/jobs/{job_id}/cancel", cancel_job)
    r.add_post("/api/jobs/{job_id}/retry", retry_job)
    r.add_get("/api/jobs/{job_id}/wait", wait_job)
    r.add_get("/api/stats", stats)
    r.add_get("/api/logs", logs)
    r.add_get("/api/events", events)
    r.add_get("/api/health", health)
    r.add_get("/api/schedules", schedules)
    r.add_get("/api/hosts", hosts)
    r.add_post("/api/prune", prune)
    r.add_post("/api/backup", backup)
    r.add_get("/api/openapi.json", openapi)
    r.add_get("/metrics", metrics)
    signin.add_routes(r)
    return app


def cannot_listen(host: str, port: int, exc: OSError) -> Unavailable:
    return Unavailable(f"cannot listen on {host}:{port}: {exc.strerror}")


def check_port_free(host: str, port: int) -> None:
    """Refuse at once a port something already listens on, before the host opens (and
    perhaps migrates) its store and registers itself: :func:`start_api` binds later, and a
    port taken in between is still refused there."""
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
    except OSError:
        return  # start_api says what is wrong with the address
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            if os.name == "posix":  # as asyncio binds: a port in TIME_WAIT is free
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL:
                    continue  # an address this machine lacks (IPv6 off, say): not ours to judge
                raise cannot_listen(host, port, exc) from None


async def start_api(host: HostAPI) -> tuple[web.AppRunner, str]:
    """Serve the API on the configured address; return the runner and the base URL."""
    api = host.settings.api
    # keepalive_timeout: aiohttp starts it at connect and partial data does not reset it,
    # so it bounds silent connections, trickled headers and idle keep-alive alike.
    runner = web.AppRunner(build_app(host), access_log=None, shutdown_timeout=2.0,
                           handle_signals=False, keepalive_timeout=api.idle_timeout)
    await runner.setup()
    site = GuardedSite(runner, api.host, api.port, connection_cap(api.max_connections))
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise cannot_listen(api.host, api.port, exc) from None
    return runner, f"http://{connect_host(api.host)}:{site.port}"
