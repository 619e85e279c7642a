//! Spawning a conductor: everything it needs is prepared before the fork ([`SpawnConfig`]), the
//! child runs only async-signal-safe system calls on it (module `child`), and the parent gets a pidfd
//! from the spawn itself, so that no exit, reap and pid reuse can come between the birth and the
//! handle that names it.
//!
//! How, in order of preference:
//! 1. `clone3(CLONE_PIDFD | CLONE_INTO_CGROUP)`: born in the job's cgroup. Moving a running
//!    process into a cgroup waits for an RCU grace period (about 8 ms measured, most of a job's
//!    start); a child born there costs nothing extra. On x86-64 with `CLONE_VM | CLONE_VFORK`
//!    too (module `clone3`): nothing of the daemon is copied.
//! 2. `clone3(CLONE_PIDFD)` when the kernel refuses `CLONE_INTO_CGROUP`: the child joins the
//!    cgroup (`cgroup.procs`) before it execs, so nothing of the job ever runs outside it.
//! 3. `fork` when `clone3` is missing (`ENOSYS`, also what container seccomp profiles answer):
//!    see module `fork` for how its pidfd is opened without a race.
//!
//! This module depends on [`crate::process`] only for the identity types and the registry lock
//! that the reaper and the orphan scan share; nothing there depends on it.

mod child;
mod clone3;
mod fork;

use crate::process::reaper::Children;
use crate::process::{ConductorId, Pidfd};
use anyhow::{Context, bail};
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The open files soft limit before the daemon raised it; conductors (and so their tasks) are
/// given it back.
static NOFILE_SOFT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Records the open files soft limit that conductors must get back; [`SpawnConfig::new`] puts
/// it in every config made afterwards.
pub fn remember_nofile_soft_limit(soft: u64) {
    let _ = NOFILE_SOFT.set(soft);
}

/// Everything a conductor's spawn needs, prepared before the fork: the child allocates nothing
/// and opens nothing but `cgroup.procs` (and only when it must join its cgroup itself).
/// Every descriptor here is close-on-exec; the child places copies at 0 to 3.
#[derive(Debug)]
pub struct SpawnConfig {
    pub program: CString,
    /// `argv[0]` included.
    pub argv: Vec<CString>,
    /// `KEY=VALUE` pairs.
    pub envp: Vec<CString>,
    /// The job's listening socket, placed at fd 3 (without close-on-exec there).
    pub listener: OwnedFd,
    /// The conductor's log, as its stderr.
    pub log: OwnedFd,
    /// `/dev/null`, as its stdin and stdout.
    pub null: OwnedFd,
    /// The job's cgroup directory, in cgroup mode.
    pub cgroup: Option<OwnedFd>,
    /// The open files soft limit to restore in the child.
    pub nofile_soft: Option<u64>,
}

