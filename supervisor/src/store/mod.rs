//! The store, the single truth about jobs: SQLite (WAL) in the state dir, the embedded
//! default, or PostgreSQL ([`Store::open_postgres`]); both behind one trait,
//! [`db::Database`], and the store's logic written once over it (`db.rs`).
//!
//! Durability: the commits that must survive a power loss before anything acts on them (a
//! stored job, a write-ahead record, a job's end) are durable when they return (fsynced on
//! SQLite, flushed by the server on PostgreSQL); the others are not, and become durable with
//! the next durable commit. `SUPERVISOR_DURABILITY=normal` trades that away: still safe against
//! crashes of any process, not against a power loss or a kernel crash.
//!
//! Every write is one write transaction that takes the write lock before it reads, so another
//! writer (a `supervisor run` beside a daemon) makes it wait, never fail on a stale snapshot.
//!
//! Jobs, tasks, every state change with its time (the `transitions` table), results, failure
//! reasons, and each job's task output. Every state change goes through the transition functions
//! of `shared::state`; a job's state changes only by compare-and-set ([`Store::transition_job`]
//! and the guarded orders in `transitions.rs`), so a check and its change are one transaction.
//! [`StoreHandle`] runs a `Store` on its own thread for async callers (ARCHITECTURE.md, Store).

mod actor;
pub mod db;
mod group;
mod journal;
mod migrate;
mod operators;
mod postgres;
mod queries;
mod reports;
mod retention;
mod sqlite;
mod transitions;

pub use actor::StoreHandle;
pub use journal::{ImportedTask, JournalRow, draw_id};
pub use operators::MetricsCounts;
pub use postgres::{Holder, PostgresStore};
pub use queries::task_statuses;
pub use reports::Applied;

use db::{Database, Row, Value, args};
use shared::ids::JobId;
use shared::spec::JobSpec;
use shared::state::{ExecOutcome, InvalidTransition, JobState, TaskState};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

