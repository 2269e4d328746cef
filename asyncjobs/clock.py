"""The Clock seam: wall time for records and schedules, injectable so tests never sleep."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock time in epoch seconds (what ``run_at`` and records use)."""
        ...

    def monotonic(self) -> float:
        """A clock for durations that never jumps backwards."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()
