//! Reaping as a child subreaper, and the registry of the conductors this process spawned.
//!
//! The supervisor is a child subreaper: the tasks a dead conductor left behind become its
//! children, and it reaps everything that exits. Two facts need one lock:
//! - a child of ours that is not a registered conductor is such an orphan, and belongs to a
//!   job being killed ([`super::kill`]); so a spawn registers its conductor before anyone can
//!   scan (it holds the lock from the fork to the registration);
//! - a pid is reused only once it is reaped; so a spawn that must open a pidfd after a plain
//!   `fork` holds the same lock, and the reaper cannot reap the child before the pidfd names it.

use anyhow::Context;
use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The conductors this process spawned and that are not reaped yet.
static CONDUCTORS: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// The registry, locked: while it is held, no child is reaped and no orphan scan decides.
pub(crate) struct Children {
    guard: MutexGuard<'static, BTreeSet<i32>>,
}

impl Children {
    /// Locks the registry (and so the reaper). Hold it briefly: the reaper waits for it.
    pub fn lock() -> Self {
        Self {
            guard: CONDUCTORS.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }

    /// Records a child as a conductor (not an orphan), until the reaper reaps it.
    pub fn register(&mut self, pid: i32) {
        self.guard.insert(pid);
    }

    /// True when `pid` is a registered conductor.
    #[must_use]
    pub fn is_conductor(&self, pid: i32) -> bool {
        self.guard.contains(&pid)
    }
}

/// Makes this process a child subreaper and reaps every child that exits, for the rest of its
/// life. The supervisor spawns no other children, so `waitpid(-1)` steals from nobody.
pub fn start_reaper() -> anyhow::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).context("cannot become a child subreaper")?;
    let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
        .context("cannot handle SIGCHLD")?;
    tokio::spawn(async move {
        loop {
            reap_all();
            if sigchld.recv().await.is_none() {
                return;
            }
        }
    });
    Ok(())
}

/// Reaps every exited child (non-blocking). Under the registry's lock, so that a spawn that
/// holds it knows its child's pid stays its child's; a reaped conductor leaves the registry
/// at once, since its pid is free for reuse from now on.
fn reap_all() {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let mut children = Children::lock();
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(status) => {
                if let Some(pid) = status.pid() {
                    children.guard.remove(&pid.as_raw());
                }
                tracing::debug!(?status, "reaped");
            }
        }
    }
}
