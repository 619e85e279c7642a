//! The owner's side of remote orders (issue 11, rule 3): the requests other hosts wrote on the
//! board for this host's jobs (`board/requests.rs`), carried out through the job's actor
//! exactly as the local `cancel`, `kill`, `revert`, `resume`, `pause` or `continue` is
//! (`Jobs::ask`), then marked done with the outcome: a refusal is written back with the code
//! and text a local operator would have got, for the requesting host to show.
//!
//! The reader wakes when the board says requests are due (`Board::requests_due`): on a
//! notification from the listener, after the listener (re)connects, and after every lease
//! renewal, so a lost notification delays a request by at most lease/3. One task reads and
//! applies them in order, so a request is never applied twice at once; one applied twice
//! across a crash does no harm (a second order of a job is refused by its state, or joins the
//! ladder already running). A request the actor could not take now (the daemon is stopping,
//! the store refuses writes) stays pending for the next wake-up; any other refusal is the
//! request's outcome (`requests.outcome`, `error_code`, `error`).

use crate::board::Board;
use crate::board::requests::{Kind, Pending};
use crate::job::{Jobs, Order, OrderError};
use shared::protocol::client::ErrorCode;

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
            let Some((outcome, refusal)) = apply(&jobs, request).await else {
                continue;
            };
            if let Err(err) = board.mark_done(seq, outcome, refusal).await {
                let message = format!("{:#}", anyhow::Error::from(err));
                tracing::warn!(host = %board.config().host, error = %message, "cannot mark a request done");
            }
        }
    }
}

/// Carries out one request; its outcome to record (with the refusal's code and text when the
/// actor refused it), or `None` to leave it pending.
async fn apply(jobs: &Jobs, request: Pending) -> Option<(String, Option<(ErrorCode, String)>)> {
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
        let refusal = (
            ErrorCode::InvalidRequest,
            "the job's host cannot read this request (a newer supervisor wrote it)".to_owned(),
        );
        return Some(("unreadable".to_owned(), Some(refusal)));
    };
    let reason = format!("{} requested on host {requested_by}", kind.as_str());
    let order = match kind {
        Kind::Cancel => Order::Cancel {
            timeout,
            reason,
            by,
        },
        Kind::Kill => Order::Kill { reason, by },
        Kind::Revert => Order::Revert { reason, by },
        Kind::Resume => Order::Resume { reason, by },
        Kind::Pause => Order::Pause { by },
        Kind::Continue => Order::Continue { by },
    };
    let (outcome, refusal) = match jobs.ask(&id, order).await {
        Ok(()) => ("done".to_owned(), None),
        Err(err @ (OrderError::Unavailable(_) | OrderError::Retry)) => {
            tracing::warn!(job_id = %id, host = %requested_by, kind = kind.as_str(), error = %err, "board request left pending");
            return None;
        }
        Err(err) => {
            let outcome = format!("refused: {err}");
            (outcome, Some(super::handlers::order_refusal(err)))
        }
    };
    tracing::info!(job_id = %id, host = %requested_by, kind = kind.as_str(), outcome = %outcome, "board request applied");
    Some((outcome, refusal))
}
