//! `revert JOB [--reason]`: the pending reverts of a killed, crashed or revert_failed job, in a
//! new conductor. The actor checks and changes the state in one transaction.

use super::Reply;
use crate::job::{Jobs, Order, Requester};
use shared::ids::JobId;

pub async fn handle(jobs: &Jobs, job: &JobId, by: Requester) -> Reply {
    let order = Order::Revert {
        reason: "revert requested".into(),
        by: Some(by),
    };
    super::order(jobs, job, order).await
}
