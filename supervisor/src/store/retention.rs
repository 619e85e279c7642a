//! Retention: deleting finished jobs (`supervisor prune`, the daemon's `--keep`) and giving the
//! space back, and reading a job's output a page at a time.
//!
//! Space on SQLite: a fresh store is created with `auto_vacuum = INCREMENTAL` (it can only be
//! chosen before the first table exists), so after a prune `PRAGMA incremental_vacuum` returns
//! the freed pages and a `wal_checkpoint(TRUNCATE)` shrinks the files, without the full rewrite
//! (and the twice-the-size disk space) a `VACUUM` needs. A store created before that gets it
//! with its first `prune --vacuum`. On PostgreSQL, a `VACUUM` of the store's tables.

use super::db::{Database, args};
use super::{OutputLine, Result, Store, pending_reverts, sql_list, task_rows};
use shared::ids::JobId;
use shared::state::JobState;

/// The terminal states whose jobs may still owe reverts: kept by default when they do.
const MAY_OWE_REVERTS: [JobState; 3] =
    [JobState::Killed, JobState::Crashed, JobState::RevertFailed];

impl Store {
    /// Deletes every job that ended before `ended_before_ms` (ms since the epoch) and whose
    /// conductor is gone, with its tasks, transitions and output; returns their ids. `states`
    /// empty: any terminal state, except jobs that still owe reverts (a killed, crashed or
    /// revert_failed job with a pending revert); else only those states, and a job that owes
    /// reverts goes too when its state is named. Live states are never pruned.
    pub fn prune(&self, ended_before_ms: i64, states: &[JobState]) -> Result<Vec<JobId>> {
        let terminal: Vec<JobState> = JobState::ALL
            .into_iter()
            .filter(|s| !s.is_live() && (states.is_empty() || states.contains(s)))
            .collect();
        if terminal.is_empty() {
            return Ok(Vec::new());
        }
        self.write(false, |tx| {
            let candidates = tx.query(
                &format!(
                    "SELECT id, state FROM jobs
                     WHERE state IN ({}) AND ended_ms IS NOT NULL AND ended_ms < ?1
                       AND conductor_exited = 1
                     ORDER BY seq",
                    sql_list(terminal)
                ),
                args![ended_before_ms],
            )?;
            let mut pruned = Vec::new();
            for row in candidates {
                let Some(id) = JobId::parse(&row.get::<String>(0)?) else {
                    continue;
                };
                let state: JobState = row.get::<String>(1)?.parse()?;
                let named = states.contains(&state);
                if !named
                    && MAY_OWE_REVERTS.contains(&state)
                    && !pending_reverts(&task_rows(tx, &id)?).is_empty()
                {
                    continue;
                }
                delete_job(tx, &id)?;
                pruned.push(id);
            }
            Ok(pruned)
        })
    }

    /// Gives the space of deleted rows back to the file system ([`Database::reclaim`]); with
    /// `full`, the whole database is rewritten first.
    pub fn reclaim(&self, full: bool) -> Result<()> {
        self.settled_db().reclaim(full)
    }

    /// At most `limit` of the job's output lines after the line numbered `after_id`, in order:
    /// a page, so that no reader holds a whole output in memory.
    pub fn output_page(&self, id: &JobId, after_id: i64, limit: u32) -> Result<Vec<OutputLine>> {
        self.db()
            .query(
                "SELECT id, task_idx, phase, stream, line FROM output
                 WHERE job_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
                args![id.as_str(), after_id, limit],
            )?
            .iter()
            .map(|row| {
                Ok(OutputLine {
                    id: row.get(0)?,
                    task: row.get(1)?,
                    phase: row.get(2)?,
                    stream: row.get(3)?,
                    line: row.get(4)?,
                })
            })
            .collect()
    }
}

/// Deletes job `id` with its tasks, transitions and output.
pub(super) fn delete_job(tx: &dyn Database, id: &JobId) -> Result<()> {
    for table in ["output", "transitions", "tasks"] {
        tx.execute(
            &format!("DELETE FROM {table} WHERE job_id = ?1"),
            args![id.as_str()],
        )?;
    }
    tx.execute("DELETE FROM jobs WHERE id = ?1", args![id.as_str()])?;
    Ok(())
}
