//! The board's schema: created or migrated forward by whichever daemon comes first, in one
//! transaction under a transaction-scoped advisory lock, so daemons starting together never
//! race on DDL and a failed migration leaves the old schema whole.
//!
//! `board_schema` holds one row: the version, and (from version 7) `readable_from`, the oldest
//! version whose daemons still run correctly on this layout. `MIGRATIONS[i]` takes version `i`
//! to `i + 1`; a step that keeps older daemons working (`Migration::keeps_older`) only adds
//! what they never read or write (a request kind they never write, a column they never name).
//!
//! - A board older than this build is migrated at once when every step from its version keeps
//!   older daemons working: the daemons still on the old build go on under the new layout (a
//!   rolling upgrade, one host at a time). When a step does not, it is migrated only when no
//!   daemon lives on it (none whose lease is current and that did not stop): those run the old
//!   layout, and a migration under them would break their writes; stop them all, then start
//!   the new build.
//! - A board newer than this build is joined without migrating when its `readable_from` is at
//!   most this build's version (every newer step kept it working), and refused otherwise (a
//!   daemon must not write a layout it does not know). A build older than version 7 does not
//!   read `readable_from`: it refuses any newer board.

use super::BoardError;
use tokio_postgres::Client;

/// The hosts whose lease is current by the database's clock and that did not stop, as `NAME
/// (supervisor VERSION, renewed Nms ago)`: the daemons a migration would break (they run the
/// schema as it is).
async fn live_hosts(
    tx: &tokio_postgres::Transaction<'_>,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = tx
        .query(
            "SELECT name, version, (extract(epoch FROM now() - renewed_at) * 1000)::bigint
             FROM hosts
             WHERE stopped_at IS NULL AND now() - renewed_at < lease_ms * interval '1 millisecond'
             ORDER BY name",
            &[],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let (name, version, age_ms): (String, String, i64) =
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            Ok(format!(
                "{name} (supervisor {version}, renewed {age_ms}ms ago)"
            ))
        })
        .collect()
}

/// The advisory lock key under which the schema changes ("sv-board" in ASCII).
const SCHEMA_LOCK: i64 = 0x7376_2d62_6f61_7264;

/// One step of the schema, from the version before it to the next.
struct Migration {
    /// The statements, run in the migration's transaction.
    sql: &'static str,
    /// Daemons of the version before still run correctly on the layout after: the step only
    /// adds what they never read or write. Such a step may run under them, and leaves them
    /// able to start on the board again (`readable_from`). It must also be safe to run again
    /// on the layout after it (`IF NOT EXISTS`, a constraint dropped and added).
    keeps_older: bool,
}

/// A step that older daemons do not survive (all before version 7: their effect on older
/// daemons was never designed for).
const fn breaking(sql: &'static str) -> Migration {
    Migration {
        sql,
        keeps_older: false,
    }
}

