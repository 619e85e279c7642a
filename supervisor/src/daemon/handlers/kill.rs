//! `kill JOB [--reason]`: SIGKILL of everything of the job, carried out by the job's actor.

use super::Reply;
use crate::job::{Jobs, Order, Requester};
use shared::ids::JobId;

pub async fn handle(jobs: &Jobs, job: &JobId, by: Requester) -> Reply {
    let order = Order::Kill {
        reason: "kill requested".into(),
        by: Some(by),
    };
    super::order(jobs, job, order).await
}
