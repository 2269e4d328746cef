"""A module whose import leaves a trace: proves a refused name was never imported."""

from __future__ import annotations

from pathlib import Path

MARKER = Path(__file__).with_name("imported.marker")
with MARKER.open("a") as _f:
    _f.write("imported\n")


class Listed:
    def run(self) -> str:
        return "listed"

    def _x(self) -> str:
        return "private"


class Unlisted:
    def run(self) -> str:
        return "unlisted"


def not_a_class() -> str:
    return "function"
