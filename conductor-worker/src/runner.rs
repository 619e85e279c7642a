//! The job's walk: execute in file order (with retries), and on failure or cancel revert every
//! task whose execute began, last first. Every step is announced and acknowledged before it starts.

use crate::Config;
use crate::link::{self, CancelReason, Link, LinkHandle};
use crate::reaper::{self, OwnedChildren};
use crate::step::{StepCommand, run_step};
use anyhow::Context;
use shared::protocol::conductor::{JobEvent, JobPlan, Phase, PlanAction, StepOutcome};
use shared::spec::{CommandSpec, TaskSpec};
use shared::state::{ExecOutcome, JobState, TaskState};
use std::collections::BTreeMap;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// Serves one job from handshake to the acknowledged end; returns the job's final state.
pub async fn serve(config: Config) -> anyhow::Result<JobState> {
    let children = OwnedChildren::default();
    reaper::start(children.clone()).context("cannot become a subreaper")?;
    let Link {
        handle,
        plan,
        cancel,
        cancel_sender,
    } = link::start(config.listen_fd, config.job_id)?;
    cancel_on_signals(&cancel_sender)?;
    let mut waiting = cancel.clone();
    let plan = tokio::select! {
        plan = plan => plan.context("the link stopped before the job arrived")?,
        _ = waiting.wait_for(Option::is_some) => anyhow::bail!("cancelled before the job arrived"),
    };
    tracing::info!(job_id = %plan.job_id, job = %plan.spec.name, "job received");
    let mut runner = Runner::new(&plan, handle, cancel, children);
    let state = runner.run().await?;
    let leftovers = reaper::kill_descendants();
    if leftovers > 0 {
        tracing::warn!(count = leftovers, "killed processes the tasks left behind");
    }
    let seq = runner.link.report(JobEvent::JobFinished { state });
    runner.link.wait_acked(seq).await?;
    Ok(state)
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
    tasks: Vec<Progress>,
    link: LinkHandle,
    cancel: watch::Receiver<CancelReason>,
    cancel_reported: bool,
    children: OwnedChildren,
}

impl<'a> Runner<'a> {
    fn new(
        plan: &'a JobPlan,
        link: LinkHandle,
        cancel: watch::Receiver<CancelReason>,
        children: OwnedChildren,
    ) -> Self {
        let tasks = (0..plan.spec.tasks.len())
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
            link,
            cancel,
            cancel_reported: false,
            children,
        }
    }

    async fn run(&mut self) -> anyhow::Result<JobState> {
        match &self.plan.action {
            PlanAction::Execute { from } => {
                let walk = self.execute_from(*from as usize).await?;
                if walk == Walk::Completed {
                    return Ok(JobState::Success);
                }
                let began: Vec<usize> = (0..self.tasks.len())
                    .rev()
                    .filter(|&i| self.tasks[i].state != TaskState::Pending)
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
                    .filter(|&i| i < self.tasks.len())
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
        let reason = self.cancel.borrow().clone();
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
        for index in from..self.tasks.len() {
            let walk = self.execute(index).await?;
            if walk != Walk::Completed {
                return Ok(walk);
            }
        }
        Ok(Walk::Completed)
    }

    async fn execute(&mut self, index: usize) -> anyhow::Result<Walk> {
        let spec = &self.plan.spec.tasks[index];
        let task = u32::try_from(index).context("too many tasks")?;
        let _span =
            tracing::info_span!("task", task_name = %spec.name, phase = "execute").entered();
        for try_number in 0..=spec.retries {
            if self.is_cancelled() {
                return Ok(Walk::Cancelled);
            }
            let attempt = self.tasks[index].attempts + 1;
            self.link
                .write_ahead(JobEvent::TaskStarting {
                    task,
                    phase: Phase::Execute,
                    attempt,
                })
                .await?;
            self.tasks[index].state = TaskState::Running;
            self.tasks[index].attempts = attempt;
            let outcome = if self.is_cancelled() {
                StepOutcome::Failure {
                    reason: "cancelled before it started".into(),
                    cancelled: true,
                    result: String::new(),
                }
            } else {
                let command = self.step_command(index, Phase::Execute, &spec.run);
                run_step(command, &mut self.link, &mut self.cancel, &self.children).await
            };
            self.link.report(JobEvent::TaskFinished {
                task,
                phase: Phase::Execute,
                outcome: outcome.clone(),
            });
            let progress = &mut self.tasks[index];
            match outcome {
                StepOutcome::Success { result } => {
                    tracing::info!(task, attempt, "execute succeeded");
                    progress.state = TaskState::Success;
                    progress.exec_outcome = Some(ExecOutcome::Success);
                    progress.result = result;
                    return Ok(Walk::Completed);
                }
                StepOutcome::Failure {
                    reason,
                    cancelled,
                    result,
                } => {
                    tracing::info!(task, attempt, reason, cancelled, "execute failed");
                    progress.state = TaskState::Failure;
                    progress.exec_outcome = Some(if cancelled {
                        ExecOutcome::Cancelled
                    } else {
                        ExecOutcome::Failure
                    });
                    progress.result = result;
                    // Checked even when `cancelled`: that also reports the cancel once.
                    if self.is_cancelled() || cancelled {
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
            let spec = &self.plan.spec.tasks[index];
            let task = u32::try_from(index).context("too many tasks")?;
            let _span =
                tracing::info_span!("task", task_name = %spec.name, phase = "revert").entered();
            self.link
                .write_ahead(JobEvent::TaskStarting {
                    task,
                    phase: Phase::Revert,
                    attempt: 1,
                })
                .await?;
            self.tasks[index].state = TaskState::Reverting;
            let outcome = match &spec.revert {
                Some(revert) => {
                    let command = self.step_command(index, Phase::Revert, revert);
                    run_step(command, &mut self.link, &mut self.cancel, &self.children).await
                }
                None => StepOutcome::Success {
                    result: String::new(),
                },
            };
            let ok = matches!(outcome, StepOutcome::Success { .. });
            if !ok {
                tracing::warn!(task, ?outcome, "revert failed");
            }
            self.tasks[index].state = if ok {
                TaskState::Reverted
            } else {
                TaskState::RevertFailure
            };
            all_ok &= ok;
            self.link.report(JobEvent::TaskFinished {
                task,
                phase: Phase::Revert,
                outcome,
            });
        }
        Ok(all_ok)
    }

    fn step_command(
        &self,
        index: usize,
        phase: Phase,
        command: &'a CommandSpec,
    ) -> StepCommand<'a> {
        let spec: &TaskSpec = &self.plan.spec.tasks[index];
        let mut env: BTreeMap<String, String> = self.plan.spec.env.clone();
        env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.insert("JOB_ID".into(), self.plan.job_id.to_string());
        env.insert("TASK_NAME".into(), spec.name.clone());
        if phase == Phase::Revert {
            let progress = &self.tasks[index];
            env.insert("TASK_RESULT".into(), progress.result.clone());
            let outcome = progress.exec_outcome.unwrap_or(ExecOutcome::Killed);
            env.insert("TASK_OUTCOME".into(), outcome.as_str().into());
        }
        let (program, args) = command.program_and_args();
        StepCommand {
            task: u32::try_from(index).unwrap_or(u32::MAX),
            phase,
            program,
            args,
            cwd: spec.cwd.as_deref(),
            env,
            timeout: if phase == Phase::Execute {
                spec.timeout
            } else {
                None
            },
            term_grace: self.plan.spec.term_grace,
        }
    }
}
