//! Supervising one job's conductor: applying its reports (write-ahead acknowledgements), and the
//! cancellation ladder of DESIGN.md section 4.
//!
//! `cancel` → job `cancelling`, `Cancel` to the conductor, kill timer armed at `cancel_timeout`.
//! The conductor reverts and reports the end → timer disarmed. The timer fires first, or `kill`
//! is asked → SIGKILL of everything of the job, job `killed`, and the reverts that did not complete
//! are recorded as pending and logged at WARN (`revert skipped`). A conductor that dies on its own
//! leaves the job `crashed`, with the same accounting.

use crate::containment::JobCgroup;
use crate::process::{self, Pidfd, TaskGroups};
use crate::session::ConductorLink;
use crate::store::Store;
use shared::ids::JobId;
use shared::protocol::conductor::{FromConductor, JobEvent, JobPlan, Report, ToConductor};
use shared::spec::JobSpec;
use shared::state::JobState;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

/// What an operator (or the daemon) asks of a supervised job.
#[derive(Clone, Debug)]
pub enum Order {
    /// Soft cancel; `timeout` overrides the job's `cancel_timeout`.
    Cancel {
        timeout: Option<Duration>,
        reason: String,
    },
    /// SIGKILL now.
    Kill { reason: String },
}

/// One conductor, as the store records it.
#[derive(Clone, Debug)]
pub struct Conductor {
    pub pid: i32,
    /// With the pid, names the process (`/proc` start time).
    pub start_time: u64,
    pub socket: PathBuf,
    /// The job's cgroup, in cgroup mode.
    pub cgroup: Option<JobCgroup>,
}

impl Conductor {
    #[must_use]
    pub const fn id(&self) -> process::ConductorId {
        process::ConductorId {
            pid: self.pid,
            start_time: self.start_time,
        }
    }
}

/// Everything `supervise` needs besides the conductor.
pub struct Supervision {
    pub store: Arc<Store>,
    pub job_id: JobId,
    pub spec: JobSpec,
    /// When the job started (for its whole-job `timeout`).
    pub started: Instant,
    /// Each applied report, for whoever displays the job.
    pub observer: Option<mpsc::UnboundedSender<JobEvent>>,
}

/// How often to try to reach a conductor again after its connection dropped.
const RECONNECT_EVERY: Duration = Duration::from_millis(100);
/// How often, and how many times, to retry writing a job's end that the store refused.
const STORE_RETRY_EVERY: Duration = Duration::from_millis(500);
const STORE_RETRIES: u32 = 240;
/// After the conductor's exit, how long to wait for the reports still in its socket.
const FINAL_DRAIN: Duration = Duration::from_millis(200);

/// The connection to the conductor and what we heard from it.
struct LinkState {
    link: Option<ConductorLink>,
    /// Reports received and not yet applied (the store refused them; retried at `store_retry_at`).
    unapplied: Vec<Report>,
    store_retry_at: Option<Instant>,
    /// A connection attempt under way (polled by the loop, so orders never wait for it).
    connecting: Option<Connecting>,
    reconnect_at: Instant,
    last_heard: Instant,
    unresponsive: bool,
}

struct Ladder {
    cancel_deadline: Option<Instant>,
    killed: Option<String>,
    finished: Option<JobState>,
    groups: TaskGroups,
}

