"""In-process publish/subscribe of job signals: the single-host :class:`Notifier`.

Subscribers get a bounded queue; a subscriber too slow to keep up loses its queued events and
is told so (``{"type": "overflow"}``: reload what you show), so one stuck browser tab cannot
grow the host's memory, and the queue of a reader that does not read stays nearly empty.
Listeners are plain callbacks run inside :meth:`EventBus.publish`, for the few in-process
parties that must react before the publisher's next step (the dispatcher's wake-ups).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator

from .roles import Event

log = logging.getLogger("asyncjobs.engine.events")


class EventBus:
    """Delivers every event to this process's subscribers and listeners, at once."""

    def __init__(self, queue_size: int = 256) -> None:
        self.queue_size = queue_size
        self._subscribers: set[asyncio.Queue[Event]] = set()
        self._listeners: list[Callable[[Event], None]] = []

    async def start(self) -> None:
        """Nothing to connect: every party is in this process."""

    async def close(self) -> None:
        self._listeners.clear()

    def publish(self, event: Event) -> None:
        self.deliver(event)

    def deliver(self, event: Event) -> None:
        """Hand ``event`` to local listeners and subscribers (a networked notifier calls this
        for what it receives)."""
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # one bad listener must not keep the event from the rest
                log.exception("event listener failed on %s", event)
        for queue in self._subscribers:
            if queue.full():
                # Everything queued is stale now: one overflow replaces it, and is the only
                # entry until the reader catches up (it ends an event stream, see web.api).
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait({"type": "overflow"})
                continue
            queue.put_nowait(event)

    def listen(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

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
