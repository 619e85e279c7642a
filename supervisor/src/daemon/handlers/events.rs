//! `events`: every state change of every job, as it happens, until the client goes. In
//! version 3 a `Done` comes first, once the subscription is in place: a client that then reads
//! a job's status misses none of the job's later changes (`--wait` follows a job this way).

use crate::job::Jobs;
use shared::protocol::client::ClientReply;
use shared::protocol::codec::write_frame;
use tokio::net::UnixStream;
use tokio::sync::broadcast::error::RecvError;

pub async fn stream(jobs: &Jobs, stream: &mut UnixStream, version: u32) {
    let mut events = jobs.subscribe();
    if version >= 3 && write_frame(stream, &ClientReply::Done).await.is_err() {
        return;
    }
    loop {
        match events.recv().await {
            Ok(event) => {
                if write_frame(stream, &ClientReply::Event(event))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(RecvError::Lagged(n)) => tracing::warn!(missed = n, "events client too slow"),
            Err(RecvError::Closed) => return,
        }
    }
}
