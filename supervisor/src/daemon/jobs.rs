//! The daemon's jobs: one supervision task per live job, the queue of pending ones, and the
//! events every state change produces.

use crate::containment::{Containment, JobCgroup};
use crate::launch::{Launcher, Purpose, record_launch_failure};
use crate::process::{self, WorkerCommand};
use crate::session::ConductorLink;
use crate::state_dir::StateDir;
use crate::store::{JobRow, Store, now_ms};
use crate::supervise::{Conductor, Order, Supervision};
use shared::ids::JobId;
use shared::protocol::client::Event;
use shared::protocol::conductor::{JobEvent, Phase, StepOutcome};
use shared::state::JobState;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio::task::JoinSet;

/// How a supervision task gets its conductor.
enum Attach {
    Launch(Purpose),
    Reattach(Box<JobRow>),
}

/// Shared by the accept loop, the scheduler and every client connection.
#[derive(Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<Store>,
    launcher: Launcher,
    max_jobs: usize,
    live: Mutex<HashMap<JobId, mpsc::Sender<Order>>>,
    tasks: Mutex<JoinSet<()>>,
    wake: Notify,
    events: broadcast::Sender<Event>,
    stopping: AtomicBool,
    /// Set by a client's `shutdown`: `Some(cancel)`.
    shutdown: watch::Sender<Option<bool>>,
}

