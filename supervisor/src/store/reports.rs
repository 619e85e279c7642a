//! Applying a conductor's numbered reports to the store: each once, in order, in one transaction
//! per batch, so that the acknowledgement that follows means "durable".

use super::db::{Database, args};
use super::transitions::{change_job_state, job_state};
use super::{Result, Store, StoreError, change_task_state, now_ms};
use shared::ids::JobId;
use shared::protocol::conductor::{JobEvent, Phase, Report, StepOutcome};
use shared::state::{ExecOutcome, JobState, TaskState};

/// What a batch did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The highest report seq the store holds: the acknowledgement to send.
    pub held: u64,
    /// Index in the batch of the first report applied now (the ones before were already held).
    pub fresh_from: usize,
}

impl Store {
    /// Applies `reports` (in seq order) that the store does not hold yet, in one transaction.
    ///
    /// A report that would make an illegal transition is logged and skipped, and still counts
    /// as held: the conductor must not wait forever for it. Reports already held (replays after
    /// a reconnection) are skipped. A batch whose fresh reports do not continue the held ones
    /// without a gap is refused whole ([`StoreError::ReportGap`]): a report was lost, and the
    /// caller must drop the link so that the conductor sends again from its first unacknowledged
    /// report. On a full disk, the WAL is checkpointed before the error returns.
    pub fn apply_reports(&self, id: &JobId, reports: &[Report]) -> Result<Applied> {
        // A write-ahead record, or the job's end, must be durable before it is acknowledged;
        // the rest rides along with the next such commit.
        let durable = reports.iter().any(|r| {
            matches!(
                r.event,
                JobEvent::TaskStarting { .. }
                    | JobEvent::JobFinished { .. }
                    | JobEvent::Fenced { .. }
            )
        });
        self.write(durable, |tx| apply_in(tx, id, reports))
    }
}

fn apply_in(tx: &dyn Database, id: &JobId, reports: &[Report]) -> Result<Applied> {
    let held: u64 = tx
        .query_opt(
            "SELECT last_report FROM jobs WHERE id = ?1",
            args![id.as_str()],
        )?
        .ok_or_else(|| StoreError::UnknownJob(id.clone()))?
        .get(0)?;
    let fresh_from = reports
        .iter()
        .position(|r| r.seq > held)
        .unwrap_or(reports.len());
    check_no_gap(held, &reports[fresh_from..])?;
    let mut last = held;
    for report in &reports[fresh_from..] {
        match apply_one(tx, id, &report.event) {
            Ok(()) => {}
            Err(StoreError::Illegal(err)) => {
                tracing::error!(job_id = %id, seq = report.seq, event = ?report.event, error = %err, "illegal transition reported by the conductor");
            }
            Err(other) => return Err(other),
        }
        last = report.seq;
    }
    if last != held {
        tx.execute(
            "UPDATE jobs SET last_report = ?2 WHERE id = ?1",
            args![id.as_str(), last],
        )?;
    }
    Ok(Applied {
        held: last,
        fresh_from,
    })
}

/// The fresh reports must number on from `held` one by one.
fn check_no_gap(held: u64, fresh: &[Report]) -> Result<()> {
    let mut expected = held.saturating_add(1);
    for report in fresh {
        if report.seq != expected {
            return Err(StoreError::ReportGap {
                expected,
                got: report.seq,
            });
        }
        expected = expected.saturating_add(1);
    }
    Ok(())
}

fn task_state(db: &dyn Database, id: &JobId, task: u32) -> Result<TaskState> {
    let state: String = db
        .query_one(
            "SELECT state FROM tasks WHERE job_id = ?1 AND idx = ?2",
            args![id.as_str(), task],
        )?
        .get(0)?;
    Ok(state.parse()?)
}

