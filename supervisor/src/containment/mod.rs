//! Containment (ARCHITECTURE.md, Containment): one cgroup v2 per job where a writable unified
//! hierarchy exists, else sessions and process groups.
//!
//! In cgroup mode each job gets `BASE/job-ID`; its conductor is born in it (or joins it before
//! it execs), so every process of the job (double-forked and `setsid` ones too) is in it. A
//! hard kill writes `1` to `cgroup.kill`; the job is gone once `cgroup.events` says
//! `populated 0` (watched with inotify, see [`JobCgroup::wait_empty`]); the cgroup is removed
//! afterwards. The job's `memory`, `pids` and `cpu` limits are set on that cgroup when the
//! controllers are enabled for it; a limit that cannot be enforced is refused, never ignored.

mod delegate;
mod freeze;
mod job;
#[cfg(test)]
mod tests;

pub use delegate::{DAEMON_LEAF, Placement};
pub use freeze::FREEZE_TIMEOUT;
pub use job::{EMPTY_TIMEOUT, JobCgroup};

use anyhow::{Context, bail};
use shared::ids::JobId;
use shared::limits::Limits;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The containment this supervisor gives its jobs.
#[derive(Clone, Debug)]
pub enum Containment {
    /// Per-job cgroups under `base`, each `job_prefix` + the job id.
    Cgroup {
        base: PathBuf,
        controllers: BTreeSet<String>,
        /// `job-`; on a job board `job-HOST-`, so that daemons of one board sharing a machine
        /// (and its cgroups) never meet over a job one of them rescued from the other.
        job_prefix: String,
    },
    /// Sessions and process groups (and subreapers); `reason` says why not cgroups.
    Session { reason: String },
}

impl Containment {
    /// Finds a writable cgroup v2 hierarchy: `explicit` (the daemon's `--cgroup-root`), else
    /// this process's own cgroup as [`Placement`] decides: alone in it (systemd's
    /// `Delegate=yes`), the daemon moves into its `daemon` leaf and the jobs go beside it;
    /// otherwise they go in a `supervisor` child.
    /// `SUPERVISOR_CONTAINMENT=session` forces the fallback (to test it, or where cgroups
    /// misbehave).
    #[must_use]
    pub fn detect(explicit: Option<PathBuf>) -> Self {
        if std::env::var("SUPERVISOR_CONTAINMENT").is_ok_and(|mode| mode == "session") {
            return Self::Session {
                reason: "SUPERVISOR_CONTAINMENT=session".into(),
            };
        }
        match Self::try_cgroup(explicit) {
            Ok(containment) => containment,
            Err(err) => Self::Session {
                reason: format!("{err:#}"),
            },
        }
    }

    fn try_cgroup(explicit: Option<PathBuf>) -> anyhow::Result<Self> {
        let base = match explicit {
            Some(base) => base,
            None => {
                let mount = unified_mount().context("no cgroup v2 hierarchy is mounted")?;
                let own = own_cgroup().context("cannot read /proc/self/cgroup")?;
                let own_path = mount.join(own.trim_start_matches('/'));
                place_self(&own_path, own.trim_matches('/').is_empty())
            }
        };
        std::fs::create_dir_all(&base)
            .with_context(|| format!("cannot create {}", base.display()))?;
        let probe = base.join(format!("probe-{}", std::process::id()));
        std::fs::create_dir(&probe)
            .with_context(|| format!("cannot create a cgroup under {}", base.display()))?;
        let has_kill = probe.join("cgroup.kill").exists();
        let _ = std::fs::remove_dir(&probe);
        if !has_kill {
            bail!(
                "{} has no cgroup.kill (kernel older than 5.14)",
                base.display()
            );
        }
        // Offer the job cgroups what the base may have; keep whatever the kernel accepts.
        delegate::enable_controllers(&base, &CONTROLLERS);
        let controllers = read_words(&base.join("cgroup.subtree_control"));
        Ok(Self::Cgroup {
            base,
            controllers,
            job_prefix: JOB_PREFIX.to_owned(),
        })
    }

    /// This containment for a daemon on a board as host `host`: its jobs' cgroups are named
    /// `job-HOST-ID` ([`board_job_prefix`]).
    #[must_use]
    pub fn on_board_as(self, host: &str) -> Self {
        match self {
            Self::Cgroup {
                base, controllers, ..
            } => Self::Cgroup {
                base,
                controllers,
                job_prefix: board_job_prefix(host),
            },
            session @ Self::Session { .. } => session,
        }
    }

