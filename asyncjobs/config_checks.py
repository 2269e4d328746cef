"""The typed readers of one decoded configuration value, each raising :class:`ConfigError`.

``config.json`` and the ``ASYNCJOBS_*`` environment are read through these alone, so every
value is checked the same way wherever it comes from, and every error names the key path,
what was expected and what was found.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .errors import ConfigError

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
MODULE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*$")
DURABILITY = ("full", "normal")
MAX_PORT = 65535

T = TypeVar("T")


def expect(path: str, value: object, kind: type[T] | tuple[type, ...], what: str) -> T:
    """``value`` if it is a ``kind``, else a :class:`ConfigError` saying ``what`` was expected."""
    # bool is an int in Python; a config saying "max": true is a mistake, not 1.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ConfigError(path, what, value)
    if not isinstance(value, kind):
        raise ConfigError(path, what, value)
    return value  # type: ignore[return-value]


def number(path: str, value: object, *, minimum: float = 0.0, positive: bool = False) -> float:
    try:
        num = float(expect(path, value, (int, float), "a number"))
    except OverflowError:  # an integer beyond any float
        raise ConfigError(path, "a number of sensible size", value) from None
    if not math.isfinite(num):  # only the environment can say "nan" or "inf"
        raise ConfigError(path, "a finite number", value)
    if num < minimum or (positive and num <= 0):
        raise ConfigError(path, f"a number {'>' if positive else '>='} {minimum}", value)
    return num


def text(path: str, value: object, what: str) -> str:
    checked = expect(path, value, str, what)
    if "\x00" in checked:
        raise ConfigError(path, f"{what} without NUL characters", checked)
    return checked


def integer(path: str, value: object, *, minimum: int = 0) -> int:
    num = expect(path, value, int, "an integer")
    if num < minimum:
        raise ConfigError(path, f"an integer >= {minimum}", value)
    return num


def mib(path: str, value: object) -> int | None:
    """A size in MiB (a positive integer), or None for no limit."""
    return None if value is None else integer(path, value, minimum=1)


def port(path: str, value: object) -> int:
    num = integer(path, value)
    if num > MAX_PORT:
        raise ConfigError(path, f"a port number 0-{MAX_PORT}", num)
    return num


def durability(path: str, value: object) -> str:
    what = " or ".join(repr(d) for d in DURABILITY)
    mode = expect(path, value, str, what)
    if mode not in DURABILITY:
        raise ConfigError(path, what, mode)
    return mode


def names(path: str, value: object) -> tuple[str, ...]:
    items = expect(path, value, list, "a list of names")
    for i, item in enumerate(items):
        if not isinstance(item, str) or not NAME_RE.match(item):
            raise ConfigError(f"{path}[{i}]", "a name like 'ValueError'", item)
    return tuple(items)


def enum_value(path: str, value: object, enum: Callable[[str], T], choices: str) -> T:
    try:
        return enum(expect(path, value, str, f"one of {choices}"))
    except ValueError:
        raise ConfigError(path, f"one of {choices}", value) from None


def check_keys(path: str, obj: Mapping[str, object], allowed: set[str]) -> None:
    for key in obj:
        if key not in allowed:
            where = f"{path}.{key}" if path else key
            raise ConfigError(where, f"one of the keys {sorted(allowed)}", key)


def section(raw: Mapping[str, object], key: str, allowed: set[str]) -> dict[str, Any]:
    """The object at ``raw[key]`` (``{}`` if absent), with no key outside ``allowed``."""
    obj = expect(key, raw.get(key, {}), dict, "an object")
    check_keys(key, obj, allowed)
    return obj
