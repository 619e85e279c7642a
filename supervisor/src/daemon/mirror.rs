//! The mirror publisher: this daemon's jobs, as `ls` shows them, written to the board's `jobs`
//! table (`board/mirror.rs`) so that every host sees them.
//!
//! One background task follows the daemon's job-event broadcast (`Jobs::subscribe`): it is
//! never in a job's write path, so a slow or absent board adds no latency to any job. Events
//! only say *which* jobs changed: the task gathers the ids that arrived together, reads their
//! current summaries from the local store (`Store::summaries`: one indexed read a job, as `ls`
//! computes them), and writes them in one statement on its own connection ([`Role::Mirror`]). Reading at publication time, in one task, means a row never
//! goes back to an older state.
//!
//! Convergence: at start, after every reconnect, and after a lag of the broadcast (events
//! were dropped), it re-publishes every live job from the store (one query) and every job the
//! mirror still shows live (its end was missed): the mirror catches up with the store.

use crate::board::mirror;
use crate::board::{Board, Connection, Role, connect, lease};
use crate::job::Jobs;
use shared::ids::JobId;
use shared::protocol::client::JobSummary;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

/// Publishes this daemon's jobs to the board until the event broadcast closes.
pub async fn run(jobs: Jobs, board: Board) {
    let mut events = jobs.subscribe();
    let mut connection: Option<Connection> = None;
    let mut backoff = Duration::ZERO;
    let mut dirty: BTreeSet<JobId> = BTreeSet::new();
    let mut resync = true;
    loop {
        if connection.as_ref().is_none_or(Connection::is_closed) {
            if let Some(old) = connection.take() {
                old.abandon();
            }
            match connect(board.config(), Role::Mirror).await {
                Ok(fresh) => {
                    tracing::info!(host = %board.config().host, "board mirror connected");
                    connection = Some(fresh);
                    backoff = Duration::ZERO;
                    resync = true;
                }
                Err(err) => {
                    backoff = next_pause(&board, backoff, err);
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            }
        }
        let Some(client) = connection.as_ref() else {
            continue;
        };
        if resync {
            match republish(&jobs, &board, client).await {
                Ok(count) => {
                    tracing::debug!(host = %board.config().host, jobs = count, "board mirror re-published");
                    resync = false;
                }
                Err(err) => {
                    backoff = next_pause(&board, backoff, err);
                    if let Some(old) = connection.take() {
                        old.abandon();
                    }
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            }
        }
        if dirty.is_empty() {
            match events.recv().await {
                Ok(event) => {
                    dirty.insert(event.job);
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(host = %board.config().host, missed, "board mirror lagged; re-publishing");
                    resync = true;
                    continue;
                }
                Err(RecvError::Closed) => return,
            }
        }
        loop {
            match events.try_recv() {
                Ok(event) => {
                    dirty.insert(event.job);
                }
                Err(TryRecvError::Lagged(missed)) => {
                    tracing::warn!(host = %board.config().host, missed, "board mirror lagged; re-publishing");
                    resync = true;
                }
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        if resync {
            continue;
        }
        let ids: Vec<JobId> = std::mem::take(&mut dirty).into_iter().collect();
        if let Err(err) = publish_ids(&jobs, &board, client, ids.clone()).await {
            dirty.extend(ids);
            backoff = next_pause(&board, backoff, err);
            if let Some(old) = connection.take() {
                old.abandon();
            }
            tokio::time::sleep(backoff).await;
        }
    }
}

/// Logs a failure and returns the pause before the next try (doubling up to lease/3).
fn next_pause(board: &Board, backoff: Duration, err: impl Into<anyhow::Error>) -> Duration {
    let err: anyhow::Error = err.into();
    tracing::warn!(host = %board.config().host, error = format!("{err:#}"), "board mirror failed");
    lease::next_backoff(backoff, lease::renew_interval(board.config().lease))
}

/// Publishes every live job of the store, and those the mirror still shows live; how many.
async fn republish(jobs: &Jobs, board: &Board, client: &Connection) -> anyhow::Result<usize> {
    let live = jobs.store().call(|s| s.list(false)).await?;
    let host = &board.config().host;
    let shown = mirror::unended(client.client(), host).await?;
    let live_ids: BTreeSet<&str> = live.iter().map(|job| job.id.as_str()).collect();
    let missed: Vec<JobId> = shown
        .iter()
        .filter(|id| !live_ids.contains(id.as_str()))
        .filter_map(|id| JobId::parse(id))
        .collect();
    let mut rows = live;
    rows.extend(read_summaries(jobs, missed).await?);
    mirror::publish(client.client(), host, &rows).await?;
    Ok(rows.len())
}

/// Publishes the current summaries of `ids` (a job the store no longer has is skipped).
async fn publish_ids(
    jobs: &Jobs,
    board: &Board,
    client: &Connection,
    ids: Vec<JobId>,
) -> anyhow::Result<()> {
    let rows = read_summaries(jobs, ids).await?;
    mirror::publish(client.client(), &board.config().host, &rows).await?;
    Ok(())
}

/// The summaries of `ids` from the store, in one call.
async fn read_summaries(jobs: &Jobs, ids: Vec<JobId>) -> anyhow::Result<Vec<JobSummary>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(jobs.store().call(move |s| s.summaries(&ids)).await?)
}
