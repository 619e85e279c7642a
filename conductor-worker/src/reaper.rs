//! The conductor is a child subreaper: orphans of its tasks (background children whose parent
//! exited) become its children instead of init's, so they stay inside the job's process tree and
//! are reaped promptly here.
//!
//! tokio reaps the step processes it spawned. Reaping with `waitpid(-1)` would steal their exit
//! statuses, so on each SIGCHLD this reaps, by pid, only the children that tokio does not own.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::signal::unix::{SignalKind, signal};

/// The pids of the step processes that tokio owns and reaps itself.
#[derive(Clone, Default)]
pub struct OwnedChildren(Arc<Mutex<HashSet<u32>>>);

/// Keeps a pid in [`OwnedChildren`] while it lives.
pub struct Owned {
    set: OwnedChildren,
    pid: u32,
}

impl OwnedChildren {
    /// Marks `pid` as tokio's until the returned guard drops (after tokio reaped it).
    #[must_use]
    pub fn own(&self, pid: u32) -> Owned {
        self.lock().insert(pid);
        Owned {
            set: self.clone(),
            pid,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<u32>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn contains(&self, pid: u32) -> bool {
        self.lock().contains(&pid)
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.set.lock().remove(&self.pid);
    }
}

/// Becomes a child subreaper and reaps inherited orphans for the rest of the process's life.
pub fn start(owned: OwnedChildren) -> anyhow::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)?;
    let mut sigchld = signal(SignalKind::child())?;
    tokio::spawn(async move {
        while sigchld.recv().await.is_some() {
            reap_orphans(&owned);
        }
    });
    Ok(())
}

/// The children of `pid` (of all its threads).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    threads
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// SIGKILLs every descendant of this process: at the job's end nothing of it may outlive it,
/// not even a task's child that left its process group or session (as a subreaper, this process
/// inherited it). Returns how many it killed.
pub fn kill_descendants() -> usize {
    use nix::sys::signal::{Signal, kill};
    let mut seen = HashSet::new();
    let mut queue = children_of(std::process::id());
    while let Some(pid) = queue.pop() {
        if !seen.insert(pid) {
            continue;
        }
        let Ok(raw) = i32::try_from(pid) else {
            continue;
        };
        let target = nix::unistd::Pid::from_raw(raw);
        // Stopped first, so that it cannot fork while its children are listed.
        let _ = kill(target, Signal::SIGSTOP);
        queue.extend(children_of(pid));
        let _ = kill(target, Signal::SIGKILL);
    }
    seen.len()
}

fn reap_orphans(owned: &OwnedChildren) {
    for pid in children_of(std::process::id()) {
        if owned.contains(pid) {
            continue;
        }
        let Ok(raw) = i32::try_from(pid) else {
            continue;
        };
        let flags = nix::sys::wait::WaitPidFlag::WNOHANG;
        if let Ok(status) = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(raw), Some(flags)) {
            tracing::debug!(pid, ?status, "reaped an orphan");
        }
    }
}
