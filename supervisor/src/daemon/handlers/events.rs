//! `events`: every state change of every job, as it happens, until the client goes.

use crate::job::Jobs;
use shared::protocol::client::ClientReply;
use shared::protocol::codec::write_frame;
use tokio::net::UnixStream;
use tokio::sync::broadcast::error::RecvError;

pub async fn stream(jobs: &Jobs, stream: &mut UnixStream) {
    let mut events = jobs.subscribe();
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
