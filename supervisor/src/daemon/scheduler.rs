//! The scheduler: starts `pending` jobs in submission order while fewer than `max_jobs` hold a
//! conductor. It only asks job actors to start; an actor refuses a job that was stopped
//! meanwhile (its compare-and-set fails), so a killed job never runs. On a job board, no job
//! starts while the daemon's lease is not current (`fence.rs`, which wakes the scheduler once
//! a renewal lifts the fence). On a board, each pass ends by waking the claims (`claims.rs`):
//! a slot may have freed.
//!
//! The store is the queue; the scheduler reads it only when it may hold a job not yet looked
//! at: at start, when told to ([`Jobs::wake`]: jobs claimed or imported, the lease regained),
//! and after a pass that left jobs queued (no room, no lease). A job submitted here is handed
//! over in memory ([`Jobs::queued`]) and, when nothing older waits, started without a read;
//! a freed slot alone reads nothing when the last pass left nothing behind. So a job costs
//! no store call of the scheduler's on an idle host (was two reads of the queue).

use crate::board::Board;
use crate::job::{Jobs, Order, OrderError};
use shared::ids::JobId;

/// Runs for the daemon's life: one pass at start, then one each time it is woken (a job was
/// queued or a slot freed).
pub async fn run(jobs: Jobs, max_jobs: usize, board: Option<Board>) {
    // Whether a job may wait in the store that no pass has started: at start, unknown.
    let mut backlog = true;
    loop {
        if !jobs.is_stopping() {
            let (added, reread) = jobs.take_queued();
            backlog = if backlog || reread {
                // The store has the added jobs too, in order.
                start_queued(&jobs, max_jobs, board.as_ref()).await
            } else {
                start_added(&jobs, max_jobs, board.as_ref(), added).await
            };
            if let Some(board) = &board {
                board.wake_claims();
            }
        }
        jobs.woken().await;
    }
}

/// Starts the jobs handed over in memory, in order, while there is room; whether any was left
/// queued (the next pass then reads the store).
async fn start_added(
    jobs: &Jobs,
    max_jobs: usize,
    board: Option<&Board>,
    added: Vec<JobId>,
) -> bool {
    let mut left = false;
    for id in added {
        if left || jobs.supervising() >= max_jobs || jobs.is_stopping() || !may_start(board) {
            left = true;
            continue;
        }
        left |= !start(jobs, &id).await;
    }
    left
}

/// Whether this daemon may start jobs now: always without a board; on one, while its lease
/// is current.
fn may_start(board: Option<&Board>) -> bool {
    board.is_none_or(Board::is_lease_current)
}

/// Reads the queue from the store and starts its jobs, in submission order, while there is
/// room; whether any may be left queued.
async fn start_queued(jobs: &Jobs, max_jobs: usize, board: Option<&Board>) -> bool {
    if !may_start(board) {
        return true;
    }
    let room = max_jobs.saturating_sub(jobs.supervising());
    if room == 0 {
        return true;
    }
    let queued = match jobs.store().call(|s| s.queued_jobs()).await {
        Ok(queued) => queued,
        Err(err) => {
            tracing::error!(error = %err, "cannot read the queue");
            return true;
        }
    };
    let mut left = false;
    for id in queued {
        if jobs.supervising() >= max_jobs || jobs.is_stopping() || !may_start(board) {
            return true;
        }
        left |= !start(jobs, &id).await;
    }
    left
}

/// Asks job `id` to start; false when it stays queued (an error, logged).
async fn start(jobs: &Jobs, id: &JobId) -> bool {
    match jobs.ask(id, Order::Start).await {
        Ok(()) => true,
        // Stopped (or started) by someone else meanwhile.
        Err(OrderError::WrongState(_)) => true,
        Err(err) => {
            tracing::error!(job_id = %id, error = %err, "cannot start the job");
            false
        }
    }
}
