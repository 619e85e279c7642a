//! `clone3` with `CLONE_PIDFD`: the kernel hands us a pidfd for the child at its birth, so no
//! exit, reap or pid reuse can come between the child and the handle that names it. With a
//! cgroup, `CLONE_INTO_CGROUP` makes the child born in it.

use super::SignalsBlocked;
use super::child::{self, Plan};
use anyhow::Context;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// `CLONE_INTO_CGROUP` (Linux 5.7).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The kernel's `struct clone_args` (version 2, with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// What a `clone3` attempt gave.
pub(super) enum Outcome {
    /// The child's pid and its pidfd.
    Born(i32, OwnedFd),
    /// No `clone3` here (`ENOSYS`: an old kernel, or a seccomp filter).
    NoClone3,
    /// `clone3` works, but not `CLONE_INTO_CGROUP` into this cgroup.
    NoIntoCgroup,
}

/// Clones a child that runs `plan`, born in `cgroup` if given. The caller holds the registry
/// lock; every signal is blocked from just before the clone until the parent returns.
pub(super) fn spawn(plan: &Plan<'_>, cgroup: Option<RawFd>) -> anyhow::Result<Outcome> {
    let mut pidfd: RawFd = -1;
    let mut args = CloneArgs {
        flags: libc::CLONE_PIDFD as u64,
        pidfd: std::ptr::addr_of_mut!(pidfd) as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    if let Some(dir) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = u64::try_from(dir).context("bad cgroup descriptor")?;
    }
    let blocked = SignalsBlocked::new().context("cannot block signals for the spawn")?;
    // SAFETY: clone3 without CLONE_VM duplicates this process like fork; the child runs only
    // `child::run` (async-signal-safe calls on memory prepared before), then execs or exits.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            std::ptr::addr_of_mut!(args),
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid == 0 {
        // SAFETY: we are the new child, with every signal blocked; `run` never returns.
        unsafe { child::run(plan) }
    }
    let err = std::io::Error::last_os_error();
    drop(blocked);
    if pid < 0 {
        return match err.raw_os_error() {
            Some(libc::ENOSYS) => Ok(Outcome::NoClone3),
            // EINVAL/E2BIG: a kernel without CLONE_INTO_CGROUP; EOPNOTSUPP/EBUSY: a cgroup that
            // cannot take a process that way (threaded, or with controllers in the way).
            Some(libc::EINVAL | libc::E2BIG | libc::EOPNOTSUPP | libc::EBUSY)
                if cgroup.is_some() =>
            {
                Ok(Outcome::NoIntoCgroup)
            }
            Some(libc::EINVAL | libc::E2BIG) => Ok(Outcome::NoClone3),
            _ => Err(err).context("clone3 failed"),
        };
    }
    let pid = i32::try_from(pid).context("pid out of range")?;
    // SAFETY: CLONE_PIDFD stored a new descriptor, ours alone, in `pidfd`.
    Ok(Outcome::Born(pid, unsafe { OwnedFd::from_raw_fd(pidfd) }))
}
