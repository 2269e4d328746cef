"""The ``store`` fixture of the contract suite, parametrised over every available backend.

A backend is added by one entry in ``BACKENDS``: something that makes a (not yet opened)
store for a test, the same data on every call within that test (a restart is a second call),
and drops that data afterwards.  SQLite always runs; PostgreSQL is added when
``ASYNCJOBS_TEST_POSTGRES=postgresql://…`` names a server (see its module).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Protocol

import pytest
from pg_fixture import PostgresBackend, server_url

from asyncjobs.store import Store
from asyncjobs.store.sqlite import SqliteStore


class Backend(Protocol):
    def make(self, tmp_path: Path) -> Store:
        """A new store handle on this test's data (same data for the same ``tmp_path``)."""
        ...

    async def drop(self, tmp_path: Path) -> None:
        """Remove this test's data (after every handle is closed)."""
        ...


class SqliteBackend:
    def make(self, tmp_path: Path) -> Store:
        return SqliteStore(tmp_path / "contract.db")

    async def drop(self, tmp_path: Path) -> None:
        return None  # tmp_path goes with pytest's own clean-up


BACKENDS: dict[str, Backend] = {"sqlite": SqliteBackend()}
if server_url() is not None:
    BACKENDS["postgresql"] = PostgresBackend()

MakeStore = Callable[[], Store]


@pytest.fixture(params=sorted(BACKENDS))
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MakeStore]:
    chosen = BACKENDS[request.param]
    if isinstance(chosen, PostgresBackend):
        chosen.database = request.getfixturevalue("pg_database")  # this run's database
    yield lambda: chosen.make(tmp_path)
    await chosen.drop(tmp_path)


@pytest.fixture
async def store(backend: MakeStore) -> AsyncIterator[Store]:
    s = backend()
    await s.open()
    try:
        yield s
    finally:
        await s.close()
