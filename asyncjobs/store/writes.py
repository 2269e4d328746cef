"""The dispatcher's write steps, as plain functions on a ``sqlite3`` connection.

Submit, claim (a reservation), start, finish, the release of reservations and the round
that runs them together (:func:`dispatch_round`); a chain's steps, cancel and retry are
:mod:`.chains`, the row layout shared with PostgreSQL :mod:`.rows`, and
:mod:`.postgres_writes` is this module's PostgreSQL twin.

They run on the store's writer thread, many of them inside one transaction (see
:class:`~asyncjobs.store.sqlite.SqliteStore`), so each is written to be cheap: bulk
``executemany`` where rows are alike, and no per-job query on the hot path (a job that is not
part of a chain never touches the chain columns).
"""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from collections.abc import Mapping, Sequence, Set
from typing import Any

from ..models import TERMINAL, Claimed, JobSpec, OutcomeKind, Priority, Status
from . import Finished, Round, Start, Submitted, check_transition
from .chains import follow_chains, honour_cancel_marks
from .rows import (
    CLAIM_COLUMNS,
    claimed_from_row,
    dumps,
    error_columns,
    job_update,
    split_whole,
)

log = logging.getLogger("asyncjobs.store")

INSERT_JOB = ("INSERT INTO jobs (class, method, args, kwargs, status, priority, run_at, "
              "timeout, max_attempts, created_at, chain_id, chain_pos, unique_key) "
              "VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?)")


