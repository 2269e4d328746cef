"""The SQLite schema as numbered migrations, applied in order and recorded in user_version."""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: jobs, attempts, and the indexes that keep "next due" and "list by status" cheap.
    """
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reuse an id, even after pruning
        class TEXT NOT NULL,
        method TEXT NOT NULL,
        args TEXT NOT NULL,
        kwargs TEXT NOT NULL,
        status TEXT NOT NULL,
        priority INTEGER NOT NULL,
        run_at REAL,                       -- NULL: a chain step waiting for its predecessor
        timeout REAL NOT NULL,
        max_attempts INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,       -- counted against max_attempts
        runs INTEGER NOT NULL DEFAULT 0,           -- every attempt row, interrupted included
        interruptions INTEGER NOT NULL DEFAULT 0,  -- consecutive; poison-pill detection
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        result TEXT,
        error_type TEXT,
        error_message TEXT,
        progress REAL,
        progress_message TEXT,
        chain_id INTEGER,
        chain_pos INTEGER,
        unique_key TEXT
    );
    CREATE INDEX jobs_due ON jobs (priority, run_at, id) WHERE status = 'pending';
    CREATE INDEX jobs_pending_run_at ON jobs (run_at) WHERE status = 'pending';
    CREATE INDEX jobs_status ON jobs (status, id);
    CREATE INDEX jobs_class ON jobs (class, id);
    CREATE INDEX jobs_chain ON jobs (chain_id, chain_pos) WHERE chain_id IS NOT NULL;
    CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
    CREATE UNIQUE INDEX jobs_unique ON jobs (unique_key)
        WHERE unique_key IS NOT NULL AND status IN ('pending', 'running');
    CREATE TABLE attempts (
        job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        number INTEGER NOT NULL,
        outcome TEXT,                      -- NULL while the attempt runs
        started_at REAL NOT NULL,
        finished_at REAL,
        exit_code INTEGER,
        error_type TEXT,
        error_message TEXT,
        traceback TEXT,
        output TEXT,
        PRIMARY KEY (job_id, number)
    ) WITHOUT ROWID;
    CREATE INDEX attempts_finished ON attempts (finished_at) WHERE finished_at IS NOT NULL;
    """,
    # 2: recurring schedules; a firing and its job are written in one transaction.
    """
    CREATE TABLE schedules (
        name TEXT PRIMARY KEY,
        expression TEXT NOT NULL,          -- a changed expression restarts the timing
        next_run REAL NOT NULL,
        last_run REAL,
        last_job_id INTEGER
    );
    """,
    # 3: counters kept by triggers in the same transactions as the changes they count, so
    # /api/stats reads a few rows instead of scanning a million jobs or an hour of attempts.
    """
    CREATE TABLE job_counts (
        class TEXT NOT NULL,
        status TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (class, status)
    ) WITHOUT ROWID;
    INSERT INTO job_counts SELECT class, status, COUNT(*) FROM jobs GROUP BY class, status;
    CREATE TRIGGER job_counts_insert AFTER INSERT ON jobs BEGIN
        INSERT INTO job_counts VALUES (NEW.class, NEW.status, 1)
            ON CONFLICT (class, status) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER job_counts_delete AFTER DELETE ON jobs BEGIN
        UPDATE job_counts SET n = n - 1 WHERE class = OLD.class AND status = OLD.status;
    END;
    CREATE TRIGGER job_counts_update AFTER UPDATE OF status ON jobs
    WHEN OLD.status <> NEW.status BEGIN
        UPDATE job_counts SET n = n - 1 WHERE class = OLD.class AND status = OLD.status;
        INSERT INTO job_counts VALUES (NEW.class, NEW.status, 1)
            ON CONFLICT (class, status) DO UPDATE SET n = n + 1;
    END;
    CREATE TABLE attempt_minutes (
        minute INTEGER PRIMARY KEY,        -- epoch seconds of the minute's start
        completed INTEGER NOT NULL,
        failed INTEGER NOT NULL            -- every other outcome
    );
    INSERT INTO attempt_minutes
        SELECT CAST(finished_at / 60 AS INTEGER) * 60, SUM(outcome = 'completed'),
               SUM(outcome <> 'completed')
        FROM attempts WHERE finished_at IS NOT NULL GROUP BY 1;
    CREATE TRIGGER attempt_minutes_count AFTER UPDATE OF outcome ON attempts
    WHEN OLD.outcome IS NULL AND NEW.outcome IS NOT NULL BEGIN
        INSERT INTO attempt_minutes VALUES (CAST(NEW.finished_at / 60 AS INTEGER) * 60,
                                            NEW.outcome = 'completed', NEW.outcome <> 'completed')
            ON CONFLICT (minute) DO UPDATE SET completed = completed + excluded.completed,
                                               failed = failed + excluded.failed;
    END;
    """,
    # 4: new jobs are counted by the insert itself, one upsert per class for a whole batch
    # (writes.insert_jobs): the per-row trigger was a third of a bulk submit's cost.
    """
    DROP TRIGGER job_counts_insert;
    """,
    # 5: the two hot transitions (pending -> running in a claim, running -> anything in a
    # finish) and the per-minute attempt counts are counted by those writes in bulk
    # (writes.move_counts, writes.count_minutes); the trigger keeps the rare ones.
    """
    DROP TRIGGER attempt_minutes_count;
    DROP TRIGGER job_counts_update;
    CREATE TRIGGER job_counts_update AFTER UPDATE OF status ON jobs
    WHEN OLD.status <> NEW.status AND OLD.status <> 'running' AND NEW.status <> 'running'
    BEGIN
        UPDATE job_counts SET n = n - 1 WHERE class = OLD.class AND status = OLD.status;
        INSERT INTO job_counts VALUES (NEW.class, NEW.status, 1)
            ON CONFLICT (class, status) DO UPDATE SET n = n + 1;
    END;
    """,
    # 6: how many processes an attempt's job left running, killed when it ended (#15).
    """
    ALTER TABLE attempts ADD COLUMN strays INTEGER NOT NULL DEFAULT 0;
    """,
    # 7: hosts as rows (id, address, heartbeat lease); each running job and each attempt
    # names the host that claimed it, so recovery interrupts only a dead host's attempts; a
    # cancel of a running job is a mark its host sees in its next round.
    """
    CREATE TABLE hosts (
        id TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        pid INTEGER NOT NULL,
        hostname TEXT NOT NULL,
        started_at REAL NOT NULL,
        heartbeat_at REAL NOT NULL,
        expires_at REAL NOT NULL           -- heartbeat_at + lease; dead once passed
    );
    ALTER TABLE jobs ADD COLUMN host TEXT;  -- the host holding the running attempt
    ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE attempts ADD COLUMN host TEXT;
    """,
    # 8: a claim *reserves* a job for an attempt (reserved_at: when) and leaves it
    # 'pending': it becomes 'running', with started_at and an attempt row, only when a worker
    # reports that it really starts it (§4).  Other claims skip reserved jobs; an attempt
    # given back before it started clears the mark; at start-up every mark is stale.
    """
    ALTER TABLE jobs ADD COLUMN reserved_at REAL;
    CREATE INDEX jobs_reserved ON jobs (class) WHERE reserved_at IS NOT NULL;
    """,
]
