"""Settings: ``config.json`` validated into frozen dataclasses, with environment overrides.

Precedence is defaults < file < ``ASYNCJOBS_*`` environment < explicit overrides (CLI flags).
Every error names the key path, what was expected and what was found, so a typo in a
production config is a one-line fix rather than a debugging session.  The value readers
live in :mod:`asyncjobs.config_checks`, the environment overrides in
:mod:`asyncjobs.config_env`; this module holds the settings' shape and reads the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from . import config_checks as check
from .backend_url import check_store
from .config_env import apply_env
from .cron import CronError, CronExpr
from .errors import ConfigError
from .models import Isolation, Priority

DEFAULT_CONFIG = "config.json"


@dataclass(frozen=True, slots=True)
class RetrySettings:
    max_attempts: int = 3
    base_delay: float = 5.0
    factor: float = 2.0
    max_delay: float = 3600.0
    jitter: float = 0.1


@dataclass(frozen=True, slots=True)
class JobClass:
    """One allow-list entry: a class in ``module`` and the methods that may be called."""

    name: str
    module: str = "jobs"
    methods: tuple[str, ...] = ()
    priority: Priority = Priority.MEDIUM
    timeout: float | None = None
    max_attempts: int | None = None
    retry_on: tuple[str, ...] = ()
    no_retry_on: tuple[str, ...] = ()
    concurrency: int | None = None
    isolation: Isolation | None = None
    memory_limit: int | None = None  # MiB; None: workers.memory_limit


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    max: int = 4
    isolation: Isolation = Isolation.POOL
    max_jobs_per_worker: int = 1000
    kill_grace: float = 5.0
    memory_limit: int | None = None  # MiB per job (a class's own wins); None: unlimited
    max_memory_per_worker: int | None = None  # MiB; a pool worker past it after a job exits


@dataclass(frozen=True, slots=True)
class ApiSettings:
    host: str = "127.0.0.1"
    port: int = 8765
    max_body_bytes: int = 1024 * 1024
    # Bounds that keep one local process from locking the API out (issue #13 item 3, 6).
    idle_timeout: float = 15.0  # s a connection may sit without a request in progress
    max_connections: int = 256
    max_event_streams: int = 32
    session_ttl: float = 8 * 3600.0  # s a dashboard sign-in lasts


@dataclass(frozen=True, slots=True)
class Schedule:
    """A recurring job: ``cron`` (five fields, UTC) or ``every`` seconds, never both."""

    name: str
    cls: str
    method: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    cron: str | None = None
    every: float | None = None

    @property
    def expression(self) -> str:
        return self.cron if self.cron is not None else f"every {self.every:g}s"


@dataclass(frozen=True, slots=True)
class HostSettings:
    """How a host proves it is alive: a heartbeat every ``heartbeat`` seconds extends its
    lease to ``lease`` seconds; a host whose lease ran out is dead and its attempts rescued."""

    heartbeat: float = 5.0
    lease: float = 15.0


@dataclass(frozen=True, slots=True)
class RetentionSettings:
    """Finished jobs older than this many days are pruned; ``None`` keeps them forever."""

    completed_days: float | None = None
    failed_days: float | None = None  # failed and cancelled


@dataclass(frozen=True, slots=True)
class LogSettings:
    max_bytes: int = 10 * 1024 * 1024
    backups: int = 5


@dataclass(frozen=True, slots=True)
class Settings:
    jobs: Mapping[str, JobClass] = field(default_factory=dict)
    retry: RetrySettings = RetrySettings()
    timeout: float = 300.0
    workers: WorkerSettings = WorkerSettings()
    api: ApiSettings = ApiSettings()
    logs: LogSettings = LogSettings()
    schedules: Mapping[str, Schedule] = field(default_factory=dict)
    retention: RetentionSettings = RetentionSettings()
    data_dir: Path = Path(".asyncjobs")
    store: str | None = None  # None: SQLite at data_dir/asyncjobs.db; else a store URL
    durability: str = "full"
    hosts: HostSettings = HostSettings()
    shutdown_grace: float = 10.0
    max_interruptions: int = 5
    max_result_bytes: int = 1024 * 1024
    max_output_bytes: int = 8192
    base_dir: Path = Path()  # the directory holding config.json; first on the workers' sys.path
    config_path: Path | None = None

    def job_class(self, name: str) -> JobClass | None:
        return self.jobs.get(name)



TOP_KEYS = {"jobs", "retry", "timeout", "workers", "api", "logs", "data_dir", "durability",
            "shutdown_grace", "max_interruptions", "store", "hosts", "max_result_bytes",
            "max_output_bytes", "schedules", "retention", "$schema", "_comment"}
JOB_KEYS = {"module", "methods", "priority", "timeout", "max_attempts", "retry_on",
            "no_retry_on", "concurrency", "isolation", "memory_limit"}


def _job_class(name: str, raw: object) -> JobClass:
    path = f"jobs.{name}"
    if not check.NAME_RE.match(name) or name.startswith("_"):
        raise ConfigError("jobs", "class names made of letters, digits and _", name)
    obj = check.expect(path, raw, dict, "an object")
    check.check_keys(path, obj, JOB_KEYS)
    module = check.expect(f"{path}.module", obj.get("module", "jobs"), str, "a module path")
    if not check.MODULE_RE.match(module):
        raise ConfigError(f"{path}.module", "a dotted module path like 'jobs.lessons'", module)
    methods = check.names(f"{path}.methods", obj.get("methods"))
    if not methods:
        raise ConfigError(f"{path}.methods", "at least one method name", [])
    for method in methods:
        if method.startswith("_"):
            raise ConfigError(f"{path}.methods", "public method names (no leading _)", method)
    return JobClass(
        name=name,
        module=module,
        methods=methods,
        priority=check.enum_value(f"{path}.priority", obj.get("priority", "medium"), Priority,
                                  "'high', 'medium', 'low'"),
        timeout=(check.number(f"{path}.timeout", obj["timeout"], positive=True)
                 if "timeout" in obj else None),
        max_attempts=(check.integer(f"{path}.max_attempts", obj["max_attempts"], minimum=1)
                      if "max_attempts" in obj else None),
        retry_on=check.names(f"{path}.retry_on", obj.get("retry_on", [])),
        no_retry_on=check.names(f"{path}.no_retry_on", obj.get("no_retry_on", [])),
        concurrency=(check.integer(f"{path}.concurrency", obj["concurrency"], minimum=1)
                     if "concurrency" in obj else None),
        isolation=(check.enum_value(f"{path}.isolation", obj["isolation"], Isolation,
                                    "'pool', 'process'") if "isolation" in obj else None),
        memory_limit=check.mib(f"{path}.memory_limit", obj.get("memory_limit")),
    )


def _schedule(name: str, raw: object, jobs: Mapping[str, JobClass]) -> Schedule:
    path = f"schedules.{name}"
    obj = check.expect(path, raw, dict, "an object")
    check.check_keys(path, obj, {"class", "method", "args", "kwargs", "cron", "every"})
    cls = check.expect(f"{path}.class", obj.get("class"), str, "an allow-listed class name")
    method = check.expect(f"{path}.method", obj.get("method"), str, "a method name")
    entry = jobs.get(cls)
    if entry is None:
        raise ConfigError(f"{path}.class", f"a class listed under jobs ({sorted(jobs)})", cls)
    if method not in entry.methods:
        raise ConfigError(f"{path}.method", f"one of {list(entry.methods)}", method)
    if ("cron" in obj) == ("every" in obj):
        raise ConfigError(path, "exactly one of 'cron' or 'every'", sorted(obj))
    cron = None
    if "cron" in obj:
        cron = check.expect(f"{path}.cron", obj["cron"], str, "a five-field cron expression")
        try:
            CronExpr.parse(cron)
        except CronError as exc:
            raise ConfigError(f"{path}.cron", f"a five-field cron expression ({exc})",
                              cron) from None
    return Schedule(
        name=name, cls=cls, method=method,
        args=tuple(check.expect(f"{path}.args", obj.get("args", []), list, "a list")),
        kwargs=check.expect(f"{path}.kwargs", obj.get("kwargs", {}), dict, "an object"),
        cron=cron,
        every=(check.number(f"{path}.every", obj["every"], positive=True)
               if "every" in obj else None),
    )


def _retry(doc: Mapping[str, object]) -> RetrySettings:
    r = check.section(doc, "retry", {"max_attempts", "base_delay", "factor", "max_delay",
                                     "jitter"})
    d = RetrySettings()
    retry = RetrySettings(
        max_attempts=check.integer("retry.max_attempts", r.get("max_attempts", d.max_attempts),
                                   minimum=1),
        base_delay=check.number("retry.base_delay", r.get("base_delay", d.base_delay)),
        factor=check.number("retry.factor", r.get("factor", d.factor), minimum=1.0),
        max_delay=check.number("retry.max_delay", r.get("max_delay", d.max_delay)),
        jitter=check.number("retry.jitter", r.get("jitter", d.jitter)),
    )
    if retry.jitter > 1:
        raise ConfigError("retry.jitter", "a fraction between 0 and 1", retry.jitter)
    return retry


def _workers(doc: Mapping[str, object]) -> WorkerSettings:
    w = check.section(doc, "workers", {"max", "isolation", "max_jobs_per_worker", "kill_grace",
                                       "memory_limit", "max_memory_per_worker"})
    d = WorkerSettings()
    return WorkerSettings(
        max=check.integer("workers.max", w.get("max", d.max), minimum=1),
        isolation=check.enum_value("workers.isolation", w.get("isolation", d.isolation.value),
                                   Isolation, "'pool', 'process'"),
        max_jobs_per_worker=check.integer(
            "workers.max_jobs_per_worker", w.get("max_jobs_per_worker", d.max_jobs_per_worker),
            minimum=1),
        kill_grace=check.number("workers.kill_grace", w.get("kill_grace", d.kill_grace)),
        memory_limit=check.mib("workers.memory_limit", w.get("memory_limit")),
        max_memory_per_worker=check.mib("workers.max_memory_per_worker",
                                        w.get("max_memory_per_worker")),
    )


def _api(doc: Mapping[str, object]) -> ApiSettings:
    a = check.section(doc, "api", {"host", "port", "max_body_bytes", "idle_timeout",
                                   "max_connections", "max_event_streams", "session_ttl"})
    d = ApiSettings()
    port = check.port("api.port", a.get("port", d.port))
    return ApiSettings(
        host=check.text("api.host", a.get("host", d.host), "a host name or address"),
        port=port,
        max_body_bytes=check.integer("api.max_body_bytes",
                                     a.get("max_body_bytes", d.max_body_bytes), minimum=1024),
        idle_timeout=check.number("api.idle_timeout", a.get("idle_timeout", d.idle_timeout),
                                  positive=True),
        max_connections=check.integer("api.max_connections",
                                      a.get("max_connections", d.max_connections), minimum=2),
        max_event_streams=check.integer("api.max_event_streams",
                                        a.get("max_event_streams", d.max_event_streams),
                                        minimum=1),
        session_ttl=check.number("api.session_ttl", a.get("session_ttl", d.session_ttl),
                                 positive=True),
    )


def _logs(doc: Mapping[str, object]) -> LogSettings:
    lg = check.section(doc, "logs", {"max_bytes", "backups"})
    d = LogSettings()
    return LogSettings(
        max_bytes=check.integer("logs.max_bytes", lg.get("max_bytes", d.max_bytes),
                                minimum=1024),
        backups=check.integer("logs.backups", lg.get("backups", d.backups)),
    )


def _hosts(doc: Mapping[str, object]) -> HostSettings:
    h = check.section(doc, "hosts", {"heartbeat", "lease"})
    d = HostSettings()
    hosts = HostSettings(
        heartbeat=check.number("hosts.heartbeat", h.get("heartbeat", d.heartbeat),
                               positive=True),
        lease=check.number("hosts.lease", h.get("lease", d.lease), positive=True))
    if hosts.lease <= hosts.heartbeat:
        raise ConfigError("hosts.lease", "more seconds than hosts.heartbeat", hosts.lease)
    return hosts


def _retention(doc: Mapping[str, object]) -> RetentionSettings:
    r = check.section(doc, "retention", {"completed_days", "failed_days"})
    return RetentionSettings(
        completed_days=(check.number("retention.completed_days", r["completed_days"],
                                     positive=True)
                        if r.get("completed_days") is not None else None),
        failed_days=(check.number("retention.failed_days", r["failed_days"], positive=True)
                     if r.get("failed_days") is not None else None),
    )


def parse_settings(raw: object, *, base_dir: Path, config_path: Path | None = None) -> Settings:
    """Validate a decoded ``config.json`` document into :class:`Settings`."""
    doc = check.expect("(top level)", raw, dict, "a JSON object")
    check.check_keys("", doc, TOP_KEYS)
    jobs_raw = check.expect("jobs", doc.get("jobs", {}), dict,
                            "an object of class name -> entry")
    jobs = {name: _job_class(name, entry) for name, entry in jobs_raw.items()}
    schedules_raw = check.expect("schedules", doc.get("schedules", {}), dict,
                                 "an object of schedule name -> entry")
    schedules = {name: _schedule(name, entry, jobs) for name, entry in schedules_raw.items()}
    # Checked in this order (sections first), so the first error reported stays the same.
    retry, workers, api, logs = _retry(doc), _workers(doc), _api(doc), _logs(doc)
    durability = check.durability("durability", doc.get("durability", "full"))
    data_dir = Path(check.text("data_dir", doc.get("data_dir", ".asyncjobs"), "a path"))
    hosts = _hosts(doc)
    s = Settings()
    return Settings(
        jobs=jobs,
        retry=retry,
        timeout=check.number("timeout", doc.get("timeout", s.timeout), positive=True),
        workers=workers,
        api=api,
        logs=logs,
        schedules=schedules,
        retention=_retention(doc),
        data_dir=data_dir if data_dir.is_absolute() else base_dir / data_dir,
        durability=durability,
        store=check_store("store", doc.get("store")),
        hosts=hosts,
        shutdown_grace=check.number("shutdown_grace",
                                    doc.get("shutdown_grace", s.shutdown_grace)),
        max_interruptions=check.integer("max_interruptions",
                                        doc.get("max_interruptions", s.max_interruptions),
                                        minimum=1),
        max_result_bytes=check.integer("max_result_bytes",
                                       doc.get("max_result_bytes", s.max_result_bytes),
                                       minimum=1),
        max_output_bytes=check.integer("max_output_bytes",
                                       doc.get("max_output_bytes", s.max_output_bytes)),
        base_dir=base_dir,
        config_path=config_path,
    )


def find_config(path: str | Path | None, env: Mapping[str, str]) -> Path:
    """``--config`` wins, then ``$ASYNCJOBS_CONFIG``, then ``./config.json``."""
    chosen = path or env.get("ASYNCJOBS_CONFIG") or DEFAULT_CONFIG
    return Path(chosen).absolute()


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read, validate and override the configuration the way ``asyncjobs serve`` does."""
    env = os.environ if env is None else env
    config_path = find_config(path, env)
    try:
        data = config_path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(str(config_path), "a readable config file", "no such file") from None
    except OSError as exc:
        raise ConfigError(str(config_path), "a readable config file", exc.strerror) from None
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(str(config_path), "valid JSON", str(exc)) from None
    settings = parse_settings(raw, base_dir=config_path.parent, config_path=config_path)
    return apply_env(settings, env)
