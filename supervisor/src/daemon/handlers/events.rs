//! `events`: every state change of every job, as it happens, until the client goes. In
//! version 3 a `Done` comes first, once the subscription is in place: a client that then reads
//! a job's status misses none of the job's later changes (`--wait` follows a job this way).
//!
//! On a job board, to a version 7 client, the stream also carries the state changes of the
//! other hosts' jobs (`HostedEvent`, from the board's listener: `Board::remote_jobs`), and a
//! `Done` again after a gap: this daemon's events lagged (the client was too slow), or the
//! listener reconnected (changes announced meanwhile were lost). Whoever follows a job reads
//! it again then: a lost change only delays it.

use crate::board::Board;
use crate::board::mirror::RemoteJobs;
use crate::job::Jobs;
use shared::protocol::client::{ClientReply, Event};
use shared::protocol::codec::write_frame;
use tokio::net::UnixStream;
use tokio::sync::broadcast::{self, error::RecvError};

/// The first version that gets other hosts' changes and a `Done` after a gap.
const BOARD_EVENTS: u32 = 7;

pub async fn stream(jobs: &Jobs, board: Option<&Board>, stream: &mut UnixStream, version: u32) {
    let mut events = jobs.subscribe();
    let mut remote = board
        .filter(|_| version >= BOARD_EVENTS)
        .map(Board::remote_jobs);
    if version >= 3 && write_frame(stream, &ClientReply::Done).await.is_err() {
        return;
    }
    loop {
        let reply = tokio::select! {
            local = events.recv() => match local {
                Ok(event) => ClientReply::Event(event),
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "events client too slow");
                    if version < BOARD_EVENTS {
                        continue;
                    }
                    ClientReply::Done
                }
                Err(RecvError::Closed) => return,
            },
            news = next_remote(&mut remote) => match news {
                Some(reply) => reply,
                None => continue,
            },
        };
        if write_frame(stream, &reply).await.is_err() {
            return;
        }
    }
}

/// The next reply from the board's changes of other hosts' jobs: a `HostedEvent`, or a
/// `Done` after a gap; `None` once they ended (never while the daemon runs). Without them
/// (no board, an older client), never resolves.
async fn next_remote(remote: &mut Option<broadcast::Receiver<RemoteJobs>>) -> Option<ClientReply> {
    let Some(receiver) = remote else {
        return std::future::pending().await;
    };
    match receiver.recv().await {
        Ok(RemoteJobs::Changed(change)) => Some(ClientReply::HostedEvent {
            host: change.host,
            event: Event {
                job: change.id,
                task: None,
                state: change.state.as_str().to_owned(),
                at_ms: change.at_ms,
                by: None,
            },
        }),
        Ok(RemoteJobs::Missed) => Some(ClientReply::Done),
        Err(RecvError::Lagged(n)) => {
            tracing::warn!(missed = n, "events client too slow for the board's changes");
            Some(ClientReply::Done)
        }
        Err(RecvError::Closed) => {
            *remote = None;
            None
        }
    }
}
