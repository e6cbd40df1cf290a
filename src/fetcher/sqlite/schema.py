"""The database schema, its migrations, and how every connection is opened.

Public (documented in the README, kept stable): the views `host_stats`, `host_stats_minutely`,
`queue`, `robots`, and the tables `jobs`, `results`, `host_minutes`. The rest is internal.
`PRAGMA user_version` is the schema version.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

__all__ = ["SCHEMA_VERSION", "connect_pragmas", "migrate", "prepare_path"]

BUSY_TIMEOUT_MS = 10_000

_MIGRATIONS: list[str] = [
    # 1: the queue, results, per-host counters and their per-minute series
    """
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        url TEXT NOT NULL,
        host TEXT NOT NULL,
        state TEXT NOT NULL
            CHECK (state IN ('queued', 'retrying', 'running', 'done', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL,
        lease_owner TEXT,
        lease_until REAL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX jobs_claim ON jobs (state, host, id);
    CREATE INDEX jobs_due ON jobs (next_attempt_at) WHERE state = 'retrying';
    CREATE INDEX jobs_lease ON jobs (lease_owner, lease_until) WHERE state = 'running';
    CREATE INDEX jobs_finished ON jobs (updated_at) WHERE state IN ('done', 'failed');
    CREATE UNIQUE INDEX jobs_active_url ON jobs (url)
        WHERE state IN ('queued', 'retrying', 'running');

    -- Jobs per state, kept by triggers on state changes and deletes; inserts are counted by
    -- `fetcher submit` in their own transaction (a trigger per inserted row was dearer:
    -- BENCHMARKS.md, "insert trigger").
    CREATE TABLE job_counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO job_counts VALUES
        ('queued', 0), ('retrying', 0), ('running', 0), ('done', 0), ('failed', 0);
    CREATE TRIGGER jobs_count_update AFTER UPDATE OF state ON jobs
        WHEN OLD.state <> NEW.state BEGIN
        UPDATE job_counts SET n = n - 1 WHERE state = OLD.state;
        UPDATE job_counts SET n = n + 1 WHERE state = NEW.state;
    END;
    CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs BEGIN
        UPDATE job_counts SET n = n - 1 WHERE state = OLD.state;
    END;

    CREATE TABLE results (
        job_id INTEGER PRIMARY KEY,
        url TEXT NOT NULL,
        host TEXT NOT NULL,
        final_url TEXT,
        state TEXT NOT NULL,
        status INTEGER,
        bytes INTEGER NOT NULL,
        error TEXT,
        attempts INTEGER NOT NULL,
        latency_ms REAL,
        body_sha256 TEXT,
        body_path TEXT,
        finished_at REAL NOT NULL
    );
    CREATE INDEX results_finished ON results (finished_at);
    CREATE INDEX results_host ON results (host, finished_at);
    CREATE INDEX results_body ON results (body_sha256) WHERE body_sha256 IS NOT NULL;

    CREATE TABLE host_counters (
        host TEXT PRIMARY KEY,
        requests INTEGER NOT NULL,
        status_2xx INTEGER NOT NULL,
        status_3xx INTEGER NOT NULL,
        status_4xx INTEGER NOT NULL,
        status_5xx INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        latency_sum_ms REAL NOT NULL,
        latency_max_ms REAL NOT NULL,
        last_status INTEGER,
        last_request_at REAL
    ) WITHOUT ROWID;

    CREATE TABLE host_minutes (
        host TEXT NOT NULL,
        minute INTEGER NOT NULL,
        requests INTEGER NOT NULL,
        status_2xx INTEGER NOT NULL,
        status_3xx INTEGER NOT NULL,
        status_4xx INTEGER NOT NULL,
        status_5xx INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        latency_sum_ms REAL NOT NULL,
        latency_max_ms REAL NOT NULL,
        PRIMARY KEY (host, minute)
    ) WITHOUT ROWID;
    CREATE INDEX host_minutes_minute ON host_minutes (minute);

    CREATE TABLE daemons (
        id TEXT PRIMARY KEY,
        pid INTEGER NOT NULL,
        hostname TEXT NOT NULL,
        started_at REAL NOT NULL,
        heartbeat_at REAL NOT NULL
    );

    CREATE VIEW host_stats AS
    SELECT host, requests, status_2xx, status_3xx, status_4xx, status_5xx, errors, bytes,
           round(latency_sum_ms / NULLIF(requests - errors, 0), 1) AS latency_avg_ms,
           round(latency_max_ms, 1) AS latency_max_ms,
           last_status,
           strftime('%Y-%m-%dT%H:%M:%fZ', last_request_at, 'unixepoch') AS last_request_at
    FROM host_counters;

    CREATE VIEW host_stats_minutely AS
    SELECT host, strftime('%Y-%m-%dT%H:%M:00Z', minute * 60, 'unixepoch') AS minute,
           requests, status_2xx, status_3xx, status_4xx, status_5xx, errors, bytes,
           round(latency_sum_ms / NULLIF(requests - errors, 0), 1) AS latency_avg_ms,
           round(latency_max_ms, 1) AS latency_max_ms
    FROM host_minutes;

    CREATE VIEW queue AS SELECT state, n AS jobs FROM job_counts;
    """,
    # 2: the claim index holds queued jobs only, so a claim or an outcome no longer moves
    # entries within it; jobs_finished had no reader
    """
    DROP INDEX jobs_claim;
    DROP INDEX jobs_finished;
    CREATE INDEX jobs_queued ON jobs (host, id) WHERE state = 'queued';
    """,
    # 3: a host's Retry-After or 429 pause outlives a restart (unix time it ends)
    """
    CREATE TABLE host_pauses (host TEXT PRIMARY KEY, until REAL NOT NULL) WITHOUT ROWID;
    """,
    # 4: the site's own rules: robots.txt verdicts per origin, jobs they refused per host, and
    # each URL's validators for a conditional GET
    """
    CREATE TABLE robots_txt (
        origin TEXT PRIMARY KEY,
        fetched_at REAL NOT NULL,
        status INTEGER,
        crawl_delay REAL,
        size INTEGER NOT NULL,
        body TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE VIEW robots AS
    SELECT origin, strftime('%Y-%m-%dT%H:%M:%fZ', fetched_at, 'unixepoch') AS fetched_at,
           status, crawl_delay, size
    FROM robots_txt;

    ALTER TABLE host_counters ADD COLUMN robots_disallowed INTEGER NOT NULL DEFAULT 0;
    DROP VIEW host_stats;
    CREATE VIEW host_stats AS
    SELECT host, requests, status_2xx, status_3xx, status_4xx, status_5xx, errors, bytes,
           round(latency_sum_ms / NULLIF(requests - errors, 0), 1) AS latency_avg_ms,
           round(latency_max_ms, 1) AS latency_max_ms,
           last_status,
           strftime('%Y-%m-%dT%H:%M:%fZ', last_request_at, 'unixepoch') AS last_request_at,
           robots_disallowed
    FROM host_counters;

    CREATE TABLE validators (
        url TEXT PRIMARY KEY,
        etag TEXT,
        last_modified TEXT,
        body_sha256 TEXT,
        body_path TEXT
    ) WITHOUT ROWID;
    """,
    # 5: jobs are requests: a method, a body's sha256 (with the URL, the fingerprint of the
    # duplicate rule), a priority, a schedule, per-job limits, metadata, and the new final
    # state `cancelled`. SQLite cannot change a CHECK in place: the table is built again,
    # every row kept.
    """
    CREATE TABLE jobs_v5 (
        id INTEGER PRIMARY KEY,
        url TEXT NOT NULL,
        host TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'queued' CHECK (state IN
            ('queued', 'retrying', 'running', 'done', 'failed', 'cancelled')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL,
        lease_owner TEXT,
        lease_until REAL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        method TEXT NOT NULL DEFAULT 'GET',
        body_sha256 TEXT NOT NULL DEFAULT '',
        priority INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER,
        timeout_s REAL,
        retry INTEGER NOT NULL DEFAULT 0,
        metadata TEXT,
        cancel INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO jobs_v5 (id, url, host, state, attempts, next_attempt_at, lease_owner,
                         lease_until, created_at, updated_at)
        SELECT id, url, host, state, attempts, next_attempt_at, lease_owner, lease_until,
               created_at, updated_at FROM jobs;
    DROP TABLE jobs;
    ALTER TABLE jobs_v5 RENAME TO jobs;
    CREATE INDEX jobs_queued ON jobs (host, priority DESC, id) WHERE state = 'queued';
    CREATE INDEX jobs_due ON jobs (next_attempt_at) WHERE state = 'retrying';
    CREATE INDEX jobs_lease ON jobs (lease_owner, lease_until) WHERE state = 'running';
    CREATE UNIQUE INDEX jobs_active_request ON jobs (url, method, body_sha256)
        WHERE state IN ('queued', 'retrying', 'running');
    CREATE TRIGGER jobs_count_update AFTER UPDATE OF state ON jobs
        WHEN OLD.state <> NEW.state BEGIN
        UPDATE job_counts SET n = n - 1 WHERE state = OLD.state;
        UPDATE job_counts SET n = n + 1 WHERE state = NEW.state;
    END;
    CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs BEGIN
        UPDATE job_counts SET n = n - 1 WHERE state = OLD.state;
    END;
    INSERT INTO job_counts VALUES ('cancelled', 0);

    -- what only the sender reads: headers (secrets among them) and bodies
    CREATE TABLE job_requests (
        job_id INTEGER PRIMARY KEY,
        headers TEXT NOT NULL,
        body BLOB
    );
    ALTER TABLE results ADD COLUMN method TEXT NOT NULL DEFAULT 'GET';
    """,
    # 6: a service other programs use: results in commit order (`seq`, the feed's cursor), one
    # a run of a job; the response's Content-Type; the webhook outbox, written with the result
    # it tells of; the URLs that answered 410; the API's Idempotency-Key answers
    """
    ALTER TABLE jobs ADD COLUMN webhook TEXT;
    ALTER TABLE jobs ADD COLUMN run INTEGER NOT NULL DEFAULT 1;
    CREATE TABLE results_v6 (
        job_id INTEGER NOT NULL,
        run INTEGER NOT NULL DEFAULT 1,
        seq INTEGER,  -- commit order, the feed's cursor: set as the transaction ends
        url TEXT NOT NULL,
        method TEXT NOT NULL DEFAULT 'GET',
        host TEXT NOT NULL,
        final_url TEXT,
        state TEXT NOT NULL,
        status INTEGER,
        bytes INTEGER NOT NULL,
        error TEXT,
        attempts INTEGER NOT NULL,
        latency_ms REAL,
        body_sha256 TEXT,
        body_path TEXT,
        content_type TEXT,
        finished_at REAL NOT NULL,
        PRIMARY KEY (job_id, run)
    ) WITHOUT ROWID;
    INSERT INTO results_v6 (job_id, run, seq, url, method, host, final_url, state, status, bytes,
                            error, attempts, latency_ms, body_sha256, body_path, finished_at)
        SELECT job_id, 1, row_number() OVER (ORDER BY finished_at, job_id), url, method, host,
               final_url, state, status, bytes, error, attempts, latency_ms, body_sha256,
               body_path, finished_at FROM results;
    DROP TABLE results;
    ALTER TABLE results_v6 RENAME TO results;
    CREATE UNIQUE INDEX results_seq ON results (seq);
    CREATE INDEX results_finished ON results (finished_at);
    CREATE INDEX results_host ON results (host, finished_at);
    CREATE INDEX results_body ON results (body_sha256) WHERE body_sha256 IS NOT NULL;

    CREATE TABLE webhooks (
        id INTEGER PRIMARY KEY,
        event_id TEXT NOT NULL UNIQUE,
        job_id INTEGER NOT NULL,
        run INTEGER NOT NULL,
        url TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending'
            CHECK (state IN ('pending', 'delivered', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        created_at REAL NOT NULL,
        lease_owner TEXT,
        lease_until REAL,
        last_status INTEGER,
        last_error TEXT,
        ended_at REAL
    );
    CREATE INDEX webhooks_due ON webhooks (next_attempt_at) WHERE state = 'pending';
    CREATE TABLE webhook_gone (url TEXT PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID;
    CREATE TABLE idempotency (
        key TEXT PRIMARY KEY,
        request_sha256 TEXT NOT NULL,
        answer TEXT NOT NULL,
        created_at REAL NOT NULL
    ) WITHOUT ROWID;
    """,
    # 7: recurring jobs (the interval now, its bounds when adaptive, the last run's body digest
    # for `changed`), the webhook only for changes; each run's `changed`
    """
    ALTER TABLE jobs ADD COLUMN every_s REAL;
    ALTER TABLE jobs ADD COLUMN adaptive INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN min_every_s REAL;
    ALTER TABLE jobs ADD COLUMN max_every_s REAL;
    ALTER TABLE jobs ADD COLUMN notify_changed INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN last_sha256 TEXT;
    ALTER TABLE results ADD COLUMN changed INTEGER;
    UPDATE results SET changed = 1 WHERE state = 'done' AND status IS NOT 304;
    UPDATE results SET changed = 0 WHERE state = 'done' AND status = 304;
    CREATE INDEX jobs_recurring ON jobs (state, next_attempt_at) WHERE every_s IS NOT NULL;
    """,
    # 8: only results whose body is a file of the layout before WARC are looked up by digest
    # (retention, for the files no result names any more): an index of every result's random
    # digest cost an insert 20 µs of CPU at a million results (BENCHMARKS.md, "digest index")
    """
    DROP INDEX results_body;
    CREATE INDEX results_legacy_body ON results (body_sha256) WHERE instr(body_path, '#') = 0;
    """,
]

SCHEMA_VERSION = len(_MIGRATIONS)


def prepare_path(path: Path) -> None:
    """Create the database's directory, and the file readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)


def connect_pragmas(cache_mib: int = 8, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> str:
    """Every connection: WAL (readers never block the writer), a busy timeout, and
    synchronous=NORMAL (in WAL a commit survives a crash of the process; power loss may lose
    the last commits, never corrupt), and a page cache of `cache_mib`. The daemon keeps the
    default 8 MiB: its reads of a big queue come from the OS's cache as fast, with less
    memory (BENCHMARKS.md, "page cache"); a bulk submit wants the url index in its own cache."""
    return (
        "PRAGMA page_size = 8192;"  # only as the file is created; BENCHMARKS.md, "page size"
        f"PRAGMA busy_timeout = {busy_timeout_ms};"
        "PRAGMA journal_mode = WAL;"
        "PRAGMA synchronous = NORMAL;"
        f"PRAGMA cache_size = -{cache_mib * 1024};"
        "PRAGMA foreign_keys = ON;"
    )


def migrate(connection: sqlite3.Connection) -> int:
    """Bring the schema to SCHEMA_VERSION; returns the version found before."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        found = int(connection.execute("PRAGMA user_version").fetchone()[0])
        if found > SCHEMA_VERSION:
            raise RuntimeError(
                f"database schema version {found} is newer than this fetcher ({SCHEMA_VERSION})"
            )
        for version in range(found, SCHEMA_VERSION):
            for statement in _split(_MIGRATIONS[version]):
                connection.execute(statement)
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    return found


def _split(script: str) -> list[str]:
    """Statements of a migration (executescript would commit our transaction)."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return [s for s in statements if s]
