//! Requests about jobs another host of the job board holds: find one in the board's mirror,
//! or write an order for its host (`board/requests.rs`). A `cancel` or `kill` is answered once
//! the request is committed (`Requested`, version 4 clients; `Done` for older ones). A
//! `revert`, `resume`, `pause` or `continue` is answered with the owner's own answer: the
//! request row is read every [`ANSWER_POLL`] until the owner marked it done, then (on success)
//! until the mirror shows the job changed after the order, so that a `--wait` that follows
//! never reads the state from before it; a refusal comes back with the owner's code and text,
//! as if local. A lost owner ends the wait with [`ErrorCode::HostLost`]; an owner alive but
//! silent for [`ANSWER_TIMEOUT`] with `Unavailable` (the request stays on the board).

use super::{Refusal, Reply};
use crate::board::requests::{Answer, Ask, Kind, Written};
use crate::board::{Board, BoardError};
use shared::ids::JobId;
use shared::protocol::client::{Action, ClientReply, ErrorCode, HostedJob, Requester};
use std::time::{Duration, Instant};

/// How often the requesting host reads the owner's answer.
pub const ANSWER_POLL: Duration = Duration::from_millis(50);

/// How long the requesting host waits for the answer of an owner that stays alive.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// The job named `job` on another host, if the mirror has one.
pub async fn find(board: &Board, job: &str) -> Result<Option<HostedJob>, Refusal> {
    let Some(id) = JobId::parse(job.trim()) else {
        return Ok(None);
    };
    let mut found = board.find_job(&id).await.map_err(board_refusal)?;
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => {
            let hosts: Vec<String> = found.into_iter().map(|h| h.host).collect();
            Err(super::status::ambiguous(job, &hosts))
        }
    }
}

/// Writes `action` (with a cancel's `timeout_ms`) of `job` for the host that holds it; for
/// the orders the operator waits on ([`Kind::is_answered`]), answers with the owner's answer.
pub async fn request(
    board: &Board,
    version: u32,
    job: &str,
    (action, timeout_ms): (Action, Option<u64>),
    by: Requester,
) -> Reply {
    let unknown = || (ErrorCode::UnknownJob, format!("no such job: {job}"));
    let Some(id) = JobId::parse(job.trim()) else {
        return Err(unknown());
    };
    let kind = match action {
        Action::Cancel => Kind::Cancel,
        Action::Kill => Kind::Kill,
        Action::Revert => Kind::Revert,
        Action::Resume => Kind::Resume,
        Action::Pause => Kind::Pause,
        Action::Continue => Kind::Continue,
    };
    let ask = Ask {
        kind,
        timeout_ms,
        by: Some(by),
    };
    match board.request(&id, ask).await {
        Ok(Written::Requested {
            host,
            seq,
            updated_us,
        }) => {
            tracing::info!(job_id = %id, host = %host, kind = kind.as_str(), seq, "board request written");
            if kind.is_answered() {
                await_answer(board, &id, &host, seq, updated_us)
                    .await
                    .map_err(|(code, message)| match code {
                        // Older clients do not know the code; they refuse as for a busy daemon.
                        ErrorCode::HostLost if version < 4 => (ErrorCode::Unavailable, message),
                        code => (code, message),
                    })?;
            }
            Ok(if version >= 4 {
                ClientReply::Requested { host }
            } else {
                ClientReply::Done
            })
        }
        Ok(Written::Ended { host, state }) => Err((
            ErrorCode::WrongState,
            format!("job {id} already ended on host {host}: {state}"),
        )),
        Ok(Written::Unknown) => Err(unknown()),
        Ok(Written::Ambiguous { hosts }) => Err(super::status::ambiguous(job, &hosts)),
        Err(err) => Err(board_refusal(err)),
    }
}

/// Reads request `seq` every [`ANSWER_POLL`] until its owner `host` answered it and (when it
/// carried it out) the mirror shows job `id` changed after `updated_us`, its owner is lost, or
/// [`ANSWER_TIMEOUT`] passed.
async fn await_answer(
    board: &Board,
    id: &JobId,
    host: &str,
    seq: i64,
    updated_us: i64,
) -> Result<(), Refusal> {
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    loop {
        let answer = board
            .request_answer(seq, updated_us)
            .await
            .map_err(board_refusal)?;
        let late = Instant::now() >= deadline;
        match answer {
            Answer::Done { moved: true } => return Ok(()),
            Answer::Done { moved: false } if late => {
                tracing::warn!(job_id = %id, host = %host, seq, "board request done; the mirror has not shown the job since");
                return Ok(());
            }
            Answer::Refused(code, message) => return Err((code, message)),
            Answer::Pending {
                alive: false,
                stopped,
            } => {
                let what = if stopped { "stopped" } else { "lost its lease" };
                return Err((
                    ErrorCode::HostLost,
                    format!(
                        "host {host} {what}; job {id} is held there until it is rescued (the request stays on the board and is carried out if {host} comes back)"
                    ),
                ));
            }
            Answer::Pending { alive: true, .. } if late => {
                return Err((
                    ErrorCode::Unavailable,
                    format!(
                        "host {host} did not answer within {}s; the request stays on the board and is carried out when {host} reads it",
                        ANSWER_TIMEOUT.as_secs()
                    ),
                ));
            }
            Answer::Done { .. } | Answer::Pending { .. } => {}
        }
        tokio::time::sleep(ANSWER_POLL).await;
    }
}

fn board_refusal(err: BoardError) -> Refusal {
    let message = format!("{:#}", anyhow::Error::from(err));
    tracing::warn!(error = %message, "cannot reach the board");
    (ErrorCode::Internal, message)
}
