"""A consistent copy of a live SQLite store: SQLite's online backup, from a read snapshot.

Why one step and not the usual pages-with-a-pause loop: in WAL mode a reader never blocks
the writer, so copying every page in one ``backup`` step -- one read transaction, one
snapshot -- leaves intake running the whole time.  A paged backup from a connection of its
own would instead *restart* every time the host commits between two steps (SQLite's rule
for a source changed by another connection), which under steady intake may never finish;
and a paged backup from the writer's own connection would stop intake for every step.  The
price of the snapshot is only that WAL checkpoints cannot pass it while the copy runs: the
WAL grows by what is written meanwhile and is folded back at the next checkpoint.

The copy is written beside ``target`` under a temporary name, fsynced, then linked to
``target`` -- which therefore never exists half-written, and is never overwritten.
The PostgreSQL store has no such method: ``pg_dump`` is the tool there.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidField, WrongState
from ..files import fsync_path


@dataclass(frozen=True, slots=True)
class BackupInfo:
    path: str
    bytes: int
    pages: int
    seconds: float

    def to_json(self) -> dict[str, str | int | float]:
        return {"path": self.path, "bytes": self.bytes, "pages": self.pages,
                "seconds": round(self.seconds, 4)}


def check_target(target: Path) -> Path:
    """``target`` as an absolute path that may be created; :class:`InvalidField` or
    :class:`WrongState` (it exists) if not."""
    if not target.is_absolute():
        raise InvalidField("path", f"an absolute path is required, got {str(target)!r}")
    if "\0" in str(target):
        raise InvalidField("path", "a path without NUL characters is required")
    if os.path.lexists(target):
        raise WrongState(f"{target} exists already; a backup never overwrites a file")
    if not target.parent.is_dir():
        raise InvalidField("path", f"the directory {str(target.parent)!r} does not exist")
    return target


def backup(source: Path, target: Path) -> BackupInfo:
    """Copy the database at ``source`` to the new file ``target`` (see the module's doc).

    Runs on a thread of its own, with connections of its own: nothing of the store's.
    """
    check_target(target)
    started = time.monotonic()
    staged = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        os.close(os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                         | getattr(os, "O_NOFOLLOW", 0), 0o600))
    except OSError as exc:
        raise InvalidField("path", f"cannot write in {str(target.parent)!r}: "
                                   f"{exc.strerror}") from None
    try:
        _copy(source, staged)
        os.link(staged, target)  # fails, rather than replaces, if it appeared meanwhile
    except FileExistsError:
        raise WrongState(f"{target} exists already; a backup never overwrites a file") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
    fsync_path(target.parent)
    size = target.stat().st_size
    with contextlib.closing(sqlite3.connect(target)) as copy:
        pages = int(copy.execute("PRAGMA page_count").fetchone()[0])
    return BackupInfo(str(target), size, pages, time.monotonic() - started)


def _copy(source: Path, staged: Path) -> None:
    with contextlib.closing(sqlite3.connect(source, isolation_level=None)) as src, \
            contextlib.closing(sqlite3.connect(staged, isolation_level=None)) as dst:
        src.execute("PRAGMA query_only=1")
        src.execute("PRAGMA busy_timeout=5000")
        src.backup(dst, pages=-1)  # one step: one snapshot, never restarted
        # The copy is read on its own later (a restore): keep it one self-contained file.
        dst.execute("PRAGMA journal_mode=DELETE")
        check = dst.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"the copy failed its check: {check}")
    fsync_path(staged)

