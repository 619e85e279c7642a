//! One client connection on the control socket: peer check, version handshake, one request,
//! handled by the file named after it (as pueue does). A bad client (wrong uid, silence,
//! garbage, oversized frame, wrong version) is dropped with a logged reason; nobody else
//! notices. Handlers only read the store and send orders to job actors: they never change a
//! job's state themselves.

mod cancel;
mod events;
mod follow;
mod hosts;
mod kill;
mod list;
pub mod logs;
mod operate;
mod pause;
pub mod prune;
mod remote;
mod resume;
mod revert;
mod shutdown;
mod status;
mod submit;

use crate::board::Board;
use crate::job::{Jobs, OrderError};
use crate::store::StoreError;
use shared::ids::JobId;
use shared::protocol::client::{ClientReply, ClientRequest, ErrorCode};
use shared::protocol::codec::{FrameError, encode_frame, read_frame, read_frame_with, write_frame};
use shared::protocol::{negotiate, supported_versions};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

/// How long a client has to say hello and send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A refusal: the code the CLI maps to an exit code, and the message it prints.
pub type Refusal = (ErrorCode, String);
type Reply = Result<ClientReply, Refusal>;

pub async fn serve_client(jobs: Jobs, board: Option<Board>, mut stream: UnixStream) {
    let peer = match stream.peer_cred() {
        Ok(creds) => creds,
        Err(err) => {
            tracing::warn!(error = %err, "client dropped: no peer credentials");
            return;
        }
    };
    let ours = nix::unistd::geteuid().as_raw();
    if peer.uid() != ours && peer.uid() != 0 {
        tracing::warn!(
            uid = peer.uid(),
            pid = peer.pid(),
            "client refused: another user"
        );
        let refusal = ClientReply::Error {
            code: ErrorCode::PermissionDenied,
            message: format!("permission denied: this daemon serves uid {ours} (and root) only"),
        };
        let _ = write_frame(&mut stream, &refusal).await;
        return;
    }
    let (version, request) =
        match tokio::time::timeout(REQUEST_TIMEOUT, read_hello_and_request(&mut stream)).await {
            Ok(Ok(versioned)) => versioned,
            Ok(Err(reason)) => {
                tracing::warn!(pid = peer.pid(), reason, "client dropped");
                let code = ErrorCode::InvalidRequest;
                let _ = write_frame(
                    &mut stream,
                    &ClientReply::Error {
                        code,
                        message: reason,
                    },
                )
                .await;
                return;
            }
            Err(_) => {
                tracing::warn!(
                    pid = peer.pid(),
                    reason = "no request in time",
                    "client dropped"
                );
                return;
            }
        };
    tracing::debug!(?request, "client request");
    match request {
        ClientRequest::Logs { job, task, follow } => {
            logs::stream(
                &jobs,
                board.as_ref(),
                &mut stream,
                &job,
                task.as_deref(),
                follow,
            )
            .await;
        }
        ClientRequest::LogsSince {
            job,
            task,
            follow,
            since_ms,
        } => {
            let asked = (job.as_str(), task.as_deref(), follow);
            logs::stream_since(&jobs, board.as_ref(), &mut stream, asked, since_ms).await;
        }
        ClientRequest::Events => events::stream(&jobs, board.as_ref(), &mut stream, version).await,
        ClientRequest::List { all, query } => {
            list::stream(&jobs, board.as_ref(), &mut stream, version, all, query).await;
        }
        order if operate::is_order(&order) => {
            let reply = operate::handle(&jobs, board.as_ref(), version, peer, order)
                .await
                .unwrap_or_else(|(code, message)| ClientReply::Error { code, message });
            send_reply(&mut stream, reply, version).await;
        }
        ClientRequest::Hosts => {
            let reply = hosts::handle(board.as_ref())
                .await
                .unwrap_or_else(|(code, message)| ClientReply::Error { code, message });
            send_reply(&mut stream, reply, version).await;
        }
        other => {
            let reply = dispatch(&jobs, board.as_ref(), version, other)
                .await
                .unwrap_or_else(|(code, message)| ClientReply::Error { code, message });
            send_reply(&mut stream, reply, version).await;
        }
    }
}

/// Sends `reply`, encoded once; only one too large for a frame is made to fit first
/// ([`ClientReply::within_frame`]: a status of many large results cut, saying so, a large
/// prune counted), never dropped with the connection.
async fn send_reply(stream: &mut UnixStream, reply: ClientReply, version: u32) {
    let frame = match encode_frame(&reply) {
        Err(FrameError::TooLarge { .. }) => encode_frame(&reply.within_frame(version)),
        encoded => encoded,
    };
    match frame {
        Ok(frame) => {
            let _ = stream.write_all(&frame).await;
        }
        Err(err) => tracing::warn!(error = %err, "cannot encode a reply"),
    }
}

