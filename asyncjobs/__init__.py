"""asyncjobs: background jobs with no broker — persisted, isolated, timed out, retried.

Job code imports only the light names (``progress``, ``Retry``, ``Fail``), which worker
children load on every start; the client and the host are imported lazily on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import AsyncJobsError, Fail, Retry
from .workers.context import progress

if TYPE_CHECKING:
    from .client.api_client import AsyncJobsClient, submit_job, submit_job_sync
    from .config import Settings, load_settings
    from .engine.host import Host

__all__ = [
    "AsyncJobsClient",
    "AsyncJobsError",
    "Fail",
    "Host",
    "Retry",
    "Settings",
    "load_settings",
    "progress",
    "submit_job",
    "submit_job_sync",
]

_LAZY = {
    "AsyncJobsClient": "client.api_client",
    "submit_job": "client.api_client",
    "submit_job_sync": "client.api_client",
    "Settings": "config",
    "load_settings": "config",
    "Host": "engine.host",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'asyncjobs' has no attribute {name!r}")
    import importlib  # noqa: PLC0415

    return getattr(importlib.import_module(f".{module}", __name__), name)
