"""The PostgreSQL store's dispatcher write steps, as coroutines on one asyncpg connection.

They mirror :mod:`.writes` (the SQLite steps) and keep the same semantics; what differs is
what several hosts writing at once needs.  A claim is one statement that locks its rows with
``FOR UPDATE SKIP LOCKED``, so two hosts never claim one job and never wait for each other;
per-class ``concurrency`` is counted there from the ``running`` rows of every host, under a
per-class advisory transaction lock (see :func:`claim`).  Every change of state is a
compare-and-set on the status (and, for an attempt's end, on its number), and a check and
the change that follows it see the same row (``FOR UPDATE``).  Telling other hosts about a
change is the notifier's business (:mod:`.postgres_roles`), not these steps'.  A chain's
steps, cancel and retry are :mod:`.postgres_chains` (as :mod:`.chains` for SQLite).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence, Set
from typing import Any

import asyncpg
import orjson

from ..models import TERMINAL, Claimed, JobSpec, Priority, Status
from . import Finished, Round, Start, Submitted, check_transition
from .postgres_chains import follow_chains, honour_cancel_marks
from .rows import (
    CLAIM_COLUMNS,
    claimed_from_row,
    dumps,
    error_columns,
    job_update,
    split_whole,
)

# A reservation returns the attempt it is for: the next run, one more counted attempt.
_NEXT = {"runs": "jobs.runs + 1", "attempts": "jobs.attempts + 1"}

log = logging.getLogger("asyncjobs.store")

# The rows travel as one JSON array of arrays (see _insert), not as ten arrays: asyncpg
# checks every element of an array parameter against three abstract base classes, which
# cost the host 2-3 ms of CPU for 500 rows; this costs it 0.6-0.8 ms, and the statement
# takes less time in all (measured: 4.8-4.9 vs 5.7-6.7 ms for 500 rows, interleaved).
INSERT_JOBS = (
    "INSERT INTO jobs (class, method, args, kwargs, status, priority, run_at, timeout, "
    "max_attempts, created_at, chain_id, chain_pos, unique_key) "
    "SELECT r->>0, r->>1, r->>2, r->>3, 'pending', (r->>4)::smallint, (r->>5)::float8, "
    "(r->>6)::float8, (r->>7)::int, $2, (r->>8)::bigint, (r->>9)::int, NULL "
    "FROM jsonb_array_elements($1::jsonb) AS r RETURNING id")

def _round_reads(now: str, host: str) -> str:
    """What every round reads besides its claim (``now``, ``host``: their parameters): this
    host's running or reserved jobs with a cancel requested (so a cancel whose signal was
    lost, or that raced the claim, still reaches the job), and the earliest later run_at --
    one probe of the jobs_due index per priority (an index on run_at alone would cost every
    insert and claim one more index write)."""
    ranks = ", ".join(f"({p.rank})" for p in Priority)
    return f"""
SELECT ARRAY(SELECT id FROM jobs WHERE host = {host} AND cancel_requested AND
             (status = 'running' OR reserved_at IS NOT NULL) ORDER BY id) AS cancel,
       (SELECT min((SELECT run_at FROM jobs WHERE status = 'pending' AND priority = p.rank
                    AND run_at > {now} ORDER BY run_at LIMIT 1))
        FROM (VALUES {ranks}) AS p(rank)) AS due