impl Supervision {
    /// Supervises the conductor until it is gone; returns the job's terminal state.
    pub async fn run(
        &self,
        conductor: Conductor,
        link: Option<ConductorLink>,
        plan: Option<JobPlan>,
        mut orders: mpsc::Receiver<Order>,
    ) -> anyhow::Result<JobState> {
        // None: the conductor is already gone (or its pid names another process now).
        let exit = Pidfd::open(conductor.id()).ok();
        let mut link = link;
        let mut ladder = Ladder {
            cancel_deadline: None,
            killed: None,
            finished: None,
            groups: TaskGroups::new(conductor.id()),
        };
        if let (Some(link), Some(plan)) = (link.as_mut(), plan) {
            link.send(&ToConductor::Start(Box::new(plan))).await?;
        }
        let far = Instant::now() + Duration::from_secs(86400 * 365);
        let job_deadline = self.spec.timeout.map(|t| self.started + t);
        let mut state = LinkState {
            link,
            reconnect_at: far,
            connecting: None,
            unapplied: Vec::new(),
            store_retry_at: None,
            last_heard: Instant::now(),
            unresponsive: false,
        };
        let mut orders_open = true;
        loop {
            let silent_at = state.last_heard + self.spec.heartbeat_timeout;
            tokio::select! {
                biased;
                frame = next_frame(&mut state.link) => self.on_frame(frame, &mut state, &mut ladder, &conductor).await,
                () = exited(exit.as_ref()) => break,
                order = orders.recv(), if orders_open => match order {
                    Some(order) => self.obey(order, &conductor, &mut state.link, &mut ladder).await,
                    None => orders_open = false,
                },
                () = sleep_until(ladder.cancel_deadline.unwrap_or(far)), if ladder.killed.is_none() => {
                    tracing::warn!(job_id = %self.job_id, pid = conductor.pid, "cancel timeout expired, killing the job");
                    self.hard_kill("cancel timeout expired", &conductor, &mut ladder).await;
                }
                () = sleep_until(job_deadline.unwrap_or(far)), if ladder.cancel_deadline.is_none() && ladder.killed.is_none() => {
                    let order = Order::Cancel { timeout: None, reason: "job timeout reached".into() };
                    self.obey(order, &conductor, &mut state.link, &mut ladder).await;
                }
                () = sleep_until(state.store_retry_at.unwrap_or(far)), if state.store_retry_at.is_some() => {
                    if let Err(reason) = self.take_reports(&mut state, None, &mut ladder).await {
                        self.drop_link(&mut state, &reason);
                    }
                }
                () = sleep_until(silent_at), if !state.unresponsive && ladder.killed.is_none() => {
                    self.on_silence(&mut state, &mut ladder, &conductor).await;
                }
                () = sleep_until(state.reconnect_at), if state.link.is_none() && state.connecting.is_none() => {
                    state.reconnect_at = far;
                    let (socket, id) = (conductor.socket.clone(), self.job_id.clone());
                    state.connecting = Some(Box::pin(async move { ConductorLink::connect(&socket, &id).await }));
                }
                connected = next_connection(&mut state.connecting) => {
                    state.connecting = None;
                    match connected {
                        Ok(new_link) => {
                            state.link = Some(new_link);
                            state.last_heard = Instant::now();
                        }
                        Err(err) => {
                            tracing::debug!(job_id = %self.job_id, error = format!("{err:#}"), "cannot reconnect yet");
                            state.reconnect_at = Instant::now() + RECONNECT_EVERY;
                        }
                    }
                }
            }
        }
        let link = state.link;
        self.drain_after_exit(link, state.unapplied, &mut ladder)
            .await;
        // Whatever the conductor left behind (orphaned task processes) goes with it. The job
        // counts as gone only once its cgroup is empty; a cgroup holds everything of a job
        // that ended normally (its conductor already killed its descendants), so the /proc scan
        // is for the other endings, and for session mode.
        let leftovers = match (&conductor.cgroup, ladder.finished) {
            (Some(cgroup), Some(_)) => {
                cgroup.kill_and_remove().await;
                0
            }
            (cgroup, _) => {
                let leftovers = process::kill_job(conductor.id(), &ladder.groups).await;
                if let Some(cgroup) = cgroup {
                    cgroup.kill_and_remove().await;
                }
                leftovers
            }
        };
        if leftovers > 0 {
            tracing::warn!(job_id = %self.job_id, count = leftovers, "killed processes the conductor left behind");
        }
        if let Err(err) = self.store.set_conductor_exited(&self.job_id) {
            tracing::error!(job_id = %self.job_id, error = %err, "cannot record the conductor's exit");
        }
        match ladder.finished {
            Some(state) => Ok(state),
            None => match self.store.job(&self.job_id)?.state {
                // Re-attached only to acknowledge an end the store already held.
                state if !state.is_live() => Ok(state),
                _ => self.record_hard_end(ladder.killed).await,
            },
        }
    }

    /// A frame (or the end of the connection) from the conductor.
    async fn on_frame(
        &self,
        frame: Option<Result<FromConductor, shared::protocol::codec::FrameError>>,
        state: &mut LinkState,
        ladder: &mut Ladder,
        conductor: &Conductor,
    ) {
        let lost = match frame {
            Some(Ok(FromConductor::Report(report))) => {
                self.take_reports(state, Some(report), ladder).await.err()
            }
            Some(Ok(FromConductor::Heartbeat)) => None,
            Some(Ok(other)) => Some(format!("unexpected frame {other:?}")),
            Some(Err(err)) => Some(format!("connection failed: {err}")),
            None => Some("connection closed".to_owned()),
        };
        if let Some(reason) = lost {
            self.drop_link(state, &reason);
            return;
        }
        state.last_heard = Instant::now();
        if state.unresponsive {
            state.unresponsive = false;
            tracing::info!(job_id = %self.job_id, pid = conductor.pid, "conductor responsive again");
            if let Err(err) = self.store.set_unresponsive(&self.job_id, None) {
                tracing::error!(job_id = %self.job_id, error = %err, "cannot record that the conductor answers again");
            }
        }
    }

