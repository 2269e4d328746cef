"""The control API (§5): aiohttp routes, one security middleware, one error middleware.

Served by the host through ``AppRunner`` + ``TCPSite`` (the host owns the event loop and the
lifecycle; aiohttp only serves).  Every error leaves as ``{"error": {"code", "message"}}``
with the status of its :mod:`errors` class; nothing a client sends can produce a 500 or a
traceback.  The dashboard is served here too, and reads only this JSON API.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from ..errors import (
    AsyncJobsError,
    BadHost,
    BadOrigin,
    BadRequest,
    InvalidField,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from ..models import Status
from . import auth
from .metrics import render_metrics
from .openapi import OPENAPI

if TYPE_CHECKING:
    from ..engine.host import Host

log = logging.getLogger("asyncjobs.web.api")

HOST_KEY: web.AppKey[Host] = web.AppKey("host")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SESSION_COOKIE = "asyncjobs_session"
LOGIN_CODE_TTL = 120.0
SSE_HEARTBEAT = 15.0
PUBLIC_PATHS = frozenset({"/api/health", "/login", "/favicon.ico"})
HTTP_ERRORS = {400: BadRequest, 413: TooLarge}


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def error_response(code: str, message: str, status: int) -> web.Response:
    return json_response({"error": {"code": code, "message": message}}, status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map every exception to the §5 error shape; log, never leak, the unexpected ones."""
    try:
        return await handler(request)
    except AsyncJobsError as exc:
        return error_response(exc.code, exc.message, exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            exc.status, "bad_request")
        response = error_response(code, exc.reason or "request refused", exc.status)
        if "Allow" in exc.headers:  # a 405 says which methods would do
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return error_response("internal", "internal error; see the host's log", 500)


def _session_value(token: str, nonce: str) -> str:
    mac = hmac.new(token.encode(), f"session:{nonce}".encode(), hashlib.sha256).hexdigest()
    return f"{nonce}.{mac}"


def _valid_session(token: str, cookie: str | None) -> bool:
    if not cookie or "." not in cookie or not cookie.isascii():
        return False
    nonce = cookie.split(".", 1)[0]
    return hmac.compare_digest(_session_value(token, nonce), cookie)


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


