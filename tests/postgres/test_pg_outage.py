"""A real host when PostgreSQL is not there: at start, and going away while jobs run.

The server of the test machine is shared, so it is never stopped here: the host reaches it
through a TCP proxy of the test's own, which the test cuts (every connection closed, new ones
refused) and restores.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from fakes import ProjectFactory

from asyncjobs.errors import Unavailable
from asyncjobs.testing import ServeProcess, clean_env


def test_an_unreachable_database_at_start_is_one_line_and_an_exit_code(
        tmp_path: Path, make_project: ProjectFactory) -> None:
    config = make_project(tmp_path, store="postgresql://app:s3cret@127.0.0.1:1/jobs")

    done = subprocess.run([sys.executable, "-m", "asyncjobs", "serve", "--config", str(config)],
                          cwd=tmp_path, env=clean_env(), capture_output=True, text=True,
                          timeout=60, check=False)

    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "cannot reach PostgreSQL at postgresql://app:***@127.0.0.1:1/jobs" in lines[0]
    assert "s3cret" not in done.stderr + done.stdout


class Proxy:
    """Forwards 127.0.0.1:<port> to the PostgreSQL server until :meth:`cut`."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Refuse new connections and drop every open one (the server "goes away")."""
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer),
                             return_exceptions=True)
        self._writers -= {writer, up_writer}


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.transport.abort()


@pytest.fixture
async def proxy(pg_url: str) -> AsyncIterator[Proxy]:
    parts = urlsplit(pg_url)
    p = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await p.open()
    yield p
    with contextlib.suppress(AssertionError):
        await p.cut()


def through(url: str, port: int, password: str = "") -> str:
    """``url`` sent to 127.0.0.1:``port`` (the proxy), optionally with a password."""
    parts = urlsplit(url)
    user = f"{parts.username}:{password}" if password else parts.username
    return urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{port}"))


async def started(config: Path) -> ServeProcess:
    # In a thread: start() polls synchronously, and the proxy runs on this loop.
    host = ServeProcess(config, env={"TMPDIR": str(config.parent)})
    return await asyncio.to_thread(host.start)


async def test_a_lost_database_means_503_running_jobs_go_on_and_results_land_later(
        tmp_path: Path, pg_url: str, proxy: Proxy, make_project: ProjectFactory) -> None:
    store = through(pg_url, proxy.port, password="s3cret")  # trust auth: any password works
    config = make_project(tmp_path, store=store, hosts={"heartbeat": 1, "lease": 60})
    host = await started(config)
    try:
        pidfile = tmp_path / "job.pid"
        async with host.client() as client:
            job_id = await client.submit("Sleepy", "run", [1.5, str(pidfile)])
            async with asyncio.timeout(15):
                while not pidfile.exists():
                    await asyncio.sleep(0.05)

            await proxy.cut()
            with pytest.raises(Unavailable) as refused:
                await client.submit("Ok", "run")
            assert "s3cret" not in str(refused.value)
            await asyncio.sleep(2.0)  # the job ends while the database is away
            assert host.running

            await proxy.open()
            job: dict[str, Any] = await client.wait(job_id, timeout=20)
            assert job["status"] == "completed"
            assert [a["outcome"] for a in job["attempt_history"]] == ["completed"]
            assert await client.submit("Ok", "run") > job_id  # writes work again
            stats = await client.stats()
    finally:
        await asyncio.to_thread(host.stop)

    assert stats["store"] == through(pg_url, proxy.port, password="***")
    log = host.log()
    assert "lost PostgreSQL" in log or "cannot reach PostgreSQL" in log
    assert "s3cret" not in log
    conn = await asyncpg.connect(pg_url)
    try:
        attempts = await conn.fetchval("SELECT count(*) FROM attempts WHERE job_id = $1",
                                       job_id)
    finally:
        await conn.close()
    assert attempts == 1  # recorded once, not run again
