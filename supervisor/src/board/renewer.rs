//! The renewal loop: one task, one dedicated connection, one renewal every lease/3.
//!
//! Each attempt is bounded by the renewal interval (a hung connection cannot hold the loop) and
//! stamped with its send time on the monotonic clock before it leaves. A failure drops the
//! connection; the next attempt reconnects after a backoff that doubles up to the interval.
//! The loop also wakes at `lease - margin` after the last success to log `lease lost` on time,
//! whether or not a renewal is in flight elsewhere. A success after the lease stopped being
//! current (past the soft fence, or lost) logs `board lease regained`; fencing itself is the
//! daemon's (`daemon/fence.rs`), woken by each renewal through [`Board::lease_watch`].

use super::hosts::{self, Renewal};
use super::lease::{next_backoff, renew_interval};
use super::{Board, Connection, LiveJobs, Role, connect};
use std::time::{Duration, Instant};

pub(super) async fn run(board: Board, mut client: Option<Connection>, live_jobs: LiveJobs) {
    let interval = renew_interval(board.config().lease);
    let mut backoff = Duration::ZERO;
    let mut lost_reported = false;
    let mut due = board.lease_clock().next_renewal();
    loop {
        let clock = board.lease_clock();
        let wake = if lost_reported {
            due
        } else {
            due.min(clock.lost_at())
        };
        tokio::time::sleep_until(wake.into()).await;
        let now = Instant::now();
        if !lost_reported && clock.is_lost(now) {
            tracing::warn!(
                host = %board.config().host,
                elapsed_ms = now.duration_since(clock.last_sent()).as_millis(),
                "lease lost"
            );
            lost_reported = true;
        }
        if now < due {
            continue;
        }
        let live = i64::try_from(live_jobs()).unwrap_or(i64::MAX);
        match attempt(&board, &mut client, live, interval).await {
            Ok((Renewal::Renewed, sent)) => {
                // Past the soft fence, the daemon took no job: it does again from now on.
                let lapsed = !board.lease_clock().is_current(Instant::now());
                board.record_renewal(sent);
                if lost_reported || lapsed {
                    tracing::info!(host = %board.config().host, "board lease regained");
                    lost_reported = false;
                }
                backoff = Duration::ZERO;
                due = sent + interval;
            }
            Ok((Renewal::TakenOver, _)) => {
                tracing::error!(
                    host = %board.config().host,
                    instance = %board.instance(),
                    "board lease taken over"
                );
                return;
            }
            Err(reason) => {
                let since = Instant::now().duration_since(board.last_renewal_sent());
                tracing::warn!(
                    host = %board.config().host,
                    reason,
                    elapsed_ms = since.as_millis(),
                    "board lease at risk"
                );
                backoff = next_backoff(backoff, interval);
                due = Instant::now() + backoff;
            }
        }
    }
}

/// One renewal, reconnecting first when the connection is gone: what it found and when it was
/// sent, or why it failed (the connection is then abandoned: a stuck one must not linger).
async fn attempt(
    board: &Board,
    client: &mut Option<Connection>,
    live_jobs: i64,
    budget: Duration,
) -> Result<(Renewal, Instant), String> {
    if client.as_ref().is_none_or(Connection::is_closed) {
        abandon(client);
        let fresh = match tokio::time::timeout(budget, connect(board.config(), Role::Renew)).await {
            Ok(Ok(fresh)) => fresh,
            Ok(Err(err)) => return Err(format!("{:#}", anyhow::Error::from(err))),
            Err(_) => return Err("connecting timed out".to_owned()),
        };
        tracing::info!(board = %board.config().shown_url(), "board reconnected");
        *client = Some(fresh);
    }
    let Some(connected) = client.as_ref() else {
        return Err("no connection".to_owned());
    };
    let sent = Instant::now();
    let renewal = hosts::renew(
        connected.client(),
        &board.config().host,
        board.instance(),
        live_jobs,
    );
    match tokio::time::timeout(budget, renewal).await {
        Ok(Ok(found)) => Ok((found, sent)),
        Ok(Err(err)) => {
            abandon(client);
            Err(err.to_string())
        }
        Err(_) => {
            abandon(client);
            Err("the renewal timed out".to_owned())
        }
    }
}

fn abandon(client: &mut Option<Connection>) {
    if let Some(connection) = client.take() {
        connection.abandon();
    }
}
