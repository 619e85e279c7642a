//! The conductor's end of the job socket: one supervisor connection at a time, numbered reports
//! kept until acknowledged and sent again on reconnect, cancel requests passed to the runner.

use anyhow::{Context, bail};
use shared::ids::JobId;
use shared::protocol::codec::{FrameResult, encode_frame, read_frame, spawn_frame_reader_with};
use shared::protocol::conductor::{
    ConductorHello, FromConductor, JobEvent, JobPlan, MAX_FENCE_MS, Phase, Report, Stream,
    ToConductor,
};
use shared::protocol::{PROTOCOL_VERSION, negotiate, supported_versions};
use std::collections::VecDeque;
use std::os::fd::{FromRawFd, RawFd};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};

/// Set once a warm conductor (spawned without a job) has been told its job; from then on it
/// is that job's conductor, and outlives its supervisor as every conductor does. One job per
/// process, so one flag per process.
static ASSIGNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Resolves when the daemon that spawned this warm conductor (`parent`, named on its command
/// line) is gone, or was never this process's parent, while no job was assigned yet: a warm conductor nobody will ever assign must
/// not linger (ARCHITECTURE.md, Warm conductors). Waits on a pidfd of the parent, no polling;
/// never resolves once a job is assigned. Where no pidfd can be had, the plan timeout bounds
/// the wait.
pub async fn daemon_gone_while_warm(parent: nix::unistd::Pid) {
    use std::os::fd::OwnedFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, parent.as_raw(), 0) };
    // SAFETY: a descriptor the kernel just returned, open and owned by nobody else.
    let pidfd = i32::try_from(raw)
        .ok()
        .filter(|&fd| fd >= 0)
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    // Checked after the open: reparented already (the daemon died before this process looked,
    // and the pidfd may name a stranger that took its pid), nobody will assign it.
    if nix::unistd::getppid() != parent {
        return;
    }
    // Without a pidfd, the plan timeout bounds the wait.
    let Some(pidfd) = pidfd else {
        return std::future::pending().await;
    };
    // SAFETY: the `AsyncFd` owns the descriptor and closes it when dropped.
    if let Ok(watch) = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE)
    } {
        let _ = watch.readable().await;
    }
    if !ASSIGNED.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    std::future::pending().await
}

/// How long a new connection has to complete the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the job is being cancelled, once it is.
pub type CancelReason = Option<String>;

/// Until when the conductor may run steps: the last [`ToConductor::Fence`]'s receipt time plus
/// its `run_for_ms`, on the monotonic clock; `None` while no fence was received (a supervisor
/// without a job board, or older than version 5: no deadline).
pub type FenceDeadline = Option<tokio::time::Instant>;

/// The most output reports kept unacknowledged (sent, or waiting to be): past it, output lines
/// are dropped and counted until the supervisor catches up ([`LinkHandle::report`]).
pub const MAX_UNACKED_OUTPUT: usize = 65536;

/// The most output bytes kept unacknowledged (the same bound, in bytes).
pub const MAX_UNACKED_OUTPUT_BYTES: u64 = 8 << 20;

/// Room in the reports queue beyond [`MAX_UNACKED_OUTPUT`], for the reports that are never
/// dropped. Few can be unacknowledged at once: every step waits for the acknowledgement of its
/// `TaskStarting`, so each of the at most `max_parallel` running steps has at most its
/// `TaskStarting`, `TaskSpawned`, `TaskFinished` and a line saying what was dropped pending
/// beside the output, and the job a `Cancelling` and the `JobFinished`.
const STATE_ROOM: usize = 64 + 4 * shared::spec::MAX_PARALLEL as usize;

/// The runner's side of the link.
pub struct LinkHandle {
    /// Bounded: [`MAX_UNACKED_OUTPUT`] output reports and [`STATE_ROOM`] others.
    reports: mpsc::Sender<Report>,
    acked: watch::Receiver<u64>,
    next_seq: u64,
    /// The unacknowledged output reports: (seq, bytes), oldest first.
    unacked_output: VecDeque<(u64, u64)>,
    unacked_output_bytes: u64,
    /// Output dropped while the supervisor was behind, not yet reported.
    behind: Option<Behind>,
}

