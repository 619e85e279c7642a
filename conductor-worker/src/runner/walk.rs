//! The parallel walk (ARCHITECTURE.md, Flows): executes start as soon as the tasks they run
//! after succeeded, reverts as soon as every began task depending on theirs finished reverting,
//! at most `max_parallel` steps at once. The steps are futures polled together on the
//! conductor's one thread ([`Running`]); the task processes are what runs in parallel.

use super::{Runner, Walk};
use crate::task::TaskError;
use anyhow::Context;
use shared::protocol::conductor::{JobEvent, Phase, StepOutcome};
use shared::spec::OnFailure;
use shared::state::{ExecOutcome, TaskState};
use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use tokio::sync::watch;
use tracing::Instrument;

/// How one task's execute ended, retries included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Executed {
    Succeeded,
    /// Failed for good: its retries ran out.
    Failed,
    /// Stopped by the cancel or by a sibling's failure (or not started for it).
    Interrupted,
}

type StepFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// The steps running now. Polled together: each wake polls them all, which is cheap for the
/// at most [`shared::spec::MAX_PARALLEL`] of them, and keeps the engine free of a second
/// executor.
struct Running<'a, T> {
    steps: Vec<StepFuture<'a, T>>,
}

impl<'a, T> Running<'a, T> {
    fn new() -> Self {
        Self { steps: Vec::new() }
    }

    fn push(&mut self, step: impl Future<Output = T> + 'a) {
        self.steps.push(Box::pin(step));
    }

    fn len(&self) -> usize {
        self.steps.len()
    }

    fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The output of the next step to end; pends while none is running.
    async fn next(&mut self) -> T {
        std::future::poll_fn(|cx| {
            for i in 0..self.steps.len() {
                if let Poll::Ready(output) = self.steps[i].as_mut().poll(cx) {
                    drop(self.steps.swap_remove(i));
                    return Poll::Ready(output);
                }
            }
            Poll::Pending
        })
        .await
    }
}