"""  # noqa: S608 - parameter names and constants only, no input


ROUND_READS = _round_reads("$1", "$2")

# One statement: find the best due jobs no other transaction holds and no host has reserved,
# and reserve them for host $3: they stay pending until a worker starts them (:func:`start`);
# and, saving the round a round trip, the round's other reads (:func:`_round_reads`: one row
# of them even when nothing is claimed).
# With caps, $4/$5 are the classes with room left and how much, $6 the full ones (left
# out); with a rank, only better priorities than it.  Each case is a statement of its own,
# with no filter it does not need: a prepared statement is soon planned once for any
# parameters, and filters on unknown values made that plan scan and sort every pending job
# instead of walking the jobs_due index.
def _claim_sql(*, capped: bool, ranked: bool, now: str = "$1", limit: str = "$2",
               host: str = "$3", before: str = "", written: str = "") -> str:
    """The claim (``now``, ``limit``, ``host``: their parameters).  ``before``: CTEs of a
    write that runs in the same statement (see :data:`START_FINISH_CLAIM`), ``written``: a
    read of it added to the reads' row."""
    rank = f"AND priority < ${7 if capped else 4}" if ranked else ""
    if capped:
        where = f"AND class <> ALL ($6::text[]) {rank}"
        chosen = """SELECT id FROM (
        SELECT cand.id, caps.room, row_number() OVER (
            PARTITION BY cand.class ORDER BY cand.priority, cand.run_at, cand.id) AS k
        FROM cand LEFT JOIN unnest($4::text[], $5::int[]) AS caps(cls, room)
            ON caps.cls = cand.class) AS ranked
    WHERE room IS NULL OR k <= room"""
    else:
        where, chosen = rank, "SELECT id FROM cand"
    returning = ", ".join(_NEXT.get(c, f"jobs.{c}") for c in CLAIM_COLUMNS.split(", "))
    return f"""
WITH {before}cand AS (
    SELECT id, class, priority, run_at FROM jobs
    WHERE status = 'pending' AND run_at <= {now} AND reserved_at IS NULL
          AND NOT cancel_requested {where}
    ORDER BY priority, run_at, id
    LIMIT {limit}
    FOR UPDATE SKIP LOCKED
), chosen AS (
    {chosen}
), moved AS (
    UPDATE jobs SET reserved_at = {now}, host = {host}
    WHERE jobs.id = ANY (ARRAY(SELECT id FROM chosen)) AND jobs.status = 'pending'
    RETURNING {returning}, jobs.priority AS sort_priority, jobs.run_at AS sort_run_at
)
SELECT moved.*, reads.* FROM (SELECT * {written}FROM ({_round_reads(now, host)}) AS r)
    AS reads LEFT JOIN moved ON true
ORDER BY sort_priority, sort_run_at, id
"""  # noqa: S608 - column names only, no input


CLAIMS = {(capped, ranked): _claim_sql(capped=capped, ranked=ranked)
          for capped in (False, True) for ranked in (False, True)}

# Reserved attempts a worker began ($5: the host): running from the worker's own start time,
# with their attempt rows, numbered as claimed.
START = """
WITH s AS (
    SELECT * FROM unnest($1::bigint[], $2::int[], $3::int[], $4::float8[]) AS s(id, n, a, at)
), moved AS (
    UPDATE jobs SET status = 'running', runs = s.n, attempts = s.a, started_at = s.at,
        host = $5, reserved_at = NULL
    FROM s WHERE jobs.id = s.id AND jobs.status = 'pending' RETURNING jobs.id
)
INSERT INTO attempts (job_id, number, started_at, host)
SELECT s.id, s.n, s.at, $5 FROM s JOIN moved ON moved.id = s.id
RETURNING job_id
"""

def _start_finish_ctes(host: str) -> str:
    """The CTEs of :data:`START_FINISH` (``host``: its parameter), ending in ``written``: the
    jobs moved, so that :data:`START_FINISH_CLAIM` can run them before its claim."""
    return f"""sf AS (
    SELECT * FROM unnest($1::text[], $2::float8[], $3::float8[], $4::text[], $5::text[],
                         $6::text[], $7::int[], $8::text[], $9::bigint[], $10::int[],
                         $11::int[], $12::float8[], $13::text[], $14::int[], $15::text[],
                         $16::text[], $17::text[], $18::text[], $19::int[], $20::float8[])
        AS u(s, r, fin, res, et, em, da, i, id, n, a, at, o, x, aet, aem, atb, out, st, end_at)
), sf_moved AS (
    UPDATE jobs SET status = u.s, run_at = coalesce(u.r, run_at), finished_at = u.fin,
        result = u.res, error_type = u.et, error_message = u.em, attempts = u.a - u.da,
        runs = u.n, started_at = u.at, host = NULL, reserved_at = NULL,
        cancel_requested = cancel_requested AND u.s = 'pending',
        interruptions = CASE u.i WHEN 'add' THEN interruptions + 1 ELSE 0 END
    FROM sf AS u WHERE jobs.id = u.id AND jobs.status = 'pending' RETURNING jobs.id
), written AS (
    INSERT INTO attempts (job_id, number, started_at, host, outcome, finished_at, exit_code,
                          error_type, error_message, traceback, output, strays)
    SELECT u.id, u.n, u.at, {host}, u.o, u.end_at, u.x, u.aet, u.aem, u.atb, u.out, u.st
    FROM sf AS u JOIN sf_moved ON sf_moved.id = u.id
    RETURNING job_id
)"""  # noqa: S608 - a parameter name only, no input


