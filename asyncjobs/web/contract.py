"""What the web layer needs from the host, as a Protocol, and the keys of the aiohttp app.

The API depends on this small interface, not on :class:`asyncjobs.engine.host.Host`: the
engine starts the web layer, and the web layer never imports the engine back (no import
cycle), and a test can serve the API over any object with these methods.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from .sessions import Sessions

if TYPE_CHECKING:  # the client imports the web layer's auth rules, never the store
    from ..config import Settings
    from ..models import JobRecord, JSONValue, Status
    from ..store import Page, Submitted
    from ..store.backup import BackupInfo


class EventSource(Protocol):
    def subscribe(self) -> AbstractContextManager[asyncio.Queue[dict[str, Any]]]: ...


class HostAPI(Protocol):
    """The commands and queries the control API serves."""

    settings: Settings
    data_dir: Path
    token: str

    @property
    def events(self) -> EventSource: ...

    @property
    def accepting(self) -> bool: ...

    async def submit_many(self, bodies: Sequence[object]) -> list[Submitted]: ...

    async def list_jobs(self, *, status: Status | None = None, cls: str | None = None,
                        chain: int | None = None, limit: int = 50,
                        cursor: int | None = None) -> Page: ...

    async def get(self, job_id: int) -> JobRecord: ...

    async def cancel(self, job_id: int) -> JobRecord: ...

    async def retry(self, job_id: int) -> JobRecord: ...

    async def wait(self, job_id: int, timeout: float) -> JobRecord: ...

    async def stats(self) -> dict[str, JSONValue]: ...

    async def schedules(self) -> list[dict[str, JSONValue]]: ...

    async def prune(self) -> dict[str, int]: ...

    async def hosts(self) -> list[dict[str, JSONValue]]: ...

    async def backup(self, target: Path) -> BackupInfo: ...

    def log_tail(self, name: str, lines: int, job_id: int | None = None) -> list[str]: ...


HOST_KEY: web.AppKey[HostAPI] = web.AppKey("host")
SESSIONS_KEY: web.AppKey[Sessions] = web.AppKey("sessions")
CLOSING_KEY: web.AppKey[asyncio.Event] = web.AppKey("closing")
STREAMS_KEY: web.AppKey[list[int]] = web.AppKey("streams")  # [open event streams]

