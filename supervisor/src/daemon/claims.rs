//! Claims (issue 11): a job written on the board unclaimed (`submit --host OTHER`, or a
//! `submit` on a host with no free slot) is taken by a host with a free slot. Each claim is
//! ONE statement on the shared query connection (`board/journal.rs`, `claim`): up to `free`
//! unclaimed jobs this host may take (pinned to it, or to nobody), oldest first, `FOR UPDATE
//! SKIP LOCKED`, become this host's at the next epoch. Each is imported into the local store
//! `pending` (the rescue's import, `rescue.rs`), held at its epoch, and the scheduler is
//! woken; one the local store refuses is given back unclaimed (`journal::release`).
//!
//! At start it first imports the jobs it holds on the board but not in its store (claimed
//! just before a crash: [`import_orphans`]). It claims when woken ([`Board::claims_due`]): by a claims notification for this host or
//! any host (the listener), after every renewal (a lost notification delays a claim by at
//! most lease/3), after the listener (re)connects, and whenever the scheduler was woken (a
//! job ended here: a slot freed). It never claims while its lease is not current, and never
//! more than its free slots: `--max-jobs` less the jobs holding a conductor and those queued
//! here.

use crate::board::Board;
use crate::board::journal::Claimed;
use crate::job::Jobs;
use crate::store::StoreError;
use shared::state::JobState;

/// Claims jobs each time claims are due, for the daemon's life; first imports the jobs it
/// holds on the board that its store lacks ([`import_orphans`]).
pub async fn run(jobs: Jobs, board: Board) {
    import_orphans(&jobs, &board).await;
    loop {
        board.claims_due().await;
        if jobs.is_stopping() {
            return;
        }
        claim_free(&jobs, &board).await;
    }
}

/// A claim is committed on the board before its import here: a daemon that died between the
/// two holds a job on the board that its store does not have. At start, every job this host
/// holds on the board that never started and is missing from the store is imported as a
/// claim would have (a failure is logged; the next start tries again).
async fn import_orphans(jobs: &Jobs, board: &Board) {
    let held = match board.held_pending().await {
        Ok(held) => held,
        Err(err) => {
            let message = format!("{:#}", anyhow::Error::from(err));
            tracing::warn!(host = %board.config().host, error = %message, "cannot read this host's pending jobs on the board");
            return;
        }
    };
    let mut imported = false;
    for job in held {
        let id = job.id.clone();
        match jobs.store().call(move |s| s.job(&id)).await {
            Err(StoreError::UnknownJob(_)) => {
                take(jobs, board, job).await;
                imported = true;
            }
            Ok(_) => {}
            Err(err) => {
                tracing::error!(job_id = %job.id, error = %err, "cannot read a job");
            }
        }
    }
    if imported {
        jobs.wake();
    }
}

/// How many more jobs this host may take: `max_jobs` less those running and those queued.
const fn free_slots(max_jobs: usize, supervising: usize, queued: usize) -> usize {
    max_jobs.saturating_sub(supervising.saturating_add(queued))
}

/// One claim of as many jobs as this host has free slots.
async fn claim_free(jobs: &Jobs, board: &Board) {
    if !board.is_lease_current() {
        return;
    }
    let queued = match jobs.store().call(|s| s.queued_jobs()).await {
        Ok(queued) => queued.len(),
        Err(err) => {
            tracing::error!(error = %err, "cannot read the queue");
            return;
        }
    };
    let free = free_slots(board.max_jobs(), jobs.supervising(), queued);
    if free == 0 {
        return;
    }
    match board.claim(free).await {
        Ok(claimed) if claimed.is_empty() => {}
        Ok(claimed) => {
            for job in claimed {
                take(jobs, board, job).await;
            }
            jobs.wake();
        }
        Err(err) => {
            let message = format!("{:#}", anyhow::Error::from(err));
            tracing::warn!(host = %board.config().host, error = %message, "cannot claim jobs");
        }
    }
}

/// Imports a claimed job `pending` (nothing ran: its tasks are the store's defaults); one
/// that cannot be imported is given back to the board unclaimed, for another claim. A job
/// the store has queued already is this host's own copy from before it was lost (frozen
/// past its lease, its unstarted job given back to the board by a rescue, then claimed back
/// here): that copy never started, so it runs as is, now held at the claim's epoch.
async fn take(jobs: &Jobs, board: &Board, job: Claimed) {
    if is_queued_here(jobs, &job).await {
        tracing::info!(job_id = %job.id, epoch = job.epoch, "job claimed back: its queued copy here runs");
        jobs.publish(&job.id, None, JobState::Pending.as_str());
        return;
    }
    let texts = (job.spec, job.source);
    if !super::rescue::import(jobs, &job.id, texts, None, &[]).await {
        match board.release_claim(&job.id, job.epoch).await {
            Ok(released) => {
                tracing::warn!(job_id = %job.id, epoch = job.epoch, released, "claimed job given back");
            }
            Err(err) => {
                let message = format!("{:#}", anyhow::Error::from(err));
                tracing::error!(job_id = %job.id, epoch = job.epoch, error = %message, "cannot give a claimed job back; it stays held here, not run");
            }
        }
        return;
    }
    tracing::info!(
        job_id = %job.id,
        epoch = job.epoch,
        pinned = job.pinned.as_deref().unwrap_or(""),
        "job claimed"
    );
    jobs.publish(&job.id, None, JobState::Pending.as_str());
}

/// Whether the local store has `job` queued (`pending`: no job goes back to it once started).
async fn is_queued_here(jobs: &Jobs, job: &Claimed) -> bool {
    let id = job.id.clone();
    matches!(
        jobs.store().call(move |s| s.job(&id)).await,
        Ok(row) if row.state == JobState::Pending
    )
}

#[cfg(test)]
mod tests {
    use super::free_slots;

    #[test]
    fn free_slots_count_running_and_queued_jobs() {
        assert_eq!(free_slots(2, 0, 0), 2);
        assert_eq!(free_slots(2, 1, 0), 1);
        assert_eq!(free_slots(2, 1, 1), 0);
        assert_eq!(free_slots(2, 3, 0), 0);
        assert_eq!(free_slots(2, usize::MAX, 1), 0);
    }
}