/// Version `i` to `i + 1`, in order; the schema version is their count.
const MIGRATIONS: &[Migration] = &[
    breaking(
        "CREATE TABLE hosts (
        name        text        PRIMARY KEY,
        instance    text        NOT NULL,
        started_at  timestamptz NOT NULL,
        renewed_at  timestamptz NOT NULL,
        lease_ms    bigint      NOT NULL,
        max_jobs    bigint      NOT NULL,
        live_jobs   bigint      NOT NULL,
        version     text        NOT NULL,
        stopped_at  timestamptz
    )",
    ),
    // The mirror of every host's jobs (`mirror.rs`), and the cancel and kill requests written
    // for a job's owner by any host (`requests.rs`).
    breaking(
        "CREATE TABLE jobs (
        seq         bigserial   UNIQUE,
        id          text        NOT NULL,
        host        text        NOT NULL,
        name        text        NOT NULL,
        state       text        NOT NULL,
        task        text,
        running     integer     NOT NULL,
        created_at  timestamptz NOT NULL,
        updated_at  timestamptz NOT NULL,
        ended       boolean     NOT NULL,
        PRIMARY KEY (host, id)
    );
    CREATE INDEX jobs_by_id ON jobs (id);
    CREATE TABLE requests (
        seq          bigserial   PRIMARY KEY,
        job_id       text        NOT NULL,
        host         text        NOT NULL,
        kind         text        NOT NULL CHECK (kind IN ('cancel', 'kill')),
        requested_at timestamptz NOT NULL,
        requested_by text        NOT NULL,
        by_json      text,
        timeout_ms   bigint,
        done_at      timestamptz,
        outcome      text
    );
    CREATE INDEX requests_pending ON requests (host) WHERE done_at IS NULL",
    ),
    // Every operator's order reaches another host's job (`requests.rs`): revert, resume,
    // pause and continue join cancel and kill, and so does `logs` (its task and `--since`
    // asked, its lines answered in `reply`); the owner's refusal is written back with its
    // error code and text for the requester to show. Only `requests` changes, so this applies
    // on top of any earlier layout of `jobs`.
    breaking(
        "ALTER TABLE requests DROP CONSTRAINT requests_kind_check;
    ALTER TABLE requests ADD CONSTRAINT requests_kind_check
        CHECK (kind IN ('cancel', 'kill', 'revert', 'resume', 'pause', 'continue', 'logs'));
    ALTER TABLE requests ADD COLUMN task text;
    ALTER TABLE requests ADD COLUMN since_ms bigint;
    ALTER TABLE requests ADD COLUMN error_code text;
    ALTER TABLE requests ADD COLUMN error text;
    ALTER TABLE requests ADD COLUMN reply text",
    ),
    // The job's journal (`journal.rs`): a job id is unique across the board (a daemon draws
    // ids until its INSERT succeeds); each job carries its claim epoch, its file and validated
    // spec, its `on_host_loss` and where it was taken from; its tasks are rows of their own;
    // a stale owner's refused writes are kept in `late_writes`. Of two mirror rows of one id
    // (two hosts drew the same 32 bits before this version), the later one stays.
    breaking(
        "DELETE FROM jobs a USING jobs b WHERE a.id = b.id AND a.seq < b.seq;
    ALTER TABLE jobs DROP CONSTRAINT jobs_pkey;
    ALTER TABLE jobs ADD PRIMARY KEY (id);
    DROP INDEX jobs_by_id;
    ALTER TABLE jobs
        ADD COLUMN epoch        bigint NOT NULL DEFAULT 1,
        ADD COLUMN source       text,
        ADD COLUMN spec         text,
        ADD COLUMN on_host_loss text   NOT NULL DEFAULT 'hold',
        ADD COLUMN reason       text,
        ADD COLUMN lost_from    text;
    CREATE INDEX jobs_unended ON jobs (host) WHERE NOT ended;
    CREATE TABLE job_tasks (
        job_id       text    NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        idx          integer NOT NULL,
        name         text    NOT NULL,
        has_revert   boolean NOT NULL,
        state        text    NOT NULL,
        attempts     integer NOT NULL,
        exec_outcome text,
        result       text    NOT NULL,
        PRIMARY KEY (job_id, idx)
    );
    CREATE TABLE late_writes (
        seq      bigserial   PRIMARY KEY,
        job_id   text        NOT NULL,
        host     text        NOT NULL,
        instance text        NOT NULL,
        epoch    bigint      NOT NULL,
        what     text        NOT NULL,
        at       timestamptz NOT NULL
    );
    CREATE INDEX late_writes_by_job ON late_writes (job_id, seq)",
    ),
    // Claims (`journal::claim`): a job written for any host with a free slot has no host
    // (NULL) until one claims it, at epoch 1; `pinned` is the host `submit --host` asked (the
    // only one that may claim it), NULL for any. The index serves the claim query: the
    // unclaimed jobs in submission order.
    breaking(
        "ALTER TABLE jobs ALTER COLUMN host DROP NOT NULL;
    ALTER TABLE jobs ADD COLUMN pinned text;
    CREATE INDEX jobs_unclaimed ON jobs (seq) WHERE host IS NULL AND NOT ended",
    ),
    // `logs --follow` of another host's job (`requests.rs`, `Kind::LogsAfter`): the requester
    // asks for the lines after the last one it has (`after_line`, the owner's cursor), and
    // the owner answers with the next bounded page of them in `reply`.
    breaking(
        "ALTER TABLE requests DROP CONSTRAINT requests_kind_check;
    ALTER TABLE requests ADD CONSTRAINT requests_kind_check
        CHECK (kind IN ('cancel', 'kill', 'revert', 'resume', 'pause', 'continue', 'logs',
                        'logs_after'));
    ALTER TABLE requests ADD COLUMN after_line bigint",
    ),
    // `status` of another host's job asked of its host (`requests.rs`, `Kind::Status`): the
    // owner answers with the job's whole status in `reply`; and `readable_from`. Keeps older
    // daemons working: they never write `status`, and an older owner marks such a request
    // done as unreadable (its asker then reads the board's journal).
    Migration {
        sql: "ALTER TABLE requests DROP CONSTRAINT requests_kind_check;
        ALTER TABLE requests ADD CONSTRAINT requests_kind_check
            CHECK (kind IN ('cancel', 'kill', 'revert', 'resume', 'pause', 'continue', 'logs',
                            'logs_after', 'status'));
        ALTER TABLE board_schema ADD COLUMN IF NOT EXISTS readable_from integer",
        keeps_older: true,
    },
];

