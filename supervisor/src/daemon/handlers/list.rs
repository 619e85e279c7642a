//! `ls [--all]`: the live jobs (or all), in submission order.

use super::{Reply, store_refusal};
use crate::job::Jobs;
use shared::protocol::client::ClientReply;

pub async fn handle(jobs: &Jobs, all: bool) -> Reply {
    jobs.store()
        .call(move |s| s.list(all))
        .await
        .map(ClientReply::Jobs)
        .map_err(store_refusal)
}
