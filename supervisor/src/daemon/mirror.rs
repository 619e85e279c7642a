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
//!
//! The jobs of the journal (submitted or rescued on the board) are written with their tasks
//! and under their epochs: task ends, results and the job's end reach the board from here,
//! asynchronously; only the write-ahead is written synchronously, by the job's actor.
//!
//! Each publication announces to every host, in its own statement ([`mirror::JOBS_CHANNEL`]),
//! the jobs whose job-level events (a change of the job's state, not of a task's) arrived
//! since their last publication: other hosts' `events` and `--wait` follow them. A
//! re-publication announces the jobs whose end the mirror missed. The job actor's own
//! write-ahead (`job/journal.rs`) announces nothing, so no announcement is in a job's write
//! path.

use crate::board::journal::{self, Entry, JournalTask};
use crate::board::mirror;
use crate::board::{Board, Connection, Held, Role, connect, lease};
use crate::job::{Jobs, Order, OrderError};
use shared::ids::JobId;
use shared::protocol::client::Event;
use shared::protocol::client::JobSummary;
use std::collections::BTreeSet;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

/// The most jobs one publication reads and writes (the store thread is held for one batch).
const BATCH: usize = 500;

/// Publishes this daemon's jobs to the board until the event broadcast closes.
pub async fn run(jobs: Jobs, board: Board) {
    let mut publisher = Publisher {
        events: jobs.subscribe(),
        jobs,
        board,
        connection: None,
        backoff: Duration::ZERO,
        dirty: BTreeSet::new(),
        changed: BTreeSet::new(),
        resync: true,
    };
    loop {
        let step = if publisher
            .connection
            .as_ref()
            .is_none_or(Connection::is_closed)
        {
            publisher.connect().await
        } else if publisher.resync {
            publisher.republish().await
        } else if publisher.dirty.is_empty() {
            publisher.gather().await
        } else {
            publisher.flush().await
        };
        match step {
            Step::Next => {}
            Step::Failed(err) => publisher.pause(err).await,
            Step::Closed => return,
        }
    }
}

/// The publisher's state between steps.
struct Publisher {
    jobs: Jobs,
    board: Board,
    events: broadcast::Receiver<Event>,
    /// Its own connection ([`Role::Mirror`]); `None` after a failure, until it reconnects.
    connection: Option<Connection>,
    backoff: Duration,
    /// The jobs whose events arrived and are not yet published.
    dirty: BTreeSet<JobId>,
    /// Those of `dirty` whose state changed (a job-level event): to be announced.
    changed: BTreeSet<JobId>,
    /// Every live job is due to be published again (start, reconnect, lag).
    resync: bool,
}

/// What one step of the publisher found.
enum Step {
    Next,
    /// The board or the store failed: drop the connection, pause, reconnect, re-publish.
    Failed(anyhow::Error),
    /// The daemon's event broadcast ended.
    Closed,
}

impl Publisher {
    /// (Re)connects; a connection that is still there is closed, and given up.
    async fn connect(&mut self) -> Step {
        if let Some(old) = self.connection.take() {
            old.abandon();
        }
        match connect(self.board.config(), Role::Mirror).await {
            Ok(fresh) => {
                tracing::info!(host = %self.board.config().host, "board mirror connected");
                self.connection = Some(fresh);
                self.backoff = Duration::ZERO;
                self.resync = true;
                Step::Next
            }
            Err(err) => Step::Failed(err.into()),
        }
    }

    /// Every live job of the store, and those the mirror still shows live (an end it missed).
    async fn republish(&mut self) -> Step {
        let Some(client) = self.connection.as_ref() else {
            return Step::Next;
        };
        match republish(&self.jobs, &self.board, client).await {
            Ok(count) => {
                tracing::debug!(host = %self.board.config().host, jobs = count, "board mirror re-published");
                self.resync = false;
                Step::Next
            }
            Err(err) => Step::Failed(err),
        }
    }

    /// Waits for the next event, then takes every event already there; a lag asks for a
    /// re-publication.
    async fn gather(&mut self) -> Step {
        match self.events.recv().await {
            Ok(event) => self.note(event),
            Err(RecvError::Lagged(missed)) => self.lagged(missed),
            Err(RecvError::Closed) => return Step::Closed,
        }
        loop {
            match self.events.try_recv() {
                Ok(event) => self.note(event),
                Err(TryRecvError::Lagged(missed)) => self.lagged(missed),
                Err(TryRecvError::Empty | TryRecvError::Closed) => return Step::Next,
            }
        }
    }

    /// Marks the event's job due to be published, and announced if its state changed.
    fn note(&mut self, event: Event) {
        if event.task.is_none() {
            self.changed.insert(event.job.clone());
        }
        self.dirty.insert(event.job);
    }

    fn lagged(&mut self, missed: u64) {
        tracing::warn!(host = %self.board.config().host, missed, "board mirror lagged; re-publishing");
        self.resync = true;
    }

