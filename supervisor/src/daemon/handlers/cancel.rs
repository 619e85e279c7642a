//! `cancel JOB [--timeout] [--reason]`: the soft cancel, carried out by the job's actor.

use super::Reply;
use crate::job::{Jobs, Order, Requester};
use shared::ids::JobId;
use std::time::Duration;

pub async fn handle(jobs: &Jobs, job: &JobId, timeout_ms: Option<u64>, by: Requester) -> Reply {
    let order = Order::Cancel {
        timeout: timeout_ms.map(Duration::from_millis),
        reason: "cancel requested".into(),
        by: Some(by),
    };
    super::order(jobs, job, order).await
}
