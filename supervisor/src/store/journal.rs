//! What the board's journal needs of the store (ARCHITECTURE.md, The job board): a job created
//! under the id the board gave it, the rows its owner writes to the board, and a job rescued
//! from a lost host imported with its tasks as that host last wrote them.

use super::db::{Database, args};
use super::retention::delete_job;
use super::transitions::change_job_state;
use super::{
    Result, Store, StoreError, TaskRow, change_task_state, insert_job, is_taken, job_row, now_ms,
    random_u32, task_rows,
};
use shared::ids::JobId;
use shared::protocol::client::JobSummary;
use shared::spec::JobSpec;
use shared::state::{ExecOutcome, JobState, TaskState};

/// A task of a rescued job, as the lost host last wrote it on the board.
#[derive(Clone, Debug)]
pub struct ImportedTask {
    pub idx: u32,
    pub state: TaskState,
    pub attempts: u32,
    /// An `ExecOutcome` name, as the store keeps it.
    pub exec_outcome: Option<String>,
    pub result: String,
}

/// One job as its owner writes it to the board: its summary, its reason, its tasks.
pub type JournalRow = (JobSummary, Option<String>, Vec<TaskRow>);

/// A job id drawn at random for a submit on a board: the board's insert refuses one another
/// job of the board has, [`Store::create_job_as`] one this store has (each then drawn again).
#[must_use]
pub fn draw_id() -> JobId {
    JobId::from_random(random_u32())
}

impl Store {
    /// [`Store::create_job`] under the id `id` the board gave the job, its spec already
    /// encoded as `spec_json` (durable before it returns); [`StoreError::IdTaken`] if this
    /// store has a job `id`.
    pub fn create_job_as(
        &self,
        spec: &JobSpec,
        spec_json: &str,
        source: &str,
        id: &JobId,
    ) -> Result<()> {
        self.write(true, |tx| {
            insert_job(tx, spec, spec_json, source, Some(id)).map(drop)
        })
    }

    /// The summary, reason and tasks of each of `ids` (a job the store does not have is left
    /// out).
    pub fn journal_rows(&self, ids: &[JobId]) -> Result<Vec<JournalRow>> {
        let summaries = self.summaries(ids)?;
        let db = self.db();
        let mut rows = Vec::with_capacity(summaries.len());
        for summary in summaries {
            let reason: Option<String> = db
                .query_one(
                    "SELECT reason FROM jobs WHERE id = ?1",
                    args![summary.id.as_str()],
                )?
                .get(0)?;
            let tasks = task_rows(&**db, &summary.id)?;
            rows.push((summary, reason, tasks));
        }
        Ok(rows)
    }

    /// Imports job `id` taken from the board: its spec (JSON, as validated at submit) and
    /// file, its tasks as the board has them. Rescued from a lost host (`crashed` is the
    /// reason): a task left `running` becomes `failure` (killed) and one left `reverting`
    /// `revert_failure`, as after a crash here, and the job `crashed` with that reason.
    /// Claimed (`crashed` `None`, nothing ran): the job stays `pending`, for the scheduler.
    /// Durable before it returns. A copy of the job this store
    /// kept from an earlier stint on this host (ended, its conductor gone) is replaced;
    /// [`StoreError::IdTaken`] if this store has a live job `id`.
    pub fn import_job(
        &self,
        id: &JobId,
        spec_json: &str,
        source: &str,
        crashed: Option<&str>,
        tasks: &[ImportedTask],
    ) -> Result<()> {
        let spec: JobSpec =
            serde_json::from_str(spec_json).map_err(|e| StoreError::BadSpec(id.clone(), e))?;
        self.write(true, |tx| {
            if is_taken(tx, id)? {
                let old = job_row(tx, id)?.ok_or_else(|| StoreError::UnknownJob(id.clone()))?;
                if old.state.is_live() || !is_conductor_gone(tx, id)? {
                    return Err(StoreError::IdTaken(id.clone()));
                }
                delete_job(tx, id)?;
            }
            insert_job(tx, &spec, spec_json, source, Some(id))?;
            for task in tasks {
                tx.execute(
                    "UPDATE tasks SET state = ?3, attempts = ?4, exec_outcome = ?5, result = ?6
                     WHERE job_id = ?1 AND idx = ?2",
                    args![
                        id.as_str(),
                        task.idx,
                        task.state.as_str(),
                        task.attempts,
                        task.exec_outcome.as_deref(),
                        &task.result
                    ],
                )?;
                let Some(reason) = crashed else {
                    continue;
                };
                let lost = match task.state {
                    TaskState::Running => TaskState::Failure,
                    TaskState::Reverting => TaskState::RevertFailure,
                    _ => continue,
                };
                change_task_state(tx, id, task.idx, task.state, lost, Some(reason))?;
                let outcome = (lost == TaskState::Failure).then_some(ExecOutcome::Killed.as_str());
                tx.execute(
                    "UPDATE tasks SET error = ?3, ended_ms = ?4, exec_outcome = COALESCE(?5, exec_outcome)
                     WHERE job_id = ?1 AND idx = ?2",
                    args![id.as_str(), task.idx, reason, now_ms(), outcome],
                )?;
            }
            if let Some(reason) = crashed {
                change_job_state(tx, id, &[JobState::Pending], JobState::Crashed, Some(reason))?;
            }
            Ok(())
        })
    }
}

