//! The store: SQLite (WAL) in the state dir, the single truth about jobs.
//!
//! Durability: the commits that must survive a power loss before anything acts on them (a
//! stored job, a write-ahead record, a job's end) are fsynced (`synchronous=FULL`); the others
//! are not (`NORMAL`), and become durable with the next fsynced commit (the WAL is sequential).
//! `SUPERVISOR_DURABILITY=normal` trades the fsyncs away: still safe against crashes of any
//! process, not against a power loss or a kernel crash.
//!
//! Jobs, tasks, every state change with its time ([`transitions`](SCHEMA)), results, failure
//! reasons, and each job's task output. Every state change goes through the transition functions
//! of `shared::state`; an illegal one is a [`StoreError::Illegal`], logged by the caller.

mod interim;
mod queries;
mod reports;

pub use interim::StoreHandle;

use rusqlite::{Connection, OptionalExtension, params};
use shared::ids::JobId;
use shared::spec::JobSpec;
use shared::state::{ExecOutcome, InvalidTransition, JobState, TaskState};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The schema; `CREATE ... IF NOT EXISTS`, so opening an existing store is a no-op.
const SCHEMA: &str = "
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
    conductor_exited INTEGER NOT NULL DEFAULT 1 -- 0 from the spawn until the exit is seen
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
    reason    TEXT
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

