//! The fallback where `clone3` is missing (`ENOSYS`): old kernels, and the seccomp profiles of
//! some container runtimes. A plain `fork`, then `pidfd_open`.
//!
//! The race it must not lose: the child exits at once, the reaper reaps it, and its pid goes to
//! another process before `pidfd_open`. It cannot happen here: the caller holds the registry
//! lock from before the fork until after `pidfd_open`, and the reaper reaps only under that
//! lock, so the pid stays our (possibly dead) child's while the pidfd is opened.

use super::SignalsBlocked;
use super::child::{self, Plan};
use anyhow::Context;
use std::os::fd::{FromRawFd, OwnedFd};

/// Forks a child that runs `plan` (which joins the cgroup itself, if any) and opens its pidfd.
/// The caller holds the registry lock.
pub(super) fn spawn(plan: &Plan<'_>) -> anyhow::Result<(i32, OwnedFd)> {
    let blocked = SignalsBlocked::new().context("cannot block signals for the spawn")?;
    // SAFETY: the child runs only `child::run` (async-signal-safe calls on memory prepared
    // before the fork), then execs or exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: we are the new child, with every signal blocked; `run` never returns.
        unsafe { child::run(plan) }
    }
    let err = std::io::Error::last_os_error();
    drop(blocked);
    if pid < 0 {
        return Err(err).context("fork failed");
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if raw < 0 {
        let err = std::io::Error::last_os_error();
        // Without a pidfd nothing could watch it: it must not run.
        // SAFETY: our own child, not reaped (the registry lock is held).
        unsafe { libc::kill(pid, libc::SIGKILL) };
        return Err(err).context("pidfd_open failed (Linux 5.3 or later is needed)");
    }
    let raw = i32::try_from(raw).context("pidfd out of range")?;
    // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
    Ok((pid, unsafe { OwnedFd::from_raw_fd(raw) }))
}