# Attempts that started and ended within one round ($1-$10 the job's transition as FINISH,
# $11 attempts counted, $12 started_at, $13-$20 the attempt's end; $21: the host): reserved
# straight to the transition, one attempt row holding both times (see rows.split_whole).
START_FINISH = f"WITH {_start_finish_ctes('$21')} SELECT job_id FROM written"  # noqa: S608

# The usual round of a drain in one statement, so one round trip and no BEGIN/COMMIT: the
# attempts that started and ended since the last round (as START_FINISH, $1-$21) and the
# claim ($22: now, $23: limit; $21: the host).  The two touch different rows (the claim takes
# only unreserved jobs, the write only this host's reserved ones) and one statement is
# atomic.  Its reads see the rows as they were before the write (one snapshot): their cancel
# list may name a job the write just finished, which the caller leaves out.
START_FINISH_CLAIM = _claim_sql(
    capped=False, ranked=False, now="$22", limit="$23", host="$21",
    before=_start_finish_ctes("$21") + ", ",
    written=", ARRAY(SELECT job_id FROM written) AS written ")


# A dead host's reservations ($1: alive, $2: now): due again, each leaving an interrupted
# attempt row (it may have started in the moment before the host died) that counts as
# neither an attempt nor an interruption.
RELEASE = """
WITH dead AS (
    SELECT id, host FROM jobs
    WHERE reserved_at IS NOT NULL AND status = 'pending' AND (host IS NULL OR (host <> $1
          AND host NOT IN (SELECT id FROM hosts WHERE expires_at > $2)))
    FOR UPDATE
), released AS (
    UPDATE jobs SET runs = runs + 1, reserved_at = NULL, host = NULL
    FROM dead WHERE jobs.id = dead.id
    RETURNING jobs.id, jobs.runs, dead.host
)
INSERT INTO attempts (job_id, number, started_at, finished_at, outcome, error_type,
                      error_message, host)
SELECT id, runs, $2, $2, 'interrupted', 'Interrupted', 'the host stopped while this was '
       || 'handed to a worker; it may have started', host FROM released
RETURNING job_id
"""


# An attempt's end ($11-$20; its row only if still open: a rescue may have closed it) and
# its job's transition ($1-$10), a compare-and-set on the status and the attempt number.
FINISH = """
WITH ended AS (
    UPDATE attempts SET outcome = a.o, finished_at = a.at, exit_code = a.x, error_type = a.et,
        error_message = a.em, traceback = a.tb, output = a.out, strays = a.st
    FROM unnest($11::bigint[], $12::int[], $13::text[], $14::float8[], $15::int[],
                $16::text[], $17::text[], $18::text[], $19::text[], $20::int[])
        AS a(id, n, o, at, x, et, em, tb, out, st)
    WHERE attempts.job_id = a.id AND attempts.number = a.n AND attempts.outcome IS NULL
)
UPDATE jobs SET status = u.s, run_at = coalesce(u.r, run_at), finished_at = u.fin,
    result = u.res, error_type = u.et, error_message = u.em, attempts = attempts - u.da,
    host = NULL, cancel_requested = jobs.cancel_requested AND u.s = 'pending',
    interruptions = CASE u.i WHEN 'add' THEN interruptions + 1 ELSE 0 END
FROM unnest($1::text[], $2::float8[], $3::float8[], $4::text[], $5::text[], $6::text[],
            $7::int[], $8::text[], $9::bigint[], $10::int[])
    AS u(s, r, fin, res, et, em, da, i, id, n)
WHERE jobs.id = u.id AND jobs.status = 'running' AND jobs.runs = u.n
RETURNING jobs.id
"""


