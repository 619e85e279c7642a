//! The store: SQLite (WAL) in the state dir, the single truth about jobs.
//!
//! Durability: the commits that must survive a power loss before anything acts on them (a
//! stored job, a write-ahead record, a job's end) are fsynced (`synchronous=FULL`); the others
//! are not (`NORMAL`), and become durable with the next fsynced commit (the WAL is sequential).
//! `SUPERVISOR_DURABILITY=normal` trades the fsyncs away: still safe against crashes of any
//! process, not against a power loss or a kernel crash.
//!
//! Every write is one `BEGIN IMMEDIATE` transaction: it takes the write lock before it reads,
//! so a second process on the same store (a `supervisor run` beside a daemon) makes it wait
//! (the busy timeout), never fail on a stale snapshot.
//!
//! Jobs, tasks, every state change with its time (the `transitions` table), results, failure
//! reasons, and each job's task output. Every state change goes through the transition functions
//! of `shared::state`; a job's state changes only by compare-and-set ([`Store::transition_job`]
//! and the guarded orders in `transitions.rs`), so a check and its change are one transaction.
//! [`StoreHandle`] runs a `Store` on its own thread for async callers (ARCHITECTURE.md, Store).

mod actor;
mod group;
mod journal;
mod migrate;
mod operators;
mod queries;
mod reports;
mod retention;
mod transitions;

pub use actor::StoreHandle;
pub use journal::{ImportedTask, JournalRow, draw_id};
pub use operators::MetricsCounts;
pub use queries::task_statuses;
pub use reports::Applied;

use rusqlite::{Connection, OptionalExtension, params};
use shared::ids::JobId;
use shared::spec::JobSpec;
use shared::state::{ExecOutcome, InvalidTransition, JobState, TaskState};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

pub use migrate::SCHEMA_VERSION;

/// How many prepared statements the connection keeps: more than the store has on its hot path
/// (a job's submit, start, reports and end), so that none is parsed again per job.
const STATEMENT_CACHE: usize = 128;

/// How long a writer waits for another process's transaction (a `run` beside a daemon).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Illegal(#[from] InvalidTransition),
    #[error("no such job: {0}")]
    UnknownJob(JobId),
    /// A job id chosen elsewhere (the board's) names a job of this store already.
    #[error("job id {0} is taken in this store")]
    IdTaken(JobId),
    /// Text that is not a job id (8 hex digits), typed by a user or found in the store.
    #[error("no such job: {0:?} is not a job id")]
    BadJobId(String),
    /// A compare-and-set found the job in a state it does not accept.
    #[error("job {id} is {state}")]
    WrongState { id: JobId, state: JobState },
    #[error("job {0} has no pending revert")]
    NothingToRevert(JobId),
    #[error("job {0} already began reverting: use `supervisor revert {0}`")]
    AlreadyReverting(JobId),
    /// A batch of reports does not continue the reports held: one was lost on the way.
    #[error("report gap: expected report {expected}, got {got}")]
    ReportGap { expected: u64, got: u64 },
    #[error("stored spec of job {0} is unreadable: {1}")]
    BadSpec(JobId, serde_json::Error),
    #[error("cannot encode the job's spec: {0}")]
    UnencodableSpec(serde_json::Error),
    #[error(
        "the store was made by a newer version of supervisor (schema {found}, this one reads up to {supported}): use that version or another state dir"
    )]
    SchemaNewer { found: i64, supported: i64 },
    #[error(
        "the store has an unknown schema version {0}: it was not made by supervisor; use another state dir"
    )]
    SchemaUnknown(i64),
    #[error("stored state is unreadable: {0}")]
    BadState(#[from] shared::state::UnknownState),
    /// A durable commit could not be flushed to the disk.
    #[error("store: cannot flush to disk: {0}")]
    Sync(std::io::Error),
    /// The store's thread could not serve the call (it panicked in this call, or is gone).
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

impl StoreError {
    /// The disk (or the state dir's file system) is full.
    #[must_use]
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Self::Sqlite(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DiskFull)
    }
}

