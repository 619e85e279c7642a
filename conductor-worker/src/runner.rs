//! The engine: the job's walk. Execute in file order (with retries), and on failure or cancel
//! revert every task whose execute began, last first. Every step is announced and acknowledged
//! before it starts (write-ahead). Command tasks and native tasks go through the same code:
//! both are [`Task`]s.

use crate::Config;
use crate::command::CommandTask;
use crate::limits::TaskLimits;
use crate::link::{self, CancelReason, Link, LinkHandle};
use crate::output_cap::OutputCap;
use crate::reaper::{self, OwnedChildren};
use crate::registry::Registry;
use crate::task::{NOTES_CAPACITY, Note, Task, TaskContext, TaskError};
use crate::task_env::{EnvSources, task_env};
use anyhow::{Context, bail};
use shared::duration::format_duration;
use shared::protocol::conductor::{
    JobEvent, JobPlan, MAX_RESULT_LEN, Phase, PlanAction, StepOutcome, Stream, truncate_at_boundary,
};
use shared::spec::{TaskBody, TaskSpec};
use shared::state::{ExecOutcome, JobState, TaskState};
use std::rc::Rc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};
use tracing::Instrument;

/// Serves one job from handshake to the acknowledged end; returns the job's final state.
pub async fn serve(config: Config, registry: &Registry) -> anyhow::Result<JobState> {
    let plan_deadline = Instant::now() + config.plan_timeout;
    let children = OwnedChildren::default();
    reaper::start(children.clone()).context("cannot become a subreaper")?;
    let Link {
        handle,
        plan,
        cancel,
        cancel_sender,
    } = link::start(config.listen_fd, config.job_id)?;
    cancel_on_signals(&cancel_sender)?;
    let plan = wait_for_plan(plan, cancel.clone(), plan_deadline, config.plan_timeout).await?;
    tracing::info!(job_id = %plan.job_id, job = %plan.spec.name, "job received");
    let limits = TaskLimits::new(&plan.spec.limits).map(Rc::new);
    let tasks = plan
        .spec
        .tasks
        .iter()
        .map(|spec| build_task(&plan, spec, registry, &children, &limits))
        .collect();
    let mut runner = Runner::new(&plan, tasks, handle, cancel);
    let state = runner.run().await?;
    let leftovers = reaper::kill_descendants();
    if leftovers > 0 {
        tracing::warn!(count = leftovers, "killed processes the tasks left behind");
    }
    let seq = runner.link.report(JobEvent::JobFinished { state });
    runner.link.wait_acked(seq).await?;
    Ok(state)
}

/// Waits for the job's plan until `deadline` (`timeout` after the start): a conductor whose
/// supervisor never sends it exits instead of waiting forever, unsupervised.
async fn wait_for_plan(
    plan: oneshot::Receiver<JobPlan>,
    mut cancel: watch::Receiver<CancelReason>,
    deadline: Instant,
    timeout: Duration,
) -> anyhow::Result<JobPlan> {
    tokio::select! {
        plan = plan => plan.context("the link stopped before the job arrived"),
        _ = cancel.wait_for(Option::is_some) => bail!("cancelled before the job arrived"),
        () = sleep_until(deadline) => bail!(
            "no job arrived within {} of the start: the supervisor that spawned this conductor never sent it",
            format_duration(timeout)
        ),
    }
}

