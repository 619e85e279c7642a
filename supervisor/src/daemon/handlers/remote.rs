//! Requests about jobs another host of the job board holds: find one in the board's mirror,
//! or write a cancel or kill for its host (`board/requests.rs`), answered once the request is
//! committed (`Requested`, version 4 clients; `Done` for older ones).

use super::{Refusal, Reply};
use crate::board::requests::{Ask, Kind, Written};
use crate::board::{Board, BoardError};
use shared::ids::JobId;
use shared::protocol::client::{Action, ClientReply, ErrorCode, HostedJob, Requester};

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

/// Writes `action` (cancel or kill, with a cancel's `timeout_ms`) of `job` for the host that
/// holds it.
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
        other => {
            return Err((
                ErrorCode::InvalidRequest,
                format!(
                    "{} of another host's job is not supported yet",
                    other.as_str()
                ),
            ));
        }
    };
    let ask = Ask {
        kind,
        timeout_ms,
        by: Some(by),
    };
    match board.request(&id, ask).await {
        Ok(Written::Requested { host }) => {
            tracing::info!(job_id = %id, host = %host, kind = kind.as_str(), "board request written");
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

fn board_refusal(err: BoardError) -> Refusal {
    let message = format!("{:#}", anyhow::Error::from(err));
    tracing::warn!(error = %message, "cannot reach the board");
    (ErrorCode::Internal, message)
}