def insert_jobs(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> int:
    """Insert pending jobs (rows for ``INSERT_JOB``) and count them; return the last id.

    Every insert into ``jobs`` goes through here (see :func:`adjust_counts`).
    """
    conn.executemany(INSERT_JOB, rows)
    last = int(conn.execute("SELECT last_insert_rowid()").fetchone()[0])
    adjust_counts(conn, Counter((row[0], "pending") for row in rows))
    return last


def adjust_counts(conn: sqlite3.Connection, deltas: Mapping[tuple[str, str], int]) -> None:
    """Add ``deltas`` to ``job_counts``, one statement for the lot.

    The counts of inserts, claims (pending -> running) and finishes (running -> anything)
    are kept here, in bulk: a trigger firing per row was a third of those writes' cost.
    A trigger still keeps the rare changes (cancel, retry, a broken chain, prune): see
    schema migrations 4 and 5.
    """
    conn.executemany("INSERT INTO job_counts VALUES (?, ?, ?) ON CONFLICT (class, status) "
                     "DO UPDATE SET n = n + excluded.n",
                     [(cls, status, n) for (cls, status), n in deltas.items() if n])


def _moves(moved: Counter[tuple[str, str, str]]) -> Counter[tuple[str, str]]:
    deltas: Counter[tuple[str, str]] = Counter()
    for (cls, old, new), n in moved.items():
        deltas[cls, old] -= n
        deltas[cls, new] += n
    return deltas


def submit(conn: sqlite3.Connection, specs: Sequence[JobSpec], now: float) -> list[Submitted]:
    plain = [s for s in specs if s.unique_key is None and not s.then]
    if len(plain) == len(specs):
        # The common bulk case: one statement for the lot.  Ids come out consecutive
        # because this connection is the only writer (and AUTOINCREMENT never reuses one).
        last = insert_jobs(conn, [_job_row(s, now) for s in specs])
        return [Submitted(last - len(specs) + 1 + i, Status.PENDING) for i in range(len(specs))]
    return [_insert_one(conn, spec, now) for spec in specs]


def _job_row(spec: JobSpec, now: float, chain: tuple[int | None, int | None] = (None, None),
             ) -> tuple[Any, ...]:
    return (spec.cls, spec.method, dumps(list(spec.args)), dumps(dict(spec.kwargs)),
            spec.priority.rank, spec.run_at, spec.timeout, spec.max_attempts, now, chain[0],
            chain[1], spec.unique_key)


def _insert_one(conn: sqlite3.Connection, spec: JobSpec, now: float) -> Submitted:
    if spec.unique_key is not None:
        row = conn.execute("SELECT id, status FROM jobs WHERE unique_key = ? AND status IN "
                           "('pending', 'running')", (spec.unique_key,)).fetchone()
        if row is not None:
            return Submitted(row[0], Status(row[1]), duplicate=True)
    job_id = insert_jobs(conn, [_job_row(spec, now)])
    if spec.then:
        conn.execute("UPDATE jobs SET chain_id = ?, chain_pos = 0 WHERE id = ?",
                     (job_id, job_id))
        # Later steps wait with run_at NULL (never due) until their predecessor completes.
        insert_jobs(conn, [
            (step.cls, step.method, dumps(list(step.args)), dumps(dict(step.kwargs)),
             spec.priority.rank, None, spec.timeout, spec.max_attempts, now, job_id, pos, None)
            for pos, step in enumerate(spec.then, start=1)])
    return Submitted(job_id, Status.PENDING)


def _capacity(conn: sqlite3.Connection, concurrency: Mapping[str, int]) -> dict[str, int]:
    """Room left per capped class: its limit minus its running and reserved jobs in the
    whole store (a reserved job may start any moment: it counts already).

    Running ones are read from ``job_counts``, which every start and finish keeps exact in
    its own transaction; reserved ones from a partial index holding only those few rows.
    """
    if not concurrency:
        return {}
    marks = ",".join("?" * len(concurrency))
    running = dict(conn.execute(
        f"SELECT class, n FROM job_counts WHERE status = 'running' AND class IN ({marks})",  # noqa: S608
        list(concurrency)).fetchall())
    reserved = dict(conn.execute(
        f"SELECT class, COUNT(*) FROM jobs INDEXED BY jobs_reserved WHERE reserved_at IS NOT "  # noqa: S608
        f"NULL AND class IN ({marks}) GROUP BY class", list(concurrency)).fetchall())
    return {cls: limit - running.get(cls, 0) - reserved.get(cls, 0)
            for cls, limit in concurrency.items()}


def claim(conn: sqlite3.Connection, now: float, limit: int, concurrency: Mapping[str, int],
          host: str, *, below: int | None = None) -> list[Claimed]:
    """Reserve up to ``limit`` due jobs for ``host``: priority, then run_at, then id
    (``below``: only of a priority ranked better than that).

    They stay ``pending`` (readers see no difference) until :func:`start`; the mark only
    keeps other claims off them.  A class in ``concurrency`` gets no more running and
    reserved jobs than its limit, across all hosts.
    """
    capacity = _capacity(conn, concurrency)
    claimed: list[Claimed] = []
    while len(claimed) < limit:
        full = [cls for cls, left in capacity.items() if left <= 0]
        want = limit - len(claimed)
        rows = _due(conn, now, want, full, below)
        capped = False
        for row in rows:
            left = capacity.get(row[1])
            if left is not None:
                if left <= 0:
                    capped = True  # this class filled up within this batch: ask again
                    continue
                capacity[row[1]] = left - 1
            claimed.append(claimed_from_row(row, attempt=row[5] + 1, attempts=row[6] + 1))
        if not capped or len(rows) < want:
            break
    if claimed:
        conn.executemany("UPDATE jobs SET reserved_at = ? WHERE id = ? AND status = 'pending'",
                         [(now, c.id) for c in claimed])
    return claimed


def release_reservations(conn: sqlite3.Connection) -> int:
    """At start-up: every reservation is a dead host's; its jobs are due again (or, if a
    cancel came for one meanwhile, cancelled).

    Such an attempt may have started in the moment before the host died (its start is
    recorded by the round after the worker reports it), so each leaves an ``interrupted``
    attempt row that says so: a job that then runs again shows why.  The row counts neither
    as an attempt nor as an interruption (poison-pill detection counts real ones only).
    """
    rows = conn.execute("SELECT id, runs + 1, reserved_at FROM jobs WHERE reserved_at IS NOT "
                        "NULL").fetchall()
    conn.executemany(
        "INSERT INTO attempts (job_id, number, started_at, finished_at, outcome, error_type, "
        "error_message) VALUES (?, ?, ?, ?, 'interrupted', 'Interrupted', ?)",
        [(job_id, number, at, at, "the host stopped while this was handed to a worker; it "
          "may have started") for job_id, number, at in rows])
    conn.executemany("UPDATE jobs SET runs = ?, reserved_at = NULL WHERE id = ?",
                     [(number, job_id) for job_id, number, _ in rows])
    if rows:  # a cancel that came while it was reserved ends it (at the host's last sign)
        honour_cancel_marks(conn, [job_id for job_id, _, _ in rows], max(r[2] for r in rows))
    return len(rows)


def start(conn: sqlite3.Connection, started: Sequence[Start], host: str) -> None:
    """Reserved attempts a worker has begun: ``running`` from the worker's own start time,
    with their attempt rows (numbered as claimed) naming ``host``."""
    changed = conn.executemany(
        "UPDATE jobs SET status = 'running', runs = ?, attempts = ?, started_at = ?, "
        "host = ?, reserved_at = NULL WHERE id = ? AND status = 'pending'",
        [(s.claimed.attempt, s.claimed.attempts, s.at, host, s.claimed.id)
         for s in started]).rowcount
    conn.executemany("INSERT INTO attempts (job_id, number, started_at, host) "
                     "VALUES (?, ?, ?, ?)",
                     [(s.claimed.id, s.claimed.attempt, s.at, host) for s in started])
    if changed == len(started):
        adjust_counts(conn, _moves(Counter((s.claimed.cls, "pending", "running")
                                           for s in started)))
    else:
        log.error("start: %d of %d job(s) were no longer pending: %s", len(started) - changed,
                  len(started), [s.claimed.id for s in started])
        recount(conn, {s.claimed.cls for s in started})


def start_and_finish(conn: sqlite3.Connection, whole: Sequence[tuple[Start, Finished]],
                     host: str) -> None:
    """Attempts that started and ended within one round: reserved (``pending``) straight to
    their transition, one attempt row holding both times; what :func:`start` then
    :func:`finish` would leave, in half the writes."""
    for _, f in whole:
        check_transition(f.claimed.id, Status.RUNNING, f.transition.status)
    conn.executemany(
        "INSERT INTO attempts (job_id, number, started_at, host, outcome, finished_at, "
        "exit_code, error_type, error_message, traceback, output, strays) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(f.claimed.id, f.claimed.attempt, s.at, host, f.outcome.kind.value, f.at,
          f.outcome.exit_code, *error_columns(f.outcome.error), f.outcome.output, f.outcome.strays)
         for s, f in whole])
    changed = conn.executemany(
        "UPDATE jobs SET status = ?, run_at = COALESCE(?, run_at), finished_at = ?, "
        "result = ?, error_type = ?, error_message = ?, attempts = ? - ?, "
        "interruptions = CASE ? WHEN 'add' THEN interruptions + 1 "
        "WHEN 'keep' THEN interruptions ELSE 0 END, runs = ?, started_at = ?, host = NULL, "
        "reserved_at = NULL, cancel_requested = cancel_requested * ? "
        "WHERE id = ? AND status = 'pending'",
        [(*u[:6], f.claimed.attempts, *u[6:8], f.claimed.attempt, s.at, _keeps_mark(f), u[8])
         for s, f in whole for u in (job_update(f),)]).rowcount
    # Counted by the trigger of migration 5 (it counts moves that skip ``running``): only
    # the jobs that ended change status, and a retried one is pending before and after.
    if changed != len(whole):
        log.error("start and finish: %d of %d job(s) were no longer pending: %s",
                  len(whole) - changed, len(whole), [s.claimed.id for s, _ in whole])


