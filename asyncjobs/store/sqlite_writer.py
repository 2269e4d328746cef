"""The SQLite store's one writer: group commit on a thread, inline commits, WAL checkpoints.

Every write is an *op* (a function from :mod:`.writes` or :mod:`.chains`) queued here; the
writer task runs all the ops queued meanwhile in a single transaction on one thread — one
fsync at ``durability: full`` — and only then resolves their futures (see
:mod:`.sqlite` for why).  At ``normal`` (``inline``) small transactions run on the event
loop itself, and only ``heavy`` ones and checkpoints go to the thread; SQLite's automatic
checkpoint is off there, and this writer runs its own in two phases: the bulk of the copy
from a second connection while writes go on, then a short one between two batches.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from ..errors import Unavailable
from .sqlite_io import Op, checkpoint, storage_error
from .sqlite_io import run_transaction as _transaction  # bench/child.py's OpTimer times it here

log = logging.getLogger("asyncjobs.store")

T = TypeVar("T")

CHECKPOINT_EVERY = 200  # inline commits between two looks at the WAL's size
CHECKPOINT_BYTES = 4 << 20  # WAL size that starts a checkpoint (SQLite's own default)
COPY_PASSES = 4  # at most, in phase 1 of a checkpoint


class GroupWriter:
    """The writer thread, its connection, the queue of ops and the task that commits them."""

    def __init__(self, path: Path, *, inline: bool) -> None:
        self.path = path
        self._inline = inline
        self._executor: ThreadPoolExecutor | None = None
        # Used by one transaction at a time: on the writer thread, or inline (see above).
        self._conn: sqlite3.Connection | None = None
        self._commits = 0
        self._checkpointer: sqlite3.Connection | None = None  # writer thread only
        self._copying: asyncio.Future[None] | None = None  # phase 1 of a checkpoint
        self._copied = False  # phase 1 is done: the writer task runs phase 2 next
        self._busy = False  # the writer task is applying a batch or a checkpoint
        self._queue: deque[tuple[Op, asyncio.Future[Any], bool]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        return self._task is not None

    async def connect(self, connect: Callable[[], sqlite3.Connection]) -> None:
        """Start the thread and open the connection on it (``connect`` runs there)."""
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="asyncjobs-store-writer")
        self._conn = await self.on_thread(connect)

    def start(self) -> None:
        self._task = asyncio.create_task(self._write_loop(), name="asyncjobs-store-writer")

    async def stop(self) -> None:
        """Stop taking ops: the writer task ends (what it was applying is abandoned)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def close(self) -> None:
        """After :meth:`stop`: finish a checkpoint's copy, close the connections, the thread."""
        if self._copying is not None:
            await asyncio.gather(self._copying, return_exceptions=True)
        if self._executor is not None:
            if self._checkpointer is not None:
                await self.on_thread(self._checkpointer.close)
                self._checkpointer = None
            if self._conn is not None:
                await self.on_thread(self._conn.close)
                self._conn = None
            self._executor.shutdown(wait=True)
            self._executor = None

    async def on_thread(self, fn: Callable[[], T]) -> T:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def write(self, op: Op, *, heavy: bool = False) -> Any:
        if self._task is None or self._task.done():
            raise Unavailable("the store is closed")
        if self._inline and not heavy and not self._queue and not self._busy:
            # Nothing is waiting or in flight and this commit does not wait for the disk:
            # apply it now rather than one turn of the loop later through the writer task.
            return self._apply_now(op)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((op, future, heavy))
        self._wake.set()
        return await future

    def _apply_now(self, op: Op) -> Any:
        assert self._conn is not None
        try:
            ((value, error),) = _transaction(self._conn, [op])
        except sqlite3.Error as exc:
            log.error("store write failed, 1 operation not applied: %s", exc)
            raise storage_error(exc) from exc
        self._committed()
        if error is not None:
            raise error
        return value

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch = list(self._queue)
            self._queue.clear()
            self._busy = True
            try:
                if batch:
                    await self._apply(batch)
                if self._copied:  # phase 2 of a checkpoint, between two batches
                    self._copied = False
                    assert self._conn is not None
                    await self._checkpoint(partial(checkpoint, self._conn))
            finally:
                self._busy = False

    async def _apply(self, batch: list[tuple[Op, asyncio.Future[Any], bool]]) -> None:
        conn = self._conn
        assert conn is not None
        ops = [op for op, _, _ in batch]
        inline = self._inline and not any(heavy for _, _, heavy in batch)
        try:
            if inline:
                results = _transaction(conn, ops)
            else:
                results = await self.on_thread(partial(_transaction, conn, ops))
        except sqlite3.Error as exc:
            log.error("store write failed, %d operation(s) not applied: %s", len(batch), exc)
            results = [(None, storage_error(exc))] * len(batch)
        for (_, future, _), (value, error) in zip(batch, results, strict=True):
            if future.done():
                continue  # the caller gave up waiting
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)
        if inline:
            self._committed()

    def _committed(self) -> None:
        """After an inline commit: start phase 1 of a checkpoint when the WAL has grown."""
        self._commits += 1
        if self._copying is not None or self._copied or self._commits % CHECKPOINT_EVERY:
            return
        try:
            large = os.stat(f"{self.path}-wal").st_size >= CHECKPOINT_BYTES
        except OSError:
            return
        if large:
            self._copying = asyncio.ensure_future(self._checkpoint(self._copy_wal))
            self._copying.add_done_callback(self._copy_done)

    def _copy_wal(self) -> None:
        """Phase 1, on the writer thread, from its own connection: writes go on meanwhile."""
        if self._checkpointer is None:
            self._checkpointer = sqlite3.connect(self.path, isolation_level=None,
                                                 check_same_thread=False)
        # Each pass copies what was written during the one before, so that under a steady
        # stream of commits the blocking phase 2 is left with little.
        for _ in range(COPY_PASSES):
            _, logged, copied = self._checkpointer.execute(
                "PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if logged - copied <= 0:
                break

    def _copy_done(self, _: asyncio.Future[None]) -> None:
        # Phase 2 copies the little written meanwhile, with nothing else writing, so the
        # next transaction starts the WAL over instead of growing it.
        self._copying = None
        self._copied = True
        self._wake.set()

    async def _checkpoint(self, step: Callable[[], None]) -> None:
        try:
            await self.on_thread(step)
        except sqlite3.Error as exc:
            log.warning("WAL checkpoint failed (tried again later): %s", exc)