    /// `cgroup` or `session`, as `status` shows it.
    #[must_use]
    pub const fn mode(&self) -> &'static str {
        match self {
            Self::Cgroup { .. } => "cgroup",
            Self::Session { .. } => "session",
        }
    }

    /// Why `limits` cannot be enforced here, if they cannot.
    pub fn check(&self, limits: &Limits) -> Result<(), String> {
        let needed = limits.cgroup_controllers();
        if needed.is_empty() {
            return Ok(());
        }
        match self {
            Self::Cgroup {
                controllers, base, ..
            } => {
                let missing: Vec<&str> = needed
                    .into_iter()
                    .filter(|c| !controllers.contains(*c))
                    .collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "limits on {} cannot be enforced on this host: the controller(s) are not enabled for {} (enabled: {})",
                        missing.join(", "),
                        base.display(),
                        if controllers.is_empty() {
                            "none".to_owned()
                        } else {
                            controllers.iter().cloned().collect::<Vec<_>>().join(", ")
                        }
                    ))
                }
            }
            Self::Session { reason } => Err(format!(
                "limits on {} cannot be enforced on this host: no writable cgroup v2 ({reason})",
                needed.join(", ")
            )),
        }
    }

    /// The job's cgroup in cgroup mode (whether or not it exists yet).
    #[must_use]
    pub fn job_cgroup(&self, id: &JobId) -> Option<JobCgroup> {
        match self {
            Self::Cgroup {
                base, job_prefix, ..
            } => Some(JobCgroup {
                path: base.join(job_cgroup_name(job_prefix, id)),
            }),
            Self::Session { .. } => None,
        }
    }

    /// Creates the job's cgroup with its limits (cgroup mode only). A leftover `job-ID` cgroup
    /// of an earlier conductor is removed and made afresh when empty (no stale limits), and
    /// refused while it still holds processes: two conductors of one job must never share it.
    pub fn create_job(&self, id: &JobId, limits: &Limits) -> anyhow::Result<Option<JobCgroup>> {
        let Self::Cgroup {
            base, job_prefix, ..
        } = self
        else {
            return Ok(None);
        };
        self.check(limits).map_err(anyhow::Error::msg)?;
        let cgroup = JobCgroup {
            path: base.join(job_cgroup_name(job_prefix, id)),
        };
        match std::fs::create_dir(&cgroup.path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                cgroup.replace_leftover()?;
            }
            Err(err) => {
                return Err(err).with_context(|| {
                    format!("cannot create the job's cgroup {}", cgroup.path.display())
                });
            }
        }
        cgroup.apply(limits)?;
        Ok(Some(cgroup))
    }
}

impl Containment {
    /// Creates a fresh cgroup `BASE/NAME` for a warm conductor (cgroup mode only), without
    /// limits: they are the job's, set by [`Containment::assign`] once it has one. A leftover
    /// of that name is replaced when empty and refused while populated.
    ///
    /// The cgroup keeps its name for the job's whole life: cgroup v2 refuses `rename(2)` of a
    /// cgroup directory (EPERM, checked on Linux 6.18), and moving the conductor into a new
    /// `job-ID` cgroup costs an RCU grace period (milliseconds), the price the pool avoids. The
    /// store records each job's cgroup path, which every later reader uses
    /// (ARCHITECTURE.md, Warm conductors).
    pub fn create_warm(&self, name: &str) -> anyhow::Result<Option<JobCgroup>> {
        let Self::Cgroup { base, .. } = self else {
            return Ok(None);
        };
        let cgroup = JobCgroup {
            path: base.join(name),
        };
        match std::fs::create_dir(&cgroup.path) {
            Ok(()) => Ok(Some(cgroup)),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                cgroup.replace_leftover()?;
                Ok(Some(cgroup))
            }
            Err(err) => Err(err).with_context(|| {
                format!("cannot create the warm cgroup {}", cgroup.path.display())
            }),
        }
    }

    /// The path of the cgroup `BASE/NAME` in cgroup mode (whether or not it exists).
    #[must_use]
    pub fn job_cgroup_named(&self, name: &str) -> Option<PathBuf> {
        match self {
            Self::Cgroup { base, .. } => Some(base.join(name)),
            Self::Session { .. } => None,
        }
    }

    /// Makes a warm conductor's cgroup the job's: checks and sets the job's limits on it.
    pub fn assign(&self, cgroup: &JobCgroup, limits: &Limits) -> anyhow::Result<()> {
        self.check(limits).map_err(anyhow::Error::msg)?;
        cgroup.apply(limits)
    }
}