impl SpawnConfig {
    /// A config for `program args` (the conductor's arguments: see
    /// `WorkerCommand::conductor_args`), with this process's environment, `listener` duplicated
    /// for fd 3, `log` opened for appending, and `cgroup` opened if given.
    pub fn new(
        program: &Path,
        args: &[String],
        listener: BorrowedFd<'_>,
        log: &Path,
        cgroup: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let argv = std::iter::once(program.as_os_str().as_bytes())
            .chain(args.iter().map(|a| a.as_bytes()))
            .map(cstring)
            .collect::<anyhow::Result<_>>()?;
        let envp = std::env::vars_os()
            .map(|(k, v)| cstring(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
            .collect::<anyhow::Result<_>>()?;
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let null = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .context("cannot open /dev/null")?;
        let cgroup = cgroup
            .map(|dir| {
                std::fs::File::open(dir).with_context(|| format!("cannot open {}", dir.display()))
            })
            .transpose()?;
        Ok(Self {
            program: cstring(program.as_os_str().as_bytes())?,
            argv,
            envp,
            listener: listener
                .try_clone_to_owned()
                .context("cannot duplicate the job's socket")?,
            log: log_file.into(),
            null: null.into(),
            cgroup: cgroup.map(OwnedFd::from),
            nofile_soft: NOFILE_SOFT.get().copied(),
        })
    }
}

fn cstring(bytes: &[u8]) -> anyhow::Result<CString> {
    CString::new(bytes).context("a NUL byte in the conductor's command or environment")
}

/// A conductor just spawned: its identity, and the pidfd that names it from its birth.
#[derive(Debug)]
pub struct Spawned {
    pub id: ConductorId,
    pub pidfd: Pidfd,
}

/// Spawns the conductor `config` describes, in a new session, with the listener as fd 3,
/// stdin and stdout on /dev/null and stderr on the log. With a cgroup, it runs nothing outside
/// it. Blocking (it waits until the child has exec'd, or reports why it could not): call it
/// from a blocking thread (`tokio::task::spawn_blocking`).
pub fn spawn_conductor(config: &SpawnConfig) -> anyhow::Result<Spawned> {
    let program = config.program.to_string_lossy().into_owned();
    spawn(config).with_context(|| format!("cannot start the conductor {program}"))
}

/// Binds a fresh listening socket at `socket` (0600, a stale file there replaced) and spawns
/// `program` with it as its fd 3, its stderr on `log`, born in `cgroup` if given: what every
/// conductor's launch does, warm or cold. Blocking; our end of the listener closes on return
/// (the conductor holds it).
pub fn spawn_listening(
    program: &Path,
    args: &[String],
    socket: &Path,
    log: &Path,
    cgroup: Option<&Path>,
) -> anyhow::Result<Spawned> {
    let _ = std::fs::remove_file(socket);
    let listener = std::os::unix::net::UnixListener::bind(socket)
        .with_context(|| format!("cannot bind the conductor's socket {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot set the mode of {}", socket.display()))?;
    let config = SpawnConfig::new(program, args, listener.as_fd(), log, cgroup)?;
    spawn_conductor(&config)
}

fn spawn(config: &SpawnConfig) -> anyhow::Result<Spawned> {
    let argv = null_terminated(&config.argv);
    let envp = null_terminated(&config.envp);
    // The child reports a failed exec through this pipe (close-on-exec: EOF means it worked).
    let (report_read, report_write) = pipe()?;
    let plan = child::Plan {
        program: config.program.as_ptr(),
        argv: &argv,
        envp: &envp,
        listener: config.listener.as_raw_fd(),
        null: config.null.as_raw_fd(),
        log: config.log.as_raw_fd(),
        report: report_write.as_raw_fd(),
        join_cgroup: None,
        nofile_soft: config.nofile_soft,
    };
    // Held from the birth to the registration: no orphan scan may take the new conductor for an
    // orphan, and (for `fork`) the reaper may not reap it before its pidfd is open.
    let mut children = Children::lock();
    let (pid, pidfd) = start(&plan, config.cgroup.as_ref())?;
    children.register(pid);
    // While the lock is held the child cannot be reaped: its /proc entry is its own, and the
    // start time read now names it.
    let start_time = crate::process::start_time(pid);
    drop(children);
    drop(report_write);
    // Named by its pid alone until the start time is known; only used to kill it on failure.
    let id = ConductorId {
        pid,
        start_time: start_time.unwrap_or(0),
    };
    let pidfd = Pidfd::from_owned(pidfd, id);
    let exec = match start_time {
        Some(_) => read_exec_report(&report_read),
        None => Err(anyhow::anyhow!("the new conductor has no /proc entry")),
    };
    match exec {
        Ok(None) => Ok(Spawned { id, pidfd }),
        // It exits with 127 by itself; the reaper collects it and forgets its registration.
        Ok(Some(errno)) => Err(std::io::Error::from_raw_os_error(errno).into()),
        Err(err) => {
            // Nobody would own it: it must not run on.
            let _ = pidfd.signal(nix::sys::signal::Signal::SIGKILL);
            Err(err)
        }
    }
}

/// Tries the ways to spawn in order (see the module doc), with the registry lock held.
fn start(plan: &child::Plan<'_>, cgroup: Option<&OwnedFd>) -> anyhow::Result<(i32, OwnedFd)> {
    let cgroup_fd = cgroup.map(AsRawFd::as_raw_fd);
    if fork_forced() {
        return fork::spawn(&cgroup_fd.map_or_else(|| plan.clone(), |fd| plan.joining(fd)));
    }
    if let Some(fd) = cgroup_fd {
        match clone3::spawn(plan, Some(fd))? {
            clone3::Outcome::Born(pid, pidfd) => return Ok((pid, pidfd)),
            clone3::Outcome::NoClone3 => return fork::spawn(&plan.joining(fd)),
            clone3::Outcome::NoIntoCgroup => {
                tracing::debug!("CLONE_INTO_CGROUP refused; the conductor joins its cgroup itself");
            }
        }
    }
    let plan = match cgroup_fd {
        Some(fd) => plan.joining(fd),
        None => plan.clone(),
    };
    match clone3::spawn(&plan, None)? {
        clone3::Outcome::Born(pid, pidfd) => Ok((pid, pidfd)),
        clone3::Outcome::NoClone3 | clone3::Outcome::NoIntoCgroup => fork::spawn(&plan),
    }
}

/// Waits for the child's exec: `None` when it exec'd (EOF), else the errno it reported.
fn read_exec_report(report: &OwnedFd) -> anyhow::Result<Option<i32>> {
    let mut errno = [0u8; 4];
    let mut got = 0;
    while got < errno.len() {
        // SAFETY: reading into our own buffer from a descriptor we own.
        let n = unsafe {
            libc::read(
                report.as_raw_fd(),
                errno[got..].as_mut_ptr().cast(),
                errno.len() - got,
            )
        };
        match n {
            0 if got == 0 => return Ok(None),
            0 => bail!("the conductor's exec report was cut short"),
            n if n > 0 => got += usize::try_from(n).unwrap_or(0),
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => {
                return Err(std::io::Error::last_os_error()).context("cannot read the exec report");
            }
        }
    }
    Ok(Some(i32::from_ne_bytes(errno)))
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

fn pipe() -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array we pass.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error()).context("cannot create the exec report pipe");
    }
    // SAFETY: both descriptors are new and ours alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Blocks every signal on this thread until dropped: between the clone and the child's reset
/// of its handlers, no handler of ours (tokio's) may run in the child.
struct SignalsBlocked {
    old: libc::sigset_t,
    /// The mask is per thread: the guard must be dropped where it was made.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl SignalsBlocked {
    fn new() -> std::io::Result<Self> {
        // SAFETY: sigfillset and pthread_sigmask on sets we own.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&raw mut all);
            let rc = libc::pthread_sigmask(libc::SIG_SETMASK, &raw const all, &raw mut old);
            if rc != 0 {
                return Err(std::io::Error::from_raw_os_error(rc));
            }
            Ok(Self {
                old,
                _not_send: std::marker::PhantomData,
            })
        }
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `new`, on the same thread (the guard is not Send).
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &raw const self.old, std::ptr::null_mut());
        }
    }
}

#[cfg(test)]
mod tests;

/// Tests take the `fork` fallback on request (on their own thread); elsewhere only what the
/// kernel accepts chooses the way.
#[cfg(test)]
use tests::fork_forced;
#[cfg(not(test))]
const fn fork_forced() -> bool {
    false
}
