//! The write path: every write is one `BEGIN IMMEDIATE` transaction of its own, or, on the
//! store's thread, a savepoint inside its batch's one transaction (group commit,
//! ARCHITECTURE.md, Durability and restart).
//!
//! Group commit: the store's thread runs every call already queued (at most a batch) inside one
//! transaction, which the batch's first write opens. Each write is its own savepoint, so a write
//! that fails (a refused compare-and-set, a panic) is rolled back alone and the others stand.
//! One commit covers the batch, fsynced once when any of its writes must be durable; only then
//! are the answers of the calls that ran inside the transaction sent (the write-ahead rule: no
//! call is acknowledged before the commit that covers it). Concurrent jobs' write-aheads and
//! ends thus share one fsync.
//!
//! Durable commits: SQLite cannot change `synchronous` inside a transaction, and a batch learns
//! that it must be durable only as its writes run. So every commit is made at
//! `synchronous=NORMAL` (the WAL is written, not synced) and a durable one is followed by an
//! `fdatasync` of the WAL file, which is what `synchronous=FULL` does at a commit in WAL mode.
//! A store whose journal could not be made a WAL commits at `FULL` always.

use super::{Result, Store, StoreError, checkpoint_truncate};
use rusqlite::Connection;
use std::path::PathBuf;

/// How commits are made durable.
#[derive(Clone, Debug)]
pub(super) enum Durability {
    /// `SUPERVISOR_DURABILITY=normal`: never fsynced (safe against crashes of any process, not
    /// against a power loss).
    Off,
    /// A durable commit is followed by an `fdatasync` of this file, the WAL.
    SyncWal(PathBuf),
    /// No WAL: every commit is at `synchronous=FULL`.
    Always,
}

/// The store thread's batch, while it runs one.
#[derive(Debug, Default)]
pub(super) struct Group {
    /// Writes join the batch's transaction.
    active: bool,
    /// The batch's transaction is open (its first write opened it) and not yet committed.
    open: bool,
    /// A write of the open transaction must be durable at its commit.
    durable: bool,
    /// A write of the batch hit a full disk: the WAL is checkpointed once the batch is over.
    disk_full: bool,
    /// Why the batch's writes did not commit; every write of the batch then fails.
    failed: Option<StoreError>,
}

impl Store {
    /// Runs `write` in one immediate transaction, durable at its commit when `durable` (and
    /// fsyncs are on); inside a batch of the store's thread, in its own savepoint of the
    /// batch's transaction. On a full disk, the WAL is checkpointed so that a retry may find
    /// room (after the batch, inside one).
    pub(super) fn write<T>(
        &self,
        durable: bool,
        write: impl FnOnce(&Connection) -> Result<T>,
    ) -> Result<T> {
        let conn = self.conn();
        let mut group = self.group();
        if group.active {
            return self.write_in_group(&conn, &mut group, durable, write);
        }
        drop(group);
        let result = begin(&conn).and_then(|()| {
            // Rolled back on an error and on a panic in `write`.
            let _open = Rollback(&conn);
            let value = write(&conn)?;
            self.commit(&conn, durable)?;
            Ok(value)
        });
        if result.as_ref().is_err_and(StoreError::is_disk_full) {
            checkpoint_truncate(&conn);
        }
        result
    }

    fn write_in_group<T>(
        &self,
        conn: &Connection,
        group: &mut Group,
        durable: bool,
        write: impl FnOnce(&Connection) -> Result<T>,
    ) -> Result<T> {
        check_not_lost(conn, group);
        if let Some(err) = &group.failed {
            return Err(replicate(err));
        }
        if !group.open {
            begin(conn)?;
            group.open = true;
        }
        group.durable |= durable;
        let result = in_savepoint(conn, write);
        if result.as_ref().is_err_and(StoreError::is_disk_full) {
            group.disk_full = true;
        }
        if let (true, Err(err)) = (group.open && conn.is_autocommit(), &result) {
            // This write's error took the batch's transaction with it: the batch fails as it.
            group.failed.get_or_insert_with(|| replicate(err));
        }
        check_not_lost(conn, group);
        match (result, &group.failed) {
            (Ok(_), Some(err)) => Err(replicate(err)),
            (result, _) => result,
        }
    }

    /// From now on, writes on this connection join one transaction, until
    /// [`end_group`](Self::end_group). For the store's thread only.
    pub(super) fn begin_group(&self) {
        let mut group = self.group();
        *group = Group::default();
        group.active = true;
    }

