//! One client connection on the control socket: peer check, version handshake, one request.
//! A bad client (wrong uid, silence, garbage, oversized frame, wrong version) is dropped with a
//! logged reason; nobody else notices.

use super::jobs::Jobs;
use crate::launch::Purpose;
use crate::store::StoreError;
use crate::supervise::Order;
use shared::ids::JobId;
use shared::protocol::client::{ClientReply, ClientRequest, ErrorCode, LogLine};
use shared::protocol::codec::{read_frame, read_frame_with, write_frame};
use shared::protocol::{negotiate, supported_versions};
use shared::state::{JobState, TaskState};
use std::time::Duration;
use tokio::net::UnixStream;

/// How long a client has to say hello and send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `logs --follow` looks for new lines.
const FOLLOW_EVERY: Duration = Duration::from_millis(100);

type Reply = Result<ClientReply, (ErrorCode, String)>;

pub async fn serve_client(jobs: Jobs, mut stream: UnixStream) {
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
            code: ErrorCode::InvalidRequest,
            message: format!("permission denied: this daemon serves uid {ours} (and root) only"),
        };
        let _ = write_frame(&mut stream, &refusal).await;
        return;
    }
    let request =
        match tokio::time::timeout(REQUEST_TIMEOUT, read_hello_and_request(&mut stream)).await {
            Ok(Ok(request)) => request,
            Ok(Err(reason)) => {
                tracing::warn!(pid = peer.pid(), reason, "client dropped");
                let _ = write_frame(
                    &mut stream,
                    &ClientReply::Error {
                        code: ErrorCode::InvalidRequest,
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
            stream_logs(&jobs, &mut stream, &job, task.as_deref(), follow).await
        }
        ClientRequest::Events => stream_events(&jobs, &mut stream).await,
        other => {
            let reply = handle(&jobs, other)
                .await
                .unwrap_or_else(|(code, message)| ClientReply::Error { code, message });
            let _ = write_frame(&mut stream, &reply).await;
        }
    }
}

async fn read_hello_and_request(stream: &mut UnixStream) -> Result<ClientRequest, String> {
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
    write_frame(
        stream,
        &ClientReply::Hello {
            protocol_version: version,
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    match read_frame_with(stream, ClientRequest::decoder(version)).await {
        Ok(Some(ClientRequest::Hello { .. })) => Err("a second hello".into()),
        Ok(Some(request)) => Ok(request),
        Ok(None) => Err("closed before the request".into()),
        Err(err) => Err(err.to_string()),
    }
}

fn store_error(err: StoreError) -> (ErrorCode, String) {
    match err {
        StoreError::UnknownJob(_) => (ErrorCode::UnknownJob, "no such job".into()),
        StoreError::Illegal(err) => (ErrorCode::WrongState, err.to_string()),
        other => (ErrorCode::Internal, other.to_string()),
    }
}

fn find(jobs: &Jobs, text: &str) -> Result<JobId, (ErrorCode, String)> {
    jobs.store()
        .find_job(text)
        .map_err(|_| (ErrorCode::UnknownJob, format!("no such job: {text}")))
}

async fn handle(jobs: &Jobs, request: ClientRequest) -> Reply {
    let store = jobs.store();
    match request {
        ClientRequest::Submit { spec, source } => {
            if jobs.is_stopping() {
                return Err((ErrorCode::Unavailable, "the daemon is shutting down".into()));
            }
            crate::launch::check_runnable(&spec, jobs.containment())
                .map_err(|problem| (ErrorCode::InvalidRequest, problem))?;
            let id = store.create_job(&spec, &source).map_err(|e| {
                if e.is_disk_full() {
                    store.reclaim_space();
                }
                tracing::warn!(error = %e, "job refused: cannot store it");
                (ErrorCode::Unavailable, format!("cannot store the job: {e}"))
            })?;
            tracing::info!(job_id = %id, job = %spec.name, "job submitted");
            jobs.publish(&id, None, JobState::Pending.as_str());
            jobs.wake();
            Ok(ClientReply::Submitted { job: id })
        }
        ClientRequest::List { all } => store.list(all).map(ClientReply::Jobs).map_err(store_error),
        ClientRequest::Status { job } => {
            let id = find(jobs, &job)?;
            store
                .status(&id)
                .map(|s| ClientReply::Status(Box::new(s)))
                .map_err(store_error)
        }
        ClientRequest::Cancel { job, timeout_ms } => {
            let id = find(jobs, &job)?;
            let order = Order::Cancel {
                timeout: timeout_ms.map(Duration::from_millis),
                reason: "cancel requested".into(),
            };
            order_job(jobs, &id, order, JobState::Cancelled).await
        }
        ClientRequest::Kill { job } => {
            let id = find(jobs, &job)?;
            order_job(
                jobs,
                &id,
                Order::Kill {
                    reason: "kill requested".into(),
                },
                JobState::Killed,
            )
            .await
        }
        ClientRequest::Revert { job } => {
            let id = find(jobs, &job)?;
            let status = store.status(&id).map_err(store_error)?;
            if !matches!(
                status.state,
                JobState::Killed | JobState::Crashed | JobState::RevertFailed
            ) {
                return Err((
                    ErrorCode::WrongState,
                    format!(
                        "job {id} is {}: only a killed, crashed or revert_failed job can be reverted",
                        status.state
                    ),
                ));
            }
            if !status.tasks.iter().any(|t| t.revert_pending) {
                return Err((
                    ErrorCode::WrongState,
                    format!("job {id} has no pending revert"),
                ));
            }
            store
                .set_job_state(&id, JobState::Reverting, Some("revert requested"))
                .map_err(store_error)?;
            jobs.publish(&id, None, JobState::Reverting.as_str());
            jobs.launch_now(id, Purpose::Revert);
            Ok(ClientReply::Done)
        }
        ClientRequest::Resume { job } => {
            let id = find(jobs, &job)?;
            let status = store.status(&id).map_err(store_error)?;
            if !matches!(status.state, JobState::Killed | JobState::Crashed) {
                return Err((
                    ErrorCode::WrongState,
                    format!(
                        "job {id} is {}: only a killed or crashed job can be resumed",
                        status.state
                    ),
                ));
            }
            if status.tasks.iter().any(|t| {
                matches!(
                    t.state,
                    TaskState::Reverting | TaskState::Reverted | TaskState::RevertFailure
                )
            }) {
                return Err((
                    ErrorCode::WrongState,
                    format!("job {id} already began reverting: use `supervisor revert {id}`"),
                ));
            }
            store
                .set_job_state(&id, JobState::Running, Some("resume requested"))
                .map_err(store_error)?;
            jobs.publish(&id, None, JobState::Running.as_str());
            jobs.launch_now(id, Purpose::Execute);
            Ok(ClientReply::Done)
        }
        ClientRequest::Shutdown { cancel } => {
            tracing::info!(cancel, "shutdown requested");
            jobs.request_shutdown(cancel);
            Ok(ClientReply::Done)
        }
        ClientRequest::Hello { .. } | ClientRequest::Logs { .. } | ClientRequest::Events => {
            Err((ErrorCode::InvalidRequest, "unexpected request".into()))
        }
    }
}

/// Sends an order to a supervised job; a queued job is ended directly (`queued_end`).
async fn order_job(jobs: &Jobs, id: &JobId, order: Order, queued_end: JobState) -> Reply {
    if let Some(sender) = jobs.sender(id) {
        sender
            .send(order)
            .await
            .map_err(|_| (ErrorCode::WrongState, format!("job {id} just ended")))?;
        return Ok(ClientReply::Done);
    }
    let row = jobs.store().job(id).map_err(store_error)?;
    let state = row.state;
    if state.is_live() && state != JobState::Pending {
        // Live in the store but supervised by nobody (its supervision failed): take it up again.
        if let Some(sender) = jobs.adopt(row).await {
            sender
                .send(order)
                .await
                .map_err(|_| (ErrorCode::WrongState, format!("job {id} just ended")))?;
            return Ok(ClientReply::Done);
        }
        return Err((
            ErrorCode::WrongState,
            format!("job {id} was found dead and is now crashed"),
        ));
    }
    if state == JobState::Pending {
        jobs.store()
            .set_job_state(id, queued_end, Some("stopped before it started"))
            .map_err(store_error)?;
        jobs.publish(id, None, queued_end.as_str());
        return Ok(ClientReply::Done);
    }
    Err((
        ErrorCode::WrongState,
        format!("job {id} is {state}: nothing to stop"),
    ))
}

async fn stream_logs(
    jobs: &Jobs,
    stream: &mut UnixStream,
    job: &str,
    task: Option<&str>,
    follow: bool,
) {
    let id = match find(jobs, job) {
        Ok(id) => id,
        Err((code, message)) => {
            let _ = write_frame(stream, &ClientReply::Error { code, message }).await;
            return;
        }
    };
    let names: Vec<String> = jobs
        .store()
        .spec(&id)
        .map(|s| s.tasks.into_iter().map(|t| t.name).collect())
        .unwrap_or_default();
    if let Some(task) = task {
        if !names.iter().any(|n| n == task) {
            let message = format!("job {id} has no task {task:?}");
            let _ = write_frame(
                stream,
                &ClientReply::Error {
                    code: ErrorCode::InvalidRequest,
                    message,
                },
            )
            .await;
            return;
        }
    }
    let mut after = 0;
    loop {
        let live = jobs
            .store()
            .job(&id)
            .map(|j| j.state.is_live())
            .unwrap_or(false);
        let lines = jobs.store().output(&id, after).unwrap_or_default();
        for output in lines {
            after = output.id;
            let name = names.get(output.task as usize).cloned().unwrap_or_default();
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
        if !follow || !live {
            let _ = write_frame(stream, &ClientReply::Done).await;
            return;
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}

async fn stream_events(jobs: &Jobs, stream: &mut UnixStream) {
    let mut events = jobs.subscribe();
    loop {
        match events.recv().await {
            Ok(event) => {
                if write_frame(stream, &ClientReply::Event(event))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "events client too slow");
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}
