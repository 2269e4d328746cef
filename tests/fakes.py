"""Test doubles for the engine's seams (a clock that moves only when told, fixed randomness),
the types of conftest's factory fixtures, and a bounded wait for a process to be gone."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asyncjobs.config import Settings
    from asyncjobs.engine.host import Host

START = 1_800_000_000.0  # 2027-01-15T08:00:00Z: any fixed instant will do


class FakeClock:
    """A :class:`asyncjobs.clock.Clock` whose time moves only by :meth:`advance`.

    Wall time (``now``) and the duration clock (``monotonic``) move together, so back-off
    delays and attempt durations are exact numbers in assertions.
    """

    def __init__(self, start: float = START) -> None:
        self._now = start
        self._monotonic = 1000.0

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self._now += seconds
        self._monotonic += seconds


def fixed_rand(value: float = 0.5) -> float:
    """Deterministic stand-in for ``random.random``: 0.5 puts jitter at exactly zero."""
    return value


# The shapes of conftest's factory fixtures, for annotating test parameters.
SettingsFactory = Callable[..., "Settings"]
ProjectFactory = Callable[..., Path]  # directory, **overrides -> config.json
HostFactory = Callable[..., "Host"]
Drain = Callable[..., Coroutine[Any, Any, None]]


def process_gone(pid: int) -> bool:
    """Whether ``pid`` has exited: no such process, or a zombie nobody has reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    except OSError:  # no /proc: fall back to signal 0
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


async def wait_gone(pid: int, timeout: float = 3.0) -> None:
    """Wait (bounded) until ``pid`` has exited; a TimeoutError fails the test."""
    async with asyncio.timeout(timeout):
        while not process_gone(pid):
            await asyncio.sleep(0.02)