/// The process (daemon or `supervisor run`) that supervises a job: its pid and its start time
/// (as `/proc/PID/stat` gives it), which together recognise it later despite pid reuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SupervisorId {
    pub pid: u32,
    pub start_time: u64,
}

/// The store; cheap to share behind an `Arc`. Each call is one short transaction (or a part of
/// its batch's one, on the store's thread: `group.rs`).
pub struct Store {
    conn: Mutex<Connection>,
    /// How durable commits reach the disk.
    durability: group::Durability,
    /// The batch the store's thread runs now, if any.
    group: Mutex<group::Group>,
    /// Durable commits flushed so far (one per batch that holds a durable write).
    syncs: std::sync::atomic::AtomicU64,
}

/// A job's row.
#[derive(Clone, Debug)]
pub struct JobRow {
    pub id: JobId,
    pub name: String,
    pub source: String,
    pub state: JobState,
    pub reason: Option<String>,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub ended_ms: Option<i64>,
    pub conductor_pid: Option<i32>,
    pub conductor_start: Option<u64>,
    /// The process (daemon or `run`) that supervises the job, and its start time.
    pub supervisor: Option<(i32, u64)>,
    /// `cgroup` or `session`, once a conductor ran.
    pub containment: Option<String>,
    /// The job's cgroup, in cgroup mode.
    pub cgroup: Option<PathBuf>,
    /// Since when the conductor has been silent, if it is.
    pub unresponsive_ms: Option<i64>,
    /// Since when the job is paused (frozen), if it is.
    pub paused_ms: Option<i64>,
}

/// A task's row.
#[derive(Clone, Debug)]
pub struct TaskRow {
    pub idx: u32,
    pub name: String,
    pub has_revert: bool,
    pub state: TaskState,
    pub attempts: u32,
    pub exec_outcome: Option<ExecOutcome>,
    pub result: String,
    pub error: Option<String>,
    pub started_ms: Option<i64>,
    pub ended_ms: Option<i64>,
}

impl TaskRow {
    /// The execute began and the revert has not completed (and there is a revert to run).
    #[must_use]
    pub fn revert_began_or_needed(&self) -> bool {
        self.has_revert && !matches!(self.state, TaskState::Pending | TaskState::Reverted)
    }
}

/// One stored line of task output.
#[derive(Clone, Debug)]
pub struct OutputLine {
    /// Increasing; pass the last one seen to get only newer lines.
    pub id: i64,
    pub task: u32,
    pub phase: String,
    pub stream: String,
    pub line: String,
}

pub use crate::clock::now_ms;

