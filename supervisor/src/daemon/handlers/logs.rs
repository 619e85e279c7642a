//! `logs JOB [--task T] [--follow]`: the job's stored output, then (with `--follow`) new lines
//! while the job is live.

use super::find;
use crate::job::Jobs;
use shared::ids::JobId;
use shared::protocol::client::{ClientReply, ErrorCode, LogLine};
use shared::protocol::codec::write_frame;
use std::time::Duration;
use tokio::net::UnixStream;

/// How often `logs --follow` looks for new lines.
const FOLLOW_EVERY: Duration = Duration::from_millis(100);
/// Lines read from the store at a time: the output of a job is sent a page at a time, never
/// held whole in memory.
const PAGE: u32 = 512;

pub async fn stream(
    jobs: &Jobs,
    stream: &mut UnixStream,
    job: &str,
    task: Option<&str>,
    follow: bool,
) {
    stream_from(jobs, stream, job, task, follow, None).await;
}

/// `logs --since`: from the first line written at or after `since_ms`.
pub async fn stream_since(
    jobs: &Jobs,
    stream: &mut UnixStream,
    job: &str,
    task: Option<&str>,
    follow: bool,
    since_ms: i64,
) {
    stream_from(jobs, stream, job, task, follow, Some(since_ms)).await;
}

async fn stream_from(
    jobs: &Jobs,
    stream: &mut UnixStream,
    job: &str,
    task: Option<&str>,
    follow: bool,
    since_ms: Option<i64>,
) {
    let id = match find(jobs, job).await {
        Ok(id) => id,
        Err((code, message)) => {
            let _ = write_frame(stream, &ClientReply::Error { code, message }).await;
            return;
        }
    };
    let names = task_names(jobs, &id).await;
    if let Some(task) = task.filter(|t| !names.iter().any(|n| n == t)) {
        let message = format!("job {id} has no task {task:?}");
        let code = ErrorCode::InvalidRequest;
        let _ = write_frame(stream, &ClientReply::Error { code, message }).await;
        return;
    }
    let mut after = match since_ms {
        Some(since) => {
            let job = id.clone();
            let first = jobs
                .store()
                .call(move |s| s.output_before(&job, since))
                .await;
            first.unwrap_or(0)
        }
        None => 0,
    };
    loop {
        let (job, from) = (id.clone(), after);
        let read = jobs
            .store()
            .call(move |s| {
                Ok((
                    s.job(&job)?.state.is_live(),
                    s.output_page(&job, from, PAGE)?,
                ))
            })
            .await;
        let (live, lines) = read.unwrap_or((false, Vec::new()));
        let full_page = lines.len() >= PAGE as usize;
        for output in lines {
            after = output.id;
            let name = usize::try_from(output.task)
                .ok()
                .and_then(|i| names.get(i))
                .cloned()
                .unwrap_or_default();
            if task.is_some_and(|t| t != name) {
                continue;
            }
            let reply = ClientReply::Log(LogLine {
                task: name,
                phase: output.phase,
                stream: output.stream,
                line: output.line,
            });
            if write_frame(stream, &reply).await.is_err() {
                return;
            }
        }
        if full_page {
            // More may be stored already: the next page at once.
            continue;
        }
        if !follow || !live {
            let _ = write_frame(stream, &ClientReply::Done).await;
            return;
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}

async fn task_names(jobs: &Jobs, id: &JobId) -> Vec<String> {
    let id = id.clone();
    jobs.store()
        .call(move |s| s.spec(&id))
        .await
        .map(|s| s.tasks.into_iter().map(|t| t.name).collect())
        .unwrap_or_default()
}