    /// Drops a broken connection; the loop reconnects for as long as the conductor lives.
    fn drop_link(&self, state: &mut LinkState, reason: &str) {
        tracing::debug!(job_id = %self.job_id, reason, "conductor link lost; reconnecting while it lives");
        state.link = None;
        // The conductor sends them again on the next connection.
        state.unapplied.clear();
        state.store_retry_at = None;
        state.reconnect_at = Instant::now() + RECONNECT_EVERY;
    }

    /// No frame for `heartbeat_timeout`: the conductor is unresponsive (its one thread is stuck).
    async fn on_silence(&self, state: &mut LinkState, ladder: &mut Ladder, conductor: &Conductor) {
        state.unresponsive = true;
        let silent_ms = u64::try_from(self.spec.heartbeat_timeout.as_millis()).unwrap_or(u64::MAX);
        tracing::warn!(job_id = %self.job_id, pid = conductor.pid, silent_ms, kill = self.spec.kill_unresponsive, "conductor unresponsive");
        let since = crate::store::now_ms() - i64::try_from(silent_ms).unwrap_or(0);
        if let Err(err) = self.store.set_unresponsive(&self.job_id, Some(since)) {
            tracing::error!(job_id = %self.job_id, error = %err, "cannot record the unresponsive conductor");
        }
        if self.spec.kill_unresponsive {
            self.hard_kill("conductor unresponsive", conductor, ladder)
                .await;
        }
    }

    async fn obey(
        &self,
        order: Order,
        conductor: &Conductor,
        link: &mut Option<ConductorLink>,
        ladder: &mut Ladder,
    ) {
        match order {
            Order::Cancel { timeout, reason } => {
                let timeout = timeout.unwrap_or(self.spec.cancel_timeout);
                let deadline = Instant::now() + timeout;
                tracing::info!(job_id = %self.job_id, reason, timeout_ms = timeout.as_millis() as u64, "cancelling");
                ladder.cancel_deadline =
                    Some(ladder.cancel_deadline.map_or(deadline, |d| d.min(deadline)));
                if let Err(err) = self.mark_cancelling(&reason) {
                    tracing::error!(job_id = %self.job_id, error = %err, "cannot record the cancel");
                }
                let sent = match link.as_mut() {
                    Some(link) => link
                        .send(&ToConductor::Cancel {
                            reason: reason.clone(),
                        })
                        .await
                        .is_ok(),
                    None => false,
                };
                // The nudge that reaches a conductor whose one thread is busy (a native task
                // computing): it sets the flag that `TaskContext::is_cancelled` reads.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(conductor.pid),
                    nix::sys::signal::Signal::SIGUSR1,
                );
                if !sent {
                    // SIGTERM to the conductor itself means the same as the Cancel message.
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(conductor.pid),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
            }
            Order::Kill { reason } => self.hard_kill(&reason, conductor, ladder).await,
        }
    }

    fn mark_cancelling(&self, reason: &str) -> Result<(), crate::store::StoreError> {
        let state = self.store.job(&self.job_id)?.state;
        if matches!(state, JobState::Running | JobState::Reverting) {
            self.store
                .set_job_state(&self.job_id, JobState::Cancelling, Some(reason))?;
        }
        Ok(())
    }

    async fn hard_kill(&self, reason: &str, conductor: &Conductor, ladder: &mut Ladder) {
        if ladder.killed.is_none() {
            ladder.killed = Some(reason.to_owned());
        }
        if let Some(cgroup) = &conductor.cgroup {
            cgroup.kill();
        }
        let count = process::kill_job(conductor.id(), &ladder.groups).await;
        tracing::info!(job_id = %self.job_id, pid = conductor.pid, count, reason, "job killed");
    }

