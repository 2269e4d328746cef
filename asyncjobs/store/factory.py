"""Builds the configured store: the one place that names a concrete backend.

``store`` unset (or ``sqlite``) is the zero-setup default, a SQLite file in ``data_dir``;
``sqlite:///abs/file.db`` (or ``sqlite://file.db``, relative to the config file) puts
that file elsewhere; ``postgresql://…`` (or ``postgres://…``) is the
PostgreSQL store for several hosts, imported only then, so SQLite users never need asyncpg.
``durability`` keeps its two words for every backend: ``full`` waits for the disk before a
write is acknowledged (SQLite ``synchronous=FULL``; PostgreSQL ``synchronous_commit=on``),
``normal`` does not (``synchronous=NORMAL``; ``synchronous_commit=off``): a power cut may lose
the last moments of writes, never corrupt the store.
"""

from __future__ import annotations

import importlib

from ..backend_url import STORE_FORMS, redact_url
from ..config import Settings
from ..errors import ConfigError
from . import Store

DB_FILE = "asyncjobs.db"
POSTGRES_MODULE = "asyncjobs.store.postgres"  # defines PostgresStore(url, *, durability=...)


def open_store(settings: Settings) -> Store:
    """The store ``settings.store`` names, not yet opened (``await store.open()``)."""
    url = settings.store or "sqlite"
    scheme = url.partition("://")[0] if "://" in url else url
    if scheme == "sqlite":
        from .sqlite import SqliteStore  # noqa: PLC0415 - each backend only when chosen

        rest = url.partition("://")[2]
        # sqlite:///abs/file.db is absolute; sqlite://file.db is relative to config.json.
        path = settings.base_dir / rest if rest else settings.data_dir / DB_FILE
        return SqliteStore(path, durability=settings.durability)
    if scheme in ("postgresql", "postgres"):
        try:
            module = importlib.import_module(POSTGRES_MODULE)
        except ImportError as exc:
            raise ConfigError("store", "an installed backend for PostgreSQL (pip install "
                              f"'asyncjobs[postgres]'; {exc})", redact_url(url)) from None
        store: Store = module.PostgresStore(url, durability=settings.durability)
        return store
    raise ConfigError("store", STORE_FORMS, redact_url(url))
