//! The store's database on SQLite (WAL) in the state dir: the embedded default.
//!
//! Durability: the commits that must survive a power loss before anything acts on them (a
//! stored job, a write-ahead record, a job's end) are fsynced; the others are not, and become
//! durable with the next fsynced commit (the WAL is sequential). SQLite cannot change
//! `synchronous` inside a transaction, and a batch of the store's thread learns that it must be
//! durable only as its writes run. So every commit is made at `synchronous=NORMAL` (the WAL is
//! written, not synced) and a durable one is followed by an `fdatasync` of the WAL file, which
//! is what `synchronous=FULL` does at a commit in WAL mode. A store whose journal could not be
//! made a WAL commits at `FULL` always. `SUPERVISOR_DURABILITY=normal` trades the fsyncs away:
//! still safe against crashes of any process, not against a power loss or a kernel crash.
//!
//! Every write transaction is `BEGIN IMMEDIATE`: it takes the write lock before it reads, so a
//! second process on the same store (a `supervisor run` beside a daemon) makes it wait (the
//! busy timeout), never fail on a stale snapshot.

use super::db::{Cell, Database, Dialect, Row, Value};
use super::{Result, StoreError, migrate};
use rusqlite::Connection;
use rusqlite::types::{ToSqlOutput, ValueRef};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How many prepared statements the connection keeps: more than the store has on its hot path
/// (a job's submit, start, reports and end), so that none is parsed again per job.
const STATEMENT_CACHE: usize = 128;

/// How long a writer waits for another process's transaction (a `run` beside a daemon).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How commits are made durable.
#[derive(Clone, Debug)]
enum Durability {
    /// `SUPERVISOR_DURABILITY=normal`: never fsynced (safe against crashes of any process, not
    /// against a power loss).
    Off,
    /// A durable commit is followed by an `fdatasync` of this file, the WAL.
    SyncWal(PathBuf),
    /// No WAL: every commit is at `synchronous=FULL`.
    Always,
}

/// `state.db` in the state dir.
pub struct Sqlite {
    conn: Connection,
    /// The state dir, where `state.db` and its WAL are.
    dir: PathBuf,
    durability: Durability,
    /// Durable commits flushed so far.
    syncs: AtomicU64,
}

impl Sqlite {
    /// Opens (creating if needed) `state.db` in `dir`, migrating an older schema forward.
    pub fn open(dir: &Path) -> Result<Self> {
        // Processes opening one store at once (a daemon and `supervisor run`, say) can meet
        // `SQLITE_BUSY` that the busy handler does not wait out (a switch to WAL, the schema's
        // creation); the open is tried again until the busy timeout.
        create(dir);
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        loop {
            match Self::open_once(dir) {
                Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(err, _)))
                    if err.code == rusqlite::ErrorCode::DatabaseBusy
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                opened => return opened,
            }
        }
    }

    fn open_once(dir: &Path) -> Result<Self> {
        let mut conn = Connection::open(dir.join("state.db"))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Before anything else, and on a fresh store only: it takes effect only on a database
        // without tables, yet on any other it still writes page 1 and syncs it, at every open.
        // See `retention.rs` for why incremental.
        let fresh: bool = conn.query_row("SELECT count(*) = 0 FROM sqlite_master", [], |row| {
            row.get(0)
        })?;
        if fresh {
            conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        }
        let journal: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Every statement of the hot path stays prepared (rusqlite's default keeps 16).
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        // A small WAL: checkpointed every 200 pages (800 KiB) and truncated back to 1 MiB, so
        // that a nearly full disk can still absorb it into the database (the default 4 MiB WAL
        // can fill a small disk and then never be checkpointed).
        conn.pragma_update(None, "wal_autocheckpoint", 200)?;
        conn.pragma_update(None, "journal_size_limit", 1024 * 1024)?;
        migrate::prepare(&mut conn)?;
        let durability = if !super::durability_on() {
            Durability::Off
        } else if journal.eq_ignore_ascii_case("wal") {
            // The WAL exists now (the schema was read): its directory entry is made durable
            // once, as SQLite does at the first sync of a new WAL.
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(StoreError::Sync)?;
            Durability::SyncWal(dir.join("state.db-wal"))
        } else {
            tracing::warn!(
                journal,
                "store: no WAL on this file system; every commit is fsynced"
            );
            conn.pragma_update(None, "synchronous", "FULL")?;
            Durability::Always
        };
        Ok(Self {
            conn,
            dir: dir.to_owned(),
            durability,
            syncs: AtomicU64::new(0),
        })
    }

    /// The store with its durable commits flushed whatever `SUPERVISOR_DURABILITY` says: for
    /// the tests that count the flushes.
    #[cfg(test)]
    pub(super) fn flushing(mut self, dir: &Path) -> Self {
        self.durability = Durability::SyncWal(dir.join("state.db-wal"));
        self
    }

    /// Moves the WAL into the database and truncates it.
    fn checkpoint_truncate(&self) -> rusqlite::Result<i64> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                row.get::<_, i64>(0)
            })
    }
}

