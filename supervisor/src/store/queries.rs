//! Read-side queries for the CLI: job lookup, `ls`, `status`.

use super::{Result, Store, StoreError, TaskRow, job_row, live_states, sql_list, task_rows};
use rusqlite::params;
use shared::ids::JobId;
use shared::protocol::client::{JobStatus, JobSummary, TaskStatus};
use shared::state::{JobState, TaskState};

impl Store {
    /// The id of a job named by the user; [`StoreError::BadJobId`] when the text is not an id,
    /// [`StoreError::UnknownJob`] when there is no such job.
    pub fn find_job(&self, text: &str) -> Result<JobId> {
        let id = parse_id(text.trim())?;
        let conn = self.conn();
        match job_row(&conn, &id)? {
            Some(_) => Ok(id),
            None => Err(StoreError::UnknownJob(id)),
        }
    }

    /// Jobs in submission order: the live ones, or all.
    pub fn list(&self, all: bool) -> Result<Vec<JobSummary>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT j.id, j.name, j.state, j.created_ms, j.paused_ms,
                    (SELECT t.name FROM tasks t WHERE t.job_id = j.id AND t.state != '{}'
                     ORDER BY t.started_ms DESC, t.idx DESC LIMIT 1)
             FROM jobs j
             WHERE ?1 OR j.state IN ({})
             ORDER BY j.seq",
            TaskState::Pending.as_str(),
            sql_list(live_states()),
        ))?;
        let rows = stmt
            .query_map(params![all], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, Option<i64>>(4)?,
                    row.get::<_, Option<String>>(5)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(id, name, state, created_ms, paused_since_ms, task)| {
                Ok(JobSummary {
                    id: parse_id(&id)?,
                    name,
                    state: state.parse()?,
                    task,
                    created_ms,
                    paused_since_ms,
                })
            })
            .collect()
    }

    /// The job and each of its tasks.
    pub fn status(&self, id: &JobId) -> Result<JobStatus> {
        let conn = self.conn();
        let job = job_row(&conn, id)?.ok_or_else(|| StoreError::UnknownJob(id.clone()))?;
        let tasks = task_rows(&conn, id)?;
        let last_order: Option<String> = conn
            .prepare_cached("SELECT last_order FROM jobs WHERE id = ?1")?
            .query_row([id.as_str()], |row| row.get(0))?;
        let accounting = matches!(
            job.state,
            JobState::Killed | JobState::Crashed | JobState::RevertFailed
        );
        Ok(JobStatus {
            id: id.clone(),
            name: job.name,
            state: job.state,
            reason: job.reason,
            source: job.source,
            created_ms: job.created_ms,
            started_ms: job.started_ms,
            ended_ms: job.ended_ms,
            conductor_pid: job.conductor_pid,
            containment: job.containment,
            unresponsive_since_ms: job.unresponsive_ms,
            last_order: super::operators::decode(last_order.as_deref()),
            paused_since_ms: job.paused_ms,
            tasks: tasks
                .into_iter()
                .map(|t| task_status(t, accounting))
                .collect(),
        })
    }

    /// Jobs whose conductor may still run: the live ones, and any whose conductor's exit nobody
    /// saw (a daemon that died between storing a job's end and acknowledging it leaves such a
    /// conductor waiting for the acknowledgement). A new daemon must re-attach to them.
    pub fn attached_jobs(&self) -> Result<Vec<super::JobRow>> {
        let ids: Vec<String> = {
            let conn = self.conn();
            let attached = live_states()
                .into_iter()
                .filter(|s| *s != JobState::Pending);
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT id FROM jobs WHERE state IN ({}) OR conductor_exited = 0 ORDER BY seq",
                sql_list(attached),
            ))?;
            stmt.query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?
        };
        ids.iter().map(|id| self.job(&parse_id(id)?)).collect()
    }

    /// Pending jobs in submission order.
    pub fn queued_jobs(&self) -> Result<Vec<JobId>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT id FROM jobs WHERE state = ?1 ORDER BY seq")?;
        let ids = stmt
            .query_map([JobState::Pending.as_str()], |row| row.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        ids.iter().map(|id| parse_id(id)).collect()
    }
}

/// A job id, typed by a user or stored; [`StoreError::BadJobId`] if it is not one.
fn parse_id(text: &str) -> Result<JobId> {
    JobId::parse(text).ok_or_else(|| StoreError::BadJobId(text.to_owned()))
}

fn task_status(task: TaskRow, accounting: bool) -> TaskStatus {
    let revert_pending = accounting && task.revert_began_or_needed();
    TaskStatus {
        revert_pending,
        name: task.name,
        state: task.state,
        attempts: task.attempts,
        exec_outcome: task.exec_outcome,
        result: task.result,
        error: task.error,
        started_ms: task.started_ms,
        ended_ms: task.ended_ms,
    }
}