fn build_task(
    plan: &JobPlan,
    spec: &TaskSpec,
    registry: &Registry,
    children: &OwnedChildren,
    limits: &Result<Rc<TaskLimits>, String>,
) -> Result<Box<dyn Task>, String> {
    match &spec.body {
        TaskBody::Command { run, revert } => {
            let limits = limits.clone()?;
            let env = task_env(&EnvSources {
                conductor: std::env::vars_os().collect(),
                login: limits.login(),
                switches_user: limits.switches_user(),
                inherit: &plan.spec.inherit_env,
                job: &plan.spec.env,
                task: &spec.env,
            });
            Ok(Box::new(CommandTask {
                run: run.clone(),
                revert: revert.clone(),
                cwd: spec.cwd.clone(),
                env,
                timeout: spec.timeout,
                revert_timeout: plan.spec.revert_timeout(spec),
                term_grace: plan.spec.term_grace,
                children: children.clone(),
                limits,
            }))
        }
        TaskBody::Native { kind, params_json } => {
            let params =
                serde_json::from_str(params_json).map_err(|err| format!("bad params: {err}"))?;
            registry.build(kind, &params)
        }
    }
}

/// SIGTERM or SIGINT sent to the conductor itself means a soft cancel.
fn cancel_on_signals(cancel: &watch::Sender<CancelReason>) -> anyhow::Result<()> {
    for (kind, name) in [
        (SignalKind::terminate(), "SIGTERM"),
        (SignalKind::interrupt(), "SIGINT"),
    ] {
        let mut stream = signal(kind).with_context(|| format!("cannot handle {name}"))?;
        let cancel = cancel.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                tracing::info!(signal = name, "signal received, cancelling");
                cancel.send_if_modified(|reason| {
                    let first = reason.is_none();
                    reason.get_or_insert_with(|| format!("{name} received"));
                    first
                });
            }
        });
    }
    Ok(())
}

/// What this conductor knows of one task.
struct Progress {
    state: TaskState,
    attempts: u32,
    exec_outcome: Option<ExecOutcome>,
    result: String,
}

/// How the execute walk ended.
#[derive(PartialEq, Eq)]
enum Walk {
    Completed,
    Failed,
    Cancelled,
}

struct Runner<'a> {
    plan: &'a JobPlan,
    tasks: Vec<Result<Box<dyn Task>, String>>,
    progress: Vec<Progress>,
    link: LinkHandle,
    cancel: watch::Receiver<CancelReason>,
    cancel_reported: bool,
}

impl<'a> Runner<'a> {
    fn new(
        plan: &'a JobPlan,
        tasks: Vec<Result<Box<dyn Task>, String>>,
        link: LinkHandle,
        cancel: watch::Receiver<CancelReason>,
    ) -> Self {
        let progress = (0..plan.spec.tasks.len())
            .map(|i| {
                let prior = plan.prior.get(i);
                Progress {
                    state: prior.map_or(TaskState::Pending, |p| p.state),
                    attempts: prior.map_or(0, |p| p.attempts),
                    exec_outcome: prior.and_then(|p| p.exec_outcome),
                    result: prior.map(|p| p.result.clone()).unwrap_or_default(),
                }
            })
            .collect();
        Self {
            plan,
            tasks,
            progress,
            link,
            cancel,
            cancel_reported: false,
        }
    }

    async fn run(&mut self) -> anyhow::Result<JobState> {
        match &self.plan.action {
            PlanAction::Execute { from } => {
                let walk = self.execute_from(*from as usize).await?;
                if walk == Walk::Completed {
                    return Ok(JobState::Success);
                }
                let began: Vec<usize> = (0..self.progress.len())
                    .rev()
                    .filter(|&i| self.progress[i].state != TaskState::Pending)
                    .collect();
                let all_reverted = self.revert(&began).await?;
                Ok(match (all_reverted, walk) {
                    (false, _) => JobState::RevertFailed,
                    (true, Walk::Cancelled) => JobState::Cancelled,
                    (true, _) => JobState::Reverted,
                })
            }
            PlanAction::Revert { order } => {
                let order: Vec<usize> = order
                    .iter()
                    .map(|&i| i as usize)
                    .filter(|&i| i < self.progress.len())
                    .collect();
                let all_reverted = self.revert(&order).await?;
                Ok(if all_reverted {
                    JobState::Reverted
                } else {
                    JobState::RevertFailed
                })
            }
        }
    }