impl Store {
    /// Opens (creating if needed) `state.db` in `dir`, migrating an older schema forward.
    pub fn open(dir: &Path) -> Result<Self> {
        // Processes opening one store at once (a daemon and `supervisor run`, say) can meet
        // `SQLITE_BUSY` that the busy handler does not wait out (a switch to WAL, the schema's
        // creation); the open is tried again until the busy timeout.
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
        let fsync = std::env::var("SUPERVISOR_DURABILITY").map_or(true, |mode| mode != "normal");
        let durability = if !fsync {
            group::Durability::Off
        } else if journal.eq_ignore_ascii_case("wal") {
            // The WAL exists now (the schema was read): its directory entry is made durable
            // once, as SQLite does at the first sync of a new WAL.
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(StoreError::Sync)?;
            group::Durability::SyncWal(dir.join("state.db-wal"))
        } else {
            tracing::warn!(
                journal,
                "store: no WAL on this file system; every commit is fsynced"
            );
            conn.pragma_update(None, "synchronous", "FULL")?;
            group::Durability::Always
        };
        Ok(Self {
            conn: Mutex::new(conn),
            durability,
            group: Mutex::default(),
            syncs: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn group(&self) -> MutexGuard<'_, group::Group> {
        self.group.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// After a full disk: moves the WAL into the database and truncates it, which gives back
    /// the space the WAL held (it only grows until a checkpoint, and a full disk can stop those).
    pub fn reclaim_space(&self) {
        checkpoint_truncate(&self.settled_conn());
    }

    /// Stores a new `pending` job and its tasks; returns its fresh id.
    ///
    /// `owner` is the process that will run it (a `supervisor run`): a daemon on the same state
    /// dir leaves such a job to it while it lives, instead of starting it from its queue.
    pub fn create_job(
        &self,
        spec: &JobSpec,
        source: &str,
        owner: Option<SupervisorId>,
    ) -> Result<JobId> {
        let spec_json = serde_json::to_string(spec).map_err(StoreError::UnencodableSpec)?;
        // Durable before `submit` answers with the id.
        self.write(true, |tx| {
            let id = insert_job(tx, spec, &spec_json, source, None)?;
            if let Some(owner) = owner {
                tx.prepare_cached(
                    "UPDATE jobs SET supervisor_pid = ?2, supervisor_start = ?3 WHERE id = ?1",
                )?
                .execute(params![
                    id.as_str(),
                    owner.pid,
                    i64::try_from(owner.start_time).unwrap_or(i64::MAX)
                ])?;
            }
            Ok(id)
        })
    }

    /// The job's spec as it was validated at submission.
    pub fn spec(&self, id: &JobId) -> Result<JobSpec> {
        let text: String = self
            .conn()
            .prepare_cached("SELECT spec FROM jobs WHERE id = ?1")?
            .query_row([id.as_str()], |row| row.get(0))
            .optional()?
            .ok_or_else(|| StoreError::UnknownJob(id.clone()))?;
        serde_json::from_str(&text).map_err(|e| StoreError::BadSpec(id.clone(), e))
    }

    pub fn job(&self, id: &JobId) -> Result<JobRow> {
        let conn = self.conn();
        job_row(&conn, id)?.ok_or_else(|| StoreError::UnknownJob(id.clone()))
    }

    pub fn tasks(&self, id: &JobId) -> Result<Vec<TaskRow>> {
        let conn = self.conn();
        task_rows(&conn, id)
    }

    /// Records the conductor now serving the job, and `supervisor` as its supervisor; the
    /// conductor's reports are numbered afresh.
    pub fn set_conductor(
        &self,
        id: &JobId,
        pid: i32,
        start_time: u64,
        socket: &Path,
        supervisor: SupervisorId,
    ) -> Result<()> {
        self.update_job(
            id,
            "UPDATE jobs SET conductor_pid = ?2, conductor_start = ?3, socket = ?4, last_report = 0, conductor_exited = 0,
                             started_ms = COALESCE(started_ms, ?5), supervisor_pid = ?6, supervisor_start = ?7
             WHERE id = ?1",
            params![
                id.as_str(),
                pid,
                to_sql_u64(start_time),
                socket.to_string_lossy(),
                now_ms(),
                supervisor.pid,
                to_sql_u64(supervisor.start_time)
            ],
        )
    }

    /// Records that the job's conductor is gone (seen exit, or found dead).
    pub fn set_conductor_exited(&self, id: &JobId) -> Result<()> {
        self.update_job(
            id,
            "UPDATE jobs SET conductor_exited = 1 WHERE id = ?1",
            params![id.as_str()],
        )
    }

    /// Records how the job is contained (`cgroup` with its path, or `session`).
    pub fn set_containment(&self, id: &JobId, mode: &str, cgroup: Option<&Path>) -> Result<()> {
        self.update_job(
            id,
            "UPDATE jobs SET containment = ?2, cgroup = ?3 WHERE id = ?1",
            params![
                id.as_str(),
                mode,
                cgroup.map(|p| p.to_string_lossy().into_owned())
            ],
        )
    }

    /// Marks the conductor unresponsive since `since_ms`, or responsive again (`None`).
    pub fn set_unresponsive(&self, id: &JobId, since_ms: Option<i64>) -> Result<()> {
        self.update_job(
            id,
            "UPDATE jobs SET unresponsive_ms = ?2 WHERE id = ?1",
            params![id.as_str(), since_ms],
        )
    }

    /// Records `supervisor` as the job's supervisor (so that no other one adopts it meanwhile).
    pub fn claim(&self, id: &JobId, supervisor: SupervisorId) -> Result<()> {
        self.update_job(
            id,
            "UPDATE jobs SET supervisor_pid = ?2, supervisor_start = ?3 WHERE id = ?1",
            params![
                id.as_str(),
                supervisor.pid,
                to_sql_u64(supervisor.start_time)
            ],
        )
    }

    /// One non-durable update of the job's row; [`StoreError::UnknownJob`] if it has none.
    fn update_job(&self, id: &JobId, sql: &str, params: &[&dyn rusqlite::ToSql]) -> Result<()> {
        self.write(false, |tx| {
            match tx.prepare_cached(sql)?.execute(params)? {
                0 => Err(StoreError::UnknownJob(id.clone())),
                _ => Ok(()),
            }
        })
    }
}

/// Moves the WAL into the database and truncates it.
fn checkpoint_truncate(conn: &Connection) {
    let result = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
        row.get::<_, i64>(0)
    });
    tracing::info!(?result, "store: checkpointed the WAL to reclaim space");
}

/// A `u64` (a start time) as SQLite's signed integer, saturating.
fn to_sql_u64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Inserts a `pending` job with a fresh id, and its tasks.
/// `chosen`: the id the board gave it ([`StoreError::IdTaken`] if this store has it).
fn insert_job(
    tx: &Connection,
    spec: &JobSpec,
    spec_json: &str,
    source: &str,
    chosen: Option<&JobId>,
) -> Result<JobId> {
    let now = now_ms();
    let id = loop {
        let id = chosen
            .cloned()
            .unwrap_or_else(|| JobId::from_random(random_u32()));
        if !is_taken(tx, &id)? {
            break id;
        }
        if chosen.is_some() {
            return Err(StoreError::IdTaken(id));
        }
    };
    tx.prepare_cached(
        "INSERT INTO jobs (id, seq, name, source, spec, state, created_ms)
         VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs), ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        id.as_str(),
        spec.name,
        source,
        spec_json,
        JobState::Pending.as_str(),
        now
    ])?;
    for (idx, task) in spec.tasks.iter().enumerate() {
        tx.prepare_cached(
            "INSERT INTO tasks (job_id, idx, name, has_revert, state) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            id.as_str(),
            u32::try_from(idx).unwrap_or(u32::MAX),
            task.name,
            task.body.has_revert(),
            TaskState::Pending.as_str()
        ])?;
    }
    record_transition(
        tx,
        &id,
        None,
        None,
        JobState::Pending.as_str(),
        now,
        Some("submitted"),
    )?;
    Ok(id)
}

