//! `clone3` with `CLONE_PIDFD`: the kernel hands us a pidfd for the child at its birth, so no
//! exit, reap or pid reuse can come between the child and the handle that names it. With a
//! cgroup, `CLONE_INTO_CGROUP` makes the child born in it.
//!
//! On x86-64 the child is also cloned with `CLONE_VM | CLONE_VFORK`, as `posix_spawn` does: it
//! runs on a stack of its own in the daemon's memory, and the spawning thread waits until it has
//! exec'd or exited. Nothing of the daemon is copied: without `CLONE_VM`, a clone copies the
//! page tables of the whole daemon and write-protects every page of it, and each page the daemon
//! writes afterwards faults and is copied (with a TLB shootdown across its threads), a cost that
//! grows with the daemon's memory, so with its live jobs. The child's code (module `child`)
//! writes nothing but its own stack and `errno`, which is what sharing the memory needs.

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
    let pid = clone(&mut args, plan)?;
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

/// The child's stack under `CLONE_VM` (it runs `child::run`: a few system calls, no recursion).
#[cfg(target_arch = "x86_64")]
const CHILD_STACK: usize = 64 * 1024;

/// `clone3(args)`, the child running `plan` on a stack of its own in this process's memory
/// (`CLONE_VM | CLONE_VFORK`, see the module doc); returns what the parent got.
#[cfg(target_arch = "x86_64")]
fn clone(args: &mut CloneArgs, plan: &Plan<'_>) -> anyhow::Result<libc::c_long> {
    let stack = ChildStack::new().context("cannot map the child's stack")?;
    args.flags |= (libc::CLONE_VM | libc::CLONE_VFORK) as u64;
    args.stack = stack.base as u64;
    args.stack_size = CHILD_STACK as u64;
    let ret: libc::c_long;
    // SAFETY: the parent resumes only once the child has exec'd or exited (CLONE_VFORK), so its
    // stack (unmapped when `stack` drops, after that) is never pulled from under it. The child
    // starts on that stack at the instruction after `syscall` (rax 0), and calls
    // `child_entry`, which never returns. Its signals are blocked (the caller's mask), so no
    // handler of the daemon runs on its stack or in its place.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "and rsp, -16",
            "mov rdi, r12",
            "call {entry}",
            "ud2",
            "2:",
            entry = sym child_entry,
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") std::ptr::from_mut(args),
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") std::ptr::from_ref(plan),
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    // The raw system call returns -errno; `syscall(3)` would have set errno instead.
    if ret < 0 {
        let errno = i32::try_from(-ret).unwrap_or(libc::EINVAL);
        // SAFETY: this thread's errno, read back by the caller as the last OS error.
        unsafe { *libc::__errno_location() = errno };
        return Ok(-1);
    }
    Ok(ret)
}

/// The child's first Rust frame under `CLONE_VM`.
///
/// # Safety
/// Reached only from [`clone`]'s child branch, with `plan` the parent's, alive until exec.
#[cfg(target_arch = "x86_64")]
unsafe extern "C" fn child_entry(plan: *const Plan<'static>) -> ! {
    // SAFETY: see above; every signal is blocked in the new child.
    unsafe { child::run(&*plan) }
}

/// A stack for the child, unmapped when dropped.
#[cfg(target_arch = "x86_64")]
struct ChildStack {
    base: *mut libc::c_void,
}

#[cfg(target_arch = "x86_64")]
impl ChildStack {
    fn new() -> std::io::Result<Self> {
        // SAFETY: a fresh private anonymous mapping, ours alone.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                CHILD_STACK,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { base })
    }
}

#[cfg(target_arch = "x86_64")]
impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, no longer used (the child exec'd or exited).
        unsafe { libc::munmap(self.base, CHILD_STACK) };
    }
}

/// `clone3(args)` with fork semantics (no `CLONE_VM`) where the child cannot be started on a
/// stack of its own without architecture-specific code.
#[cfg(not(target_arch = "x86_64"))]
fn clone(args: &mut CloneArgs, plan: &Plan<'_>) -> anyhow::Result<libc::c_long> {
    // SAFETY: clone3 without CLONE_VM duplicates this process like fork; the child runs only
    // `child::run` (async-signal-safe calls on memory prepared before), then execs or exits.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            std::ptr::from_mut(args),
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid == 0 {
        // SAFETY: we are the new child, with every signal blocked; `run` never returns.
        unsafe { child::run(plan) }
    }
    Ok(pid)
}
