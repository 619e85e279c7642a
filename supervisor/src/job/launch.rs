//! Starting a conductor for a stored job: bind its socket, create its cgroup, spawn it, record
//! it, handshake. Between the spawn and the moment the supervision owns the conductor, a guard
//! kills it on every early return: no conductor ever runs unsupervised.
//!
//! With a warm pool (`supervisor daemon --warm N`), a job that a warm conductor can serve
//! ([`cold_only`] says which cannot) takes one instead of a spawn: its cgroup becomes the job's,
//! its socket and log are renamed to the job's, and it is recorded and handshaken as a new one
//! would be (ARCHITECTURE.md, Warm conductors).

use super::Purpose;
use super::warm::{Warm, WarmPool};
use crate::containment::{Containment, JobCgroup};
use crate::metrics::METRICS;
use crate::process::{self, ConductorId, Pidfd, WorkerCommand};
use crate::session::ConductorLink;
use crate::spawn::{Spawned, spawn_listening};
use crate::state_dir::StateDir;
use crate::store::{Store, StoreHandle, TaskRow};
use anyhow::Context;
use shared::ids::JobId;
use shared::limits::Limits;
use shared::protocol::conductor::{JobPlan, PlanAction, PriorTask};
use shared::spec::JobSpec;
use shared::state::{ExecOutcome, TaskState};
use std::path::{Path, PathBuf};

/// Spawns and connects conductors for stored jobs.
pub struct Launcher {
    pub state_dir: StateDir,
    pub worker: WorkerCommand,
    pub containment: Containment,
    /// The daemon's warm conductors (`--warm N`); `None` for `supervisor run` and `--warm 0`.
    pub warm: Option<WarmPool>,
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
    /// Starts a conductor for `job_id` (whose spec is `spec`), whose state the caller already
    /// moved to `running` or `reverting`: a warm one when the pool has one and the job can use
    /// it, else a new one. On an error nothing of the job is left running.
    pub async fn launch(
        &self,
        store: &StoreHandle,
        job_id: &JobId,
        purpose: Purpose,
        spec: &JobSpec,
    ) -> anyhow::Result<Launched> {
        if let Some(pool) = &self.warm {
            let log = self.state_dir.conductor_log(job_id);
            match cold_only(spec, log.exists()) {
                Some(why) => tracing::debug!(job_id = %job_id, why, "cold spawn"),
                None => match pool.take() {
                    Some(warm) => {
                        METRICS.warm_hits.inc();
                        let cgroup = warm.cgroup.clone();
                        match self.launch_warm(store, job_id, purpose, spec, warm).await {
                            Ok(launched) => return Ok(launched),
                            Err(err) => {
                                tracing::warn!(job_id = %job_id, error = format!("{err:#}"), "warm conductor failed; spawning one");
                                if let Some(cgroup) = cgroup {
                                    cgroup.kill_and_remove().await;
                                }
                            }
                        }
                    }
                    None => {
                        METRICS.warm_misses.inc();
                    }
                },
            }
        }
        self.launch_cold(store, job_id, purpose, spec).await
    }

    /// Makes a warm conductor the job's: the job's limits on its cgroup, its socket and log
    /// renamed to the job's, one store call (containment, conductor, plan), the handshake that
    /// tells it its job. Its pool record goes once the store names it (by a task spawned after
    /// the handshake, which runs once the plan is sent), so that a daemon dying at any point
    /// leaves it either to the next daemon's clearing or to its re-attachment.
    async fn launch_warm(
        &self,
        store: &StoreHandle,
        job_id: &JobId,
        purpose: Purpose,
        spec: &JobSpec,
        warm: Warm,
    ) -> anyhow::Result<Launched> {
        let id = warm.id();
        let Warm {
            pidfd,
            socket: warm_socket,
            log: warm_log,
            cgroup,
            record,
            ..
        } = warm;
        // From here every early return kills it (its cgroup is removed by the caller).
        let guard = SpawnGuard {
            conductor: Some(pidfd),
            cgroup: cgroup.clone(),
        };
        let result = self
            .assign_warm(
                store,
                job_id,
                purpose,
                spec,
                (id, cgroup.as_ref()),
                (&warm_socket, &warm_log),
            )
            .await;
        match result {
            Ok((socket, plan)) => {
                tracing::info!(job_id = %job_id, pid = id.pid, warm = true, "conductor started");
                let connected = ConductorLink::connect(&socket, job_id, id).await;
                // The pool's files (the log's warm name, the record emptied) are put away by a
                // task of their own, which the runtime runs once the plan is sent, while the
                // conductor reads it: not on the start's path (bench/NOTES.md).
                let pool = self.warm.clone();
                tokio::spawn(async move {
                    let _ = std::fs::remove_file(&warm_log);
                    if let Some(pool) = pool {
                        pool.owned_by_job(record);
                    }
                });
                let link = connected?;
                let pidfd = guard
                    .disarm()
                    .context("INVARIANT: the guard holds the warm conductor")?;
                Ok(Launched {
                    conductor: Conductor { id, socket, cgroup },
                    pidfd,
                    link,
                    plan,
                })
            }
            Err(err) => {
                let _ = std::fs::remove_file(&warm_log);
                let _ = std::fs::remove_file(&warm_socket);
                let _ = std::fs::remove_file(&record);
                Err(err)
            }
        }
    }

