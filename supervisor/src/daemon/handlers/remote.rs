//! Requests about jobs another host of the job board holds: find one in the board's mirror,
//! or write an order for its host (`board/requests.rs`). A `cancel` or `kill` is answered once
//! the request is committed (`Requested`, version 4 clients; `Done` for older ones). A
//! `revert`, `resume`, `pause` or `continue` is answered with the owner's own answer: the
//! request row is read every [`ANSWER_POLL`] until the owner marked it done, then (on success)
//! until the mirror shows the job changed after the order, so that a `--wait` that follows
//! never reads the state from before it; a refusal comes back with the owner's code and text,
//! as if local. A lost owner ends the wait with [`ErrorCode::HostLost`]; an owner alive but
//! silent for [`ANSWER_TIMEOUT`] with `Unavailable` (the request stays on the board). `logs`
//! is asked the same way, and answered with the lines in the row; each page of `logs
//! --follow` too ([`logs_after`], the loop in `logs.rs`), its row deleted once read; and
//! `status` ([`status`]), within [`STATUS_TIMEOUT`], its row deleted once answered or given
//! up (a status read later is of no use to anyone). The row is first read [`FIRST_POLL`]
//! after it is written, then at twice the last wait, up to [`ANSWER_POLL`]: an owner that
//! answers at once is heard within milliseconds, a slow one costs a read every 50 ms.

use super::{Refusal, Reply, unknown};
use crate::board::requests::{Answer, Ask, Kind, LogsPage, Written};
use crate::board::{Board, BoardError};
use shared::ids::JobId;
use shared::protocol::client::{
    Action, ClientReply, ErrorCode, HostedJob, JobStatus, LogLine, Requester,
};
use std::time::{Duration, Instant};

/// The longest wait between two reads of the owner's answer.
pub const ANSWER_POLL: Duration = Duration::from_millis(50);

/// The first wait for the owner's answer (doubled at each read, up to [`ANSWER_POLL`]).
pub const FIRST_POLL: Duration = Duration::from_millis(2);

/// How long the requesting host waits for the owner's answer to `status`, before it answers
/// from the board's journal instead.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(3);

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
    let ask = Ask {
        kind: Kind::Order(action),
        timeout_ms,
        by: Some(by),
        task: None,
        since_ms: None,
        after: None,
    };
    let (host, _) = ask_owner(board, job, ask)
        .await
        .map_err(|(code, message)| match code {
            // Older clients do not know the code; they refuse as for a busy daemon.
            ErrorCode::HostLost if version < 4 => (ErrorCode::Unavailable, message),
            code => (code, message),
        })?;
    // An unclaimed job cancelled on the board has no host: done, as a local cancel.
    Ok(if version >= 4 && !host.is_empty() {
        ClientReply::Requested { host }
    } else {
        ClientReply::Done
    })
}

/// `status` of `job`, asked of the host that holds it: the job's whole status as that host
/// answered it (its texts cut to one frame), within [`STATUS_TIMEOUT`].
pub async fn status(board: &Board, job: &str) -> Result<JobStatus, Refusal> {
    let ask = logs_ask(Kind::Status, None, None, None);
    let (host, reply) = ask_owner(board, job, ask).await?;
    read_reply(&host, reply.as_deref().unwrap_or_default())
}

/// `logs` of `job` (`--task`, `--since`), asked of the host that holds it: the lines it
/// answered (at most `logs::REMOTE_LOGS_MAX_BYTES` of text).
pub async fn logs(
    board: &Board,
    job: &str,
    task: Option<&str>,
    since_ms: Option<i64>,
) -> Result<Vec<LogLine>, Refusal> {
    let ask = logs_ask(Kind::Logs, task, since_ms, None);
    let (host, reply) = ask_owner(board, job, ask).await?;
    read_reply(&host, reply.as_deref().unwrap_or("[]"))
}

/// One page of `logs --follow` of `job`, asked of the host that holds it: the lines after the
/// cursor `after` (`None`: from `since_ms`, or the first line), at most
/// `logs::REMOTE_FOLLOW_MAX_BYTES` of text; the host, and its page.
pub async fn logs_after(
    board: &Board,
    job: &str,
    task: Option<&str>,
    since_ms: Option<i64>,
    after: Option<i64>,
) -> Result<(String, LogsPage), Refusal> {
    let ask = logs_ask(Kind::LogsAfter, task, since_ms, after);
    let (host, reply) = ask_owner(board, job, ask).await?;
    let page = read_reply(&host, reply.as_deref().unwrap_or_default())?;
    Ok((host, page))
}

/// A read of a job (its output, or its status), of `kind`.
fn logs_ask(kind: Kind, task: Option<&str>, since_ms: Option<i64>, after: Option<i64>) -> Ask {
    Ask {
        kind,
        timeout_ms: None,
        by: None,
        task: task.map(str::to_owned),
        since_ms,
        after,
    }
}

