//! `status JOB`: the job and each of its tasks. On a job board (to version 4 clients), a job
//! this daemon holds comes with its host name (`HostStatus`), and a job it does not hold is
//! answered from the board's mirror (`HostedStatus`): its host, name, state and task; the
//! details stay on its host. A job whose journal holds a stale owner's refused writes comes
//! with them (`JournalStatus`).

use super::{Reply, find, remote, store_refusal};
use crate::board::Board;
use crate::job::Jobs;
use shared::protocol::client::{ClientReply, ErrorCode};

pub async fn handle(jobs: &Jobs, board: Option<&Board>, version: u32, job: &str) -> Reply {
    let id = match (find(jobs, job).await, board) {
        (Ok(id), _) => id,
        (Err(refusal), Some(board)) if version >= 4 => {
            let hosted = remote::find(board, job).await?.ok_or(refusal)?;
            return Ok(ClientReply::HostedStatus(Box::new(hosted)));
        }
        (Err(refusal), _) => return Err(refusal),
    };
    let status = jobs
        .store()
        .call(move |s| s.status(&id))
        .await
        .map_err(store_refusal)?;
    let Some(board) = board.filter(|_| version >= 4) else {
        return Ok(ClientReply::Status(Box::new(status)));
    };
    let host = board.config().host.clone();
    let late_writes = match board.late_writes(&status.id).await {
        Ok(late_writes) => late_writes,
        Err(err) => {
            let message = format!("{:#}", anyhow::Error::from(err));
            tracing::warn!(job_id = %status.id, error = %message, "cannot read a job's late writes");
            Vec::new()
        }
    };
    Ok(if late_writes.is_empty() {
        ClientReply::HostStatus {
            host,
            status: Box::new(status),
        }
    } else {
        ClientReply::JournalStatus {
            host,
            status: Box::new(status),
            late_writes,
        }
    })
}

/// Says that `job` names several jobs of the board.
pub(super) fn ambiguous(job: &str, hosts: &[String]) -> super::Refusal {
    (
        ErrorCode::InvalidRequest,
        format!(
            "job id {job} names a job on each of the hosts {}: ask on the host you mean",
            hosts.join(", ")
        ),
    )
}
