//! The owner's side of remote cancel and kill (issue 11, rule 3): the requests other hosts
//! wrote on the board for this host's jobs (`board/requests.rs`), carried out through the
//! job's actor exactly as a local `cancel` or `kill` is (`Jobs::ask`), then marked done.
//!
//! The reader wakes when the board says requests are due (`Board::requests_due`): on a
//! notification from the listener, after the listener (re)connects, and after every lease
//! renewal, so a lost notification delays a request by at most lease/3. One task reads and
//! applies them in order, so a request is never applied twice at once; one applied twice
//! across a crash does no harm (a second cancel or kill of a job is refused or joins the
//! ladder already running). A request the actor could not take now (the daemon is stopping,
//! the store refuses writes) stays pending for the next wake-up; any other refusal is the
//! request's outcome (`requests.outcome`).

use crate::board::Board;
use crate::board::requests::{Kind, Pending};
use crate::job::{Jobs, Order, OrderError};

/// Reads and applies this host's requests each time they are due, for the daemon's life.
pub async fn run(jobs: Jobs, board: Board) {
    loop {
        board.requests_due().await;
        let pending = match board.pending_requests().await {
            Ok(pending) => pending,
            Err(err) => {
                let message = format!("{:#}", anyhow::Error::from(err));
                tracing::warn!(host = %board.config().host, error = %message, "cannot read this host's requests");
                continue;
            }
        };
        for request in pending {
            let seq = request.seq;
            let Some(outcome) = apply(&jobs, request).await else {
                continue;
            };
            if let Err(err) = board.mark_done(seq, outcome).await {
                let message = format!("{:#}", anyhow::Error::from(err));
                tracing::warn!(host = %board.config().host, error = %message, "cannot mark a request done");
            }
        }
    }
}

/// Carries out one request; its outcome to record, or `None` to leave it pending.
async fn apply(jobs: &Jobs, request: Pending) -> Option<String> {
    let Pending {
        job,
        kind,
        requested_by,
        by,
        timeout,
        ..
    } = request;
    let (Some(id), Some(kind)) = (job, kind) else {
        tracing::warn!(host = %requested_by, "board request unreadable; marked done");
        return Some("unreadable".to_owned());
    };
    let order = match kind {
        Kind::Cancel => Order::Cancel {
            timeout,
            reason: format!("cancel requested on host {requested_by}"),
            by,
        },
        Kind::Kill => Order::Kill {
            reason: format!("kill requested on host {requested_by}"),
            by,
        },
    };
    let outcome = match jobs.ask(&id, order).await {
        Ok(()) => "done".to_owned(),
        Err(err @ (OrderError::Unavailable(_) | OrderError::Retry)) => {
            tracing::warn!(job_id = %id, host = %requested_by, kind = kind.as_str(), error = %err, "board request left pending");
            return None;
        }
        Err(err) => format!("refused: {err}"),
    };
    tracing::info!(job_id = %id, host = %requested_by, kind = kind.as_str(), outcome = %outcome, "board request applied");
    Some(outcome)
}
