//! One job's actor while it holds no conductor: it decides each order against the stored state
//! (compare-and-set), and hands over to [`supervise`](super::supervise) when there is a
//! conductor to watch.

use super::journal;
use super::registry::{Command, Inbox, Jobs};
use super::{Order, OrderError, Purpose};
use crate::process;
use crate::store::{JobRow, Store};
use shared::ids::JobId;
use shared::spec::JobSpec;
use shared::state::JobState;
use std::time::Duration;
use tracing::Instrument;

/// How long an actor with nothing to do waits for another order before it retires.
const IDLE: Duration = Duration::from_secs(2);

/// What the actor does after answering an order.
pub(super) enum Next {
    /// Start a conductor for this purpose and supervise it; the job's spec, read in the store
    /// call that moved its state (`None` if it could not be read there: read again, and a
    /// failure recorded, when the supervision begins).
    Launch(Purpose, Option<Box<JobSpec>>),
    /// Supervise the live conductor already recorded for the job, then apply `order` to it.
    Attach(Box<JobRow>, Option<Order>),
}

pub(super) struct Actor {
    pub jobs: Jobs,
    pub id: JobId,
    generation: u64,
    pub inbox: Inbox,
}

impl Actor {
    pub(super) const fn new(jobs: Jobs, id: JobId, generation: u64, inbox: Inbox) -> Self {
        Self {
            jobs,
            id,
            generation,
            inbox,
        }
    }

    /// Serves orders until the actor has been idle for [`IDLE`] (or the daemon detaches).
    pub(super) async fn run(mut self) {
        let span = tracing::info_span!("job", job_id = %self.id);
        async move {
            let mut detach = self.jobs.detach_signal();
            loop {
                let command = tokio::select! {
                    command = self.inbox.recv() => command,
                    () = tokio::time::sleep(IDLE) => None,
                    () = super::registry::signalled(&mut detach) => None,
                };
                match command {
                    Some(command) => self.serve(command).await,
                    None if self.jobs.retire(&self.id, self.generation, &self.inbox) => break,
                    None => {}
                }
            }
            // Orders that raced with the retirement go to the next actor.
            self.inbox.close();
            while let Ok(command) = self.inbox.try_recv() {
                if let Some(reply) = command.reply {
                    let _ = reply.send(Err(OrderError::Retry));
                }
            }
        }
        .instrument(span)
        .await;
    }

    async fn serve(&mut self, command: Box<Command>) {
        // An order that launches a conductor is counted before it changes anything, or refused
        // when the daemon stops: a `shutdown --cancel` then either cancels it or finds it
        // refused, never one started behind its back (`Jobs::stop`).
        let launches = matches!(
            command.order,
            Order::Start | Order::Revert { .. } | Order::Resume { .. }
        );
        let reserved = if launches {
            let Some(reserved) = Supervising::reserve(&self.jobs, &self.id) else {
                if let Some(reply) = command.reply {
                    let _ = reply.send(Err(OrderError::Unavailable(
                        "the daemon is shutting down".into(),
                    )));
                }
                return;
            };
            Some(reserved)
        } else {
            None
        };
        // Boxed: this future lives as long as the job (ARCHITECTURE.md, Bounds).
        let (answer, next) = match Box::pin(self.decide(command.order)).await {
            Ok(next) => (Ok(()), next),
            Err(err) => (Err(err), None),
        };
        // Counted before the answer, so that the scheduler never overfills; uncounted when the
        // supervision ends, even by a panic (or at once when there is none).
        let counted = next
            .is_some()
            .then(|| reserved.unwrap_or_else(|| Supervising::new(&self.jobs, &self.id)));
        if let Some(reply) = command.reply {
            let _ = reply.send(answer);
        }
        if let Some(next) = next {
            self.supervise(next).await;
        }
        drop(counted);
    }

