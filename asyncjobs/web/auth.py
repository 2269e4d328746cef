"""The request checks that keep a localhost API safe from the browser and from local users.

A local port is reachable by any web page the operator visits and by every local user, so
besides the bearer token (or a dashboard session, see :mod:`.sessions`) the API refuses a
``Host`` that is not a loopback name (DNS rebinding) and a state-changing request whose
``Origin`` is not this very origin (CSRF).  Headers are parsed strictly: a value that is not
exactly ``name[:port]`` is not a loopback name, however it starts.
"""

from __future__ import annotations

import hmac
import ipaddress
import re

from aiohttp import web

from ..errors import BadHost, BadOrigin, Unauthorized
from .contract import HOST_KEY, SESSIONS_KEY
from .responses import Handler

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})
ANY_ADDRESS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - recognised, never bound here
# A Host header: a DNS name or IPv4 address, or a bracketed IPv6 address; then an optional
# port.  Nothing may follow ("[::1]evil.com" and "localhost:evil.com" are not hosts).
HOST_HEADER = re.compile(r"(?:(?P<name>[a-z0-9.-]+)|\[(?P<ip6>[0-9a-f:.]+)\])(?::[0-9]{1,5})?",
                         re.ASCII)


def connect_host(listen_host: str) -> str:
    """The address a client on this machine connects to for a host listening on
    ``listen_host``: the wildcard addresses (``0.0.0.0``, ``::``, empty) mean loopback."""
    if listen_host in ANY_ADDRESS:
        return "127.0.0.1"
    return listen_host


def token_matches(expected: str, given: str | None) -> bool:
    """Constant-time comparison, so response timing does not leak the token."""
    # Never against an empty secret: "Bearer " with nothing after it must not match a
    # token that is empty for whatever reason.  A header may carry any bytes; anything not
    # ASCII cannot be our token (and must not reach compare_digest, which refuses it).
    if not expected or not given or not given.isascii():
        return False
    return hmac.compare_digest(expected, given)


def host_name(host_header: str) -> str | None:
    """The name part of a well-formed Host header (``localhost:8765`` -> ``localhost``,
    ``[::1]:80`` -> ``::1``), or None when the header is not exactly ``name[:port]``."""
    match = HOST_HEADER.fullmatch(host_header.strip().lower())
    if match is None:
        return None
    return match["name"] or match["ip6"]


def is_loopback_host(host_header: str | None, extra: frozenset[str] = frozenset()) -> bool:
    if not host_header:
        return False
    name = host_name(host_header)
    if name is None:
        return False
    return name in LOOPBACK_NAMES or name in extra or _is_loopback_address(name)


def _is_loopback_address(name: str) -> bool:
    # A real address only: a prefix test would let "127.0.0.1.evil.example" (DNS rebinding) in.
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_same_origin(origin: str | None, host_header: str | None) -> bool:
    """An Origin that is exactly this host: ``http://`` (the API speaks plain HTTP, so an
    ``https://`` page is another origin) plus the Host header.  ``None`` is not checked
    here: the caller decides whether a request without Origin may pass."""
    if origin is None or not host_header or not origin.isascii():
        return False
    return origin.strip().lower() == "http://" + host_header.strip().lower()


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PUBLIC_PATHS = frozenset({"/", "/login", "/api/health", "/api/sessions", "/favicon.ico"})
TOKEN_ONLY_PATHS = frozenset({"/api/login-links"})  # a session may not mint sign-in links


def _bearer(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


@web.middleware
async def security_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Loopback Host (DNS rebinding), this origin on writes (CSRF), then the credential:
    the API token, a dashboard session, or (the event stream only) a one-use ticket."""
    host = request.app[HOST_KEY]
    if not is_loopback_host(request.headers.get("Host"),
                            frozenset({host.settings.api.host.lower()}) - ANY_ADDRESS):
        raise BadHost("requests must name a loopback host (localhost or 127.0.0.1)")
    # No Origin at all (curl, the CLI) cannot be a browser's cross-site request; and no
    # credential is ambient (no cookies), so a forged request could not authenticate anyway.
    origin = request.headers.get("Origin")
    if request.method not in SAFE_METHODS and origin is not None and not is_same_origin(
            origin, request.headers.get("Host")):
        raise BadOrigin("cross-site requests may not change state")
    if request.path in PUBLIC_PATHS or request.path.startswith("/static/"):
        return await handler(request)
    given = _bearer(request)
    sessions = request.app[SESSIONS_KEY]
    if (token_matches(host.token, given)
            or (request.path not in TOKEN_ONLY_PATHS and sessions.is_session(given))
            or (request.path == "/api/events"
                and sessions.use_ticket(request.query.get("ticket")))):
        return await handler(request)
    # Say where the token is, not the absolute path: the caller is not yet trusted.
    raise Unauthorized("missing or wrong token: send 'Authorization: Bearer <token>' with "
                       "the token from the 'token' file in the host's data directory")
