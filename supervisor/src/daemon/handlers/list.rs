//! `ls [--all] [filters]`: the live jobs (or all, or those that pass the filters), in
//! submission order. Version 3 gets them in pages, each read from the store on its own (the
//! store thread is never held for a whole list, nor the list held whole in memory), then `Done`;
//! versions 1 and 2 get the one reply they expect, or an error when it would not fit a frame.
//!
//! On a job board, a version 4 client gets every page as `HostedJobs`: this daemon's jobs
//! first (with its host name), then the other hosts' from the board's mirror, paged the same
//! way (by the mirror's `seq`, the order in which jobs were first published) and filtered the
//! same way. A `--limit N` is the N most recent jobs of the whole board that pass: this
//! host's N most recent and the mirror's N most recent, merged by creation time (this host's
//! clock for its own jobs, the board's clock at their first publication for the others') and
//! cut to the last N, sent oldest first; so that this is bounded, N is at most
//! [`BOARD_LIMIT_MAX`] on a board. Older clients get this daemon's jobs only, as before.

use super::{Refusal, store_refusal};
use crate::board::Board;
use crate::board::mirror::RemoteQuery;
use crate::job::Jobs;
use shared::protocol::client::{ClientReply, ErrorCode, HostedJob, JobSummary, ListQuery};
use shared::protocol::codec::{FrameError, MAX_FRAME_LEN, encoded_len, write_frame};
use std::sync::Arc;
use tokio::net::UnixStream;

/// Jobs per store read and per frame (a frame is split further if its names are long).
const PAGE: u32 = 500;

/// The largest `--limit` on a job board: both sides' most recent jobs are held in memory to
/// be merged.
pub const BOARD_LIMIT_MAX: u64 = 10_000;

pub async fn stream(
    jobs: &Jobs,
    board: Option<&Board>,
    stream: &mut UnixStream,
    version: u32,
    all: bool,
    query: ListQuery,
) {
    let result = if let (Some(board), 4..) = (board, version) {
        board_pages(jobs, board, stream, all, query).await
    } else if version >= 3 {
        pages(jobs, stream, all, query, None).await.map(|()| None)
    } else {
        whole(jobs, all).await
    };
    let reply = match result {
        Ok(Some(reply)) => reply,
        Ok(None) => ClientReply::Done,
        Err((code, message)) => ClientReply::Error { code, message },
    };
    if let Err(err) = write_frame(stream, &reply).await {
        tracing::debug!(error = %err, "ls client gone");
    }
}

/// This daemon's pages, then the other hosts' (or, with a limit, the most recent of both
/// merged); `Ok(None)` when the `Done` is due.
async fn board_pages(
    jobs: &Jobs,
    board: &Board,
    stream: &mut UnixStream,
    all: bool,
    query: ListQuery,
) -> Result<Option<ClientReply>, Refusal> {
    if let Some(limit) = query.limit {
        return board_latest(jobs, board, stream, all, query, limit).await;
    }
    let host = board.config().host.clone();
    let remote = Arc::new(RemoteQuery::new(&host, all, &query));
    pages(jobs, stream, all, query, Some(&host)).await?;
    let mut after = 0;
    loop {
        let read = remote_page(board, &remote, after, u64::from(PAGE)).await?;
        after = read.last;
        let full = read.rows as u64 == u64::from(PAGE);
        if !read.jobs.is_empty() && !send_page(stream, Page::Hosted(read.jobs)).await {
            return Err((ErrorCode::Internal, "ls client gone".into()));
        }
        if !full {
            return Ok(None);
        }
    }
}

/// One page of at most `size` rows of the mirror after `after`.
async fn remote_page(
    board: &Board,
    remote: &Arc<RemoteQuery>,
    after: i64,
    size: u64,
) -> Result<crate::board::mirror::Page, Refusal> {
    let size = i64::try_from(size).unwrap_or(i64::from(PAGE));
    board
        .list_page(Arc::clone(remote), after, size)
        .await
        .map_err(board_refusal)
}

fn board_refusal(err: crate::board::BoardError) -> Refusal {
    let message = format!("{:#}", anyhow::Error::from(err));
    tracing::warn!(error = %message, "ls: cannot read the board's jobs");
    (ErrorCode::Internal, message)
}

