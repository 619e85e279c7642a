//! What the job's `[limits]` mean for each task process: rlimits (nofile, core, cpu_time) and
//! the identity (user, group), applied between fork and exec; and, after a step, which limit it
//! hit, so its failure says so (cpu_time: SIGXCPU; memory: an OOM kill in the job's cgroup; pids:
//! a refused fork in the job's cgroup).

use nix::sys::resource::{Resource, setrlimit};
use nix::unistd::{Gid, Group, Uid, User};
use shared::limits::Limits;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;

/// The limits of every task process of the job.
#[derive(Debug, Default)]
pub struct TaskLimits {
    /// (resource, soft, hard)
    rlimits: Vec<(Resource, u64, u64)>,
    uid: Option<Uid>,
    gid: Option<Gid>,
    spec: Limits,
    /// The job's cgroup directory (this conductor's own), when there is one.
    cgroup: Option<PathBuf>,
}

/// The cgroup's limit counters before a step.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    oom_kills: u64,
    pids_refused: u64,
}

impl TaskLimits {
    /// Resolves the job's limits (user and group names to ids).
    pub fn new(spec: &Limits) -> Result<Self, String> {
        let mut rlimits = Vec::new();
        if let Some(n) = spec.nofile {
            rlimits.push((Resource::RLIMIT_NOFILE, n, n));
        }
        if let Some(bytes) = spec.core {
            rlimits.push((Resource::RLIMIT_CORE, bytes, bytes));
        }
        if let Some(cpu) = spec.cpu_time {
            // The hard limit a second later: SIGXCPU at the soft one says which limit it was.
            let seconds = cpu.as_secs().max(1);
            rlimits.push((Resource::RLIMIT_CPU, seconds, seconds + 1));
        }
        let user = match &spec.user {
            Some(name) => Some(
                User::from_name(name)
                    .map_err(|e| format!("cannot look up user {name:?}: {e}"))?
                    .ok_or_else(|| format!("no user {name:?} on this host"))?,
            ),
            None => None,
        };
        let gid = match &spec.group {
            Some(name) => Some(
                Group::from_name(name)
                    .map_err(|e| format!("cannot look up group {name:?}: {e}"))?
                    .ok_or_else(|| format!("no group {name:?} on this host"))?
                    .gid,
            ),
            None => user.as_ref().map(|u| u.gid),
        };
        Ok(Self {
            rlimits,
            uid: user.map(|u| u.uid),
            gid,
            spec: spec.clone(),
            cgroup: own_cgroup_dir(),
        })
    }

    /// Sets the identity and rlimits on a task's command.
    pub fn apply(&self, command: &mut tokio::process::Command) {
        if let Some(gid) = self.gid {
            command.gid(gid.as_raw());
        }
        if let Some(uid) = self.uid {
            command.uid(uid.as_raw());
        }
        if !self.rlimits.is_empty() {
            let rlimits = self.rlimits.clone();
            // SAFETY: setrlimit is async-signal-safe; the vector was built before the fork.
            unsafe {
                command.pre_exec(move || {
                    for &(resource, soft, hard) in &rlimits {
                        setrlimit(resource, soft, hard)?;
                    }
                    Ok(())
                });
            }
        }
    }

    /// The cgroup counters, before a step.
    #[must_use]
    pub fn counters(&self) -> Counters {
        let read = |file: &str, key: &str| {
            self.cgroup
                .as_ref()
                .and_then(|dir| std::fs::read_to_string(dir.join(file)).ok())
                .map_or(0, |text| shared::cgroup::counter(&text, key))
        };
        Counters {
            oom_kills: read("memory.events", "oom_kill"),
            pids_refused: read("pids.events", "max"),
        }
    }

    /// Which limit a failed step hit, if one did.
    #[must_use]
    pub fn explain(&self, before: Counters, status: Option<ExitStatus>) -> Option<String> {
        let after = self.counters();
        if self.spec.memory.is_some() && after.oom_kills > before.oom_kills {
            return Some(format!(
                "memory limit reached ({} bytes): killed by the OOM killer",
                self.spec.memory.unwrap_or(0)
            ));
        }
        if let Some(cpu) = self.spec.cpu_time {
            if status.and_then(|s| s.signal()) == Some(libc::SIGXCPU) {
                return Some(format!(
                    "cpu_time limit reached ({})",
                    shared::duration::format_duration(cpu)
                ));
            }
        }
        if self.spec.pids.is_some() && after.pids_refused > before.pids_refused {
            return Some(format!(
                "pids limit reached ({}): a fork was refused",
                self.spec.pids.unwrap_or(0)
            ));
        }
        None
    }
}

/// This process's cgroup v2 directory (the job's cgroup in cgroup mode).
fn own_cgroup_dir() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = shared::cgroup::unified_mount(&mountinfo)?;
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let own = shared::cgroup::own_cgroup(&text)?;
    Some(PathBuf::from(mount).join(own.trim_start_matches('/')))
}
