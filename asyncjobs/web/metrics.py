"""``/metrics`` in the Prometheus text exposition format, rendered from the stats."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_metrics(stats: Mapping[str, Any]) -> str:
    lines = [
        "# HELP asyncjobs_jobs Job records by status.",
        "# TYPE asyncjobs_jobs gauge",
    ]
    lines += [f'asyncjobs_jobs{{status="{s}"}} {n}' for s, n in stats["counts"].items()]
    lines += ["# HELP asyncjobs_class_jobs Job records by class and status.",
              "# TYPE asyncjobs_class_jobs gauge"]
    for cls, counts in sorted(stats["classes"].items()):
        lines += [f'asyncjobs_class_jobs{{class="{_escape(cls)}",status="{s}"}} {n}'
                  for s, n in counts.items()]
    throughput = stats["throughput"]
    lines += [
        "# HELP asyncjobs_attempts_finished_last_minute Attempts that ended in the last minute.",
        "# TYPE asyncjobs_attempts_finished_last_minute gauge",
        f"asyncjobs_attempts_finished_last_minute {throughput['last_minute']}",
        "# HELP asyncjobs_attempts_finished_last_hour Attempts that ended in the last hour.",
        "# TYPE asyncjobs_attempts_finished_last_hour gauge",
        f"asyncjobs_attempts_finished_last_hour {throughput['last_hour']}",
        "# HELP asyncjobs_workers_running Attempts running now.",
        "# TYPE asyncjobs_workers_running gauge",
        f"asyncjobs_workers_running {stats['workers']['running']}",
        "# HELP asyncjobs_workers_max Configured maximum of concurrent attempts.",
        "# TYPE asyncjobs_workers_max gauge",
        f"asyncjobs_workers_max {stats['workers']['max']}",
        "# HELP asyncjobs_uptime_seconds Seconds since the host started.",
        "# TYPE asyncjobs_uptime_seconds gauge",
        f"asyncjobs_uptime_seconds {stats['uptime']}",
    ]
    return "\n".join(lines) + "\n"
