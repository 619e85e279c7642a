//! The engine: the job's walk over its graph (ARCHITECTURE.md, Flows). Execute every task once
//! the tasks it runs after succeeded (with retries), up to `max_parallel` steps at once, and on
//! failure or cancel revert every task whose execute began, each only after the tasks that
//! depend on it. Every step is announced and acknowledged before it starts (write-ahead). A
//! linear job is the graph where each task runs after the one before it: the same walk, one
//! step at a time. Command tasks and native tasks go through the same code: both are [`Task`]s.
//!
//! The conductor stays one thread: parallel steps are futures polled together (`walk.rs`); what
//! they share (the link, the tasks' progress) sits in `RefCell`s, never borrowed across an
//! `.await`.

mod step;
mod walk;

use crate::Config;
use crate::command::CommandTask;
use crate::limits::{Own, TaskLimits};
use crate::link::{self, CancelReason, Link, LinkHandle};
use crate::reaper::{self, OwnedChildren};
use crate::registry::Registry;
use crate::task::{Note, Task, TaskContext};
use crate::task_env::{EnvSources, task_env};
use anyhow::{Context, bail};
use shared::duration::format_duration;
use shared::protocol::conductor::{JobEvent, JobPlan, Phase, PlanAction};
use shared::spec::{Graph, TaskBody, TaskSpec};
use shared::state::{ExecOutcome, JobState, TaskState};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};

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
        fence,
    } = link::start(config.listen_fd, config.job_id)?;
    cancel_on_signals(&cancel_sender)?;
    // Before the plan: a warm conductor waits for it anyway.
    let own = Own::look_up();
    let plan = wait_for_plan(plan, cancel.clone(), plan_deadline, config.plan_timeout).await?;
    tracing::info!(job_id = %plan.job_id, job = %plan.spec.name, "job received");
    let limits = TaskLimits::new(&plan.spec.limits, own).map(Rc::new);
    let tasks = plan
        .spec
        .tasks
        .iter()
        .map(|spec| build_task(&plan, spec, registry, &children, &limits))
        .collect();
    let runner = Runner::new(&plan, tasks, handle, cancel);
    // The walk is dropped at the fence, with every step future in it: nothing more starts.
    let walked = {
        let walk = runner.run();
        tokio::select! {
            state = walk => Some(state),
            () = fence_passed(fence) => None,
        }
    };
    let Some(state) = walked else {
        return runner.fenced().await;
    };
    let state = state?;
    let leftovers = reaper::kill_descendants();
    if leftovers > 0 {
        tracing::warn!(count = leftovers, "killed processes the tasks left behind");
    }
    runner.write_ahead(JobEvent::JobFinished { state }).await?;
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

/// Why a fenced conductor's job ends `killed` (the supervisor records it).
pub const FENCED_REASON: &str = "fenced: supervisor silent";