def dispatch_round(conn: sqlite3.Connection, *, host: str,
                   progress: Mapping[int, tuple[float, str | None]],
                   started: Sequence[Start] = (), finished: Sequence[Finished], now: float,
                   limit: int, concurrency: Mapping[str, int],
                   outrank: tuple[int, int] | None = None) -> Round:
    """A dispatcher round: one op, so one transaction and no future per part."""
    if progress:
        set_progress(conn, progress)
    started, whole = split_whole(started, finished)
    if started:  # before the finishes: an attempt may start and end within one round
        start(conn, started, host)
    if whole:
        start_and_finish(conn, whole, host)
    advanced, broken = (finish(conn, finished, {f.claimed.id for _, f in whole}) if finished
                        else ([], []))
    # A cancel mark on a job given back or retried above ends it here, before the claim.
    again = [f.claimed.id for f in finished if f.transition.status is Status.PENDING]
    cancelled = broken + (honour_cancel_marks(conn, again, now) if again else [])
    # The running jobs are few (at most the hosts' capacity): a short range of jobs_status.
    cancel = [row[0] for row in conn.execute(
        "SELECT id FROM jobs WHERE status = 'running' AND cancel_requested = 1 AND host = ?",
        (host,))]
    # ... and the reserved ones (SQLite: one host, so every reservation is this host's).
    cancel += [row[0] for row in conn.execute(
        "SELECT id FROM jobs INDEXED BY jobs_reserved WHERE reserved_at IS NOT NULL "
        "AND cancel_requested = 1")]
    if limit <= 0:
        if outrank is None:
            return Round(advanced, [], None, cancel, cancelled)
        rank, most = outrank
        return Round(advanced, claim(conn, now, most, concurrency, host, below=rank), None,
                     cancel, cancelled)
    claimed = claim(conn, now, limit, concurrency, host)
    return Round(advanced, claimed, next_due(conn, now), cancel, cancelled)


