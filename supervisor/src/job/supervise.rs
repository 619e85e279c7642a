//! Supervising one job's conductor: applying its numbered reports (write-ahead
//! acknowledgements), the cancellation ladder, reconnection, and the job's end
//! (ARCHITECTURE.md, The cancellation ladder).
//!
//! `cancel` → job `cancelling`, `Cancel` to the conductor, kill timer armed at `cancel_timeout`.
//! Entering `reverting` for any reason arms it too, at the sum of the reverts' own bounds. The
//! timer fires first, or `kill` is asked → SIGKILL of everything of the job, job `killed`, and
//! the reverts that did not complete are recorded as pending and logged at WARN (`revert
//! skipped`). A conductor that dies on its own, or one this supervision cannot go on with (a
//! plan that cannot be sent), leaves the job `crashed`, with the same accounting.

mod pause;

use super::actor::{Actor, Next};
use super::end::{HardEnd, record_crash, record_end, remove_socket};
use super::journal::{self, WriteAhead};
use super::ladder::{self, Backoff, Ladder};
use super::launch::{Conductor, Launched};
use super::registry::{Command, Inbox, Jobs};
use super::{Order, OrderError, Purpose, Requester};
use crate::board::lease::LeaseClock;
use crate::containment::JobCgroup;
use crate::metrics::METRICS;
use crate::process::{self, ConductorId, Pidfd};
use crate::session::ConductorLink;
use crate::store::StoreError;
use shared::ids::JobId;
use shared::protocol::codec::FrameError;
use shared::protocol::conductor::{
    FromConductor, JobEvent, JobPlan, MAX_FENCE_MS, Phase, Report, StepOutcome, ToConductor,
};
use shared::spec::JobSpec;
use shared::state::JobState;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

/// How often to retry writing reports, or a job's end, that the store refused (a full disk).
pub(super) const STORE_RETRY_EVERY: Duration = Duration::from_millis(500);
/// After the conductor's exit, how long to wait for the reports still in its socket.
const FINAL_DRAIN: Duration = Duration::from_millis(200);
/// How long reports nobody waits for (a step's pid, its output, its end) are held before they
/// are applied, so that they share a store call with what follows (the next step's
/// write-ahead, the job's end): one call per short step, not two or three.
pub(super) const HOLD_REPORTS: Duration = Duration::from_millis(5);
/// The most reports held: past it they are applied at once (a step printing fast).
const HOLD_AT_MOST: usize = 256;

impl Actor {
    /// Supervises the conductor `next` names (launching it first) until it is gone, and records
    /// the job's end. Never returns with a live conductor and a live job, except when the
    /// daemon detaches on shutdown.
    pub(super) async fn supervise(&mut self, next: Next) {
        // Both steps are boxed: this future lives in the actor's task for the job's whole life,
        // so it holds two pointers rather than the largest of its steps (ARCHITECTURE.md, Bounds).
        let Some((mut supervision, link, plan, first)) = Box::pin(self.prepare(next)).await else {
            return;
        };
        Box::pin(supervision.run(&mut self.inbox, link, plan, first)).await;
    }

    /// Launches the job's conductor, or takes up the one `next` names: the supervision and its
    /// first link, plan and order; `None` when there is nothing to supervise (recorded).
    async fn prepare(&mut self, mut next: Next) -> Option<Prepared> {
        let read = match &mut next {
            Next::Launch(_, spec) => spec.take(),
            Next::Attach(..) => None,
        };
        let spec = match read {
            Some(spec) => *spec,
            None => match self.store(|s, id| s.spec(id)).await {
                Ok(spec) => spec,
                Err(err) => {
                    self.unsupervisable(next, &err.to_string()).await;
                    return None;
                }
            },
        };
        let mut started_ago = Duration::ZERO;
        let was_paused = matches!(&next, Next::Attach(row, _) if row.paused_ms.is_some());
        let (conductor, pidfd, link, plan, first, purpose) = match next {
            Next::Launch(purpose, _) => {
                let launcher = &self.jobs.inner.launcher;
                let slot = self.jobs.launch_slot().await;
                let launched = launcher
                    .launch(self.jobs.store(), &self.id, purpose, &spec)
                    .await;
                drop(slot);
                match launched {
                    Ok(Launched {
                        conductor,
                        pidfd,
                        link,
                        plan,
                    }) => (
                        conductor,
                        Some(pidfd),
                        Some(link),
                        Some(plan),
                        None,
                        purpose,
                    ),
                    Err(err) => {
                        self.launch_failed(&err).await;
                        return None;
                    }
                }
            }
            Next::Attach(row, order) => {
                let purpose = if row.state == JobState::Reverting {
                    Purpose::Revert
                } else {
                    Purpose::Execute
                };
                let conductor = Conductor {
                    id: ConductorId {
                        pid: row.conductor_pid.unwrap_or(0),
                        start_time: row.conductor_start.unwrap_or(0),
                    },
                    socket: self.jobs.inner.launcher.state_dir.socket(&self.id),
                    cgroup: row.cgroup.clone().map(|path| JobCgroup { path }),
                };
                if let Some(started_ms) = row.started_ms {
                    let ago = crate::clock::now_ms().saturating_sub(started_ms);
                    started_ago = Duration::from_millis(u64::try_from(ago).unwrap_or(0));
                }
                // None: the conductor is gone already (or its pid names another process now).
                let pidfd = Pidfd::open(conductor.id).ok();
                // The first connection is made by the loop, right away.
                (conductor, pidfd, None, None, order, purpose)
            }
        };
        let mut supervision = Box::new(Supervision::new(
            self.jobs.clone(),
            self.id.clone(),
            spec,
            (conductor, pidfd),
            purpose,
            started_ago,
        ));
        if was_paused {
            // Frozen under an earlier supervisor: still frozen, so its deadlines stand still.
            supervision.paused = Some(Instant::now());
        }
        Some((supervision, link, plan, first))
    }

