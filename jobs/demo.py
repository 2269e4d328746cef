"""Demo jobs that show what the engine does with retries, progress, timeouts and crashes."""

from __future__ import annotations

import os
import time
from pathlib import Path

from asyncjobs import progress


class FlakyJob:
    def run(self, key: str = "demo", failures: int = 2) -> dict[str, object]:
        """Fails ``failures`` times with ConnectionError, then succeeds (state in a file)."""
        state = Path(os.environ.get("TMPDIR", "/tmp")) / f"asyncjobs-flaky-{key}"
        count = int(state.read_text()) if state.exists() else 0
        if count < failures:
            state.write_text(str(count + 1))
            raise ConnectionError(f"flaky failure {count + 1} of {failures}")
        state.unlink(missing_ok=True)
        return {"succeeded_after": count}


class SlowJob:
    def run(self, seconds: float = 5.0, steps: int = 10) -> dict[str, object]:
        """Sleeps in ``steps`` slices and reports progress after each."""
        for i in range(steps):
            time.sleep(seconds / steps)
            progress((i + 1) / steps, f"step {i + 1} of {steps}")
        return {"slept": seconds}


class StuckJob:
    def run(self, seconds: float = 3600.0) -> None:
        """Sleeps far longer than its class timeout allows: the host kills it."""
        time.sleep(seconds)


class CrashingJob:
    def run(self, code: int = 3) -> None:
        """Kills its own worker process, which the host records as ``crashed``."""
        print("about to crash the worker", flush=True)
        os._exit(code)
