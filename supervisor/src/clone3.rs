//! Spawning a conductor straight into its job's cgroup with `clone3(CLONE_INTO_CGROUP)`.
//!
//! Moving a running process into a cgroup (a write to `cgroup.procs`) waits for an RCU grace
//! period in the kernel: about 8 ms on the machines we measured, most of a job's start. A child
//! born in the cgroup costs nothing extra. Between `clone3` and `execve` the child calls only
//! async-signal-safe system calls on data prepared before the clone, as after a `fork`.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

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

/// What the child needs, prepared before the clone.
struct Exec {
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

fn cstring(bytes: &[u8]) -> std::io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a NUL byte in an argument",
        )
    })
}

/// Spawns `program args` in a new session, born in `cgroup_dir`, with `listen_fd` as fd 3,
/// /dev/null as stdin and stdout and `log` as stderr. `Ok(None)` when this kernel cannot do it
/// (no `clone3` or no `CLONE_INTO_CGROUP`): the caller falls back to moving the child.
pub fn spawn_into_cgroup(
    program: &Path,
    args: &[String],
    listen_fd: RawFd,
    log: &std::fs::File,
    cgroup_dir: &Path,
) -> std::io::Result<Option<i32>> {
    let exec = Exec {
        program: cstring(program.as_os_str().as_bytes())?,
        argv: std::iter::once(program.as_os_str().as_bytes())
            .chain(args.iter().map(|a| a.as_bytes()))
            .map(cstring)
            .collect::<std::io::Result<_>>()?,
        envp: std::env::vars_os()
            .map(|(k, v)| {
                let mut pair = k.as_bytes().to_vec();
                pair.push(b'=');
                pair.extend_from_slice(v.as_bytes());
                cstring(&pair)
            })
            .collect::<std::io::Result<_>>()?,
    };
    let mut argv: Vec<*const libc::c_char> = exec.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = exec.envp.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let cgroup = std::fs::File::open(cgroup_dir)?;
    let devnull = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    // The child reports a failed exec through this pipe (close-on-exec: EOF means it worked).
    let (report_read, report_write) = pipe()?;
    let log_fd = log.as_raw_fd();
    let null_fd = devnull.as_raw_fd();
    let report_fd = report_write.as_raw_fd();

    let mut clone_args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: u64::try_from(cgroup.as_raw_fd()).unwrap_or(0),
        ..CloneArgs::default()
    };
    // SAFETY: clone3 with no CLONE_VM duplicates this process like fork; the child runs only
    // the async-signal-safe calls of `child` on memory prepared above, then execs or exits.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            std::ptr::addr_of_mut!(clone_args),
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid == 0 {
        // SAFETY: see above; `child` never returns.
        unsafe {
            child(
                &exec.program,
                &argv,
                &envp,
                listen_fd,
                null_fd,
                log_fd,
                report_fd,
            )
        }
    }
    if pid < 0 {
        let err = std::io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENOSYS | libc::EINVAL | libc::E2BIG | libc::EOPNOTSUPP) => Ok(None),
            _ => Err(err),
        };
    }
    drop(report_write);
    let pid = i32::try_from(pid).map_err(|_| std::io::Error::other("pid out of range"))?;
    let mut errno = [0u8; 4];
    let mut got = 0;
    while got < errno.len() {
        // SAFETY: reading into our own buffer from a descriptor we own.
        let n = unsafe {
            libc::read(
                report_read.as_raw_fd(),
                errno[got..].as_mut_ptr().cast(),
                errno.len() - got,
            )
        };
        match n {
            0 => return Ok(Some(pid)),
            n if n > 0 => got += usize::try_from(n).unwrap_or(0),
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => return Err(std::io::Error::last_os_error()),
        }
    }
    // The exec failed; the reaper collects the child.
    Err(std::io::Error::from_raw_os_error(i32::from_ne_bytes(errno)))
}

/// The child between clone and exec: async-signal-safe calls only.
///
/// # Safety
/// Must run only in the freshly cloned child.
unsafe fn child(
    program: &CString,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    listen_fd: RawFd,
    null_fd: RawFd,
    log_fd: RawFd,
    report_fd: RawFd,
) -> ! {
    // SAFETY: plain system calls on descriptors and memory prepared by the parent.
    unsafe {
        crate::process::restore_nofile_soft_limit();
        let ok = libc::setsid() >= 0
            && restore_signals()
            && (if listen_fd == 3 {
                clear_cloexec(3)
            } else {
                libc::dup2(listen_fd, 3) == 3
            })
            && libc::dup2(null_fd, 0) == 0
            && libc::dup2(null_fd, 1) == 1
            && libc::dup2(log_fd, 2) == 2;
        if ok {
            libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr());
        }
        let errno = *libc::__errno_location();
        let bytes = errno.to_ne_bytes();
        libc::write(report_fd, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(127)
    }
}

/// As `std::process::Command` does: default dispositions for what Rust ignores (SIGPIPE) and
/// an empty signal mask.
unsafe fn restore_signals() -> bool {
    // SAFETY: sigemptyset/sigprocmask/signal are async-signal-safe.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) == 0
            && libc::signal(libc::SIGPIPE, libc::SIG_DFL) != libc::SIG_ERR
    }
}

unsafe fn clear_cloexec(fd: RawFd) -> bool {
    // SAFETY: fcntl on a descriptor number; async-signal-safe.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) >= 0
    }
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array we pass.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and ours alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
