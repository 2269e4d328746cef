"""Choosing the store from the ``store`` setting: the default, SQLite paths, PostgreSQL."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

from asyncjobs.config import Settings
from asyncjobs.errors import ConfigError
from asyncjobs.store.factory import DB_FILE, POSTGRES_MODULE, open_store
from asyncjobs.store.sqlite import SqliteStore


def test_the_default_store_is_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    store = open_store(Settings(data_dir=tmp_path, durability="normal"))

    assert isinstance(store, SqliteStore)
    assert (store.path, store.durability) == (tmp_path / DB_FILE, "normal")


@pytest.mark.parametrize(("url", "expected"), [
    ("sqlite", "data/asyncjobs.db"), ("sqlite:///abs/jobs.db", "/abs/jobs.db"),
    ("sqlite://rel/jobs.db", "base/rel/jobs.db")])
def test_sqlite_urls(tmp_path: Path, url: str, expected: str) -> None:
    settings = Settings(data_dir=tmp_path / "data", base_dir=tmp_path / "base", store=url)

    store = open_store(settings)

    assert isinstance(store, SqliteStore)
    assert store.path == (tmp_path / expected if not expected.startswith("/") else
                          Path(expected))


async def test_a_sqlite_store_opens_where_the_url_says(tmp_path: Path) -> None:
    store = open_store(Settings(store=f"sqlite://{tmp_path}/jobs/here.db"))
    (tmp_path / "jobs").mkdir()
    await store.open()
    await store.close()

    assert (tmp_path / "jobs" / "here.db").exists()


def test_postgresql_without_its_backend_is_a_clear_config_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, POSTGRES_MODULE, None)  # as if not installed

    with pytest.raises(ConfigError) as info:
        open_store(replace(Settings(), store="postgresql://jobs:s3cret@db:5432/jobs"))

    assert info.value.path == "store"
    assert "asyncjobs[postgres]" in str(info.value)
    assert "s3cret" not in str(info.value)