    /// The job's spec cannot be read: nothing can be supervised.
    async fn unsupervisable(&mut self, next: Next, why: &str) {
        tracing::error!(error = why, "cannot read the job's spec");
        if let Next::Attach(row, _) = next {
            record_crash(&self.jobs, &row).await;
        } else {
            let reason = format!("cannot read the job's spec: {why}");
            let end = HardEnd::crashed(&reason, "supervision failed");
            let _ = record_end(&self.jobs, &self.id, end).await;
        }
    }

    async fn launch_failed(&mut self, err: &anyhow::Error) {
        let reason = format!("cannot start the conductor: {err:#}");
        tracing::error!(error = %reason, "launch failed");
        if let Some(cgroup) = self.jobs.inner.launcher.containment.job_cgroup(&self.id) {
            cgroup.kill_and_remove().await;
        }
        let end = HardEnd::crashed(&reason, "supervision failed");
        let _ = record_end(&self.jobs, &self.id, end).await;
    }
}

/// The connection to the conductor and what we heard from it.
struct LinkState {
    link: Option<ConductorLink>,
    /// Reports received and not yet applied (the store refused them, retried at
    /// `store_retry_at`; or held until `hold_until`).
    unapplied: Vec<Report>,
    store_retry_at: Option<Instant>,
    hold_until: Option<Instant>,
    /// A connection attempt under way (polled by the loop, so orders never wait for it).
    connecting: Option<Connecting>,
    reconnect_at: Instant,
    backoff: Backoff,
    /// Whether the loss of the link was logged (one WARN per change, not per attempt).
    unreachable: bool,
    last_heard: Instant,
    unresponsive: bool,
}

/// A supervision ready to run, with its first link, plan and order.
type Prepared = (
    Box<Supervision>,
    Option<ConductorLink>,
    Option<JobPlan>,
    Option<Order>,
);

/// One conductor's supervision.
struct Supervision {
    jobs: Jobs,
    id: JobId,
    spec: JobSpec,
    conductor: Conductor,
    purpose: Purpose,
    /// The conductor's pidfd (from its spawn, or opened and checked at re-attachment); `None`
    /// when it was already gone.
    pidfd: Option<Pidfd>,
    state: LinkState,
    ladder: Ladder,
    job_deadline: Option<Instant>,
    /// The plan, until the conductor has it.
    plan: Option<JobPlan>,
    /// Since when the job is paused (frozen), if it is: its deadlines stand still meanwhile.
    paused: Option<Instant>,
    /// When the first cancel and the hard kill came, for the latency metrics.
    cancelled_at: Option<Instant>,
    killed_at: Option<Instant>,
    /// On a job board: the daemon's lease, delegated to the conductor at each connection and
    /// each renewal (`ToConductor::Fence`); `None` without a board.
    lease: Option<watch::Receiver<LeaseClock>>,
    /// Whether the WARN that the conductor (older than version 5) has no fence was logged.
    unfenced_logged: bool,
}

/// A time far enough away to never come.
fn far() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}

impl Supervision {
    fn new(
        jobs: Jobs,
        id: JobId,
        spec: JobSpec,
        (conductor, pidfd): (Conductor, Option<Pidfd>),
        purpose: Purpose,
        started_ago: Duration,
    ) -> Self {
        let now = Instant::now();
        let mut ladder = Ladder::new(conductor.id);
        if purpose == Purpose::Revert {
            ladder.arm(ladder::revert_deadline(&spec, now), ladder::REVERT_TIMEOUT);
        }
        let lease = jobs.lease();
        Self {
            pidfd,
            job_deadline: ladder::job_deadline(&spec, now, started_ago),
            jobs,
            id,
            spec,
            conductor,
            purpose,
            state: LinkState {
                link: None,
                unapplied: Vec::new(),
                store_retry_at: None,
                hold_until: None,
                connecting: None,
                reconnect_at: now,
                backoff: Backoff::default(),
                unreachable: false,
                last_heard: now,
                unresponsive: false,
            },
            ladder,
            plan: None,
            paused: None,
            cancelled_at: None,
            killed_at: None,
            lease,
            unfenced_logged: false,
        }
    }

