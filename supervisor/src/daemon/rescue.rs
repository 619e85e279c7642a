//! The rescue of a lost host's jobs (issue 11, rules 1 and 4): every lease/3, on the shared
//! query connection (never the renewals'), this daemon takes the unended jobs of the journal
//! whose host's lease expired by the database's clock, in one statement that checks state and
//! epoch (`board/journal.rs`, `rescue`): each becomes this host's, `crashed` with reason
//! `host lost: OLD`, at the next epoch. Each is then imported into the local store, so every
//! local command works on it, and follows its `on_host_loss`: `hold` leaves it `crashed` with
//! its pending reverts for the operator; `revert` runs them here at once; `resume` reverts
//! the tasks that were running (those with a revert), then runs the job again from its first
//! unfinished task, the reverted ones included, in one conductor (`PlanAction::Resume`). A job
//! whose host was lost while it was reverting cannot be resumed: it is held, and logged.
//!
//! A job of the lost host that never began a step is not taken: the same statement gives it
//! back to the board unclaimed at the next epoch (`journal::rescue`), and any host with a
//! free slot claims it (`claims.rs`) and runs it from the start (unless a cancel or kill
//! for the lost host was pending: then it ends `cancelled` there). Should the lost host come
//! back, its queued copy is stale: a restarted daemon ends it at start ([`end_taken`]); one
//! that was frozen has its first write about it refused and kills it, unless it claims the
//! job back itself (then it runs its queued copy at the new epoch: `claims.rs`).
//!
//! A lost host's steps are stopped by the time its lease expired (it fences itself, and its
//! conductors stop when its delegated lease runs out), so the rescue never starts a step of a
//! job while another host runs one.

use crate::board::Board;
use crate::board::journal::{JournalTask, Rescued};
use crate::board::lease;
use crate::job::{Jobs, Order, OrderError};
use crate::store::ImportedTask;
use shared::ids::JobId;
use shared::spec::OnHostLoss;
use shared::state::JobState;

/// The most jobs one rescue takes (the next one, lease/3 later, takes more).
const BATCH: i64 = 100;

/// Rescues the jobs of lost hosts every lease/3, for the daemon's life.
pub async fn run(jobs: Jobs, board: Board) {
    let mut every = tokio::time::interval(lease::renew_interval(board.config().lease));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if jobs.is_stopping() {
            return;
        }
        match board.rescue(BATCH).await {
            Ok(rescue) => {
                for job in &rescue.returned {
                    tracing::info!(job_id = %job.id, from = %job.from, epoch = job.epoch, pinned = job.pinned.as_deref().unwrap_or(""), "host lost: unstarted job back on the board");
                }
                for job in &rescue.cancelled {
                    tracing::info!(job_id = %job.id, from = %job.from, epoch = job.epoch, "host lost: unstarted job cancelled on the board");
                }
                if !rescue.returned.is_empty() {
                    board.wake_claims();
                }
                for job in rescue.taken {
                    take_up(&jobs, job).await;
                }
            }
            Err(err) => {
                let message = format!("{:#}", anyhow::Error::from(err));
                tracing::warn!(host = %board.config().host, error = %message, "cannot rescue the jobs of lost hosts");
            }
        }
    }
}

/// At start, before anything is scheduled or claimed: the jobs queued in the local store
/// (`pending`: never started here) that the journal shows held by another host or unclaimed
/// were taken while this daemon was away (its host lost, each given back to the board or
/// rescued). Each is marked stale ([`Board::taken_elsewhere`]) and killed here (`killed`,
/// reason `stale owner: ...`; nothing ran): it never runs on this host under its old epoch.
/// If this host claims one of them again later, the claim's import replaces the ended copy.
/// A board that cannot answer is logged; the write-ahead still refuses the first step of a
/// job this host does not hold.
pub async fn end_taken(jobs: &Jobs, board: &Board) {
    let queued = match jobs.store().call(|s| s.queued_jobs()).await {
        Ok(queued) => queued,
        Err(err) => {
            tracing::error!(error = %err, "cannot read the queue");
            return;
        }
    };
    let taken = match board.taken_elsewhere(queued).await {
        Ok(taken) => taken,
        Err(err) => {
            let message = format!("{:#}", anyhow::Error::from(err));
            tracing::warn!(host = %board.config().host, error = %message, "cannot read which queued jobs another host took");
            return;
        }
    };
    for id in taken {
        tracing::warn!(job_id = %id, host = %board.config().host, "stale owner: queued job taken while this host was away");
        super::mirror::kill_stale(jobs, &id).await;
    }
}

