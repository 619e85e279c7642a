//! The scheduler: starts `pending` jobs in submission order while fewer than `max_jobs` hold a
//! conductor. It only asks job actors to start; an actor refuses a job that was stopped
//! meanwhile (its compare-and-set fails), so a killed job never runs.

use crate::job::{Jobs, Order, OrderError};

/// Runs for the daemon's life: one pass at start, then one each time it is woken (a job was
/// queued or a slot freed).
pub async fn run(jobs: Jobs, max_jobs: usize) {
    loop {
        if !jobs.is_stopping() {
            start_queued(&jobs, max_jobs).await;
        }
        jobs.woken().await;
    }
}

async fn start_queued(jobs: &Jobs, max_jobs: usize) {
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
        if jobs.supervising() >= max_jobs || jobs.is_stopping() {
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
