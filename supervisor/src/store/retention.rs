//! Retention: deleting finished jobs (`supervisor prune`, the daemon's `--keep`) and giving the
//! space back, and reading a job's output a page at a time.
//!
//! Space: a fresh store is created with `auto_vacuum = INCREMENTAL` (it can only be chosen
//! before the first table exists), so after a prune `PRAGMA incremental_vacuum` returns the
//! freed pages and a `wal_checkpoint(TRUNCATE)` shrinks the files, without the full rewrite
//! (and the twice-the-size disk space) a `VACUUM` needs. A store created before that gets it
//! with its first `prune --vacuum`.

use super::{OutputLine, Result, Store, checkpoint_truncate, pending_reverts, sql_list, task_rows};
use rusqlite::{Connection, params};
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
            let candidates = {
                let mut stmt = tx.prepare(&format!(
                    "SELECT id, state FROM jobs
                     WHERE state IN ({}) AND ended_ms IS NOT NULL AND ended_ms < ?1
                       AND conductor_exited = 1
                     ORDER BY seq",
                    sql_list(terminal)
                ))?;
                stmt.query_map([ended_before_ms], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?
            };
            let mut pruned = Vec::new();
            for (id, state) in candidates {
                let Some(id) = JobId::parse(&id) else {
                    continue;
                };
                let state: JobState = state.parse()?;
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

    /// Gives the space of deleted rows back to the file system: the freed pages (incremental
    /// vacuum; a no-op on a store created without it), then the WAL (checkpoint and truncate).
    /// With `full`, a `VACUUM` rewrites the whole database first (and turns incremental
    /// vacuuming on for an older store).
    pub fn reclaim(&self, full: bool) -> Result<()> {
        let conn = self.settled_conn();
        if full {
            conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
            conn.execute_batch("VACUUM")?;
        }
        conn.execute_batch("PRAGMA incremental_vacuum")?;
        checkpoint_truncate(&conn);
        Ok(())
    }

    /// At most `limit` of the job's output lines after the line numbered `after_id`, in order:
    /// a page, so that no reader holds a whole output in memory.
    pub fn output_page(&self, id: &JobId, after_id: i64, limit: u32) -> Result<Vec<OutputLine>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, task_idx, phase, stream, line FROM output
             WHERE job_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        )?;
        let rows = stmt
            .query_map(params![id.as_str(), after_id, limit], |row| {
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

/// Deletes job `id` with its tasks, transitions and output.
pub(super) fn delete_job(tx: &Connection, id: &JobId) -> Result<()> {
    for table in ["output", "transitions", "tasks"] {
        tx.execute(
            &format!("DELETE FROM {table} WHERE job_id = ?1"),
            [id.as_str()],
        )?;
    }
    tx.execute("DELETE FROM jobs WHERE id = ?1", [id.as_str()])?;
    Ok(())
}
