//! `pause JOB` and `continue JOB`: freeze every process of a live job, or thaw it; carried out
//! by the job's actor.

use super::Reply;
use crate::job::{Jobs, Order, Requester};
use shared::protocol::client::{ClientReply, ErrorCode};

pub async fn handle(jobs: &Jobs, job: &str, by: Requester, pause: bool) -> Reply {
    let _ = (jobs, job, by, pause);
    let _: Option<Order> = None;
    Err((
        ErrorCode::InvalidRequest,
        "pause is not available yet".into(),
    ))
    .map(|()| ClientReply::Done)
}
