"""``asyncjobs run``: one job in the foreground with no host, like the seeds' run-job.php.

It goes through the same allow-list check and the same worker child as the host does, in a
fresh process, with the class timeout enforced; nothing is stored.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from .. import registry
from ..clock import SystemClock
from ..config import Settings
from ..models import Claimed, Isolation, JSONValue, Outcome
from ..workers.launcher import SubprocessLauncher


async def run_once(settings: Settings, cls: str, method: str, args: Sequence[JSONValue],
                   kwargs: Mapping[str, JSONValue], *, timeout: float | None = None) -> Outcome:
    body: dict[str, JSONValue] = {"class": cls, "method": method, "args": list(args),
                                  "kwargs": dict(kwargs)}
    if timeout is not None:
        body["timeout"] = timeout
    spec = registry.parse_submit(settings, body, SystemClock().now())
    with tempfile.TemporaryDirectory(prefix="asyncjobs-run-") as tmp:
        # One job: a fork server would only add a process start before its fork.
        launcher = SubprocessLauncher(settings, Path(tmp), fork=False)
        claimed = Claimed(id=0, cls=spec.cls, method=spec.method, args=spec.args,
                          kwargs=spec.kwargs, attempt=1, attempts=1, max_attempts=1,
                          timeout=spec.timeout, interruptions=0)
        try:
            return await launcher.run(claimed, Isolation.PROCESS, lambda *_: None)
        finally:
            await launcher.aclose()
