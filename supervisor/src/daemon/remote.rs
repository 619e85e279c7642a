//! The owner's side of remote orders (issue 11, rule 3): the requests other hosts wrote on the
//! board for this host's jobs (`board/requests.rs`), carried out through the job's actor
//! exactly as the local `cancel`, `kill`, `revert`, `resume`, `pause` or `continue` is
//! (`Jobs::ask`), then marked done with the outcome: a refusal is written back with the code
//! and text a local operator would have got, for the requesting host to show. A `logs`
//! request is answered with the job's last lines (`handlers/logs.rs`, `tail`), bounded; a
//! `logs_after` one (`logs --follow`) with the page after its cursor (`page_after`), bounded;
//! a `status` one with the job's whole status, as a local `status` reads it, cut to one
//! frame (`ClientReply::within_frame`).
//!
//! The reader wakes when the board says requests are due (`Board::requests_due`): on a
//! notification from the listener, after the listener (re)connects, and after every lease
//! renewal, so a lost notification delays a request by at most lease/3. One task reads and
//! applies them in order, so a request is never applied twice at once; one applied twice
//! across a crash does no harm (a second order of a job is refused by its state, or joins the
//! ladder already running). A request the actor could not take now (the daemon is stopping,
//! the store refuses writes) stays pending for the next wake-up; any other refusal is the
//! request's outcome (`requests.outcome`, `error_code`, `error`).

use super::handlers::{logs, order_refusal, store_refusal};
use crate::board::Board;
use crate::board::requests::{DONE, Kind, Outcome, Pending};
use crate::job::{Jobs, Order, OrderError};
use shared::ids::JobId;
use shared::protocol::PROTOCOL_VERSION;
use shared::protocol::client::{ClientReply, ErrorCode};
use shared::protocol::operator::Action;

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
async fn apply(jobs: &Jobs, request: Pending) -> Option<Outcome> {
    let Pending {
        job,
        kind,
        requested_by,
        by,
        timeout,
        task,
        since_ms,
        after,
        ..
    } = request;
    let (Some(id), Some(kind)) = (job, kind) else {
        tracing::warn!(host = %requested_by, "board request unreadable; marked done");
        let refusal = (
            ErrorCode::InvalidRequest,
            "the job's host cannot read this request (a newer supervisor wrote it)".to_owned(),
        );
        return Some(refused("unreadable".to_owned(), refusal));
    };
    let reason = format!("{} requested on host {requested_by}", kind.as_str());
    let order = match kind {
        Kind::Order(Action::Cancel) => Order::Cancel {
            timeout,
            reason,
            by,
        },
        Kind::Order(Action::Kill) => Order::Kill { reason, by },
        Kind::Order(Action::Revert) => Order::Revert { reason, by },
        Kind::Order(Action::Resume) => Order::Resume {
            reason,
            by,
            revert_interrupted: false,
        },
        Kind::Order(Action::Pause) => Order::Pause { by },
        Kind::Order(Action::Continue) => Order::Continue { by },
        Kind::Logs => return Some(read_logs(jobs, &id, task.as_deref(), since_ms).await),
        Kind::LogsAfter => {
            let read = (task.as_deref(), since_ms);
            return Some(read_logs_after(jobs, &id, read, after).await);
        }
        Kind::Status => return Some(read_status(jobs, &id).await),
    };
    let outcome = match jobs.ask(&id, order).await {
        Ok(()) => Outcome {
            text: DONE.to_owned(),
            ..Outcome::default()
        },
        Err(err @ (OrderError::Unavailable(_) | OrderError::Retry)) => {
            tracing::warn!(job_id = %id, host = %requested_by, kind = kind.as_str(), error = %err, "board request left pending");
            return None;
        }
        Err(err) => refused(format!("refused: {err}"), order_refusal(err)),
    };
    tracing::info!(job_id = %id, host = %requested_by, kind = kind.as_str(), outcome = %outcome.text, "board request applied");
    Some(outcome)
}

fn refused(text: String, refusal: (ErrorCode, String)) -> Outcome {
    Outcome {
        text,
        refusal: Some(refusal),
        reply: None,
    }
}

/// `logs` asked by another host: the last lines that fit `REMOTE_LOGS_MAX_BYTES`, as JSON.
async fn read_logs(jobs: &Jobs, id: &JobId, task: Option<&str>, since_ms: Option<i64>) -> Outcome {
    let lines = logs::tail(jobs, id, (task, since_ms), logs::REMOTE_LOGS_MAX_BYTES).await;
    answer_read(lines)
}

/// `logs --follow` asked by another host: the page of lines after the cursor `after` that
/// fits `REMOTE_FOLLOW_MAX_BYTES`, as JSON ([`crate::board::requests::LogsPage`]).
async fn read_logs_after(
    jobs: &Jobs,
    id: &JobId,
    read: (Option<&str>, Option<i64>),
    after: Option<i64>,
) -> Outcome {
    let page = logs::page_after(jobs, id, read, after, logs::REMOTE_FOLLOW_MAX_BYTES).await;
    answer_read(page)
}

/// `status` asked by another host: the job's status as a local `status` reads it, its tasks'
/// texts cut as the reply to a client would be, so that the requester can send it on.
async fn read_status(jobs: &Jobs, id: &JobId) -> Outcome {
    let job = id.clone();
    let status = match jobs.store().read(move |s| s.status(&job)).await {
        Ok(status) => ClientReply::Status(Box::new(status)).within_frame(PROTOCOL_VERSION),
        Err(err) => return refused_read(store_refusal(err)),
    };
    match status {
        ClientReply::Status(status) => answer_read(Ok(status)),
        ClientReply::Error { code, message } => refused_read((code, message)),
        other => refused_read((ErrorCode::Internal, format!("unexpected status: {other:?}"))),
    }
}

fn refused_read(refusal: (ErrorCode, String)) -> Outcome {
    refused(format!("refused: {}", refusal.1), refusal)
}

/// The outcome of a read (a job's output or status): what was read, as JSON, or the refusal.
fn answer_read<T: serde::Serialize>(read: Result<T, (ErrorCode, String)>) -> Outcome {
    let read = match read {
        Ok(read) => read,
        Err(refusal) => return refused_read(refusal),
    };
    match serde_json::to_string(&read) {
        Ok(json) => Outcome {
            text: DONE.to_owned(),
            refusal: None,
            reply: Some(json),
        },
        Err(err) => refused_read((
            ErrorCode::Internal,
            format!("cannot encode the answer: {err}"),
        )),
    }
}