pub use migrate::SCHEMA_VERSION;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store: {0}")]
    Postgres(#[from] ::postgres::Error),
    /// The disk is full (another call of the batch met it).
    #[error("store: {0}")]
    DiskFull(String),
    /// A column read holds another type than the store's logic expects.
    #[error("store: column {index} holds {found}, not {wanted}")]
    Column {
        index: usize,
        wanted: &'static str,
        found: String,
    },
    /// An argument that cannot be bound as the type its parameter takes.
    #[error("store: argument {index} ({value}) is not a {ty}")]
    BadArgument {
        index: usize,
        value: String,
        ty: String,
    },
    /// Another daemon holds the store's schema in PostgreSQL.
    #[error(
        "another daemon keeps its store in schema {0} of this database: stop it, or give this one another --store-schema"
    )]
    InUse(String),
    /// A statement that must return a row returned none.
    #[error("store: no row from {0}")]
    NoRow(String),
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
    /// The store's database cannot be reached now (PostgreSQL down, restarting, or the
    /// connection lost): not an error of the call, which may succeed later.
    #[must_use]
    pub fn is_unreachable(&self) -> bool {
        match self {
            // A closed connection, or an I/O error under it (connecting, reading, writing).
            Self::Postgres(e) => {
                e.is_closed()
                    || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
            }
            _ => false,
        }
    }

    /// The disk (or the state dir's file system) is full.
    #[must_use]
    pub fn is_disk_full(&self) -> bool {
        match self {
            Self::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::DiskFull
            }
            Self::Postgres(e) => e.code() == Some(&::postgres::error::SqlState::DISK_FULL),
            Self::DiskFull(_) => true,
            _ => false,
        }
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
    db: Mutex<Box<dyn Database>>,
    /// The batch the store's thread runs now, if any.
    group: Mutex<group::Group>,
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
        Ok(Self::on(Box::new(sqlite::Sqlite::open(dir)?)))
    }

    /// Connects to the store in PostgreSQL at `at`, creating its schema and tables if needed;
    /// as `holder` ([`Holder::Daemon`]: refused while another daemon holds the schema). Never
    /// on an async runtime's thread: the client blocks.
    pub fn open_postgres(at: &PostgresStore, holder: Holder) -> Result<Self> {
        Ok(Self::on(Box::new(postgres::Postgres::connect(at, holder)?)))
    }

    fn on(db: Box<dyn Database>) -> Self {
        Self {
            db: Mutex::new(db),
            group: Mutex::default(),
        }
    }

    fn db(&self) -> MutexGuard<'_, Box<dyn Database>> {
        self.db.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Durable commits flushed so far (one per batch that holds a durable write): for tests.
    #[cfg(test)]
    pub fn syncs(&self) -> u64 {
        self.db().syncs()
    }

    fn group(&self) -> MutexGuard<'_, group::Group> {
        self.group.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// After a full disk: gives back what the database can (SQLite's WAL only grows until a
    /// checkpoint, and a full disk can stop those).
    pub fn reclaim_space(&self) {
        self.settled_db().after_disk_full();
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
                tx.execute(
                    "UPDATE jobs SET supervisor_pid = ?2, supervisor_start = ?3 WHERE id = ?1",
                    args![id.as_str(), owner.pid, owner.start_time],
                )?;
            }
            Ok(id)
        })
    }

    /// The job's spec as it was validated at submission.
    pub fn spec(&self, id: &JobId) -> Result<JobSpec> {
        let text: String = self
            .db()
            .query_opt("SELECT spec FROM jobs WHERE id = ?1", args![id.as_str()])?
            .ok_or_else(|| StoreError::UnknownJob(id.clone()))?
            .get(0)?;
        serde_json::from_str(&text).map_err(|e| StoreError::BadSpec(id.clone(), e))
    }

    pub fn job(&self, id: &JobId) -> Result<JobRow> {
        job_row(&**self.db(), id)?.ok_or_else(|| StoreError::UnknownJob(id.clone()))
    }

    pub fn tasks(&self, id: &JobId) -> Result<Vec<TaskRow>> {
        task_rows(&**self.db(), id)
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
            args![
                id.as_str(),
                pid,
                start_time,
                &*socket.to_string_lossy(),
                now_ms(),
                supervisor.pid,
                supervisor.start_time
            ],
        )
    }

    /// Records that the job's conductor is gone (seen exit, or found dead).
    pub fn set_conductor_exited(&self, id: &JobId) -> Result<()> {
        self.update_job(
            id,
            "UPDATE jobs SET conductor_exited = 1 WHERE id = ?1",
            args![id.as_str()],
        )
    }

    /// Records how the job is contained (`cgroup` with its path, or `session`).
    pub fn set_containment(&self, id: &JobId, mode: &str, cgroup: Option<&Path>) -> Result<()> {
        self.update_job(
            id,
            "UPDATE jobs SET containment = ?2, cgroup = ?3 WHERE id = ?1",
            args![
                id.as_str(),
                mode,
                cgroup.map(|p| p.to_string_lossy()).as_deref()
            ],
        )
    }

    /// Marks the conductor unresponsive since `since_ms`, or responsive again (`None`).
    pub fn set_unresponsive(&self, id: &JobId, since_ms: Option<i64>) -> Result<()> {
        self.update_job(
            id,
            "UPDATE jobs SET unresponsive_ms = ?2 WHERE id = ?1",
            args![id.as_str(), since_ms],
        )
    }

    /// Records `supervisor` as the job's supervisor (so that no other one adopts it meanwhile).
    pub fn claim(&self, id: &JobId, supervisor: SupervisorId) -> Result<()> {
        self.update_job(
            id,
            "UPDATE jobs SET supervisor_pid = ?2, supervisor_start = ?3 WHERE id = ?1",
            args![id.as_str(), supervisor.pid, supervisor.start_time],
        )
    }

    /// One non-durable update of the job's row; [`StoreError::UnknownJob`] if it has none.
    fn update_job(&self, id: &JobId, sql: &str, args: &[Value<'_>]) -> Result<()> {
        self.write(false, |tx| match tx.execute(sql, args)? {
            0 => Err(StoreError::UnknownJob(id.clone())),
            _ => Ok(()),
        })
    }
}

/// Whether durable commits are made durable (`SUPERVISOR_DURABILITY` is not `normal`).
fn durability_on() -> bool {
    std::env::var("SUPERVISOR_DURABILITY").map_or(true, |mode| mode != "normal")
}

