//! Read-side queries for the CLI: job lookup, `ls`, `status`.

use super::{Result, Store, StoreError, TaskRow, job_row, task_rows};
use rusqlite::params;
use shared::ids::JobId;
use shared::protocol::client::{JobStatus, JobSummary, TaskStatus};
use shared::state::JobState;

impl Store {
    /// The id of a job named by the user; [`StoreError::UnknownJob`] when there is none.
    pub fn find_job(&self, text: &str) -> Result<JobId> {
        let id = JobId::parse(text.trim())
            .ok_or_else(|| StoreError::UnknownJob(JobId::from_random(0)))?;
        let conn = self.conn();
        match job_row(&conn, &id)? {
            Some(_) => Ok(id),
            None => Err(StoreError::UnknownJob(id)),
        }
    }

    /// Jobs in submission order: the live ones, or all.
    pub fn list(&self, all: bool) -> Result<Vec<JobSummary>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT j.id, j.name, j.state, j.created_ms,
                    (SELECT t.name FROM tasks t WHERE t.job_id = j.id AND t.state != 'pending'
                     ORDER BY t.started_ms DESC, t.idx DESC LIMIT 1)
             FROM jobs j
             WHERE ?1 OR j.state IN ('pending', 'running', 'cancelling', 'reverting')
             ORDER BY j.seq",
        )?;
        let rows = stmt
            .query_map(params![all], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, Option<String>>(4)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .filter_map(|(id, name, state, created_ms, task)| {
                let id = JobId::parse(&id)?;
                Some(state.parse::<JobState>().map(|state| JobSummary {
                    id,
                    name,
                    state,
                    task,
                    created_ms,
                }))
            })
            .map(|r| r.map_err(StoreError::from))
            .collect()
    }

    /// The job and each of its tasks.
    pub fn status(&self, id: &JobId) -> Result<JobStatus> {
        let conn = self.conn();
        let job = job_row(&conn, id)?.ok_or_else(|| StoreError::UnknownJob(id.clone()))?;
        let tasks = task_rows(&conn, id)?;
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
            let mut stmt = conn.prepare_cached(
                "SELECT id FROM jobs WHERE state IN ('running', 'cancelling', 'reverting') OR conductor_exited = 0 ORDER BY seq",
            )?;
            stmt.query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?
        };
        ids.iter()
            .filter_map(|id| JobId::parse(id))
            .map(|id| self.job(&id))
            .collect()
    }

    /// Pending jobs in submission order.
    pub fn queued_jobs(&self) -> Result<Vec<JobId>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT id FROM jobs WHERE state = 'pending' ORDER BY seq")?;
        let ids = stmt
            .query_map([], |row| row.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(ids.iter().filter_map(|id| JobId::parse(id)).collect())
    }
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
