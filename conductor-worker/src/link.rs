//! The conductor's end of the job socket: one supervisor connection at a time, numbered reports
//! kept until acknowledged and sent again on reconnect, cancel requests passed to the runner.

use anyhow::{Context, bail};
use shared::ids::JobId;
use shared::protocol::PROTOCOL_VERSION;
use shared::protocol::codec::{
    FrameResult, encode_frame, read_frame, spawn_frame_reader, write_frame,
};
use shared::protocol::conductor::{
    ConductorHello, FromConductor, JobEvent, JobPlan, Report, ToConductor,
};
use std::collections::VecDeque;
use std::os::fd::{FromRawFd, RawFd};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};

/// How long a new connection has to complete the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the job is being cancelled, once it is.
pub type CancelReason = Option<String>;

/// The runner's side of the link.
pub struct LinkHandle {
    reports: mpsc::UnboundedSender<Report>,
    acked: watch::Receiver<u64>,
    next_seq: u64,
}

impl LinkHandle {
    /// Sends a report without waiting; it is kept until acknowledged.
    pub fn report(&mut self, event: JobEvent) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        tracing::debug!(seq, ?event, "report");
        // The link task lives as long as the runtime; a send can only fail during shutdown.
        let _ = self.reports.send(Report { seq, event });
        seq
    }

    /// Sends a report and waits until the supervisor has made it durable.
    pub async fn write_ahead(&mut self, event: JobEvent) -> anyhow::Result<()> {
        let seq = self.report(event);
        self.wait_acked(seq).await
    }

    /// Waits until every report up to `seq` is acknowledged.
    pub async fn wait_acked(&mut self, seq: u64) -> anyhow::Result<()> {
        self.acked
            .wait_for(|&acked| acked >= seq)
            .await
            .map(|_| ())
            .context("the link to the supervisor stopped")
    }
}

/// Everything the runner gets from the link.
pub struct Link {
    pub handle: LinkHandle,
    pub plan: oneshot::Receiver<JobPlan>,
    pub cancel: watch::Receiver<CancelReason>,
    /// Lets the conductor's own signal handlers ask for a cancel too.
    pub cancel_sender: watch::Sender<CancelReason>,
}

/// Takes over the inherited listening socket and starts serving it.
pub fn start(listen_fd: RawFd, job_id: JobId) -> anyhow::Result<Link> {
    // SAFETY: the supervisor passes us this descriptor, open and owned by nobody else here.
    let std_listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(listen_fd) };
    std_listener
        .set_nonblocking(true)
        .context("the inherited socket is not usable")?;
    let listener = UnixListener::from_std(std_listener)
        .with_context(|| format!("file descriptor {listen_fd} is not a listening Unix socket"))?;
    let (reports_tx, reports_rx) = mpsc::unbounded_channel();
    let (acked_tx, acked_rx) = watch::channel(0);
    let (cancel_tx, cancel_rx) = watch::channel(None);
    let (plan_tx, plan_rx) = oneshot::channel();
    let server = Server {
        listener,
        job_id,
        reports: reports_rx,
        outbox: VecDeque::new(),
        acked: acked_tx,
        cancel: cancel_tx.clone(),
        plan: Some(plan_tx),
        heartbeat_every: heartbeat_every(shared::spec::DEFAULT_HEARTBEAT_TIMEOUT),
    };
    tokio::spawn(server.serve());
    Ok(Link {
        handle: LinkHandle {
            reports: reports_tx,
            acked: acked_rx,
            next_seq: 1,
        },
        plan: plan_rx,
        cancel: cancel_rx,
        cancel_sender: cancel_tx,
    })
}

struct Server {
    listener: UnixListener,
    job_id: JobId,
    reports: mpsc::UnboundedReceiver<Report>,
    /// Sent (or to be sent) and not yet acknowledged, in order.
    outbox: VecDeque<Report>,
    acked: watch::Sender<u64>,
    cancel: watch::Sender<CancelReason>,
    plan: Option<oneshot::Sender<JobPlan>>,
    /// A third of the job's `heartbeat_timeout`, once the plan is known.
    heartbeat_every: Duration,
}

/// Heartbeats go out three times per `heartbeat_timeout` (and at least every 10 ms apart).
fn heartbeat_every(timeout: Duration) -> Duration {
    (timeout / 3).max(Duration::from_millis(10))
}