def plain(specs: Sequence[JobSpec]) -> bool:
    """Whether :func:`submit` stores ``specs`` in one INSERT (no unique key, no chain)."""
    return all(s.unique_key is None and not s.then for s in specs)


async def submit(conn: asyncpg.Connection, specs: Sequence[JobSpec],
                 now: float) -> list[Submitted]:
    if plain(specs):
        ids = await _insert(conn, [_job_row(s) for s in specs], now)
        return [Submitted(i, Status.PENDING) for i in ids]
    return [await _submit_one(conn, s, now) for s in specs]


def _job_row(spec: JobSpec) -> tuple[Any, ...]:
    return (spec.cls, spec.method, dumps(list(spec.args)), dumps(dict(spec.kwargs)),
            spec.priority.rank, spec.run_at, spec.timeout, spec.max_attempts, None, None)


async def _insert(conn: asyncpg.Connection, rows: Sequence[tuple[Any, ...]],
                  now: float) -> list[int]:
    """Insert pending jobs; their ids in the rows' order (one statement for the lot).

    Each row's ``args`` and ``kwargs`` are JSON text, kept exactly as they are: inside the
    array they are strings (``->>`` gives the text back), not JSON values that ``jsonb``
    would reformat.  Floats survive the trip exactly (shortest round-trip form).
    """
    records = await conn.fetch(INSERT_JOBS, orjson.dumps(rows).decode(), now)
    # Identity values are drawn in the order the rows are inserted, so sorted ids map to
    # the rows in order, even when another host's insert drew ids in between.
    return sorted(r[0] for r in records)


async def _submit_one(conn: asyncpg.Connection, spec: JobSpec, now: float) -> Submitted:
    if spec.unique_key is not None:
        # Inserted (or not) in one statement: two hosts submitting the same key at once
        # meet in the unique index, and the loser reads the winner's job.
        job_id = await conn.fetchval(
            "INSERT INTO jobs (class, method, args, kwargs, status, priority, run_at, timeout, "
            "max_attempts, created_at, unique_key) VALUES ($1, $2, $3, $4, 'pending', $5, $6, "
            "$7, $8, $9, $10) ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND "
            "status IN ('pending', 'running') DO NOTHING RETURNING id",
            *_job_row(spec)[:8], now, spec.unique_key)
        if job_id is None:
            row = await conn.fetchrow("SELECT id, status FROM jobs WHERE unique_key = $1 AND "
                                      "status IN ('pending', 'running')", spec.unique_key)
            if row is None:  # the holder finished between the two statements: try again
                return await _submit_one(conn, spec, now)
            return Submitted(row[0], Status(row[1]), duplicate=True)
    else:
        (job_id,) = await _insert(conn, [_job_row(spec)], now)
    if spec.then:
        await conn.execute("UPDATE jobs SET chain_id = $1, chain_pos = 0 WHERE id = $1", job_id)
        # Later steps wait with run_at NULL (never due) until their predecessor completes.
        await _insert(conn, [
            (step.cls, step.method, dumps(list(step.args)), dumps(dict(step.kwargs)),
             spec.priority.rank, None, spec.timeout, spec.max_attempts, job_id, pos)
            for pos, step in enumerate(spec.then, start=1)], now)
    return Submitted(job_id, Status.PENDING)


