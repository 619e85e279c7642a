//! `logs --follow` of a job another host of the board holds: the asking daemon asks its host
//! for the lines after the last one it has (a `logs_after` request with the owner's cursor,
//! `remote.rs`) every [`REMOTE_FOLLOW_EVERY`], at once again while an answer is cut by
//! `logs::REMOTE_FOLLOW_MAX_BYTES` (the owner's `logs::page_after`), and sends them on as they
//! come: from the first line (or `--since`), all of them, until a page read from the ended
//! job (the owner reads its state with the page) comes back uncut. A job no host claimed yet
//! is waited for, at the same pace, until one does (then followed there) or it ends unclaimed
//! (cancelled: no output, `Done`). A lost owner ends it with
//! the lost-host error of every remote command; so does the job turning up on another host
//! (rescued, or given back to the board), whose store does not know the cursor.

use super::remote;
use crate::board::Board;
use shared::protocol::client::{ClientReply, ErrorCode};
use shared::protocol::codec::write_frame;
use std::time::Duration;
use tokio::net::UnixStream;

/// How often `logs --follow` of another host's job asks its host for new lines.
pub const REMOTE_FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// `logs --follow` of `job`, held by another host: its lines as its host answers them, then
/// `Done` once the job ended and its last lines came; or the refusal that stopped it. Stops
/// when the client is gone.
pub async fn follow_remote(
    board: &Board,
    stream: &mut UnixStream,
    (job, task): (&str, Option<&str>),
    since_ms: Option<i64>,
) {
    let mut after = None;
    let mut owner: Option<String> = None;
    let mut waiting = false;
    loop {
        let asked = remote::logs_after(board, job, task, since_ms, after).await;
        let page = match asked {
            Ok((host, page)) if owner.as_ref().is_none_or(|first| *first == host) => {
                owner = Some(host);
                page
            }
            Ok((host, _)) => {
                let first = owner.unwrap_or_default();
                let _ = write_frame(stream, &moved(job, &first, &host)).await;
                return;
            }
            Err((code, message)) => {
                let reply = match remote::find(board, job).await {
                    // Not claimed by any host yet: its output begins on the host that claims
                    // it; one cancelled before that has none.
                    Ok(Some(now)) if owner.is_none() && now.host.is_empty() => {
                        if !now.job.state.is_live() {
                            let _ = write_frame(stream, &ClientReply::Done).await;
                            return;
                        }
                        if !waiting {
                            tracing::info!(
                                job_id = job,
                                "logs --follow waits for a host to claim the job"
                            );
                            waiting = true;
                        }
                        if !pause(stream).await {
                            return;
                        }
                        continue;
                    }
                    // Taken from its host meanwhile (rescued, or back on the board).
                    Ok(Some(now)) if owner.as_ref().is_some_and(|first| *first != now.host) => {
                        moved(job, owner.as_deref().unwrap_or_default(), &now.host)
                    }
                    _ => ClientReply::Error { code, message },
                };
                let _ = write_frame(stream, &reply).await;
                return;
            }
        };
        for line in page.lines {
            if write_frame(stream, &ClientReply::Log(line)).await.is_err() {
                return;
            }
        }
        after = Some(page.last);
        if page.more {
            continue;
        }
        if !page.live {
            let _ = write_frame(stream, &ClientReply::Done).await;
            return;
        }
        if !pause(stream).await {
            return;
        }
    }
}

/// Waits [`REMOTE_FOLLOW_EVERY`]; whether the client is still there.
async fn pause(stream: &UnixStream) -> bool {
    tokio::time::sleep(REMOTE_FOLLOW_EVERY).await;
    !is_client_gone(stream)
}

/// The end of a remote `logs --follow` whose job left the host it was followed on.
fn moved(job: &str, from: &str, to: &str) -> ClientReply {
    let to = if to.is_empty() {
        "no host (unclaimed)"
    } else {
        to
    };
    ClientReply::Error {
        code: ErrorCode::HostLost,
        message: format!(
            "host {from} lost job {job}: it is held by {to} now; its output there starts anew"
        ),
    }
}

/// Whether the client closed its end (it sends nothing after its request).
fn is_client_gone(stream: &UnixStream) -> bool {
    let mut byte = [0_u8; 1];
    matches!(stream.try_read(&mut byte), Ok(0))
}
