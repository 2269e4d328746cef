"""Human output for the CLI: aligned tables, relative times, one job in detail.

Pure functions from the §6 JSON (what the API returns) to text, so the CLI stays thin and
the formatting is testable without a host.  ``--json`` output never comes through here.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping, Sequence

import orjson

from ..models import JSONValue, Status

MAX_CELL = 60


def parse_time(text: JSONValue) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def span(seconds: float) -> str:
    """``0.25s``, ``42s``, ``3m20s``, ``2h05m``, ``3d4h``."""
    seconds = abs(seconds)
    if seconds < 10:
        return f"{seconds:.2g}s" if seconds < 1 else f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600}h"


def ago(text: JSONValue, now: float | None = None) -> str:
    """An ISO time relative to now: ``3s ago``, ``in 5m00s``; ``-`` for none."""
    moment = parse_time(text)
    if moment is None:
        return "-"
    delta = (time.time() if now is None else now) - moment
    if abs(delta) < 0.5:
        return "just now"
    whole = span(round(delta) if abs(delta) >= 10 else delta)
    return f"{whole} ago" if delta > 0 else f"in {whole}"


def duration(start: JSONValue, end: JSONValue) -> str:
    a, b = parse_time(start), parse_time(end)
    return span(b - a) if a is not None and b is not None else "-"


def compact(value: JSONValue, width: int = MAX_CELL) -> str:
    """JSON on one line, cut to ``width`` characters."""
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]],
          right: frozenset[int] = frozenset()) -> str:
    """Columns padded to their widest cell; the columns in ``right`` right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        out = [str(c).rjust(w) if i in right else str(c).ljust(w)
               for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(out).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


def progress_text(progress: JSONValue) -> str:
    if not isinstance(progress, Mapping):
        return "-"
    fraction = float(progress.get("fraction") or 0.0)
    filled = max(0, min(20, round(fraction * 20)))
    message = progress.get("message") or ""
    return f"[{'#' * filled}{'.' * (20 - filled)}] {fraction:.0%} {message}".rstrip()


def error_text(error: JSONValue) -> str:
    if not isinstance(error, Mapping):
        return "-"
    return f"{error.get('type')}: {error.get('message')}"


def job_rows(jobs: Sequence[Mapping[str, JSONValue]], now: float | None = None) -> str:
    """The ``list`` table: one line per job."""
    headers = ["ID", "STATUS", "JOB", "PRIORITY", "ATTEMPTS", "CREATED", "DETAIL"]
    rows = []
    for job in jobs:
        if job.get("error"):
            detail = error_text(job["error"])
        elif job.get("status") == "running" and job.get("progress"):
            detail = progress_text(job["progress"])
        elif job.get("status") == "pending" and job.get("attempts"):
            detail = f"retry {ago(job.get('run_at'), now)}"
        elif job.get("status") == "pending" and (parse_time(job.get("run_at")) or 0) > (
                now or time.time()):
            detail = f"runs {ago(job.get('run_at'), now)}"
        elif job.get("status") == "completed":
            detail = "-> " + compact(job.get("result"), 40)
        else:
            detail = ""
        rows.append([str(job.get("id")), str(job.get("status")),
                     f"{job.get('class')}.{job.get('method')}", str(job.get("priority")),
                     f"{job.get('attempts')}/{job.get('max_attempts')}",
                     ago(job.get("created_at"), now), compact(detail, MAX_CELL)])
    return table(headers, rows, right=frozenset({0, 4}))


def _strays(attempt: Mapping[str, JSONValue]) -> str:
    """A job that left processes running should be visible: how many were killed."""
    n = attempt.get("strays")
    return f"[{n} stray process{'es' if n != 1 else ''} killed] " \
        if isinstance(n, int) and n > 0 else ""


def job_detail(job: Mapping[str, JSONValue], now: float | None = None) -> str:
    """The ``status`` view: every field, the progress, the last error, the attempts."""
    fields = [
        ("status", str(job.get("status"))),
        ("priority", str(job.get("priority"))),
        ("attempts", f"{job.get('attempts')} of {job.get('max_attempts')}"),
        ("args", compact(job.get("args"), 200)),
        ("kwargs", compact(job.get("kwargs"), 200)),
        ("timeout", f"{job.get('timeout')}s"),
        ("created", f"{job.get('created_at')}  ({ago(job.get('created_at'), now)})"),
        ("run at", f"{job.get('run_at')}  ({ago(job.get('run_at'), now)})"),
        ("started", f"{job.get('started_at') or '-'}  ({ago(job.get('started_at'), now)})"),
        ("finished", f"{job.get('finished_at') or '-'}  ({ago(job.get('finished_at'), now)})"),
        ("progress", progress_text(job.get("progress"))),
        ("result", compact(job.get("result"), 200)),
        ("error", error_text(job.get("error"))),
    ]
    if job.get("chain_id") is not None:
        fields.append(("chain", str(job.get("chain_id"))))
    if job.get("unique_key") is not None:
        fields.append(("unique key", str(job.get("unique_key"))))
    lines = [f"job {job.get('id')}  {job.get('class')}.{job.get('method')}"]
    lines += [f"  {name:<10}  {value}" for name, value in fields]
    history = job.get("attempt_history") or []
    if history:
        rows = [[str(a.get("number")), str(a.get("outcome")), ago(a.get("started_at"), now),
                 duration(a.get("started_at"), a.get("finished_at")),
                 "-" if a.get("exit_code") is None else str(a.get("exit_code")),
                 compact(_strays(a) + (error_text(a.get("error")) if a.get("error") else ""),
                         MAX_CELL)]
                for a in history]
        lines += ["", "attempts:", _indent(table(["#", "OUTCOME", "STARTED", "TOOK", "EXIT",
                                                  "ERROR"], rows, right=frozenset({0, 3})))]
        last = history[-1]
        if isinstance(last.get("error"), Mapping) and last["error"].get("traceback"):
            lines += ["", "last traceback:", _indent(str(last["error"]["traceback"]).rstrip())]
        if last.get("output"):
            lines += ["", "last output:", _indent(str(last["output"]).rstrip())]
    return "\n".join(lines)


def chain_detail(steps: Sequence[Mapping[str, JSONValue]], decided: Mapping[str, JSONValue],
                 now: float | None = None) -> str:
    """``submit --then ... --wait``: every step on a line (the ``list --chain`` table, in
    step order), then in detail the step that decided the chain's outcome."""
    return "\n".join([f"chain {steps[0].get('chain_id') or steps[0].get('id')}:",
                      _indent(job_rows(steps, now)), "", job_detail(decided, now)])


def stats_text(stats: Mapping[str, JSONValue]) -> str:
    counts = stats.get("counts") or {}
    statuses = [s.value for s in Status]
    lines = [table(statuses, [[str(counts.get(s, 0)) for s in statuses]],
                   right=frozenset(range(5)))]
    classes = stats.get("classes") or {}
    if classes:
        rows = [[name, *(str(c.get(s, 0)) for s in statuses)]
                for name, c in sorted(classes.items())]
        lines += ["", table(["CLASS", *(s.upper() for s in statuses)], rows,
                            right=frozenset(range(1, 6)))]
    throughput = stats.get("throughput") or {}
    workers = stats.get("workers") or {}
    lines += ["", f"finished: {throughput.get('last_minute', 0)} in the last minute, "
                  f"{throughput.get('last_hour', 0)} in the last hour",
              f"workers:  {workers.get('running', 0)} running of {workers.get('max', 0)}",
              f"uptime:   {span(float(stats.get('uptime') or 0))}"]
    return "\n".join(lines)


def schedule_rows(schedules: Sequence[Mapping[str, JSONValue]],
                  now: float | None = None) -> str:
    if not schedules:
        return "(no schedules in the config)"
    rows = [[str(s["name"]), f"{s['class']}.{s['method']}", str(s["expression"]),
             ago(s["next_run"], now), ago(s["last_run"], now) if s["last_run"] else "never",
             str(s["last_job_id"] or "")] for s in schedules]
    return table(["NAME", "JOB", "WHEN", "NEXT RUN", "LAST RUN", "LAST JOB"], rows)


def host_rows(hosts: Sequence[Mapping[str, JSONValue]], now: float | None = None) -> str:
    rows = [[f"{h['id']}{' *' if h['this'] else ''}", str(h["url"] or "-"),
             f"{h['hostname']}:{h['pid']}", ago(h["heartbeat_at"], now),
             str(h.get("state") or ("alive" if h["alive"] else "gone")), str(h["running"]),
             "yes" if h.get("leader") else ""] for h in hosts]
    return table(["HOST (* this one)", "ADDRESS", "MACHINE:PID", "HEARTBEAT", "STATE",
                  "RUNNING", "LEADER"], rows)


def _indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())