    /// Carries out `order` on a job that no conductor serves for this actor yet.
    async fn decide(&mut self, order: Order) -> Result<Option<Next>, OrderError> {
        match order {
            Order::Start => {
                // One store call: the owner check, the compare-and-set and the spec.
                let started = self
                    .store(|s, id| {
                        if let Some(owner) = foreign_owner(&s.job(id)?) {
                            return Ok(Err(owner));
                        }
                        s.transition_job(id, &[JobState::Pending], JobState::Running, None)?;
                        Ok(Ok(s.spec(id).ok().map(Box::new)))
                    })
                    .await?;
                let Ok(spec) = started else {
                    return Err(OrderError::WrongState(format!(
                        "job {} belongs to a `supervisor run`",
                        self.id
                    )));
                };
                self.jobs.publish_state(&self.id, JobState::Running);
                Ok(Some(Next::Launch(Purpose::Execute, spec)))
            }
            Order::Revert { reason, by } => {
                let who = by.clone();
                let spec = self
                    .store(move |s, id| {
                        s.begin_revert_by(id, &reason, who.as_ref())?;
                        Ok(s.spec(id).ok().map(Box::new))
                    })
                    .await?;
                self.jobs
                    .publish_by(&self.id, JobState::Reverting.as_str(), by);
                Ok(Some(Next::Launch(Purpose::Revert, spec)))
            }
            Order::Resume {
                reason,
                by,
                revert_interrupted,
            } => {
                let who = by.clone();
                let spec = self
                    .store(move |s, id| {
                        s.begin_resume_by(id, &reason, who.as_ref())?;
                        Ok(s.spec(id).ok().map(Box::new))
                    })
                    .await?;
                self.jobs
                    .publish_by(&self.id, JobState::Running.as_str(), by);
                let purpose = if revert_interrupted {
                    Purpose::Resume
                } else {
                    Purpose::Execute
                };
                Ok(Some(Next::Launch(purpose, spec)))
            }
            Order::Cancel { .. } | Order::Kill { .. } => self.stop(order).await,
            Order::Pause { .. } | Order::Continue { .. } => self.pause_unattached(order).await,
            Order::Adopt => {
                let row = self.store(|s, id| s.job(id)).await?;
                self.adopt(row, None).await
            }
        }
    }

    /// A cancel or kill of a job without a conductor here: a queued job ends at once; a live one
    /// is taken up first.
    async fn stop(&mut self, order: Order) -> Result<Option<Next>, OrderError> {
        let row = self.store(|s, id| s.job(id)).await?;
        if let Some(owner) = foreign_owner(&row) {
            return leave_to_owner(&self.id, owner, Some(&order));
        }
        match row.state {
            JobState::Pending => {
                let (end, by) = match order {
                    Order::Kill { by, .. } => (JobState::Killed, by),
                    Order::Cancel { by, .. } => (JobState::Cancelled, by),
                    _ => (JobState::Cancelled, None),
                };
                let cause = if by.is_some() {
                    "operator"
                } else {
                    "supervisor"
                };
                if end == JobState::Killed {
                    crate::metrics::METRICS.killed(cause);
                } else {
                    crate::metrics::METRICS.cancelled(cause);
                }
                let who = by.clone();
                self.store(move |s, id| {
                    s.transition_job_by(
                        id,
                        &[JobState::Pending],
                        end,
                        Some("stopped before it started"),
                        who.as_ref(),
                    )
                })
                .await?;
                if self.jobs.board().is_some() {
                    // Boxed: the board's query is no part of every job actor's future.
                    Box::pin(journal::write_stopped(&self.jobs, &self.id)).await;
                }
                self.jobs.job_ended(&self.id, end, false, None);
                self.jobs.publish_by(&self.id, end.as_str(), by);
                Ok(None)
            }
            state if state.is_live() => self.adopt(row, Some(order)).await,
            state => Err(OrderError::WrongState(format!(
                "job {} is {state}: nothing to stop",
                self.id
            ))),
        }
    }