def next_due(conn: sqlite3.Connection, after: float) -> float | None:
    """The earliest ``run_at`` of a pending job later than ``after``."""
    # Pinned to the partial run_at index: left to itself SQLite picks jobs_status and scans
    # every pending job (236 ms per call with a million of them).
    row = conn.execute("SELECT run_at FROM jobs INDEXED BY jobs_pending_run_at WHERE "
                       "status = 'pending' AND run_at > ? ORDER BY run_at LIMIT 1",
                       (after,)).fetchone()
    return float(row[0]) if row else None


def _due(conn: sqlite3.Connection, now: float, want: int, full: list[str],
         below: int | None = None) -> list[Any]:
    """Up to ``want`` due jobs, best first, skipping the classes in ``full``.

    One query per priority level: each is then a tight range of the (priority, run_at, id)
    index.  A single ``ORDER BY priority, run_at, id`` query would walk every not-yet-due
    job of a higher priority before reaching the due ones of the next: with a million jobs
    scheduled for later that made a claim take 200 ms instead of one.
    """
    exclude = f"AND class NOT IN ({','.join('?' * len(full))})" if full else ""
    rows: list[Any] = []
    for rank in sorted(p.rank for p in Priority):
        if len(rows) >= want or (below is not None and rank >= below):
            break
        rows += conn.execute(
            f"SELECT {CLAIM_COLUMNS} FROM jobs WHERE status = 'pending' AND priority = ? "  # noqa: S608
            f"AND run_at <= ? AND reserved_at IS NULL AND cancel_requested = 0 {exclude} "
            "ORDER BY run_at, id LIMIT ?",
            (rank, now, *full, want - len(rows))).fetchall()
    return rows


