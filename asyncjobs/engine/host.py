"""The host: owns the data directory, the store, the dispatcher and (optionally) the API.

``async with Host(settings) as host`` opens everything in order (lock the data directory,
open and migrate the store, register this host's row, recover attempts dead hosts left
running, start dispatching, start the API) and closes it in reverse: stop intake, let running
attempts finish for ``shutdown_grace`` seconds, interrupt the rest (they run again after a
restart), end this host's lease, close.  The store comes from the ``store`` setting, with its
notifier (``host.events``) and leader role (see :mod:`asyncjobs.engine.roles`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import orjson

from .. import files, registry
from ..backend_url import redact_url
from ..clock import Clock, SystemClock
from ..config import Settings
from ..errors import HostLocked, JobNotFound, NotAllowed, Unavailable
from ..models import TERMINAL, JobRecord, JSONValue, Status, iso
from ..store import FileBackup, HostRow, Page, Store, Submitted
from ..store.backup import BackupInfo
from ..store.factory import DB_FILE, open_store
from ..workers.launcher import Launcher, SubprocessLauncher
from . import datadir, policy
from .dispatcher import Dispatcher
from .events import EventBus
from .liveness import Liveness, ProgressCache
from .logs import JobLog
from .roles import Event, Notifier
from .scheduler import Pruner, Scheduler

log = logging.getLogger("asyncjobs.engine.host")

LOCK_FILE = "host.lock"


class Host:
    def __init__(self, settings: Settings, *, clock: Clock | None = None,
                 launcher: Launcher | None = None, rand: policy.Random = random.random,
                 dispatch: bool = True, serve_api: bool = False) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.rand = rand
        self.data_dir = settings.data_dir
        self.id = uuid.uuid4().hex  # this run of the host, as its store row and attempts name it
        self.events: Notifier = EventBus()  # until start: the store supplies the real one
        self.progress = ProgressCache()
        self.token = ""
        self.url = ""
        self.started_at = 0.0
        self._launcher = launcher
        self._dispatch = dispatch
        self._serve_api = serve_api
        self._accepting = False
        self._lock: IO[bytes] | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._housekeeping: list[asyncio.Task[None]] = []
        self.scheduler: Scheduler | None = None
        self.pruner: Pruner | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._store: Store | None = None
        self._liveness: Liveness | None = None
        self._dispatcher: Dispatcher | None = None
        self._job_log: JobLog | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Host:
        try:
            await self.start()
        except OSError as exc:
            await self.aclose()
            where = exc.filename or self.data_dir
            raise Unavailable(f"cannot use the data directory {self.data_dir}: "
                              f"{exc.strerror or exc} ({where})") from None
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _take_lock(self) -> None:
        datadir.prepare(self.data_dir, files=(DB_FILE,))
        handle = os.fdopen(datadir.open_private(self.data_dir / LOCK_FILE), "a+b")
        if not files.try_lock(handle):
            handle.close()
            raise HostLocked(f"another asyncjobs host is already running on "
                             f"{self.data_dir}; stop it first or use another data_dir")
        self._lock = handle

    async def start(self) -> None:
        """Open everything in order; each step registers its own undo, so a failure part-way
        (or any later close) unwinds exactly what was opened, in reverse."""
        stack = self._stack = contextlib.AsyncExitStack()
        self._take_lock()
        stack.callback(self._release_lock)
        if self._serve_api:
            from ..web.api import check_port_free  # noqa: PLC0415 - see start_api below

            check_port_free(self.settings.api.host, self.settings.api.port)
        self.token = datadir.load_or_create_token(self.data_dir)
        for cls, module in registry.unfound_modules(self.settings).items():
            log.warning("job class %s: its module %r is not found from %s; each of its jobs "
                        "will fail until it is", cls, module, self.settings.base_dir)
        job_log = self._job_log = JobLog(self.data_dir / "logs", self.settings.logs)
        stack.callback(job_log.close)
        store = self._store = open_store(self.settings)
        await store.open()
        stack.push_async_callback(store.close)
        shared = await store.shared_token(self.token)
        if shared != self.token:  # another host of this store was first: use its token
            datadir.adopt_token(self.data_dir, shared)
            self.token = shared
        self.events = store.notifier()
        await self.events.start()
        stack.push_async_callback(self.events.close)
        stack.callback(self.progress.attach(self.events))
        leader = store.leader(self.id)
        await leader.start()
        stack.push_async_callback(leader.close)
        await store.register_host(self._row(self.clock.now()))
        launcher = self._launcher or SubprocessLauncher(self.settings, self.data_dir / "run")
        stack.push_async_callback(launcher.aclose)
        dispatcher = self._dispatcher = Dispatcher(
            store=store, launcher=launcher, settings=self.settings, clock=self.clock,
            events=self.events, job_log=job_log, host_id=self.id, rand=self.rand)
        stack.callback(dispatcher.close)
        await dispatcher.recover()
        self.scheduler = Scheduler(settings=self.settings, store=store, clock=self.clock,
                                   on_submitted=self._on_scheduled, leader=leader)
        await self.scheduler.start()
        self.pruner = Pruner(settings=self.settings, store=store, clock=self.clock,
                             leader=leader)
        liveness = self._liveness = Liveness(
            store=store, host_id=self.id, settings=self.settings.hosts, clock=self.clock,
            leader=leader, rescue=dispatcher.recover)
        stack.push_async_callback(liveness.retire)
        if self._serve_api:
            from ..web.api import start_api  # noqa: PLC0415 - embedding without aiohttp routes

            runner, self.url = await start_api(self)
            stack.push_async_callback(runner.cleanup)
            # Lets the client find a host started on port 0, or on a port from the env.
            datadir.write_atomic(self.data_dir / datadir.HOST_FILE, orjson.dumps({"url": self.url}))
        # Registered last, so it runs first at close: the API still answers (503 for
        # submits, health "stopping") while running jobs get their shutdown grace.
        stack.push_async_callback(self._stop_dispatching, dispatcher)
        if self._dispatch:
            self._run_task = asyncio.create_task(dispatcher.run(), name="asyncjobs-dispatcher")
            self._housekeeping = [
                asyncio.create_task(self.scheduler.run(), name="asyncjobs-scheduler"),
                asyncio.create_task(self.pruner.run(), name="asyncjobs-pruner"),
                asyncio.create_task(liveness.run(), name="asyncjobs-liveness")]
        self.started_at = time.time()
        self._accepting = True  # before any await: the API is already answering
        if self.url:
            await store.register_host(self._row(self.clock.now()))  # now with its address
        log.info("host started on %s", self.data_dir)

    def _row(self, now: float) -> HostRow:
        return HostRow(id=self.id, url=self.url, pid=os.getpid(), hostname=socket.gethostname(),
                       started_at=now, heartbeat_at=now,
                       expires_at=now + self.settings.hosts.lease)

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    async def aclose(self) -> None:
        self._accepting = False
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
        self._store = None

    async def _stop_dispatching(self, dispatcher: Dispatcher) -> None:
        for task in self._housekeeping:
            task.cancel()
        await asyncio.gather(*self._housekeeping, return_exceptions=True)
        self._housekeeping = []
        dispatcher.begin_stop()
        if self._run_task is None:
            dispatcher.interrupt_all()
            await dispatcher.drain()
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._run_task), self.settings.shutdown_grace)
        except TimeoutError:
            log.warning("shutdown grace over; interrupting %d running job(s)",
                        dispatcher.started)
            dispatcher.interrupt_all()
            await self._run_task
        self._run_task = None

    @property
    def dispatcher(self) -> Dispatcher:
        if self._dispatcher is None:
            raise Unavailable("the host is not running")
        return self._dispatcher

    @property
    def store(self) -> Store:
        if self._store is None:
            raise Unavailable("the host is not running")
        return self._store

    @property
    def job_log(self) -> JobLog:
        assert self._job_log is not None
        return self._job_log

    @property
    def accepting(self) -> bool:
        return self._accepting

    # -- commands ----------------------------------------------------------------------------

    async def submit(self, cls: str, method: str, args: Sequence[JSONValue] | None = None,
                     **options: JSONValue) -> Submitted:
        """Submit one job; ``options`` are the §5 submit fields (kwargs, priority, delay, ...)."""
        return (await self.submit_many([{"class": cls, "method": method,
                                         "args": list(args or []), **options}]))[0]

    async def submit_many(self, bodies: Sequence[object]) -> list[Submitted]:
        """Validate every body, then store them all in one transaction (all or none)."""
        if not self._accepting:
            raise Unavailable("the host is shutting down and accepts no new jobs")
        now = self.clock.now()
        specs = [registry.parse_submit(self.settings, body, now) for body in bodies]
        submitted = await self.store.submit(specs, now)
        new = [(s.id, spec.cls, spec.method, spec.run_at)
               for spec, s in zip(specs, submitted, strict=True) if not s.duplicate]
        if new:
            self.job_log.submitted(now, new)
            for job_id, *_ in new:
                self.events.publish({"type": "job", "id": job_id, "status": "pending"})
            self.events.publish({"type": "due", "run_at": min(run_at for *_, run_at in new)})
        return submitted

    def _on_scheduled(self, job_id: int) -> None:
        self.events.publish({"type": "job", "id": job_id, "status": "pending"})
        self.events.publish({"type": "due", "run_at": self.clock.now()})

    async def schedules(self) -> list[dict[str, JSONValue]]:
        assert self.scheduler is not None
        return await self.scheduler.listing()

    async def hosts(self) -> list[dict[str, JSONValue]]:
        """The hosts registered in the store (``asyncjobs hosts``), this one marked."""
        now = self.clock.now()
        rows = await self.store.hosts(now)
        return [{"id": h.id, "url": h.url, "pid": h.pid, "hostname": h.hostname,
                 "started_at": iso(h.started_at), "heartbeat_at": iso(h.heartbeat_at),
                 "alive": h.alive(now), "state": h.state(now), "running": h.running,
                 "leader": h.leader, "this": h.id == self.id}
                for h in rows]

    async def backup(self, target: Path) -> BackupInfo:
        """A consistent copy of the live store at ``target`` (``asyncjobs backup``)."""
        store = self.store
        if not isinstance(store, FileBackup):
            raise NotAllowed("this store cannot be copied to a file; back it up with the "
                             "database's own tools")
        return await store.backup(target)

    async def prune(self) -> dict[str, int]:
        """Apply the retention rules now (``asyncjobs prune``)."""
        if self.pruner is None:
            raise Unavailable("the host is not running")
        return await self.pruner.prune()

    async def get(self, job_id: int) -> JobRecord:
        job = await self.store.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        # The store has progress as of its last flush; the notifier has fresher.
        live = self.progress.get(job_id)
        if live is not None and job.status is Status.RUNNING:
            job = dataclasses.replace(job, progress=live)
        return job

    async def list_jobs(self, *, status: Status | None = None, cls: str | None = None,
                        chain: int | None = None, limit: int = 50,
                        cursor: int | None = None) -> Page:
        """A page of job records, newest first; ``chain`` gives the steps of one chain."""
        return await self.store.list_jobs(status=status, cls=cls, chain=chain, limit=limit,
                                          cursor=cursor)

    async def cancel(self, job_id: int) -> JobRecord:
        """Cancel a pending job at once, or have a running one killed by whichever host runs
        it and wait until that is recorded."""
        now = self.clock.now()
        result = await self.store.cancel(job_id, now, "cancelled by request")
        if result.previous is Status.PENDING:
            for cancelled in result.cancelled_ids:
                self.events.publish({"type": "job", "id": cancelled, "status": "cancelled"})
            job = await self.get(job_id)
            self.job_log.event(now, job_id, cls=job.cls, method=job.method, attempt=None,
                               status="cancelled")
            return job
        # Running: the store holds the request, so a host that claimed the job a moment ago
        # and has not launched it yet still sees it in its next round; the signal makes that
        # round (or the kill) happen now.
        with self.events.subscribe() as queue:  # before the signal: its answer may come fast
            self.events.publish({"type": "cancel", "id": job_id})
            return await self._wait(job_id, self.settings.workers.kill_grace + 10, queue)

    async def retry(self, job_id: int) -> JobRecord:
        ids = await self.store.retry(job_id, self.clock.now())
        for requeued in ids:
            self.events.publish({"type": "job", "id": requeued, "status": "pending"})
        job = await self.get(job_id)
        self.job_log.event(self.clock.now(), job_id, cls=job.cls, method=job.method,
                           attempt=None, status="pending", note="manual_retry=true")
        self.events.publish({"type": "due", "run_at": self.clock.now()})
        return job

    async def wait(self, job_id: int, timeout: float) -> JobRecord:
        """Return the job once it is finished, or as it is when ``timeout`` seconds pass."""
        with self.events.subscribe() as queue:
            return await self._wait(job_id, timeout, queue)

    async def _wait(self, job_id: int, timeout: float, queue: asyncio.Queue[Event]) -> JobRecord:
        job = await self.get(job_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while job.status not in TERMINAL:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                event = await asyncio.wait_for(queue.get(), remaining)
            except TimeoutError:
                break
            if (event.get("type") == "job" and event.get("id") == job_id) or \
                    event.get("type") == "overflow":
                job = await self.get(job_id)
        return job if job.status in TERMINAL else await self.get(job_id)

    async def stats(self) -> dict[str, JSONValue]:
        now = self.clock.now()
        stats = await self.store.stats(now)
        running = self._dispatcher.started if self._dispatcher else 0
        return {
            "counts": dict(stats.counts),
            "classes": {cls: dict(counts) for cls, counts in stats.by_class.items()},
            "throughput": {
                "last_minute": stats.finished_last_minute,
                "last_hour": stats.finished_last_hour,
                "per_minute": [{"minute": iso(t), "completed": c, "failed": f}
                               for t, c, f in stats.per_minute],
            },
            "workers": {"running": running, "max": self.settings.workers.max},
            "uptime": round(time.time() - self.started_at, 3) if self.started_at else 0.0,
            # Which store this host is on; a URL's password is never shown.
            "store": redact_url(self.settings.store) if self.settings.store else "sqlite",
        }

    def log_tail(self, name: str, lines: int, job_id: int | None = None) -> list[str]:
        tail = self.job_log.tail(name, lines if job_id is None else max(lines * 20, 2000))
        if job_id is not None:
            # The second field, not anywhere in the line: an entry's own text (escaped,
            # but free) may contain " job=N ".
            marker = f"job={job_id}"
            tail = [line for line in tail if line.split(" ", 2)[1:2] == [marker]][-lines:]
        return tail