/// Inserts a `pending` job with a fresh id, and its tasks.
/// `chosen`: the id the board gave it ([`StoreError::IdTaken`] if this store has it).
fn insert_job(
    tx: &dyn Database,
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
    tx.execute(
        "INSERT INTO jobs (id, seq, name, source, spec, state, created_ms)
         VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs), ?2, ?3, ?4, ?5, ?6)",
        args![
            id.as_str(),
            &spec.name,
            source,
            spec_json,
            JobState::Pending.as_str(),
            now
        ],
    )?;
    for (idx, task) in spec.tasks.iter().enumerate() {
        tx.execute(
            "INSERT INTO tasks (job_id, idx, name, has_revert, state) VALUES (?1, ?2, ?3, ?4, ?5)",
            args![
                id.as_str(),
                u32::try_from(idx).unwrap_or(u32::MAX),
                &task.name,
                task.body.has_revert(),
                TaskState::Pending.as_str()
            ],
        )?;
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
fn is_taken(db: &dyn Database, id: &JobId) -> Result<bool> {
    Ok(db
        .query_opt("SELECT 1 FROM jobs WHERE id = ?1", args![id.as_str()])?
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

fn job_row(db: &dyn Database, id: &JobId) -> Result<Option<JobRow>> {
    let Some(row) = db.query_opt(
        "SELECT name, source, state, reason, created_ms, started_ms, ended_ms,
                conductor_pid, conductor_start, supervisor_pid, supervisor_start,
                containment, cgroup, unresponsive_ms, paused_ms
         FROM jobs WHERE id = ?1",
        args![id.as_str()],
    )?
    else {
        return Ok(None);
    };
    let supervisor = match (row.get::<Option<i32>>(9)?, row.get::<Option<u64>>(10)?) {
        (Some(pid), Some(start)) => Some((pid, start)),
        _ => None,
    };
    Ok(Some(JobRow {
        id: id.clone(),
        name: row.get(0)?,
        source: row.get(1)?,
        state: row.get::<String>(2)?.parse()?,
        reason: row.get(3)?,
        created_ms: row.get(4)?,
        started_ms: row.get(5)?,
        ended_ms: row.get(6)?,
        conductor_pid: row.get(7)?,
        conductor_start: row.get(8)?,
        supervisor,
        containment: row.get(11)?,
        cgroup: row.get::<Option<String>>(12)?.map(PathBuf::from),
        unresponsive_ms: row.get(13)?,
        paused_ms: row.get(14)?,
    }))
}

fn task_rows(db: &dyn Database, id: &JobId) -> Result<Vec<TaskRow>> {
    db.query(
        "SELECT idx, name, has_revert, state, attempts, exec_outcome, result, error, started_ms, ended_ms
         FROM tasks WHERE job_id = ?1 ORDER BY idx",
        args![id.as_str()],
    )?
    .iter()
    .map(task_row)
    .collect()
}

fn task_row(row: &Row) -> Result<TaskRow> {
    Ok(TaskRow {
        idx: row.get(0)?,
        name: row.get(1)?,
        has_revert: row.get(2)?,
        state: row.get::<String>(3)?.parse()?,
        attempts: row.get(4)?,
        exec_outcome: row
            .get::<Option<String>>(5)?
            .as_deref()
            .and_then(ExecOutcome::parse),
        result: row.get(6)?,
        error: row.get(7)?,
        started_ms: row.get(8)?,
        ended_ms: row.get(9)?,
    })
}

fn record_transition(
    db: &dyn Database,
    id: &JobId,
    task: Option<u32>,
    from: Option<&str>,
    to: &str,
    at_ms: i64,
    reason: Option<&str>,
) -> Result<()> {
    db.execute(
        "INSERT INTO transitions (job_id, task_idx, from_state, to_state, at_ms, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        args![id.as_str(), task, from, to, at_ms, reason],
    )?;
    Ok(())
}

/// Moves a task through the transition table.
fn change_task_state(
    db: &dyn Database,
    id: &JobId,
    idx: u32,
    from: TaskState,
    to: TaskState,
    reason: Option<&str>,
) -> Result<()> {
    from.transition(to)?;
    db.execute(
        "UPDATE tasks SET state = ?3 WHERE job_id = ?1 AND idx = ?2",
        args![id.as_str(), idx, to.as_str()],
    )?;
    record_transition(
        db,
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