/// The owner `host`'s answer to a read of a job (its output, or its status), as JSON.
fn read_reply<T: serde::de::DeserializeOwned>(host: &str, reply: &str) -> Result<T, Refusal> {
    serde_json::from_str(reply).map_err(|err| {
        (
            ErrorCode::Internal,
            format!("host {host} answered a read this supervisor cannot read: {err}"),
        )
    })
}

/// Writes `ask` of `job` for the host that holds it and, for the kinds the operator waits on,
/// awaits its answer; the host, and what it answered. A cancel or kill of an unclaimed job
/// ends it on the board: the host is then empty.
async fn ask_owner(
    board: &Board,
    job: &str,
    ask: Ask,
) -> Result<(String, Option<String>), Refusal> {
    let Some(id) = JobId::parse(job.trim()) else {
        return Err(unknown(job));
    };
    let kind = ask.kind;
    match board.request(&id, ask).await {
        Ok(Written::Requested {
            host,
            seq,
            updated_us,
        }) => {
            tracing::info!(job_id = %id, host = %host, kind = kind.as_str(), seq, "board request written");
            let answered = if kind.is_answered() {
                let since = kind.changes_job().then_some(updated_us);
                let timeout = if kind == Kind::Status {
                    STATUS_TIMEOUT
                } else {
                    ANSWER_TIMEOUT
                };
                await_answer(board, (&id, &host, seq), since, timeout).await
            } else {
                Ok(None)
            };
            let cleared = match (kind, &answered) {
                // Asked every quarter second while it follows, and a status is of no use
                // later: no row stays behind, answered or not.
                (Kind::LogsAfter | Kind::Status, _) => board.forget_request(seq).await,
                (_, Ok(Some(_))) => board.clear_reply(seq).await,
                _ => Ok(()),
            };
            let reply = answered?;
            if let Err(err) = cleared {
                let message = format!("{:#}", anyhow::Error::from(err));
                tracing::warn!(job_id = %id, seq, error = %message, "cannot clear a request's reply; it stays on the board");
            }
            Ok((host, reply))
        }
        Ok(Written::Ended { host, state }) if host.is_empty() => Err((
            ErrorCode::WrongState,
            format!("job {id} already ended before any host claimed it: {state}"),
        )),
        Ok(Written::Ended { host, state }) => Err((
            ErrorCode::WrongState,
            format!("job {id} already ended on host {host}: {state}"),
        )),
        Ok(Written::CancelledUnclaimed) => {
            tracing::info!(job_id = %id, kind = kind.as_str(), "unclaimed job cancelled on the board");
            Ok((String::new(), None))
        }
        Ok(Written::Unclaimed) => Err((
            ErrorCode::WrongState,
            format!(
                "job {id} is not claimed by any host yet: only cancel and kill reach it before a host with a free slot takes it"
            ),
        )),
        Ok(Written::Unknown) => Err(unknown(job)),
        Ok(Written::Ambiguous { hosts }) => Err(super::status::ambiguous(job, &hosts)),
        // The statement was sent: it may have committed before its answer was lost (a server
        // restarting, a timeout), and then the owner carries it out all the same.
        Err(err @ (BoardError::Query { .. } | BoardError::Timeout { .. })) => {
            let (code, message) = board_refusal(err);
            Err((
                code,
                format!(
                    "{message}; the request may have reached the board before the answer was lost: `supervisor status {id}` shows whether it took effect"
                ),
            ))
        }
        Err(err) => Err(board_refusal(err)),
    }
}

/// Reads request `seq` of job `id` (at [`FIRST_POLL`], doubling to [`ANSWER_POLL`]) until its
/// owner `host` answered it and (when it carried it out, and `since` is given) the mirror
/// shows the job changed after `since`, its owner is lost, or `timeout` passed; what the
/// owner answered.
async fn await_answer(
    board: &Board,
    (id, host, seq): (&JobId, &str, i64),
    since: Option<i64>,
    timeout: Duration,
) -> Result<Option<String>, Refusal> {
    let deadline = Instant::now() + timeout;
    let mut poll = FIRST_POLL;
    loop {
        let answer = board
            .request_answer(seq, since.unwrap_or(i64::MIN))
            .await
            .map_err(board_refusal)?;
        let late = Instant::now() >= deadline;
        match answer {
            Answer::Done { moved: true, reply } => return Ok(reply),
            Answer::Done { reply, .. } if since.is_none() => return Ok(reply),
            Answer::Done { reply, .. } if late => {
                tracing::warn!(job_id = %id, host = %host, seq, "board request done; the mirror has not shown the job since");
                return Ok(reply);
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
                        timeout.as_secs()
                    ),
                ));
            }
            Answer::Done { .. } | Answer::Pending { .. } => {}
        }
        tokio::time::sleep(poll).await;
        poll = (poll * 2).min(ANSWER_POLL);
    }
}

fn board_refusal(err: BoardError) -> Refusal {
    let message = format!("{:#}", anyhow::Error::from(err));
    tracing::warn!(error = %message, "cannot reach the board");
    (ErrorCode::Internal, message)
}
