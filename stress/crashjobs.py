"""The crash test's job: its side effect is an fsynced line in a record file."""

from __future__ import annotations

import os
import time
from pathlib import Path


class Record:
    def run(self, key: str, path: str, fail_first: bool = False, sleep: float = 0.0) -> str:
        """Append ``key`` to ``path`` durably; optionally fail the first attempt."""
        if fail_first:
            marker = Path(f"{path}.{key}.failed-once")
            if not marker.exists():
                marker.touch()
                raise ConnectionError(f"{key}: first attempt fails on purpose")
        if sleep:
            time.sleep(sleep)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{key}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return key
