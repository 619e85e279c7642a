//! `logs JOB [--task T] [--follow]`: the job's stored output, then (with `--follow`) new lines
//! while the job is live.
//!
//! On a job board, `logs` of a job this daemon does not hold is asked of its host through a
//! request (`remote.rs`): the host answers with the last lines that fit
//! [`REMOTE_LOGS_MAX_BYTES`] ([`tail`]), after a notice line when earlier ones were left out.
//! `--follow` of another host's job is a loop of requests for the lines after a cursor
//! (`follow.rs`), each answered by the owner with [`page_after`], at most
//! [`REMOTE_FOLLOW_MAX_BYTES`] of them.

use super::{Refusal, find};
use crate::board::Board;
use crate::board::requests::LogsPage;
use crate::job::Jobs;
use shared::ids::JobId;
use shared::protocol::client::{ClientReply, ErrorCode, LogLine};
use shared::protocol::codec::write_frame;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::net::UnixStream;

/// How often `logs --follow` looks for new lines.
const FOLLOW_EVERY: Duration = Duration::from_millis(100);
/// Lines read from the store at a time: the output of a job is sent a page at a time, never
/// held whole in memory.
const PAGE: u32 = 512;
/// The most text (bytes of the lines) a host answers to `logs` of its job asked from another
/// host: the last lines that fit.
pub const REMOTE_LOGS_MAX_BYTES: usize = 1 << 20;
/// The most text (bytes of the lines) one answer to `logs --follow` from another host
/// carries (at least one line, each bounded as stored); a longer backlog comes in several.
pub const REMOTE_FOLLOW_MAX_BYTES: usize = 256 << 10;

pub async fn stream(
    jobs: &Jobs,
    board: Option<&Board>,
    stream: &mut UnixStream,
    job: &str,
    task: Option<&str>,
    follow: bool,
) {
    stream_from(jobs, board, stream, (job, task, follow), None).await;
}

/// `logs --since`: from the first line written at or after `since_ms`.
pub async fn stream_since(
    jobs: &Jobs,
    board: Option<&Board>,
    stream: &mut UnixStream,
    (job, task, follow): (&str, Option<&str>, bool),
    since_ms: i64,
) {
    stream_from(jobs, board, stream, (job, task, follow), Some(since_ms)).await;
}

