"""The write transactions' steps, as plain functions on a ``sqlite3`` connection.

They run on the store's writer thread, many of them inside one transaction (see
:class:`~asyncjobs.store.sqlite.SqliteStore`), so each is written to be cheap: bulk
``executemany`` where rows are alike, and no per-job query on the hot path (a job that is not
part of a chain never touches the chain columns).
"""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from ..errors import JobNotFound, WrongState
from ..models import TERMINAL, Claimed, JobSpec, OutcomeKind, Priority, Status
from . import CancelResult, Finished, Round, Start, Submitted, check_transition

log = logging.getLogger("asyncjobs.store")

CLAIM_COLUMNS = ("id, class, method, args, kwargs, runs, attempts, max_attempts, timeout, "
                 "interruptions, chain_id, priority")
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


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def claimed_from_row(row: Sequence[Any], *, attempt: int, attempts: int) -> Claimed:
    return Claimed(id=row[0], cls=row[1], method=row[2], args=orjson.loads(row[3]),
                   kwargs=orjson.loads(row[4]), attempt=attempt, attempts=attempts,
                   max_attempts=row[7], timeout=row[8], interruptions=row[9], chain_id=row[10],
                   priority=row[11])


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
        conn.executemany("UPDATE jobs SET reserved_at = ?, cancel_requested = 0 WHERE id = ? "
                         "AND status = 'pending'", [(now, c.id) for c in claimed])
    return claimed


def release_reservations(conn: sqlite3.Connection) -> int:
    """At start-up: every reservation is a dead host's; its jobs are due again.

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


def dispatch_round(conn: sqlite3.Connection, *, host: str,
                   progress: Mapping[int, tuple[float, str | None]],
                   started: Sequence[Start] = (), finished: Sequence[Finished], now: float,
                   limit: int, concurrency: Mapping[str, int],
                   outrank: tuple[int, int] | None = None) -> Round:
    """A dispatcher round: one op, so one transaction and no future per part."""
    if progress:
        set_progress(conn, progress)
    if started:  # before the finishes: an attempt may start and end within one round
        start(conn, started, host)
    advanced = finish(conn, finished) if finished else []
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
            return Round(advanced, [], None, cancel)
        rank, most = outrank
        return Round(advanced, claim(conn, now, most, concurrency, host, below=rank), None,
                     cancel)
    claimed = claim(conn, now, limit, concurrency, host)
    return Round(advanced, claimed, next_due(conn, now), cancel)


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
            f"AND run_at <= ? AND reserved_at IS NULL {exclude} ORDER BY run_at, id LIMIT ?",
            (rank, now, *full, want - len(rows))).fetchall()
    return rows


def finish(conn: sqlite3.Connection, finished: Sequence[Finished]) -> list[int]:
    """Record attempt ends and their transitions; return chain steps made due.

    An attempt given back before it ran (``outcome.started`` false) was no execution: it
    only loses its reservation (see :func:`_give_back`).
    """
    ran = [f for f in finished if f.outcome.started]
    if len(ran) < len(finished):
        _give_back(conn, [f for f in finished if not f.outcome.started])
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
        "WHEN 'keep' THEN interruptions ELSE 0 END, host = NULL, cancel_requested = 0 "
        "WHERE id = ? AND status = 'running'",
        [job_update(f) for f in ran]).rowcount
    if changed == len(ran):
        adjust_counts(conn, _moves(Counter((f.claimed.cls, "running", f.transition.status.value)
                                           for f in ran)))
    else:  # a compare-and-set missed: someone else moved a job; which ones is unknown
        log.error("finish: %d of %d job(s) were no longer running: %s", len(ran) - changed,
                  len(ran), [f.claimed.id for f in ran])
        recount(conn, {f.claimed.cls for f in ran})
    _count_minutes(conn, finished)
    advanced: list[int] = []
    for f in finished:
        if f.claimed.chain_id is None:
            continue
        if f.transition.status is Status.COMPLETED:
            advanced += _advance_chain(conn, f.claimed.id, f.transition.result, f.at)
        elif f.transition.status in TERMINAL:
            break_chain(conn, f.claimed.id, f.transition.status, f.at)
    return advanced


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
        "error_message = ? WHERE id = ? AND status = 'pending'",
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


def job_update(f: Finished) -> tuple[Any, ...]:
    t = f.transition
    interruptions = "add" if f.outcome.kind is OutcomeKind.INTERRUPTED else "reset"
    return (t.status.value, t.run_at, f.at if t.status in TERMINAL else None,
            dumps(t.result) if t.status is Status.COMPLETED else None,
            t.error.type if t.error else None, t.error.message if t.error else None,
            0 if t.counts else 1, interruptions, f.claimed.id)


def _chain_position(conn: sqlite3.Connection, job_id: int) -> tuple[int, int] | None:
    row = conn.execute("SELECT chain_id, chain_pos FROM jobs WHERE id = ? AND chain_id IS NOT "
                       "NULL", (job_id,)).fetchone()
    return (row[0], row[1]) if row else None


def _advance_chain(conn: sqlite3.Connection, job_id: int, result: Any, now: float) -> list[int]:
    """Make the next step due, passing this step's result as ``previous``."""
    position = _chain_position(conn, job_id)
    if position is None:
        return []
    row = conn.execute("SELECT id, kwargs FROM jobs WHERE chain_id = ? AND chain_pos = ? AND "
                       "status = 'pending'", (position[0], position[1] + 1)).fetchone()
    if row is None:
        return []
    kwargs = orjson.loads(row[1])
    kwargs["previous"] = result
    conn.execute("UPDATE jobs SET kwargs = ?, run_at = ? WHERE id = ?", (dumps(kwargs), now,
                                                                        row[0]))
    return [row[0]]