    async fn run(
        &mut self,
        inbox: &mut Inbox,
        link: Option<ConductorLink>,
        plan: Option<JobPlan>,
        first: Option<Order>,
    ) {
        self.plan = plan;
        if let Some(link) = link {
            Box::pin(self.connected(link)).await;
        }
        if let Some(order) = first {
            Box::pin(self.obey(order)).await;
        }
        let mut detach = self.jobs.detach_signal();
        let mut cancel_all = self.jobs.cancel_all_signal();
        let mut cancelled_at_shutdown = false;
        loop {
            let far = far();
            let silent_at = self.state.last_heard + self.spec.heartbeat_timeout;
            let over = self.ladder.is_over();
            let ticking = !over && self.paused.is_none();
            tokio::select! {
                biased;
                frame = next_frame(&mut self.state.link) => self.on_frame(frame).await,
                () = exited(self.pidfd.as_ref()) => break,
                Some(command) = inbox.recv() => Box::pin(self.on_command(command)).await,
                () = super::registry::signalled(&mut cancel_all), if !cancelled_at_shutdown => {
                    // `shutdown --cancel`, once; as an order from the daemon, which the job's
                    // state may refuse (its end already reported).
                    cancelled_at_shutdown = true;
                    let order = Order::Cancel {
                        timeout: None,
                        reason: "daemon shutdown --cancel".into(),
                        by: None,
                    };
                    let command = Box::new(Command { order, reply: None });
                    Box::pin(self.on_command(command)).await;
                }
                () = super::registry::signalled(&mut detach) => {
                    // Left running: its last fence counts from the lease's last renewal (at
                    // a clean stop, the one made as the daemon left the board).
                    self.send_fence().await;
                    return;
                }
                () = sleep_until(self.ladder.kill_deadline.map_or(far, |(at, _)| at)), if ticking => {
                    let why = self.ladder.kill_deadline.map_or("kill timer", |(_, why)| why);
                    tracing::warn!(pid = self.conductor.id.pid, reason = why, "killing the job");
                    let cause = match self.ladder.cause {
                        "operator" => "kill timer after an operator's cancel",
                        "job timeout" => "kill timer after the job timeout",
                        _ => "kill timer",
                    };
                    let by = self.ladder.by.clone();
                    self.hard_kill(why, cause, by).await;
                }
                () = sleep_until(self.job_deadline.unwrap_or(far)), if self.ladder.kill_deadline.is_none() && ticking => {
                    self.cancel(None, "job timeout reached".into(), "job timeout", None).await;
                }
                () = sleep_until(self.state.store_retry_at.unwrap_or(far)), if self.state.store_retry_at.is_some() => {
                    self.take_reports(None).await;
                }
                () = sleep_until(self.state.hold_until.unwrap_or(far)), if self.state.hold_until.is_some() => {
                    self.take_reports(None).await;
                }
                () = sleep_until(silent_at), if !self.state.unresponsive && ticking => self.on_silence().await,
                renewed = lease_renewed(self.lease.as_mut()) => {
                    if renewed {
                        // A frozen conductor holds the pause's fence, and reads nothing.
                        if self.paused.is_none() {
                            self.send_fence().await;
                        }
                    } else {
                        self.lease = None;
                    }
                }
                () = sleep_until(self.state.reconnect_at), if self.state.link.is_none() && self.state.connecting.is_none() => {
                    let (socket, id, conductor) = (self.conductor.socket.clone(), self.id.clone(), self.conductor.id);
                    self.state.connecting = Some(Box::pin(async move { ConductorLink::connect(&socket, &id, conductor).await }));
                }
                connected = next_connection(&mut self.state.connecting) => {
                    self.state.connecting = None;
                    match connected {
                        Ok(link) => Box::pin(self.connected(link)).await,
                        Err(err) => self.unreachable(&format!("{err:#}")),
                    }
                }
            }
        }
        tracing::debug!(pid = self.conductor.id.pid, "conductor exited");
        self.drain_after_exit().await;
        tracing::debug!("last reports drained");
        self.forget_pause().await;
        self.clean_up().await;
        tracing::debug!("conductor cleaned up");
        if let Some(at) = self.killed_at {
            METRICS
                .kill_to_gone
                .observe(crate::metrics::seconds(at.elapsed()));
        }
        self.record_outcome().await;
        if let Some(at) = self.cancelled_at {
            METRICS
                .cancel_to_end
                .observe(crate::metrics::seconds(at.elapsed()));
        }
    }

    /// A new connection: send the plan if the conductor has none yet.
    async fn connected(&mut self, link: ConductorLink) {
        self.state.backoff.reset();
        if std::mem::take(&mut self.state.unreachable) {
            tracing::info!(pid = self.conductor.id.pid, "conductor reachable again");
        }
        let needs_plan = !link.hello.has_plan;
        self.state.link = Some(link);
        self.state.last_heard = Instant::now();
        if needs_plan {
            self.send_plan().await;
        } else {
            self.plan = None;
        }
        self.send_fence().await;
    }

