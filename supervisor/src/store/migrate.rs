//! The schema, and the migrations that bring an older store forward at open.
//!
//! A store records its schema version in `PRAGMA user_version`. A fresh store gets [`SCHEMA`]
//! at once; an older one runs the [`MIGRATIONS`] after its version, all in one transaction with
//! the version bump, so that a crash (or a second process opening the same store) never sees a
//! half-migrated store. A store newer than this program is refused: guessing at a future schema
//! could corrupt it.
//!
//! Changing the schema: edit [`SCHEMA`] (what a fresh store gets) and append one entry to
//! [`MIGRATIONS`] that turns the previous version into the new one; [`SCHEMA_VERSION`] follows.

use super::{Result, StoreError};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

/// The current schema, for a fresh store.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id            TEXT PRIMARY KEY,
    seq           INTEGER NOT NULL UNIQUE,   -- submission order
    name          TEXT NOT NULL,
    source        TEXT NOT NULL,             -- the job file as given
    spec          TEXT NOT NULL,             -- the validated spec, JSON
    state         TEXT NOT NULL,
    reason        TEXT,                      -- why it ended as it did
    created_ms    INTEGER NOT NULL,
    started_ms    INTEGER,
    ended_ms      INTEGER,
    conductor_pid INTEGER,
    conductor_start INTEGER,                 -- /proc start time, to recognise the pid later
    supervisor_pid  INTEGER,                 -- the daemon or `run` that supervises it
    supervisor_start INTEGER,
    containment   TEXT,                      -- cgroup or session
    cgroup        TEXT,                      -- the job's cgroup, in cgroup mode
    unresponsive_ms INTEGER,                 -- since when the conductor has been silent
    socket        TEXT,
    last_report   INTEGER NOT NULL DEFAULT 0, -- highest report seq applied from this conductor
    conductor_exited INTEGER NOT NULL DEFAULT 1, -- 0 from the spawn until the exit is seen
    last_order    TEXT,                      -- the last operator's order (who, when, why), JSON
    paused_ms     INTEGER                    -- since when the job is frozen, if it is
);
CREATE TABLE IF NOT EXISTS tasks (
    job_id        TEXT NOT NULL REFERENCES jobs(id),
    idx           INTEGER NOT NULL,
    name          TEXT NOT NULL,
    has_revert    INTEGER NOT NULL,
    state         TEXT NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    exec_outcome  TEXT,
    result        TEXT NOT NULL DEFAULT '',
    error         TEXT,
    pid           INTEGER,
    started_ms    INTEGER,
    ended_ms      INTEGER,
    PRIMARY KEY (job_id, idx)
);
CREATE TABLE IF NOT EXISTS transitions (
    id        INTEGER PRIMARY KEY,
    job_id    TEXT NOT NULL,
    task_idx  INTEGER,                       -- NULL: the job itself
    from_state TEXT,
    to_state  TEXT NOT NULL,
    at_ms     INTEGER NOT NULL,
    reason    TEXT,
    by_order  TEXT                           -- the operator's order that caused it, JSON
);
CREATE TABLE IF NOT EXISTS hook_runs (
    job_id    TEXT NOT NULL,
    event     TEXT NOT NULL,                 -- end, revert_skipped
    hook      TEXT NOT NULL,                 -- job or daemon
    started_ms INTEGER NOT NULL,
    PRIMARY KEY (job_id, event, hook)
);
CREATE TABLE IF NOT EXISTS output (
    id        INTEGER PRIMARY KEY,
    job_id    TEXT NOT NULL,
    task_idx  INTEGER NOT NULL,
    phase     TEXT NOT NULL,
    stream    TEXT NOT NULL,
    line      TEXT NOT NULL,
    at_ms     INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS output_by_job ON output(job_id, id);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, seq);
CREATE INDEX IF NOT EXISTS transitions_by_job ON transitions(job_id, id);
";

/// One step forward: the SQL that turns a store of version `from` into version `from + 1`.
pub(super) struct Migration {
    pub from: i64,
    pub sql: &'static str,
}

/// Every migration, oldest first; entry `i` migrates version `i + 1`.
pub(super) const MIGRATIONS: &[Migration] = &[
    // 1 -> 2: whether a conductor's exit was seen. A live job of a schema-1 store that had a
    // conductor may still have it running; every other one is taken as gone (what schema 1
    // assumed).
    Migration {
        from: 1,
        sql: "
ALTER TABLE jobs ADD COLUMN conductor_exited INTEGER NOT NULL DEFAULT 1;
UPDATE jobs SET conductor_exited = 0
 WHERE conductor_pid IS NOT NULL AND state IN ('running', 'cancelling', 'reverting');
",
    },
    // 2 -> 3: who ordered what and why (the job's last order, and the order behind each
    // transition), whether the job is paused, and which alert hooks were started (so that a
    // restarted daemon never runs one twice).
    Migration {
        from: 2,
        sql: "
ALTER TABLE jobs ADD COLUMN last_order TEXT;
ALTER TABLE jobs ADD COLUMN paused_ms INTEGER;
ALTER TABLE transitions ADD COLUMN by_order TEXT;
CREATE TABLE IF NOT EXISTS hook_runs (
    job_id    TEXT NOT NULL,
    event     TEXT NOT NULL,
    hook      TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    PRIMARY KEY (job_id, event, hook)
);
",
    },
];

/// The schema version this program writes (and the newest it reads): one past the last
/// migration's source. (`as`: a const context, and a handful of migrations.)
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64 + 1;

/// Writes [`SCHEMA`] at [`SCHEMA_VERSION`] into an empty database, in one transaction.
pub(super) fn create(conn: &Connection) -> Result<()> {
    conn.execute_batch(&format!(
        "BEGIN; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
    ))?;
    Ok(())
}

/// Brings the store to [`SCHEMA_VERSION`]: creates a fresh one, migrates an older one (one
/// immediate transaction), refuses a newer or unknown one.
pub(super) fn prepare(conn: &mut Connection) -> Result<()> {
    // The common case, a current store, needs no write lock.
    if has_jobs(conn)? && user_version(conn)? == SCHEMA_VERSION {
        return Ok(());
    }
    // Read again under the write lock: another process may have prepared it meanwhile.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version = user_version(&tx)?;
    if !has_jobs(&tx)? {
        tx.execute_batch(SCHEMA)?;
    } else if version > SCHEMA_VERSION {
        return Err(StoreError::SchemaNewer {
            found: version,
            supported: SCHEMA_VERSION,
        });
    } else if version < 1 {
        return Err(StoreError::SchemaUnknown(version));
    } else {
        for migration in MIGRATIONS.iter().filter(|m| m.from >= version) {
            tracing::info!(
                from = migration.from,
                to = migration.from + 1,
                "store: migrating the schema"
            );
            tx.execute_batch(migration.sql)?;
        }
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

pub(super) fn user_version(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("PRAGMA user_version", [], |row| row.get(0))?)
}

fn has_jobs(conn: &Connection) -> Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'jobs'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}
