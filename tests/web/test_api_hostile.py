"""Hostile HTTP against a live ``asyncjobs serve``: path traversal, header injection and
oversized headers, sent as raw bytes (an HTTP client would normalise or refuse most of them).

The rule (§5, §9): a hostile request gets a 4xx, never a 5xx, never a file from outside the
dashboard assets, and never a header it smuggled in; the host keeps serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from faultjobs.live import LiveServe, fault_classes, write_project

REFUSED = {400, 401, 403, 404, 405, 413, 414, 422, 431}


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServe]:
    config = write_project(tmp_path_factory.mktemp("hostile"), fault_classes("Faults"))
    with LiveServe(config) as live:
        yield live


class Reply:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.status_line = lines[0].decode("latin-1")
        self.status = int(self.status_line.split()[1]) if lines[0] else 0
        self.headers = [line.decode("latin-1").partition(":") for line in lines[1:]]
        self.header_names = {name.strip().lower() for name, _, _ in self.headers}

    def __repr__(self) -> str:
        return f"<{self.status_line} {self.body[:200]!r}>"


async def raw(serve: LiveServe, request: bytes) -> Reply:
    """Send ``request`` as it is on a fresh connection; read the whole answer (bounded)."""
    host, port = serve.url.rsplit("/", 1)[1].split(":")
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 5)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    return Reply(data)


def get(path: bytes, *headers: bytes, host: bytes = b"127.0.0.1") -> bytes:
    lines = [b"GET " + path + b" HTTP/1.1", b"Host: " + host, *headers, b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def bearer(serve: LiveServe) -> bytes:
    return b"Authorization: Bearer " + serve.token.encode()


def assert_no_secret(serve: LiveServe, reply: Reply) -> None:
    assert serve.token.encode() not in reply.body
    assert b"root:x:0:0" not in reply.body
    assert b"faultjobs.hostile" not in reply.body, "config.json leaked"


# -- path traversal --------------------------------------------------------------------------

TRAVERSALS = [
    b"/api/jobs/..%2f..%2fetc%2fpasswd",
    b"/api/jobs/..%2F..%2F..%2Fdata%2Ftoken",
    b"/api/jobs/%2e%2e",
    b"/static/../config.json",
    b"/static/../../config.json",
    b"/static/%2e%2e/token",
    b"/static/%2e%2e/data/token",
    b"/static/..%2ftoken",
    b"/static/%2e%2e%2f%2e%2e%2fconfig.json",
    b"/static/..%5c..%5cconfig.json",
    b"/static/....//....//config.json",
    b"/static/app.js%00.json",
    b"/static/%2fetc%2fpasswd",
    b"/static/__init__.py",
    b"/static/.hidden.js",
    b"//etc/passwd",
    b"/api/../data/token",
    b"/api/logs?file=../token",
    b"/api/logs?file=..%2f..%2fconfig.json",
    b"/api/sessions?code=../../token",
]


@pytest.mark.parametrize("path", TRAVERSALS, ids=[p.decode() for p in TRAVERSALS])
async def test_path_traversal_is_refused(serve: LiveServe, path: bytes) -> None:
    reply = await raw(serve, get(path, bearer(serve)))
    assert reply.status in REFUSED, reply
    assert_no_secret(serve, reply)


async def test_the_dashboard_assets_are_still_served(serve: LiveServe) -> None:
    reply = await raw(serve, get(b"/static/app.js"))
    assert reply.status == 200, reply
    assert ("content-type", " text/javascript; charset=utf-8") in {
        (n.lower(), v) for n, _, v in reply.headers} or b"function" in reply.body


# -- header injection ------------------------------------------------------------------------

def _split_token(serve: LiveServe, separator: bytes) -> bytes:
    token = serve.token.encode()
    return b"Authorization: Bearer " + token[:8] + separator + token[8:]


@pytest.mark.parametrize("separator", [b"\r\n", b"\n", b"\r", b"\r\n ", b"\r\n\t", b"\x00"],
                         ids=["crlf", "lf", "cr", "crlf-fold-space", "crlf-fold-tab", "nul"])
async def test_a_token_with_line_breaks_is_refused(serve: LiveServe, separator: bytes) -> None:
    reply = await raw(serve, get(b"/api/stats", _split_token(serve, separator)))
    assert reply.status in (400, 401), reply
    assert b"counts" not in reply.body


@pytest.mark.parametrize("header", [
    b"Host: localhost\x00.evil.example",
    b"Host: localhost\r.evil.example",
    b"X-Note: a\rb",
    b"X-Note: a\x00b",
    b"X-Note: a\x7fb",
], ids=["host-nul", "host-cr", "value-cr", "value-nul", "value-del"])
async def test_control_characters_in_header_values_are_refused(serve: LiveServe,
                                                               header: bytes) -> None:
    request = (b"GET /api/stats HTTP/1.1\r\n" + header + b"\r\nHost: 127.0.0.1\r\n"
               + bearer(serve) + b"\r\nConnection: close\r\n\r\n")
    reply = await raw(serve, request)
    assert reply.status == 400, reply


async def test_smuggling_a_second_request_after_a_crlf_in_the_token_is_refused(
        serve: LiveServe) -> None:
    token = serve.token.encode()
    request = (b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer x\r\n"
               b"\r\nGET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
               + token[:4] + b"\r\n\r\n")
    reply = await raw(serve, request + b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Connection: close\r\n\r\n")
    assert reply.status == 200  # the first, public request
    assert b'"counts"' not in reply.body, "the smuggled request must not be authorised"


@pytest.mark.parametrize("path", [
    b"/login?code=%0d%0aSet-Cookie:%20injected=1",
    b"/api/jobs?class=%0d%0aX-Injected:%201",
    b"/api/logs?file=%0d%0aX-Injected:%201",
    b"/api/jobs/1%0d%0aX-Injected:%201",
    b"/static/x%0d%0aX-Injected:%201.js",
], ids=["login-code", "list-class", "logs-file", "job-id", "static-name"])
async def test_crlf_in_the_url_never_becomes_a_response_header(serve: LiveServe,
                                                               path: bytes) -> None:
    reply = await raw(serve, get(path, bearer(serve)))
    assert reply.status < 500, reply
    assert "x-injected" not in reply.header_names
    assert not any("injected=1" in value for name, _, value in reply.headers
                   if name.lower() == "set-cookie")


@pytest.mark.parametrize("header", [
    b"Authorization: Bearer \xff\xfe\xfd",
    "Authorization: Bearer é-not-the-token".encode(),
    "Cookie: asyncjobs_session=é.x".encode(),
    b"Cookie: asyncjobs_session=\xff.\xfe",
    "Origin: http://ünïcode.example".encode(),
    b"Host: \xff\xfe",
], ids=["token-not-utf8", "token-non-ascii", "cookie-non-ascii", "cookie-not-utf8",
        "origin-non-ascii", "host-not-utf8"])
async def test_non_ascii_credentials_are_refused_not_a_server_error(serve: LiveServe,
                                                                    header: bytes) -> None:
    host = b"\xff\xfe" if header.startswith(b"Host:") else b"127.0.0.1"
    request = (b"POST /api/prune HTTP/1.1\r\nHost: " + host + b"\r\n"
               + (header + b"\r\n" if not header.startswith(b"Host:") else b"")
               + b"Content-Length: 0\r\nConnection: close\r\n\r\n")
    reply = await raw(serve, request)
    assert reply.status in (400, 401, 403), reply


# -- oversized headers -----------------------------------------------------------------------

@pytest.mark.parametrize("request_bytes", [
    get(b"/api/health", b"X-Big: " + b"a" * 65536),
    get(b"/api/stats", b"Authorization: Bearer " + b"t" * 65536),
    get(b"/api/stats", b"Cookie: asyncjobs_session=" + b"c" * 65536),
    get(b"/api/health", b"X-" + b"n" * 65536 + b": 1"),
    get(b"/api/health?" + b"q" * 65536),
    get(b"/api/health", *(b"X-H%d: 1" % i for i in range(5000))),
], ids=["64k-value", "64k-token", "64k-cookie", "64k-name", "64k-url", "5000-headers"])
async def test_oversized_headers_are_a_4xx(serve: LiveServe, request_bytes: bytes) -> None:
    reply = await raw(serve, request_bytes)
    assert reply.status in (400, 413, 414, 431), reply


async def test_an_oversized_body_is_a_413_in_the_api_error_shape(serve: LiveServe) -> None:
    body = b'{"class": "Faults", "method": "ok", "args": ["' + b"x" * (2 << 20) + b'"]}'
    request = (b"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n" + bearer(serve)
               + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
               b"Connection: close\r\n\r\n" % len(body) + body)
    reply = await raw(serve, request)
    assert reply.status == 413, reply
    assert b'"too_large"' in reply.body


async def test_the_host_still_serves_after_the_hostile_requests(serve: LiveServe) -> None:
    reply = await raw(serve, get(b"/api/stats", bearer(serve)))
    assert reply.status == 200, reply
    assert b'"counts"' in reply.body