async def claim(conn: asyncpg.Connection, now: float, limit: int,
                concurrency: Mapping[str, int], host: str, *,
                below: int | None = None) -> tuple[list[Claimed], list[int], float | None]:
    """Reserve up to ``limit`` due jobs for ``host``: priority, run_at, id (``below``: only
    of a priority ranked better than that).

    ``concurrency`` caps the running and reserved jobs of a class on all hosts together.
    Counting them inside the claim is not enough under READ COMMITTED: two hosts would count
    the same snapshot and both take the last place.  So a claim first takes a
    transaction-level advisory lock per capped class (in one order, so no deadlock); the
    next host's claim waits for it, and its statement then sees the committed rows.  Claims
    of uncapped classes take no lock at all.

    Returns the jobs reserved, then what :data:`ROUND_READS` read: this host's jobs to stop
    for a cancel, and the next due time.
    """
    room = await _room(conn, concurrency)
    claimed: list[Claimed] = []
    cancel: list[int] = []
    due: float | None = None
    while len(claimed) < limit:
        open_ = {cls: n for cls, n in room.items() if n > 0}
        args: list[Any] = [now, limit - len(claimed), host]
        if room:
            args += [list(open_), list(open_.values()), [c for c, n in room.items() if n <= 0]]
        if below is not None:
            args.append(below)
        rows = await conn.fetch(CLAIMS[bool(room), below is not None], *args)
        cancel, due = list(rows[0]["cancel"]), rows[0]["due"]
        taken = _claimed(rows)
        claimed += taken
        for job in taken:
            if job.cls in room:
                room[job.cls] -= 1
        # A capped class may have crowded out others among the candidates; if one filled
        # up, it is left out of the next pass.  Otherwise fewer rows means nothing is due.
        if not taken or not any(n == 0 for cls, n in room.items() if open_.get(cls)):
            break
    return claimed, cancel, due


def _claimed(rows: Sequence[asyncpg.Record]) -> list[Claimed]:
    """The jobs a claim statement reserved (its reads' row alone, when none)."""
    return [claimed_from_row(row, attempt=row[5], attempts=row[6]) for row in rows
            if row[0] is not None]


async def _room(conn: asyncpg.Connection, concurrency: Mapping[str, int]) -> dict[str, int]:
    """How many more jobs of each capped class may run or be reserved (a reserved one may
    start any moment), counted after taking the classes' advisory locks (a statement of its
    own: its snapshot must start after the wait)."""
    if not concurrency:
        return {}
    classes = sorted(concurrency)
    await conn.execute("SELECT pg_advisory_xact_lock(k) FROM (SELECT hashtext("
                       "'asyncjobs.class:' || current_setting('search_path') || ':' || c) "
                       "AS k FROM unnest($1::text[]) AS c ORDER BY 1) AS keys", classes)
    rows = await conn.fetch(
        "SELECT c, l - (SELECT count(*) FROM jobs WHERE status = 'running' AND class = c) "
        "- (SELECT count(*) FROM jobs WHERE reserved_at IS NOT NULL AND class = c) "
        "FROM unnest($1::text[], $2::int[]) AS u(c, l)",
        classes, [concurrency[c] for c in classes])
    return {row[0]: row[1] for row in rows}


async def set_progress(conn: asyncpg.Connection,
                       updates: Mapping[int, tuple[float, str | None]]) -> None:
    await conn.execute(
        "UPDATE jobs SET progress = u.f, progress_message = u.m FROM unnest($1::bigint[], "
        "$2::float8[], $3::text[]) AS u(id, f, m) WHERE jobs.id = u.id",
        list(updates), [f for f, _ in updates.values()], [m for _, m in updates.values()])


def in_one_statement(*, progress: Mapping[int, tuple[float, str | None]],
                     started: Sequence[Start], finished: Sequence[Finished],
                     concurrency: Mapping[str, int], outrank: tuple[int, int] | None,
                     ) -> list[tuple[Start, Finished]] | None:
    """If a round is the usual one of a drain, which :func:`quick_round` writes in one
    statement, its attempts (each started and ended since the last round, done with its
    job: no chain to follow, no retry that a cancel mark could meet; the claim without caps
    or ranks); None for anything else, which takes :func:`dispatch_round`'s transaction."""
    if progress or concurrency or outrank is not None:
        return None
    rest, whole = split_whole(started, finished)
    if rest or len(whole) < len(finished) or not all(
            f.claimed.chain_id is None and f.transition.status is not Status.PENDING
            for _, f in whole):
        return None
    return whole