impl Jobs {
    pub fn new(
        store: Arc<Store>,
        state_dir: StateDir,
        worker: WorkerCommand,
        containment: Containment,
        max_jobs: usize,
    ) -> Self {
        let launcher = Launcher {
            store: store.clone(),
            state_dir,
            worker,
            containment,
        };
        Self {
            inner: Arc::new(Inner {
                store,
                launcher,
                max_jobs: max_jobs.max(1),
                live: Mutex::new(HashMap::new()),
                tasks: Mutex::new(JoinSet::new()),
                wake: Notify::new(),
                events: broadcast::channel(4096).0,
                stopping: AtomicBool::new(false),
                shutdown: watch::channel(None).0,
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// How this daemon contains its jobs.
    pub fn containment(&self) -> &Containment {
        &self.inner.launcher.containment
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::SeqCst)
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, mpsc::Sender<Order>>> {
        self.inner
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The order channel of a supervised job.
    pub fn sender(&self, id: &JobId) -> Option<mpsc::Sender<Order>> {
        self.live().get(id).cloned()
    }

    /// Publishes a state change.
    pub fn publish(&self, job: &JobId, task: Option<String>, state: &str) {
        let _ = self.inner.events.send(Event {
            job: job.clone(),
            task,
            state: state.to_owned(),
            at_ms: now_ms(),
        });
    }

    /// Wakes the scheduler (a job was queued or a slot freed).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Resolves when a client asked for a shutdown; the value is `--cancel`.
    pub async fn shutdown_requested(&self) -> bool {
        let mut rx = self.inner.shutdown.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(value) => value.unwrap_or(false),
            Err(_) => std::future::pending().await,
        }
    }

    pub fn request_shutdown(&self, cancel: bool) {
        self.inner.shutdown.send_replace(Some(cancel));
    }

    /// Re-attaches to every live job's conductor, or marks the job crashed when it is gone.
    pub async fn reattach_all(&self) {
        let rows = match self.inner.store.attached_jobs() {
            Ok(rows) => rows,
            Err(err) => {
                tracing::error!(error = %err, "cannot read the live jobs");
                return;
            }
        };
        let me = std::process::id();
        for row in rows {
            if let Some((pid, start)) = row.supervisor {
                if u32::try_from(pid).ok() != Some(me) && process::is_same_process(pid, start) {
                    tracing::info!(job_id = %row.id, supervisor_pid = pid, "left to its own supervisor (a `supervisor run`)");
                    continue;
                }
            }
            let alive = matches!((row.conductor_pid, row.conductor_start), (Some(pid), Some(start)) if process::is_same_process(pid, start));
            if alive {
                tracing::info!(job_id = %row.id, pid = row.conductor_pid, "re-attaching to the conductor");
                if let Err(err) = self.inner.store.claim(&row.id) {
                    tracing::error!(job_id = %row.id, error = %err, "cannot record the re-attachment");
                }
                self.spawn_supervision(row.id.clone(), Attach::Reattach(Box::new(row)));
            } else if row.state.is_live() {
                // In the background: a store that refuses writes must not keep the daemon down.
                let jobs = self.clone();
                tokio::spawn(async move { jobs.record_crash(&row).await });
            } else if let Err(err) = self.inner.store.set_conductor_exited(&row.id) {
                tracing::error!(job_id = %row.id, error = %err, "cannot record the conductor's exit");
            }
        }
    }

    /// Takes up a live job that no supervision task watches: re-attaches to its conductor (and
    /// returns its order channel) or, when the conductor is gone, records the crash.
    pub async fn adopt(&self, row: JobRow) -> Option<mpsc::Sender<Order>> {
        let alive = matches!((row.conductor_pid, row.conductor_start), (Some(pid), Some(start)) if process::is_same_process(pid, start));
        if alive {
            tracing::warn!(job_id = %row.id, "taking up a job nobody supervised");
            let id = row.id.clone();
            self.spawn_supervision(id.clone(), Attach::Reattach(Box::new(row)));
            self.sender(&id)
        } else {
            self.record_crash(&row).await;
            None
        }
    }

    async fn record_crash(&self, row: &JobRow) {
        if let (Some(pid), Some(start_time)) = (row.conductor_pid, row.conductor_start) {
            // Its tasks may have outlived it: nothing of the job may survive.
            let id = process::ConductorId { pid, start_time };
            process::kill_job(id, &process::TaskGroups::new(id)).await;
        }
        if let Some(path) = &row.cgroup {
            JobCgroup { path: path.clone() }.kill_and_remove().await;
        }
        let reason = "the conductor died while no daemon watched";
        match crate::supervise::record_end_durably(
            &self.inner.store,
            &row.id,
            JobState::Crashed,
            reason,
        )
        .await
        {
            Ok(pending) => {
                if let Err(err) = self.inner.store.set_conductor_exited(&row.id) {
                    tracing::error!(job_id = %row.id, error = %err, "cannot record the conductor's exit");
                }
                let tasks: Vec<&str> = pending.iter().map(|t| t.name.as_str()).collect();
                tracing::warn!(job_id = %row.id, state = "crashed", tasks = tasks.join(","), count = tasks.len(), "revert skipped");
                self.publish(&row.id, None, JobState::Crashed.as_str());
            }
            Err(err) => tracing::error!(job_id = %row.id, error = %err, "cannot record the crash"),
        }
    }

    /// Starts queued jobs while there is room, for the daemon's life.
    pub fn start_scheduler(&self) {
        let jobs = self.clone();
        tokio::spawn(async move {
            loop {
                jobs.start_queued();
                jobs.inner.wake.notified().await;
            }
        });
    }

    fn start_queued(&self) {
        if self.is_stopping() {
            return;
        }
        let room = self.inner.max_jobs.saturating_sub(self.live().len());
        if room == 0 {
            return;
        }
        let queued = match self.inner.store.queued_jobs() {
            Ok(queued) => queued,
            Err(err) => {
                tracing::error!(error = %err, "cannot read the queue");
                return;
            }
        };
        for id in queued
            .into_iter()
            .filter(|id| !self.live().contains_key(id))
            .take(room)
        {
            if let Err(err) = self.inner.store.set_job_state(&id, JobState::Running, None) {
                tracing::error!(job_id = %id, error = %err, "cannot start the job");
                continue;
            }
            self.publish(&id, None, JobState::Running.as_str());
            self.spawn_supervision(id, Attach::Launch(Purpose::Execute));
        }
    }

    /// Starts a conductor now for a job the caller already moved to `running` or `reverting`.
    pub fn launch_now(&self, id: JobId, purpose: Purpose) {
        self.spawn_supervision(id, Attach::Launch(purpose));
    }

    fn spawn_supervision(&self, id: JobId, attach: Attach) {
        let (orders_tx, orders) = mpsc::channel(8);
        self.live().insert(id.clone(), orders_tx);
        let jobs = self.clone();
        let mut tasks = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        tasks.spawn(async move {
            let state = jobs.supervise(&id, attach, orders).await;
            jobs.live().remove(&id);
            match state {
                Ok(state) => {
                    tracing::info!(job_id = %id, state = state.as_str(), "job ended");
                    jobs.publish(&id, None, state.as_str());
                }
                Err(err) => {
                    tracing::error!(job_id = %id, error = format!("{err:#}"), "supervision failed")
                }
            }
            jobs.wake();
        });
        // Forget the tasks that already ended, so the set does not grow without bound.
        while tasks.try_join_next().is_some() {}
    }

    async fn supervise(
        &self,
        id: &JobId,
        attach: Attach,
        orders: mpsc::Receiver<Order>,
    ) -> anyhow::Result<JobState> {
        let store = self.inner.store.clone();
        let spec = store.spec(id)?;
        let (observer, events) = mpsc::unbounded_channel();
        tokio::spawn(forward_events(
            self.clone(),
            id.clone(),
            spec.tasks.iter().map(|t| t.name.clone()).collect(),
            events,
        ));
        let supervision = Supervision {
            store: store.clone(),
            job_id: id.clone(),
            spec,
            started: tokio::time::Instant::now(),
            observer: Some(observer),
        };
        match attach {
            Attach::Launch(purpose) => match self.inner.launcher.launch(id, &purpose).await {
                Ok((conductor, link, plan)) => {
                    supervision
                        .run(conductor, Some(link), Some(plan), orders)
                        .await
                }
                Err(err) => {
                    record_launch_failure(&store, id, &err).await;
                    Ok(JobState::Crashed)
                }
            },
            Attach::Reattach(row) => {
                let socket = self.inner.launcher.state_dir.socket(id);
                let pid = row.conductor_pid.unwrap_or(0);
                let link = match ConductorLink::connect(&socket, id).await {
                    Ok(link) => Some(link),
                    Err(err) => {
                        tracing::warn!(job_id = %id, error = format!("{err:#}"), "cannot reach the conductor yet");
                        None
                    }
                };
                // A conductor spawned just before the last daemon died may still wait for its plan.
                let plan = match &link {
                    Some(link) if !link.hello.has_plan => {
                        let purpose = if row.state == JobState::Reverting {
                            Purpose::Revert
                        } else {
                            Purpose::Execute
                        };
                        Some(self.inner.launcher.plan(id, &purpose)?)
                    }
                    _ => None,
                };
                supervision
                    .run(
                        Conductor {
                            pid,
                            start_time: row.conductor_start.unwrap_or(0),
                            socket,
                            cgroup: row.cgroup.map(|path| JobCgroup { path }),
                        },
                        link,
                        plan,
                        orders,
                    )
                    .await
            }
        }
    }

    /// Stops supervising. With `cancel`, every live job is soft-cancelled first and awaited
    /// (each within its own ladder); without, the conductors keep running for the next daemon.
    pub async fn stop(&self, cancel: bool) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        let mut tasks = std::mem::take(
            &mut *self
                .inner
                .tasks
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        if cancel {
            let senders: Vec<_> = self.live().values().cloned().collect();
            for sender in senders {
                let _ = sender
                    .send(Order::Cancel {
                        timeout: None,
                        reason: "daemon shutdown --cancel".into(),
                    })
                    .await;
            }
            while tasks.join_next().await.is_some() {}
        } else {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
    }
}

/// Turns a job's reports into `events` for subscribers.
async fn forward_events(
    jobs: Jobs,
    id: JobId,
    names: Vec<String>,
    mut events: mpsc::UnboundedReceiver<JobEvent>,
) {
    let name = |task: u32| names.get(task as usize).cloned();
    while let Some(event) = events.recv().await {
        match event {
            JobEvent::TaskStarting {
                task,
                phase: Phase::Execute,
                ..
            } => jobs.publish(&id, name(task), "running"),
            JobEvent::TaskStarting {
                task,
                phase: Phase::Revert,
                ..
            } => jobs.publish(&id, name(task), "reverting"),
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
                jobs.publish(&id, name(task), state);
            }
            JobEvent::Cancelling { .. } => jobs.publish(&id, None, "cancelling"),
            JobEvent::TaskSpawned { .. }
            | JobEvent::Output { .. }
            | JobEvent::JobFinished { .. } => {}
        }
    }
}
