//! `kill JOB`: SIGKILL of everything of the job, carried out by the job's actor.

use super::Reply;
use crate::job::{Jobs, Order};

pub async fn handle(jobs: &Jobs, job: &str) -> Reply {
    let order = Order::Kill {
        reason: "kill requested".into(),
    };
    super::order(jobs, job, order).await
}