impl Server {
    async fn serve(mut self) {
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    continue;
                }
            };
            if let Err(err) = check_peer(&stream) {
                tracing::warn!(error = format!("{err:#}"), "connection refused");
                continue;
            }
            match self.session(stream).await {
                Ok(()) => tracing::info!("supervisor disconnected"),
                Err(err) => {
                    tracing::warn!(error = format!("{err:#}"), "supervisor connection lost")
                }
            }
        }
    }

    async fn session(&mut self, stream: UnixStream) -> anyhow::Result<()> {
        let (mut reader, mut writer) = stream.into_split();
        let hello: Option<ToConductor> =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(&mut reader))
                .await
                .context("no handshake in time")??;
        let ours = ConductorHello {
            protocol_version: PROTOCOL_VERSION,
            job_id: self.job_id.clone(),
            pid: std::process::id(),
            has_plan: self.plan.is_none(),
        };
        write_frame(&mut writer, &FromConductor::Hello(ours)).await?;
        match hello {
            Some(ToConductor::Hello(theirs)) if theirs.protocol_version != PROTOCOL_VERSION => {
                bail!(
                    "protocol version mismatch: supervisor speaks {}, conductor speaks {PROTOCOL_VERSION}",
                    theirs.protocol_version
                )
            }
            Some(ToConductor::Hello(theirs)) if theirs.job_id != self.job_id => {
                bail!(
                    "supervisor asked for job {}, this conductor runs {}",
                    theirs.job_id,
                    self.job_id
                )
            }
            Some(ToConductor::Hello(_)) => {}
            other => bail!("expected a hello, got {other:?}"),
        }
        tracing::info!("supervisor connected");

        let (mut frames, read_task) = spawn_frame_reader::<ToConductor, _>(reader, 16);
        let result = self.exchange(&mut writer, &mut frames).await;
        read_task.abort();
        let _ = writer.shutdown().await;
        result
    }

    async fn exchange(
        &mut self,
        writer: &mut tokio::net::unix::OwnedWriteHalf,
        frames: &mut mpsc::Receiver<FrameResult<ToConductor>>,
    ) -> anyhow::Result<()> {
        let mut backlog = Vec::new();
        for report in &self.outbox {
            backlog.extend(encode_frame(&FromConductor::Report(report.clone()))?);
        }
        writer.write_all(&backlog).await?;
        let mut heartbeat = tokio::time::interval(self.heartbeat_every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = heartbeat.tick() => {
                    writer.write_all(&encode_frame(&FromConductor::Heartbeat)?).await?;
                }
                frame = frames.recv() => match frame {
                    Some(Ok(Some(message))) => {
                        self.handle(message)?;
                        if heartbeat.period() != self.heartbeat_every {
                            heartbeat = tokio::time::interval(self.heartbeat_every);
                            heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        }
                    }
                    Some(Ok(None)) | None => return Ok(()),
                    Some(Err(err)) => return Err(err.into()),
                },
                report = self.reports.recv() => {
                    let Some(report) = report else { return Ok(()) };
                    let frame = encode_frame(&FromConductor::Report(report.clone()))?;
                    self.outbox.push_back(report);
                    writer.write_all(&frame).await?;
                }
            }
        }
    }

    fn handle(&mut self, message: ToConductor) -> anyhow::Result<()> {
        tracing::debug!(?message, "from supervisor");
        match message {
            ToConductor::Ack { seq } => {
                while self.outbox.front().is_some_and(|r| r.seq <= seq) {
                    self.outbox.pop_front();
                }
                self.acked.send_if_modified(|acked| {
                    let newer = seq > *acked;
                    *acked = (*acked).max(seq);
                    newer
                });
            }
            ToConductor::Cancel { reason: why } => {
                self.cancel.send_if_modified(|reason| {
                    let first = reason.is_none();
                    reason.get_or_insert(why);
                    first
                });
            }
            ToConductor::Start(plan) => match self.plan.take() {
                Some(sender) => {
                    self.heartbeat_every = heartbeat_every(plan.spec.heartbeat_timeout);
                    let _ = sender.send(*plan);
                }
                None => bail!("received a second plan"),
            },
            ToConductor::Hello(_) => bail!("unexpected second hello"),
        }
        Ok(())
    }
}

/// Only our own user or root may talk to the conductor.
fn check_peer(stream: &UnixStream) -> anyhow::Result<()> {
    let creds = stream
        .peer_cred()
        .context("cannot read the peer's credentials")?;
    let ours = nix::unistd::geteuid().as_raw();
    if creds.uid() == ours || creds.uid() == 0 {
        Ok(())
    } else {
        bail!(
            "peer uid {} (pid {:?}) is neither {ours} nor root",
            creds.uid(),
            creds.pid()
        )
    }
}
