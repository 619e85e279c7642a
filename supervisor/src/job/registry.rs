//! The registry of job actors: at most one per job, found or started under one lock.

use super::actor::Actor;
use super::launch::Launcher;
use super::{Order, OrderError};
use crate::board::lease::LeaseClock;
use crate::clock::now_ms;
use crate::store::StoreHandle;
use shared::ids::JobId;
use shared::protocol::client::{Event, Requester};
use shared::protocol::conductor::JobEvent;
use shared::state::JobState;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::{Notify, Semaphore, SemaphorePermit, broadcast, mpsc, oneshot, watch};
use tokio::task::JoinSet;

/// How many times [`Jobs::ask`] sends an order again to a retiring actor before giving up (each
/// retry finds or starts a fresh actor, so more than one is already rare).
const MAX_RETRIES: usize = 100;

/// An order on its way to an actor, with the channel for its answer.
pub(super) struct Command {
    pub order: Order,
    pub reply: Option<oneshot::Sender<Result<(), OrderError>>>,
}

/// An actor's inbox. Commands travel boxed: a channel allocates its slots in blocks of 32 up
/// front, and every live job has an inbox, so a slot the size of a pointer instead of a
/// [`Command`] keeps an idle inbox at 256 bytes instead of 4 KiB (ARCHITECTURE.md, Bounds).
pub(super) type Inbox = mpsc::Receiver<Box<Command>>;
type Outbox = mpsc::Sender<Box<Command>>;

/// What the registry is built from.
pub struct JobsConfig {
    pub store: StoreHandle,
    pub launcher: Launcher,
    /// Every report of every job, for a foreground printer (`supervisor run`).
    pub observer: Option<mpsc::UnboundedSender<JobEvent>>,
    /// The daemon's own alert hooks, run for every job's end.
    pub hooks: super::DaemonHooks,
    /// On a job board: the daemon's lease, delegated to every conductor
    /// (`ToConductor::Fence`, at each connection and each renewal); `None` without a board.
    pub lease: Option<watch::Receiver<LeaseClock>>,
    /// The job board this daemon is on (`--board`): each job's write-ahead goes to its journal
    /// before the conductor's acknowledgement.
    pub board: Option<crate::board::Board>,
    /// How many state events a subscriber ([`Jobs::subscribe`]) may fall behind by before it
    /// misses the oldest (it is told so). Their room is allocated up front, about 170 bytes
    /// each: the daemon's `events` and `--wait` clients need it for bursts of many jobs,
    /// `supervisor run` follows one job and keeps a few.
    pub events_kept: usize,
}

/// The registry; cheap to clone, shared by the accept loop, the scheduler and every handler.
#[derive(Clone)]
pub struct Jobs {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub store: StoreHandle,
    pub launcher: Launcher,
    pub observer: Option<mpsc::UnboundedSender<JobEvent>>,
    pub hooks: super::DaemonHooks,
    pub lease: Option<watch::Receiver<LeaseClock>>,
    pub board: Option<crate::board::Board>,
    /// Each job's actor, with the generation that tells a retiring actor from its successor.
    actors: Mutex<HashMap<JobId, (u64, Outbox)>>,
    generation: AtomicU64,
    tasks: Mutex<JoinSet<()>>,
    /// Jobs whose actor holds a conductor (or is launching one): the scheduler's measure of
    /// load, and what `shutdown --cancel` cancels.
    supervising: Mutex<HashSet<JobId>>,
    /// Notified each time a supervision ends.
    ended: Notify,
    /// Wakes the scheduler: a job was queued or a slot freed.
    wake: Notify,
    /// Jobs queued since the scheduler last looked, in submission order ([`Jobs::queued`]):
    /// its next pass starts them without reading the queue from the store, unless `reread`.
    added: Mutex<Vec<JobId>>,
    /// The scheduler's next pass reads the queue from the store ([`Jobs::wake`]).
    reread: AtomicBool,
    events: broadcast::Sender<Event>,
    stopping: AtomicBool,
    /// Set when the daemon stops without `--cancel`: supervisions end, conductors keep running.
    detach: watch::Sender<bool>,
    /// Set when the daemon stops with `--cancel`: every supervision, and any that begins
    /// later, cancels its job once.
    cancel_all: watch::Sender<bool>,
    /// Set by a client's `shutdown`: `Some(cancel)`.
    shutdown: watch::Sender<Option<bool>>,
    /// Launches in flight, from the socket's bind to the conductor's hello: each holds a few
    /// descriptors (the socket, `/dev/null`, its log) and a blocking thread for its spawn, so a
    /// burst of thousands of starts waits here rather than run out of descriptors.
    launches: Semaphore,
}

/// At most this many conductors are being launched at once (ARCHITECTURE.md, Bounds).
const LAUNCHES_IN_FLIGHT: usize = 16;