/// `ls --limit N` on a board: the N most recent jobs of the board that pass, oldest first.
async fn board_latest(
    jobs: &Jobs,
    board: &Board,
    stream: &mut UnixStream,
    all: bool,
    query: ListQuery,
    limit: u64,
) -> Result<Option<ClientReply>, Refusal> {
    if limit > BOARD_LIMIT_MAX {
        return Err((
            ErrorCode::InvalidRequest,
            format!("--limit {limit}: on a job board, ls --limit is at most {BOARD_LIMIT_MAX}"),
        ));
    }
    let host = board.config().host.clone();
    let remote = Arc::new(RemoteQuery::new(&host, all, &query));
    let here: Vec<HostedJob> = local_latest(jobs, all, query, limit)
        .await?
        .into_iter()
        .map(|job| HostedJob {
            host: host.clone(),
            job,
        })
        .collect();
    let mut there = Vec::new();
    let mut after = board
        .list_start(Arc::clone(&remote), limit)
        .await
        .map_err(board_refusal)?;
    while (there.len() as u64) < limit {
        let size = (limit - there.len() as u64).min(u64::from(PAGE));
        let read = remote_page(board, &remote, after, size).await?;
        after = read.last;
        there.extend(read.jobs);
        if read.rows as u64 != size {
            break;
        }
    }
    let mut merged = merge_latest(here, there, limit).into_iter().peekable();
    while merged.peek().is_some() {
        let page: Vec<HostedJob> = merged.by_ref().take(PAGE as usize).collect();
        if !send_page(stream, Page::Hosted(page)).await {
            return Err((ErrorCode::Internal, "ls client gone".into()));
        }
    }
    Ok(None)
}

/// This daemon's `limit` most recent jobs that pass `query`, oldest first.
async fn local_latest(
    jobs: &Jobs,
    all: bool,
    query: ListQuery,
    limit: u64,
) -> Result<Vec<JobSummary>, Refusal> {
    let query = Arc::new(query);
    let start_query = Arc::clone(&query);
    let mut after = jobs
        .store()
        .read(move |s| s.list_start(all, &start_query))
        .await
        .map_err(store_refusal)?;
    let mut latest = Vec::new();
    while (latest.len() as u64) < limit {
        let (page, last, full) =
            local_page(jobs, all, &query, after, limit - latest.len() as u64).await?;
        after = last;
        latest.extend(page);
        if !full {
            break;
        }
    }
    Ok(latest)
}

