"""The SQLite store's low-level steps: one batched transaction with a savepoint per op,
a passive checkpoint, the store's lock, and the error a storage failure becomes."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from .. import files
from ..engine import datadir
from ..errors import HostLocked, Unavailable

Op = Callable[[sqlite3.Connection], Any]


def storage_error(exc: sqlite3.Error) -> Unavailable:
    return Unavailable(f"storage unavailable: {exc}")


def run_transaction(conn: sqlite3.Connection, ops: Sequence[Op],
                    ) -> list[tuple[Any, BaseException | None]]:
    """Run ``ops`` in one transaction (on the writer thread); storage errors fail them all."""
    savepoints = len(ops) > 1  # a lone op needs none: the transaction is its boundary
    results: list[tuple[Any, BaseException | None]] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for op in ops:
            if savepoints:
                conn.execute("SAVEPOINT op")
            try:
                results.append((op(conn), None))
            except sqlite3.IntegrityError as exc:
                results.append((None, exc))
            except sqlite3.Error:
                raise
            except Exception as exc:  # the op's own error (a wrong state...), for its caller
                results.append((None, exc))
            if savepoints:
                if results[-1][1] is not None:
                    conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
        if not savepoints and results[0][1] is not None:
            conn.execute("ROLLBACK")
        else:
            conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):  # may already be rolled back by SQLite
            conn.execute("ROLLBACK")
        raise
    return results


def take_lock(path: Path) -> IO[bytes]:
    """Lock the store for this host.  The store is written by one host only (its writer is
    the only writer), and that is also what lets a host that registers take every other
    registered host for dead: see :func:`.housekeeping.register_host`."""
    # Private like every file of the data directory (0600, never through a symlink).
    handle = os.fdopen(datadir.open_private(Path(f"{path}.lock")), "a+b")
    if not files.try_lock(handle):
        handle.close()
        raise HostLocked(f"another asyncjobs host is using the SQLite store {path}; one host "
                         "per SQLite store (several hosts share a PostgreSQL store)")
    return handle


def checkpoint(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
