//! `status JOB`: the job and each of its tasks. On a job board (to version 4 clients), a job
//! this daemon holds comes with its host name (`HostStatus`), and a job it does not hold is
//! answered from the board. Asked as `StatusFromHost` (the `status` command of a version 9
//! client), the job's host is asked for its whole status through the board (`OwnerStatus`:
//! as a local `status` reads it there, `remote::status`); when that host cannot answer (lost,
//! stopped, silent for `remote::STATUS_TIMEOUT`, or older than this build), and for `Status`
//! (the `--wait` loops' cheap read), a version 8 client gets the job's status as the board's
//! journal has it (`BoardStatus`: reason, file, each task's state, attempts, result and
//! pending revert, a moment behind its host; its times and process stay there), older ones,
//! or a job without a journal (mirrored only), the mirror's summary (`HostedStatus`). A job
//! whose journal holds a stale owner's refused writes comes with them (`JournalStatus`, or
//! in `OwnerStatus`).

use super::{Reply, remote, store_refusal, unknown};
use crate::board::Board;
use crate::job::Jobs;
use crate::store::{StoreError, TaskRow, task_statuses};
use shared::ids::JobId;
use shared::protocol::client::{ClientReply, ErrorCode, HostedJob, JobStatus, LateWrite};

/// The first protocol version whose clients read `BoardStatus`.
const BOARD_STATUS: u32 = 8;

/// Where the status of another host's job is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The board alone (`Status`): its journal, or the mirror's summary.
    Board,
    /// The job's host first, through the board (`StatusFromHost`); the board's journal when
    /// the host cannot answer.
    Host,
}

pub async fn handle(
    jobs: &Jobs,
    board: Option<&Board>,
    version: u32,
    job: &str,
    source: Source,
) -> Reply {
    // One store call finds the job and reads its status (a `--wait` ends with this call).
    let text = job.to_owned();
    let found = jobs
        .store()
        .read(move |s| s.find_job(&text).and_then(|id| s.status(&id)))
        .await;
    let status = match (found, board) {
        (Ok(status), _) => status,
        (Err(StoreError::UnknownJob(_) | StoreError::BadJobId(_)), Some(board)) if version >= 4 => {
            let refusal = unknown(job);
            let hosted = remote::find(board, job).await?.ok_or(refusal)?;
            if source == Source::Host && !hosted.host.is_empty() {
                match remote::status(board, job).await {
                    Ok(status) => {
                        let late_writes = late_writes(board, &status.id).await;
                        return Ok(ClientReply::OwnerStatus {
                            hosted: Box::new(hosted),
                            status: Box::new(status),
                            late_writes,
                        });
                    }
                    Err((code, message)) => {
                        tracing::info!(job_id = %hosted.job.id, host = %hosted.host, code = ?code, error = %message, "status from the board's journal: the job's host did not answer");
                    }
                }
            }
            if version >= BOARD_STATUS {
                if let Some(status) = journal_status(board, &hosted).await {
                    return Ok(ClientReply::BoardStatus {
                        hosted: Box::new(hosted),
                        status: Box::new(status),
                    });
                }
            }
            return Ok(ClientReply::HostedStatus(Box::new(hosted)));
        }
        (Err(StoreError::UnknownJob(_) | StoreError::BadJobId(_)), _) => return Err(unknown(job)),
        (Err(err), _) => return Err(store_refusal(err)),
    };
    let Some(board) = board.filter(|_| version >= 4) else {
        return Ok(ClientReply::Status(Box::new(status)));
    };
    let host = board.config().host.clone();
    let late_writes = late_writes(board, &status.id).await;
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

/// The refused writes of a stale owner about job `id` the board keeps (none when it cannot be
/// read: logged).
async fn late_writes(board: &Board, id: &JobId) -> Vec<LateWrite> {
    match board.late_writes(id).await {
        Ok(late_writes) => late_writes,
        Err(err) => {
            let message = format!("{:#}", anyhow::Error::from(err));
            tracing::warn!(job_id = %id, error = %message, "cannot read a job's late writes");
            Vec::new()
        }
    }
}

/// The status of `hosted`, another host's job, from the board's journal; `None` when the
/// journal has no task of it (a job only mirrored), or cannot be read or understood (logged):
/// the mirror's summary answers then.
async fn journal_status(board: &Board, hosted: &HostedJob) -> Option<JobStatus> {
    let job = &hosted.job;
    let journaled = match board.read_journal(&job.id, &hosted.host).await {
        Ok(journaled) => journaled?,
        Err(err) => {
            let message = format!("{:#}", anyhow::Error::from(err));
            tracing::warn!(job_id = %job.id, error = %message, "cannot read a job's journal from the board");
            return None;
        }
    };
    let tasks = match journaled
        .tasks
        .iter()
        .map(TaskRow::try_from)
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(tasks) => tasks,
        Err(err) => {
            tracing::warn!(job_id = %job.id, error = %err, "a job's journal on the board is unreadable here");
            return None;
        }
    };
    if tasks.is_empty() {
        return None;
    }
    Some(JobStatus {
        id: job.id.clone(),
        name: job.name.clone(),
        state: job.state,
        reason: journaled.reason,
        source: journaled.source,
        created_ms: job.created_ms,
        started_ms: None,
        ended_ms: None,
        conductor_pid: None,
        containment: None,
        unresponsive_since_ms: None,
        tasks: task_statuses(job.state, tasks, &journaled.spec),
        last_order: None,
        paused_since_ms: job.paused_since_ms,
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