    fn is_cancelled(&mut self) -> bool {
        let signalled = crate::signals::cancel_signalled().then(|| "cancel requested".to_owned());
        let reason = self.cancel.borrow().clone().or(signalled);
        match reason {
            Some(reason) => {
                if !self.cancel_reported {
                    self.cancel_reported = true;
                    self.link.report(JobEvent::Cancelling { reason });
                }
                true
            }
            None => false,
        }
    }

    async fn execute_from(&mut self, from: usize) -> anyhow::Result<Walk> {
        for index in from..self.progress.len() {
            let walk = self.execute(index).await?;
            if walk != Walk::Completed {
                return Ok(walk);
            }
        }
        Ok(Walk::Completed)
    }

    async fn execute(&mut self, index: usize) -> anyhow::Result<Walk> {
        let name = &self.plan.spec.tasks[index].name;
        let span = tracing::info_span!("task", task_name = %name, phase = "execute");
        self.execute_attempts(index).instrument(span).await
    }

    /// Executes task `index` until an attempt succeeds, the retries run out, or a cancel.
    async fn execute_attempts(&mut self, index: usize) -> anyhow::Result<Walk> {
        let spec = &self.plan.spec.tasks[index];
        let task = u32::try_from(index).context("too many tasks")?;
        for try_number in 0..=spec.retries {
            if self.is_cancelled() {
                return Ok(Walk::Cancelled);
            }
            let attempt = self.progress[index].attempts + 1;
            self.link
                .write_ahead(JobEvent::TaskStarting {
                    task,
                    phase: Phase::Execute,
                    attempt,
                })
                .await?;
            self.progress[index].state = TaskState::Running;
            self.progress[index].attempts = attempt;
            let ended = if self.is_cancelled() {
                Err(TaskError {
                    message: "cancelled before it started".into(),
                    ..TaskError::cancelled()
                })
            } else {
                self.step(index, Phase::Execute, attempt).await
            };
            let progress = &mut self.progress[index];
            match ended {
                Ok(result) => {
                    tracing::info!(task, attempt, "execute succeeded");
                    progress.state = TaskState::Success;
                    progress.exec_outcome = Some(ExecOutcome::Success);
                    progress.result.clone_from(&result);
                    self.link.report(JobEvent::TaskFinished {
                        task,
                        phase: Phase::Execute,
                        outcome: StepOutcome::Success { result },
                    });
                    return Ok(Walk::Completed);
                }
                Err(error) => {
                    tracing::info!(task, attempt, reason = %error, cancelled = error.cancelled, "execute failed");
                    progress.state = TaskState::Failure;
                    progress.exec_outcome = Some(if error.cancelled {
                        ExecOutcome::Cancelled
                    } else {
                        ExecOutcome::Failure
                    });
                    progress.result.clone_from(&error.partial_result);
                    let outcome = StepOutcome::Failure {
                        reason: error.message,
                        cancelled: error.cancelled,
                        result: error.partial_result,
                    };
                    self.link.report(JobEvent::TaskFinished {
                        task,
                        phase: Phase::Execute,
                        outcome,
                    });
                    // Checked even when cancelled: that also reports the cancel once.
                    if self.is_cancelled() || error.cancelled {
                        return Ok(Walk::Cancelled);
                    }
                    if try_number < spec.retries {
                        tracing::info!(task, attempt, "retrying");
                    }
                }
            }
        }
        Ok(Walk::Failed)
    }

    /// Reverts `order`, in that order; true when every revert succeeded. A failed revert does
    /// not stop the others.
    async fn revert(&mut self, order: &[usize]) -> anyhow::Result<bool> {
        let mut all_ok = true;
        for &index in order {
            let name = &self.plan.spec.tasks[index].name;
            let span = tracing::info_span!("task", task_name = %name, phase = "revert");
            all_ok &= self.revert_one(index).instrument(span).await?;
        }
        Ok(all_ok)
    }

