//! The write path: every write is one write transaction of its own, or, on the
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
//! How a commit becomes durable is the database's (`sqlite.rs`, `postgres.rs`): a batch learns
//! that it must be durable only as its writes run, and says so at its commit.

use super::db::Database;
use super::{Result, Store, StoreError};

/// The store thread's batch, while it runs one.
#[derive(Debug, Default)]
pub(super) struct Group {
    /// Writes join the batch's transaction.
    active: bool,
    /// The batch's transaction is open (its first write opened it) and not yet committed.
    open: bool,
    /// A write of the open transaction must be durable at its commit.
    durable: bool,
    /// A write of the batch hit a full disk: the database gives back what it can once the
    /// batch is over.
    disk_full: bool,
    /// Why the batch's writes did not commit; every write of the batch then fails.
    failed: Option<StoreError>,
}

impl Store {
    /// Runs `write` in one write transaction, durable at its commit when `durable` (and
    /// durability is on); inside a batch of the store's thread, in its own savepoint of the
    /// batch's transaction. On a full disk, the database gives back what it can (SQLite's WAL)
    /// so that a retry may find room (after the batch, inside one).
    pub(super) fn write<T>(
        &self,
        durable: bool,
        write: impl FnOnce(&dyn Database) -> Result<T>,
    ) -> Result<T> {
        let db = self.db();
        let db: &dyn Database = &**db;
        let mut group = self.group();
        if group.active {
            return write_in_group(db, &mut group, durable, write);
        }
        drop(group);
        let result = db.begin().and_then(|()| {
            // Rolled back on an error and on a panic in `write`.
            let _open = Rollback(db);
            let value = write(db)?;
            db.commit(durable)?;
            Ok(value)
        });
        if result.as_ref().is_err_and(StoreError::is_disk_full) {
            db.after_disk_full();
        }
        result
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
        let db = self.db();
        let mut group = self.group();
        settle(&**db, &mut group);
        let group = std::mem::take(&mut *group);
        if group.disk_full {
            db.after_disk_full();
        }
        group.failed.map_or(Ok(()), Err)
    }

    /// The database with no transaction of a batch open (committed first): for what runs only
    /// outside a transaction (`VACUUM`, a checkpoint).
    pub(super) fn settled_db(&self) -> std::sync::MutexGuard<'_, Box<dyn Database>> {
        let db = self.db();
        settle(&**db, &mut self.group());
        db
    }
}

fn write_in_group<T>(
    db: &dyn Database,
    group: &mut Group,
    durable: bool,
    write: impl FnOnce(&dyn Database) -> Result<T>,
) -> Result<T> {
    check_not_lost(db, group);
    if let Some(err) = &group.failed {
        return Err(replicate(err));
    }
    if !group.open {
        db.begin()?;
        group.open = true;
    }
    group.durable |= durable;
    let result = in_savepoint(db, write);
    if result.as_ref().is_err_and(StoreError::is_disk_full) {
        group.disk_full = true;
    }
    if let (true, Err(err)) = (group.open && !db.in_transaction(), &result) {
        // This write's error took the batch's transaction with it: the batch fails as it.
        group.failed.get_or_insert_with(|| replicate(err));
    }
    check_not_lost(db, group);
    match (result, &group.failed) {
        (Ok(_), Some(err)) => Err(replicate(err)),
        (result, _) => result,
    }
}

/// Commits the batch's open transaction, if any; a failure is the batch's.
fn settle(db: &dyn Database, group: &mut Group) {
    check_not_lost(db, group);
    if !group.open {
        return;
    }
    group.open = false;
    let durable = std::mem::take(&mut group.durable);
    if let Err(err) = db.commit(durable) {
        db.rollback();
        tracing::error!(error = %err, "store: a batch's commit failed");
        group.failed.get_or_insert(err);
    }
}

/// Rolls back the open transaction at its drop, if one is still open (not committed): a
/// write that failed or panicked leaves nothing behind.
struct Rollback<'a>(&'a dyn Database);

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        self.0.rollback();
    }
}

/// Runs `write` in a savepoint: released when it returns `Ok`, rolled back when it returns an
/// error or panics (the guard's drop), leaving the rest of the transaction as it was.
fn in_savepoint<T>(db: &dyn Database, write: impl FnOnce(&dyn Database) -> Result<T>) -> Result<T> {
    struct Savepoint<'a>(Option<&'a dyn Database>);
    impl Drop for Savepoint<'_> {
        fn drop(&mut self) {
            if let Some(db) = self.0 {
                let _ = db.batch("ROLLBACK TO write");
                let _ = db.batch("RELEASE write");
            }
        }
    }
    db.batch("SAVEPOINT write")?;
    let mut savepoint = Savepoint(Some(db));
    let value = write(db)?;
    savepoint.0 = None;
    db.batch("RELEASE write")?;
    Ok(value)
}

/// SQLite rolls a whole transaction back on some errors (a full disk, an I/O error), and a
/// lost connection takes PostgreSQL's: the batch's earlier writes are then lost, and none of
/// the batch may be acknowledged.
fn check_not_lost(db: &dyn Database, group: &mut Group) {
    if group.open && !db.in_transaction() {
        // Let go of what the database keeps of the lost transaction (on PostgreSQL, that one
        // is open: until then, a closed connection is never opened again).
        db.rollback();
        group.open = false;
        group.durable = false;
        tracing::error!("store: the database rolled a batch's transaction back");
        group.failed.get_or_insert_with(|| {
            StoreError::Unavailable("the batch's transaction was rolled back".into())
        });
    }
}

/// The same error for another caller of the batch (errors are not `Clone`); a full disk is
/// still seen as one.
pub(super) fn replicate(err: &StoreError) -> StoreError {
    match err {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(code, message)) => {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(*code, message.clone()))
        }
        other if other.is_disk_full() => StoreError::DiskFull(other.to_string()),
        other => StoreError::Unavailable(other.to_string()),
    }
}
