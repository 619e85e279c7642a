//! `submit FILE`: the spec is checked again (a client can send any bytes), stored durably as
//! `pending`, and the scheduler is woken. On a job board, refused while this daemon's lease
//! is not current (it is fencing itself: `daemon/fence.rs`).

use super::Reply;
use crate::board::Board;
use crate::job::Jobs;
use shared::protocol::client::{ClientReply, ErrorCode};
use shared::spec::JobSpec;
use shared::state::JobState;

pub async fn handle(jobs: &Jobs, board: Option<&Board>, spec: JobSpec, source: String) -> Reply {
    if jobs.is_stopping() {
        return Err((ErrorCode::Unavailable, "the daemon is shutting down".into()));
    }
    super::check_lease(board)?;
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
    let id = jobs
        .store()
        .call(move |s| {
            s.create_job(&spec, &source, None).inspect_err(|e| {
                if e.is_disk_full() {
                    s.reclaim_space();
                }
            })
        })
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "job refused: cannot store it");
            (ErrorCode::Unavailable, format!("cannot store the job: {e}"))
        })?;
    tracing::info!(job_id = %id, job = %name, "job submitted");
    jobs.publish(&id, None, JobState::Pending.as_str());
    jobs.wake();
    Ok(ClientReply::Submitted { job: id })
}
