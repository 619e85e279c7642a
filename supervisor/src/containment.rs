//! Containment (DESIGN.md section 6): one cgroup v2 per job where a writable unified hierarchy
//! exists, else sessions and process groups.
//!
//! In cgroup mode each job gets `BASE/job-ID`; its conductor joins it between fork and exec, so
//! every process of the job (double-forked and `setsid` ones too) is in it. A hard kill writes
//! `1` to `cgroup.kill`; the job is gone once `cgroup.events` says `populated 0`; the cgroup is
//! removed afterwards. The job's `memory`, `pids` and `cpu` limits are set on that cgroup when the
//! controllers are enabled for it; a limit that cannot be enforced is refused, never ignored.

use anyhow::{Context, bail};
use shared::ids::JobId;
use shared::limits::Limits;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long to wait for a killed cgroup to become empty.
pub const EMPTY_TIMEOUT: Duration = Duration::from_secs(10);

/// The containment this supervisor gives its jobs.
#[derive(Clone, Debug)]
pub enum Containment {
    /// Per-job cgroups under `base`.
    Cgroup {
        base: PathBuf,
        controllers: BTreeSet<String>,
    },
    /// Sessions and process groups (and subreapers); `reason` says why not cgroups.
    Session { reason: String },
}

impl Containment {
    /// Finds a writable cgroup v2 hierarchy: `explicit` (the daemon's `--cgroup-root`), else a
    /// `supervisor` child of this process's own cgroup (under systemd with `Delegate=yes`, the
    /// delegated subtree).
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
                mount.join(own.trim_start_matches('/')).join("supervisor")
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
        let available = read_words(&base.join("cgroup.controllers"));
        for controller in ["memory", "pids", "cpu"] {
            if available.contains(controller) {
                let _ = std::fs::write(
                    base.join("cgroup.subtree_control"),
                    format!("+{controller}"),
                );
            }
        }
        let controllers = read_words(&base.join("cgroup.subtree_control"));
        Ok(Self::Cgroup { base, controllers })
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
            Self::Cgroup { controllers, base } => {
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
            Self::Cgroup { base, .. } => Some(JobCgroup {
                path: base.join(format!("job-{id}")),
            }),
            Self::Session { .. } => None,
        }
    }

    /// Creates the job's cgroup with its limits (cgroup mode only).
    pub fn create_job(&self, id: &JobId, limits: &Limits) -> anyhow::Result<Option<JobCgroup>> {
        let Self::Cgroup { base, .. } = self else {
            return Ok(None);
        };
        self.check(limits).map_err(anyhow::Error::msg)?;
        let path = base.join(format!("job-{id}"));
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("cannot create the job's cgroup {}", path.display()));
            }
        }
        let cgroup = JobCgroup { path };
        cgroup.apply(limits)?;
        Ok(Some(cgroup))
    }
}

/// One job's cgroup.
#[derive(Clone, Debug)]
pub struct JobCgroup {
    pub path: PathBuf,
}

impl JobCgroup {
    fn apply(&self, limits: &Limits) -> anyhow::Result<()> {
        let write = |file: &str, value: String| {
            std::fs::write(self.path.join(file), &value)
                .with_context(|| format!("cannot set {file} = {value} on {}", self.path.display()))
        };
        if let Some(memory) = limits.memory {
            write("memory.max", memory.to_string())?;
            // No swap to hide in: the limit is the limit.
            let _ = std::fs::write(self.path.join("memory.swap.max"), "0");
        }
        if let Some(pids) = limits.pids {
            write("pids.max", pids.to_string())?;
        }
        if let Some(millis) = limits.cpu_millis {
            const PERIOD_US: u64 = 100_000;
            write(
                "cpu.max",
                format!("{} {PERIOD_US}", u64::from(millis) * PERIOD_US / 1000),
            )?;
        }
        Ok(())
    }

    /// True while any process is in it.
    #[must_use]
    pub fn is_populated(&self) -> bool {
        std::fs::read_to_string(self.path.join("cgroup.events"))
            .map(|events| events.lines().any(|l| l.trim() == "populated 1"))
            .unwrap_or(false)
    }

    /// SIGKILLs everything in it (`cgroup.kill`).
    pub fn kill(&self) {
        if let Err(err) = std::fs::write(self.path.join("cgroup.kill"), "1") {
            if err.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(cgroup = %self.path.display(), error = %err, "cgroup.kill failed");
            }
        }
    }

    /// Kills everything in it, waits until it is empty, and removes it. False when it did not
    /// empty in time (it is then left for the next attempt).
    pub async fn kill_and_remove(&self) -> bool {
        if !self.path.exists() {
            return true;
        }
        self.kill();
        let deadline = tokio::time::Instant::now() + EMPTY_TIMEOUT;
        while self.is_populated() {
            if tokio::time::Instant::now() >= deadline {
                tracing::error!(cgroup = %self.path.display(), "the job's cgroup did not empty after cgroup.kill");
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if let Err(err) = std::fs::remove_dir(&self.path) {
            tracing::warn!(cgroup = %self.path.display(), error = %err, "cannot remove the job's cgroup");
        }
        true
    }
}

/// The cgroup v2 mount point, from `/proc/self/mountinfo`.
fn unified_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    shared::cgroup::unified_mount(&mountinfo).map(PathBuf::from)
}

/// This process's cgroup v2 path.
fn own_cgroup() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    shared::cgroup::own_cgroup(&text).map(str::to_owned)
}

fn read_words(path: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .map(|t| t.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}
