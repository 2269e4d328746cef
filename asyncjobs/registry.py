"""The allow-list and submit validation: turns a request into a :class:`JobSpec` or refuses it.

Runs in the host, which never imports job code; the worker checks the allow-list again
before its import.  A refusal is a :class:`NotAllowed` (HTTP 403) and is logged.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterable, Mapping
from importlib.machinery import PathFinder
from importlib.util import find_spec
from typing import Any

from .config import JobClass, Settings
from .errors import BadRequest, InvalidField, NotAllowed
from .models import JobSpec, Priority, StepSpec, parse_iso

log = logging.getLogger("asyncjobs.registry")

SUBMIT_FIELDS = frozenset({"class", "method", "args", "kwargs", "priority", "delay", "run_at",
                           "timeout", "max_attempts", "then", "unique_key"})
STEP_FIELDS = frozenset({"class", "method", "args", "kwargs"})
MAX_CHAIN = 100
MAX_DELAY = 10 * 365 * 86400.0  # a delay or run_at further out is surely a mistake
MAX_TIMEOUT = 30 * 86400.0  # an attempt may run a month; beyond that timers overflow
_PRIORITIES = {p.value: p for p in Priority}
MAX_DEPTH = 64  # JSON nesting in args/kwargs; deeper cannot be stored (orjson stops at 254)
# Numbers in args/kwargs: orjson keeps integers exact only within 64 bits and turns a larger
# one into a float without a word; refusing every number beyond that range (a 1e30 float
# too) is a rule that a client can state and a JSON Schema can express.
NUMBER_RANGE = (-(2**63), 2**64 - 1)


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


def unfound_modules(settings: Settings) -> dict[str, str]:
    """Job classes whose module the workers will not find, by class: a typo in ``module``
    would otherwise show only as every one of its jobs failing.  Only the top-level name is
    looked up, on the workers' path (the config's directory first), by a finder that
    imports nothing: finding ``pkg.mod`` would run ``pkg/__init__.py`` here, and the host
    never runs job code."""
    path = [str(settings.base_dir), *sys.path]

    def found(top: str) -> bool:
        # The path first, then every finder (an editable install's is not on the path).
        return PathFinder.find_spec(top, path) is not None or find_spec(top) is not None

    return {name: job.module for name, job in settings.jobs.items()
            if not found(job.module.partition(".")[0])}


def _number(name: str, value: object, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidField(name, f"must be a number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise InvalidField(name, f"must be {'positive' if positive else '>= 0'}, got {value!r}")
    return float(value)


_FLOAT_RANGE = (float(NUMBER_RANGE[0]), float(2**64))
# NUMBER_RANGE as open intervals, by type: what check_json compares a plain number with.
_OPEN_RANGE: dict[type, tuple[float, float]] = {
    int: (NUMBER_RANGE[0] - 1, NUMBER_RANGE[1] + 1), float: _FLOAT_RANGE}


def _in_range(number: float) -> bool:
    if isinstance(number, int):
        return NUMBER_RANGE[0] <= number <= NUMBER_RANGE[1]
    # Strictly inside: -2**63 - 1, parsed by orjson, is the float -2**63.
    return _FLOAT_RANGE[0] < number < _FLOAT_RANGE[1]


def check_json(name: str, value: object) -> None:
    """Refuse JSON nested deeper than :data:`MAX_DEPTH` levels, and numbers outside
    :data:`NUMBER_RANGE` (iteratively: a hostile document must not exhaust the stack of the
    check meant to stop it).

    Strings, booleans and null need no check and are passed over without a trip through
    the stack, as are numbers once their range is checked: arguments are mostly such flat
    lists, and this ran for every job of a batch submit."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, list):
            children: Iterable[object] = item
        elif isinstance(item, dict):
            children = item.values()
        else:
            _check_number(name, item)
            continue
        if depth >= MAX_DEPTH and item:  # its children, whatever they are, are too deep
            raise InvalidField(name, f"is nested deeper than {MAX_DEPTH} levels")
        for child in children:
            kind = type(child)
            if kind is str or kind is bool or child is None:
                continue
            # A plain number is checked in place (a subclass goes the long way, by the stack).
            bounds = _OPEN_RANGE.get(kind)
            if bounds is None:
                stack.append((child, depth + 1))
            elif not bounds[0] < child < bounds[1]:  # type: ignore[operator]
                _check_number(name, child)  # raises


def _check_number(name: str, item: object) -> None:
    if isinstance(item, int | float) and not isinstance(item, bool) and not _in_range(item):
        raise InvalidField(name, f"number {str(item)[:40]} is outside the 64-bit integer "
                                 "range, where it could not be kept exact; send big numbers "
                                 "as strings")


def _args(name: str, value: object) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidField(name, "must be a JSON array")
    check_json(name, value)
    return value


def _kwargs(name: str, value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidField(name, "must be a JSON object")
    check_json(name, value)
    return value


def _unknown(body: Mapping[str, object], allowed: frozenset[str], where: str) -> None:
    if allowed.issuperset(body):
        return
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
            moment = parse_iso(text)
        except ValueError:
            raise InvalidField("run_at", f"not an ISO 8601 time: {text[:100]!r}") from None
        if moment - now > MAX_DELAY:  # as for delay: so far out is surely a mistake
            raise InvalidField("run_at", "must be at most ten years from now")
        return moment
    if body.get("delay") is not None:
        delay = _number("delay", body["delay"])
        if delay > MAX_DELAY:
            raise InvalidField("delay", "must be at most ten years")
        return now + delay
    return now


def _priority(value: object, default: Priority) -> Priority:
    if value is None:
        return default
    if isinstance(value, str) and value in _PRIORITIES:
        return _PRIORITIES[value]
    raise InvalidField("priority", "must be 'high', 'medium' or 'low'")


def _timeout(value: object, default: float) -> float:
    if value is None:
        return default
    timeout = _number("timeout", value, positive=True)
    if timeout > MAX_TIMEOUT:
        raise InvalidField("timeout", f"must be at most {MAX_TIMEOUT:g} seconds (30 days)")
    return timeout


def _max_attempts(value: object, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON has one number type: 3.0 is the integer 3
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
        raise InvalidField("max_attempts", "must be an integer from 1 to 1000")
    return value


def _unique_key(value: object) -> str | None:
    if value is not None and (not isinstance(value, str) or not 0 < len(value) <= 200):
        raise InvalidField("unique_key", "must be a string of 1 to 200 characters")
    return value


def parse_submit(settings: Settings, body: object, now: float) -> JobSpec:
    """Validate one submit body (§5) against the allow-list and resolve its defaults."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    _unknown(body, SUBMIT_FIELDS, "")
    if "class" not in body or "method" not in body:
        raise InvalidField("class" if "class" not in body else "method", "is required")
    entry = check_allowed(settings, body["class"], body["method"])
    then = body.get("then") or []
    if not isinstance(then, list) or len(then) > MAX_CHAIN:
        raise InvalidField("then", f"must be a list of at most {MAX_CHAIN} steps")
    return JobSpec(
        cls=body["class"], method=body["method"], args=_args("args", body.get("args")),
        kwargs=_kwargs("kwargs", body.get("kwargs")),
        priority=_priority(body.get("priority"), entry.priority),
        run_at=_run_at(body, now),
        timeout=_timeout(body.get("timeout"), entry.timeout or settings.timeout),
        max_attempts=_max_attempts(body.get("max_attempts"),
                                   entry.max_attempts or settings.retry.max_attempts),
        then=[_step(settings, i, step) for i, step in enumerate(then)],
        unique_key=_unique_key(body.get("unique_key")),
    )