impl Runner<'_> {
    fn max_parallel(&self) -> usize {
        usize::try_from(self.plan.spec.max_parallel.max(1)).unwrap_or(1)
    }

    /// Executes every task that has not succeeded yet, each once the tasks it runs after
    /// succeeded. The first failure for good or the cancel stops new starts; running steps are
    /// stopped (cancel, `on_failure = "interrupt"`) or let finish. Returns once none runs.
    pub(super) async fn execute_walk(&self) -> anyhow::Result<Walk> {
        let count = self.graph.len();
        let mut done: Vec<bool> = {
            let progress = self.progress.borrow();
            progress
                .iter()
                .map(|p| p.state == TaskState::Success)
                .collect()
        };
        let mut waiting_on: Vec<usize> = (0..count)
            .map(|t| self.graph.deps(t).iter().filter(|&&d| !done[d]).count())
            .collect();
        let mut ready: BTreeSet<usize> = (0..count)
            .filter(|&t| !done[t] && waiting_on[t] == 0)
            .collect();
        let mut running = Running::new();
        let mut ended: Option<Walk> = None;
        let mut cancel = self.cancel.clone();
        let mut cancel_forwarded = false;
        loop {
            if !cancel_forwarded && self.is_cancelled() {
                cancel_forwarded = true;
                ended.get_or_insert(Walk::Cancelled);
                self.stop_steps("cancelled".into());
            }
            while ended.is_none() && running.len() < self.max_parallel() {
                let Some(task) = ready.pop_first() else { break };
                running.push(async move { (task, self.execute(task).await) });
            }
            if running.is_empty() {
                break;
            }
            tokio::select! {
                (task, executed) = running.next() => match executed? {
                    Executed::Succeeded => {
                        done[task] = true;
                        for &next in self.graph.dependants(task) {
                            waiting_on[next] -= 1;
                            if waiting_on[next] == 0 && !done[next] {
                                ready.insert(next);
                            }
                        }
                    }
                    Executed::Failed => {
                        ended.get_or_insert(Walk::Failed);
                        self.after_failure(task);
                    }
                    Executed::Interrupted => {
                        ended.get_or_insert(Walk::Cancelled);
                    }
                },
                _ = cancel.wait_for(Option::is_some), if !cancel_forwarded => {}
            }
        }
        Ok(match ended {
            Some(walk) => walk,
            None if done.iter().all(|&d| d) => Walk::Completed,
            // Not reachable for a checked spec (an acyclic graph): something never got ready.
            None => Walk::Failed,
        })
    }

    /// A task failed for good: no new task starts, and its running siblings are interrupted
    /// (`on_failure = "interrupt"`) or let finish.
    fn after_failure(&self, task: usize) {
        let name = &self.plan.spec.tasks[task].name;
        match self.plan.spec.on_failure {
            OnFailure::Interrupt => {
                tracing::info!(task, "a task failed, interrupting the running ones");
                self.stop_steps(format!("task {name:?} failed"));
            }
            OnFailure::Finish => {
                tracing::info!(task, "a task failed, letting the running ones finish");
            }
        }
    }

    async fn execute(&self, index: usize) -> anyhow::Result<Executed> {
        let name = &self.plan.spec.tasks[index].name;
        let span = tracing::info_span!("task", task_name = %name, phase = "execute");
        self.execute_attempts(index).instrument(span).await
    }

    /// Executes task `index` until an attempt succeeds, the retries run out (each after its
    /// `retry_delay` times `retry_backoff` to the power of the retries before it), or a stop.
    async fn execute_attempts(&self, index: usize) -> anyhow::Result<Executed> {
        let spec = &self.plan.spec.tasks[index];
        let task = u32::try_from(index).context("too many tasks")?;
        for try_number in 0..=spec.retries {
            if try_number > 0 && !self.pause_before_retry(index, try_number).await {
                return Ok(Executed::Interrupted);
            }
            if self.is_stopped() {
                return Ok(Executed::Interrupted);
            }
            let attempt = self.progress.borrow()[index].attempts + 1;
            self.write_ahead(JobEvent::TaskStarting {
                task,
                phase: Phase::Execute,
                attempt,
            })
            .await?;
            {
                let mut progress = self.progress.borrow_mut();
                progress[index].state = TaskState::Running;
                progress[index].attempts = attempt;
            }
            let ended = if self.is_stopped() {
                Err(TaskError {
                    message: "cancelled before it started".into(),
                    ..TaskError::cancelled()
                })
            } else {
                self.step(index, Phase::Execute, attempt).await
            };
            if let Some(executed) = self.execute_ended(index, attempt, ended) {
                return Ok(executed);
            }
            if try_number < spec.retries {
                tracing::info!(task, attempt, "retrying");
            }
        }
        Ok(Executed::Failed)
    }

    /// Records and reports how an attempt of task `index` ended; what the task's execute came
    /// to, or `None` when it may be tried again.
    fn execute_ended(
        &self,
        index: usize,
        attempt: u32,
        ended: Result<String, TaskError>,
    ) -> Option<Executed> {
        let task = u32::try_from(index).unwrap_or(u32::MAX);
        match ended {
            Ok(result) => {
                tracing::info!(task, attempt, "execute succeeded");
                {
                    let mut progress = self.progress.borrow_mut();
                    progress[index].state = TaskState::Success;
                    progress[index].exec_outcome = Some(ExecOutcome::Success);
                    progress[index].result.clone_from(&result);
                }
                self.report(JobEvent::TaskFinished {
                    task,
                    phase: Phase::Execute,
                    outcome: StepOutcome::Success { result },
                });
                Some(Executed::Succeeded)
            }
            Err(error) => {
                tracing::info!(task, attempt, reason = %error, cancelled = error.cancelled, "execute failed");
                let cancelled = error.cancelled;
                {
                    let mut progress = self.progress.borrow_mut();
                    progress[index].state = TaskState::Failure;
                    progress[index].exec_outcome = Some(if cancelled {
                        ExecOutcome::Cancelled
                    } else {
                        ExecOutcome::Failure
                    });
                    progress[index].result.clone_from(&error.partial_result);
                }
                self.report(JobEvent::TaskFinished {
                    task,
                    phase: Phase::Execute,
                    outcome: StepOutcome::Failure {
                        reason: error.message,
                        cancelled,
                        result: error.partial_result,
                    },
                });
                if cancelled {
                    Some(Executed::Interrupted)
                } else if self.is_stopped() {
                    // Failed on its own while the job stops: no retry.
                    Some(Executed::Failed)
                } else {
                    None
                }
            }
        }
    }

    /// Waits before retry `retry` of task `index`; false when the job stopped meanwhile.
    async fn pause_before_retry(&self, index: usize, retry: u32) -> bool {
        let spec = &self.plan.spec.tasks[index];
        let delay = spec.retry_backoff.delay(spec.retry_delay, retry);
        if delay.is_zero() {
            return true;
        }
        tracing::info!(
            task = index,
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "waiting before the retry"
        );
        let mut stop: watch::Receiver<_> = self.stop.subscribe();
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            _ = stop.wait_for(Option::is_some) => false,
        }
    }

    /// Reverts `order` (tasks whose execute began), each only after every task of `order`
    /// that depends on it, directly or not, finished reverting; independent ones in parallel,
    /// and ties in the order given. True when every revert succeeded: a failed revert does not
    /// stop the others.
    pub(super) async fn revert_walk(&self, order: &[usize]) -> anyhow::Result<bool> {
        let blockers = self.graph.revert_blockers(order);
        let mut waiting_on: Vec<usize> = blockers.iter().map(Vec::len).collect();
        let mut unblocks: Vec<Vec<usize>> = vec![Vec::new(); order.len()];
        for (position, list) in blockers.iter().enumerate() {
            for &blocker in list {
                unblocks[blocker].push(position);
            }
        }
        let mut ready: BTreeSet<usize> = (0..order.len()).filter(|&p| waiting_on[p] == 0).collect();
        let mut running = Running::new();
        let mut all_ok = true;
        loop {
            while running.len() < self.max_parallel() {
                let Some(position) = ready.pop_first() else {
                    break;
                };
                let index = order[position];
                let name = &self.plan.spec.tasks[index].name;
                let span = tracing::info_span!("task", task_name = %name, phase = "revert");
                running
                    .push(async move { (position, self.revert_one(index).instrument(span).await) });
            }
            if running.is_empty() {
                break;
            }
            let (position, reverted) = running.next().await;
            all_ok &= reverted?;
            for &next in &unblocks[position] {
                waiting_on[next] -= 1;
                if waiting_on[next] == 0 {
                    ready.insert(next);
                }
            }
        }
        Ok(all_ok)
    }

    /// Reverts task `index`, with its `revert_retries` extra attempts (each `revert_retry_delay`
    /// after the failure before it, each written ahead and reported as an execute attempt is);
    /// true when an attempt succeeded.
    async fn revert_one(&self, index: usize) -> anyhow::Result<bool> {
        let (retries, delay) = {
            let spec = &self.plan.spec.tasks[index];
            (spec.revert_retries, spec.revert_retry_delay)
        };
        for attempt in 1..=retries.saturating_add(1) {
            if attempt > 1 {
                tracing::info!(
                    task = index,
                    attempt,
                    delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "retrying the revert"
                );
                tokio::time::sleep(delay).await;
            }
            if self.revert_attempt(index, attempt).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// One attempt of task `index`'s revert; true when it succeeded.
    async fn revert_attempt(&self, index: usize, attempt: u32) -> anyhow::Result<bool> {
        let task = u32::try_from(index).context("too many tasks")?;
        self.write_ahead(JobEvent::TaskStarting {
            task,
            phase: Phase::Revert,
            attempt,
        })
        .await?;
        self.progress.borrow_mut()[index].state = TaskState::Reverting;
        let outcome = match self.step(index, Phase::Revert, attempt).await {
            Ok(_) => StepOutcome::Success {
                result: String::new(),
            },
            Err(error) => {
                tracing::warn!(task, attempt, reason = %error, "revert failed");
                StepOutcome::Failure {
                    reason: error.message,
                    cancelled: false,
                    result: String::new(),
                }
            }
        };
        let ok = matches!(outcome, StepOutcome::Success { .. });
        self.progress.borrow_mut()[index].state = if ok {
            TaskState::Reverted
        } else {
            TaskState::RevertFailure
        };
        self.report(JobEvent::TaskFinished {
            task,
            phase: Phase::Revert,
            outcome,
        });
        Ok(ok)
    }
}
