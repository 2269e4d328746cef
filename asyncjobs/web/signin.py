"""The dashboard's pages and its sign-in routes (see :mod:`.sessions` for the design).

``GET /`` and ``GET /login`` are static pages that hold no data: the dashboard's script
reads everything through the JSON API with its session, and a browser without one is sent
to ``/login``, which says how to get a sign-in link.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from ..errors import BadRequest, Unauthorized
from .contract import HOST_KEY, SESSIONS_KEY
from .requests import read_json
from .responses import json_response
from .sessions import LOGIN_CODE_TTL, TICKET_TTL

STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


async def create_login_link(request: web.Request) -> web.Response:
    """A one-time code (valid two minutes) that signs a browser in at ``/login?code=``."""
    code = request.app[SESSIONS_KEY].login_code()
    return json_response({"path": f"/login?code={code}", "expires_in": LOGIN_CODE_TTL}, 201)


async def create_session(request: web.Request) -> web.Response:
    """Trade a sign-in code (once) for a session token."""
    body = await read_json(request)
    code = body.get("code") if isinstance(body, dict) else None
    if not isinstance(code, str):
        raise BadRequest('send {"code": "<the code of a sign-in link>"}')
    session = request.app[SESSIONS_KEY].exchange(code)
    if session is None:
        raise Unauthorized("that sign-in link has expired or was already used; run "
                           "'asyncjobs dashboard' for a new one")
    ttl = request.app[HOST_KEY].settings.api.session_ttl
    return json_response({"session": session, "expires_in": ttl}, 201)


async def revoke_sessions(request: web.Request) -> web.Response:
    """End every dashboard session now (the API token stays valid)."""
    return json_response({"revoked": request.app[SESSIONS_KEY].revoke_all()})


async def create_ticket(request: web.Request) -> web.Response:
    """A single-use ticket for one ``GET /api/events?ticket=`` (EventSource sends no headers)."""
    return json_response({"ticket": request.app[SESSIONS_KEY].ticket(),
                          "expires_in": TICKET_TTL}, 201)


def _static(name: str) -> bytes:
    return resources.files("asyncjobs.web.dashboard").joinpath(name).read_bytes()


def _page(name: str) -> web.Response:
    return web.Response(body=_static(name), content_type="text/html",
                        headers={"Cache-Control": "no-store"})


async def dashboard(request: web.Request) -> web.Response:
    return _page("index.html")


async def login(request: web.Request) -> web.Response:
    return _page("login.html")


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    suffix = name[name.rfind("."):] if "." in name else ""
    if suffix not in STATIC_TYPES or "/" in name or name.startswith("."):
        raise web.HTTPNotFound()
    try:
        body = _static(name)
    except (FileNotFoundError, IsADirectoryError):
        raise web.HTTPNotFound() from None
    return web.Response(body=body, content_type=STATIC_TYPES[suffix])


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/api/login-links", create_login_link)
    router.add_post("/api/sessions", create_session)
    router.add_post("/api/sessions/revoke", revoke_sessions)
    router.add_post("/api/events/tickets", create_ticket)
    router.add_get("/login", login)
    router.add_get("/", dashboard)
    router.add_get("/static/{name}", static)
