//! What the job's `[limits]` mean for each task process: rlimits (nofile, core, cpu_time) and
//! the identity (user, group, and the user's supplementary groups), applied between fork and
//! exec; and, after a step, which limit it hit, so its failure says so (cpu_time: SIGXCPU;
//! memory: an OOM kill in the job's cgroup; pids: a refused fork in the job's cgroup).
//!
//! Everything is resolved before the fork (names to ids, the group list, the working directory
//! as a C string): between fork and exec only async-signal-safe system calls run, in this order:
//! the rlimits (while still root, so that raising one works), `setgroups`, `setgid`, `setuid`,
//! then `chdir` (as the task's user, so that it may only enter what that user may).

use nix::sys::resource::{Resource, setrlimit};
use nix::unistd::{Gid, Group, Uid, User, getgrouplist};
use shared::limits::Limits;
use std::ffi::CString;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;

/// A user's login identity: what a task running as that user sees as HOME, USER, LOGNAME and
/// SHELL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Login {
    pub name: String,
    pub home: String,
    pub shell: String,
}

impl Login {
    fn of(user: &User) -> Self {
        Self {
            name: user.name.clone(),
            home: user.dir.display().to_string(),
            shell: user.shell.display().to_string(),
        }
    }
}

/// What the conductor knows of itself before any job: the login of its own user (what tasks
/// that keep its identity see) and its cgroup directory (the job's, in cgroup mode: a
/// conductor is spawned into the cgroup it keeps). Looked up while the conductor waits for its
/// plan (a warm one waits long), not on the way from the plan to the first step.
#[derive(Clone, Debug, Default)]
pub struct Own {
    login: Option<Login>,
    cgroup: Option<PathBuf>,
}

impl Own {
    /// Looks up this process's own user (its password entry) and cgroup.
    #[must_use]
    pub fn look_up() -> Self {
        Self {
            login: User::from_uid(nix::unistd::geteuid())
                .ok()
                .flatten()
                .map(|u| Login::of(&u)),
            cgroup: own_cgroup_dir(),
        }
    }
}

/// The identity the task processes switch to.
#[derive(Clone, Debug)]
struct Identity {
    uid: Uid,
    gid: Gid,
    /// The user's supplementary groups (its group list, the primary group included).
    groups: Vec<libc::gid_t>,
}

/// The limits of every task process of the job.
#[derive(Debug, Default)]
pub struct TaskLimits {
    /// (resource, soft, hard)
    rlimits: Vec<(Resource, u64, u64)>,
    /// `None`: the tasks keep the conductor's identity.
    identity: Option<Identity>,
    /// The login of the user the tasks run as (the conductor's own without `user`), when its
    /// password entry is known.
    login: Option<Login>,
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
    /// Resolves the job's limits (user and group names to ids), for a conductor that is
    /// `own`.
    pub fn new(spec: &Limits, own: Own) -> Result<Self, String> {
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
        let (identity, login) = match &spec.user {
            Some(name) => {
                let (identity, login) = resolve_identity(name, spec.group.as_deref())?;
                (Some(identity), Some(login))
            }
            // Refused by validation; refused here too, rather than keep the conductor's user.
            None if spec.group.is_some() => {
                return Err("`group` needs `user` (the job's spec was not validated)".into());
            }
            None => (None, own.login),
        };
        Ok(Self {
            rlimits,
            identity,
            login,
            spec: spec.clone(),
            cgroup: own.cgroup,
        })
    }

    /// The login of the user the tasks run as, when known.
    #[must_use]
    pub fn login(&self) -> Option<&Login> {
        self.login.as_ref()
    }

    /// Whether the tasks switch to another user (then they get that user's login environment,
    /// not the conductor's).
    #[must_use]
    pub fn switches_user(&self) -> bool {
        self.identity.is_some()
    }

