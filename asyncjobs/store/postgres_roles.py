"""The PostgreSQL store's cluster roles: a notifier on LISTEN/NOTIFY, a leader by advisory lock.

Each role keeps a connection of its own, outside the pool: ``LISTEN`` and a session advisory
lock belong to one server session, which a pool (or a transaction-pooling proxy such as
PgBouncer) would hand to someone else.  Both survive losing that connection: they reconnect
with a capped exponential back-off, and neither ever raises into the engine.

*Notifier.*  ``publish`` delivers the event to this host's parties at once and queues it for
the others; a flusher sends what queued meanwhile as a few ``pg_notify`` payloads (packed up
to PostgreSQL's 8,000-byte limit) in one statement, so a burst of finishes costs one round
trip, not one per job.  Each payload names its origin, so a host ignores its own echo.
NOTIFY is reliable while the listener is connected; across a reconnect it is not, so after
one the listener tells local parties that they may have missed events (``overflow`` to
subscribers, who re-read; ``due`` to dispatchers, who claim), and a *safety poll* repeats the
``due`` every :data:`SAFETY_POLL` seconds whatever happens.  A lost signal therefore costs
latency (at most the safety poll), never a job.

*Leader.*  ``pg_try_advisory_lock`` on a key of this schema, tried every
:data:`LEADER_CHECK` seconds by every host; the session holding it is the leader.  When the
leader's process dies the server ends its session and frees the lock, and the next try of
another host takes it.  A leader that loses its connection steps down as soon as it notices
(a termination callback, or the next check); the duties it runs are compare-and-sets, so a
moment of overlap cannot run anything twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import orjson

from ..engine.events import EventBus
from ..engine.roles import Event

log = logging.getLogger("asyncjobs.store")

CHANNEL = "asyncjobs"  # the one LISTEN/NOTIFY channel of a database
PAYLOAD_BYTES = 7900  # PostgreSQL refuses a payload of 8,000 bytes or more
SAFETY_POLL = 5.0  # seconds between two "due" wake-ups that no notification caused
LEADER_CHECK = 1.0  # seconds between two tries for (or checks of) the leader lock
CONNECT_TIMEOUT = 10.0
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0  # seconds, doubled per failed reconnect, with jitter

# Keyed by the search path, so two schemas of one database are two clusters (as the tests
# use them).
LEADER_KEY = "SELECT hashtext('asyncjobs.leader:' || current_setting('search_path'))"


async def connect(url: str, role: str) -> asyncpg.Connection:
    """A connection of a role's own, named so in ``pg_stat_activity`` (the leader's names its
    host: docs/scaling.md shows the query that finds the leader)."""
    conn: asyncpg.Connection = await asyncpg.connect(
        url, timeout=CONNECT_TIMEOUT, server_settings={"application_name": f"asyncjobs-{role}"})
    return conn


def backoff(delay: float) -> float:
    """The next reconnect delay: doubled, capped, and jittered so hosts do not stampede."""
    return min(BACKOFF_MAX, delay * 2) * (0.5 + random.random() / 2)  # noqa: S311


def pack(origin: str, events: list[Event]) -> list[str]:
    """``events`` as few ``{"o": origin, "e": [...]}`` payloads, each under the size limit.

    An event too large for one payload on its own is left out (a hint, not a record: the
    parties that would have heard it read the store anyway).
    """
    head = len(orjson.dumps({"o": origin, "e": []}))
    payloads: list[str] = []
    batch: list[bytes] = []
    size = head
    for event in events:
        encoded = orjson.dumps(event)
        if head + len(encoded) + 1 > PAYLOAD_BYTES:
            log.warning("event too large to notify other hosts, dropped: %s", encoded[:200])
            continue
        if size + len(encoded) + 1 > PAYLOAD_BYTES:
            payloads.append(_payload(origin, batch))
            batch, size = [], head
        batch.append(encoded)
        size += len(encoded) + 1
    if batch:
        payloads.append(_payload(origin, batch))
    return payloads


def _payload(origin: str, encoded: list[bytes]) -> str:
    return f'{{"o":{orjson.dumps(origin).decode()},"e":[{b",".join(encoded).decode()}]}}'


class PgNotifier:
    """The :class:`~asyncjobs.engine.roles.Notifier` of hosts sharing one database."""

    def __init__(self, url: str, where: str, *, safety_poll: float = SAFETY_POLL) -> None:
        self._url = url
        self._where = where  # the URL without its password, for messages
        self._safety_poll = safety_poll
        self._bus = EventBus()
        self._origin = uuid.uuid4().hex[:12]
        self._own = _payload(self._origin, [])[:-3]  # how our own payloads begin (see pack)
        self._outbox: list[Event] = []
        self._sender: asyncpg.Connection | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._closed = False

    async def start(self) -> None:
        """Start listening; wait (briefly) for the first LISTEN so no early signal is missed."""
        self._listener = asyncio.create_task(self._listen(), name="asyncjobs-pg-listener")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), CONNECT_TIMEOUT)

    async def close(self) -> None:
        self._closed = True
        tasks = [t for t in (self._listener, self._flusher) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._sender is not None:
            with contextlib.suppress(Exception):
                await self._sender.close()
            self._sender = None
        await self._bus.close()

    # -- the Notifier interface --------------------------------------------------------------

    def publish(self, event: Event) -> None:
        self._bus.deliver(event)
        if self._closed:
            return
        self._outbox.append(event)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="asyncjobs-pg-notify")

    def listen(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        return self._bus.listen(callback)

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[Event]]:
        with self._bus.subscribe() as queue:
            yield queue

    @property
    def subscribers(self) -> int:
        return self._bus.subscribers

    @property
    def listening(self) -> bool:
        """Whether the listener connection is up (for ``/api/health`` and tests)."""
        return self._listening.is_set()

    # -- sending -----------------------------------------------------------------------------

    async def _flush(self) -> None:
        # Yield once first, so that everything published in this turn of the loop (a round's
        # worth of finishes) goes out together.
        await asyncio.sleep(0)
        while self._outbox:
            events, self._outbox = self._outbox, []
            try:
                if self._sender is None or self._sender.is_closed():
                    self._sender = await connect(self._url, "notify")
                await self._sender.execute(
                    "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", CHANNEL,
                    pack(self._origin, events))
            except Exception as exc:  # a hint lost: other hosts catch up by the safety poll
                log.warning("could not notify other hosts of %d event(s) (PostgreSQL at %s): "
                            "%s", len(events), self._where, exc)
                if self._sender is not None:
                    self._sender.terminate()
                    self._sender = None
                return

    # -- receiving ---------------------------------------------------------------------------

    async def _listen(self) -> None:
        delay = BACKOFF_FIRST
        first = True
        while True:
            try:
                await self._listen_once(first)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("listener for other hosts' signals lost PostgreSQL at %s: %s; "
                            "reconnecting in %.1fs", self._where, exc, delay)
            self._listening.clear()
            first = False
            await asyncio.sleep(delay)
            delay = backoff(delay)

    async def _listen_once(self, first: bool) -> None:
        conn = await connect(self._url, "listener")
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _: lost.set())
        try:
            await conn.add_listener(CHANNEL, self._received)
            self._listening.set()
            if not first:
                log.info("listener for other hosts' signals reconnected")
                # Whatever was sent while we were away is gone: re-read instead.
                self._bus.deliver({"type": "overflow"})
            while not lost.is_set():
                self._bus.deliver({"type": "due", "run_at": 0.0})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), self._safety_poll)
                if not lost.is_set():
                    # A server that vanished without closing the socket shows up here.
                    await conn.execute("SELECT 1", timeout=CONNECT_TIMEOUT)
            raise ConnectionError("connection closed")
        finally:
            conn.terminate()

    def _received(self, conn: object, pid: int, channel: str, payload: str) -> None:
        if payload.startswith(self._own):
            return  # our own, delivered locally when published: not even parsed
        try:
            message: dict[str, Any] = orjson.loads(payload)
        except orjson.JSONDecodeError:
            log.warning("ignored a malformed notification on %r", channel)
            return
        if message.get("o") == self._origin:
            return  # our own, delivered locally when published
        for event in message.get("e", ()):
            if isinstance(event, dict):
                self._bus.deliver(event)


class PgLeader:
    """The :class:`~asyncjobs.engine.roles.Leader`: whoever holds the schema's advisory lock."""

    def __init__(self, url: str, where: str, host_id: str, *,
                 check: float = LEADER_CHECK) -> None:
        self._url = url
        self._where = where
        self.host_id = host_id
        self._check = check
        self._conn: asyncpg.Connection | None = None
        self._leader = False
        self._task: asyncio.Task[None] | None = None

    @property
    def is_leader(self) -> bool:
        return self._leader and self._conn is not None and not self._conn.is_closed()

    async def start(self) -> None:
        with contextlib.suppress(Exception):  # the loop below keeps trying
            await self._try()
        self._task = asyncio.create_task(self._run(), name="asyncjobs-pg-leader")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._leader = False
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close(timeout=2)  # ends the session: frees the lock
            self._conn = None

    async def _run(self) -> None:
        delay = BACKOFF_FIRST
        while True:
            try:
                await self._try()
                delay = BACKOFF_FIRST
                await asyncio.sleep(self._check)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._leader:
                    log.warning("host %s stepped down as leader: lost PostgreSQL at %s: %s",
                                self.host_id, self._where, exc)
                self._drop()
                await asyncio.sleep(delay)
                delay = backoff(delay)

    async def _try(self) -> None:
        """Take the lock if free, or check that the session holding it is still alive."""
        if self._conn is None or self._conn.is_closed():
            self._leader = False
            self._conn = await connect(self._url, f"leader-{self.host_id}")
            self._conn.add_termination_listener(lambda _: self._drop())
        if self._leader:
            await self._conn.execute("SELECT 1", timeout=CONNECT_TIMEOUT)
            return
        key = await self._conn.fetchval(LEADER_KEY)
        if await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", key,
                                     timeout=CONNECT_TIMEOUT):
            self._leader = True
            log.info("host %s is the leader", self.host_id)

    def _drop(self) -> None:
        self._leader = False
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None