/// Bumped on every change of [`SCHEMA`]; a store of another version is refused, not guessed at.
const SCHEMA_VERSION: i64 = 2;

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
    #[error("stored spec of job {0} is unreadable: {1}")]
    BadSpec(JobId, serde_json::Error),
    #[error(
        "the store was made by another version of supervisor (schema {found}, this one reads {expected}): use another state dir"
    )]
    Schema { found: i64, expected: i64 },
    #[error("stored state is unreadable: {0}")]
    BadState(#[from] shared::state::UnknownState),
    #[error("job {id} is {state}")]
    WrongState { id: JobId, state: JobState },
    #[error("job {0} has no pending revert")]
    NothingToRevert(JobId),
    #[error("job {0} already began reverting: use `supervisor revert {0}`")]
    AlreadyReverting(JobId),
    #[error("the store is unavailable: {0}")]
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

/// The store; cheap to share behind an `Arc`. Each call is one short transaction.
pub struct Store {
    conn: Mutex<Connection>,
    /// Whether durable commits are fsynced.
    fsync: bool,
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

/// Milliseconds since the Unix epoch.
#[must_use]
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Store {
    /// Opens (creating if needed) `state.db` in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let conn = Connection::open(dir.join("state.db"))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // A small WAL: checkpointed every 200 pages (800 KiB) and truncated back to 1 MiB, so
        // that a nearly full disk can still absorb it into the database (the default 4 MiB WAL
        // can fill a small disk and then never be checkpointed).
        conn.pragma_update(None, "wal_autocheckpoint", 200)?;
        conn.pragma_update(None, "journal_size_limit", 1024 * 1024)?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        let has_jobs = conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'jobs'",
                [],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if has_jobs && version != SCHEMA_VERSION {
            return Err(StoreError::Schema {
                found: version,
                expected: SCHEMA_VERSION,
            });
        }
        conn.execute_batch(SCHEMA)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        let fsync = std::env::var("SUPERVISOR_DURABILITY").map_or(true, |mode| mode != "normal");
        Ok(Self {
            conn: Mutex::new(conn),
            fsync,
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `write` in one transaction, fsynced at commit when `durable` (and fsyncs are on).
    fn write<T>(
        &self,
        durable: bool,
        write: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut conn = self.conn();
        let full = durable && self.fsync;
        if full {
            conn.pragma_update(None, "synchronous", "FULL")?;
        }
        let result = conn.transaction().map_err(StoreError::from).and_then(|tx| {
            let value = write(&tx)?;
            tx.commit()?;
            Ok(value)
        });
        if full {
            conn.pragma_update(None, "synchronous", "NORMAL")?;
        }
        result
    }

    /// After a full disk: moves the WAL into the database and truncates it, which gives back
    /// the space the WAL held (it only grows until a checkpoint, and a full disk can stop those).
    pub fn reclaim_space(&self) {
        let conn = self.conn();
        let result = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
            row.get::<_, i64>(0)
        });
        tracing::info!(?result, "store: checkpointed the WAL to reclaim space");
    }

    /// Stores a new `pending` job and its tasks; returns its fresh id.
    pub fn create_job(&self, spec: &JobSpec, source: &str) -> Result<JobId> {
        let spec_json = serde_json::to_string(spec)
            .map_err(|e| StoreError::BadSpec(JobId::from_random(0), e))?;
        // Durable before `submit` answers with the id.
        self.write(true, |tx| {
        let now = now_ms();
        let id = loop {
            let id = JobId::from_random(random_u32());
            let taken: bool = tx
                .query_row(
                    "SELECT 1 FROM jobs WHERE id = ?1",
                    [id.as_str()],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if !taken {
                break id;
            }
        };
        tx.execute(
            "INSERT INTO jobs (id, seq, name, source, spec, state, created_ms)
             VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs), ?2, ?3, ?4, ?5, ?6)",
            params![
                id.as_str(),
                spec.name,
                source,
                spec_json,
                JobState::Pending.as_str(),
                now
            ],
        )?;
        for (idx, task) in spec.tasks.iter().enumerate() {
            tx.execute(
                "INSERT INTO tasks (job_id, idx, name, has_revert, state) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id.as_str(), u32::try_from(idx).unwrap_or(u32::MAX), task.name, task.body.has_revert(), TaskState::Pending.as_str()],
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
        })
    }

    /// The job's spec as it was validated at submission.
    pub fn spec(&self, id: &JobId) -> Result<JobSpec> {
        let text: String = self
            .conn()
            .query_row(
                "SELECT spec FROM jobs WHERE id = ?1",
                [id.as_str()],
                |row| row.get(0),
            )
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

    /// Moves the job to `to` through the transition table.
    pub fn set_job_state(&self, id: &JobId, to: JobState, reason: Option<&str>) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        change_job_state(&tx, id, to, reason)?;
        tx.commit()?;
        Ok(())
    }

    /// Records the conductor now serving the job, and this process as its supervisor; the
    /// conductor's reports are numbered afresh.
    pub fn set_conductor(
        &self,
        id: &JobId,
        pid: i32,
        start_time: u64,
        socket: &Path,
    ) -> Result<()> {
        let (me, my_start) = own_identity();
        self.conn().execute(
            "UPDATE jobs SET conductor_pid = ?2, conductor_start = ?3, socket = ?4, last_report = 0, conductor_exited = 0,
                             started_ms = COALESCE(started_ms, ?5), supervisor_pid = ?6, supervisor_start = ?7
             WHERE id = ?1",
            params![
                id.as_str(),
                pid,
                i64::try_from(start_time).unwrap_or(i64::MAX),
                socket.to_string_lossy(),
                now_ms(),
                me,
                my_start
            ],
        )?;
        Ok(())
    }

    /// Records that the job's conductor is gone (seen exit, or found dead).
    pub fn set_conductor_exited(&self, id: &JobId) -> Result<()> {
        self.conn().execute(
            "UPDATE jobs SET conductor_exited = 1 WHERE id = ?1",
            [id.as_str()],
        )?;
        Ok(())
    }

    /// Records how the job is contained (`cgroup` with its path, or `session`).
    pub fn set_containment(&self, id: &JobId, mode: &str, cgroup: Option<&Path>) -> Result<()> {
        self.conn().execute(
            "UPDATE jobs SET containment = ?2, cgroup = ?3 WHERE id = ?1",
            params![
                id.as_str(),
                mode,
                cgroup.map(|p| p.to_string_lossy().into_owned())
            ],
        )?;
        Ok(())
    }

    /// Marks the conductor unresponsive since `since_ms`, or responsive again (`None`).
    pub fn set_unresponsive(&self, id: &JobId, since_ms: Option<i64>) -> Result<()> {
        self.conn().execute(
            "UPDATE jobs SET unresponsive_ms = ?2 WHERE id = ?1",
            params![id.as_str(), since_ms],
        )?;
        Ok(())
    }

    /// Records this process as the job's supervisor (so that no other one adopts it meanwhile).
    pub fn claim(&self, id: &JobId) -> Result<()> {
        let (me, my_start) = own_identity();
        self.conn().execute(
            "UPDATE jobs SET supervisor_pid = ?2, supervisor_start = ?3 WHERE id = ?1",
            params![id.as_str(), me, my_start],
        )?;
        Ok(())
    }

    /// After a kill or a crash: a task killed mid-execute becomes `failure` (killed), one killed
    /// mid-revert `revert_failure`; the job becomes `end` (killed or crashed). Returns the tasks
    /// whose revert is pending, in the order they must be reverted (last first).
    pub fn record_hard_end(&self, id: &JobId, end: JobState, reason: &str) -> Result<Vec<TaskRow>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let now = now_ms();
        for task in task_rows(&tx, id)? {
            let (to, outcome) = match task.state {
                TaskState::Running => (TaskState::Failure, Some(ExecOutcome::Killed)),
                TaskState::Reverting => (TaskState::RevertFailure, None),
                _ => continue,
            };
            change_task_state(&tx, id, task.idx, task.state, to, Some(reason))?;
            tx.execute(
                "UPDATE tasks SET error = ?3, ended_ms = ?4, exec_outcome = COALESCE(?5, exec_outcome)
                 WHERE job_id = ?1 AND idx = ?2",
                params![id.as_str(), task.idx, reason, now, outcome.map(ExecOutcome::as_str)],
            )?;
        }
        change_job_state(&tx, id, end, Some(reason))?;
        let pending = pending_reverts(&task_rows(&tx, id)?);
        tx.commit()?;
        Ok(pending)
    }

    /// The job's output lines after the line numbered `after_id`, in order.
    pub fn output(&self, id: &JobId, after_id: i64) -> Result<Vec<OutputLine>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, task_idx, phase, stream, line FROM output WHERE job_id = ?1 AND id > ?2 ORDER BY id",
        )?;
        let rows = stmt
            .query_map(params![id.as_str(), after_id], |row| {
                Ok(OutputLine {
                    id: row.get(0)?,
                    task: row.get(1)?,
                    phase: row.get(2)?,
                    stream: row.get(3)?,
                    line: row.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }
}

/// The tasks whose revert is pending, last first: their execute began and their revert has not
/// completed. Tasks without a revert command have nothing to compensate and are never pending.
#[must_use]
pub fn pending_reverts(tasks: &[TaskRow]) -> Vec<TaskRow> {
    tasks
        .iter()
        .rev()
        .filter(|t| t.revert_began_or_needed())
        .cloned()
        .collect()
}

/// This process's pid and start time, as stored for a supervisor.
fn own_identity() -> (u32, i64) {
    let me = std::process::id();
    let start = i32::try_from(me)
        .ok()
        .and_then(crate::process::start_time)
        .unwrap_or(0);
    (me, i64::try_from(start).unwrap_or(i64::MAX))
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
        .query_row(
            "SELECT name, source, state, reason, created_ms, started_ms, ended_ms,
                    conductor_pid, conductor_start, supervisor_pid, supervisor_start,
                    containment, cgroup, unresponsive_ms
             FROM jobs WHERE id = ?1",
            [id.as_str()],
            |row| {
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
                };
                Ok((job, state))
            },
        )
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

/// Moves the job through the transition table (no-op when it is already in `to`).
fn change_job_state(
    conn: &Connection,
    id: &JobId,
    to: JobState,
    reason: Option<&str>,
) -> Result<()> {
    let from = job_row(conn, id)?
        .ok_or_else(|| StoreError::UnknownJob(id.clone()))?
        .state;
    if from == to {
        return Ok(());
    }
    from.transition(to)?;
    let now = now_ms();
    let ended = (!to.is_live()).then_some(now);
    conn.execute(
        "UPDATE jobs SET state = ?2, reason = COALESCE(?3, reason), ended_ms = ?4 WHERE id = ?1",
        params![id.as_str(), to.as_str(), reason, ended],
    )?;
    record_transition(
        conn,
        id,
        None,
        Some(from.as_str()),
        to.as_str(),
        now,
        reason,
    )
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
