//! A job's write-ahead on the board (ARCHITECTURE.md, The job board): on a board, the report
//! that a task is starting is committed in the local store and then in the job's journal on
//! the board, under the job's epoch, before the conductor gets its acknowledgement; so a step
//! starts only after both commits. A write that matches no row (the job was rescued by another
//! host) is refused: the job is stale here. A revert's write-ahead alone is let through while
//! the board is unreachable and this daemon's lease holds (see [`write_ahead`]). The end of
//! a queued job stopped here is written the same way before its cancel or kill is
//! acknowledged ([`write_stopped`]).

use super::Jobs;
use crate::board::journal::{Entry, JournalTask};
use crate::board::{Board, Held};
use shared::ids::JobId;
use shared::protocol::conductor::{JobEvent, Phase, Report};

/// What the board said to a write-ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum WriteAhead {
    /// Committed (or nothing to write: no board, no write-ahead in the batch, a job outside
    /// the journal): acknowledge.
    Done,
    /// Refused: another host holds the job now. Never acknowledge; kill the job here.
    Refused,
}

/// Writes the job's journal (its state and tasks as the store has them now) to the board if
/// `batch` holds a write-ahead; an error of the board (or the store) leaves the batch to be
/// tried again.
pub(super) async fn write_ahead(
    jobs: &Jobs,
    id: &JobId,
    batch: &[Report],
) -> anyhow::Result<WriteAhead> {
    let Some(board) = jobs.board() else {
        return Ok(WriteAhead::Done);
    };
    let starting: Vec<(u32, Phase)> = batch
        .iter()
        .filter_map(|report| match report.event {
            JobEvent::TaskStarting { task, phase, .. } => Some((task, phase)),
            _ => None,
        })
        .collect();
    let Some(&(task, _)) = starting.last() else {
        return Ok(WriteAhead::Done);
    };
    let epoch = match board.held(id) {
        Some(Held::Epoch(epoch)) => epoch,
        Some(Held::Stale) => return Ok(WriteAhead::Refused),
        None => return Ok(WriteAhead::Done),
    };
    match write(jobs, board, id, epoch, &format!("task {task} starting")).await {
        Err(err) if only_reverts(&starting) && board.holds_lease() => {
            // A revert compensates: it runs while the lease holds (no host can rescue the
            // job meanwhile), and the mirror writes its journal once the board is back; a
            // rescuer that never saw it start runs it again.
            tracing::warn!(job_id = %id, task, error = format!("{err:#}"), "revert started without its write-ahead on the board");
            Ok(WriteAhead::Done)
        }
        written => written,
    }
}

/// Writes the end of job `id`, stopped here before it started (a cancel or kill of a queued
/// job), to its journal on the board before the order is acknowledged: a host that dies right
/// after cannot leave it `pending` there, to be given back to the board by the rescue and run
/// elsewhere. A board that does not answer leaves it to the mirror's next publication (a WARN
/// says so); a refusal means another host holds the job now (recorded as a late write).
pub(super) async fn write_stopped(jobs: &Jobs, id: &JobId) {
    let Some(board) = jobs.board() else {
        return;
    };
    let Some(Held::Epoch(epoch)) = board.held(id) else {
        return;
    };
    match write(jobs, board, id, epoch, "stopped before it started").await {
        Ok(WriteAhead::Done) => {}
        Ok(WriteAhead::Refused) => {
            tracing::warn!(job_id = %id, epoch, "stopped a queued job another host holds now");
        }
        Err(err) => {
            tracing::warn!(job_id = %id, error = format!("{err:#}"), "stop of a queued job not yet on the board; the mirror writes it later");
        }
    }
}

/// Whether every step starting is a revert.
fn only_reverts(starting: &[(u32, Phase)]) -> bool {
    starting.iter().all(|(_, phase)| *phase == Phase::Revert)
}

/// Writes job `id`'s journal under `epoch`; a refusal is recorded as a late write of `what`.
async fn write(
    jobs: &Jobs,
    board: &Board,
    id: &JobId,
    epoch: i64,
    what: &str,
) -> anyhow::Result<WriteAhead> {
    let ids = vec![id.clone()];
    let rows = jobs.store().call(move |s| s.journal_rows(&ids)).await?;
    let entries: Vec<Entry> = rows
        .into_iter()
        .map(|(summary, reason, tasks)| Entry {
            epoch,
            tasks: tasks.iter().map(JournalTask::from).collect(),
            summary,
            reason,
        })
        .collect();
    let refused = board.write_journal(entries).await?;
    if refused.is_empty() {
        return Ok(WriteAhead::Done);
    }
    board.refused(id, epoch, what).await;
    Ok(WriteAhead::Refused)
}