/// Decides where the job cgroups go (and moves the daemon into its leaf when that is the
/// decision); a move that fails falls back to a `supervisor` child, logged.
fn place_self(own: &Path, at_root: bool) -> PathBuf {
    let pid = std::process::id();
    let placement = Placement::decide(own, at_root, pid);
    match placement.settle(pid, &CONTROLLERS) {
        Ok(enabled) => {
            if matches!(placement, Placement::Beside { .. }) {
                tracing::info!(
                    base = %placement.base().display(),
                    leaf = DAEMON_LEAF,
                    controllers = enabled.join(","),
                    "moved the daemon into a leaf of its delegated cgroup; jobs go beside it"
                );
            }
            placement.base().to_path_buf()
        }
        Err(err) => {
            tracing::warn!(
                cgroup = %own.display(),
                error = %err,
                "cannot move the daemon into a leaf of its cgroup; job cgroups go beneath it"
            );
            own.join("supervisor")
        }
    }
}

/// The controllers job limits need.
const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// The prefix of a job's cgroup name off a board.
const JOB_PREFIX: &str = "job-";

/// `PREFIX` + the id checked as a path component ([`crate::state_dir::path_component`]).
fn job_cgroup_name(prefix: &str, id: &JobId) -> String {
    format!("{prefix}{}", crate::state_dir::path_component(id))
}

/// The job cgroup prefix of a daemon on a board as host `host`: `job-HOST-`, every character
/// of the host name outside `[A-Za-z0-9._-]` made `_` (a cgroup name is one path component).
#[must_use]
pub fn board_job_prefix(host: &str) -> String {
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{JOB_PREFIX}{host}-")
}

/// The cgroup v2 mount point, from `/proc/self/mountinfo`, read once: every `TaskSpawned`
/// of a job in cgroup mode asks for it.
pub(crate) fn unified_mount() -> Option<PathBuf> {
    static MOUNT: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    MOUNT
        .get_or_init(|| {
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
            shared::cgroup::unified_mount(&mountinfo).map(PathBuf::from)
        })
        .clone()
}

/// This process's cgroup v2 path.
pub(crate) fn own_cgroup() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    shared::cgroup::own_cgroup(&text).map(str::to_owned)
}

/// The cgroup (absolute path under the unified mount) process `pid` is in now, if it lives.
#[must_use]
pub fn cgroup_of(pid: i32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let relative = shared::cgroup::own_cgroup(&text)?;
    Some(unified_mount()?.join(relative.trim_start_matches('/')))
}

fn read_words(path: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .map(|t| t.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// A scratch cgroup for tests, killed and removed on drop.
#[cfg(test)]
pub(crate) struct TestCgroup(JobCgroup);

#[cfg(test)]
impl TestCgroup {
    pub(crate) fn path(&self) -> &Path {
        &self.0.path
    }

    pub(crate) fn cgroup(&self) -> &JobCgroup {
        &self.0
    }
}

#[cfg(test)]
impl Drop for TestCgroup {
    fn drop(&mut self) {
        self.0.kill();
        let deadline = std::time::Instant::now() + EMPTY_TIMEOUT;
        while self.0.is_populated() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let _ = std::fs::remove_dir(&self.0.path);
    }
}

/// A writable scratch cgroup under this process's own cgroup v2, found as [`Containment`]
/// finds one. `None` (with the reason printed) where there is none; under `CI=true` a missing
/// cgroup fails the test instead, so that CI cannot pass without running it.
#[cfg(test)]
pub(crate) fn test_cgroup(name: &str) -> Option<TestCgroup> {
    let made = unified_mount()
        .ok_or_else(|| "no cgroup v2 hierarchy is mounted".to_owned())
        .and_then(|mount| {
            let own = own_cgroup().ok_or_else(|| "cannot read /proc/self/cgroup".to_owned())?;
            let path = mount
                .join(own.trim_start_matches('/'))
                .join(format!("t-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir(&path);
            std::fs::create_dir(&path)
                .map_err(|err| format!("cannot create {}: {err}", path.display()))?;
            Ok(TestCgroup(JobCgroup { path }))
        });
    match made {
        Ok(cgroup) => Some(cgroup),
        Err(reason) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true needs a writable cgroup v2: {reason}")
        }
        Err(reason) => {
            eprintln!("SKIPPED: no writable cgroup v2 ({reason})");
            None
        }
    }
}