    /// Delegates the daemon's lease to a conductor that holds its plan: it may run steps
    /// until the hard fence (`t_r + lease*7/10`, `board/lease.rs`), counted from its receipt;
    /// a paused (frozen) one gets the longest fence, [`MAX_FENCE_MS`], and a fresh one before
    /// it thaws (`pause.rs`). A conductor older than version 5 cannot be told: logged once at
    /// WARN.
    pub(super) async fn send_fence(&mut self) {
        let Some(lease) = &self.lease else {
            return;
        };
        let run_for = lease.borrow().conductor_run_for(std::time::Instant::now());
        let run_for_ms = if self.paused.is_some() {
            MAX_FENCE_MS
        } else {
            u64::try_from(run_for.as_millis()).unwrap_or(u64::MAX)
        };
        let Some(link) = self.state.link.as_mut().filter(|_| self.plan.is_none()) else {
            return;
        };
        match link.send(&ToConductor::Fence { run_for_ms }).await {
            Ok(()) => tracing::debug!(run_for_ms, "fence sent"),
            Err(FrameError::NotInVersion { version, .. }) => {
                if !std::mem::replace(&mut self.unfenced_logged, true) {
                    tracing::warn!(
                        pid = self.conductor.id.pid,
                        protocol_version = version,
                        "this conductor has no fence: it cannot stop its steps by itself if this daemon falls silent"
                    );
                }
            }
            Err(err) => self.drop_link(&format!("cannot send the fence: {err}")),
        }
    }

    async fn send_plan(&mut self) {
        let plan = match self.plan.take() {
            Some(plan) => plan,
            None => {
                let purpose = self.purpose;
                let (id, spec) = (self.id.clone(), self.spec.clone());
                match self
                    .jobs
                    .store()
                    .call(move |s| super::launch::plan(s, &id, purpose, spec))
                    .await
                {
                    Ok(plan) => plan,
                    Err(err) => {
                        return self.give_up(&format!("cannot build the plan: {err}")).await;
                    }
                }
            }
        };
        let Some(link) = self.state.link.as_mut() else {
            self.plan = Some(plan);
            return;
        };
        match link.send_plan(plan.clone()).await {
            Ok(()) => {}
            Err(
                err @ (FrameError::TooLarge { .. }
                | FrameError::Malformed(_)
                | FrameError::NotInVersion { .. }),
            ) => {
                // A conductor of an older protocol cannot run this plan (a resume plan before
                // version 6): sending it again would not help.
                self.give_up(&format!("cannot send the plan: {err}")).await;
            }
            Err(err) => {
                self.plan = Some(plan);
                self.drop_link(&format!("cannot send the plan: {err}"));
            }
        }
    }

    async fn on_command(&mut self, command: Box<Command>) {
        let answer = match command.order {
            Order::Cancel {
                timeout: Some(timeout),
                ..
            } if timeout <= self.spec.term_grace => Err(OrderError::Invalid(format!(
                "a cancel timeout of {} is not longer than the job's term_grace ({}): the running task could not be stopped softly and every revert would be skipped",
                shared::duration::format_duration(timeout),
                shared::duration::format_duration(self.spec.term_grace)
            ))),
            // The conductor reported the job's end: that end stands, and there is nothing left
            // to stop (an order accepted now would be answered yes and then not happen).
            Order::Cancel { .. } | Order::Kill { .. } if self.ladder.finished.is_some() => {
                let state = self.ladder.finished.map_or("ending", JobState::as_str);
                Err(OrderError::WrongState(format!(
                    "job {} is {state}: nothing to stop",
                    self.id
                )))
            }
            Order::Kill { .. } if self.ladder.is_over() => Err(OrderError::WrongState(format!(
                "job {} is already being killed",
                self.id
            ))),
            Order::Cancel { .. } | Order::Kill { .. } => {
                self.obey(command.order).await;
                Ok(())
            }
            Order::Adopt => Ok(()),
            Order::Pause { by } => self.pause(by).await,
            Order::Continue { by } => self.resume_from_pause(by).await,
            Order::Start | Order::Revert { .. } | Order::Resume { .. } => {
                Err(OrderError::WrongState(format!(
                    "job {} has a live conductor (pid {}): wait for it to end, or cancel or kill it",
                    self.id, self.conductor.id.pid
                )))
            }
        };
        if let Some(reply) = command.reply {
            let _ = reply.send(answer);
        }
    }

    async fn obey(&mut self, order: Order) {
        match order {
            Order::Cancel {
                timeout,
                reason,
                by,
            } => {
                if self.paused.is_some() {
                    // Thawed first: a frozen conductor cannot stop its task or revert.
                    if let Err(err) = self.thaw(None).await {
                        tracing::error!(error = %err, "cannot thaw the job to cancel it");
                    }
                }
                let cause = if by.is_some() {
                    "operator"
                } else {
                    "supervisor"
                };
                self.cancel(timeout, reason, cause, by).await;
            }
            Order::Kill { reason, by } => {
                let cause = if by.is_some() {
                    "operator"
                } else {
                    "supervisor"
                };
                self.hard_kill(&reason, cause, by).await;
            }
            Order::Pause { by } => {
                if let Err(err) = self.pause(by).await {
                    tracing::warn!(error = %err, "pause refused");
                }
            }
            Order::Continue { by } => {
                if let Err(err) = self.resume_from_pause(by).await {
                    tracing::warn!(error = %err, "continue refused");
                }
            }
            Order::Start | Order::Revert { .. } | Order::Resume { .. } | Order::Adopt => {}
        }
    }