async def quick_round(conn: asyncpg.Connection, *, host: str,
                      whole: Sequence[tuple[Start, Finished]], now: float, limit: int) -> Round:
    """A round that :func:`in_one_statement` admits (``whole``: its attempts), outside a
    transaction: one statement is atomic, and BEGIN and COMMIT were half of such a round's
    four round trips."""
    if whole:
        rows = await conn.fetch(START_FINISH_CLAIM, *_start_finish_columns(whole), host, now,
                                limit)
        _moved(whole, set(rows[0]["written"]))
    elif limit > 0:
        rows = await conn.fetch(CLAIMS[False, False], now, limit, host)
    else:
        reads = await conn.fetchrow(ROUND_READS, now, host)
        return Round([], [], None, list(reads["cancel"]))
    due = rows[0]["due"]
    done = {f.claimed.id for _, f in whole}
    return Round([], _claimed(rows), float(due) if due is not None and limit > 0 else None,
                 [job_id for job_id in rows[0]["cancel"] if job_id not in done])


async def dispatch_round(conn: asyncpg.Connection, *, host: str,
                         progress: Mapping[int, tuple[float, str | None]],
                         started: Sequence[Start], finished: Sequence[Finished], now: float,
                         limit: int, concurrency: Mapping[str, int],
                         outrank: tuple[int, int] | None) -> Round:
    if progress:
        await set_progress(conn, progress)
    started, whole = split_whole(started, finished)
    if started:  # before the finishes: an attempt may start and end within one round
        await start(conn, started, host)
    written = await start_and_finish(conn, whole, host) if whole else set()
    advanced, broken = await finish(conn, finished, written) if finished else ([], [])
    # A cancel mark on a job given back or retried above ends it here (claims skip marks).
    again = [f.claimed.id for f in finished if f.transition.status is Status.PENDING]
    cancelled = broken + (await honour_cancel_marks(conn, again, now) if again else [])
    if limit > 0:
        claimed, cancel, due = await claim(conn, now, limit, concurrency, host)
    elif outrank is not None:
        claimed, cancel, due = await claim(conn, now, outrank[1], concurrency, host,
                                           below=outrank[0])
    else:
        claimed = []
        reads = await conn.fetchrow(ROUND_READS, now, host)
        cancel, due = list(reads["cancel"]), reads["due"]
    return Round(advanced, claimed, float(due) if due is not None and limit > 0 else None,
                 cancel, cancelled)


async def start(conn: asyncpg.Connection, started: Sequence[Start], host: str) -> None:
    """Reserved attempts a worker has begun: ``running`` from the worker's own start time."""
    rows = await conn.fetch(START, [s.claimed.id for s in started],
                            [s.claimed.attempt for s in started],
                            [s.claimed.attempts for s in started], [s.at for s in started],
                            host)
    if len(rows) < len(started):
        moved = {r[0] for r in rows}
        log.error("start: %d of %d job(s) were no longer pending: %s",
                  len(started) - len(rows), len(started),
                  [s.claimed.id for s in started if s.claimed.id not in moved])


async def start_and_finish(conn: asyncpg.Connection, whole: Sequence[tuple[Start, Finished]],
                           host: str) -> set[int]:
    """Attempts that started and ended within one round, written once (see
    :data:`START_FINISH`); return the jobs moved."""
    rows = await conn.fetch(START_FINISH, *_start_finish_columns(whole), host)
    return _moved(whole, {r[0] for r in rows})


def _start_finish_columns(whole: Sequence[tuple[Start, Finished]]) -> list[list[Any]]:
    """START_FINISH's $1-$20, each transition checked first."""
    for _, f in whole:
        check_transition(f.claimed.id, Status.RUNNING, f.transition.status)
    return _columns([(*job_update(f), f.claimed.attempt, f.claimed.attempts, s.at,
                      f.outcome.kind.value, f.outcome.exit_code,
                      *error_columns(f.outcome.error), f.outcome.output, f.outcome.strays,
                      f.at) for s, f in whole], 20)