async fn stream_from(
    jobs: &Jobs,
    board: Option<&Board>,
    stream: &mut UnixStream,
    (job, task, follow): (&str, Option<&str>, bool),
    since_ms: Option<i64>,
) {
    let id = match find(jobs, job).await {
        Ok(id) => id,
        Err(refusal) => {
            match board {
                Some(board) if follow => {
                    super::follow::follow_remote(board, stream, (job, task), since_ms).await;
                }
                Some(board) => {
                    send_lines(
                        stream,
                        super::remote::logs(board, job, task, since_ms).await,
                    )
                    .await;
                }
                None => send_lines(stream, Err(refusal)).await,
            }
            return;
        }
    };
    let mut reader = match Reader::open(jobs, &id, task, since_ms).await {
        Ok(reader) => reader,
        Err((code, message)) => {
            let _ = write_frame(stream, &ClientReply::Error { code, message }).await;
            return;
        }
    };
    loop {
        let (live, lines, full_page) = reader.next_page().await;
        for line in lines {
            if write_frame(stream, &ClientReply::Log(line)).await.is_err() {
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

/// Writes `lines` and `Done`, or the refusal.
async fn send_lines(stream: &mut UnixStream, lines: Result<Vec<LogLine>, Refusal>) {
    match lines {
        Ok(lines) => {
            for line in lines {
                if write_frame(stream, &ClientReply::Log(line)).await.is_err() {
                    return;
                }
            }
            let _ = write_frame(stream, &ClientReply::Done).await;
        }
        Err((code, message)) => {
            let _ = write_frame(stream, &ClientReply::Error { code, message }).await;
        }
    }
}

/// The last lines of job `id`'s output (of `task`, from `since_ms`) whose text fits
/// `max_bytes`, oldest first; led by a notice (task `supervisor`, stream `notice`) when earlier
/// lines were left out. For another host that asked (`daemon/remote.rs`).
pub async fn tail(
    jobs: &Jobs,
    id: &JobId,
    (task, since_ms): (Option<&str>, Option<i64>),
    max_bytes: usize,
) -> Result<Vec<LogLine>, Refusal> {
    let mut reader = Reader::open(jobs, id, task, since_ms).await?;
    let mut kept = VecDeque::new();
    let (mut bytes, mut left_out) = (0, 0_u64);
    loop {
        let (_, lines, full_page) = reader.next_page().await;
        for line in lines {
            bytes += line.line.len();
            kept.push_back(line);
            while bytes > max_bytes {
                let Some(oldest) = kept.pop_front() else {
                    break;
                };
                bytes -= oldest.line.len();
                left_out += 1;
            }
        }
        if !full_page {
            break;
        }
    }
    if left_out > 0 {
        kept.push_front(LogLine {
            task: "supervisor".into(),
            phase: String::new(),
            stream: "notice".into(),
            line: format!(
                "{left_out} earlier lines left out: another host's logs carry at most {max_bytes} bytes; run `supervisor logs {id}` on the job's host for all"
            ),
        });
    }
    Ok(kept.into())
}

/// The lines of job `id`'s output (of `task`) after the cursor `after` (the first read: from
/// `since_ms`, or the first line), oldest first, whose text fits `max_bytes` (at least one
/// line), with the cursor after them, whether the job was live when they were read, and
/// whether the bound cut them. For another host's `logs --follow` (`daemon/remote.rs`).
pub async fn page_after(
    jobs: &Jobs,
    id: &JobId,
    (task, since_ms): (Option<&str>, Option<i64>),
    after: Option<i64>,
    max_bytes: usize,
) -> Result<LogsPage, Refusal> {
    let mut reader = Reader::open(jobs, id, task, since_ms.filter(|_| after.is_none())).await?;
    if let Some(after) = after {
        reader.after = after;
    }
    let mut lines = Vec::new();
    let mut bytes = 0;
    loop {
        let (live, page, more) = reader.next_page_within(max_bytes - bytes).await;
        bytes += page.iter().map(|line| line.line.len()).sum::<usize>();
        lines.extend(page);
        if !more || bytes >= max_bytes {
            return Ok(LogsPage {
                lines,
                last: reader.after,
                live,
                more,
            });
        }
    }
}

/// Reads a job's output a page at a time, from where the last page stopped.
struct Reader<'a> {
    jobs: &'a Jobs,
    id: JobId,
    task: Option<String>,
    names: Vec<String>,
    after: i64,
}

impl<'a> Reader<'a> {
    /// Refuses a task the job does not have; starts at `since_ms` (the first line written at
    /// or after it) or at the first line.
    async fn open(
        jobs: &'a Jobs,
        id: &JobId,
        task: Option<&str>,
        since_ms: Option<i64>,
    ) -> Result<Self, Refusal> {
        let names = task_names(jobs, id).await;
        if let Some(task) = task.filter(|t| !names.iter().any(|n| n == t)) {
            return Err((
                ErrorCode::InvalidRequest,
                format!("job {id} has no task {task:?}"),
            ));
        }
        let after = match since_ms {
            Some(since) => {
                let job = id.clone();
                let first = jobs
                    .store()
                    .read(move |s| s.output_before(&job, since))
                    .await;
                first.unwrap_or(0)
            }
            None => 0,
        };
        Ok(Self {
            jobs,
            id: id.clone(),
            task: task.map(str::to_owned),
            names,
            after,
        })
    }

    /// Whether the job is live, the next page's lines (of the task asked), and whether the
    /// page was full (more may be stored already).
    async fn next_page(&mut self) -> (bool, Vec<LogLine>, bool) {
        self.next_page_within(usize::MAX).await
    }

    /// [`Reader::next_page`] with at most `budget` bytes of line text (at least one line):
    /// the lines past it are left for the next page, which then may be read at once.
    async fn next_page_within(&mut self, budget: usize) -> (bool, Vec<LogLine>, bool) {
        let (job, from) = (self.id.clone(), self.after);
        let read = self
            .jobs
            .store()
            .read(move |s| {
                Ok((
                    s.job(&job)?.state.is_live(),
                    s.output_page(&job, from, PAGE)?,
                ))
            })
            .await;
        let (live, lines) = read.unwrap_or((false, Vec::new()));
        let mut full_page = lines.len() >= PAGE as usize;
        let mut page = Vec::with_capacity(lines.len());
        let mut bytes = 0_usize;
        for output in lines {
            if !page.is_empty() && bytes.saturating_add(output.line.len()) > budget {
                full_page = true;
                break;
            }
            self.after = output.id;
            let name = usize::try_from(output.task)
                .ok()
                .and_then(|i| self.names.get(i))
                .cloned()
                .unwrap_or_default();
            if self.task.as_ref().is_some_and(|t| *t != name) {
                continue;
            }
            bytes = bytes.saturating_add(output.line.len());
            page.push(LogLine {
                task: name,
                phase: output.phase,
                stream: output.stream,
                line: output.line,
            });
        }
        (live, page, full_page)
    }
}

async fn task_names(jobs: &Jobs, id: &JobId) -> Vec<String> {
    let id = id.clone();
    jobs.store()
        .read(move |s| s.spec(&id))
        .await
        .map(|s| s.tasks.into_iter().map(|t| t.name).collect())
        .unwrap_or_default()
}