    /// Whether a call that ran now must wait for the batch's commit before it is answered: it
    /// ran inside the batch's open transaction (it may have written, or read what is not
    /// committed yet), or after the batch's writes failed.
    pub(super) fn group_holds_answers(&self) -> bool {
        let group = self.group();
        group.open || group.failed.is_some()
    }

    /// Commits the batch's transaction (durable if any of its writes must be) and ends the
    /// batch: `Err` when its writes did not all commit.
    pub(super) fn end_group(&self) -> Result<()> {
        let conn = self.conn();
        let mut group = self.group();
        self.settle(&conn, &mut group);
        let group = std::mem::take(&mut *group);
        if group.disk_full {
            checkpoint_truncate(&conn);
        }
        group.failed.map_or(Ok(()), Err)
    }

    /// The connection with no transaction of a batch open (committed first): for what SQLite
    /// runs only outside a transaction (`VACUUM`, a checkpoint).
    pub(super) fn settled_conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        let conn = self.conn();
        self.settle(&conn, &mut self.group());
        conn
    }

    /// Commits the batch's open transaction, if any; a failure is the batch's.
    fn settle(&self, conn: &Connection, group: &mut Group) {
        check_not_lost(conn, group);
        if !group.open {
            return;
        }
        group.open = false;
        let durable = std::mem::take(&mut group.durable);
        if let Err(err) = self.commit(conn, durable) {
            if !conn.is_autocommit() {
                let _ = cached(conn, "ROLLBACK");
            }
            tracing::error!(error = %err, "store: a batch's commit failed");
            group.failed.get_or_insert(err);
        }
    }

    /// Commits the open transaction; a durable one is on disk when this returns.
    fn commit(&self, conn: &Connection, durable: bool) -> Result<()> {
        cached(conn, "COMMIT")?;
        match &self.durability {
            Durability::SyncWal(wal) if durable => {
                self.syncs
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                std::fs::File::open(wal)
                    .and_then(|file| file.sync_data())
                    .map_err(StoreError::Sync)
            }
            _ => Ok(()),
        }
    }
}

/// `BEGIN IMMEDIATE`: the write lock before the first read, so that a second process on the
/// same store makes this wait (the busy timeout), never fail on a stale snapshot.
fn begin(conn: &Connection) -> Result<()> {
    cached(conn, "BEGIN IMMEDIATE")
}

/// Rolls back the connection's open transaction at its drop, if one is still open (not
/// committed): a write that failed or panicked leaves nothing behind.
struct Rollback<'a>(&'a Connection);

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        if !self.0.is_autocommit() {
            let _ = cached(self.0, "ROLLBACK");
        }
    }
}

/// Runs `write` in a savepoint: released when it returns `Ok`, rolled back when it returns an
/// error or panics (the guard's drop), leaving the rest of the transaction as it was.
fn in_savepoint<T>(conn: &Connection, write: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    struct Savepoint<'a>(Option<&'a Connection>);
    impl Drop for Savepoint<'_> {
        fn drop(&mut self) {
            if let Some(conn) = self.0 {
                let _ = cached(conn, "ROLLBACK TO write");
                let _ = cached(conn, "RELEASE write");
            }
        }
    }
    cached(conn, "SAVEPOINT write")?;
    let mut savepoint = Savepoint(Some(conn));
    let value = write(conn)?;
    savepoint.0 = None;
    cached(conn, "RELEASE write")?;
    Ok(value)
}

/// One statement without parameters, prepared once per connection.
fn cached(conn: &Connection, sql: &str) -> Result<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// SQLite rolls a whole transaction back on some errors (a full disk, an I/O error): the
/// batch's earlier writes are then lost, and none of the batch may be acknowledged.
fn check_not_lost(conn: &Connection, group: &mut Group) {
    if group.open && conn.is_autocommit() {
        group.open = false;
        group.durable = false;
        tracing::error!("store: SQLite rolled a batch's transaction back");
        group.failed.get_or_insert_with(|| {
            StoreError::Unavailable("the batch's transaction was rolled back".into())
        });
    }
}

/// The same error for another caller of the batch (errors are not `Clone`); SQLite's error
/// codes stay, so that a full disk is still seen as one.
pub(super) fn replicate(err: &StoreError) -> StoreError {
    match err {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(code, message)) => {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(*code, message.clone()))
        }
        other => StoreError::Unavailable(other.to_string()),
    }
}