    /// The soft cancel: `cancelling`, `Cancel` to the conductor, the kill timer armed. `cause`
    /// and `by` say who asked, for the record and for the kill timer's WARN if it fires.
    async fn cancel(
        &mut self,
        timeout: Option<Duration>,
        reason: String,
        cause: &'static str,
        by: Option<Requester>,
    ) {
        let timeout = timeout.unwrap_or(self.spec.cancel_timeout);
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let by_text = by.as_ref().map(Requester::who);
        tracing::info!(reason, timeout_ms, cause, by = by_text, "cancelling");
        self.ladder
            .arm(Instant::now() + timeout, "cancel timeout expired");
        if !self.ladder.is_over() {
            self.ladder.cause = cause;
            if by.is_some() {
                self.ladder.by.clone_from(&by);
            }
        }
        METRICS.cancelled(cause);
        self.cancelled_at.get_or_insert_with(Instant::now);
        let why = reason.clone();
        let id = self.id.clone();
        let who = by.clone();
        match self
            .jobs
            .store()
            .call(move |s| {
                s.transition_job_by(
                    &id,
                    &[JobState::Running, JobState::Reverting],
                    JobState::Cancelling,
                    Some(&why),
                    who.as_ref(),
                )
            })
            .await
        {
            Ok(_) => self
                .jobs
                .publish_by(&self.id, JobState::Cancelling.as_str(), by),
            Err(StoreError::WrongState { .. }) => {}
            Err(err) => tracing::error!(error = %err, "cannot record the cancel"),
        }
        let sent = match self.state.link.as_mut() {
            Some(link) => link.send(&ToConductor::Cancel { reason }).await.is_ok(),
            None => false,
        };
        // The nudge that reaches a conductor whose one thread is busy (a native task computing):
        // it sets the flag that `TaskContext::is_cancelled` reads.
        self.signal(nix::sys::signal::Signal::SIGUSR1);
        if !sent {
            // SIGTERM to the conductor itself means the same as the Cancel message.
            self.signal(nix::sys::signal::Signal::SIGTERM);
        }
    }