/// Output lines dropped because the supervisor was behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Behind {
    task: u32,
    phase: Phase,
    lines: u64,
    bytes: u64,
}

impl LinkHandle {
    /// Sends a report without waiting; it is kept until acknowledged. Its texts are bounded
    /// first ([`JobEvent::bounded`]), so that it always fits in a frame.
    ///
    /// An output line that finds [`MAX_UNACKED_OUTPUT`] lines (or
    /// [`MAX_UNACKED_OUTPUT_BYTES`]) unacknowledged is dropped and counted instead (it gets no
    /// seq; the returned one is the last report's), and the next report that goes out is
    /// preceded by one line saying how many were dropped. Every other report always goes out:
    /// a state change is never lost.
    pub fn report(&mut self, event: JobEvent) -> u64 {
        let event = event.bounded();
        self.forget_acked();
        if let JobEvent::Output {
            task, phase, line, ..
        } = &event
        {
            if self.output_is_full() {
                let behind = self.behind.get_or_insert(Behind {
                    task: *task,
                    phase: *phase,
                    lines: 0,
                    bytes: 0,
                });
                behind.lines += 1;
                behind.bytes += u64::try_from(line.len()).unwrap_or(u64::MAX) + 1;
                return self.next_seq - 1;
            }
        }
        if let Some(behind) = self.behind.take() {
            self.push(behind_line(behind));
        }
        self.push(event)
    }

    /// [`LinkHandle::report`], after waiting until the output queue has room: for the lines
    /// that must not be dropped (a step's tail and the line saying what its cap dropped).
    pub async fn report_when_room(&mut self, event: JobEvent) -> u64 {
        loop {
            self.forget_acked();
            if !self.output_is_full() {
                break;
            }
            if self.acked.changed().await.is_err() {
                break;
            }
        }
        self.report(event)
    }

    fn output_is_full(&self) -> bool {
        self.unacked_output.len() >= MAX_UNACKED_OUTPUT
            || self.unacked_output_bytes >= MAX_UNACKED_OUTPUT_BYTES
    }

    /// Forgets the output reports the supervisor has acknowledged.
    fn forget_acked(&mut self) {
        let acked = *self.acked.borrow();
        while let Some(&(seq, bytes)) = self.unacked_output.front() {
            if seq > acked {
                break;
            }
            self.unacked_output.pop_front();
            self.unacked_output_bytes -= bytes;
        }
    }

    fn push(&mut self, event: JobEvent) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let JobEvent::Output { line, .. } = &event {
            let bytes = u64::try_from(line.len()).unwrap_or(u64::MAX) + 1;
            self.unacked_output.push_back((seq, bytes));
            self.unacked_output_bytes += bytes;
        }
        tracing::debug!(seq, ?event, "report");
        match self.reports.try_send(Report { seq, event }) {
            Ok(()) => {}
            // The link task lives as long as the runtime: closed only during shutdown.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(report)) => {
                // Cannot happen: the queue has room for every report that can be pending.
                tracing::error!(seq = report.seq, "the reports queue is full, report lost");
            }
        }
        seq
    }

    /// Whether an output report would be sent now rather than dropped (for a caller that must
    /// not hold the handle while it waits: see [`LinkHandle::acked`]).
    pub fn output_has_room(&mut self) -> bool {
        self.forget_acked();
        !self.output_is_full()
    }

    /// The acknowledged seq, to wait on without holding the handle (several steps of a graph
    /// share it, each waiting for its own write-ahead).
    #[must_use]
    pub fn acked(&self) -> watch::Receiver<u64> {
        self.acked.clone()
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
    /// The supervisor's lease as delegated to this conductor; each fence replaces the last.
    pub fence: watch::Receiver<FenceDeadline>,
}

