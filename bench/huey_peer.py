"""The peer: huey with SqliteHuey (its embedded SQLite storage), running the same no-op job.

Configured from the environment so that the consumer (``huey_consumer huey_peer.huey``) and
the enqueueing process build the same instance:

  BENCH_HUEY_DB    the SQLite file
  BENCH_HUEY_MODE  ``defaults``: ``SqliteHuey(filename=...)`` as shipped.  In huey 2.5+/3.x
                   that leaves SQLite's own default, ``synchronous=FULL`` (2), in WAL mode;
                   ``fsync=True`` would also be FULL and ``fsync=False`` is OFF (0), so huey
                   has no switch for NORMAL.
                   ``normal``: the same storage with ``PRAGMA synchronous=NORMAL`` set on each
                   connection it opens (a subclass overriding ``_create_connection``), the
                   like-for-like peer of asyncjobs' ``durability: normal``.

``python bench/huey_peer.py enqueue N RECORD_FILE`` enqueues N tasks, one call each, as an
application would; it prints ``{"seconds": ...}``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "jobs"))

import benchjobs
from huey import SqliteHuey
from huey.storage import SqliteStorage


class NormalSyncStorage(SqliteStorage):
    """SqliteStorage with ``synchronous=NORMAL``: WAL commits are not fsynced one by one."""

    def _create_connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection = super()._create_connection()
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn


MODE = os.environ.get("BENCH_HUEY_MODE", "defaults")
DB = os.environ.get("BENCH_HUEY_DB", "huey-bench.db")

if MODE == "normal":
    huey = SqliteHuey("bench", filename=DB, storage_class=NormalSyncStorage)
elif MODE == "defaults":
    huey = SqliteHuey("bench", filename=DB)
else:
    raise SystemExit(f"BENCH_HUEY_MODE must be 'defaults' or 'normal', not {MODE!r}")


@huey.task()
def noop(seq: int, enqueued: float, path: str) -> None:
    benchjobs.record(seq, enqueued, path)


def synchronous_setting() -> int:
    """What the storage's connection really runs with (2 FULL, 1 NORMAL, 0 OFF)."""
    value: int = huey.storage.conn.execute("PRAGMA synchronous").fetchone()[0]
    return value


def main() -> None:
    command, n, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if command != "enqueue":
        raise SystemExit("usage: huey_peer.py enqueue N RECORD_FILE")
    t0 = time.perf_counter()
    for i in range(n):
        noop(i, time.time(), path)
    elapsed = time.perf_counter() - t0
    print(json.dumps({"enqueued": n, "seconds": elapsed, "rate": n / elapsed,
                      "synchronous": synchronous_setting(),
                      "queue_size": huey.storage.queue_size()}))


if __name__ == "__main__":
    main()