/// Whether the store has a job `id`.
fn is_taken(conn: &Connection, id: &JobId) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM jobs WHERE id = ?1")?
        .query_row([id.as_str()], |_| Ok(()))
        .optional()?
        .is_some())
}

/// The live job states (a conductor runs or will run), from `JobState`'s own list.
fn live_states() -> Vec<JobState> {
    JobState::ALL.into_iter().filter(|s| s.is_live()).collect()
}

/// `states` as a SQL list of string literals, for `state IN (...)`; the names come from
/// `as_str`, never from input, so they need no binding.
fn sql_list(states: impl IntoIterator<Item = JobState>) -> String {
    states
        .into_iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The tasks whose revert is pending, last first: their execute began and their revert has not
/// completed. Tasks without a revert command have nothing to compensate and are never pending.
/// A spec keeps a graph's tasks in a topological order, so last first is a reverse dependency
/// order: every task after the tasks that depend on it (ARCHITECTURE.md, Flows).
#[must_use]
pub fn pending_reverts(tasks: &[TaskRow]) -> Vec<TaskRow> {
    tasks
        .iter()
        .rev()
        .filter(|t| t.revert_began_or_needed())
        .cloned()
        .collect()
}

fn random_u32() -> u32 {
    let mut bytes = [0u8; 4];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer we own.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n == 4 {
        u32::from_ne_bytes(bytes)
    } else {
        // getrandom cannot fail for 4 bytes once the pool is ready; fall back to the clock.
        (now_ms() as u32) ^ std::process::id().rotate_left(16)
    }
}

fn job_row(conn: &Connection, id: &JobId) -> Result<Option<JobRow>> {
    let as_u64 = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
    let row = conn
        .prepare_cached(
            "SELECT name, source, state, reason, created_ms, started_ms, ended_ms,
                    conductor_pid, conductor_start, supervisor_pid, supervisor_start,
                    containment, cgroup, unresponsive_ms, paused_ms
             FROM jobs WHERE id = ?1",
        )?
        .query_row([id.as_str()], |row| {
            let supervisor = match (row.get::<_, Option<i32>>(9)?, as_u64(row.get(10)?)) {
                (Some(pid), Some(start)) => Some((pid, start)),
                _ => None,
            };
            let state: String = row.get(2)?;
            let job = JobRow {
                id: id.clone(),
                name: row.get(0)?,
                source: row.get(1)?,
                state: JobState::Pending,
                reason: row.get(3)?,
                created_ms: row.get(4)?,
                started_ms: row.get(5)?,
                ended_ms: row.get(6)?,
                conductor_pid: row.get(7)?,
                conductor_start: as_u64(row.get(8)?),
                supervisor,
                containment: row.get(11)?,
                cgroup: row.get::<_, Option<String>>(12)?.map(PathBuf::from),
                unresponsive_ms: row.get(13)?,
                paused_ms: row.get(14)?,
            };
            Ok((job, state))
        })
        .optional()?;
    let Some((mut job, state)) = row else {
        return Ok(None);
    };
    job.state = state.parse()?;
    Ok(Some(job))
}

fn task_rows(conn: &Connection, id: &JobId) -> Result<Vec<TaskRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT idx, name, has_revert, state, attempts, exec_outcome, result, error, started_ms, ended_ms
         FROM tasks WHERE job_id = ?1 ORDER BY idx",
    )?;
    let rows = stmt
        .query_map([id.as_str()], |row| {
            Ok((
                row.get::<_, u32>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, bool>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, u32>(4)?,
                row.get::<_, Option<String>>(5)?,
                row.get::<_, String>(6)?,
                row.get::<_, Option<String>>(7)?,
                row.get::<_, Option<i64>>(8)?,
                row.get::<_, Option<i64>>(9)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(
            |(
                idx,
                name,
                has_revert,
                state,
                attempts,
                outcome,
                result,
                error,
                started_ms,
                ended_ms,
            )| {
                Ok(TaskRow {
                    idx,
                    name,
                    has_revert,
                    state: state.parse()?,
                    attempts,
                    exec_outcome: outcome.as_deref().and_then(ExecOutcome::parse),
                    result,
                    error,
                    started_ms,
                    ended_ms,
                })
            },
        )
        .collect()
}

fn record_transition(
    conn: &Connection,
    id: &JobId,
    task: Option<u32>,
    from: Option<&str>,
    to: &str,
    at_ms: i64,
    reason: Option<&str>,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO transitions (job_id, task_idx, from_state, to_state, at_ms, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![id.as_str(), task, from, to, at_ms, reason])?;
    Ok(())
}

/// Moves a task through the transition table.
fn change_task_state(
    conn: &Connection,
    id: &JobId,
    idx: u32,
    from: TaskState,
    to: TaskState,
    reason: Option<&str>,
) -> Result<()> {
    from.transition(to)?;
    conn.prepare_cached("UPDATE tasks SET state = ?3 WHERE job_id = ?1 AND idx = ?2")?
        .execute(params![id.as_str(), idx, to.as_str()])?;
    record_transition(
        conn,
        id,
        Some(idx),
        Some(from.as_str()),
        to.as_str(),
        now_ms(),
        reason,
    )
}

#[cfg(test)]
mod tests;