/// Takes over the inherited listening socket and starts serving it. The socket becomes
/// close-on-exec at once, so that no task inherits it. `job_id` is `None` for a warm conductor:
/// the first supervisor hello names its job.
pub fn start(listen_fd: RawFd, job_id: Option<JobId>) -> anyhow::Result<Link> {
    crate::fds::set_close_on_exec(listen_fd)
        .with_context(|| format!("file descriptor {listen_fd} is not usable"))?;
    // SAFETY: the supervisor passes us this descriptor, open and owned by nobody else here.
    let std_listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(listen_fd) };
    std_listener
        .set_nonblocking(true)
        .context("the inherited socket is not usable")?;
    let listener = UnixListener::from_std(std_listener)
        .with_context(|| format!("file descriptor {listen_fd} is not a listening Unix socket"))?;
    let (reports_tx, reports_rx) = mpsc::channel(MAX_UNACKED_OUTPUT + STATE_ROOM);
    let (acked_tx, acked_rx) = watch::channel(0);
    let (cancel_tx, cancel_rx) = watch::channel(None);
    let (fence_tx, fence_rx) = watch::channel(None);
    let (plan_tx, plan_rx) = oneshot::channel();
    let server = Server {
        listener,
        job_id,
        reports: reports_rx,
        outbox: VecDeque::new(),
        acked: acked_tx,
        cancel: cancel_tx.clone(),
        fence: fence_tx,
        plan: Some(plan_tx),
        prior_results: Vec::new(),
        version: PROTOCOL_VERSION,
        health: Health::default(),
        heartbeat_every: heartbeat_every(shared::spec::DEFAULT_HEARTBEAT_TIMEOUT),
    };
    tokio::spawn(server.serve());
    Ok(Link {
        handle: LinkHandle {
            reports: reports_tx,
            acked: acked_rx,
            next_seq: 1,
            unacked_output: VecDeque::new(),
            unacked_output_bytes: 0,
            behind: None,
        },
        plan: plan_rx,
        cancel: cancel_rx,
        cancel_sender: cancel_tx,
        fence: fence_rx,
    })
}

struct Server {
    listener: UnixListener,
    /// `None` until a warm conductor is assigned; set once, never changed.
    job_id: Option<JobId>,
    reports: mpsc::Receiver<Report>,
    /// Sent (or to be sent) and not yet acknowledged, in order. Bounded as the reports queue
    /// is: a report leaves the queue only into the outbox, and the runner's handle admits no
    /// output past [`MAX_UNACKED_OUTPUT`] unacknowledged reports.
    outbox: VecDeque<Report>,
    acked: watch::Sender<u64>,
    cancel: watch::Sender<CancelReason>,
    fence: watch::Sender<FenceDeadline>,
    plan: Option<oneshot::Sender<JobPlan>>,
    /// Prior results received in this connection, for the plan that follows them.
    prior_results: Vec<(u32, String)>,
    /// The protocol version of the current connection (the lower of the two ends').
    version: u32,
    health: Health,
    /// A third of the job's `heartbeat_timeout`, once the plan is known.
    heartbeat_every: Duration,
}

/// First pause after a failed `accept`, doubled after each further failure up to
/// [`ACCEPT_RETRY_MAX`], so that a lasting error (EMFILE) does not spin the thread.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);

/// Longest pause between two `accept`s that fail.
const ACCEPT_RETRY_MAX: Duration = Duration::from_secs(1);

/// The pause after a failed `accept` that follows `previous` (`None`: the first failure).
fn accept_backoff(previous: Option<Duration>) -> Duration {
    previous.map_or(ACCEPT_RETRY, |pause| (pause * 2).min(ACCEPT_RETRY_MAX))
}

/// How the link to the supervisor has been, so that a lasting problem is logged once at WARN
/// (and then at debug for every further attempt), and its end once at INFO.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Health {
    /// No supervisor has connected yet.
    #[default]
    Unknown,
    /// A supervisor is connected.
    Up,
    /// A connection was lost or refused, and that was logged at WARN.
    Down,
    /// The job's last report was acknowledged: the supervisor may go, nothing is missing.
    Done,
}

impl Health {
    /// Logs a connection that was lost or refused: WARN when it changes the state, debug after
    /// (and once the job is done, a closed connection is expected).
    fn failed(&mut self, what: &'static str, error: &dyn std::fmt::Display) {
        match self {
            Self::Down | Self::Done => {
                tracing::debug!(error = %error, what, "supervisor link still down");
            }
            Self::Unknown | Self::Up => {
                tracing::warn!(error = %error, what, "supervisor link down");
                *self = Self::Down;
            }
        }
    }

