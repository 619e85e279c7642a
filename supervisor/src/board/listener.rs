//! The listener: one dedicated connection per daemon that `LISTEN`s on
//! [`requests::CHANNEL`](super::requests::CHANNEL) and wakes the owner's request reader
//! ([`Board::requests_due`]) for each notification naming this host, on
//! [`CLAIMS_CHANNEL`] and wakes the claims ([`Board::claims_due`]) for each unclaimed job
//! announced for this host or any host, and on [`JOBS_CHANNEL`] and hands each change of
//! another host's job to [`Board::remote_jobs`]. Nothing else runs on it, and it is never the
//! renewals' connection.
//!
//! A notification is only a hint: PostgreSQL drops those sent while the listener is
//! disconnected, so after every (re)connect the reader and the claims are woken to read the
//! board again (the renewer wakes both after every renewal as well), and
//! [`RemoteJobs::Missed`] tells whoever follows another host's job to read it again.

use super::journal::CLAIMS_CHANNEL;
use super::lease::{next_backoff, renew_interval};
use super::mirror::{JOBS_CHANNEL, JobChange, RemoteJobs};
use super::requests::CHANNEL;
use super::{Board, CONNECT_TIMEOUT, Role};
use std::time::Duration;
use tokio_postgres::AsyncMessage;

pub(super) async fn run(board: Board) {
    let cap = renew_interval(board.config().lease);
    let mut backoff = Duration::ZERO;
    loop {
        let reason = listen(&board).await;
        tracing::warn!(host = %board.config().host, reason, "board listener disconnected");
        backoff = next_backoff(backoff, cap);
        tokio::time::sleep(backoff).await;
    }
}

/// Connects, listens and forwards notifications until the connection ends; why it ended.
async fn listen(board: &Board) -> String {
    let config = board.config();
    let connecting = config.connect_as(Role::Listen);
    let (client, mut connection) = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(err)) => return describe(err),
        Err(_) => return "connecting timed out".to_owned(),
    };
    // Polling the connection drives it, and yields the notifications the client cannot; each
    // one for this host wakes the reader at once (a wake-up stands for any number of them).
    let waker = board.clone();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(note))) => {
                    let for_me = note.payload() == waker.config().host;
                    if note.channel() == JOBS_CHANNEL {
                        announce(&waker, note.payload());
                    } else if note.channel() == CLAIMS_CHANNEL {
                        if for_me || note.payload().is_empty() {
                            waker.inner.claims_due.notify_one();
                        }
                    } else if for_me {
                        waker.inner.requests_due.notify_one();
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => return describe(err),
                None => return "the server closed the connection".to_owned(),
            }
        }
    });
    let statement = format!("LISTEN {CHANNEL}; LISTEN {CLAIMS_CHANNEL}; LISTEN {JOBS_CHANNEL}");
    let listening = client.batch_execute(&statement);
    match tokio::time::timeout(CONNECT_TIMEOUT, listening).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            driver.abort();
            return describe(err);
        }
        Err(_) => {
            driver.abort();
            return "LISTEN timed out".to_owned();
        }
    }
    tracing::info!(host = %config.host, "board listener connected");
    // Whatever was notified while nobody listened is read now.
    board.inner.requests_due.notify_one();
    board.inner.claims_due.notify_one();
    // Nobody may be following another host's job yet: no receiver is no error.
    let _ = board.inner.remote_jobs.send(RemoteJobs::Missed);
    let ended = driver
        .await
        .unwrap_or_else(|err| format!("the listener's driver failed: {err}"));
    drop(client);
    ended
}

/// An error with its causes (`db error: FATAL: terminating connection ...`).
fn describe(err: tokio_postgres::Error) -> String {
    format!("{:#}", anyhow::Error::from(err))
}

/// Hands a change of another host's job to [`Board::remote_jobs`] (this host's own jobs reach
/// the daemon's clients through its job events).
fn announce(board: &Board, payload: &str) {
    let Some(change) = JobChange::parse(payload) else {
        return;
    };
    if change.host != board.config().host {
        tracing::trace!(job_id = %change.id, host = %change.host, state = %change.state, "board job changed");
        // Nobody may be following other hosts' jobs now: no receiver is no error.
        let _ = board.inner.remote_jobs.send(RemoteJobs::Changed(change));
    }
}
