"""What job code may call while it runs: ``progress()``.

The worker installs a reporter here; outside a worker ``progress`` is a harmless no-op, so job
code can be unit-tested by calling its methods directly.  Kept free of heavy imports because
every worker child imports it.
"""

from __future__ import annotations

from collections.abc import Callable

Reporter = Callable[[float, "str | None"], None]

_reporter: Reporter | None = None


def set_reporter(reporter: Reporter | None) -> None:
    global _reporter  # noqa: PLW0603 - one reporter per worker process, by design
    _reporter = reporter


def progress(fraction: float, message: str | None = None) -> None:
    """Report how far the running job has got (``0.0``..``1.0``) and an optional message.

    Cheap to call in a tight loop: the worker forwards at most a few updates a second and
    always the latest one before the result.
    """
    fraction = min(1.0, max(0.0, float(fraction)))
    if message is not None:
        message = str(message)[:500]
    if _reporter is not None:
        _reporter(fraction, message)