/// Whether the job's conductor was seen gone.
fn is_conductor_gone(db: &dyn Database, id: &JobId) -> Result<bool> {
    db.query_one(
        "SELECT conductor_exited FROM jobs WHERE id = ?1",
        args![id.as_str()],
    )?
    .get(0)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::store::pending_reverts;
    use crate::store::tests::Backend;

    const TWO_TASKS: &str = "[[task]]\nname = \"a\"\nrun = \"true\"\nrevert = \"true\"\n[[task]]\nname = \"b\"\nrun = \"true\"\nrevert = \"true\"\n";

    fn imported(idx: u32, state: TaskState, outcome: Option<&str>) -> ImportedTask {
        ImportedTask {
            idx,
            state,
            attempts: 1,
            exec_outcome: outcome.map(str::to_owned),
            result: String::new(),
        }
    }

    /// A rescued job is imported as a crash here would leave it: the running task failed
    /// (killed), both reverts pending, the job crashed with the reason; an ended local copy
    /// from an earlier stint is replaced, a live one refused.
    pub(in crate::store) fn a_rescued_job_is_imported_crashed_with_its_reverts_pending(
        backend: &Backend,
    ) {
        let store = backend.open();
        let spec = JobSpec::parse(TWO_TASKS, "t.toml", "t").expect("spec");
        let json = serde_json::to_string(&spec).expect("json");
        let id = draw_id();
        let tasks = [
            imported(0, TaskState::Success, Some("success")),
            imported(1, TaskState::Running, None),
        ];
        for _ in 0..2 {
            store
                .import_job(&id, &json, "/t.toml", Some("host lost: a"), &tasks)
                .expect("import");
            let job = store.job(&id).expect("job");
            assert_eq!(job.state, JobState::Crashed);
            assert_eq!(job.reason.as_deref(), Some("host lost: a"));
            let rows = store.tasks(&id).expect("tasks");
            assert_eq!(rows[1].state, TaskState::Failure);
            assert_eq!(rows[1].exec_outcome, Some(ExecOutcome::Killed));
            let pending: Vec<u32> = pending_reverts(&rows).iter().map(|t| t.idx).collect();
            assert_eq!(pending, [1, 0]);
        }
        store.begin_resume(&id, "test").expect("resume");
        assert!(matches!(
            store.import_job(&id, &json, "/t.toml", Some("host lost: a"), &tasks),
            Err(StoreError::IdTaken(_))
        ));
    }

    /// A claimed job (no crash reason) is imported `pending`, its tasks as written (all
    /// pending: nothing ran), for the scheduler to start.
    pub(in crate::store) fn a_claimed_job_is_imported_pending(backend: &Backend) {
        let store = backend.open();
        let spec = JobSpec::parse(TWO_TASKS, "t.toml", "t").expect("spec");
        let json = serde_json::to_string(&spec).expect("json");
        let id = draw_id();
        store
            .import_job(&id, &json, "/t.toml", None, &[])
            .expect("import");
        assert_eq!(store.job(&id).expect("job").state, JobState::Pending);
        assert_eq!(
            store.queued_jobs().expect("queue"),
            std::slice::from_ref(&id)
        );
        let rows = store.tasks(&id).expect("tasks");
        assert!(rows.iter().all(|t| t.state == TaskState::Pending));
    }
}