/// The last `limit` of `here` and `there` (each oldest first) merged by creation time, oldest
/// first; on a tie, this host's job first.
fn merge_latest(here: Vec<HostedJob>, there: Vec<HostedJob>, limit: u64) -> Vec<HostedJob> {
    let mut merged = Vec::with_capacity(here.len() + there.len());
    let mut here = here.into_iter().peekable();
    let mut there = there.into_iter().peekable();
    loop {
        let take_here = match (here.peek(), there.peek()) {
            (Some(h), Some(t)) => h.job.created_ms <= t.job.created_ms,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let next = if take_here { here.next() } else { there.next() };
        merged.extend(next);
    }
    let keep = usize::try_from(limit).unwrap_or(usize::MAX);
    let skip = merged.len().saturating_sub(keep);
    merged.split_off(skip)
}

/// This daemon's pages (each job with `host`, on a board).
async fn pages(
    jobs: &Jobs,
    stream: &mut UnixStream,
    all: bool,
    query: ListQuery,
    host: Option<&str>,
) -> Result<(), Refusal> {
    let query = std::sync::Arc::new(query);
    let start_query = std::sync::Arc::clone(&query);
    // Without a limit the list starts at the first job: no store round trip for that.
    let mut after = if query.limit.is_none() {
        0
    } else {
        jobs.store()
            .read(move |s| s.list_start(all, &start_query))
            .await
            .map_err(store_refusal)?
    };
    // The limit holds even when jobs are submitted while we page.
    let mut left = query.limit.unwrap_or(u64::MAX);
    while left > 0 {
        let (page, last, full) = local_page(jobs, all, &query, after, left).await?;
        left -= page.len() as u64;
        after = last;
        let page = match host {
            Some(host) => Page::Hosted(
                page.into_iter()
                    .map(|job| HostedJob {
                        host: host.to_owned(),
                        job,
                    })
                    .collect(),
            ),
            None => Page::Local(page),
        };
        if !page.is_empty() && !send_page(stream, page).await {
            return Err((ErrorCode::Internal, "ls client gone".into()));
        }
        if !full {
            break;
        }
    }
    Ok(())
}

/// At most `left` (and [`PAGE`]) of this daemon's jobs of `query` after `after`: the page,
/// where the next begins, and whether it was full (more may follow).
async fn local_page(
    jobs: &Jobs,
    all: bool,
    query: &Arc<ListQuery>,
    after: i64,
    left: u64,
) -> Result<(Vec<JobSummary>, i64, bool), Refusal> {
    let page_query = Arc::clone(query);
    let size = u32::try_from(left.min(u64::from(PAGE))).unwrap_or(PAGE);
    let (page, last) = jobs
        .store()
        .read(move |s| s.list_page(all, &page_query, after, size))
        .await
        .map_err(store_refusal)?;
    let full = page.len() == size as usize;
    Ok((page, last, full))
}

/// One page of `ls`: this daemon's jobs alone, or jobs with their hosts.
enum Page {
    Local(Vec<JobSummary>),
    Hosted(Vec<HostedJob>),
}

impl Page {
    fn len(&self) -> usize {
        match self {
            Self::Local(jobs) => jobs.len(),
            Self::Hosted(jobs) => jobs.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The page in two halves.
    fn split(self) -> (Self, Self) {
        match self {
            Self::Local(mut front) => {
                let back = front.split_off(front.len() / 2);
                (Self::Local(front), Self::Local(back))
            }
            Self::Hosted(mut front) => {
                let back = front.split_off(front.len() / 2);
                (Self::Hosted(front), Self::Hosted(back))
            }
        }
    }

    fn into_reply(self) -> ClientReply {
        match self {
            Self::Local(jobs) => ClientReply::Jobs(jobs),
            Self::Hosted(jobs) => ClientReply::HostedJobs(jobs),
        }
    }

    fn from_reply(reply: ClientReply) -> Option<Self> {
        match reply {
            ClientReply::Jobs(jobs) => Some(Self::Local(jobs)),
            ClientReply::HostedJobs(jobs) => Some(Self::Hosted(jobs)),
            _ => None,
        }
    }
}

/// Writes `page` as one frame, or as several when it does not fit one; false when the client
/// is gone.
async fn send_page(stream: &mut UnixStream, page: Page) -> bool {
    let mut pending = vec![page];
    while let Some(page) = pending.pop() {
        let reply = page.into_reply();
        match write_frame(stream, &reply).await {
            Ok(()) => {}
            Err(FrameError::TooLarge { .. }) => {
                let Some(page) = Page::from_reply(reply) else {
                    return false;
                };
                if page.len() < 2 {
                    tracing::warn!("ls: one job does not fit a frame, left out");
                    continue;
                }
                let (front, back) = page.split();
                pending.push(back);
                pending.push(front);
            }
            Err(_) => return false,
        }
    }
    true
}

/// Versions 1 and 2: the whole list in one reply, read in pages and given up as soon as it
/// would not fit one frame.
async fn whole(jobs: &Jobs, all: bool) -> Result<Option<ClientReply>, Refusal> {
    let mut list = Vec::new();
    let mut bytes = 0;
    let mut after = 0;
    loop {
        let (page, last) = jobs
            .store()
            .read(move |s| s.list_page(all, &ListQuery::default(), after, PAGE))
            .await
            .map_err(store_refusal)?;
        let full = page.len() == PAGE as usize;
        bytes += encoded_len(&page).unwrap_or(MAX_FRAME_LEN);
        if bytes > MAX_FRAME_LEN {
            return Err((
                ErrorCode::Unavailable,
                "the list is too long for one reply of this CLI's protocol version; upgrade the CLI (version 3 streams it), or list live jobs only".into(),
            ));
        }
        list.extend(page);
        after = last;
        if !full {
            return Ok(Some(ClientReply::Jobs(list)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::ids::JobId;
    use shared::state::JobState;

    fn job(host: &str, id: u32, created_ms: i64) -> HostedJob {
        HostedJob {
            host: host.into(),
            job: JobSummary {
                id: JobId::from_random(id),
                name: "j".into(),
                state: JobState::Success,
                task: None,
                created_ms,
                paused_since_ms: None,
                running: 0,
            },
        }
    }

    fn order(jobs: &[HostedJob]) -> Vec<(String, i64)> {
        jobs.iter()
            .map(|j| (j.host.clone(), j.job.created_ms))
            .collect()
    }

    #[test]
    fn the_latest_of_both_sides_are_merged_by_creation_time_and_cut_to_the_limit() {
        let here = vec![job("a", 1, 10), job("a", 2, 40)];
        let there = vec![job("b", 3, 20), job("c", 4, 30), job("b", 5, 50)];
        let merged = merge_latest(here.clone(), there.clone(), 3);
        assert_eq!(
            order(&merged),
            [("c".into(), 30), ("a".into(), 40), ("b".into(), 50)]
        );
        assert_eq!(merge_latest(here.clone(), there.clone(), 10).len(), 5);
        assert!(merge_latest(here, Vec::new(), 0).is_empty());
        // A tie goes to this host's job first.
        let tie = merge_latest(vec![job("a", 6, 7)], vec![job("b", 7, 7)], 2);
        assert_eq!(order(&tie), [("a".into(), 7), ("b".into(), 7)]);
    }
}