/// The version this build writes.
#[must_use]
pub fn current_version() -> i32 {
    i32::try_from(MIGRATIONS.len()).expect("INVARIANT: a handful of migrations")
}

/// The oldest version whose daemons still run on this build's layout: the version before the
/// steps that keep older daemons working, at the end of [`MIGRATIONS`].
fn readable_from() -> i32 {
    let kept = MIGRATIONS
        .iter()
        .rev()
        .take_while(|step| step.keeps_older)
        .count();
    current_version() - i32::try_from(kept).expect("INVARIANT: a handful of migrations")
}

/// Creates the schema or brings it to [`current_version`] (at once when every step keeps older
/// daemons working; else only when no daemon lives on it), or joins a newer one that keeps
/// this build working; returns the version found.
pub async fn migrate(client: &mut Client) -> Result<i32, BoardError> {
    let query = |source| BoardError::Query {
        what: "migrate the board's schema",
        source,
    };
    let tx = client.transaction().await.map_err(query)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .await
        .map_err(query)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS board_schema (version integer NOT NULL)")
        .await
        .map_err(query)?;
    let found: i32 = match tx
        .query_opt("SELECT version FROM board_schema", &[])
        .await
        .map_err(query)?
    {
        Some(row) => row.try_get(0).map_err(query)?,
        None => {
            tx.execute("INSERT INTO board_schema (version) VALUES (0)", &[])
                .await
                .map_err(query)?;
            0
        }
    };
    let ours = current_version();
    if found > ours {
        // Only a board of version 7 or later is newer than a build that reads this column.
        let readable_from: Option<i32> = tx
            .query_one("SELECT readable_from FROM board_schema", &[])
            .await
            .and_then(|row| row.try_get(0))
            .map_err(query)?;
        if readable_from.is_none_or(|from| from > ours) {
            return Err(BoardError::SchemaTooNew { found, ours });
        }
        tracing::info!(
            found,
            ours,
            "board schema newer than this build, which it keeps working"
        );
        tx.commit().await.map_err(query)?;
        return Ok(found);
    }
    let start = usize::try_from(found).map_err(|_| BoardError::SchemaTooNew { found, ours })?;
    let steps = MIGRATIONS.get(start..).unwrap_or_default();
    if found > 0 && steps.iter().any(|step| !step.keeps_older) {
        let live = live_hosts(&tx).await.map_err(query)?;
        if !live.is_empty() {
            return Err(BoardError::UpgradeUnderLiveHosts {
                found,
                ours,
                hosts: live.join(", "),
            });
        }
    }
    for (version, migration) in MIGRATIONS.iter().enumerate().skip(start) {
        tx.batch_execute(migration.sql).await.map_err(query)?;
        tracing::info!(from = version, to = version + 1, "board schema migrated");
    }
    tx.execute(
        "UPDATE board_schema SET version = $1, readable_from = $2",
        &[&ours, &readable_from()],
    )
    .await
    .map_err(query)?;
    tx.commit().await.map_err(query)?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_steps_that_keep_older_daemons_set_the_oldest_readable_version() {
        assert_eq!(current_version(), 7);
        assert_eq!(readable_from(), 6, "step 7 keeps version 6 daemons working");
        assert!(!MIGRATIONS[5].keeps_older);
    }
}