async fn dispatch(
    jobs: &Jobs,
    board: Option<&Board>,
    version: u32,
    request: ClientRequest,
) -> Reply {
    match request {
        ClientRequest::Submit { spec, source } => {
            submit::handle(jobs, board, *spec, source, None).await
        }
        ClientRequest::SubmitWithHostLoss {
            mut spec,
            source,
            on_host_loss,
        } => {
            spec.on_host_loss = on_host_loss;
            submit::handle(jobs, board, *spec, source, None).await
        }
        ClientRequest::SubmitOnBoard {
            mut spec,
            source,
            on_host_loss,
            host,
        } => {
            spec.on_host_loss = on_host_loss;
            submit::handle(jobs, board, *spec, source, host).await
        }
        ClientRequest::Status { job } => {
            status::handle(jobs, board, version, &job, status::Source::Board).await
        }
        ClientRequest::StatusFromHost { job } => {
            status::handle(jobs, board, version, &job, status::Source::Host).await
        }
        ClientRequest::Shutdown { cancel } => shutdown::handle(jobs, cancel),
        ClientRequest::Prune {
            older_than_ms,
            states,
            vacuum,
        } => prune::handle(jobs, board, older_than_ms, states, vacuum).await,
        // Orders are served with the peer's credentials (`operate`), streams by `serve_client`.
        ClientRequest::Cancel { .. }
        | ClientRequest::Kill { .. }
        | ClientRequest::Revert { .. }
        | ClientRequest::Resume { .. }
        | ClientRequest::Operate { .. }
        | ClientRequest::Hello { .. }
        | ClientRequest::List { .. }
        | ClientRequest::Logs { .. }
        | ClientRequest::LogsSince { .. }
        | ClientRequest::Hosts
        | ClientRequest::Events => Err((ErrorCode::InvalidRequest, "unexpected request".into())),
    }
}

/// The version both speak and the request.
async fn read_hello_and_request(stream: &mut UnixStream) -> Result<(u32, ClientRequest), String> {
    let version = match read_frame::<ClientRequest, _>(stream).await {
        Ok(Some(ClientRequest::Hello { protocol_version })) => negotiate(protocol_version)
            .ok_or_else(|| {
                format!(
                    "protocol version mismatch: client {protocol_version}, daemon {}",
                    supported_versions()
                )
            })?,
        Ok(Some(_)) => return Err("expected a hello first".into()),
        Ok(None) => return Err("closed before the hello".into()),
        Err(err) => return Err(err.to_string()),
    };
    let hello = ClientReply::Hello {
        protocol_version: version,
    };
    write_frame(stream, &hello)
        .await
        .map_err(|e| e.to_string())?;
    match read_frame_with(stream, ClientRequest::decoder(version)).await {
        Ok(Some(ClientRequest::Hello { .. })) => Err("a second hello".into()),
        Ok(Some(request)) => Ok((version, request)),
        Ok(None) => Err("closed before the request".into()),
        Err(err) => Err(err.to_string()),
    }
}

/// The id of the job a client named, if the store has it.
async fn find(jobs: &Jobs, text: &str) -> Result<JobId, Refusal> {
    let text = text.to_owned();
    let shown = text.clone();
    jobs.store()
        .read(move |s| s.find_job(&text))
        .await
        .map_err(|_| unknown(&shown))
}

/// The refusal of a job id that names no job here.
fn unknown(job: &str) -> Refusal {
    (ErrorCode::UnknownJob, format!("no such job: {job}"))
}

/// On a job board, refuses what would start a conductor (`submit`, `revert`, `resume`) or
/// let steps run again (`continue`) while this daemon's lease is not current: it is fencing
/// itself (`daemon/fence.rs`). The CLI exits 8 (`shared::exit::REFUSED`).
fn check_lease(board: Option<&Board>) -> Result<(), Refusal> {
    if board.is_some_and(|board| !board.is_lease_current()) {
        return Err((
            ErrorCode::Unavailable,
            "this host's board lease is not current; not accepting jobs until it is renewed".into(),
        ));
    }
    Ok(())
}

/// The code and text a store's error is answered with: a store that cannot be reached (a
/// PostgreSQL store whose server is down) or whose disk is full is `Unavailable` (exit 8: try
/// again later), as for orders (`OrderError::from`).
pub(super) fn store_refusal(err: StoreError) -> Refusal {
    match err {
        StoreError::UnknownJob(id) => (ErrorCode::UnknownJob, format!("no such job: {id}")),
        other if other.is_unreachable() || other.is_disk_full() => {
            (ErrorCode::Unavailable, other.to_string())
        }
        other => (ErrorCode::Internal, other.to_string()),
    }
}

/// The code and text an order's refusal is answered with (locally, and through the board to
/// the host that asked: `daemon/remote.rs`).
pub(super) fn order_refusal(err: OrderError) -> Refusal {
    let code = match &err {
        OrderError::UnknownJob(_) => ErrorCode::UnknownJob,
        OrderError::Invalid(_) => ErrorCode::InvalidRequest,
        OrderError::WrongState(_) => ErrorCode::WrongState,
        OrderError::Unavailable(_) => ErrorCode::Unavailable,
        OrderError::Internal(_) | OrderError::Retry => ErrorCode::Internal,
    };
    (code, err.to_string())
}

/// Sends `order` to job `id` and answers `Done` once its actor carried it out.
async fn order(jobs: &Jobs, id: &JobId, order: crate::job::Order) -> Reply {
    jobs.ask(id, order).await.map_err(order_refusal)?;
    Ok(ClientReply::Done)
}
