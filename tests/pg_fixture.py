"""PostgreSQL for the tests: one scratch database per test run, one schema per test.

The PostgreSQL tests run when ``ASYNCJOBS_TEST_POSTGRES`` names a server (a URL whose
database the role can connect to and create databases from).  Each run creates its own
``asyncjobs_test_<random>`` database and drops it at the end, so runs never see each other's
rows; each test gets a fresh schema in it (``search_path`` in the URL it is given).  When the
variable is set and the server cannot be reached the tests fail: a CI machine that should
have PostgreSQL must not pass by skipping.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from asyncjobs.store import Store

ENV = "ASYNCJOBS_TEST_POSTGRES"
HOW = f"set {ENV}=postgresql://postgres@127.0.0.1:5432/test to run them"


def server_url() -> str | None:
    return os.environ.get(ENV) or None


def with_database(url: str, database: str, *, search_path: str | None = None) -> str:
    parts = urlsplit(url)
    query = f"search_path={search_path}" if search_path else ""
    return urlunsplit(parts._replace(path=f"/{database}", query=query))


async def _admin(url: str, sql: str) -> None:
    import asyncpg  # noqa: PLC0415 - only when PostgreSQL tests run

    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _admin_blocking(url: str, sql: str) -> None:
    """:func:`_admin` from sync code, even when an event loop runs in this thread (the
    session fixture may first be asked for from inside an async one)."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _admin(url, sql)).result()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without ``$ASYNCJOBS_TEST_POSTGRES``, leave out every test that needs the server
    (one summary line says so, not one per test)."""
    if server_url() is not None:
        return
    needing = [item for item in items if "pg_database" in getattr(item, "fixturenames", ())]
    if needing:
        config.hook.pytest_deselected(items=needing)
        items[:] = [item for item in items if item not in set(needing)]
        config.stash[_LEFT_OUT] = len(needing)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    left_out = config.stash.get(_LEFT_OUT, 0)
    if left_out:
        terminalreporter.write_line(f"SKIPPED {left_out} PostgreSQL tests: {HOW}")


_LEFT_OUT = pytest.StashKey[int]()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """The URL of this run's scratch database (a test needing it is left out without
    ``$ASYNCJOBS_TEST_POSTGRES``: see :func:`pytest_collection_modifyitems`)."""
    url = server_url()
    if url is None:
        pytest.skip(f"PostgreSQL tests: {HOW}")
    name = f"asyncjobs_test_{uuid.uuid4().hex[:12]}"
    try:
        _admin_blocking(url, f'CREATE DATABASE "{name}"')
    except OSError as exc:
        pytest.fail(f"{ENV} is set but PostgreSQL is unreachable: {exc}", pytrace=False)
    yield with_database(url, name)
    _admin_blocking(url, f'DROP DATABASE "{name}" WITH (FORCE)')


def schema_url(database_url: str, schema: str) -> str:
    """``database_url`` with its tables in ``schema`` (the store creates it when it opens)."""
    return with_database(database_url, urlsplit(database_url).path.lstrip("/"),
                         search_path=schema)


async def drop_schema(database_url: str, schema: str) -> None:
    await _admin(database_url, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
async def pg_url(pg_database: str) -> AsyncIterator[str]:
    """A URL whose tables live in a schema of their own, for this test only."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield schema_url(pg_database, schema)
    await drop_schema(pg_database, schema)


class PostgresBackend:
    """The contract suite's PostgreSQL backend: a schema per test in this run's database."""

    def __init__(self) -> None:
        self.database = ""  # set from the pg_database fixture before the first make()

    @staticmethod
    def schema(tmp_path: Path) -> str:
        return "c_" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:16]

    def make(self, tmp_path: Path) -> Store:
        from asyncjobs.store.postgres import PostgresStore  # noqa: PLC0415

        return PostgresStore(schema_url(self.database, self.schema(tmp_path)))

    async def drop(self, tmp_path: Path) -> None:
        await drop_schema(self.database, self.schema(tmp_path))
