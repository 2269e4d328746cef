"""Connection limits for the API's listening socket, so no local process can lock it out.

aiohttp alone would keep every connection as long as its client likes: a few hundred silent
sockets exhaust the host's file descriptors, and then ``/api/health`` and submits time out
and every failed ``accept()`` logs a traceback.  So:

- a connection with no request in progress (before its first request, between keep-alive
  requests, or trickling in its headers a byte at a time) is closed after ``idle_timeout``:
  aiohttp's keep-alive timer, which starts at connect and is not reset by partial data;
- at most ``max_connections`` are open at once; beyond that a new connection gets a short
  ``503`` in the §5 error shape and is closed at once, and the overload is logged once per
  :data:`REPORT_INTERVAL`, not once per connection;
- the soft open-file limit is raised to the hard one at start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiohttp import web

from ..workers import procs
from .responses import JsonErrorHandler, error_body

log = logging.getLogger("asyncjobs.web")

REPORT_INTERVAL = 60.0
FD_RESERVE = 128  # descriptors kept for the store, logs and worker pipes


class _CountedHandler(JsonErrorHandler):
    __slots__ = ("_release",)
    _release: Callable[[], None]

    def connection_lost(self, exc: BaseException | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            self._release()


class _Refuse(asyncio.Protocol):
    """Answers one over-the-cap connection with a 503 and closes it.

    It reads (and drops) what the client sends for a moment before closing: closing with
    its request unread would reset the connection, and the client would see the reset
    instead of the 503.  At most :data:`LINGERING` refusals wait like this at once.
    """

    BODY = error_body("unavailable", "too many connections to this host; try again shortly")
    RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
                % len(BODY) + BODY)
    LINGER = 0.5
    LINGERING = 256  # beyond this many at once, close at once (the client may see a reset)
    lingering = 0

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.RESPONSE)
        if _Refuse.lingering >= self.LINGERING or not transport.can_write_eof():
            transport.close()
            return
        _Refuse.lingering += 1
        transport.write_eof()
        self.timer = asyncio.get_running_loop().call_later(self.LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        pass  # the request is refused whatever it says

    def eof_received(self) -> bool:
        return False  # the client is done: close now

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            _Refuse.lingering -= 1


class ConnectionGuard:
    """The protocol factory given to ``create_server``: aiohttp's handler while under the
    cap, a :class:`_Refuse` beyond it."""

    def __init__(self, server: web.Server, limit: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.server = server
        self.limit = limit
        self.open = 0
        self.refused = 0
        self._clock = clock
        self._reported_at = -REPORT_INTERVAL

    def __call__(self) -> asyncio.BaseProtocol:
        # Counted here, not in connection_made: asyncio may accept a burst of connections
        # (call this factory many times) before any of them is made.
        if self.open >= self.limit:
            self._overloaded()
            return _Refuse()
        self.open += 1
        # aiohttp builds its handler from the Server's own arguments (Server.__call__);
        # we build the subclass with the same ones.
        handler = _CountedHandler(self.server, loop=self.server._loop,
                                  **self.server._kwargs)
        handler._release = self._release
        return handler

    def _release(self) -> None:
        self.open -= 1

    def _overloaded(self) -> None:
        self.refused += 1
        now = self._clock()
        if now - self._reported_at >= REPORT_INTERVAL:
            log.warning("API overloaded: %d connections open (the cap); refused %d "
                        "connection(s) since the last report", self.open, self.refused)
            self._reported_at = now
            self.refused = 0


def connection_cap(configured: int) -> int:
    """``configured``, lowered to fit the open-file limit (raised to its maximum first)."""
    soft = procs.raise_open_file_limit()
    needed = FD_RESERVE + _Refuse.LINGERING
    if soft is None or configured + needed <= soft:
        return configured
    cap = max(2, soft - needed)
    log.warning("api.max_connections %d lowered to %d: the open-file limit is %d",
                configured, cap, soft)
    return cap


class GuardedSite(web.BaseSite):
    """A TCP site whose connections go through a :class:`ConnectionGuard`."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, limit: int) -> None:
        super().__init__(runner)
        self.host = host
        self.requested_port = port
        self.limit = limit
        self.guard: ConnectionGuard | None = None
        self._listener: asyncio.Server | None = None

    @property
    def name(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def port(self) -> int:
        if self._listener is not None and self._listener.sockets:
            return int(self._listener.sockets[0].getsockname()[1])
        return self.requested_port

    async def start(self) -> None:
        await super().start()
        assert self._runner.server is not None
        self.guard = ConnectionGuard(self._runner.server, self.limit)
        loop = asyncio.get_running_loop()
        self._server = self._listener = await loop.create_server(
            self.guard, self.host, self.requested_port, reuse_address=True)