/// Makes a new `state.db` whole before it gets its name, when there is none: built under a
/// name of this process's without a journal or a sync (nothing in it yet to lose), flushed
/// once, then linked into place unless another process made one meanwhile; the open that
/// follows finds it current and writes nothing: two fsyncs. Made in place, a fresh store cost
/// eight (for `auto_vacuum` and for the switch to WAL, each a rollback journal synced twice,
/// its directory and the database). A crash leaves at worst a `.state.db.new.*` file, never a
/// half-made `state.db`. Where this cannot be done (a file system without hard links, say),
/// the open makes the store in place, as it would report any error. So it does when a WAL is
/// there without its database (`state.db` deleted, not its `-wal`): SQLite deletes the WAL of
/// an empty database at its first read, and would replay it onto a whole one. (A WAL appears
/// only beside a `state.db`, and then the link fails: the check cannot race another creator.)
fn create(dir: &Path) {
    let path = dir.join("state.db");
    if std::fs::symlink_metadata(&path).is_ok()
        || std::fs::symlink_metadata(dir.join("state.db-wal")).is_ok()
    {
        return;
    }
    static BUILDS: AtomicU64 = AtomicU64::new(0);
    let building = dir.join(format!(
        ".state.db.new.{}.{}",
        std::process::id(),
        BUILDS.fetch_add(1, Ordering::Relaxed)
    ));
    match build_fresh(&building) {
        Err(err) => tracing::debug!(error = %err, "store: cannot be built aside; made in place"),
        // `link` fails if `state.db` exists: a store made meanwhile is kept, not replaced.
        Ok(()) => match std::fs::hard_link(&building, &path) {
            Err(err) if err.kind() != std::io::ErrorKind::AlreadyExists => {
                tracing::debug!(error = %err, "store: cannot be linked into place; made in place");
            }
            _ => {
                if let Err(err) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
                    tracing::debug!(error = %err, "store: its directory cannot be flushed");
                }
            }
        },
    }
    let _ = std::fs::remove_file(&building);
}

/// Writes a store of the current schema at `path` (replacing any file there), flushed.
fn build_fresh(path: &Path) -> Result<()> {
    let _ = std::fs::remove_file(path);
    {
        let conn = Connection::open(path)?;
        // `auto_vacuum` before any table (`retention.rs` says why incremental); the WAL last,
        // so that the file is in WAL mode from its first open under its name.
        conn.execute_batch(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; \
             PRAGMA auto_vacuum = INCREMENTAL;",
        )?;
        migrate::create(&conn)?;
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))?;
    }
    std::fs::File::open(path)
        .and_then(|file| file.sync_all())
        .map_err(StoreError::Sync)
}

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match *self {
            Value::Null => ValueRef::Null,
            Value::Int(value) => ValueRef::Integer(value),
            Value::Text(text) => ValueRef::Text(text.as_bytes()),
        }))
    }
}

/// A column as the store reads it: the schema holds integers, text and NULL only.
fn cell(value: ValueRef<'_>) -> Cell {
    match value {
        ValueRef::Null => Cell::Null,
        ValueRef::Integer(value) => Cell::Int(value),
        ValueRef::Text(text) | ValueRef::Blob(text) => {
            Cell::Text(String::from_utf8_lossy(text).into_owned())
        }
        // The schema stores no floating point; a float read (an aggregate) is truncated.
        #[expect(clippy::cast_possible_truncation, reason = "none is stored")]
        ValueRef::Real(value) => Cell::Int(value as i64),
    }
}

impl Database for Sqlite {
    fn execute(&self, sql: &str, args: &[Value<'_>]) -> Result<usize> {
        Ok(self
            .conn
            .prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(args))?)
    }

    fn query(&self, sql: &str, args: &[Value<'_>]) -> Result<Vec<Row>> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let columns = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
        let mut read = Vec::new();
        while let Some(row) = rows.next()? {
            let cells = (0..columns)
                .map(|i| row.get_ref(i).map(cell))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            read.push(Row(cells));
        }
        Ok(read)
    }

    fn batch(&self, sql: &str) -> Result<()> {
        // Savepoints and transaction control are one statement each: prepared once.
        if sql.contains(';') {
            self.conn.execute_batch(sql)?;
        } else {
            self.conn.prepare_cached(sql)?.execute([])?;
        }
        Ok(())
    }

    fn begin(&self) -> Result<()> {
        self.batch("BEGIN IMMEDIATE")
    }

    fn commit(&self, durable: bool) -> Result<()> {
        self.batch("COMMIT")?;
        match &self.durability {
            Durability::SyncWal(wal) if durable => {
                self.syncs.fetch_add(1, Ordering::Relaxed);
                std::fs::File::open(wal)
                    .and_then(|file| file.sync_data())
                    .map_err(StoreError::Sync)
            }
            _ => Ok(()),
        }
    }

    fn rollback(&self) {
        if !self.conn.is_autocommit() {
            let _ = self.batch("ROLLBACK");
        }
    }

    fn in_transaction(&self) -> bool {
        !self.conn.is_autocommit()
    }

    /// The freed pages (incremental vacuum; a no-op on a store created without it), then the
    /// WAL (checkpoint and truncate). With `full`, a `VACUUM` rewrites the whole database
    /// first (and turns incremental vacuuming on for an older store).
    fn reclaim(&self, full: bool) -> Result<()> {
        if full {
            self.conn
                .pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
            self.conn.execute_batch("VACUUM")?;
        }
        self.conn.execute_batch("PRAGMA incremental_vacuum")?;
        let result = self.checkpoint_truncate();
        tracing::info!(?result, "store: checkpointed the WAL to reclaim space");
        Ok(())
    }

    /// The WAL only grows until a checkpoint, and a full disk can stop those: it is moved into
    /// the database and truncated.
    fn after_disk_full(&self) {
        // At every write a full disk refused: each retry of each waiting job's report, twice a
        // second in a long outage (the refusals themselves are logged once per job).
        let result = self.checkpoint_truncate();
        tracing::debug!(?result, "store: checkpointed the WAL after a full disk");
    }

    /// The database file and its WAL.
    fn size_bytes(&self) -> Result<u64> {
        Ok(["state.db", "state.db-wal"]
            .iter()
            .filter_map(|name| std::fs::metadata(self.dir.join(name)).ok())
            .map(|meta| meta.len())
            .sum())
    }

    fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }
}