    /// The warm conductor `id` becomes the job's: the job's limits on its cgroup, its socket
    /// and log (`files`) under the job's names, and one store call that records its
    /// containment and identity and reads the plan. Returns the job's socket and the plan.
    async fn assign_warm(
        &self,
        store: &StoreHandle,
        job_id: &JobId,
        purpose: Purpose,
        spec: &JobSpec,
        (id, cgroup): (ConductorId, Option<&JobCgroup>),
        (warm_socket, warm_log): (&std::path::Path, &std::path::Path),
    ) -> anyhow::Result<(PathBuf, JobPlan)> {
        if let Some(cgroup) = cgroup {
            self.containment.assign(cgroup, &spec.limits)?;
        }
        let socket = self.state_dir.socket(job_id);
        let log = self.state_dir.conductor_log(job_id);
        std::fs::rename(warm_socket, &socket)
            .with_context(|| format!("cannot rename the warm socket to {}", socket.display()))?;
        // A link, not a rename: it refuses to replace a log the job already has.
        std::fs::hard_link(warm_log, &log)
            .with_context(|| format!("cannot give the warm log the name {}", log.display()))?;
        let (job, mode, path) = (
            job_id.clone(),
            self.containment.mode(),
            cgroup.map(|c| c.path.clone()),
        );
        let recorded = socket.clone();
        let spec = spec.clone();
        let plan = store
            .call(move |s| {
                s.set_containment(&job, mode, path.as_deref())?;
                s.set_conductor(
                    &job,
                    id.pid,
                    id.start_time,
                    &recorded,
                    process::own_supervisor_id(),
                )?;
                plan(s, &job, purpose, spec)
            })
            .await?;
        Ok((socket, plan))
    }

    /// Spawns a new conductor for the job.
    async fn launch_cold(
        &self,
        store: &StoreHandle,
        job_id: &JobId,
        purpose: Purpose,
        spec: &JobSpec,
    ) -> anyhow::Result<Launched> {
        // One store call: the plan, and how the job is contained (recorded before the spawn, so
        // that a restarted daemon finds the cgroup of a conductor it never heard of).
        let plan = {
            let (id, mode) = (job_id.clone(), self.containment.mode());
            let path = self.containment.job_cgroup(job_id).map(|c| c.path);
            let spec = spec.clone();
            store
                .call(move |s| {
                    s.set_containment(&id, mode, path.as_deref())?;
                    plan(s, &id, purpose, spec)
                })
                .await?
        };
        let socket = self.state_dir.socket(job_id);
        // Its socket, its cgroup and the spawn (a fork/clone and the exec report) are blocking:
        // off the runtime's thread, which the other jobs need meanwhile.
        let (spawned, cgroup) = {
            let (containment, worker) = (self.containment.clone(), self.worker_for(&plan));
            let (job, socket, limits) = (job_id.clone(), socket.clone(), plan.spec.limits.clone());
            let log = self.state_dir.conductor_log(job_id);
            tokio::task::spawn_blocking(move || {
                spawn_cold(&containment, &worker, &job, &socket, &log, &limits)
            })
            .await
            .context("the spawn task failed")??
        };
        let id = spawned.id;
        let guard = SpawnGuard {
            conductor: Some(spawned.pidfd),
            cgroup: cgroup.clone(),
        };
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

/// The plan for a conductor of `job_id` whose spec is `spec` (read once, by the job's actor),
/// from what the store knows of its tasks.
pub fn plan(
    store: &Store,
    job_id: &JobId,
    purpose: Purpose,
    spec: JobSpec,
) -> crate::store::Result<JobPlan> {
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
        Purpose::Execute => execute_from(&tasks),
        Purpose::Revert => PlanAction::Revert {
            order: crate::store::pending_reverts(&tasks)
                .iter()
                .map(|t| t.idx)
                .collect(),
        },
        Purpose::Resume => {
            let revert = interrupted_reverts(&tasks);
            if revert.is_empty() {
                execute_from(&tasks)
            } else {
                PlanAction::Resume { revert }
            }
        }
    };
    Ok(JobPlan {
        job_id: job_id.clone(),
        spec,
        action,
        prior,
    })
}

/// Execute from the first task that did not succeed.
fn execute_from(tasks: &[TaskRow]) -> PlanAction {
    let from = tasks
        .iter()
        .position(|t| t.state != TaskState::Success)
        .unwrap_or(tasks.len());
    PlanAction::Execute {
        from: u32::try_from(from).unwrap_or(u32::MAX),
    }
}

/// The tasks a hard end (a kill, a crash, a lost host) interrupted mid-execute whose revert is
/// pending, in the order their reverts must run (last first, a reverse dependency order for a
/// graph): what a resume plan reverts before it executes again.
fn interrupted_reverts(tasks: &[TaskRow]) -> Vec<u32> {
    crate::store::pending_reverts(tasks)
        .iter()
        .filter(|t| t.state == TaskState::Failure && t.exec_outcome == Some(ExecOutcome::Killed))
        .map(|t| t.idx)
        .collect()
}

/// Why a start of a job with `spec` must spawn a new conductor rather than take a warm one, if
/// it must. A warm conductor is the default worker program, spawned by the daemon as any
/// conductor is (same environment, session, open files limit); what the job's `[limits]` ask is
/// applied where it is for a new one: the cgroup limits on its cgroup before the plan is sent,
/// the rlimits and the identity switch by the conductor to each task between fork and exec. So
/// the limits never need a new spawn; what does:
/// - a job that names its own `worker` (native tasks): another program;
/// - a job that had a conductor before (a revert or a resume of a killed or crashed job): its
///   conductor log goes on in the same file, which a warm conductor does not write to.
#[must_use]
pub fn cold_only(spec: &JobSpec, has_log: bool) -> Option<&'static str> {
    if spec.worker.is_some() {
        return Some("the job names its own worker program");
    }
    if has_log {
        return Some("the job had a conductor before; its log goes on");
    }
    None
}