fn apply_one(db: &dyn Database, id: &JobId, event: &JobEvent) -> Result<()> {
    let now = now_ms();
    match event {
        JobEvent::TaskStarting {
            task,
            phase,
            attempt,
        } => {
            let from = task_state(db, id, *task)?;
            match phase {
                Phase::Execute => {
                    change_task_state(db, id, *task, from, TaskState::Running, None)?;
                    db.execute(
                        "UPDATE tasks SET attempts = ?3, started_ms = ?4, ended_ms = NULL, error = NULL, pid = NULL
                         WHERE job_id = ?1 AND idx = ?2",
                        args![id.as_str(), *task, *attempt, now],
                    )?;
                    // A resume plan executes again once it reverted the interrupted tasks.
                    move_job_if(
                        db,
                        id,
                        (JobState::Reverting, JobState::Running),
                        "resuming after reverting the interrupted tasks",
                    )?;
                }
                Phase::Revert => {
                    // Each attempt of a revert with `revert_retries` is its own transition.
                    let why = (*attempt > 1).then(|| format!("revert attempt {attempt}"));
                    change_task_state(db, id, *task, from, TaskState::Reverting, why.as_deref())?;
                    db.execute(
                        "UPDATE tasks SET pid = NULL WHERE job_id = ?1 AND idx = ?2",
                        args![id.as_str(), *task],
                    )?;
                    move_job_if(
                        db,
                        id,
                        (JobState::Running, JobState::Reverting),
                        "reverting",
                    )?;
                }
            }
        }
        JobEvent::TaskSpawned { task, pid, .. } => {
            db.execute(
                "UPDATE tasks SET pid = ?3 WHERE job_id = ?1 AND idx = ?2",
                args![id.as_str(), *task, *pid],
            )?;
        }
        JobEvent::Output {
            task,
            phase,
            stream,
            line,
        } => {
            db.execute(
                "INSERT INTO output (job_id, task_idx, phase, stream, line, at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                args![id.as_str(), *task, phase.as_str(), stream.as_str(), line, now],
            )?;
        }
        JobEvent::TaskFinished {
            task,
            phase,
            outcome,
        } => finish_task(db, id, *task, *phase, outcome, now)?,
        JobEvent::Cancelling { reason } => {
            let from = [JobState::Running, JobState::Reverting];
            if from.contains(&job_state(db, id)?) {
                change_job_state(db, id, &from, JobState::Cancelling, Some(reason))?;
            }
        }
        JobEvent::JobFinished { state } => {
            // Any state: the transition table decides (an illegal end is logged and held).
            change_job_state(db, id, &JobState::ALL, *state, None)?;
        }
        // The conductor killed its steps at its fence and exits: the job actor records the
        // hard end (`killed`, the reverts skipped) once it is gone, as after a kill.
        JobEvent::Fenced { .. } => {}
    }
    Ok(())
}

/// Moves the job from `from` to `to` (with `reason`) if it is in `from`; else leaves it.
fn move_job_if(
    db: &dyn Database,
    id: &JobId,
    (from, to): (JobState, JobState),
    reason: &str,
) -> Result<()> {
    if job_state(db, id)? == from {
        change_job_state(db, id, &[from], to, Some(reason))?;
    }
    Ok(())
}