    /// Reverts task `index`, with its `revert_retries` extra attempts (each `revert_retry_delay`
    /// after the failure before it, each written ahead and reported as an execute attempt is);
    /// true when an attempt succeeded.
    async fn revert_one(&mut self, index: usize) -> anyhow::Result<bool> {
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
    async fn revert_attempt(&mut self, index: usize, attempt: u32) -> anyhow::Result<bool> {
        let task = u32::try_from(index).context("too many tasks")?;
        self.link
            .write_ahead(JobEvent::TaskStarting {
                task,
                phase: Phase::Revert,
                attempt,
            })
            .await?;
        self.progress[index].state = TaskState::Reverting;
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
        self.progress[index].state = if ok {
            TaskState::Reverted
        } else {
            TaskState::RevertFailure
        };
        self.link.report(JobEvent::TaskFinished {
            task,
            phase: Phase::Revert,
            outcome,
        });
        Ok(ok)
    }

    /// What a step of task `index` gets: its params, the execute's result and outcome (for a
    /// revert), the cancel signal, and where its notes go.
    fn context(
        &self,
        index: usize,
        phase: Phase,
        attempt: u32,
        notes: mpsc::Sender<Note>,
    ) -> TaskContext {
        let spec = &self.plan.spec.tasks[index];
        let params = match &spec.body {
            TaskBody::Native { params_json, .. } => {
                serde_json::from_str(params_json).unwrap_or_default()
            }
            TaskBody::Command { .. } => serde_json::Value::Null,
        };
        let progress = &self.progress[index];
        TaskContext {
            job_id: self.plan.job_id.clone(),
            index: u32::try_from(index).unwrap_or(u32::MAX),
            name: spec.name.clone(),
            phase,
            attempt,
            params,
            result: progress.result.clone(),
            execute_outcome: progress.exec_outcome,
            cancel: self.cancel.clone(),
            notes,
            dropped: std::sync::Arc::default(),
        }
    }

    /// Runs one step of one task, forwarding its notes; an interruptible execute is dropped at
    /// the cancel or at its timeout. Returns the step's result as stored.
    async fn step(
        &mut self,
        index: usize,
        phase: Phase,
        attempt: u32,
    ) -> Result<String, TaskError> {
        let task = match &self.tasks[index] {
            Ok(task) => task,
            Err(problem) => return Err(TaskError::new(problem.clone())),
        };
        let spec = &self.plan.spec.tasks[index];
        let task_index = u32::try_from(index).unwrap_or(u32::MAX);
        let (notes_tx, mut notes) = mpsc::channel(NOTES_CAPACITY);
        let ctx = self.context(index, phase, attempt, notes_tx);
        let mut sink = StepSink {
            task: task_index,
            phase,
            cap: OutputCap::new(self.plan.spec.max_output(spec)),
        };
        // A cancel interrupts only an execute; the step's deadline (the execute's `timeout`,
        // the revert's `revert_timeout`) bounds both. Either drops the future of a task that
        // may be dropped; a command task applies them to its process itself.
        let droppable = task.is_interruptible();
        let interruptible = phase == Phase::Execute && droppable;
        let limit = match phase {
            Phase::Execute => spec.timeout,
            Phase::Revert => Some(self.plan.spec.revert_timeout(spec)),
        }
        .filter(|_| droppable);
        let deadline = limit.map(|t| Instant::now() + t);
        let link = &mut self.link;
        let mut cancel = self.cancel.clone();
        let ended = {
            let mut running = match phase {
                Phase::Execute => task.execute(&ctx),
                Phase::Revert => {
                    Box::pin(async { task.revert(&ctx).await.map(|()| serde_json::Value::Null) })
                }
            };
            loop {
                tokio::select! {
                    ended = &mut running => break ended,
                    Some(note) = notes.recv() => sink.forward(link, note),
                    _ = cancel.wait_for(Option::is_some), if interruptible => break Err(TaskError::cancelled()),
                    () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                        break Err(TaskError::timed_out(phase, limit.unwrap_or_default()));
                    }
                }
            }
        };
        let dropped_lines = ctx.dropped_lines();
        drop(ctx);
        sink.finish(link, &mut notes, dropped_lines).await;
        // Cut at the source, as a command's stdout is: what the revert gets is what is stored.
        let bound = |mut text: String| {
            truncate_at_boundary(&mut text, MAX_RESULT_LEN);
            text
        };
        match ended {
            Ok(value) => Ok(bound(match value {
                serde_json::Value::Null => String::new(),
                serde_json::Value::String(text) => text,
                other => other.to_string(),
            })),
            Err(mut error) => {
                error.partial_result = bound(error.partial_result);
                Err(error)
            }
        }
    }
}