    /// Signals the conductor through its pidfd: never a recycled pid.
    fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(pidfd) = &self.pidfd {
            let _ = pidfd.signal(signal);
        }
    }

    /// SIGKILL of everything of the job; `cause` and `by` say who or what asked (recorded with
    /// the end, and named by the `revert skipped` WARN).
    async fn hard_kill(&mut self, reason: &str, cause: &'static str, by: Option<Requester>) {
        if !self.ladder.is_over() {
            METRICS.killed(cause);
            self.killed_at = Some(Instant::now());
            self.ladder.killed = Some(reason.to_owned());
            self.ladder.cause = cause;
            if by.is_some() {
                self.ladder.by = by;
            }
        }
        self.kill_tree().await;
        tracing::info!(pid = self.conductor.id.pid, reason, cause, "job killed");
    }

    /// This supervision cannot go on: the job is killed and ends `crashed`.
    async fn give_up(&mut self, reason: &str) {
        tracing::error!(
            pid = self.conductor.id.pid,
            reason,
            "supervision cannot go on; killing the job"
        );
        if self.ladder.crashed.is_none() {
            self.ladder.crashed = Some(reason.to_owned());
        }
        self.kill_tree().await;
    }

    /// cgroup mode: `cgroup.kill` (the cgroup is emptied and removed once the conductor is
    /// gone). Session mode: the conductor's tree, its session and the running steps' groups.
    async fn kill_tree(&mut self) {
        match &self.conductor.cgroup {
            Some(cgroup) => cgroup.kill(),
            None => {
                let count = process::kill_job(self.conductor.id, &self.ladder.groups).await;
                tracing::debug!(count, "killed the job's processes");
            }
        }
    }

    /// A frame (or the end of the connection) from the conductor.
    async fn on_frame(&mut self, frame: Option<Result<FromConductor, FrameError>>) {
        let lost = match frame {
            Some(Ok(FromConductor::Report(report))) => {
                self.take_reports(Some(report)).await;
                None
            }
            Some(Ok(FromConductor::Heartbeat)) => None,
            Some(Ok(other)) => Some(format!("unexpected frame {other:?}")),
            Some(Err(err)) => Some(format!("connection failed: {err}")),
            None => Some("connection closed".to_owned()),
        };
        if let Some(reason) = lost {
            self.drop_link(&reason);
            return;
        }
        self.state.last_heard = Instant::now();
        if self.state.unresponsive {
            self.state.unresponsive = false;
            tracing::info!(pid = self.conductor.id.pid, "conductor responsive again");
            let id = self.id.clone();
            if let Err(err) = self
                .jobs
                .store()
                .call(move |s| s.set_unresponsive(&id, None))
                .await
            {
                tracing::error!(error = %err, "cannot record that the conductor answers again");
            }
        }
    }

    /// Drops a broken connection; the loop reconnects, with backoff, while the conductor lives.
    fn drop_link(&mut self, reason: &str) {
        self.state.link = None;
        // The conductor sends them again on the next connection.
        self.state.unapplied.clear();
        self.state.store_retry_at = None;
        self.state.hold_until = None;
        self.unreachable(reason);
    }

    /// A failed connection or a lost link: try again later, logging once per change.
    fn unreachable(&mut self, reason: &str) {
        self.state.reconnect_at = Instant::now() + self.state.backoff.next_delay();
        let expected = self.ladder.finished.is_some() || self.ladder.is_over();
        if !self.state.unreachable && !expected {
            tracing::warn!(
                pid = self.conductor.id.pid,
                reason,
                "conductor unreachable; reconnecting with backoff while it lives"
            );
        } else {
            tracing::debug!(reason, "cannot reach the conductor yet");
        }
        self.state.unreachable = true;
    }

    /// No frame for `heartbeat_timeout`: the conductor is unresponsive (its one thread is stuck).
    async fn on_silence(&mut self) {
        self.state.unresponsive = true;
        let silent_ms = u64::try_from(self.spec.heartbeat_timeout.as_millis()).unwrap_or(u64::MAX);
        tracing::warn!(
            pid = self.conductor.id.pid,
            silent_ms,
            kill = self.spec.kill_unresponsive,
            "conductor unresponsive"
        );
        let since = crate::clock::now_ms() - i64::try_from(silent_ms).unwrap_or(0);
        let id = self.id.clone();
        if let Err(err) = self
            .jobs
            .store()
            .call(move |s| s.set_unresponsive(&id, Some(since)))
            .await
        {
            tracing::error!(error = %err, "cannot record the unresponsive conductor");
        }
        if self.spec.kill_unresponsive {
            self.hard_kill("conductor unresponsive", "kill_unresponsive", None)
                .await;
        }
    }

    /// Applies `first` and whatever else already arrived (and what the store refused before),
    /// then acknowledges. A store that refuses (a full disk) keeps the reports for a retry and
    /// the link as it is: the conductor waits at its next write-ahead point.
    async fn take_reports(&mut self, first: Option<Report>) {
        let Some(link) = self.state.link.as_mut() else {
            return;
        };
        self.state.unapplied.extend(first);
        loop {
            match link.try_next() {
                Some(FromConductor::Report(report)) => self.state.unapplied.push(report),
                Some(FromConductor::Heartbeat) => {}
                Some(other) => return self.drop_link(&format!("unexpected frame {other:?}")),
                None => break,
            }
        }
        let waiting = self
            .state
            .store_retry_at
            .is_some_and(|at| Instant::now() < at);
        if self.state.unapplied.is_empty() || waiting || self.hold() {
            return;
        }
        let (id, batch) = (self.id.clone(), self.state.unapplied.clone());
        match self
            .jobs
            .store()
            .call(move |s| s.apply_reports(&id, &batch))
            .await
        {
            Ok(applied) => {
                if self.state.store_retry_at.take().is_some() {
                    tracing::info!("the store takes the conductor's reports again");
                }
                let batch = std::mem::take(&mut self.state.unapplied);
                for report in &batch[applied.fresh_from..] {
                    self.observe(&report.event);
                }
                // Applied again on a retry, they are held already: observed once.
                // Boxed, and only on a board: the board's write (a PostgreSQL query's future)
                // would otherwise sit in every job's supervision for its whole life.
                let written = if self.jobs.board().is_some() {
                    Box::pin(journal::write_ahead(&self.jobs, &self.id, &batch)).await
                } else {
                    Ok(WriteAhead::Done)
                };
                match written {
                    Ok(WriteAhead::Done) => {}
                    Ok(WriteAhead::Refused) => {
                        return self
                            .hard_kill(
                                "stale owner: the job was taken by another host",
                                "stale_owner",
                                None,
                            )
                            .await;
                    }
                    Err(err) => {
                        tracing::warn!(
                            error = format!("{err:#}"),
                            "cannot write the write-ahead on the board; the conductor waits until it is"
                        );
                        self.state.unapplied = batch;
                        self.state.store_retry_at = Some(Instant::now() + STORE_RETRY_EVERY);
                        return;
                    }
                }
                let Some(link) = self.state.link.as_mut() else {
                    return;
                };
                if let Err(err) = link.send(&ToConductor::Ack { seq: applied.held }).await {
                    self.drop_link(&err.to_string());
                }
            }
            Err(err @ StoreError::ReportGap { .. }) => {
                // A report was lost on the way: the conductor sends them all again.
                self.drop_link(&err.to_string());
            }
            Err(err) => {
                if self.state.store_retry_at.is_none() {
                    tracing::error!(error = %err, "cannot apply the conductor's reports; it waits until they are");
                }
                self.state.store_retry_at = Some(Instant::now() + STORE_RETRY_EVERY);
            }
        }
    }

    /// Whether to hold the unapplied reports a little longer: none is waited for (the
    /// conductor waits for a write-ahead and its end; the ladder for a cancel), there are few,
    /// and they have not been held for [`HOLD_REPORTS`] yet.
    fn hold(&mut self) -> bool {
        let now = Instant::now();
        let awaited = self.state.unapplied.len() >= HOLD_AT_MOST
            || self.state.unapplied.iter().any(|report| {
                matches!(
                    report.event,
                    JobEvent::TaskStarting { .. }
                        | JobEvent::JobFinished { .. }
                        | JobEvent::Cancelling { .. }
                        | JobEvent::Fenced { .. }
                )
            });
        let until = *self.state.hold_until.get_or_insert(now + HOLD_REPORTS);
        let hold = !awaited && now < until;
        if !hold {
            self.state.hold_until = None;
        }
        hold
    }

    /// What a freshly applied report means for the ladder and for subscribers.
    fn observe(&mut self, event: &JobEvent) {
        match event {
            JobEvent::TaskSpawned { task, pid, .. } => {
                if let Some(cgroup) = &self.conductor.cgroup {
                    // A pid outside the job's cgroup is refused; one that already exited
                    // cannot be checked, and is not recorded either (nothing is signalled
                    // by group in cgroup mode: the cgroup is killed whole).
                    let pgid = i32::try_from(*pid).ok();
                    match pgid.and_then(|pgid| Some((pgid, crate::containment::cgroup_of(pgid)?))) {
                        Some((pgid, path)) if cgroup.contains(&path) => {
                            let _ = self.ladder.step_spawned(*task, pgid);
                        }
                        Some((_, path)) => tracing::warn!(
                            task,
                            pid,
                            cgroup = %path.display(),
                            "refused a step's process outside the job's cgroup"
                        ),
                        None => {}
                    }
                } else {
                    let recorded =
                        i32::try_from(*pid).is_ok_and(|pgid| self.ladder.step_spawned(*task, pgid));
                    if !recorded {
                        tracing::warn!(
                            task,
                            pid,
                            "refused a step's process group outside the job's session"
                        );
                    }
                }
            }
            JobEvent::TaskFinished {
                task,
                phase,
                outcome,
            } => {
                self.ladder.step_finished(*task);
                let ok = matches!(outcome, StepOutcome::Success { .. });
                match (phase, ok) {
                    (Phase::Execute, false) => {
                        METRICS.tasks_failed.inc();
                    }
                    (Phase::Execute, true) => {}
                    (Phase::Revert, ok) => METRICS.reverted(ok),
                }
            }
            JobEvent::TaskStarting {
                phase: Phase::Execute,
                ..
            } => {
                METRICS.tasks_started.inc();
                // A resume plan's execute after its reverts is no longer bounded by them.
                self.ladder.disarm_revert();
            }
            JobEvent::TaskStarting {
                phase: Phase::Revert,
                ..
            } => {
                // Reverting, for whatever reason, is bounded.
                let deadline = ladder::revert_deadline(&self.spec, Instant::now());
                self.ladder.arm(deadline, ladder::REVERT_TIMEOUT);
            }
            JobEvent::Cancelling { .. } => {
                // Cancelled by a signal sent to the conductor: the ladder applies all the same.
                let deadline = Instant::now() + self.spec.cancel_timeout;
                self.ladder.arm(deadline, "cancel timeout expired");
            }
            JobEvent::JobFinished { state } => self.ladder.finished = Some(*state),
            JobEvent::Fenced { reason } => self.conductor_fenced(reason),
            _ => {}
        }
        publish_event(&self.jobs, &self.id, &self.spec, event);
        self.jobs.observe(event);
    }

    /// The conductor's fence passed (this daemon fell silent, or its lease lapsed): it killed
    /// its running steps and exits once the report is acknowledged. The job ends `killed` with
    /// the conductor's reason, as after a kill, unless a kill came first.
    fn conductor_fenced(&mut self, reason: &str) {
        tracing::warn!(pid = self.conductor.id.pid, reason, "conductor fenced");
        if !self.ladder.is_over() {
            METRICS.killed("conductor fenced");
            self.killed_at = Some(Instant::now());
            self.ladder.killed = Some(reason.to_owned());
            self.ladder.cause = "conductor fenced";
        }
    }

    /// Reads what the dead conductor still had in flight, so the store misses nothing it did.
    async fn drain_after_exit(&mut self) {
        let Some(mut link) = self.state.link.take() else {
            return;
        };
        let deadline = Instant::now() + FINAL_DRAIN;
        let mut batch = std::mem::take(&mut self.state.unapplied);
        loop {
            match tokio::time::timeout_at(deadline, link.next()).await {
                Ok(Some(Ok(FromConductor::Report(report)))) => batch.push(report),
                Ok(Some(Ok(FromConductor::Heartbeat))) => {}
                _ => break,
            }
        }
        if batch.is_empty() {
            return;
        }
        let (id, reports) = (self.id.clone(), batch.clone());
        match self
            .jobs
            .store()
            .call(move |s| s.apply_reports(&id, &reports))
            .await
        {
            Ok(applied) => {
                for report in &batch[applied.fresh_from..] {
                    self.observe(&report.event);
                }
            }
            Err(err) => tracing::error!(error = %err, "cannot apply the last reports"),
        }
    }

    /// Whatever the conductor left behind goes with it. In cgroup mode the job counts as gone
    /// only once its cgroup is empty; in session mode its tree is scanned and killed. (That the
    /// conductor exited is recorded with the job's end: [`Self::record_outcome`].)
    async fn clean_up(&mut self) {
        match &self.conductor.cgroup {
            Some(cgroup) => {
                cgroup.kill_and_remove().await;
            }
            None => {
                let leftovers = process::kill_job(self.conductor.id, &self.ladder.groups).await;
                if leftovers > 0 {
                    tracing::warn!(
                        count = leftovers,
                        "killed processes the conductor left behind"
                    );
                }
            }
        }
        remove_socket(&self.conductor.socket);
    }

    /// The job's end, once its conductor and everything it left are gone: the one the
    /// conductor reported (durable already: it is published first, and that the conductor
    /// exited is recorded after, off the path of whoever waits for the end), or a hard end
    /// (recorded in one commit with the conductor's exit).
    async fn record_outcome(&mut self) {
        if let Some(state) = self.ladder.finished {
            tracing::info!(state = state.as_str(), "job ended");
            // Hooks counted before the end is published (`supervisor run` waits for them).
            self.jobs
                .job_ended(&self.id, state, false, Some(self.spec.hooks.clone()));
            self.jobs.publish_state(&self.id, state);
            self.record_conductor_exited().await;
            return;
        }
        let (state, reason) = self.ladder.hard_end();
        let end = HardEnd {
            state,
            reason,
            cause: if state == JobState::Crashed && self.ladder.crashed.is_some() {
                "supervision failed"
            } else {
                self.ladder.cause
            },
            by: self.ladder.by.clone(),
        };
        // Re-attached only to acknowledge an end the store already held: that end stands.
        if let Some(stored) = record_end(&self.jobs, &self.id, end).await {
            tracing::info!(state = stored.as_str(), "job ended");
            // Hooks the previous daemon ran already are recorded, and not run again.
            self.jobs
                .job_ended(&self.id, stored, false, Some(self.spec.hooks.clone()));
            self.jobs.publish_state(&self.id, stored);
            self.record_conductor_exited().await;
        }
    }

    async fn record_conductor_exited(&mut self) {
        let id = self.id.clone();
        if let Err(err) = self
            .jobs
            .store()
            .call(move |s| s.set_conductor_exited(&id))
            .await
        {
            tracing::error!(error = %err, "cannot record the conductor's exit");
        }
    }
}

