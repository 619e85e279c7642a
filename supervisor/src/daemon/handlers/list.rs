//! `ls [--all] [filters]`: the live jobs (or all, or those that pass the filters), in
//! submission order. Version 3 gets them in pages, each read from the store on its own (the
//! store thread is never held for a whole list, nor the list held whole in memory), then `Done`;
//! versions 1 and 2 get the one reply they expect, or an error when it would not fit a frame.

use super::{Refusal, store_refusal};
use crate::job::Jobs;
use shared::protocol::client::{ClientReply, ErrorCode, JobSummary, ListQuery};
use shared::protocol::codec::{FrameError, MAX_FRAME_LEN, encoded_len, write_frame};
use tokio::net::UnixStream;

/// Jobs per store read and per frame (a frame is split further if its names are long).
const PAGE: u32 = 500;

pub async fn stream(
    jobs: &Jobs,
    stream: &mut UnixStream,
    version: u32,
    all: bool,
    query: ListQuery,
) {
    let result = if version >= 3 {
        pages(jobs, stream, all, query).await
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

/// Sends the pages; `Ok(None)` when the `Done` is due.
async fn pages(
    jobs: &Jobs,
    stream: &mut UnixStream,
    all: bool,
    query: ListQuery,
) -> Result<Option<ClientReply>, Refusal> {
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
        after = last;
        if !page.is_empty() && !send_page(stream, page).await {
            return Err((ErrorCode::Internal, "ls client gone".into()));
        }
        if !full {
            break;
        }
    }
    Ok(None)
}

/// Writes `page` as one frame, or as several when it does not fit one; false when the client
/// is gone.
async fn send_page(stream: &mut UnixStream, page: Vec<JobSummary>) -> bool {
    let mut pending = vec![page];
    while let Some(mut page) = pending.pop() {
        let reply = ClientReply::Jobs(page);
        match write_frame(stream, &reply).await {
            Ok(()) => {}
            Err(FrameError::TooLarge { .. }) => {
                let ClientReply::Jobs(whole) = reply else {
                    return false;
                };
                page = whole;
                if page.len() < 2 {
                    tracing::warn!("ls: one job does not fit a frame, left out");
                    continue;
                }
                let back = page.split_off(page.len() / 2);
                pending.push(back);
                pending.push(page);
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