    /// Sets the rlimits, the identity and the working directory `cwd` on a task's command.
    pub fn apply(
        &self,
        command: &mut tokio::process::Command,
        cwd: Option<&str>,
    ) -> Result<(), String> {
        let Some(identity) = self.identity.clone() else {
            if let Some(cwd) = cwd {
                command.current_dir(cwd);
            }
            if !self.rlimits.is_empty() {
                let rlimits = self.rlimits.clone();
                // SAFETY: only setrlimit (async-signal-safe) runs, on a vector built before
                // the fork.
                unsafe {
                    command.pre_exec(move || set_rlimits(&rlimits));
                }
            }
            return Ok(());
        };
        let cwd = cwd
            .map(|dir| CString::new(dir).map_err(|_| format!("cwd {dir:?} holds a NUL byte")))
            .transpose()?;
        let rlimits = self.rlimits.clone();
        // SAFETY: between fork and exec only async-signal-safe system calls run (setrlimit,
        // setgroups, setgid, setuid, chdir), on data built before the fork; nothing allocates.
        unsafe {
            command.pre_exec(move || {
                set_rlimits(&rlimits)?;
                switch_identity(&identity)?;
                if let Some(dir) = &cwd {
                    if libc::chdir(dir.as_ptr()) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// The cgroup counters, before a step: only those of the limits the job sets (the others
    /// explain nothing, and each is a file read per step).
    #[must_use]
    pub fn counters(&self) -> Counters {
        let read = |limited: bool, file: &str, key: &str| {
            self.cgroup
                .as_ref()
                .filter(|_| limited)
                .and_then(|dir| std::fs::read_to_string(dir.join(file)).ok())
                .map_or(0, |text| shared::cgroup::counter(&text, key))
        };
        Counters {
            oom_kills: read(self.spec.memory.is_some(), "memory.events", "oom_kill"),
            pids_refused: read(self.spec.pids.is_some(), "pids.events", "max"),
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

/// Resolves `user` (and `group`, else the user's own) to ids and the user's group list.
fn resolve_identity(user: &str, group: Option<&str>) -> Result<(Identity, Login), String> {
    let entry = User::from_name(user)
        .map_err(|e| format!("cannot look up user {user:?}: {e}"))?
        .ok_or_else(|| format!("no user {user:?} on this host"))?;
    let gid = match group {
        Some(name) => {
            Group::from_name(name)
                .map_err(|e| format!("cannot look up group {name:?}: {e}"))?
                .ok_or_else(|| format!("no group {name:?} on this host"))?
                .gid
        }
        None => entry.gid,
    };
    let name = CString::new(user).map_err(|_| format!("user {user:?} holds a NUL byte"))?;
    let groups = getgrouplist(&name, gid)
        .map_err(|e| format!("cannot read the groups of user {user:?}: {e}"))?
        .into_iter()
        .map(Gid::as_raw)
        .collect();
    let identity = Identity {
        uid: entry.uid,
        gid,
        groups,
    };
    Ok((identity, Login::of(&entry)))
}

/// Between fork and exec: the rlimits, while the process may still raise them.
fn set_rlimits(rlimits: &[(Resource, u64, u64)]) -> std::io::Result<()> {
    for &(resource, soft, hard) in rlimits {
        setrlimit(resource, soft, hard)?;
    }
    Ok(())
}

/// Between fork and exec: the supplementary groups, the group, then the user (last: after it
/// the process may change none of them).
fn switch_identity(identity: &Identity) -> std::io::Result<()> {
    let check = |result: libc::c_int| {
        if result == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: plain system calls on values and a slice that live through the calls.
    unsafe {
        check(libc::setgroups(
            identity.groups.len(),
            identity.groups.as_ptr(),
        ))?;
        check(libc::setgid(identity.gid.as_raw()))?;
        check(libc::setuid(identity.uid.as_raw()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_user_the_tasks_keep_the_conductor_s_login() {
        let limits = TaskLimits::new(&Limits::default(), Own::look_up()).expect("no limits");
        assert!(!limits.switches_user());
        let me = User::from_uid(nix::unistd::geteuid()).ok().flatten();
        assert_eq!(limits.login().cloned(), me.as_ref().map(Login::of));
    }

    #[test]
    fn a_user_resolves_to_its_ids_login_and_groups() {
        let Ok(Some(root)) = User::from_uid(Uid::from_raw(0)) else {
            return;
        };
        let spec = Limits {
            user: Some(root.name.clone()),
            ..Limits::default()
        };
        let limits = TaskLimits::new(&spec, Own::default()).expect("root resolves");
        assert!(limits.switches_user());
        let identity = limits.identity.as_ref().expect("an identity");
        assert_eq!((identity.uid, identity.gid), (root.uid, root.gid));
        assert!(identity.groups.contains(&root.gid.as_raw()));
        assert_eq!(limits.login().map(|l| l.home.as_str()), Some("/root"));
    }

    #[test]
    fn unknown_users_and_a_lone_group_are_errors() {
        let spec = Limits {
            user: Some("no-such-user-here".into()),
            ..Limits::default()
        };
        let problem = TaskLimits::new(&spec, Own::default()).expect_err("unknown");
        assert!(problem.contains("no user"), "{problem}");
        let spec = Limits {
            group: Some("root".into()),
            ..Limits::default()
        };
        let problem = TaskLimits::new(&spec, Own::default()).expect_err("group alone");
        assert!(problem.contains("needs `user`"), "{problem}");
    }
}