    /// Logs a working handshake: INFO, saying whether the link is back after a failure.
    fn connected(&mut self, version: u32) {
        match self {
            Self::Down => tracing::info!(protocol_version = version, "supervisor link back"),
            _ => tracing::info!(protocol_version = version, "supervisor connected"),
        }
        if *self != Self::Done {
            *self = Self::Up;
        }
    }
}

/// Heartbeats go out three times per `heartbeat_timeout` (and at least every 10 ms apart).
fn heartbeat_every(timeout: Duration) -> Duration {
    (timeout / 3).max(Duration::from_millis(10))
}

impl Server {
    async fn serve(mut self) {
        let mut backoff = None;
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => {
                    backoff = None;
                    stream
                }
                Err(err) => {
                    self.health.failed("accept", &err);
                    let pause = accept_backoff(backoff);
                    backoff = Some(pause);
                    tokio::time::sleep(pause).await;
                    continue;
                }
            };
            if let Err(err) = check_peer(&stream) {
                self.health
                    .failed("connection refused", &format_args!("{err:#}"));
                continue;
            }
            match self.session(stream).await {
                Ok(()) => self
                    .health
                    .failed("connection closed", &"the supervisor closed the connection"),
                Err(err) => self
                    .health
                    .failed("connection lost", &format_args!("{err:#}")),
            }
        }
    }

    async fn session(&mut self, mut stream: UnixStream) -> anyhow::Result<()> {
        let hello: Option<ToConductor> =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(&mut stream))
                .await
                .context("no handshake in time")??;
        let version = match &hello {
            Some(ToConductor::Hello(theirs)) => negotiate(theirs.protocol_version),
            _ => None,
        };
        let job_id = match (&hello, &self.job_id) {
            (_, Some(ours)) => ours.clone(),
            // A warm conductor takes the job of the first well-formed hello: one job for life.
            (Some(ToConductor::Hello(theirs)), None) if version.is_some() => {
                tracing::info!(job_id = %theirs.job_id, "warm conductor assigned");
                // Before the answer: once the supervisor has it, this conductor is the job's.
                ASSIGNED.store(true, std::sync::atomic::Ordering::SeqCst);
                self.job_id = Some(theirs.job_id.clone());
                theirs.job_id.clone()
            }
            (other, None) => bail!("a warm conductor expected a hello with its job, got {other:?}"),
        };
        let ours = ConductorHello {
            // The version both speak, so that an older supervisor sees its own.
            protocol_version: version.unwrap_or(PROTOCOL_VERSION),
            job_id: job_id.clone(),
            pid: std::process::id(),
            has_plan: self.plan.is_none(),
        };
        send_with_credentials(&stream, &encode_frame(&FromConductor::Hello(ours))?).await?;
        let (reader, mut writer) = stream.into_split();
        match hello {
            Some(ToConductor::Hello(theirs)) if version.is_none() => {
                bail!(
                    "protocol version mismatch: supervisor speaks {}, conductor speaks {}",
                    theirs.protocol_version,
                    supported_versions()
                )
            }
            Some(ToConductor::Hello(theirs)) if theirs.job_id != job_id => {
                bail!(
                    "supervisor asked for job {}, this conductor runs {}",
                    theirs.job_id,
                    job_id
                )
            }
            Some(ToConductor::Hello(_)) => {}
            other => bail!("expected a hello, got {other:?}"),
        }
        self.version = version.unwrap_or(PROTOCOL_VERSION);
        self.prior_results.clear();
        self.health.connected(self.version);

        let (mut frames, read_task) =
            spawn_frame_reader_with(reader, 16, ToConductor::decoder(self.version));
        let result = self.exchange(&mut writer, &mut frames).await;
        read_task.abort();
        let _ = writer.shutdown().await;
        result
    }

    /// Serves one connection after its handshake: sends the reports (those not yet
    /// acknowledged first) and heartbeats, applies the supervisor's messages. Writing never
    /// stops reading: a supervisor blocked sending an acknowledgement while the conductor is
    /// blocked sending a report would otherwise wait on each other for ever. The bytes not yet
    /// written are bounded: no new report is taken while [`WRITE_AHEAD`] bytes wait.
    async fn exchange(
        &mut self,
        writer: &mut tokio::net::unix::OwnedWriteHalf,
        frames: &mut mpsc::Receiver<FrameResult<ToConductor>>,
    ) -> anyhow::Result<()> {
        let mut out = Outgoing::default();
        for report in &self.outbox {
            out.push(&FromConductor::Report(report.clone()))?;
        }
        let mut heartbeat = tokio::time::interval(self.heartbeat_every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = heartbeat.tick() => out.push(&FromConductor::Heartbeat)?,
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
                report = self.reports.recv(), if out.has_room() => {
                    let Some(report) = report else { return Ok(()) };
                    // Kept first: whatever happens to this connection, the report is sent
                    // again on the next one.
                    self.outbox.push_back(report.clone());
                    out.push(&FromConductor::Report(report))?;
                }
                // Cancel-safe: when another branch wins, nothing was written.
                written = writer.write(out.pending()), if !out.is_empty() => {
                    match written? {
                        0 => bail!("the supervisor's end is closed"),
                        n => out.advance(n),
                    }
                }
            }
        }
    }

    fn handle(&mut self, message: ToConductor) -> anyhow::Result<()> {
        tracing::debug!(?message, "from supervisor");
        match message {
            ToConductor::Ack { seq } => {
                while self.outbox.front().is_some_and(|r| r.seq <= seq) {
                    let acked = self.outbox.pop_front();
                    if acked.is_some_and(|r| matches!(r.event, JobEvent::JobFinished { .. })) {
                        self.health = Health::Done;
                    }
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
            ToConductor::Fence { run_for_ms } => {
                // Counted from the receipt, which is after the send: never later than the
                // supervisor's own hard fence by more than the message's transit.
                let run_for = Duration::from_millis(run_for_ms.min(MAX_FENCE_MS));
                self.fence
                    .send_replace(Some(tokio::time::Instant::now() + run_for));
            }
            ToConductor::PriorResult { task, result } if self.plan.is_some() => {
                self.prior_results.push((task, result));
            }
            ToConductor::PriorResult { task, .. } => {
                bail!("received a prior result (task {task}) after the plan")
            }
            ToConductor::Start(plan) => {
                if self.plan.is_none() {
                    bail!("received a second plan");
                }
                let mut plan = *plan;
                for (task, result) in self.prior_results.drain(..) {
                    if !plan.put_prior_result(task, result) {
                        bail!("received a prior result for task {task}, which the plan lacks");
                    }
                }
                self.heartbeat_every = heartbeat_every(plan.spec.heartbeat_timeout);
                if let Some(sender) = self.plan.take() {
                    let _ = sender.send(plan);
                }
            }
            ToConductor::Hello(_) => bail!("unexpected second hello"),
        }
        Ok(())
    }
}

/// Sends `frame` with this process's `SCM_CREDENTIALS`: the supervisor authenticates the
/// conductor by the kernel-checked pid of its hello (ARCHITECTURE.md, Security). The kernel
/// would attach them anyway to a receiver that set `SO_PASSCRED`; sending them explicitly says
/// so here and does not depend on it.
async fn send_with_credentials(stream: &UnixStream, frame: &[u8]) -> anyhow::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, UnixCredentials, sendmsg};
    use std::os::fd::AsRawFd;
    let creds = UnixCredentials::new();
    let mut sent = 0;
    while sent < frame.len() {
        stream.writable().await?;
        let chunk = &frame[sent..];
        let written = stream.try_io(tokio::io::Interest::WRITABLE, || {
            sendmsg::<()>(
                stream.as_raw_fd(),
                &[std::io::IoSlice::new(chunk)],
                &[ControlMessage::ScmCredentials(&creds)],
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map_err(std::io::Error::from)
        });
        match written {
            Ok(written) => sent += written,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err).context("cannot send the hello"),
        }
    }
    Ok(())
}

