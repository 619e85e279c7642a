//! `shutdown [--cancel]`: the daemon stops; with `--cancel`, every live job is cancelled first.

use super::Reply;
use crate::job::Jobs;
use shared::protocol::client::ClientReply;

pub fn handle(jobs: &Jobs, cancel: bool) -> Reply {
    tracing::info!(cancel, "shutdown requested");
    jobs.request_shutdown(cancel);
    Ok(ClientReply::Done)
}