def finish(conn: sqlite3.Connection, finished: Sequence[Finished],
           written: Set[int] = frozenset()) -> tuple[list[int], list[int]]:
    """Record attempt ends and their transitions; return the chain steps made due and those
    cancelled (see :func:`.chains.follow_chains`).

    An attempt given back before it ran (``outcome.started`` false) was no execution: it
    only loses its reservation (see :func:`_give_back`).  The jobs in ``written`` were
    already moved by :func:`start_and_finish`: only counted and followed here.
    """
    ran = [f for f in finished if f.outcome.started]
    if len(ran) < len(finished):
        _give_back(conn, [f for f in finished if not f.outcome.started])
    ran = [f for f in ran if f.claimed.id not in written] if written else ran
    for f in ran:
        check_transition(f.claimed.id, Status.RUNNING, f.transition.status)
    conn.executemany(
        "UPDATE attempts SET outcome = ?, finished_at = ?, exit_code = ?, error_type = ?, "
        "error_message = ?, traceback = ?, output = ?, strays = ? "
        "WHERE job_id = ? AND number = ?",
        [(f.outcome.kind.value, f.at, f.outcome.exit_code,
          f.outcome.error.type if f.outcome.error else None,
          f.outcome.error.message if f.outcome.error else None,
          f.outcome.error.traceback if f.outcome.error else None,
          f.outcome.output, f.outcome.strays, f.claimed.id, f.claimed.attempt)
         for f in ran])
    changed = conn.executemany(
        "UPDATE jobs SET status = ?, run_at = COALESCE(?, run_at), finished_at = ?, "
        "result = ?, error_type = ?, error_message = ?, attempts = attempts - ?, "
        "interruptions = CASE ? WHEN 'add' THEN interruptions + 1 "
        "WHEN 'keep' THEN interruptions ELSE 0 END, host = NULL, "
        "cancel_requested = cancel_requested * ? WHERE id = ? AND status = 'running'",
        [(*u[:-1], _keeps_mark(f), u[-1]) for f in ran for u in (job_update(f),)]).rowcount
    if changed == len(ran):
        adjust_counts(conn, _moves(Counter((f.claimed.cls, "running", f.transition.status.value)
                                           for f in ran)))
    else:  # a compare-and-set missed: someone else moved a job; which ones is unknown
        log.error("finish: %d of %d job(s) were no longer running: %s", len(ran) - changed,
                  len(ran), [f.claimed.id for f in ran])
        recount(conn, {f.claimed.cls for f in ran})
    _count_minutes(conn, finished)
    return follow_chains(conn, finished)


def _keeps_mark(f: Finished) -> int:
    """1 if the job keeps its cancel mark (it is pending again: the round cancels it, see
    :func:`.chains.honour_cancel_marks`), 0 once it is finished (the mark is spent)."""
    return int(f.transition.status is Status.PENDING)


def _give_back(conn: sqlite3.Connection, returned: Sequence[Finished]) -> None:
    """Attempts that never started: no attempt row, nothing counted, the job keeps its
    ``run_at`` (and so its place in line); only a cancel ends it."""
    ended = [f for f in returned if f.transition.status in TERMINAL]
    conn.executemany("UPDATE jobs SET reserved_at = NULL WHERE id = ?",
                     [(f.claimed.id,) for f in returned if f.transition.status not in TERMINAL])
    if not ended:
        return
    # The trigger of migration 5 counts these (pending -> cancelled is not a hot move).
    conn.executemany(
        "UPDATE jobs SET status = ?, reserved_at = NULL, finished_at = ?, error_type = ?, "
        "error_message = ?, cancel_requested = 0 WHERE id = ? AND status = 'pending'",
        [(f.transition.status.value, f.at, f.transition.error.type if f.transition.error
          else None, f.transition.error.message if f.transition.error else None, f.claimed.id)
         for f in ended])


def recount(conn: sqlite3.Connection, classes: set[str]) -> None:
    """Count the jobs of ``classes`` afresh (a scan: only when the bulk counts cannot tell)."""
    for cls in classes:
        conn.execute("DELETE FROM job_counts WHERE class = ?", (cls,))
        conn.execute("INSERT INTO job_counts SELECT class, status, COUNT(*) FROM jobs "
                     "WHERE class = ? GROUP BY status", (cls,))


def _count_minutes(conn: sqlite3.Connection, finished: Sequence[Finished]) -> None:
    """Add the ended attempts to ``attempt_minutes`` (the dashboard's throughput)."""
    per_minute: dict[int, list[int]] = {}
    for f in finished:
        if f.outcome.started:
            counts = per_minute.setdefault(int(f.at // 60) * 60, [0, 0])
            counts[f.outcome.kind is not OutcomeKind.COMPLETED] += 1
    conn.executemany("INSERT INTO attempt_minutes VALUES (?, ?, ?) ON CONFLICT (minute) DO "
                     "UPDATE SET completed = completed + excluded.completed, "
                     "failed = failed + excluded.failed",
                     [(minute, c, f) for minute, (c, f) in per_minute.items()])



def set_progress(conn: sqlite3.Connection,
                 updates: Mapping[int, tuple[float, str | None]]) -> None:
    conn.executemany("UPDATE jobs SET progress = ?, progress_message = ? WHERE id = ?",
                     [(fraction, message, job_id)
                      for job_id, (fraction, message) in updates.items()])
