//! `resume JOB [--reason]`: a killed or crashed job runs again from its first task that did not
//! succeed. The actor checks and changes the state in one transaction.

use super::Reply;
use crate::job::{Jobs, Order, Requester};
use shared::ids::JobId;

pub async fn handle(jobs: &Jobs, job: &JobId, by: Requester) -> Reply {
    let order = Order::Resume {
        reason: "resume requested".into(),
        by: Some(by),
        revert_interrupted: false,
    };
    super::order(jobs, job, order).await
}