/// Turns a report into an `events` line for subscribers.
fn publish_event(jobs: &Jobs, id: &JobId, spec: &JobSpec, event: &JobEvent) {
    let name = |task: &u32| {
        usize::try_from(*task)
            .ok()
            .and_then(|i| spec.tasks.get(i))
            .map(|t| t.name.clone())
    };
    let (task, state) = match event {
        JobEvent::TaskStarting {
            task,
            phase: Phase::Execute,
            ..
        } => (name(task), "running"),
        JobEvent::TaskStarting {
            task,
            phase: Phase::Revert,
            ..
        } => (name(task), "reverting"),
        JobEvent::TaskFinished {
            task,
            phase,
            outcome,
        } => {
            let state = match (phase, outcome) {
                (Phase::Execute, StepOutcome::Success { .. }) => "success",
                (Phase::Execute, StepOutcome::Failure { .. }) => "failure",
                (Phase::Revert, StepOutcome::Success { .. }) => "reverted",
                (Phase::Revert, StepOutcome::Failure { .. }) => "revert_failure",
            };
            (name(task), state)
        }
        JobEvent::Cancelling { .. } => (None, "cancelling"),
        JobEvent::TaskSpawned { .. }
        | JobEvent::Output { .. }
        | JobEvent::JobFinished { .. }
        | JobEvent::Fenced { .. } => {
            return;
        }
    };
    jobs.publish(id, task, state);
}

/// Resolves when the conductor has exited (at once when it was gone already).
async fn exited(pidfd: Option<&Pidfd>) {
    if let Some(pidfd) = pidfd {
        pidfd.exited().await;
    }
}

type Connecting =
    std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<ConductorLink>> + Send>>;

async fn next_connection(connecting: &mut Option<Connecting>) -> anyhow::Result<ConductorLink> {
    match connecting {
        Some(attempt) => attempt.await,
        None => std::future::pending().await,
    }
}

/// Resolves at the next renewal of the daemon's lease: true, or false once the lease is gone
/// for good (the daemon stops); never without a board.
async fn lease_renewed(lease: Option<&mut watch::Receiver<LeaseClock>>) -> bool {
    match lease {
        Some(lease) => lease.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

async fn next_frame(link: &mut Option<ConductorLink>) -> Option<Result<FromConductor, FrameError>> {
    match link {
        Some(link) => link.next().await,
        None => std::future::pending().await,
    }
}