fn finish_task(
    db: &dyn Database,
    id: &JobId,
    task: u32,
    phase: Phase,
    outcome: &StepOutcome,
    now: i64,
) -> Result<()> {
    let from = task_state(db, id, task)?;
    let to = match (phase, outcome) {
        (Phase::Execute, StepOutcome::Success { .. }) => TaskState::Success,
        (Phase::Execute, StepOutcome::Failure { .. }) => TaskState::Failure,
        (Phase::Revert, StepOutcome::Success { .. }) => TaskState::Reverted,
        (Phase::Revert, StepOutcome::Failure { .. }) => TaskState::RevertFailure,
    };
    change_task_state(db, id, task, from, to, None)?;
    match (phase, outcome) {
        (Phase::Execute, StepOutcome::Success { result }) => db.execute(
            "UPDATE tasks SET result = ?3, exec_outcome = ?4, error = NULL, ended_ms = ?5 WHERE job_id = ?1 AND idx = ?2",
            args![id.as_str(), task, result, ExecOutcome::Success.as_str(), now],
        )?,
        (Phase::Execute, StepOutcome::Failure { reason, cancelled, result }) => {
            let outcome = if *cancelled { ExecOutcome::Cancelled } else { ExecOutcome::Failure };
            db.execute(
                "UPDATE tasks SET result = ?3, exec_outcome = ?4, error = ?5, ended_ms = ?6 WHERE job_id = ?1 AND idx = ?2",
                args![id.as_str(), task, result, outcome.as_str(), reason, now],
            )?
        }
        // The execute's failure reason stays: the revert does not undo why the job failed.
        (Phase::Revert, StepOutcome::Success { .. }) => db.execute(
            "UPDATE tasks SET ended_ms = ?3 WHERE job_id = ?1 AND idx = ?2",
            args![id.as_str(), task, now],
        )?,
        (Phase::Revert, StepOutcome::Failure { reason, .. }) => db.execute(
            "UPDATE tasks SET error = ?3, ended_ms = ?4 WHERE job_id = ?1 AND idx = ?2",
            args![id.as_str(), task, format!("revert: {reason}").as_str(), now],
        )?,
    };
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::store::tests::Backend;
    use shared::spec::JobSpec;

    fn store_with_job(backend: &Backend) -> (Store, JobId) {
        let store = backend.open();
        let spec = JobSpec::parse(
            "[[task]]\nname = \"a\"\nrun = \"true\"\nrevert = \"true\"\n[[task]]\nname = \"b\"\nrun = \"true\"\nrevert = \"true\"\n",
            "t.toml",
            "t",
        )
        .expect("spec");
        let id = store.create_job(&spec, "t.toml", None).expect("create");
        store
            .transition_job(&id, &[JobState::Pending], JobState::Running, None)
            .expect("running");
        (store, id)
    }

    fn report(seq: u64, event: JobEvent) -> Report {
        Report { seq, event }
    }

    pub(in crate::store) fn reports_apply_once_and_replays_are_skipped(backend: &Backend) {
        let (store, id) = store_with_job(backend);
        let batch = [
            report(
                1,
                JobEvent::TaskStarting {
                    task: 0,
                    phase: Phase::Execute,
                    attempt: 1,
                },
            ),
            report(
                2,
                JobEvent::TaskFinished {
                    task: 0,
                    phase: Phase::Execute,
                    outcome: StepOutcome::Success { result: "r".into() },
                },
            ),
        ];
        let applied = store.apply_reports(&id, &batch).expect("apply");
        assert_eq!((applied.held, applied.fresh_from), (2, 0));
        let again = store.apply_reports(&id, &batch).expect("replay");
        assert_eq!((again.held, again.fresh_from), (2, 2));
        let tasks = store.tasks(&id).expect("tasks");
        assert_eq!(tasks[0].state, TaskState::Success);
        assert_eq!(tasks[0].result, "r");
        assert_eq!(tasks[0].attempts, 1);
    }

    pub(in crate::store) fn hard_end_marks_running_as_killed_and_lists_pending_last_first(
        backend: &Backend,
    ) {
        let (store, id) = store_with_job(backend);
        let batch = [
            report(
                1,
                JobEvent::TaskStarting {
                    task: 0,
                    phase: Phase::Execute,
                    attempt: 1,
                },
            ),
            report(
                2,
                JobEvent::TaskFinished {
                    task: 0,
                    phase: Phase::Execute,
                    outcome: StepOutcome::Success {
                        result: String::new(),
                    },
                },
            ),
            report(
                3,
                JobEvent::TaskStarting {
                    task: 1,
                    phase: Phase::Execute,
                    attempt: 1,
                },
            ),
        ];
        store.apply_reports(&id, &batch).expect("apply");
        let pending = store
            .record_hard_end(&id, JobState::Killed, "killed")
            .expect("kill");
        let names: Vec<_> = pending.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["b", "a"]);
        let tasks = store.tasks(&id).expect("tasks");
        assert_eq!(tasks[1].state, TaskState::Failure);
        assert_eq!(tasks[1].exec_outcome, Some(ExecOutcome::Killed));
        assert_eq!(store.job(&id).expect("job").state, JobState::Killed);
    }

    pub(in crate::store) fn illegal_report_is_skipped_but_held(backend: &Backend) {
        let (store, id) = store_with_job(backend);
        let batch = [report(
            1,
            JobEvent::TaskFinished {
                task: 0,
                phase: Phase::Revert,
                outcome: StepOutcome::Success {
                    result: String::new(),
                },
            },
        )];
        let applied = store.apply_reports(&id, &batch).expect("apply");
        assert_eq!(applied.held, 1);
        assert_eq!(
            store.tasks(&id).expect("tasks")[0].state,
            TaskState::Pending
        );
    }
}
