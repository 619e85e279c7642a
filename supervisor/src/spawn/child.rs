//! The child between its birth and `execve`: only async-signal-safe system calls, on memory and
//! descriptors the parent prepared. It allocates nothing, takes no lock, and calls no libc
//! function that reads the thread's cached state.
//!
//! Why glibc's stale cached TID is safe: after a raw `clone3` (or in any child of a threaded
//! parent) glibc's per-thread block still holds the parent thread's TID. Only pthread calls
//! (`pthread_kill`, `raise`, `abort`, mutexes with owner checks) read it; the code below makes
//! plain system calls (`open`, `write`, `dup2`, `setsid`, `sigaction`, `sigprocmask`,
//! `execve`, `_exit`) and none of those, so the stale value is never used.

use std::os::fd::RawFd;

/// What the child does, all prepared by the parent. Raw numbers and pointers: the child only
/// reads them, and the parent keeps their owners alive until the child has exec'd.
#[derive(Clone)]
pub(super) struct Plan<'a> {
    pub program: *const libc::c_char,
    /// Null-terminated.
    pub argv: &'a [*const libc::c_char],
    /// Null-terminated.
    pub envp: &'a [*const libc::c_char],
    pub listener: RawFd,
    pub null: RawFd,
    pub log: RawFd,
    /// Where to write the errno of a failed exec (close-on-exec).
    pub report: RawFd,
    /// The cgroup directory to join through `cgroup.procs`, when the child was not born in it.
    pub join_cgroup: Option<RawFd>,
    pub nofile_soft: Option<u64>,
}

impl Plan<'_> {
    /// The same plan, with the child joining the cgroup `dir` itself.
    pub fn joining(&self, dir: RawFd) -> Self {
        Self {
            join_cgroup: Some(dir),
            ..self.clone()
        }
    }
}

/// The lowest descriptor the child moves its sources to before placing them at 0 to 3.
const ABOVE_STDIO: RawFd = 4;

/// Runs in the child: joins the cgroup if asked, restores the nofile limit, starts a session,
/// places the descriptors, resets the signal handlers and mask, and execs. On any failure it
/// writes the errno to the report pipe and exits with 127.
///
/// # Safety
/// Call only in a freshly forked or cloned child, with every signal blocked.
pub(super) unsafe fn run(plan: &Plan<'_>) -> ! {
    // SAFETY: plain system calls on descriptors and memory the parent prepared.
    unsafe {
        // First, so that a failure after it can still be reported: the report fd may be 0 to 3.
        let moved_report = libc::fcntl(plan.report, libc::F_DUPFD_CLOEXEC, ABOVE_STDIO);
        let report = if moved_report < 0 {
            plan.report
        } else {
            moved_report
        };
        let ok = plan.join_cgroup.is_none_or(|dir| join_cgroup(dir))
            && restore_nofile(plan.nofile_soft)
            && libc::setsid() >= 0
            && place_descriptors(plan)
            && reset_signals();
        close_others_on_exec();
        if ok {
            libc::execve(plan.program, plan.argv.as_ptr(), plan.envp.as_ptr());
        }
        let errno = *libc::__errno_location();
        let bytes = errno.to_ne_bytes();
        libc::write(report, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(127)
    }
}

/// Moves this process into the cgroup `dir` (a write of `0` to its `cgroup.procs`).
unsafe fn join_cgroup(dir: RawFd) -> bool {
    // SAFETY: openat/write/close on a descriptor and a static path; async-signal-safe.
    unsafe {
        let fd = libc::openat(
            dir,
            c"cgroup.procs".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return false;
        }
        let written = libc::write(fd, b"0".as_ptr().cast(), 1);
        libc::close(fd);
        written == 1
    }
}

/// Gives the conductor the open files soft limit the daemon had before raising it.
unsafe fn restore_nofile(soft: Option<u64>) -> bool {
    let Some(soft) = soft else { return true };
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a struct we own; both are async-signal-safe.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) != 0 {
            return false;
        }
        limit.rlim_cur = soft.min(limit.rlim_max);
        libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) == 0
    }
}

/// Places the listener at 3, /dev/null at 0 and 1, the log at 2. Each source is first copied
/// to a number above 3 (close-on-exec), because a source may itself be 0 to 3 and be
/// overwritten by an earlier `dup2`; `dup2` onto a different number also clears close-on-exec
/// on the target, which `dup2` of a descriptor onto itself would not.
unsafe fn place_descriptors(plan: &Plan<'_>) -> bool {
    // SAFETY: fcntl and dup2 on descriptor numbers; async-signal-safe.
    unsafe {
        let high = |fd: RawFd| libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, ABOVE_STDIO);
        let (listener, null, log) = (high(plan.listener), high(plan.null), high(plan.log));
        listener >= 0
            && null >= 0
            && log >= 0
            && libc::dup2(listener, 3) == 3
            && libc::dup2(null, 0) == 0
            && libc::dup2(null, 1) == 1
            && libc::dup2(log, 2) == 2
    }
}

/// Marks every descriptor above 3 close-on-exec, so that the conductor holds exactly 0 to 3,
/// even descriptors the supervisor itself inherited without close-on-exec (a jobserver pipe, a
/// socket from a service manager). Best effort: `close_range` needs Linux 5.11, and what we
/// opened ourselves is close-on-exec anyway.
unsafe fn close_others_on_exec() {
    // SAFETY: close_range is a plain system call on descriptor numbers.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            ABOVE_STDIO as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
    }
}

/// The highest signal number on Linux (`_NSIG - 1`).
const MAX_SIGNAL: libc::c_int = 64;

/// Resets every handled signal to its default action, and SIGPIPE (which Rust ignores) too,
/// as `std::process::Command` does; then unblocks everything. In that order: once unmasked, a
/// pending signal must find the default action, never a handler of the parent (tokio's, which
/// would write to the parent's signal pipe). The mask becomes empty, not the parent's: a
/// conductor starts like any process, whatever the spawning thread had blocked.
unsafe fn reset_signals() -> bool {
    // SAFETY: sigaction, sigemptyset and sigprocmask on structs we own; async-signal-safe.
    unsafe {
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        for sig in 1..=MAX_SIGNAL {
            let mut old: libc::sigaction = std::mem::zeroed();
            // Fails for SIGKILL/SIGSTOP and glibc's internal signals: none has a handler of ours.
            if libc::sigaction(sig, std::ptr::null(), &raw mut old) != 0 {
                continue;
            }
            let handled = old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN;
            if handled || sig == libc::SIGPIPE {
                libc::sigaction(sig, &raw const default, std::ptr::null_mut());
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &raw const empty, std::ptr::null_mut()) == 0
    }
}
