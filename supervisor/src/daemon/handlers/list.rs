//! `ls [--all] [filters]`: the live jobs (or all, or those that pass the filters), in
//! submission order. Version 3 gets them in pages, each read from the store on its own (the
//! store thread is never held for a whole list, nor the list held whole in memory), then `Done`;
//! versions 1 and 2 get the one reply they expect, or an error when it would not fit a frame.
//!
//! On a job board, a version 4 client gets every page as `HostedJobs`: this daemon's jobs
//! first (with its host name), then the other hosts' from the board's mirror, paged the same
//! way (by the mirror's `seq`, the order in which jobs were first published) and filtered the
//! same way. A `--limit N` keeps this host's N most recent jobs that pass, then fills up to N
//! with the other hosts' most recent. Older clients get this daemon's jobs only, as before.

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
        pages(jobs, stream, all, query, None).await.map(|_| None)
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

/// This daemon's pages, then the other hosts'; `Ok(None)` when the `Done` is due.
async fn board_pages(
    jobs: &Jobs,
    board: &Board,
    stream: &mut UnixStream,
    all: bool,
    query: ListQuery,
) -> Result<Option<ClientReply>, Refusal> {
    let host = board.config().host.clone();
    let remote = Arc::new(RemoteQuery::new(&host, all, &query));
    let limit = query.limit;
    let sent = pages(jobs, stream, all, query, Some(&host)).await?;
    let mut left = limit.map_or(u64::MAX, |limit| limit.saturating_sub(sent));
    let board_refusal = |err: crate::board::BoardError| {
        let message = format!("{:#}", anyhow::Error::from(err));
        tracing::warn!(error = %message, "ls: cannot read the board's jobs");
        (ErrorCode::Internal, message)
    };
    let mut after = match limit {
        None => 0,
        Some(_) => board
            .list_start(Arc::clone(&remote), left)
            .await
            .map_err(board_refusal)?,
    };
    while left > 0 {
        let size = left.min(u64::from(PAGE));
        let read = board
            .list_page(
                Arc::clone(&remote),
                after,
                i64::try_from(size).unwrap_or(i64::from(PAGE)),
            )
            .await
            .map_err(board_refusal)?;
        let full = read.rows as u64 == size;
        left -= read.jobs.len() as u64;
        after = read.last;
        if !read.jobs.is_empty() && !send_page(stream, Page::Hosted(read.jobs)).await {
            return Err((ErrorCode::Internal, "ls client gone".into()));
        }
        if !full {
            break;
        }
    }
    Ok(None)
}

/// This daemon's pages (each job with `host`, on a board); how many jobs were sent.
async fn pages(
    jobs: &Jobs,
    stream: &mut UnixStream,
    all: bool,
    query: ListQuery,
    host: Option<&str>,
) -> Result<u64, Refusal> {
    let query = std::sync::Arc::new(query);
    let start_query = std::sync::Arc::clone(&query);
    // Without a limit the list starts at the first job: no store round trip for that.
    let mut after = if query.limit.is_none() {
        0
    } else {
        jobs.store()
            .call(move |s| s.list_start(all, &start_query))
            .await
            .map_err(store_refusal)?
    };
    // The limit holds even when jobs are submitted while we page.
    let mut left = query.limit.unwrap_or(u64::MAX);
    let mut sent = 0;
    while left > 0 {
        let page_query = std::sync::Arc::clone(&query);
        let size = u32::try_from(left.min(u64::from(PAGE))).unwrap_or(PAGE);
        let (page, last) = jobs
            .store()
            .call(move |s| s.list_page(all, &page_query, after, size))
            .await
            .map_err(store_refusal)?;
        let full = page.len() == size as usize;
        left -= page.len() as u64;
        sent += page.len() as u64;
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
    Ok(sent)
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
            .call(move |s| s.list_page(all, &ListQuery::default(), after, PAGE))
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