    /// Publishes up to [`BATCH`] of the jobs whose events arrived (kept for later on failure).
    async fn flush(&mut self) -> Step {
        let Some(client) = self.connection.as_ref() else {
            return Step::Next;
        };
        let ids: Vec<JobId> = self.dirty.iter().take(BATCH).cloned().collect();
        match publish_ids(&self.jobs, &self.board, client, ids.clone(), &self.changed).await {
            Ok(()) => {
                for id in &ids {
                    self.dirty.remove(id);
                    self.changed.remove(id);
                }
                Step::Next
            }
            Err(err) => Step::Failed(err),
        }
    }

    /// After a failure: the connection is given up, and the next try waits a backoff.
    async fn pause(&mut self, err: anyhow::Error) {
        if let Some(old) = self.connection.take() {
            old.abandon();
        }
        self.backoff = next_pause(&self.board, self.backoff, err);
        tokio::time::sleep(self.backoff).await;
    }
}

/// Logs a failure and returns the pause before the next try (doubling up to lease/3).
fn next_pause(board: &Board, backoff: Duration, err: anyhow::Error) -> Duration {
    tracing::warn!(host = %board.config().host, error = format!("{err:#}"), "board mirror failed");
    lease::next_backoff(backoff, lease::renew_interval(board.config().lease))
}

/// Publishes every live job of the store, and those the mirror still shows live (announced:
/// their end was missed); how many.
async fn republish(jobs: &Jobs, board: &Board, client: &Connection) -> anyhow::Result<usize> {
    let live = jobs.store().call(|s| s.list(false)).await?;
    let host = &board.config().host;
    let shown = mirror::unended(client.client(), host).await?;
    let live_ids: BTreeSet<&str> = live.iter().map(|job| job.id.as_str()).collect();
    let missed: BTreeSet<JobId> = shown
        .iter()
        .filter(|id| !live_ids.contains(id.as_str()))
        .filter_map(|id| JobId::parse(id))
        .collect();
    let ids: Vec<JobId> = live
        .iter()
        .map(|job| job.id.clone())
        .chain(missed.iter().cloned())
        .collect();
    let count = ids.len();
    publish_ids(jobs, board, client, ids, &missed).await?;
    Ok(count)
}

/// Publishes the current state of `ids` (a job the store no longer has is skipped): the jobs
/// of the journal this daemon holds with their tasks, under their epochs
/// (`journal::write_announcing`); the others (submitted before this daemon was on the board)
/// as summaries; none of those it lost; those of `changed` announced. A refused write makes
/// the job stale here (`Board::refused`) and kills it if it runs.
async fn publish_ids(
    jobs: &Jobs,
    board: &Board,
    client: &Connection,
    ids: Vec<JobId>,
    changed: &BTreeSet<JobId>,
) -> anyhow::Result<()> {
    let announce: Vec<String> = ids
        .iter()
        .filter(|id| changed.contains(*id))
        .map(|id| id.as_str().to_owned())
        .collect();
    let announce: Vec<&str> = announce.iter().map(String::as_str).collect();
    let mut epochs = HashMap::new();
    let mut outside = Vec::new();
    for id in ids {
        match board.held(&id) {
            Some(Held::Epoch(epoch)) => {
                epochs.insert(id, epoch);
            }
            Some(Held::Stale) => {}
            None => outside.push(id),
        }
    }
    let rows = read_summaries(jobs, outside).await?;
    mirror::publish(client.client(), &board.config().host, &rows, &announce).await?;
    if epochs.is_empty() {
        return Ok(());
    }
    let held: Vec<JobId> = epochs.keys().cloned().collect();
    let rows = jobs.store().call(move |s| s.journal_rows(&held)).await?;
    let entries: Vec<Entry> = rows
        .into_iter()
        .filter_map(|(summary, reason, tasks)| {
            Some(Entry {
                epoch: *epochs.get(&summary.id)?,
                tasks: tasks.iter().map(JournalTask::from).collect(),
                summary,
                reason,
            })
        })
        .collect();
    let host = &board.config().host;
    let refused = journal::write_announcing(client.client(), host, &entries, &announce).await?;
    for id in refused {
        let epoch = epochs.get(&id).copied().unwrap_or_default();
        board.refused(&id, epoch, "job state").await;
        stop_stale(jobs, id);
    }
    Ok(())
}

/// Hard-kills a job this daemon lost to another host, if it still runs here (in the
/// background: the order waits for the job's actor).
pub fn stop_stale(jobs: &Jobs, id: JobId) {
    let jobs = jobs.clone();
    tokio::spawn(async move { kill_stale(&jobs, &id).await });
}

/// Kills job `id`, lost to another host, and waits for its actor (a failure is logged).
pub async fn kill_stale(jobs: &Jobs, id: &JobId) {
    let order = Order::Kill {
        reason: "stale owner: the job was taken by another host".into(),
        by: None,
    };
    match jobs.ask(id, order).await {
        Ok(()) | Err(OrderError::WrongState(_)) => {}
        Err(err) => {
            tracing::warn!(job_id = %id, error = %err, "cannot kill a job lost to another host")
        }
    }
}

/// The summaries of `ids` from the store, in one call.
async fn read_summaries(jobs: &Jobs, ids: Vec<JobId>) -> anyhow::Result<Vec<JobSummary>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(jobs.store().call(move |s| s.summaries(&ids)).await?)
}