@web.middleware
async def security_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Loopback Host (DNS rebinding), same-site Origin on writes (CSRF), then the token."""
    host = request.app[HOST_KEY]
    extra = frozenset({host.settings.api.host.lower()}) - {"0.0.0.0", "::", ""}  # noqa: S104
    if not auth.is_loopback_host(request.headers.get("Host"), extra):
        raise BadHost("requests must name a loopback host (localhost or 127.0.0.1)")
    if request.method not in ("GET", "HEAD", "OPTIONS") and not auth.is_same_origin(
            request.headers.get("Origin"), request.headers.get("Host")):
        raise BadOrigin("cross-site requests may not change state")
    if request.path in PUBLIC_PATHS or request.path.startswith("/static/"):
        return await handler(request)
    token_ok = auth.token_matches(host.token, _bearer(request))
    if not token_ok and not _valid_session(host.token, request.cookies.get(SESSION_COOKIE)):
        if request.path == "/":
            return _signed_out_page()
        raise Unauthorized("missing or wrong token: send 'Authorization: Bearer <token>' "
                           f"with the token from {host.data_dir / auth.TOKEN_FILE}")
    return await handler(request)


async def _body(request: web.Request) -> Any:
    try:
        data = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise TooLarge(f"request body over {request.app[HOST_KEY].settings.api.max_body_bytes}"
                       " bytes") from None
    except web.RequestPayloadError:  # e.g. "Content-Encoding: gzip" on a body that is not
        raise BadRequest("could not read the request body; is its Content-Encoding right?") \
            from None
    if not data:
        raise BadRequest("the request body is empty; send a JSON object")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None


def _int_param(request: web.Request, name: str, default: int | None, low: int,
               high: int) -> int | None:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise InvalidField(name, f"must be an integer, got {text[:50]!r}") from None
    if not low <= value <= high:
        raise InvalidField(name, f"must be between {low} and {high}, got {value}")
    return value


def _job_id(request: web.Request) -> int:
    try:
        value = int(request.match_info["job_id"])
    except ValueError:
        raise InvalidField("id", "must be an integer job id") from None
    if not 0 < value < 2**63:
        raise InvalidField("id", "out of range")
    return value


# -- job routes ------------------------------------------------------------------------------

async def submit(request: web.Request) -> web.Response:
    host = request.app[HOST_KEY]
    (result,) = await host.submit_many([await _body(request)])
    body: dict[str, Any] = {"id": result.id, "status": result.status.value}
    if result.duplicate:
        body["duplicate"] = True
    return json_response(body, 200 if result.duplicate else 201)


async def submit_batch(request: web.Request) -> web.Response:
    body = await _body(request)
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
        chain=_int_param(request, "chain", None, 1, 2**63 - 1),
        limit=_int_param(request, "limit", 50, 1, 500) or 50,
        cursor=_int_param(request, "cursor", None, 1, 2**63 - 1))
    return json_response({"jobs": [j.to_json(with_history=False) for j in page.jobs],
                          "next_cursor": str(page.next_cursor) if page.next_cursor else None})


async def get_job(request: web.Request) -> web.Response:
    return json_response((await request.app[HOST_KEY].get(_job_id(request))).to_json())


async def cancel_job(request: web.Request) -> web.Response:
    return json_response((await request.app[HOST_KEY].cancel(_job_id(request))).to_json())


async def retry_job(request: web.Request) -> web.Response:
    return json_response((await request.app[HOST_KEY].retry(_job_id(request))).to_json())


async def wait_job(request: web.Request) -> web.Response:
    timeout = request.query.get("timeout", "30")
    try:
        seconds = float(timeout)
    except ValueError:
        raise InvalidField("timeout", f"must be a number of seconds, got {timeout[:50]!r}")  \
            from None
    if not 0 <= seconds <= 3600:
        raise InvalidField("timeout", "must be between 0 and 3600 seconds")
    job = await request.app[HOST_KEY].wait(_job_id(request), seconds)
    return json_response(job.to_json())


# -- observation -----------------------------------------------------------------------------

async def stats(request: web.Request) -> web.Response:
    return json_response(await request.app[HOST_KEY].stats())


async def logs(request: web.Request) -> web.Response:
    name = request.query.get("file", "jobs")
    if name not in ("jobs", "errors"):
        raise InvalidField("file", "must be 'jobs' or 'errors'")
    lines = _int_param(request, "lines", 100, 1, 10000) or 100
    job = _int_param(request, "job", None, 1, 2**63 - 1)
    return json_response({"file": name,
                          "lines": request.app[HOST_KEY].log_tail(name, lines, job)})


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: one ``job`` event per state change, ``progress`` while running."""
    host = request.app[HOST_KEY]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    await response.write(b": connected\nretry: 2000\n\n")
    closing = asyncio.ensure_future(request.app[CLOSING_KEY].wait())
    with host.events.subscribe() as queue:
        try:
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
                await response.write(b"event: " + kind.encode() + b"\ndata: "
                                     + orjson.dumps(event) + b"\n\n")
        finally:
            closing.cancel()
    return response


async def schedules(request: web.Request) -> web.Response:
    return json_response({"schedules": await request.app[HOST_KEY].schedules()})


async def prune(request: web.Request) -> web.Response:
    return json_response({"pruned": await request.app[HOST_KEY].prune()})


async def backup(request: web.Request) -> web.StreamResponse:
    """A consistent copy of the live SQLite store, sent as the response body.

    Made beside the database (the data directory is the host's own), streamed, removed: the
    API writes no file anywhere a caller chooses.
    """
    host = request.app[HOST_KEY]
    info = await host.store.backup(host.data_dir / f"backup-{secrets.token_hex(8)}.db")
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