/// Why this supervisor cannot run `spec` as it asks (limits it cannot enforce, an identity
/// change without root), if it cannot.
pub fn check_runnable(spec: &JobSpec, containment: &Containment) -> Result<(), String> {
    containment.check(&spec.limits)?;
    if spec.limits.changes_identity() && !nix::unistd::geteuid().is_root() {
        return Err("limits.user and limits.group need the supervisor to run as root".into());
    }
    Ok(())
}

/// The blocking part of a cold launch: the job's cgroup (with its limits), its listening
/// socket and the spawn. On an error after the cgroup exists, the cgroup is killed (the
/// caller's cleanup removes it).
fn spawn_cold(
    containment: &Containment,
    worker: &WorkerCommand,
    job_id: &JobId,
    socket: &Path,
    log: &Path,
    limits: &Limits,
) -> anyhow::Result<(Spawned, Option<JobCgroup>)> {
    let cgroup = containment.create_job(job_id, limits)?;
    let spawned = spawn_listening(
        &worker.program,
        &worker.conductor_args(job_id.as_str()),
        socket,
        log,
        cgroup.as_ref().map(|c| c.path.as_path()),
    );
    match spawned {
        Ok(spawned) => Ok((spawned, cgroup)),
        Err(err) => {
            if let Some(cgroup) = &cgroup {
                cgroup.kill();
            }
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(top: &str) -> JobSpec {
        let text = format!("{top}\n[[task]]\nname = \"a\"\nrun = \"true\"\n");
        shared::spec::JobSpec::parse(&text, "j.toml", "j").expect("valid")
    }

    fn task(idx: u32, has_revert: bool, state: TaskState, outcome: Option<ExecOutcome>) -> TaskRow {
        TaskRow {
            idx,
            name: format!("t{idx}"),
            has_revert,
            state,
            attempts: 1,
            exec_outcome: outcome,
            result: String::new(),
            error: None,
            started_ms: None,
            ended_ms: None,
        }
    }

    /// A resume reverts only the tasks a hard end killed mid-execute that have a revert, last
    /// first (a graph may leave several running); a task that failed on its own, or that
    /// succeeded, is not reverted; with none, the resume is a plain execute.
    #[test]
    fn a_resume_reverts_exactly_the_interrupted_tasks_last_first() {
        use ExecOutcome::{Failure, Killed, Success};
        let tasks = [
            task(0, true, TaskState::Success, Some(Success)),
            task(1, true, TaskState::Failure, Some(Killed)),
            task(2, false, TaskState::Failure, Some(Killed)),
            task(3, true, TaskState::Failure, Some(Failure)),
            task(4, true, TaskState::Failure, Some(Killed)),
            task(5, true, TaskState::Pending, None),
        ];
        assert_eq!(interrupted_reverts(&tasks), [4, 1]);
        assert!(interrupted_reverts(&tasks[..1]).is_empty());
        assert_eq!(execute_from(&tasks), PlanAction::Execute { from: 1 });
    }

    #[test]
    fn only_a_first_conductor_of_the_default_worker_is_taken_warm() {
        assert_eq!(cold_only(&spec(""), false), None);
        // Limits are applied where they are for a new conductor: no reason for a spawn.
        let limited = spec("[limits]\nmemory = \"64M\"\nnofile = 64\ncpu_time = \"5s\"\n");
        assert_eq!(cold_only(&limited, false), None);
        assert!(cold_only(&spec("worker = \"my-worker\""), false).is_some());
        assert!(
            cold_only(&spec(""), true).is_some(),
            "a revert or resume keeps its log"
        );
    }
}