/// Imports a job taken from the board (rescued: `crashed` with its reason; claimed: `None`,
/// left `pending`) into the local store, with its tasks as the board has them; whether it
/// was imported (a failure is logged).
pub(super) async fn import(
    jobs: &Jobs,
    id: &JobId,
    (spec, source): (String, String),
    crashed: Option<String>,
    tasks: &[JournalTask],
) -> bool {
    let tasks = match imported_tasks(tasks) {
        Ok(tasks) => tasks,
        Err(err) => {
            tracing::error!(job_id = %id, error = %err, "cannot import a board job: unreadable task state");
            return false;
        }
    };
    let local_id = id.clone();
    let imported = jobs
        .store()
        .call(move |s| s.import_job(&local_id, &spec, &source, crashed.as_deref(), &tasks))
        .await;
    if let Err(err) = imported {
        tracing::error!(job_id = %id, error = %err, "cannot import a board job");
        return false;
    }
    true
}

/// Imports a rescued job into the store and follows its `on_host_loss`.
async fn take_up(jobs: &Jobs, job: Rescued) {
    let texts = (job.spec, job.source);
    if !import(jobs, &job.id, texts, Some(job.reason.clone()), &job.tasks).await {
        tracing::error!(job_id = %job.id, from = %job.from, "rescued job not imported");
        return;
    }
    let policy = job.on_host_loss;
    tracing::info!(job_id = %job.id, from = %job.from, epoch = job.epoch, policy = policy.as_str(), "host lost: job rescued");
    jobs.publish(&job.id, None, JobState::Crashed.as_str());
    let order = match policy {
        OnHostLoss::Hold => return,
        OnHostLoss::Revert => Order::Revert {
            reason: format!("on_host_loss = revert ({})", job.reason),
            by: None,
        },
        OnHostLoss::Resume => Order::Resume {
            reason: format!("on_host_loss = resume ({})", job.reason),
            by: None,
            revert_interrupted: true,
        },
    };
    match jobs.ask(&job.id, order).await {
        Ok(()) => {}
        // A job that had begun reverting cannot run again: it stays crashed.
        Err(OrderError::WrongState(why)) if policy == OnHostLoss::Resume => {
            tracing::warn!(job_id = %job.id, from = %job.from, why = %why, "on_host_loss = resume: the job cannot be resumed; it is held");
        }
        // Nothing to revert: the job stays crashed.
        Err(OrderError::WrongState(_)) => {}
        Err(err) => {
            tracing::warn!(job_id = %job.id, policy = policy.as_str(), error = %err, "cannot follow a rescued job's on_host_loss");
        }
    }
}

/// The board's task rows as the store imports them.
fn imported_tasks(tasks: &[JournalTask]) -> Result<Vec<ImportedTask>, shared::state::UnknownState> {
    tasks
        .iter()
        .map(|task| {
            Ok(ImportedTask {
                idx: u32::try_from(task.idx).unwrap_or(u32::MAX),
                state: task.state.parse()?,
                attempts: u32::try_from(task.attempts).unwrap_or(0),
                exec_outcome: task.exec_outcome.clone(),
                result: task.result.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::state::TaskState;

    fn task(idx: i32, state: &str, has_revert: bool) -> JournalTask {
        JournalTask {
            idx,
            name: format!("t{idx}"),
            has_revert,
            state: state.into(),
            attempts: 1,
            exec_outcome: None,
            result: String::new(),
        }
    }

    #[test]
    fn the_board_s_task_rows_import_and_an_unknown_state_is_refused() {
        let tasks = imported_tasks(&[task(0, "success", true), task(1, "running", true)])
            .expect("readable");
        assert_eq!(tasks[1].state, TaskState::Running);
        assert_eq!(tasks[1].idx, 1);
        assert!(imported_tasks(&[task(0, "exploded", true)]).is_err());
    }
}
