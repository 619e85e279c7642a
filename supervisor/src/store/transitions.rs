//! A job's state changes: compare-and-set, each with its checks in the same immediate
//! transaction, so that two orders racing on one job cannot both pass (review H4: two
//! concurrent `revert`s used to start two conductors).

use super::db::{Database, args};
use super::operators::stamp_order;
use super::{
    Result, Store, StoreError, TaskRow, change_task_state, live_states, now_ms, pending_reverts,
    record_transition, task_rows,
};
use shared::ids::JobId;
use shared::protocol::client::Requester;
use shared::state::{ExecOutcome, JobState, TaskState};

impl Store {
    /// Moves the job from one of `from` to `to`, in one immediate transaction; returns the state
    /// it was in. A job in a state not in `from` is refused ([`StoreError::WrongState`]), and so
    /// is a change the transition table forbids ([`StoreError::Illegal`]): `from == to` too.
    /// A terminal `to`, and `cancelling`, are fsynced.
    pub fn transition_job(
        &self,
        id: &JobId,
        from: &[JobState],
        to: JobState,
        reason: Option<&str>,
    ) -> Result<JobState> {
        let durable = !to.is_live() || to == JobState::Cancelling;
        self.write(durable, |tx| change_job_state(tx, id, from, to, reason))
    }

    /// `supervisor revert`: a killed, crashed or revert_failed job with at least one pending
    /// revert becomes `reverting`. Otherwise [`StoreError::WrongState`] or
    /// [`StoreError::NothingToRevert`].
    pub fn begin_revert(&self, id: &JobId, reason: &str) -> Result<()> {
        self.begin_revert_by(id, reason, None)
    }

    /// [`Store::begin_revert`], recording the operator who asked.
    pub fn begin_revert_by(&self, id: &JobId, reason: &str, by: Option<&Requester>) -> Result<()> {
        self.write(false, |tx| {
            let state = job_state(tx, id)?;
            let from = [JobState::Killed, JobState::Crashed, JobState::RevertFailed];
            refuse_unless(id, state, &from)?;
            if pending_reverts(&task_rows(tx, id)?).is_empty() {
                return Err(StoreError::NothingToRevert(id.clone()));
            }
            change_job_state(tx, id, &from, JobState::Reverting, Some(reason))?;
            stamp_order(tx, id, by)
        })
    }

    /// `supervisor resume`: a killed or crashed job none of whose tasks ever began reverting
    /// becomes `running`. Otherwise [`StoreError::WrongState`] or
    /// [`StoreError::AlreadyReverting`] (such a job can only be reverted).
    pub fn begin_resume(&self, id: &JobId, reason: &str) -> Result<()> {
        self.begin_resume_by(id, reason, None)
    }

    /// [`Store::begin_resume`], recording the operator who asked.
    pub fn begin_resume_by(&self, id: &JobId, reason: &str, by: Option<&Requester>) -> Result<()> {
        self.write(false, |tx| {
            let state = job_state(tx, id)?;
            let from = [JobState::Killed, JobState::Crashed];
            refuse_unless(id, state, &from)?;
            let began_reverting = task_rows(tx, id)?.iter().any(|t| {
                matches!(
                    t.state,
                    TaskState::Reverting | TaskState::Reverted | TaskState::RevertFailure
                )
            });
            if began_reverting {
                return Err(StoreError::AlreadyReverting(id.clone()));
            }
            change_job_state(tx, id, &from, JobState::Running, Some(reason))?;
            stamp_order(tx, id, by)
        })
    }

    /// After a kill or a crash of a live job (a pending one included), once no conductor of it
    /// runs: a task killed mid-execute becomes `failure` (killed), one killed mid-revert
    /// `revert_failure`; the job becomes `end` (killed or crashed) and its conductor is
    /// recorded as exited, in one commit. Fsynced. Returns the tasks whose revert is pending, in
    /// the order they must be reverted (last first). A job already ended is refused
    /// ([`StoreError::WrongState`]) and left as it is.
    pub fn record_hard_end(&self, id: &JobId, end: JobState, reason: &str) -> Result<Vec<TaskRow>> {
        self.record_hard_end_by(id, end, reason, None)
    }

    /// [`Store::record_hard_end`], recording the operator whose order caused it (a kill, or the
    /// cancel whose timer ran out).
    pub fn record_hard_end_by(
        &self,
        id: &JobId,
        end: JobState,
        reason: &str,
        by: Option<&Requester>,
    ) -> Result<Vec<TaskRow>> {
        self.write(true, |tx| {
            let live = live_states();
            refuse_unless(id, job_state(tx, id)?, &live)?;
            let now = now_ms();
            for task in task_rows(tx, id)? {
                let (to, outcome) = match task.state {
                    TaskState::Running => (TaskState::Failure, Some(ExecOutcome::Killed)),
                    TaskState::Reverting => (TaskState::RevertFailure, None),
                    _ => continue,
                };
                change_task_state(tx, id, task.idx, task.state, to, Some(reason))?;
                tx.execute(
                    "UPDATE tasks SET error = ?3, ended_ms = ?4, exec_outcome = COALESCE(?5, exec_outcome)
                     WHERE job_id = ?1 AND idx = ?2",
                    args![id.as_str(), task.idx, reason, now, outcome.map(ExecOutcome::as_str)],
                )?;
            }
            change_job_state(tx, id, &live, end, Some(reason))?;
            stamp_order(tx, id, by)?;
            tx.execute(
                "UPDATE jobs SET conductor_exited = 1 WHERE id = ?1",
                args![id.as_str()],
            )?;
            Ok(pending_reverts(&task_rows(tx, id)?))
        })
    }
}

/// The job's state; [`StoreError::UnknownJob`] if there is no such job.
pub(super) fn job_state(db: &dyn Database, id: &JobId) -> Result<JobState> {
    let state: String = db
        .query_opt("SELECT state FROM jobs WHERE id = ?1", args![id.as_str()])?
        .ok_or_else(|| StoreError::UnknownJob(id.clone()))?
        .get(0)?;
    Ok(state.parse()?)
}

fn refuse_unless(id: &JobId, state: JobState, from: &[JobState]) -> Result<()> {
    if from.contains(&state) {
        Ok(())
    } else {
        Err(StoreError::WrongState {
            id: id.clone(),
            state,
        })
    }
}

/// Compare-and-set of the job's state inside the caller's transaction: from one of `from` to
/// `to` through the transition table; records the transition; returns the previous state.
pub(super) fn change_job_state(
    db: &dyn Database,
    id: &JobId,
    from: &[JobState],
    to: JobState,
    reason: Option<&str>,
) -> Result<JobState> {
    let was = job_state(db, id)?;
    refuse_unless(id, was, from)?;
    was.transition(to)?;
    let now = now_ms();
    let ended = (!to.is_live()).then_some(now);
    let changed = db.execute(
        "UPDATE jobs SET state = ?3, reason = COALESCE(?4, reason), ended_ms = ?5
         WHERE id = ?1 AND state = ?2",
        args![id.as_str(), was.as_str(), to.as_str(), reason, ended],
    )?;
    if changed != 1 {
        // Cannot happen inside an immediate transaction; refuse rather than guess.
        return Err(StoreError::WrongState {
            id: id.clone(),
            state: job_state(db, id)?,
        });
    }
    record_transition(db, id, None, Some(was.as_str()), to.as_str(), now, reason)?;
    Ok(was)
}
