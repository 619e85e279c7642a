//! `submit FILE`: the spec is checked again (a client can send any bytes), stored durably as
//! `pending`, and the scheduler is woken. On a board, the job's journal (its row, epoch 1, and
//! its tasks) is committed on the board first, under an id drawn until the board takes it, then
//! in the local store: the submit is acknowledged after both commits. A submit is refused while
//! this daemon's lease is not current (it is fencing itself: `daemon/fence.rs`) when it would
//! hold the job (`--host` naming itself); otherwise it is written unclaimed, for another host.
//!
//! Claims: `submit --host NAME` of another host writes the job on the board unclaimed,
//! pinned to NAME, and announced (one statement): NAME claims it (`daemon/claims.rs`); the
//! answer comes after the board's commit, and nothing is stored here. A plain `submit` that
//! this host cannot start now (its lease not current, or as many jobs running or queued here
//! as `--max-jobs`) is written unclaimed for any host with a free slot. `--host` without a board is refused.

use super::Reply;
use crate::board::Board;
use crate::board::journal::{JournalTask, NewJob};
use crate::job::Jobs;
use crate::store::StoreError;
use shared::ids::JobId;
use shared::protocol::client::{ClientReply, ErrorCode};
use shared::spec::JobSpec;
use shared::state::{JobState, TaskState};

pub async fn handle(
    jobs: &Jobs,
    board: Option<&Board>,
    spec: JobSpec,
    source: String,
    pinned: Option<String>,
) -> Reply {
    if jobs.is_stopping() {
        return Err((ErrorCode::Unavailable, "the daemon is shutting down".into()));
    }
    if let (Some(host), None) = (&pinned, board) {
        return Err((
            ErrorCode::InvalidRequest,
            format!("submit --host {host} needs a daemon on a job board (daemon --board URL)"),
        ));
    }
    let mut spec = spec;
    // A client may send any bytes: the spec is checked again as a whole. A relative `cwd`
    // (from an older CLI) resolves against the job file's directory, as the CLI does.
    if let Some(dir) = std::path::Path::new(&source).parent() {
        spec.resolve_cwds(dir);
    }
    spec.check()
        .and_then(|()| crate::job::check_runnable(&spec, jobs.containment()))
        .map_err(|problem| (ErrorCode::InvalidRequest, format!("{source}: {problem}")))?;
    let name = spec.name.clone();
    let id = match board {
        Some(board) => {
            // Held here only by a host that may start it now: its lease current (else it
            // is fencing itself and takes nothing), a slot free.
            let unclaimed = match pinned {
                Some(host) if host == board.config().host => {
                    super::check_lease(Some(board))?;
                    None
                }
                Some(host) => Some(Some(host)),
                None if board.is_lease_current() && has_room(jobs, board).await? => None,
                None => Some(None),
            };
            if let Some(pinned) = unclaimed {
                let id = submit_on_board(jobs, board, spec, source, Some(pinned.clone())).await?;
                tracing::info!(job_id = %id, job = %name, pinned = pinned.as_deref().unwrap_or(""), "job submitted unclaimed");
                return Ok(ClientReply::Submitted { job: id });
            }
            submit_on_board(jobs, board, spec, source, None).await?
        }
        None => jobs
            .store()
            .call(move |s| {
                s.create_job(&spec, &source, None).inspect_err(|e| {
                    if e.is_disk_full() {
                        s.reclaim_space();
                    }
                })
            })
            .await
            .map_err(cannot_store)?,
    };
    tracing::info!(job_id = %id, job = %name, "job submitted");
    jobs.publish(&id, None, JobState::Pending.as_str());
    jobs.queued(id.clone());
    Ok(ClientReply::Submitted { job: id })
}

/// How many ids a submit on a board draws before it gives up (each collides with a job of the
/// board with a chance of one in four billion per thousand jobs).
const ID_DRAWS: usize = 16;

/// Whether this host can start one more job now: fewer running or queued here than
/// `--max-jobs` (the lease was checked).
async fn has_room(jobs: &Jobs, board: &Board) -> Result<bool, super::Refusal> {
    let queued = jobs
        .store()
        .call(|s| s.queued_jobs())
        .await
        .map_err(cannot_store)?;
    Ok(jobs.supervising().saturating_add(queued.len()) < board.max_jobs())
}

/// Stores the job on the board's journal, then locally under the same id; returns the id.
/// `unclaimed` (`Some`: pinned to the host named, or to none): on the board only, for a host
/// to claim.
async fn submit_on_board(
    jobs: &Jobs,
    board: &Board,
    spec: JobSpec,
    source: String,
    unclaimed: Option<Option<String>>,
) -> Result<JobId, super::Refusal> {
    let spec_json = serde_json::to_string(&spec).map_err(|e| {
        (
            ErrorCode::InvalidRequest,
            format!("cannot encode the spec: {e}"),
        )
    })?;
    let spec = std::sync::Arc::new(spec);
    for _ in 0..ID_DRAWS {
        let id = crate::store::draw_id();
        let job = NewJob {
            id: id.clone(),
            name: spec.name.clone(),
            source: source.clone(),
            spec: spec_json.clone(),
            on_host_loss: spec.on_host_loss,
            tasks: journal_tasks(&spec),
        };
        let taken = !board
            .insert_job(job, unclaimed.clone())
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "job refused: cannot write it on the board");
                (
                    ErrorCode::Unavailable,
                    format!("cannot write the job on the board: {e}"),
                )
            })?;
        if taken {
            continue;
        }
        if unclaimed.is_some() {
            return Ok(id);
        }
        let (local_spec, local_json) = (spec.clone(), spec_json.clone());
        let (local_source, local_id) = (source.clone(), id.clone());
        let stored = jobs
            .store()
            .call(move |s| s.create_job_as(&local_spec, &local_json, &local_source, &local_id))
            .await;
        match stored {
            Ok(()) => {
                board.hold(&id, 1);
                return Ok(id);
            }
            Err(err) => {
                if let Err(forget) = board.forget_job(&id).await {
                    tracing::warn!(job_id = %id, error = %forget, "cannot remove a job whose local commit failed from the board");
                }
                if !matches!(err, StoreError::IdTaken(_)) {
                    return Err(cannot_store(err));
                }
            }
        }
    }
    Err((
        ErrorCode::Unavailable,
        format!("no free job id after {ID_DRAWS} draws"),
    ))
}

/// The tasks of a new job as the journal has them: all `pending`.
fn journal_tasks(spec: &JobSpec) -> Vec<JournalTask> {
    spec.tasks
        .iter()
        .enumerate()
        .map(|(idx, task)| JournalTask {
            idx: i32::try_from(idx).unwrap_or(i32::MAX),
            name: task.name.clone(),
            has_revert: task.body.has_revert(),
            state: TaskState::Pending.as_str().to_owned(),
            attempts: 0,
            exec_outcome: None,
            result: String::new(),
        })
        .collect()
}

/// A store that refuses the job.
fn cannot_store(err: StoreError) -> super::Refusal {
    tracing::warn!(error = %err, "job refused: cannot store it");
    (
        ErrorCode::Unavailable,
        format!("cannot store the job: {err}"),
    )
}