def break_chain(conn: sqlite3.Connection, job_id: int, status: Status, now: float) -> list[int]:
    """Cancel the steps after ``job_id``, naming the step that broke the chain."""
    position = _chain_position(conn, job_id)
    if position is None:
        return []
    rows = conn.execute(
        "UPDATE jobs SET status = 'cancelled', finished_at = ?, error_type = 'ChainBroken', "
        "error_message = ? WHERE chain_id = ? AND chain_pos > ? AND status = 'pending' "
        "RETURNING id",
        (now, f"chain step {position[1] + 1} (job {job_id}) ended {status.value}",
         position[0], position[1])).fetchall()
    return [row[0] for row in rows]


def status_of(conn: sqlite3.Connection, job_id: int) -> Status:
    row = conn.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise JobNotFound(job_id)
    return Status(row[0])


def _reserved(conn: sqlite3.Connection, job_id: int) -> bool:
    row = conn.execute("SELECT reserved_at FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return row is not None and row[0] is not None


def cancel(conn: sqlite3.Connection, job_id: int, now: float, reason: str) -> CancelResult:
    status = status_of(conn, job_id)
    if status in TERMINAL:
        raise WrongState(f"job {job_id} is already {status.value}")
    if status is Status.RUNNING or _reserved(conn, job_id):
        # Held by a worker (running, or reserved and maybe starting this very moment): only
        # its host can stop it there; it records the outcome when the attempt ends.
        conn.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
        return CancelResult(Status.RUNNING, [])
    check_transition(job_id, status, Status.CANCELLED)
    conn.execute("UPDATE jobs SET status = 'cancelled', finished_at = ?, error_type = "
                 "'Cancelled', error_message = ? WHERE id = ? AND status = 'pending'",
                 (now, reason, job_id))
    rest = break_chain(conn, job_id, Status.CANCELLED, now)
    return CancelResult(status, [job_id, *rest])


def retry(conn: sqlite3.Connection, job_id: int, now: float) -> list[int]:
    """Put a failed or cancelled job back with a fresh budget; revive its chain's rest."""
    status = status_of(conn, job_id)
    if status not in (Status.FAILED, Status.CANCELLED):  # running -> pending is the policy's
        raise WrongState(f"job {job_id} is {status.value}; only failed or cancelled jobs can "
                         "be retried")
    # Its unique_key may have gone to a newer job meanwhile; two live jobs may not share one.
    twin = conn.execute("SELECT other.id FROM jobs AS this JOIN jobs AS other "
                        "ON other.unique_key = this.unique_key AND other.id != this.id "
                        "WHERE this.id = ? AND other.status IN ('pending', 'running')",
                        (job_id,)).fetchone()
    if twin is not None:
        raise WrongState(f"job {job_id} cannot be retried while job {twin[0]} with the same "
                         "unique_key is pending or running")
    check_transition(job_id, status, Status.PENDING)
    position = _chain_position(conn, job_id)
    run_at = _retried_step_due(conn, job_id, position, now) if position else now
    conn.execute("UPDATE jobs SET status = 'pending', run_at = ?, attempts = 0, "
                 "interruptions = 0, finished_at = NULL, error_type = NULL, "
                 "error_message = NULL, result = NULL WHERE id = ? AND status = ?",
                 (run_at, job_id, status.value))
    if position is None:
        return [job_id]
    rows = conn.execute(
        "UPDATE jobs SET status = 'pending', run_at = NULL, finished_at = NULL, "
        "error_type = NULL, error_message = NULL, attempts = 0 WHERE chain_id = ? "
        "AND chain_pos > ? AND status = 'cancelled' AND error_type = 'ChainBroken' "
        "RETURNING id", position).fetchall()
    return [job_id, *(row[0] for row in rows)]


def _retried_step_due(conn: sqlite3.Connection, job_id: int, position: tuple[int, int],
                      now: float) -> float | None:
    """When a retried chain step may run: a step runs only after the one before it
    completed, with that result as ``previous``.

    Completed: due now, ``previous`` set afresh.  Pending or running: back to waiting (run_at
    NULL) until it completes.  Failed or cancelled: refused, naming the step to retry.
    """
    chain_id, pos = position
    if pos == 0:
        return now
    row = conn.execute("SELECT id, status, result FROM jobs WHERE chain_id = ? AND "
                       "chain_pos = ?", (chain_id, pos - 1)).fetchone()
    if row is None:
        raise WrongState(f"job {job_id} is step {pos + 1} of chain {chain_id}, and step {pos} "
                         "was pruned: its result, this step's 'previous', is gone")
    before, status, result = row[0], Status(row[1]), row[2]
    if status in (Status.PENDING, Status.RUNNING):
        return None
    if status is not Status.COMPLETED:
        raise WrongState(f"job {job_id} is step {pos + 1} of chain {chain_id}, and step {pos} "
                         f"(job {before}) ended {status.value}: retry job {before}, and the "
                         "chain goes on from there")
    kwargs = orjson.loads(conn.execute("SELECT kwargs FROM jobs WHERE id = ?",
                                       (job_id,)).fetchone()[0])
    kwargs["previous"] = orjson.loads(result) if result is not None else None
    conn.execute("UPDATE jobs SET kwargs = ? WHERE id = ?", (dumps(kwargs), job_id))
    return now


def set_progress(conn: sqlite3.Connection,
                 updates: Mapping[int, tuple[float, str | None]]) -> None:
    conn.executemany("UPDATE jobs SET progress = ?, progress_message = ? WHERE id = ?",
                     [(fraction, message, job_id)
                      for job_id, (fraction, message) in updates.items()])
