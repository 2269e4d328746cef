"""Errors → HTTP: the one table of status codes, the §5 error shape, and security headers.

Domain errors (:mod:`asyncjobs.errors`) know nothing of HTTP; :data:`STATUS` maps each class
to its status code here.  Every error leaves as ``{"error": {"code", "message"}}`` (plus the
class's ``details``, from which the client rebuilds the same exception), including the 400s
aiohttp's own HTTP parser produces: those are plain text by default and echo the offending
header, which may hold the token.  Nothing a client sends can produce a 500 or a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from ..errors import (
    AsyncJobsError,
    BadHost,
    BadOrigin,
    BadRequest,
    ConfigError,
    HostLocked,
    InvalidField,
    JobNotFound,
    NotAllowed,
    TooLarge,
    Unauthorized,
    Unavailable,
    WrongState,
)

log = logging.getLogger("asyncjobs.web")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATUS: dict[type[AsyncJobsError], int] = {
    BadRequest: 400,
    Unauthorized: 401,
    NotAllowed: 403,
    BadOrigin: 403,
    BadHost: 403,
    JobNotFound: 404,
    WrongState: 409,
    TooLarge: 413,
    InvalidField: 422,
    Unavailable: 503,
    HostLocked: 503,
    ConfigError: 500,
}
"""HTTP status per error class; a class not listed (or a subclass) takes its base's."""

CODE_BY_STATUS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
                  413: "too_large", 414: "too_large", 431: "too_large", 503: "unavailable"}

# The dashboard runs only its own script and style, talks only to this origin, and may not
# be framed (clickjacking from another page, even one on another port of this host).
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; "
                                "img-src 'self'; connect-src 'self'; base-uri 'none'; "
                                "form-action 'none'; frame-ancestors 'none'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def status_of(exc: AsyncJobsError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return orjson.dumps({"error": error})


def error_response(code: str, message: str, status: int,
                   details: dict[str, Any] | None = None) -> web.Response:
    return web.Response(body=error_body(code, message, details), status=status,
                        content_type="application/json")


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map every exception to the §5 error shape; log, never leak, the unexpected ones."""
    try:
        response = await handler(request)
    except AsyncJobsError as exc:
        response = error_response(exc.code, exc.message, status_of(exc), exc.wire_args())
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = CODE_BY_STATUS.get(exc.status, "bad_request")
        response = error_response(code, exc.reason or "request refused", exc.status)
        if "Allow" in exc.headers:  # a 405 says which methods would do
            response.headers["Allow"] = exc.headers["Allow"]
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        response = error_response("internal", "internal error; see the host's log", 500)
    if not response.prepared:  # an event stream has sent its headers already
        response.headers.update(SECURITY_HEADERS)
    return response


class JsonErrorHandler(RequestHandler):
    """aiohttp's connection handler, with its protocol-level errors (a malformed request
    line or header, headers too large) answered in the §5 shape, without echoing the bad
    input, and logged quietly: a hostile client must not fill the host's log."""

    __slots__ = ()

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            log.error("error serving a request: %r", exc)
        else:
            log.debug("refused a malformed request: %r", exc)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error")
        try:
            reason = f"{status} {HTTPStatus(status).phrase}"
        except ValueError:
            reason = str(status)
        code = CODE_BY_STATUS.get(status, "bad_request" if status < 500 else "internal")
        response = error_response(code, f"malformed or refused request ({reason})", status)
        response.force_close()
        return response