impl Jobs {
    #[must_use]
    pub fn new(config: JobsConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                store: config.store,
                launcher: config.launcher,
                observer: config.observer,
                hooks: config.hooks,
                lease: config.lease,
                board: config.board,
                actors: Mutex::new(HashMap::new()),
                generation: AtomicU64::new(0),
                tasks: Mutex::new(JoinSet::new()),
                supervising: Mutex::new(HashSet::new()),
                ended: Notify::new(),
                wake: Notify::new(),
                added: Mutex::new(Vec::new()),
                reread: AtomicBool::new(false),
                events: broadcast::channel(config.events_kept).0,
                stopping: AtomicBool::new(false),
                detach: watch::channel(false).0,
                cancel_all: watch::channel(false).0,
                shutdown: watch::channel(None).0,
                launches: Semaphore::new(LAUNCHES_IN_FLIGHT),
            }),
        }
    }

    #[must_use]
    pub fn store(&self) -> &StoreHandle {
        &self.inner.store
    }

    /// The job board this daemon is on, if any.
    #[must_use]
    pub fn board(&self) -> Option<&crate::board::Board> {
        self.inner.board.as_ref()
    }

    /// Waits for a launch slot; the launch holds it until its conductor has answered.
    pub(super) async fn launch_slot(&self) -> Option<SemaphorePermit<'_>> {
        // The semaphore is never closed: an error cannot happen, and would only mean no bound.
        self.inner.launches.acquire().await.ok()
    }

    /// How this process contains its jobs.
    #[must_use]
    pub fn containment(&self) -> &crate::containment::Containment {
        &self.inner.launcher.containment
    }

    /// The state dir (for the files of a job: its socket and its conductor's log).
    #[must_use]
    pub fn state_dir(&self) -> &crate::state_dir::StateDir {
        &self.inner.launcher.state_dir
    }

    /// Asks the job's actor (started if there is none) to carry out `order`, and awaits its
    /// answer.
    pub async fn ask(&self, id: &JobId, order: Order) -> Result<(), OrderError> {
        for _ in 0..MAX_RETRIES {
            let sender = self.find_or_start(id);
            let (reply, answer) = oneshot::channel();
            let command = Box::new(Command {
                order: order.clone(),
                reply: Some(reply),
            });
            if sender.send(command).await.is_err() {
                continue;
            }
            match answer.await {
                Ok(Err(OrderError::Retry)) | Err(_) => {}
                Ok(result) => return result,
            }
        }
        Err(OrderError::Internal(format!(
            "job {id}: its actor kept retiring"
        )))
    }

    /// The sender of the job's actor, started if there is none.
    fn find_or_start(&self, id: &JobId) -> Outbox {
        let mut actors = self.actors();
        if let Some((_, sender)) = actors.get(id).filter(|(_, s)| !s.is_closed()) {
            return sender.clone();
        }
        let (sender, inbox) = mpsc::channel(16);
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed);
        actors.insert(id.clone(), (generation, sender.clone()));
        let actor = Actor::new(self.clone(), id.clone(), generation, inbox);
        let mut tasks = self.tasks();
        tasks.spawn(actor.run());
        // Forget the actors that already ended, so the set does not grow without bound.
        while tasks.try_join_next().is_some() {}
        sender
    }

    /// Called by an idle actor: removes it from the registry unless an order is waiting for it.
    /// True when it is gone from the registry (it must then close and drain its inbox).
    pub(super) fn retire(&self, id: &JobId, generation: u64, inbox: &Inbox) -> bool {
        let mut actors = self.actors();
        if !inbox.is_empty() {
            return false;
        }
        if actors.get(id).is_some_and(|(g, _)| *g == generation) {
            actors.remove(id);
        }
        true
    }

    fn actors(&self) -> MutexGuard<'_, HashMap<JobId, (u64, Outbox)>> {
        self.inner
            .actors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn tasks(&self) -> MutexGuard<'_, JoinSet<()>> {
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// How many jobs hold (or are starting) a conductor.
    #[must_use]
    pub fn supervising(&self) -> usize {
        self.supervised().len()
    }

    /// The jobs that hold (or are starting) a conductor now.
    #[must_use]
    pub fn supervised_jobs(&self) -> Vec<JobId> {
        self.supervised().iter().cloned().collect()
    }

    /// The daemon's lease on its board, for a supervision to delegate to its conductor;
    /// `None` without a board.
    pub(super) fn lease(&self) -> Option<watch::Receiver<LeaseClock>> {
        self.inner.lease.clone()
    }

    fn supervised(&self) -> MutexGuard<'_, HashSet<JobId>> {
        self.inner
            .supervising
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn supervision_began(&self, id: &JobId) {
        self.supervised().insert(id.clone());
    }

    /// Counts job `id` as supervised unless the daemon stops: false then. The check and the
    /// count are one step under the lock [`Jobs::begin_stopping`] takes.
    pub(super) fn supervision_may_begin(&self, id: &JobId) -> bool {
        let mut supervised = self.supervised();
        if self.is_stopping() {
            return false;
        }
        supervised.insert(id.clone());
        true
    }

    pub(super) fn supervision_ended(&self, id: &JobId) {
        self.supervised().remove(id);
        self.inner.ended.notify_waiters();
        // A slot freed: the scheduler reads the queue only if its last pass left some behind.
        self.inner.wake.notify_one();
        if let Some(pool) = &self.inner.launcher.warm {
            pool.job_ended();
        }
    }

    /// Publishes a state change to `events` subscribers.
    pub fn publish(&self, job: &JobId, task: Option<String>, state: &str) {
        let _ = self.inner.events.send(Event {
            job: job.clone(),
            task,
            state: state.to_owned(),
            at_ms: now_ms(),
            by: None,
        });
    }

    pub(super) fn publish_state(&self, job: &JobId, state: JobState) {
        self.publish(job, None, state.as_str());
    }

    /// Publishes a job's state change caused by an operator's order (`by`), or a flag change
    /// such as `paused` (`state` is then the flag's name).
    pub(super) fn publish_by(&self, job: &JobId, state: &str, by: Option<Requester>) {
        let _ = self.inner.events.send(Event {
            job: job.clone(),
            task: None,
            state: state.to_owned(),
            at_ms: now_ms(),
            by,
        });
    }

    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Wakes the scheduler to read the queue from the store: jobs were queued (claimed,
    /// imported) or may start again (the lease regained).
    pub fn wake(&self) {
        self.inner.reread.store(true, Ordering::SeqCst);
        self.inner.wake.notify_one();
    }

    /// Job `id`, just stored `pending` here, is queued: the scheduler starts it at its next
    /// pass, after any job queued before it, without reading the queue from the store.
    pub fn queued(&self, id: JobId) {
        self.inner
            .added
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(id);
        self.inner.wake.notify_one();
    }

    /// What the scheduler has to look at since its last pass: the jobs queued through
    /// [`Jobs::queued`], in order, and whether it must read the queue from the store.
    pub fn take_queued(&self) -> (Vec<JobId>, bool) {
        let added = std::mem::take(
            &mut *self
                .inner
                .added
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        (added, self.inner.reread.swap(false, Ordering::SeqCst))
    }

    /// Resolves when the scheduler should look at the queue again.
    pub async fn woken(&self) {
        self.inner.wake.notified().await;
    }

    #[must_use]
    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::SeqCst)
    }

    /// Takes no new work from now on (no start, revert, resume or claim), ahead of
    /// [`Jobs::stop`]: a daemon leaving the board first must claim nothing as it leaves.
    /// Set under the lock of the supervised jobs: a launch counted after it is refused
    /// (`Jobs::supervision_may_begin`), one counted before is among those `stop` cancels.
    pub fn begin_stopping(&self) {
        let _supervised = self.supervised();
        self.inner.stopping.store(true, Ordering::SeqCst);
    }

    pub(super) fn detach_signal(&self) -> watch::Receiver<bool> {
        self.inner.detach.subscribe()
    }

    pub(super) fn cancel_all_signal(&self) -> watch::Receiver<bool> {
        self.inner.cancel_all.subscribe()
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

    /// Stops supervising. With `cancel`, every supervised job is soft-cancelled first and
    /// awaited (each within its own ladder; queued jobs stay queued for the next daemon);
    /// without, the conductors keep running for the next daemon. Then every actor ends at its
    /// next await point outside a kill. A start racing the stop is either counted before it
    /// (awaited here, and cancelled by the signal once it has its conductor, as a supervision
    /// that begins after the signal sees it set) or refused (`Jobs::supervision_may_begin`).
    pub async fn stop(&self, cancel: bool) {
        self.begin_stopping();
        if cancel {
            self.inner.cancel_all.send_replace(true);
            loop {
                let ended = self.inner.ended.notified();
                if self.supervising() == 0 {
                    break;
                }
                ended.await;
            }
        }
        self.inner.detach.send_replace(true);
        let mut tasks = std::mem::take(&mut *self.tasks());
        while tasks.join_next().await.is_some() {}
    }

    /// Sends a report to the foreground printer, if any.
    pub(super) fn observe(&self, event: &JobEvent) {
        if let Some(observer) = &self.inner.observer {
            let _ = observer.send(event.clone());
        }
    }
}

/// Resolves once `signal` is set: the daemon detaches from its conductors (it stops without
/// `--cancel`), or cancels every job (`--cancel`). Never when its sender is gone.
pub(super) async fn signalled(signal: &mut watch::Receiver<bool>) {
    if signal.wait_for(|set| *set).await.is_err() {
        std::future::pending::<()>().await;
    }
}