/// Most bytes of encoded frames waiting to be written before the link takes no new report.
const WRITE_AHEAD: usize = 256 * 1024;

/// Encoded frames waiting to be written to the supervisor.
#[derive(Default)]
struct Outgoing {
    bytes: Vec<u8>,
    /// How many of `bytes` are written.
    written: usize,
}

impl Outgoing {
    fn push(&mut self, message: &FromConductor) -> anyhow::Result<()> {
        self.bytes.extend(encode_frame(message)?);
        Ok(())
    }

    fn pending(&self) -> &[u8] {
        &self.bytes[self.written..]
    }

    fn is_empty(&self) -> bool {
        self.written == self.bytes.len()
    }

    fn has_room(&self) -> bool {
        self.bytes.len() - self.written < WRITE_AHEAD
    }

    fn advance(&mut self, written: usize) {
        self.written = (self.written + written).min(self.bytes.len());
        if self.is_empty() {
            self.bytes.clear();
            self.written = 0;
        } else if self.written >= WRITE_AHEAD {
            self.bytes.drain(..self.written);
            self.written = 0;
        }
    }
}

/// The line that stands for output dropped while the supervisor was behind.
fn behind_line(behind: Behind) -> JobEvent {
    JobEvent::Output {
        task: behind.task,
        phase: behind.phase,
        stream: Stream::Stderr,
        line: format!(
            "[... {} lines ({} bytes) of output dropped: the supervisor was not taking them fast enough ...]",
            behind.lines, behind.bytes
        ),
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

#[cfg(test)]
mod tests {
    use super::*;
    use shared::protocol::codec::{decode_body, write_frame};
    use shared::protocol::conductor::{MAX_LINE_LEN, PlanAction, PriorTask};
    use shared::protocol::{MIN_PROTOCOL_VERSION, conductor::SupervisorHello};
    use shared::spec::JobSpec;
    use std::os::fd::IntoRawFd;
    use tokio::io::AsyncReadExt;

    fn job() -> JobId {
        JobId::from_random(0x5eed)
    }

    fn plan() -> JobPlan {
        let spec = JobSpec::parse(
            "[[task]]\nname = \"a\"\nrun = \"true\"\nrevert_timeout = \"3s\"\n",
            "j.toml",
            "j",
        )
        .expect("valid");
        JobPlan {
            job_id: job(),
            spec,
            action: PlanAction::Revert { order: vec![0] },
            prior: vec![PriorTask {
                result: "kept".into(),
                ..PriorTask::fresh()
            }],
        }
    }

    /// A conductor link on a fresh socket, and the path a supervisor connects to.
    fn started() -> (Link, std::path::PathBuf) {
        started_for(Some(job()))
    }

    /// [`started`] for `job_id` (`None`: a warm conductor).
    fn started_for(job_id: Option<JobId>) -> (Link, std::path::PathBuf) {
        let path =
            std::env::temp_dir().join(format!("cw-link-{}-{}", std::process::id(), rand_suffix()));
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let link = start(listener.into_raw_fd(), job_id).expect("start");
        (link, path)
    }

    fn rand_suffix() -> u32 {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Connects as a supervisor announcing `version`; returns the stream and the answer.
    async fn handshake(path: &std::path::Path, version: u32) -> (UnixStream, ConductorHello) {
        handshake_for(path, version, job()).await
    }

    /// [`handshake`] for `job_id`.
    async fn handshake_for(
        path: &std::path::Path,
        version: u32,
        job_id: JobId,
    ) -> (UnixStream, ConductorHello) {
        let mut stream = UnixStream::connect(path).await.expect("connect");
        let hello = ToConductor::Hello(SupervisorHello {
            protocol_version: version,
            job_id,
        });
        write_frame(&mut stream, &hello).await.expect("hello");
        match read_frame::<FromConductor, _>(&mut stream).await {
            Ok(Some(FromConductor::Hello(answer))) => (stream, answer),
            other => panic!("expected a hello, got {other:?}"),
        }
    }

    /// The next report, skipping heartbeats.
    async fn next_report(stream: &mut UnixStream) -> Report {
        loop {
            let len = stream.read_u32().await.expect("header");
            let mut body = vec![0; usize::try_from(len).expect("fits")];
            stream.read_exact(&mut body).await.expect("body");
            match decode_body::<FromConductor>(&body).expect("decode") {
                FromConductor::Report(report) => return report,
                FromConductor::Heartbeat => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn each_fence_sets_the_deadline_from_its_receipt_and_replaces_the_last() {
        let (mut link, path) = started();
        assert_eq!(*link.fence.borrow(), None, "no fence before one is sent");
        let (mut stream, _) = handshake(&path, PROTOCOL_VERSION).await;
        let before = tokio::time::Instant::now();
        let fence = ToConductor::Fence { run_for_ms: 7000 };
        write_frame(&mut stream, &fence).await.expect("fence");
        link.fence.changed().await.expect("a deadline");
        let first = link.fence.borrow_and_update().expect("set");
        assert!(
            first >= before + Duration::from_millis(7000),
            "from the receipt"
        );
        assert!(first <= tokio::time::Instant::now() + Duration::from_millis(7000));
        // A later one replaces it, even when it reaches less far; a huge one is bounded.
        let fence = ToConductor::Fence { run_for_ms: 0 };
        write_frame(&mut stream, &fence).await.expect("fence");
        link.fence.changed().await.expect("a deadline");
        let second = link.fence.borrow_and_update().expect("set");
        assert!(second < first, "replaced");
        let fence = ToConductor::Fence {
            run_for_ms: u64::MAX,
        };
        write_frame(&mut stream, &fence).await.expect("fence");
        link.fence.changed().await.expect("a deadline");
        let bounded = link.fence.borrow_and_update().expect("set");
        assert!(bounded <= tokio::time::Instant::now() + Duration::from_millis(MAX_FENCE_MS));
    }

    #[tokio::test]
    async fn a_warm_conductor_takes_the_first_hellos_job_and_refuses_any_other() {
        let (link, path) = started_for(None);
        let (mut stream, answer) = handshake_for(&path, PROTOCOL_VERSION, job()).await;
        assert_eq!(
            answer.job_id,
            job(),
            "the warm conductor answers with its new job"
        );
        let frame = ToConductor::Start(Box::new(plan()))
            .encode(PROTOCOL_VERSION)
            .expect("v2");
        stream.write_all(&frame).await.expect("start");
        assert_eq!(link.plan.await.expect("the plan arrives"), plan());
        drop(stream);
        // Assigned for life: a supervisor asking for another job is refused.
        let other = JobId::from_random(0xbeef);
        let (mut stream, answer) = handshake_for(&path, PROTOCOL_VERSION, other).await;
        assert_eq!(answer.job_id, job());
        // Refused: the conductor closes the connection (an accepted one would stay open).
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
            .await
            .expect("the other job's connection is closed")
            .expect("read");
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn a_version_1_supervisor_is_answered_in_version_1_and_its_plan_decoded() {
        let (link, path) = started();
        let (mut stream, answer) = handshake(&path, MIN_PROTOCOL_VERSION).await;
        assert_eq!(answer.protocol_version, MIN_PROTOCOL_VERSION);
        assert!(!answer.has_plan);
        let frame = ToConductor::Start(Box::new(plan()))
            .encode(MIN_PROTOCOL_VERSION)
            .expect("v1");
        stream.write_all(&frame).await.expect("start");
        let got = link.plan.await.expect("the plan arrives");
        let mut expected = plan();
        expected.spec.tasks[0].revert_timeout = None;
        assert_eq!(got, expected);
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn version_2_prior_results_are_merged_into_the_plan_and_reports_are_bounded() {
        let (mut link, path) = started();
        let (mut stream, answer) = handshake(&path, PROTOCOL_VERSION).await;
        assert_eq!(answer.protocol_version, PROTOCOL_VERSION);
        let mut sent = plan();
        for (task, result) in sent.take_prior_results() {
            let frame = ToConductor::PriorResult { task, result }
                .encode(PROTOCOL_VERSION)
                .expect("v2");
            stream.write_all(&frame).await.expect("prior");
        }
        let frame = ToConductor::Start(Box::new(sent))
            .encode(PROTOCOL_VERSION)
            .expect("v2");
        stream.write_all(&frame).await.expect("start");
        assert_eq!(link.plan.await.expect("the plan arrives"), plan());

        link.handle.report(JobEvent::Output {
            task: 0,
            phase: Phase::Revert,
            stream: Stream::Stdout,
            line: "x".repeat(4 * MAX_LINE_LEN),
        });
        let report = next_report(&mut stream).await;
        let JobEvent::Output { line, .. } = report.event else {
            panic!("an output line")
        };
        assert!(line.len() <= MAX_LINE_LEN && line.ends_with("bytes cut]"));
        let _ = std::fs::remove_file(&path);
    }

    /// One WARN per change of state: the first failure moves to `Down` (logged at WARN), later
    /// ones stay there (debug); a handshake brings it back `Up`; once the job is done, a closed
    /// connection is no failure at all.
    #[test]
    fn health_changes_state_once_per_failure_streak() {
        let mut health = Health::default();
        health.failed("connection refused", &"peer uid 1234");
        assert_eq!(health, Health::Down);
        health.failed("connection refused", &"peer uid 1234");
        assert_eq!(health, Health::Down);
        health.connected(PROTOCOL_VERSION);
        assert_eq!(health, Health::Up);
        health.failed("connection lost", &"reset");
        assert_eq!(health, Health::Down);
        health = Health::Done;
        health.failed("connection closed", &"closed");
        health.connected(PROTOCOL_VERSION);
        assert_eq!(health, Health::Done);
    }

    #[test]
    fn accept_failures_back_off_up_to_a_second() {
        let mut pause = None;
        let mut pauses = Vec::new();
        for _ in 0..10 {
            let next = accept_backoff(pause);
            pauses.push(next);
            pause = Some(next);
        }
        assert_eq!(pauses[0], ACCEPT_RETRY);
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]), "{pauses:?}");
        assert_eq!(pauses.last().copied(), Some(ACCEPT_RETRY_MAX));
    }

    /// A handle whose supervisor acknowledges nothing: output past the bound is dropped and
    /// counted, state changes always go out, and the count goes out before the next report.
    #[tokio::test]
    async fn output_past_the_unacked_bound_is_dropped_and_counted_but_state_changes_never_are() {
        let (reports, mut queue) = mpsc::channel(MAX_UNACKED_OUTPUT + STATE_ROOM);
        let (acked_tx, acked) = watch::channel(0);
        let mut handle = LinkHandle {
            reports,
            acked,
            next_seq: 1,
            unacked_output: VecDeque::new(),
            unacked_output_bytes: 0,
            behind: None,
        };
        let line = |n: usize| JobEvent::Output {
            task: 0,
            phase: Phase::Execute,
            stream: Stream::Stdout,
            line: format!("line {n}"),
        };
        for n in 0..MAX_UNACKED_OUTPUT + 100 {
            handle.report(line(n));
        }
        let finished = handle.report(JobEvent::Cancelling {
            reason: "test".into(),
        });
        let sent: Vec<Report> = std::iter::from_fn(|| queue.try_recv().ok()).collect();
        assert_eq!(sent.len(), MAX_UNACKED_OUTPUT + 2);
        assert!(sent.windows(2).all(|w| w[1].seq == w[0].seq + 1));
        let JobEvent::Output { line: marker, .. } = &sent[MAX_UNACKED_OUTPUT].event else {
            panic!("the drop count comes before the state change")
        };
        assert!(marker.contains("100 lines"), "{marker}");
        assert_eq!(sent[MAX_UNACKED_OUTPUT + 1].seq, finished);
        // Once acknowledged, output flows again.
        acked_tx.send_replace(finished);
        let seq = handle.report(line(0));
        assert_eq!(seq, finished + 1);
        assert!(queue.try_recv().is_ok());
    }

    #[test]
    fn heartbeats_are_a_third_of_the_timeout_and_not_too_often() {
        assert_eq!(
            heartbeat_every(Duration::from_secs(30)),
            Duration::from_secs(10)
        );
        assert_eq!(
            heartbeat_every(Duration::from_millis(3)),
            Duration::from_millis(10)
        );
    }
}