/// Where a step's notes go: its lines through its output cap, then to the link.
struct StepSink {
    task: u32,
    phase: Phase,
    cap: OutputCap,
}

impl StepSink {
    /// At the step's end: the notes still queued, a line counting those a native task dropped
    /// (`dropped_lines`), then the held tail of its output, which waits for room in the link
    /// rather than be dropped: it is the end of the step's output.
    async fn finish(
        mut self,
        link: &mut LinkHandle,
        notes: &mut mpsc::Receiver<Note>,
        dropped_lines: u64,
    ) {
        while let Ok(note) = notes.try_recv() {
            self.forward(link, note);
        }
        if dropped_lines > 0 {
            let line = format!(
                "[... {dropped_lines} lines dropped: the task logged faster than the conductor could take them ...]"
            );
            self.forward(link, Note::Line(Stream::Stderr, line));
        }
        for (stream, line) in self.cap.finish() {
            let event = JobEvent::Output {
                task: self.task,
                phase: self.phase,
                stream,
                line,
            };
            link.report_when_room(event).await;
        }
    }

    fn forward(&mut self, link: &mut LinkHandle, note: Note) {
        let (task, phase) = (self.task, self.phase);
        match note {
            Note::Line(stream, line) => {
                if let Some((stream, line)) = self.cap.admit(stream, line) {
                    link.report(JobEvent::Output {
                        task,
                        phase,
                        stream,
                        line,
                    });
                }
            }
            Note::Spawned(pid) => {
                link.report(JobEvent::TaskSpawned { task, phase, pid });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::ids::JobId;
    use shared::spec::JobSpec;

    fn plan() -> JobPlan {
        JobPlan {
            job_id: JobId::from_random(7),
            spec: JobSpec::parse("[[task]]\nname = \"a\"\nrun = \"true\"\n", "j", "j")
                .expect("valid"),
            action: PlanAction::Execute { from: 0 },
            prior: Vec::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_plan_that_never_comes_ends_the_wait_at_the_timeout() {
        let (_sender, plan_rx) = oneshot::channel::<JobPlan>();
        let (_cancel_tx, cancel) = watch::channel(None);
        let timeout = crate::PLAN_TIMEOUT;
        let started = Instant::now();
        let err = wait_for_plan(plan_rx, cancel, started + timeout, timeout)
            .await
            .expect_err("no plan");
        assert_eq!(started.elapsed(), timeout);
        assert!(
            err.to_string().contains("no job arrived within 1m"),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_plan_in_time_is_returned() {
        let (sender, plan_rx) = oneshot::channel();
        let (_cancel_tx, cancel) = watch::channel(None);
        let timeout = crate::PLAN_TIMEOUT;
        tokio::spawn(async move {
            tokio::time::sleep(timeout / 2).await;
            let _ = sender.send(plan());
        });
        let got = wait_for_plan(plan_rx, cancel, Instant::now() + timeout, timeout)
            .await
            .expect("plan");
        assert_eq!(got, plan());
    }
}