# -- dashboard and sign-in -------------------------------------------------------------------

LOGIN_CODES_KEY: web.AppKey[dict[str, float]] = web.AppKey("login_codes")
CLOSING_KEY: web.AppKey[asyncio.Event] = web.AppKey("closing")


async def create_login_link(request: web.Request) -> web.Response:
    """A one-time code (valid two minutes) that signs a browser in at ``/login?code=``."""
    codes = request.app[LOGIN_CODES_KEY]
    now = time.monotonic()
    for code, expiry in list(codes.items()):
        if expiry < now:
            del codes[code]
    code = secrets.token_urlsafe(24)
    codes[code] = now + LOGIN_CODE_TTL
    return json_response({"path": f"/login?code={code}", "expires_in": LOGIN_CODE_TTL}, 201)


async def login(request: web.Request) -> web.StreamResponse:
    host = request.app[HOST_KEY]
    code = request.query.get("code", "")
    expiry = request.app[LOGIN_CODES_KEY].pop(code, None)
    if expiry is None or expiry < time.monotonic():
        return _signed_out_page("That sign-in link has expired or was already used.")
    response = web.HTTPSeeOther("/")
    response.set_cookie(SESSION_COOKIE, _session_value(host.token, secrets.token_urlsafe(16)),
                        httponly=True, samesite="Strict", path="/", max_age=30 * 86400)
    return response


def _static(name: str) -> bytes:
    return resources.files("asyncjobs.web.dashboard").joinpath(name).read_bytes()


def _signed_out_page(note: str = "") -> web.Response:
    text = ("<!doctype html><meta charset=utf-8><title>asyncjobs: sign in</title>"
            "<body style='font-family:system-ui;margin:4rem'><h1>asyncjobs</h1>"
            f"<p>{note}</p><p>This dashboard needs a sign-in link. On the host's machine run "
            "<code>asyncjobs dashboard</code> and open the link it prints.</p></body>")
    return web.Response(text=text, status=401, content_type="text/html")


async def dashboard(request: web.Request) -> web.Response:
    return web.Response(body=_static("index.html"), content_type="text/html",
                        headers={"Cache-Control": "no-store"})


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    suffix = name[name.rfind("."):] if "." in name else ""
    if suffix not in types or "/" in name or name.startswith("."):
        raise web.HTTPNotFound()
    try:
        body = _static(name)
    except (FileNotFoundError, IsADirectoryError):
        raise web.HTTPNotFound() from None
    return web.Response(body=body, content_type=types[suffix])


def build_app(host: Host) -> web.Application:
    app = web.Application(middlewares=[errors_middleware, security_middleware],
                          client_max_size=host.settings.api.max_body_bytes)
    app[HOST_KEY] = host
    app[LOGIN_CODES_KEY] = {}
    app[CLOSING_KEY] = asyncio.Event()

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
    r.add_post("/api/prune", prune)
    r.add_post("/api/backup", backup)
    r.add_get("/api/openapi.json", openapi)
    r.add_post("/api/login-links", create_login_link)
    r.add_get("/metrics", metrics)
    r.add_get("/login", login)
    r.add_get("/", dashboard)
    r.add_get("/static/{name}", static)
    return app


async def start_api(host: Host) -> tuple[web.AppRunner, str]:
    """Serve the API on the configured address; return the runner and the base URL."""
    runner = web.AppRunner(build_app(host), access_log=None, shutdown_timeout=2.0,
                           handle_signals=False)
    await runner.setup()
    api = host.settings.api
    site = web.TCPSite(runner, api.host, api.port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise Unavailable(f"cannot listen on {api.host}:{api.port}: {exc.strerror}") from None
    port = api.port
    server = getattr(site, "_server", None)
    if port == 0 and server is not None and server.sockets:
        port = server.sockets[0].getsockname()[1]
    name = "127.0.0.1" if api.host in ("0.0.0.0", "") else api.host  # noqa: S104
    return runner, f"http://{name}:{port}"
