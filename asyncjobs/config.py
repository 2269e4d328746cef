"""Settings: ``config.json`` validated into frozen dataclasses, with environment overrides.

Precedence is defaults < file < ``ASYNCJOBS_*`` environment < explicit overrides (CLI flags).
Every error names the key path, what was expected and what was found, so a typo in a
production config is a one-line fix rather than a debugging session.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import orjson

from .backend_url import check_store
from .cron import CronError, CronExpr
from .errors import ConfigError
from .models import Isolation, Priority

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
MODULE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*$")
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


T = TypeVar("T")


def _expect(path: str, value: object, kind: type[T] | tuple[type, ...], what: str) -> T:
    # bool is an int in Python; a config saying "max": true is a mistake, not 1.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ConfigError(path, what, value)
    if not isinstance(value, kind):
        raise ConfigError(path, what, value)
    return value  # type: ignore[return-value]


def _number(path: str, value: object, *, minimum: float = 0.0, positive: bool = False) -> float:
    try:
        num = float(_expect(path, value, (int, float), "a number"))
    except OverflowError:  # an integer beyond any float
        raise ConfigError(path, "a number of sensible size", value) from None
    if not math.isfinite(num):  # only the environment can say "nan" or "inf"
        raise ConfigError(path, "a finite number", value)
    if num < minimum or (positive and num <= 0):
        raise ConfigError(path, f"a number {'>' if positive else '>='} {minimum}", value)
    return num


def _text(path: str, value: object, what: str) -> str:
    text = _expect(path, value, str, what)
    if "\x00" in text:
        raise ConfigError(path, f"{what} without NUL characters", text)
    return text


def _int(path: str, value: object, *, minimum: int = 0) -> int:
    num = _expect(path, value, int, "an integer")
    if num < minimum:
        raise ConfigError(path, f"an integer >= {minimum}", value)
    return num


def _names(path: str, value: object) -> tuple[str, ...]:
    items = _expect(path, value, list, "a list of names")
    for i, item in enumerate(items):
        if not isinstance(item, str) or not NAME_RE.match(item):
            raise ConfigError(f"{path}[{i}]", "a name like 'ValueError'", item)
    return tuple(items)


def _enum(path: str, value: object, enum: Callable[[str], T], choices: str) -> T:
    try:
        return enum(_expect(path, value, str, f"one of {choices}"))
    except ValueError:
        raise ConfigError(path, f"one of {choices}", value) from None


def _check_keys(path: str, obj: Mapping[str, object], allowed: set[str]) -> None:
    for key in obj:
        if key not in allowed:
            where = f"{path}.{key}" if path else key
            raise ConfigError(where, f"one of the keys {sorted(allowed)}", key)


def _job_class(name: str, raw: object) -> JobClass:
    path = f"jobs.{name}"
    if not NAME_RE.match(name) or name.startswith("_"):
        raise ConfigError("jobs", "class names made of letters, digits and _", name)
    obj = _expect(path, raw, dict, "an object")
    allowed = {"module", "methods", "priority", "timeout", "max_attempts", "retry_on",
               "no_retry_on", "concurrency", "isolation", "memory_limit"}
    _check_keys(path, obj, allowed)
    module = _expect(f"{path}.module", obj.get("module", "jobs"), str, "a module path")
    if not MODULE_RE.match(module):
        raise ConfigError(f"{path}.module", "a dotted module path like 'jobs.lessons'", module)
    methods = _names(f"{path}.methods", obj.get("methods"))
    if not methods:
        raise ConfigError(f"{path}.methods", "at least one method name", [])
    for method in methods:
        if method.startswith("_"):
            raise ConfigError(f"{path}.methods", "public method names (no leading _)", method)
    return JobClass(
        name=name,
        module=module,
        methods=methods,
        priority=_enum(f"{path}.priority", obj.get("priority", "medium"), Priority,
                       "'high', 'medium', 'low'"),
        timeout=(_number(f"{path}.timeout", obj["timeout"], positive=True)
                 if "timeout" in obj else None),
        max_attempts=(_int(f"{path}.max_attempts", obj["max_attempts"], minimum=1)
                      if "max_attempts" in obj else None),
        retry_on=_names(f"{path}.retry_on", obj.get("retry_on", [])),
        no_retry_on=_names(f"{path}.no_retry_on", obj.get("no_retry_on", [])),
        concurrency=(_int(f"{path}.concurrency", obj["concurrency"], minimum=1)
                     if "concurrency" in obj else None),
        isolation=(_enum(f"{path}.isolation", obj["isolation"], Isolation, "'pool', 'process'")
                   if "isolation" in obj else None),
        memory_limit=_mib(f"{path}.memory_limit", obj.get("memory_limit")),
    )


def _mib(path: str, value: object) -> int | None:
    """A size in MiB (a positive integer), or None for no limit."""
    return None if value is None else _int(path, value, minimum=1)


def _schedule(name: str, raw: object, jobs: Mapping[str, JobClass]) -> Schedule:
    path = f"schedules.{name}"
    obj = _expect(path, raw, dict, "an object")
    _check_keys(path, obj, {"class", "method", "args", "kwargs", "cron", "every"})
    cls = _expect(f"{path}.class", obj.get("class"), str, "an allow-listed class name")
    method = _expect(f"{path}.method", obj.get("method"), str, "a method name")
    entry = jobs.get(cls)
    if entry is None:
        raise ConfigError(f"{path}.class", f"a class listed under jobs ({sorted(jobs)})", cls)
    if method not in entry.methods:
        raise ConfigError(f"{path}.method", f"one of {list(entry.methods)}", method)
    if ("cron" in obj) == ("every" in obj):
        raise ConfigError(path, "exactly one of 'cron' or 'every'", sorted(obj))
    cron = None
    if "cron" in obj:
        cron = _expect(f"{path}.cron", obj["cron"], str, "a five-field cron expression")
        try:
            CronExpr.parse(cron)
        except CronError as exc:
            raise ConfigError(f"{path}.cron", f"a five-field cron expression ({exc})",
                              cron) from None
    return Schedule(
        name=name, cls=cls, method=method,
        args=tuple(_expect(f"{path}.args", obj.get("args", []), list, "a list")),
        kwargs=_expect(f"{path}.kwargs", obj.get("kwargs", {}), dict, "an object"),
        cron=cron,
        every=_number(f"{path}.every", obj["every"], positive=True) if "every" in obj else None,
    )


def _retention(doc: Mapping[str, object]) -> RetentionSettings:
    r = _section(doc, "retention", {"completed_days", "failed_days"})
    return RetentionSettings(
        completed_days=(_number("retention.completed_days", r["completed_days"], positive=True)
                        if r.get("completed_days") is not None else None),
        failed_days=(_number("retention.failed_days", r["failed_days"], positive=True)
                     if r.get("failed_days") is not None else None),
    )


def _section(raw: Mapping[str, object], key: str, allowed: set[str]) -> dict[str, Any]:
    obj = _expect(key, raw.get(key, {}), dict, "an object")
    _check_keys(key, obj, allowed)
    return obj


def parse_settings(raw: object, *, base_dir: Path, config_path: Path | None = None) -> Settings:
    """Validate a decoded ``config.json`` document into :class:`Settings`."""
    doc = _expect("(top level)", raw, dict, "a JSON object")
    _check_keys("", doc, {"jobs", "retry", "timeout", "workers", "api", "logs", "data_dir",
                          "durability", "shutdown_grace", "max_interruptions", "store",
                          "hosts",
                          "max_result_bytes", "max_output_bytes", "schedules", "retention",
                          "$schema", "_comment"})
    jobs_raw = _expect("jobs", doc.get("jobs", {}), dict, "an object of class name -> entry")
    jobs = {name: _job_class(name, entry) for name, entry in jobs_raw.items()}
    schedules_raw = _expect("schedules", doc.get("schedules", {}), dict,
                            "an object of schedule name -> entry")
    schedules = {name: _schedule(name, entry, jobs) for name, entry in schedules_raw.items()}

    r = _section(doc, "retry", {"max_attempts", "base_delay", "factor", "max_delay", "jitter"})
    d = RetrySettings()
    retry = RetrySettings(
        max_attempts=_int("retry.max_attempts", r.get("max_attempts", d.max_attempts), minimum=1),
        base_delay=_number("retry.base_delay", r.get("base_delay", d.base_delay)),
        factor=_number("retry.factor", r.get("factor", d.factor), minimum=1.0),
        max_delay=_number("retry.max_delay", r.get("max_delay", d.max_delay)),
        jitter=_number("retry.jitter", r.get("jitter", d.jitter)),
    )
    if retry.jitter > 1:
        raise ConfigError("retry.jitter", "a fraction between 0 and 1", retry.jitter)

    w = _section(doc, "workers", {"max", "isolation", "max_jobs_per_worker", "kill_grace",
                                  "memory_limit", "max_memory_per_worker"})
    dw = WorkerSettings()
    workers = WorkerSettings(
        max=_int("workers.max", w.get("max", dw.max), minimum=1),
        isolation=_enum("workers.isolation", w.get("isolation", dw.isolation.value), Isolation,
                        "'pool', 'process'"),
        max_jobs_per_worker=_int("workers.max_jobs_per_worker",
                                 w.get("max_jobs_per_worker", dw.max_jobs_per_worker), minimum=1),
        kill_grace=_number("workers.kill_grace", w.get("kill_grace", dw.kill_grace)),
        memory_limit=_mib("workers.memory_limit", w.get("memory_limit")),
        max_memory_per_worker=_mib("workers.max_memory_per_worker",
                                   w.get("max_memory_per_worker")),
    )

    a = _section(doc, "api", {"host", "port", "max_body_bytes", "idle_timeout",
                              "max_connections", "max_event_streams", "session_ttl"})
    da = ApiSettings()
    port = _int("api.port", a.get("port", da.port))
    if port > 65535:
        raise ConfigError("api.port", "a port number 0-65535", port)
    api = ApiSettings(
        host=_text("api.host", a.get("host", da.host), "a host name or address"),
        port=port,
        max_body_bytes=_int("api.max_body_bytes", a.get("max_body_bytes", da.max_body_bytes),
                            minimum=1024),
        idle_timeout=_number("api.idle_timeout", a.get("idle_timeout", da.idle_timeout),
                             positive=True),
        max_connections=_int("api.max_connections",
                             a.get("max_connections", da.max_connections), minimum=2),
        max_event_streams=_int("api.max_event_streams",
                               a.get("max_event_streams", da.max_event_streams), minimum=1),
        session_ttl=_number("api.session_ttl", a.get("session_ttl", da.session_ttl),
                            positive=True),
    )

    lg = _section(doc, "logs", {"max_bytes", "backups"})
    dl = LogSettings()
    logs = LogSettings(
        max_bytes=_int("logs.max_bytes", lg.get("max_bytes", dl.max_bytes), minimum=1024),
        backups=_int("logs.backups", lg.get("backups", dl.backups)),
    )

    durability = _expect("durability", doc.get("durability", "full"), str, "'full' or 'normal'")
    if durability not in ("full", "normal"):
        raise ConfigError("durability", "'full' or 'normal'", durability)
    data_dir = Path(_text("data_dir", doc.get("data_dir", ".asyncjobs"), "a path"))
    h = _section(doc, "hosts", {"heartbeat", "lease"})
    dh = HostSettings()
    hosts = HostSettings(heartbeat=_number("hosts.heartbeat", h.get("heartbeat", dh.heartbeat),
                                           positive=True),
                         lease=_number("hosts.lease", h.get("lease", dh.lease), positive=True))
    if hosts.lease <= hosts.heartbeat:
        raise ConfigError("hosts.lease", "more seconds than hosts.heartbeat", hosts.lease)
    s = Settings()
    return Settings(
        jobs=jobs,
        retry=retry,
        timeout=_number("timeout", doc.get("timeout", s.timeout), positive=True),
        workers=workers,
        api=api,
        logs=logs,
        schedules=schedules,
        retention=_retention(doc),
        data_dir=data_dir if data_dir.is_absolute() else base_dir / data_dir,
        durability=durability,
        store=check_store("store", doc.get("store")),
        hosts=hosts,
        shutdown_grace=_number("shutdown_grace", doc.get("shutdown_grace", s.shutdown_grace)),
        max_interruptions=_int("max_interruptions",
                               doc.get("max_interruptions", s.max_interruptions), minimum=1),
        max_result_bytes=_int("max_result_bytes", doc.get("max_result_bytes",
                                                          s.max_result_bytes), minimum=1),
        max_output_bytes=_int("max_output_bytes", doc.get("max_output_bytes",
                                                          s.max_output_bytes)),
        base_dir=base_dir,
        config_path=config_path,
    )


def _env_number(env: Mapping[str, str], name: str, convert: Callable[[str], T]) -> T | None:
    text = env.get(name)
    if text is None or text == "":
        return None
    try:
        return convert(text)
    except ValueError:
        raise ConfigError(f"${name}", f"a {convert.__name__}", text) from None


def apply_env(settings: Settings, env: Mapping[str, str]) -> Settings:
    """Apply the ``ASYNCJOBS_*`` overrides (max attempts, retry delay, port, data dir, ...)."""
    retry = settings.retry
    if (n := _env_number(env, "ASYNCJOBS_MAX_ATTEMPTS", int)) is not None:
        retry = replace(retry, max_attempts=_int("$ASYNCJOBS_MAX_ATTEMPTS", n, minimum=1))
    if (f := _env_number(env, "ASYNCJOBS_RETRY_DELAY", float)) is not None:
        retry = replace(retry, base_delay=_number("$ASYNCJOBS_RETRY_DELAY", f))
    api = settings.api
    if (port := _env_number(env, "ASYNCJOBS_PORT", int)) is not None:
        if port > 65535:
            raise ConfigError("$ASYNCJOBS_PORT", "a port number 0-65535", port)
        api = replace(api, port=_int("$ASYNCJOBS_PORT", port))
    if host := env.get("ASYNCJOBS_HOST"):
        api = replace(api, host=host)
    workers = settings.workers
    if (m := _env_number(env, "ASYNCJOBS_WORKERS", int)) is not None:
        workers = replace(workers, max=_int("$ASYNCJOBS_WORKERS", m, minimum=1))
    data_dir = settings.data_dir
    if d := env.get("ASYNCJOBS_DATA_DIR"):
        data_dir = Path(d).absolute()
    durability = env.get("ASYNCJOBS_DURABILITY") or settings.durability
    if durability not in ("full", "normal"):
        raise ConfigError("$ASYNCJOBS_DURABILITY", "'full' or 'normal'", durability)
    store = settings.store
    if env.get("ASYNCJOBS_STORE"):
        store = check_store("$ASYNCJOBS_STORE", env["ASYNCJOBS_STORE"])
    return replace(settings, retry=retry, api=api, workers=workers, data_dir=data_dir,
                   durability=durability, store=store)


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
