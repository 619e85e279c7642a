//! Starting a conductor for a stored job: bind its socket, create its cgroup, spawn it, record
//! it, handshake. Between the spawn and the moment the supervision owns the conductor, a guard
//! kills it on every early return: no conductor ever runs unsupervised.

use super::Purpose;
use crate::containment::{Containment, JobCgroup};
use crate::process::{self, ConductorId, Pidfd, WorkerCommand};
use crate::session::ConductorLink;
use crate::spawn::{SpawnConfig, spawn_conductor};
use crate::state_dir::StateDir;
use crate::store::{Store, StoreHandle};
use anyhow::Context;
use shared::ids::JobId;
use shared::protocol::conductor::{JobPlan, PlanAction, PriorTask};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// Spawns and connects conductors for stored jobs.
pub struct Launcher {
    pub state_dir: StateDir,
    pub worker: WorkerCommand,
    pub containment: Containment,
}

/// One conductor, as the supervision knows it.
#[derive(Clone, Debug)]
pub struct Conductor {
    pub id: ConductorId,
    pub socket: PathBuf,
    /// The job's cgroup, in cgroup mode.
    pub cgroup: Option<JobCgroup>,
}

/// A conductor that was started, its pidfd from the spawn, its connection, and the plan it
/// must be sent.
pub struct Launched {
    pub conductor: Conductor,
    pub pidfd: Pidfd,
    pub link: ConductorLink,
    pub plan: JobPlan,
}

/// Kills a spawned conductor (and its cgroup) unless disarmed: held from the spawn until the
/// supervision owns the conductor.
struct SpawnGuard {
    conductor: Option<Pidfd>,
    cgroup: Option<JobCgroup>,
}

impl SpawnGuard {
    fn disarm(mut self) -> Option<Pidfd> {
        self.cgroup = None;
        self.conductor.take()
    }
}

impl Drop for SpawnGuard {
    fn drop(&mut self) {
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill();
        }
        if let Some(pidfd) = &self.conductor {
            // A conductor without a plan has started no task: killing it is killing the job.
            let _ = pidfd.signal(nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Launcher {
    /// Starts a conductor for `job_id`, whose state the caller already moved to `running` or
    /// `reverting`. On an error nothing of the job is left running.
    pub async fn launch(
        &self,
        store: &StoreHandle,
        job_id: &JobId,
        purpose: Purpose,
    ) -> anyhow::Result<Launched> {
        // One store call: the plan, and how the job is contained (recorded before the spawn, so
        // that a restarted daemon finds the cgroup of a conductor it never heard of).
        let plan = {
            let (id, mode) = (job_id.clone(), self.containment.mode());
            let path = self.containment.job_cgroup(job_id).map(|c| c.path);
            store
                .call(move |s| {
                    s.set_containment(&id, mode, path.as_deref())?;
                    plan(s, &id, purpose)
                })
                .await?
        };
        let socket = self.state_dir.socket(job_id);
        let _ = std::fs::remove_file(&socket);
        let listener = std::os::unix::net::UnixListener::bind(&socket)
            .with_context(|| format!("cannot bind the job socket {}", socket.display()))?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot set the mode of {}", socket.display()))?;
        let cgroup = self.containment.create_job(job_id, &plan.spec.limits)?;
        let worker = self.worker_for(&plan);
        let mut guard = SpawnGuard {
            conductor: None,
            cgroup: cgroup.clone(),
        };
        let config = SpawnConfig::new(
            &worker.program,
            &worker.conductor_args(job_id.as_str()),
            listener.as_fd(),
            &self.state_dir.conductor_log(job_id),
            cgroup.as_ref().map(|c| c.path.as_path()),
        )?;
        // fork/clone and the exec report are blocking: off the async workers.
        let spawned = tokio::task::spawn_blocking(move || spawn_conductor(&config))
            .await
            .context("the spawn task failed")??;
        let id = spawned.id;
        guard.conductor = Some(spawned.pidfd);
        // The conductor holds the listener now; ours closes.
        drop(listener);
        tracing::info!(job_id = %job_id, pid = id.pid, "conductor started");
        {
            let (job, socket) = (job_id.clone(), socket.clone());
            store
                .call(move |s| {
                    s.set_conductor(
                        &job,
                        id.pid,
                        id.start_time,
                        &socket,
                        process::own_supervisor_id(),
                    )
                })
                .await?;
        }
        let link = ConductorLink::connect(&socket, job_id, id).await?;
        let pidfd = guard
            .disarm()
            .context("INVARIANT: the guard holds the spawned conductor")?;
        Ok(Launched {
            conductor: Conductor { id, socket, cgroup },
            pidfd,
            link,
            plan,
        })
    }

    /// A job that names its own worker (native tasks) runs in that program.
    fn worker_for(&self, plan: &JobPlan) -> WorkerCommand {
        match &plan.spec.worker {
            Some(program) => WorkerCommand {
                program: program.into(),
                leading_args: Vec::new(),
            },
            None => self.worker.clone(),
        }
    }
}

/// The plan for a conductor of `job_id`, from what the store knows.
pub fn plan(store: &Store, job_id: &JobId, purpose: Purpose) -> crate::store::Result<JobPlan> {
    let spec = store.spec(job_id)?;
    let tasks = store.tasks(job_id)?;
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
                from: u32::try_from(from).unwrap_or(u32::MAX),
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
