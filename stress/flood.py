"""Flood: what a hostile local process can do to a real ``asyncjobs serve`` (issue #13).

Opens 1,100 silent connections (more than ``api.max_connections``), checks what a health
check gets meanwhile, waits out ``api.idle_timeout`` and checks again; then tries 2,000
never-reading event streams and times a 2,000-job batch submit while they are open.  Prints
the figures; docs/security.md quotes them.  ``python stress/flood.py`` (about 20 s).
"""

from __future__ import annotations

import asyncio
import json
import resource
import tempfile
import time
from pathlib import Path

from asyncjobs.testing import ServeProcess

CONNECTIONS = 1100
STREAMS = 2000
BATCH = 2000
NOOP_JOB = "class Noop:\n    def run(self):\n        return None\n"


async def _request(host: str, port: int, data: bytes, timeout: float = 10.0) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout)
    writer.close()
    return answer


def _health() -> bytes:
    return b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


async def _timed_health(host: str, port: int, label: str) -> None:
    start = time.monotonic()
    try:
        status = (await _request(host, port, _health())).split(b"\r\n")[0].decode()
    except ConnectionResetError:
        status = "connection reset (refused)"
    print(f"{label}: {status} in {(time.monotonic() - start) * 1000:.1f} ms")


async def flood(serve: ServeProcess, idle_timeout: float) -> None:
    host, port_text = serve.url.removeprefix("http://").rsplit(":", 1)
    port = int(port_text)
    auth = f"Authorization: Bearer {serve.token}".encode()
    start = time.monotonic()
    held = [await asyncio.open_connection(host, port) for _ in range(CONNECTIONS)]
    print(f"opened {len(held)} silent connections in {time.monotonic() - start:.2f} s")
    await _timed_health(host, port, "health while they are open")
    await asyncio.sleep(idle_timeout + 1)
    await _timed_health(host, port, f"health {idle_timeout + 1:g} s later")
    for _, writer in held:
        writer.close()
    streams = []
    for _ in range(STREAMS):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth + b"\r\n\r\n")
        if (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 200"):
            streams.append(writer)
        else:
            writer.close()
    print(f"event streams accepted: {len(streams)} of {STREAMS} tried")
    body = json.dumps({"jobs": [{"class": "Noop", "method": "run"}] * BATCH}).encode()
    start = time.monotonic()
    answer = await _request(host, port, b"POST /api/jobs/batch HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                            + auth + b"\r\nContent-Type: application/json\r\n"
                            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
                            + body, timeout=60)
    print(f"{BATCH}-job batch with the streams open: {answer.split(b' ', 2)[1].decode()} "
          f"in {time.monotonic() - start:.2f} s")
    for writer in streams:
        writer.close()


def main() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this client needs 1,100 fds
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "noop.py").write_text(NOOP_JOB)
        (directory / "config.json").write_text(json.dumps(
            {"jobs": {"Noop": {"module": "noop", "methods": ["run"]}}, "data_dir": "data"}))
        with ServeProcess(directory / "config.json") as serve:
            idle_timeout = 15.0  # the default api.idle_timeout
            asyncio.run(flood(serve, idle_timeout))
            log = serve.log()
            print(f"host log: {len(log)} bytes, {log.count('API overloaded')} overload "
                  f"line(s), {log.count('Traceback')} traceback(s)")


if __name__ == "__main__":
    main()