    /// A pause or continue of a job without a conductor here: a live one is taken up first;
    /// any other has nothing to freeze.
    async fn pause_unattached(&mut self, order: Order) -> Result<Option<Next>, OrderError> {
        let row = self.store(|s, id| s.job(id)).await?;
        match row.state {
            JobState::Running | JobState::Reverting | JobState::Cancelling => {
                self.adopt(row, Some(order)).await
            }
            state => Err(OrderError::WrongState(format!(
                "job {} is {state}: it has no process to pause or continue",
                self.id
            ))),
        }
    }

    /// Takes up a job whose conductor may live while nobody here supervises it: re-attaches,
    /// or records the crash of a conductor that is gone, or leaves the job to the live
    /// `supervisor run` that owns it.
    async fn adopt(
        &mut self,
        row: JobRow,
        order: Option<Order>,
    ) -> Result<Option<Next>, OrderError> {
        if let Some(owner) = foreign_owner(&row) {
            return leave_to_owner(&self.id, owner, order.as_ref());
        }
        let alive = matches!((row.conductor_pid, row.conductor_start), (Some(pid), Some(start)) if process::is_same_process(pid, start));
        if alive {
            tracing::info!(pid = row.conductor_pid, "re-attaching to the conductor");
            self.store(|s, id| s.claim(id, process::own_supervisor_id()))
                .await?;
            return Ok(Some(Next::Attach(Box::new(row), order)));
        }
        if row.state.is_live() {
            super::end::record_crash(&self.jobs, &row).await;
            if order.is_some() {
                return Err(OrderError::WrongState(format!(
                    "job {} was found dead and is now crashed",
                    self.id
                )));
            }
        } else {
            self.store(|s, id| s.set_conductor_exited(id)).await?;
            if order.is_some() {
                return Err(OrderError::WrongState(format!(
                    "job {} is {}: nothing to stop",
                    self.id, row.state
                )));
            }
        }
        Ok(None)
    }

    /// Runs `f` on the store's thread with this job's id.
    pub(super) async fn store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store, &JobId) -> crate::store::Result<T> + Send + 'static,
    ) -> crate::store::Result<T> {
        let id = self.id.clone();
        self.jobs.store().call(move |s| f(s, &id)).await
    }
}

/// The live process, other than this one, that supervises the job (a `supervisor run`).
fn foreign_owner(row: &JobRow) -> Option<i32> {
    let (pid, start) = row.supervisor?;
    let me = i32::try_from(std::process::id()).ok()?;
    (pid != me && process::is_same_process(pid, start)).then_some(pid)
}

/// A job supervised by a live `supervisor run`: a cancel is passed on as SIGTERM (which that
/// process turns into a soft cancel); anything else is refused with what to do instead.
fn leave_to_owner(
    id: &JobId,
    owner: i32,
    order: Option<&Order>,
) -> Result<Option<Next>, OrderError> {
    match order {
        None => {
            tracing::info!(
                supervisor_pid = owner,
                "left to its own supervisor (a `supervisor run`)"
            );
            Ok(None)
        }
        Some(Order::Cancel { .. }) => {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(owner),
                nix::sys::signal::Signal::SIGTERM,
            )
            .map_err(|err| OrderError::Internal(format!("cannot signal pid {owner}: {err}")))?;
            Ok(None)
        }
        Some(_) => Err(OrderError::WrongState(format!(
            "job {id} is supervised by `supervisor run` (pid {owner}): stop it there (Ctrl-C cancels, a second Ctrl-C kills)"
        ))),
    }
}

/// A job counted among the supervised ones for as long as this lives.
struct Supervising {
    jobs: Jobs,
    id: JobId,
}

impl Supervising {
    fn new(jobs: &Jobs, id: &JobId) -> Self {
        jobs.supervision_began(id);
        Self {
            jobs: jobs.clone(),
            id: id.clone(),
        }
    }

    /// Counted unless the daemon stops (`None`), in one step with that check.
    fn reserve(jobs: &Jobs, id: &JobId) -> Option<Self> {
        jobs.supervision_may_begin(id).then(|| Self {
            jobs: jobs.clone(),
            id: id.clone(),
        })
    }
}

impl Drop for Supervising {
    fn drop(&mut self) {
        self.jobs.supervision_ended(&self.id);
    }
}
