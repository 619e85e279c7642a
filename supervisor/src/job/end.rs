//! A job's hard end (killed or crashed): recorded durably with its pending reverts, logged at
//! WARN with the words `revert skipped` and what caused it, and announced; and the crash of a
//! conductor that died while no supervisor watched (ARCHITECTURE.md, The cancellation ladder).

use super::registry::Jobs;
use super::supervise::STORE_RETRY_EVERY;
use crate::containment::JobCgroup;
use crate::metrics::METRICS;
use crate::process::{self, ConductorId, TaskGroups};
use crate::store::{JobRow, StoreError};
use shared::ids::JobId;
use shared::protocol::client::Requester;
use shared::protocol::conductor::JobEvent;
use shared::state::JobState;

/// How many times to retry recording a job's end before giving up loudly (two minutes).
const STORE_RETRIES: u32 = 240;

/// A job's hard end: its state (killed or crashed), why, and who or what caused it.
pub(super) struct HardEnd {
    pub state: JobState,
    pub reason: String,
    /// `operator`, `kill timer`, `job timeout`, `kill_unresponsive`, `conductor died`, ...
    pub cause: &'static str,
    /// The operator whose order caused it, if one did.
    pub by: Option<Requester>,
}

impl HardEnd {
    pub(super) fn crashed(reason: &str, cause: &'static str) -> Self {
        Self {
            state: JobState::Crashed,
            reason: reason.to_owned(),
            cause,
            by: None,
        }
    }
}

/// Records a job's hard end (killed or crashed) and, in the same commit, that no conductor of
/// it runs (every caller has seen it gone, or never started one), retrying while the store
/// refuses (a full disk gets freed), and logs the skipped reverts at WARN with who or what
/// caused the end; gives up loudly after a while. A job the store holds ended already is left
/// as it is, and its end returned (a re-attached conductor whose end was stored but not yet
/// acknowledged): one store call, not a read before the write.
pub(super) async fn record_end(jobs: &Jobs, id: &JobId, hard: HardEnd) -> Option<JobState> {
    let end = hard.state;
    let reason = hard.reason.as_str();
    for attempt in 0..=STORE_RETRIES {
        let (job, why, by) = (id.clone(), reason.to_owned(), hard.by.clone());
        match jobs
            .store()
            .call(move |s| s.record_hard_end_by(&job, end, &why, by.as_ref()))
            .await
        {
            Ok(pending) => {
                let tasks: Vec<&str> = pending.iter().map(|t| t.name.as_str()).collect();
                METRICS
                    .reverts_skipped
                    .inc_by(u64::try_from(tasks.len()).unwrap_or(0));
                let by = hard.by.as_ref().map(Requester::who);
                tracing::warn!(job_id = %id, state = end.as_str(), tasks = tasks.join(","), count = tasks.len(), reason, cause = hard.cause, by, "revert skipped");
                jobs.observe(&JobEvent::JobFinished { state: end });
                jobs.job_ended(id, end, !pending.is_empty(), None);
                jobs.publish_by(id, end.as_str(), hard.by);
                return None;
            }
            Err(StoreError::WrongState { state, .. }) if !state.is_live() => {
                tracing::debug!(job_id = %id, state = state.as_str(), "the job's end was stored already");
                return Some(state);
            }
            Err(
                err @ (StoreError::Illegal(_)
                | StoreError::WrongState { .. }
                | StoreError::UnknownJob(_)),
            ) => {
                tracing::error!(job_id = %id, error = %err, "cannot record the job's end");
                return None;
            }
            Err(err) => {
                if attempt == 0 {
                    tracing::error!(job_id = %id, error = %err, "cannot record the job's end; retrying");
                }
                tokio::time::sleep(STORE_RETRY_EVERY).await;
            }
        }
    }
    tracing::error!(job_id = %id, "gave up recording the job's end: the store kept refusing");
    None
}

/// The job's socket file, once its conductor (the only process listening on it) is gone: the
/// file would otherwise stay for ever, one per job.
pub(super) fn remove_socket(path: &std::path::Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "cannot remove the job's socket")
        }
    }
}

/// A live job whose conductor is gone while nobody watched: whatever it left is killed, and the
/// job is `crashed` with its pending reverts.
pub(super) async fn record_crash(jobs: &Jobs, row: &JobRow) {
    if let Some(path) = &row.cgroup {
        JobCgroup { path: path.clone() }.kill_and_remove().await;
    } else if let (Some(pid), Some(start_time)) = (row.conductor_pid, row.conductor_start) {
        // Its tasks may have outlived it: nothing of the job may survive.
        let id = ConductorId { pid, start_time };
        process::kill_job(id, &TaskGroups::new(id)).await;
    }
    let end = HardEnd::crashed(
        "the conductor died while no supervisor watched",
        "conductor gone while no supervisor watched",
    );
    let _ = record_end(jobs, &row.id, end).await;
    remove_socket(&jobs.state_dir().socket(&row.id));
}