def _moved(whole: Sequence[tuple[Start, Finished]], moved: set[int]) -> set[int]:
    """``moved``, after saying which of ``whole`` were not (someone else moved them)."""
    if len(moved) < len(whole):
        log.error("start and finish: %d of %d job(s) were no longer pending: %s",
                  len(whole) - len(moved), len(whole),
                  [f.claimed.id for _, f in whole if f.claimed.id not in moved])
    return moved


async def release(conn: asyncpg.Connection, now: float, alive: str) -> int:
    """Make the jobs that dead hosts had reserved due again (see :data:`RELEASE`), or
    cancelled if a cancel came for one meanwhile; return how many were released."""
    released = [r[0] for r in await conn.fetch(RELEASE, alive, now)]
    if released:
        await honour_cancel_marks(conn, released, now)
    return len(released)


async def finish(conn: asyncpg.Connection, finished: Sequence[Finished],
                 written: Set[int] = frozenset()) -> tuple[list[int], list[int]]:
    """Record attempt ends and their transitions, in bulk; return the chain steps made due
    and those cancelled.

    The compare-and-set is on the status *and* the attempt number: an attempt another host
    rescued (its host looked dead) and ran again cannot overwrite the newer attempt's end.
    An attempt given back before it ran (``outcome.started`` false) only loses its
    reservation (or, cancelled, ends so).  The jobs in ``written`` were already moved by
    :func:`start_and_finish`: only followed here.
    """
    ran = [f for f in finished if f.outcome.started]
    if len(ran) < len(finished):
        await _give_back(conn, [f for f in finished if not f.outcome.started])
    ran = [f for f in ran if f.claimed.id not in written]
    for f in ran:
        check_transition(f.claimed.id, Status.RUNNING, f.transition.status)
    # One statement for both tables: a round trip per table was a third of a round's time.
    changed = [] if not ran else await conn.fetch(
        FINISH,
        *_columns([(*job_update(f), f.claimed.attempt) for f in ran], 10),
        *_columns([(f.claimed.id, f.claimed.attempt, f.outcome.kind.value, f.at,
                    f.outcome.exit_code, *error_columns(f.outcome.error), f.outcome.output,
                    f.outcome.strays) for f in ran], 10))
    done = {r[0] for r in changed}
    if len(done) < len(ran):  # a compare-and-set missed: someone else moved the job
        log.error("finish: %d of %d job(s) were no longer running as this attempt: %s",
                  len(ran) - len(done), len(ran),
                  [f.claimed.id for f in ran if f.claimed.id not in done])
    done |= written
    return await follow_chains(conn, [f for f in finished
                                       if f.claimed.id in done or not f.outcome.started])


async def _give_back(conn: asyncpg.Connection, returned: Sequence[Finished]) -> None:
    """Attempts that never started: no attempt row, nothing counted, the job keeps its
    ``run_at`` (and so its place in line); only a cancel ends it."""
    ended = [f for f in returned if f.transition.status in TERMINAL]
    await conn.execute(
        "UPDATE jobs SET reserved_at = NULL, host = NULL WHERE id = ANY($1::bigint[]) AND "
        "status = 'pending'", [f.claimed.id for f in returned if f not in ended])
    if ended:
        await conn.execute(
            "UPDATE jobs SET status = u.s, reserved_at = NULL, host = NULL, finished_at = u.at, "
            "error_type = u.et, error_message = u.em, cancel_requested = false "
            "FROM unnest($1::bigint[], $2::text[], $3::float8[], $4::text[], $5::text[]) "
            "AS u(id, s, at, et, em) "
            "WHERE jobs.id = u.id AND jobs.status = 'pending'",
            *_columns([(f.claimed.id, f.transition.status.value, f.at,
                        f.transition.error.type if f.transition.error else None,
                        f.transition.error.message if f.transition.error else None)
                       for f in ended], 5))


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows to the per-column lists ``unnest`` takes (``width`` empty lists for no rows)."""
    return [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]



