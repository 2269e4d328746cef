"""The cluster roles a store backend supplies: the notifier and the leader.

A host never reaches into another party's memory for news about jobs: it publishes a signal
on the :class:`Notifier` and whoever cares (its own dispatcher, ``wait``, SSE, the dashboard,
or the same parties on other hosts sharing the store) hears it.  Duties that must run once per
store, not once per host (schedules, the pruner, rescuing a dead host's attempts), run only
where :attr:`Leader.is_leader` holds.  SQLite admits one host, so its notifier is the
in-process :class:`~asyncjobs.engine.events.EventBus` and it is always the leader; the
PostgreSQL store brings LISTEN/NOTIFY and an advisory lock behind the same two interfaces.

Signals (``Event``, a JSON object with a ``type``):

- ``{"type": "job", "id": N, "status": S[, "attempt": A]}``: job N was recorded as S;
- ``{"type": "progress", "id": N, "fraction": F, "message": M}``: live progress;
- ``{"type": "due", "run_at": T}``: a job was stored to run at T (dispatchers wake);
- ``{"type": "cancel", "id": N}``: cancel requested for running job N (its host kills it);
- ``{"type": "overflow"}``: to one subscriber only, which fell behind and lost events.

``due`` and ``cancel`` are between hosts only: the API's event stream sends clients the other
three (``web.api.PUBLIC_EVENTS``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

Event = dict[str, Any]


class Notifier(Protocol):
    async def start(self) -> None:
        """Begin receiving (a networked notifier connects and listens)."""
        ...

    async def close(self) -> None: ...

    def publish(self, event: Event) -> None:
        """Send ``event`` to every host's listeners and subscribers, this one's included.

        Never blocks and never raises: a signal is a hint, and every party also reads the
        store (on a timer at worst), so a lost one costs latency, not correctness."""
        ...

    def listen(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``callback`` for each event received; return the function that stops it."""
        ...

    def subscribe(self) -> AbstractContextManager[asyncio.Queue[Event]]:
        """A bounded queue of the events received while the context is open."""
        ...

    @property
    def subscribers(self) -> int: ...


class Leader(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    @property
    def is_leader(self) -> bool:
        """Whether this host runs the once-per-store duties right now (may change)."""
        ...


class FixedLeader:
    """A leader role that never changes hands: always this host for a store that admits one
    host (SQLite), or never (a host told another one leads)."""

    def __init__(self, leading: bool = True) -> None:
        self._leading = leading

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    @property
    def is_leader(self) -> bool:
        return self._leading
