//! The scheduler: starts `pending` jobs in submission order while fewer than `max_jobs` hold a
//! conductor. It only asks job actors to start; an actor refuses a job that was stopped
//! meanwhile (its compare-and-set fails), so a killed job never runs. On a job board, no job
//! starts while the daemon's lease is not current (`fence.rs`, which wakes the scheduler once
//! a renewal lifts the fence). On a board, each pass ends by waking the claims (`claims.rs`):
//! a slot may have freed.

use crate::board::Board;
use crate::job::{Jobs, Order, OrderError};

/// Runs for the daemon's life: one pass at start, then one each time it is woken (a job was
/// queued or a slot freed).
pub async fn run(jobs: Jobs, max_jobs: usize, board: Option<Board>) {
    loop {
        if !jobs.is_stopping() {
            start_queued(&jobs, max_jobs, board.as_ref()).await;
            if let Some(board) = &board {
                board.wake_claims();
            }
        }
        jobs.woken().await;
    }
}

/// Whether this daemon may start jobs now: always without a board; on one, while its lease
/// is current.
fn may_start(board: Option<&Board>) -> bool {
    board.is_none_or(Board::is_lease_current)
}

async fn start_queued(jobs: &Jobs, max_jobs: usize, board: Option<&Board>) {
    if !may_start(board) {
        return;
    }
    let room = max_jobs.saturating_sub(jobs.supervising());
    if room == 0 {
        return;
    }
    let queued = match jobs.store().call(|s| s.queued_jobs()).await {
        Ok(queued) => queued,
        Err(err) => {
            tracing::error!(error = %err, "cannot read the queue");
            return;
        }
    };
    for id in queued {
        if jobs.supervising() >= max_jobs || jobs.is_stopping() || !may_start(board) {
            return;
        }
        match jobs.ask(&id, Order::Start).await {
            Ok(()) => {}
            // Stopped (or started) by someone else meanwhile.
            Err(OrderError::WrongState(_)) => {}
            Err(err) => tracing::error!(job_id = %id, error = %err, "cannot start the job"),
        }
    }
}
