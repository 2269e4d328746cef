"""The allow-list and submit validation: turns a request into a :class:`JobSpec` or refuses it.

Runs in the host, which never imports job code; the worker checks the allow-list again
before its import.  A refusal is a :class:`NotAllowed` (HTTP 403) and is logged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from .config import JobClass, Settings
from .errors import BadRequest, InvalidField, NotAllowed
from .models import JobSpec, Priority, StepSpec, parse_iso

log = logging.getLogger("asyncjobs.registry")

SUBMIT_FIELDS = frozenset({"class", "method", "args", "kwargs", "priority", "delay", "run_at",
                           "timeout", "max_attempts", "then", "unique_key"})
STEP_FIELDS = frozenset({"class", "method", "args", "kwargs"})
MAX_CHAIN = 100
MAX_DELAY = 10 * 365 * 86400.0


def check_allowed(settings: Settings, cls: object, method: object) -> JobClass:
    """Return the allow-list entry for ``cls.method``, or raise :class:`NotAllowed`."""
    if not isinstance(cls, str) or not isinstance(method, str):
        raise InvalidField("class" if not isinstance(cls, str) else "method", "must be a string")
    entry = settings.jobs.get(cls) if not cls.startswith("_") else None
    if entry is None:
        log.warning("refused: class %r is not in the allow-list", cls[:200])
        raise NotAllowed(f"class {cls[:200]!r} is not in the allow-list")
    if method.startswith("_") or method not in entry.methods:
        log.warning("refused: method %r of %s is not in the allow-list", method[:200], cls)
        raise NotAllowed(f"method {method[:200]!r} of {cls} is not in the allow-list")
    return entry


def _number(name: str, value: object, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidField(name, f"must be a number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise InvalidField(name, f"must be {'positive' if positive else '>= 0'}, got {value!r}")
    return float(value)


def _args(name: str, value: object) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidField(name, "must be a JSON array")
    return value


def _kwargs(name: str, value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidField(name, "must be a JSON object")
    return value


def _unknown(body: Mapping[str, object], allowed: frozenset[str], where: str) -> None:
    extra = sorted(set(body) - allowed)
    if extra:
        raise InvalidField(f"{where}{extra[0]}", f"unknown field; expected {sorted(allowed)}")


def _step(settings: Settings, i: int, raw: object) -> StepSpec:
    where = f"then[{i}]"
    if not isinstance(raw, dict):
        raise InvalidField(where, "must be an object with class and method")
    _unknown(raw, STEP_FIELDS, f"{where}.")
    check_allowed(settings, raw.get("class"), raw.get("method"))
    return StepSpec(raw["class"], raw["method"], _args(f"{where}.args", raw.get("args")),
                    _kwargs(f"{where}.kwargs", raw.get("kwargs")))


def _run_at(body: Mapping[str, object], now: float) -> float:
    if body.get("run_at") is not None:
        if body.get("delay") is not None:
            raise InvalidField("run_at", "give either delay or run_at, not both")
        text = body["run_at"]
        if not isinstance(text, str):
            raise InvalidField("run_at", "must be an ISO 8601 time like 2026-11-22T10:00:00Z")
        try:
            return parse_iso(text)
        except ValueError:
            raise InvalidField("run_at", f"not an ISO 8601 time: {text[:100]!r}") from None
    if body.get("delay") is not None:
        delay = _number("delay", body["delay"])
        if delay > MAX_DELAY:
            raise InvalidField("delay", "must be at most ten years")
        return now + delay
    return now


def parse_submit(settings: Settings, body: object, now: float) -> JobSpec:
    """Validate one submit body (§5) against the allow-list and resolve its defaults."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    _unknown(body, SUBMIT_FIELDS, "")
    if "class" not in body or "method" not in body:
        raise InvalidField("class" if "class" not in body else "method", "is required")
    entry = check_allowed(settings, body["class"], body["method"])
    priority = entry.priority
    if body.get("priority") is not None:
        try:
            priority = Priority(body["priority"])
        except (ValueError, TypeError):
            raise InvalidField("priority", "must be 'high', 'medium' or 'low'") from None
    timeout = entry.timeout or settings.timeout
    if body.get("timeout") is not None:
        timeout = _number("timeout", body["timeout"], positive=True)
    max_attempts = entry.max_attempts or settings.retry.max_attempts
    if body.get("max_attempts") is not None:
        value = body["max_attempts"]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
            raise InvalidField("max_attempts", "must be an integer from 1 to 1000")
        max_attempts = value
    then = body.get("then") or []
    if not isinstance(then, list) or len(then) > MAX_CHAIN:
        raise InvalidField("then", f"must be a list of at most {MAX_CHAIN} steps")
    unique_key = body.get("unique_key")
    if unique_key is not None and (not isinstance(unique_key, str) or not 0 < len(unique_key)
                                   <= 200):
        raise InvalidField("unique_key", "must be a string of 1 to 200 characters")
    return JobSpec(
        cls=body["class"], method=body["method"], args=_args("args", body.get("args")),
        kwargs=_kwargs("kwargs", body.get("kwargs")), priority=priority,
        run_at=_run_at(body, now), timeout=timeout, max_attempts=max_attempts,
        then=[_step(settings, i, step) for i, step in enumerate(then)], unique_key=unique_key,
    )