/// Resolves when the last fence the supervisor sent passed without a newer one (never when
/// none was sent).
async fn fence_passed(mut fence: watch::Receiver<link::FenceDeadline>) {
    // False once the link is gone for good: the last fence stands.
    let mut open = true;
    loop {
        let deadline = *fence.borrow_and_update();
        let until_deadline = async {
            match deadline {
                Some(at) => sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // A newer fence read at the same turn as the deadline wins: it replaces the last.
            biased;
            changed = fence.changed(), if open => open = changed.is_ok(),
            () = until_deadline => return,
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Walk {
    Completed,
    Failed,
    Cancelled,
}

struct Runner<'a> {
    plan: &'a JobPlan,
    graph: Graph,
    tasks: Vec<Result<Box<dyn Task>, String>>,
    progress: RefCell<Vec<Progress>>,
    link: RefCell<LinkHandle>,
    /// The job's cancel, from the supervisor or a signal.
    cancel: watch::Receiver<CancelReason>,
    /// What the running steps listen to: the cancel, or (`on_failure = "interrupt"`) a task's
    /// failure; set once, by the walk.
    stop: watch::Sender<CancelReason>,
    cancel_reported: Cell<bool>,
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
            graph: Graph::of(&plan.spec),
            tasks,
            progress: RefCell::new(progress),
            link: RefCell::new(link),
            cancel,
            stop: watch::channel(None).0,
            cancel_reported: Cell::new(false),
        }
    }

    async fn run(&self) -> anyhow::Result<JobState> {
        match &self.plan.action {
            PlanAction::Execute { .. } => self.execute_or_revert().await,
            PlanAction::Revert { order } => Ok(if self.revert_known(order).await? {
                JobState::Reverted
            } else {
                JobState::RevertFailed
            }),
            PlanAction::Resume { revert } => {
                // The interrupted tasks are compensated first; a failed revert leaves the job
                // to the operator, as a revert plan does.
                if self.revert_known(revert).await? {
                    self.execute_or_revert().await
                } else {
                    Ok(JobState::RevertFailed)
                }
            }
        }
    }

    /// Executes every task that did not succeed; on a failure or a cancel reverts every task
    /// whose execute began and is not reverted already. Where to start follows from the prior
    /// states: every task that did not succeed runs once the tasks it runs after did (a linear
    /// job's `from`).
    async fn execute_or_revert(&self) -> anyhow::Result<JobState> {
        let walk = self.execute_walk().await?;
        if walk == Walk::Completed {
            return Ok(JobState::Success);
        }
        let began: Vec<usize> = {
            let progress = self.progress.borrow();
            (0..progress.len())
                .filter(|&i| !matches!(progress[i].state, TaskState::Pending | TaskState::Reverted))
                .collect()
        };
        let all_reverted = self.revert_walk(&self.graph.revert_order(&began)).await?;
        Ok(match (all_reverted, walk) {
            (false, _) => JobState::RevertFailed,
            (true, Walk::Cancelled) => JobState::Cancelled,
            (true, _) => JobState::Reverted,
        })
    }

    /// Reverts the tasks of `order` this job has (in that order); true when all succeeded.
    async fn revert_known(&self, order: &[u32]) -> anyhow::Result<bool> {
        let count = self.plan.spec.tasks.len();
        let order: Vec<usize> = order
            .iter()
            .map(|&i| i as usize)
            .filter(|&i| i < count)
            .collect();
        self.revert_walk(&order).await
    }

    /// The fence passed (the walk is dropped already): SIGKILL of every process of the running
    /// steps, nothing more started (no revert: another host may own the job by now), and
    /// [`JobEvent::Fenced`] reported; returns once the supervisor holds it, so the job ends
    /// `killed` with its reverts skipped.
    async fn fenced(&self) -> anyhow::Result<JobState> {
        let killed = reaper::kill_descendants();
        let running: Vec<&str> = self
            .progress
            .borrow()
            .iter()
            .enumerate()
            .filter(|(_, p)| matches!(p.state, TaskState::Running | TaskState::Reverting))
            .map(|(i, _)| self.plan.spec.tasks[i].name.as_str())
            .collect();
        tracing::warn!(
            job_id = %self.plan.job_id,
            killed,
            tasks = running.join(","),
            "fenced"
        );
        self.write_ahead(JobEvent::Fenced {
            reason: FENCED_REASON.to_owned(),
        })
        .await?;
        Ok(JobState::Killed)
    }

    /// Whether the job is cancelled; reports the cancel once.
    fn is_cancelled(&self) -> bool {
        let signalled = crate::signals::cancel_signalled().then(|| "cancel requested".to_owned());
        let reason = self.cancel.borrow().clone().or(signalled);
        match reason {
            Some(reason) => {
                if !self.cancel_reported.replace(true) {
                    self.report(JobEvent::Cancelling { reason });
                }
                true
            }
            None => false,
        }
    }

    /// Whether no new step may start: the job is cancelled, or a failure stopped it.
    fn is_stopped(&self) -> bool {
        self.stop.borrow().is_some() || crate::signals::cancel_signalled()
    }

    /// Tells the running steps to stop (once; the first reason stays).
    fn stop_steps(&self, reason: String) {
        self.stop.send_if_modified(|current| {
            let first = current.is_none();
            current.get_or_insert(reason);
            first
        });
    }

    fn report(&self, event: JobEvent) -> u64 {
        self.link.borrow_mut().report(event)
    }

    /// Reports `event` and waits until the supervisor holds it, without holding the link
    /// meanwhile: other steps report while this one waits.
    async fn write_ahead(&self, event: JobEvent) -> anyhow::Result<()> {
        let (seq, mut acked) = {
            let mut link = self.link.borrow_mut();
            (link.report(event), link.acked())
        };
        acked
            .wait_for(|&held| held >= seq)
            .await
            .map(|_| ())
            .context("the link to the supervisor stopped")
    }

    /// What a step of task `index` gets: its params, the results of the tasks it runs after,
    /// the execute's result and outcome (for a revert), the stop signal, and where its notes go.
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
        let progress = self.progress.borrow();
        let inputs = self
            .graph
            .ancestors(index)
            .into_iter()
            .map(|a| {
                (
                    self.plan.spec.tasks[a].name.clone(),
                    progress[a].result.clone(),
                )
            })
            .collect();
        TaskContext {
            job_id: self.plan.job_id.clone(),
            index: u32::try_from(index).unwrap_or(u32::MAX),
            name: spec.name.clone(),
            phase,
            attempt,
            params,
            result: progress[index].result.clone(),
            execute_outcome: progress[index].exec_outcome,
            inputs,
            cancel: self.stop.subscribe(),
            notes,
            dropped: std::sync::Arc::default(),
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
    async fn the_fence_passes_at_its_deadline_unless_a_newer_one_came() {
        let start = Instant::now();
        let (fence, deadline) = watch::channel(None);
        let passed = tokio::spawn(fence_passed(deadline));
        // No fence (no board, or an older supervisor): no deadline at all.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!passed.is_finished());
        fence.send_replace(Some(Instant::now() + Duration::from_secs(7)));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!passed.is_finished());
        // Renewed: the new fence replaces the old one.
        fence.send_replace(Some(Instant::now() + Duration::from_secs(7)));
        passed.await.expect("the fence passes");
        assert_eq!(start.elapsed(), Duration::from_secs(3600 + 5 + 7));
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
