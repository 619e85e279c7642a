//! `status JOB`: the job and each of its tasks.

use super::{Reply, find, store_refusal};
use crate::job::Jobs;
use shared::protocol::client::ClientReply;

pub async fn handle(jobs: &Jobs, job: &str) -> Reply {
    let id = find(jobs, job).await?;
    jobs.store()
        .call(move |s| s.status(&id))
        .await
        .map(|status| ClientReply::Status(Box::new(status)))
        .map_err(store_refusal)
}