    /// Applies `first` and whatever else already arrived, then acknowledges.
    /// Applies `first` and whatever else already arrived (and what the store refused before),
    /// then acknowledges. A store that refuses (a full disk) keeps the reports for a retry and
    /// the link as it is: the conductor waits at its next write-ahead point. `Err` is a broken link.
    async fn take_reports(
        &self,
        state: &mut LinkState,
        first: Option<Report>,
        ladder: &mut Ladder,
    ) -> Result<(), String> {
        let Some(link) = state.link.as_mut() else {
            return Ok(());
        };
        state.unapplied.extend(first);
        loop {
            match link.try_next() {
                Some(FromConductor::Report(report)) => state.unapplied.push(report),
                Some(FromConductor::Heartbeat) => {}
                Some(other) => return Err(format!("unexpected frame {other:?}")),
                None => break,
            }
        }
        if state.unapplied.is_empty() || state.store_retry_at.is_some_and(|at| Instant::now() < at)
        {
            return Ok(());
        }
        match self.store.apply_reports(&self.job_id, &state.unapplied) {
            Ok(applied) => {
                if state.store_retry_at.take().is_some() {
                    tracing::info!(job_id = %self.job_id, "the store takes the conductor's reports again");
                }
                for report in &state.unapplied[applied.fresh_from..] {
                    self.observe(&report.event, ladder);
                }
                state.unapplied.clear();
                link.send(&ToConductor::Ack { seq: applied.held })
                    .await
                    .map_err(|err| err.to_string())
            }
            Err(err) => {
                if state.store_retry_at.is_none() {
                    tracing::error!(job_id = %self.job_id, error = %err, "cannot apply the conductor's reports; it waits until they are");
                }
                state.store_retry_at = Some(Instant::now() + STORE_RETRY_EVERY);
                Ok(())
            }
        }
    }

    fn observe(&self, event: &JobEvent, ladder: &mut Ladder) {
        match event {
            JobEvent::TaskSpawned { pid, .. } => {
                if let Ok(pgid) = i32::try_from(*pid) {
                    ladder.groups.insert(pgid);
                }
            }
            JobEvent::Cancelling { .. } if ladder.cancel_deadline.is_none() => {
                // Cancelled by a signal sent to the conductor: the ladder applies all the same.
                ladder.cancel_deadline = Some(Instant::now() + self.spec.cancel_timeout);
            }
            JobEvent::JobFinished { state } => ladder.finished = Some(*state),
            _ => {}
        }
        if let Some(observer) = &self.observer {
            let _ = observer.send(event.clone());
        }
    }

    /// Reads what the dead conductor still had in flight, so the store misses nothing it did.
    async fn drain_after_exit(
        &self,
        link: Option<ConductorLink>,
        unapplied: Vec<Report>,
        ladder: &mut Ladder,
    ) {
        let Some(mut link) = link else { return };
        let deadline = Instant::now() + FINAL_DRAIN;
        let mut batch = unapplied;
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
        match self.store.apply_reports(&self.job_id, &batch) {
            Ok(applied) => {
                for report in &batch[applied.fresh_from..] {
                    self.observe(&report.event, ladder);
                }
            }
            Err(err) => {
                tracing::error!(job_id = %self.job_id, error = %err, "cannot apply the last reports")
            }
        }
    }

    /// The conductor is gone without reporting the end: killed (by us) or crashed.
    async fn record_hard_end(&self, killed: Option<String>) -> anyhow::Result<JobState> {
        let (end, reason) = match killed {
            Some(reason) => (JobState::Killed, reason),
            None => (JobState::Crashed, "the conductor died".to_owned()),
        };
        let pending = record_end_durably(&self.store, &self.job_id, end, &reason).await?;
        let tasks: Vec<&str> = pending.iter().map(|t| t.name.as_str()).collect();
        tracing::warn!(
            job_id = %self.job_id,
            state = end.as_str(),
            tasks = tasks.join(","),
            count = tasks.len(),
            reason,
            "revert skipped"
        );
        if let Some(observer) = &self.observer {
            let _ = observer.send(JobEvent::JobFinished { state: end });
        }
        Ok(end)
    }
}

/// Records a job's hard end (killed or crashed), retrying while the store refuses (a full disk
/// gets freed); gives up loudly after a while. Returns the tasks whose revert is pending.
pub async fn record_end_durably(
    store: &Store,
    id: &JobId,
    end: JobState,
    reason: &str,
) -> Result<Vec<crate::store::TaskRow>, crate::store::StoreError> {
    let mut tries = 0;
    loop {
        match store.record_hard_end(id, end, reason) {
            Ok(pending) => return Ok(pending),
            Err(err)
                if tries < STORE_RETRIES
                    && !matches!(err, crate::store::StoreError::Illegal(_)) =>
            {
                if tries == 0 {
                    tracing::error!(job_id = %id, error = %err, "cannot record the job's end; retrying");
                }
                tries += 1;
                tokio::time::sleep(STORE_RETRY_EVERY).await;
            }
            Err(err) => return Err(err),
        }
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

async fn exited(pidfd: Option<&Pidfd>) {
    if let Some(pidfd) = pidfd {
        pidfd.exited().await;
    }
}

async fn next_frame(
    link: &mut Option<ConductorLink>,
) -> Option<Result<FromConductor, shared::protocol::codec::FrameError>> {
    match link {
        Some(link) => link.next().await,
        None => std::future::pending().await,
    }
}
