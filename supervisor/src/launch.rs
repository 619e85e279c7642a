//! Starting a conductor for a stored job: bind its socket, spawn it, record it, handshake, and
//! build the plan it must run from what the store knows.

use crate::containment::Containment;
use crate::process::{self, TaskGroups, WorkerCommand};
use crate::session::ConductorLink;
use crate::state_dir::StateDir;
use crate::store::Store;
use crate::supervise::Conductor;
use anyhow::Context;
use shared::ids::JobId;
use shared::protocol::conductor::{JobPlan, PlanAction, PriorTask};
use shared::state::JobState;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

/// What a launched conductor is for.
#[derive(Clone, Debug)]
pub enum Purpose {
    /// Execute the job from its first task that did not succeed.
    Execute,
    /// Run the pending reverts, last first.
    Revert,
}

/// Spawns and connects conductors for stored jobs.
pub struct Launcher {
    pub store: Arc<Store>,
    pub state_dir: StateDir,
    pub worker: WorkerCommand,
    pub containment: Containment,
}

impl Launcher {
    /// Starts a conductor for `job_id` (whose state the caller already moved to `running` or
    /// `reverting`); returns it, its connection, and the plan to send it.
    pub async fn launch(
        &self,
        job_id: &JobId,
        purpose: &Purpose,
    ) -> anyhow::Result<(Conductor, ConductorLink, JobPlan)> {
        let plan = self.plan(job_id, purpose)?;
        let socket = self.state_dir.socket(job_id);
        let _ = std::fs::remove_file(&socket);
        let listener = std::os::unix::net::UnixListener::bind(&socket)
            .with_context(|| format!("cannot bind the job socket {}", socket.display()))?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot set the mode of {}", socket.display()))?;
        // A job that names its own worker (native tasks) runs in that program.
        let worker = match &plan.spec.worker {
            Some(program) => WorkerCommand {
                program: program.into(),
                leading_args: Vec::new(),
            },
            None => self.worker.clone(),
        };
        let cgroup = self.containment.create_job(job_id, &plan.spec.limits)?;
        self.store.set_containment(
            job_id,
            self.containment.mode(),
            cgroup.as_ref().map(|c| c.path.as_path()),
        )?;
        let started = async {
            let config = crate::spawn::SpawnConfig::new(
                &worker.program,
                &worker.conductor_args(job_id.as_str()),
                std::os::fd::AsFd::as_fd(&listener),
                &self.state_dir.conductor_log(job_id),
                cgroup.as_ref().map(|c| c.path.as_path()),
            )?;
            let spawned = crate::spawn::spawn_conductor(&config)?;
            let conductor = Conductor {
                pid: spawned.id.pid,
                start_time: spawned.id.start_time,
                socket: socket.clone(),
                cgroup: cgroup.clone(),
            };
            tracing::info!(job_id = %job_id, pid = spawned.id.pid, "conductor started");
            self.store
                .set_conductor(job_id, spawned.id.pid, spawned.id.start_time, &socket)?;
            match ConductorLink::connect(&socket, job_id).await {
                Ok(link) => Ok((conductor, link)),
                Err(err) => {
                    // Started but unreachable: it must not run on unsupervised.
                    process::kill_job(conductor.id(), &TaskGroups::new(conductor.id())).await;
                    let _ = self.store.set_conductor_exited(job_id);
                    Err(err)
                }
            }
        }
        .await;
        // The conductor holds the listener now (or never will); ours closes.
        drop(listener);
        let (conductor, link) = match started {
            Ok(started) => started,
            Err(err) => {
                if let Some(cgroup) = &cgroup {
                    cgroup.kill_and_remove().await;
                }
                return Err(err);
            }
        };
        Ok((conductor, link, plan))
    }

    /// The plan for a conductor of `job_id`, from what the store knows.
    pub fn plan(&self, job_id: &JobId, purpose: &Purpose) -> anyhow::Result<JobPlan> {
        let spec = self.store.spec(job_id)?;
        let tasks = self.store.tasks(job_id)?;
        let prior = tasks
            .iter()
            .map(|t| PriorTask {
                state: t.state,
                attempts: t.attempts,
                exec_outcome: t.exec_outcome,
                result: t.result.clone(),
            })
            .collect();
        let action = match purpose {
            Purpose::Execute => {
                let from = tasks
                    .iter()
                    .position(|t| t.state != shared::state::TaskState::Success)
                    .unwrap_or(tasks.len());
                PlanAction::Execute {
                    from: u32::try_from(from).context("too many tasks")?,
                }
            }
            Purpose::Revert => PlanAction::Revert {
                order: crate::store::pending_reverts(&tasks)
                    .iter()
                    .map(|t| t.idx)
                    .collect(),
            },
        };
        Ok(JobPlan {
            job_id: job_id.clone(),
            spec,
            action,
            prior,
        })
    }
}

/// Why this supervisor cannot run `spec` as it asks (limits it cannot enforce, an identity
/// change without root), if it cannot.
pub fn check_runnable(
    spec: &shared::spec::JobSpec,
    containment: &Containment,
) -> Result<(), String> {
    containment.check(&spec.limits)?;
    if spec.limits.changes_identity() && !nix::unistd::geteuid().is_root() {
        return Err("limits.user and limits.group need the supervisor to run as root".into());
    }
    Ok(())
}

/// Marks a job whose conductor could not start `crashed` (durably: retried while the store
/// refuses).
pub async fn record_launch_failure(store: &Store, job_id: &JobId, err: &anyhow::Error) {
    let reason = format!("cannot start the conductor: {err:#}");
    tracing::error!(job_id = %job_id, error = %reason, "launch failed");
    if let Err(store_err) =
        crate::supervise::record_end_durably(store, job_id, JobState::Crashed, &reason).await
    {
        tracing::error!(job_id = %job_id, error = %store_err, "cannot record the launch failure");
    }
}
