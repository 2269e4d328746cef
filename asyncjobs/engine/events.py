"""In-process publish/subscribe of job state changes, for SSE and long-poll waits.

Subscribers get a bounded queue; a subscriber too slow to keep up loses its queued events and
is told so (``{"type": "overflow"}``: reload what you show), so one stuck browser tab cannot
grow the host's memory, and the queue of a reader that does not read stays nearly empty.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

Event = dict[str, Any]


class EventBus:
    def __init__(self, queue_size: int = 256) -> None:
        self.queue_size = queue_size
        self._subscribers: set[asyncio.Queue[Event]] = set()

    def publish(self, event: Event) -> None:
        for queue in self._subscribers:
            if queue.full():
                # Everything queued is stale now: one overflow replaces it, and is the only
                # entry until the reader catches up (it ends an event stream, see web.api).
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait({"type": "overflow"})
                continue
            queue.put_nowait(event)

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[Event]]:
        queue: asyncio.Queue[Event] = asyncio.Queue(self.queue_size)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
