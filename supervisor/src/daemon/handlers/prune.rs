//! `prune --older-than DUR [--state S]... [--vacuum]`, and the daemon's `--keep DUR`: finished
//! jobs are deleted with their rows (jobs, tasks, transitions, output), their conductor's log
//! and their socket, and the space is given back (README, Retention). On a job board, their
//! rows of the board's mirror go too (after the store's delete: a failure there only leaves
//! ended rows on the board, logged, and the next prune does not see them again). So do the
//! board's ended *unclaimed* jobs (cancelled or killed before any host claimed them, in no
//! host's store) that match the same age and states, on whichever host prunes first
//! (`journal::prune_unclaimed`, one statement; their age by the database's clock); they are
//! listed with the pruned jobs.

use super::Reply;
use crate::board::Board;
use crate::job::Jobs;
use shared::ids::JobId;
use shared::protocol::client::{ClientReply, ErrorCode, PruneSummary};
use shared::state::JobState;
use std::time::Duration;

/// How often `--keep` prunes (and once at start).
pub const KEEP_EVERY: Duration = Duration::from_secs(3600);

pub async fn handle(
    jobs: &Jobs,
    board: Option<&Board>,
    older_than_ms: u64,
    states: Vec<JobState>,
    vacuum: bool,
) -> Reply {
    if let Some(live) = states.iter().find(|s| s.is_live()) {
        return Err((
            ErrorCode::InvalidRequest,
            format!("{live} is a live state: only finished jobs can be pruned"),
        ));
    }
    let older_than = Duration::from_millis(older_than_ms);
    prune(jobs, board, older_than, states, vacuum)
        .await
        .map(ClientReply::Pruned)
        .map_err(|err| (ErrorCode::Internal, format!("{err:#}")))
}

/// Deletes the finished jobs that ended more than `older_than` ago (which ones:
/// `Store::prune`), then their files and (on a board) their mirror rows, then reclaims the
/// store's space.
pub async fn prune(
    jobs: &Jobs,
    board: Option<&Board>,
    older_than: Duration,
    states: Vec<JobState>,
    vacuum: bool,
) -> anyhow::Result<PruneSummary> {
    let before = store_bytes(jobs).await;
    let cutoff = crate::clock::now_ms()
        .saturating_sub(i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX));
    let on_board = states.clone();
    let pruned = jobs.store().call(move |s| s.prune(cutoff, &states)).await?;
    for id in &pruned {
        remove_files(jobs, id);
    }
    let mut listed = pruned.clone();
    if let Some(board) = board {
        // Nothing more is written about them from here, and their rows leave the board.
        board.forget(&pruned);
        if !pruned.is_empty() {
            forget_on_board(board, pruned.clone()).await;
        }
        listed.extend(prune_unclaimed(board, older_than, on_board).await);
    }
    if !pruned.is_empty() || vacuum {
        jobs.store().call(move |s| s.reclaim(vacuum)).await?;
    }
    let summary = PruneSummary {
        jobs: listed,
        store_bytes_before: before,
        store_bytes_after: store_bytes(jobs).await,
    };
    tracing::info!(
        count = summary.jobs.len(),
        store_bytes_before = summary.store_bytes_before,
        store_bytes_after = summary.store_bytes_after,
        "pruned finished jobs"
    );
    Ok(summary)
}

/// The daemon's `--keep`: prunes jobs finished more than `keep` ago now and every
/// [`KEEP_EVERY`], for as long as the daemon runs.
pub async fn keep(jobs: Jobs, board: Option<Board>, keep: Duration) {
    let mut every = tokio::time::interval(KEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if let Err(err) = prune(&jobs, board.as_ref(), keep, Vec::new(), false).await {
            tracing::error!(error = %format!("{err:#}"), "cannot prune finished jobs");
        }
    }
}

/// Deletes this host's mirror rows of the pruned jobs; a failure is logged (the rows stay,
/// ended, on the board).
async fn forget_on_board(board: &Board, pruned: Vec<JobId>) {
    let count = pruned.len();
    match board.forget_jobs(pruned).await {
        Ok(deleted) => tracing::info!(count, deleted, "pruned jobs deleted from the board"),
        Err(err) => {
            let message = format!("{:#}", anyhow::Error::from(err));
            tracing::warn!(count, error = %message, "cannot delete pruned jobs from the board; their ended rows stay there");
        }
    }
}

/// Deletes the board's ended unclaimed jobs of the same age and states; their ids (none,
/// logged, when the board cannot: the next prune, on any host, deletes them).
async fn prune_unclaimed(board: &Board, older_than: Duration, states: Vec<JobState>) -> Vec<JobId> {
    match board.prune_unclaimed(older_than, states).await {
        Ok(pruned) => {
            if !pruned.is_empty() {
                tracing::info!(
                    count = pruned.len(),
                    "pruned unclaimed jobs deleted from the board"
                );
            }
            pruned
        }
        Err(err) => {
            let message = format!("{:#}", anyhow::Error::from(err));
            tracing::warn!(error = %message, "cannot delete the board's ended unclaimed jobs");
            Vec::new()
        }
    }
}

/// A pruned job's conductor log and socket (gone already if its end removed it).
fn remove_files(jobs: &Jobs, id: &JobId) {
    let dir = jobs.state_dir();
    for path in [dir.conductor_log(id), dir.socket(id)] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::warn!(job_id = %id, path = %path.display(), error = %err, "cannot remove a pruned job's file")
            }
        }
    }
}

/// The store's size ([`crate::store::Store::size_bytes`]); 0 when it cannot be read (the
/// prune's own result says what went wrong).
async fn store_bytes(jobs: &Jobs) -> u64 {
    jobs.store()
        .read(|s| s.size_bytes())
        .await
        .unwrap_or_default()
}
