//! Pause and continue of a supervised job (ARCHITECTURE.md, The cancellation ladder).
//!
//! A pause freezes every process of the job: cgroup mode writes `cgroup.freeze` and waits for
//! `frozen 1`; session mode SIGSTOPs the conductor and every process of the job. While paused,
//! the actor's deadlines stand still: the kill timer, the job timeout and the heartbeat watch
//! (a frozen conductor cannot beat, and is never marked unresponsive for it); `continue` moves
//! them forward by the time paused. The conductor's own clocks (a task's `timeout`, the term
//! grace) are the conductor's: they cannot stop, and a task timeout that fell due during the
//! pause fires on continue.
//!
//! A cancel of a paused job thaws it first, then runs the ladder; a kill needs no thaw (SIGKILL
//! reaches stopped and frozen processes alike).
//!
//! On a job board, the conductor's fence (the daemon's lease, delegated) is lifted to the
//! longest one before the freeze, and a fresh one is sent before the thaw: a frozen conductor
//! runs nothing, and its monotonic clock, which a freeze does not stop, would otherwise find
//! its fence passed the instant it thaws.

use super::Supervision;
use crate::containment::FREEZE_TIMEOUT;
use crate::job::{OrderError, Requester};
use crate::process;
use shared::state::JobState;
use tokio::time::Instant;

impl Supervision {
    /// `supervisor pause`: refused while the job is being killed or cancelled, or paused already.
    pub(super) async fn pause(&mut self, by: Option<Requester>) -> Result<(), OrderError> {
        if self.ladder.is_over() {
            return Err(OrderError::WrongState(format!(
                "job {} is being killed",
                self.id
            )));
        }
        if self.paused.is_some() {
            return Err(OrderError::WrongState(format!(
                "job {} is paused already",
                self.id
            )));
        }
        let id = self.id.clone();
        let state = self.jobs.store().call(move |s| s.job(&id)).await?.state;
        if !matches!(state, JobState::Running | JobState::Reverting) {
            return Err(OrderError::WrongState(format!(
                "job {} is {state}: only a running or reverting job can be paused (the ladder of a cancel runs to its end; kill stops it now)",
                self.id
            )));
        }
        // On a job board, the conductor's fence is lifted before it freezes: frozen, it runs
        // nothing, and its clocks would find the fence passed the instant it thaws.
        self.paused = Some(Instant::now());
        self.send_fence().await;
        if let Err(err) = self.freeze(true).await {
            self.paused = None;
            self.send_fence().await;
            return Err(OrderError::Internal(err));
        }
        self.paused = Some(Instant::now());
        let (id, since, who) = (self.id.clone(), crate::clock::now_ms(), by.clone());
        self.jobs
            .store()
            .call(move |s| s.set_paused(&id, Some(since), who.as_ref()))
            .await?;
        tracing::info!(pid = self.conductor.id.pid, "job paused");
        self.jobs.publish_by(&self.id, "paused", by);
        Ok(())
    }

    /// `supervisor continue`: refused when the job is not paused.
    pub(super) async fn resume_from_pause(
        &mut self,
        by: Option<Requester>,
    ) -> Result<(), OrderError> {
        if self.paused.is_none() {
            return Err(OrderError::WrongState(format!(
                "job {} is not paused",
                self.id
            )));
        }
        self.thaw(by).await
    }

    /// Thaws the job and moves its deadlines forward by the time it was paused.
    pub(super) async fn thaw(&mut self, by: Option<Requester>) -> Result<(), OrderError> {
        let Some(since) = self.paused.take() else {
            self.freeze(false).await.map_err(OrderError::Internal)?;
            return Ok(());
        };
        // The fresh fence waits in the socket: the conductor reads it as it thaws, before its
        // steps can run on.
        self.send_fence().await;
        if let Err(err) = self.freeze(false).await {
            self.paused = Some(since);
            return Err(OrderError::Internal(err));
        }
        let paused_for = since.elapsed();
        self.job_deadline = self.job_deadline.map(|at| at + paused_for);
        if let Some((at, why)) = self.ladder.kill_deadline {
            self.ladder.kill_deadline = Some((at + paused_for, why));
        }
        self.state.last_heard = Instant::now();
        let (id, who) = (self.id.clone(), by.clone());
        self.jobs
            .store()
            .call(move |s| s.set_paused(&id, None, who.as_ref()))
            .await?;
        let paused_ms = u64::try_from(paused_for.as_millis()).unwrap_or(u64::MAX);
        tracing::info!(pid = self.conductor.id.pid, paused_ms, "job continued");
        self.jobs.publish_by(&self.id, "continued", by);
        Ok(())
    }

    /// At the end of a supervision: a job that ended paused (killed while frozen) is not
    /// paused any more.
    pub(super) async fn forget_pause(&mut self) {
        if self.paused.take().is_some() {
            let id = self.id.clone();
            if let Err(err) = self
                .jobs
                .store()
                .call(move |s| s.set_paused(&id, None, None))
                .await
            {
                tracing::error!(error = %err, "cannot record that the job is not paused");
            }
        }
    }

    /// Freezes or thaws every process of the job (`&mut self`: the supervision is not `Sync`,
    /// so no shared borrow of it may live across an await).
    async fn freeze(&mut self, frozen: bool) -> Result<(), String> {
        let cgroup = self.conductor.cgroup.clone();
        let (conductor, groups) = (self.conductor.id, self.ladder.groups.clone());
        match cgroup {
            Some(cgroup) => cgroup
                .set_frozen(frozen, FREEZE_TIMEOUT)
                .await
                .map_err(|err| format!("{err:#}")),
            None => {
                let count = process::stop_job(conductor, &groups, frozen).await;
                tracing::debug!(count, frozen, "signalled the job's processes");
                Ok(())
            }
        }
    }
}
