//! `pause JOB` and `continue JOB`: freeze every process of a running or reverting job, or thaw
//! it; carried out by the job's actor.

use super::Reply;
use crate::job::{Jobs, Order, Requester};
use shared::ids::JobId;

pub async fn handle(jobs: &Jobs, job: &JobId, by: Requester, pause: bool) -> Reply {
    let by = Some(by);
    let order = if pause {
        Order::Pause { by }
    } else {
        Order::Continue { by }
    };
    super::order(jobs, job, order).await
}
