//! An operator's order (cancel, kill, revert, resume, pause, continue) with who asked: the
//! peer's uid and pid as the kernel gave them (`SO_PEERCRED` on the accepted connection) and
//! its command line, read from `/proc` as soon as the request arrives (the client waits for the
//! answer, so it is still there), with the operator's `--reason`. The job's actor records it
//! with the transition the order causes.
//!
//! On a job board, an order for a job this daemon does not hold is written on the board for
//! the host that holds it (`remote.rs`); a `revert` or `resume` (a new conductor) and a
//! `continue` (steps running again) of a job this daemon holds are refused while its lease is
//! not current.

use super::{Reply, cancel, kill, pause, remote, resume, revert};
use crate::board::Board;
use crate::job::{Jobs, Requester};
use shared::protocol::client::{Action, ClientRequest};
use tokio::net::unix::UCred;

/// Carries out an operator's order; `request` is `Operate`, or one of the older requests
/// without a reason.
pub async fn handle(
    jobs: &Jobs,
    board: Option<&Board>,
    version: u32,
    peer: UCred,
    request: ClientRequest,
) -> Reply {
    let Some((job, action, reason, timeout_ms)) = parts(request) else {
        return Err((
            shared::protocol::client::ErrorCode::InvalidRequest,
            "not an order".into(),
        ));
    };
    // Who asked and which job: two reads on two threads (a blocking one, the store's), at once.
    let (by, found) = tokio::join!(requester(peer, action, reason), super::find(jobs, &job));
    let job = match (found, board) {
        (Ok(id), _) => id,
        (Err(_), Some(board)) => {
            return remote::request(board, version, &job, (action, timeout_ms), by).await;
        }
        (Err(unknown), None) => return Err(unknown),
    };
    if matches!(action, Action::Revert | Action::Resume | Action::Continue) {
        super::check_lease(board)?;
    }
    match action {
        Action::Cancel => cancel::handle(jobs, &job, timeout_ms, by).await,
        Action::Kill => kill::handle(jobs, &job, by).await,
        Action::Revert => revert::handle(jobs, &job, by).await,
        Action::Resume => resume::handle(jobs, &job, by).await,
        Action::Pause => pause::handle(jobs, &job, by, true).await,
        Action::Continue => pause::handle(jobs, &job, by, false).await,
    }
}

/// Whether `request` is an order that [`handle`] serves.
pub const fn is_order(request: &ClientRequest) -> bool {
    matches!(
        request,
        ClientRequest::Operate { .. }
            | ClientRequest::Cancel { .. }
            | ClientRequest::Kill { .. }
            | ClientRequest::Revert { .. }
            | ClientRequest::Resume { .. }
    )
}

type Parts = (String, Action, Option<String>, Option<u64>);

fn parts(request: ClientRequest) -> Option<Parts> {
    Some(match request {
        ClientRequest::Operate {
            job,
            action,
            reason,
            timeout_ms,
        } => (job, action, reason, timeout_ms),
        ClientRequest::Cancel { job, timeout_ms } => (job, Action::Cancel, None, timeout_ms),
        ClientRequest::Kill { job } => (job, Action::Kill, None, None),
        ClientRequest::Revert { job } => (job, Action::Revert, None, None),
        ClientRequest::Resume { job } => (job, Action::Resume, None, None),
        _ => return None,
    })
}

/// Who asked, from the kernel's word, with the time and the reason (bounded).
async fn requester(peer: UCred, action: Action, reason: Option<String>) -> Requester {
    let pid = peer.pid().unwrap_or(0);
    let command = if pid > 0 {
        command_line(pid).await
    } else {
        String::new()
    };
    Requester {
        action,
        uid: peer.uid(),
        pid,
        command,
        at_ms: crate::clock::now_ms(),
        reason: reason.filter(|r| !r.is_empty()),
    }
    .bounded()
}

/// `/proc/PID/cmdline` with its arguments joined by spaces (read on a blocking thread); empty
/// when the process is gone.
async fn command_line(pid: i32) -> String {
    let read = tokio::task::spawn_blocking(move || std::fs::read(format!("/proc/{pid}/cmdline")));
    match read.await {
        Ok(Ok(bytes)) => bytes
            .split(|b| *b == 0)
            .filter(|arg| !arg.is_empty())
            .map(String::from_utf8_lossy)
            .collect::<Vec<_>>()
            .join(" "),
        Ok(Err(_)) | Err(_) => String::new(),
    }
}
