//! Linux process details, kept in one place: spawning a conductor in its own session with its
//! inherited socket, recognising a pid again (start time), waiting for a non-child's exit (pidfd),
//! killing everything of a job, and reaping as a child subreaper.

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::io::unix::AsyncFd;

/// How the supervisor starts the conductor program.
#[derive(Clone, Debug)]
pub struct WorkerCommand {
    pub program: PathBuf,
    /// Arguments before the conductor's own (the hidden `conductor` subcommand when the
    /// supervisor binary serves as its own worker).
    pub leading_args: Vec<String>,
}

impl WorkerCommand {
    /// `explicit` (flag or `$SUPERVISOR_CONDUCTOR_BIN`), else the `conductor-worker` binary next
    /// to this one, else this binary itself in conductor mode: no PATH setup is ever needed.
    pub fn locate(explicit: Option<PathBuf>) -> anyhow::Result<Self> {
        if let Some(program) = explicit {
            if !program.is_file() {
                bail!("conductor binary {} does not exist", program.display());
            }
            return Ok(Self {
                program,
                leading_args: Vec::new(),
            });
        }
        let me = std::env::current_exe().context("cannot find the supervisor's own binary")?;
        let sibling = me.with_file_name("conductor-worker");
        if sibling.is_file() {
            return Ok(Self {
                program: sibling,
                leading_args: Vec::new(),
            });
        }
        Ok(Self {
            program: me,
            leading_args: vec!["conductor".into()],
        })
    }
}

impl WorkerCommand {
    /// Where a job file's `worker` is: a bare name next to this binary, a path relative to the
    /// job file.
    pub fn resolve(worker: &str, job_file: &Path) -> anyhow::Result<PathBuf> {
        let path = if worker.contains('/') {
            let base = job_file
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            base.join(worker)
        } else {
            std::env::current_exe()
                .context("cannot find the supervisor's own binary")?
                .with_file_name(worker)
        };
        let path = std::fs::canonicalize(&path).with_context(|| {
            format!(
                "worker {worker:?} not found at {} (build it first?)",
                path.display()
            )
        })?;
        Ok(path)
    }
}

/// How long a worker has to answer `--list-kinds`.
const LIST_KINDS_TIMEOUT: Duration = Duration::from_secs(10);

/// The native kinds a worker binary provides (`WORKER --list-kinds`, one per line).
pub fn list_kinds(program: &Path) -> anyhow::Result<Vec<String>> {
    let mut child = Command::new(program)
        .arg("--list-kinds")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run worker {}", program.display()))?;
    let started = std::time::Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if started.elapsed() > LIST_KINDS_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "worker {} did not answer --list-kinds in time",
                program.display()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "worker {} --list-kinds failed: {}",
            program.display(),
            output.status
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// A running conductor this supervisor spawned.
pub struct Spawned {
    pub pid: i32,
    pub start_time: u64,
}

/// Spawns the conductor in a new session, with `listener` as its file descriptor 3, stdin and
/// stdout on /dev/null and stderr appended to `log`. With `cgroup`, it is born in that cgroup
/// (`clone3`), or else joins it before it runs any code of its own: nothing of the job ever runs
/// outside it.
pub fn spawn_conductor(
    worker: &WorkerCommand,
    job_id: &str,
    listener: &std::os::unix::net::UnixListener,
    log: &Path,
    cgroup: Option<&Path>,
) -> anyhow::Result<Spawned> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let listen_fd = listener.as_raw_fd();
    let args: Vec<String> = worker
        .leading_args
        .iter()
        .cloned()
        .chain([
            "--job-id".to_owned(),
            job_id.to_owned(),
            "--listen-fd".to_owned(),
            "3".to_owned(),
        ])
        .collect();
    if let Some(dir) = cgroup {
        // Held from clone to registration, so that no orphan scan mistakes the new conductor.
        let mut registry = conductors();
        let born =
            crate::clone3::spawn_into_cgroup(&worker.program, &args, listen_fd, &log_file, dir)
                .with_context(|| {
                    format!("cannot start the conductor {}", worker.program.display())
                })?;
        if let Some(pid) = born {
            registry.insert(pid);
            drop(registry);
            let start_time = start_time(pid).context("the conductor died at once")?;
            return Ok(Spawned { pid, start_time });
        }
    }
    let cgroup_procs = cgroup
        .map(|dir| std::ffi::CString::new(dir.join("cgroup.procs").as_os_str().as_encoded_bytes()))
        .transpose()
        .context("cgroup path holds a NUL byte")?;
    let mut command = Command::new(&worker.program);
    command
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file);
    // SAFETY: between fork and exec only async-signal-safe calls happen: open, write, close,
    // setsid, dup2, fcntl; the path was prepared before the fork.
    unsafe {
        command.pre_exec(move || {
            if let Some(procs) = &cgroup_procs {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if written != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            restore_nofile_soft_limit();
            nix::unistd::setsid()?;
            if listen_fd == 3 {
                // dup2 onto itself keeps close-on-exec: clear it instead.
                let flags = libc::fcntl(3, libc::F_GETFD);
                if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(listen_fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Held from fork to registration, so that no orphan scan mistakes the new conductor.
    let mut registry = conductors();
    let child = command
        .spawn()
        .with_context(|| format!("cannot start the conductor {}", worker.program.display()))?;
    let pid = i32::try_from(child.id()).context("pid out of range")?;
    registry.insert(pid);
    drop(registry);
    // The reaper owns the exit status from here on; `child` is only a handle.
    drop(child);
    let start_time = start_time(pid).context("the conductor died at once")?;
    Ok(Spawned { pid, start_time })
}

/// The open files soft limit before the daemon raised it; conductors (and so their tasks) are
/// given it back.
static NOFILE_SOFT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Records the soft limit that conductors must get back.
pub fn remember_nofile_soft_limit(soft: u64) {
    let _ = NOFILE_SOFT.set(soft);
}

/// In a child between fork and exec: restores the original soft limit (async-signal-safe).
pub(crate) fn restore_nofile_soft_limit() {
    if let Some(&soft) = NOFILE_SOFT.get() {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit on a struct we own; both are async-signal-safe.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
                limit.rlim_cur = soft;
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
        }
    }
}

/// Fields of `/proc/PID/stat` we use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    pub start_time: u64,
}

/// Parses `/proc/PID/stat` text (the command name may hold spaces and parentheses).
#[must_use]
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        session: fields.get(3)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// A process's stat, or `None` when it is gone.
#[must_use]
pub fn stat(pid: i32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// A process's start time (clock ticks since boot): with the pid, it names one process.
#[must_use]
pub fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|s| s.start_time)
}

/// This process's identity as a job's supervisor, as the store records it.
#[must_use]
pub fn own_supervisor_id() -> crate::store::SupervisorId {
    let pid = std::process::id();
    let start_time = i32::try_from(pid).ok().and_then(start_time).unwrap_or(0);
    crate::store::SupervisorId { pid, start_time }
}

/// True when `pid` is alive (not a zombie) and is still the process that started at `start`.
#[must_use]
pub fn is_same_process(pid: i32, start: u64) -> bool {
    stat(pid).is_some_and(|s| s.start_time == start && s.state != 'Z' && s.state != 'X')
}

/// Waits until a process is gone (exited, zombie or not), via a pidfd.
pub struct ExitWatch {
    fd: Option<AsyncFd<OwnedFd>>,
    pid: i32,
}

impl ExitWatch {
    pub fn new(pid: i32) -> Self {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let fd = i32::try_from(raw)
            .ok()
            .filter(|&fd| fd >= 0)
            .and_then(|fd| {
                // SAFETY: the kernel just gave us this descriptor; we own it alone, and the pidfd
                // stays registered and open for as long as the AsyncFd lives.
                unsafe {
                    AsyncFd::register_with_interest(
                        OwnedFd::from_raw_fd(fd),
                        tokio::io::Interest::READABLE,
                    )
                }
                .ok()
            });
        Self { fd, pid }
    }

    /// Resolves once the process has exited.
    pub async fn exited(&self) {
        match &self.fd {
            Some(fd) => {
                let _ = fd.readable().await;
            }
            // No pidfd (process already gone, or an old kernel): poll /proc.
            None => {
                while stat(self.pid).is_some_and(|s| s.state != 'Z' && s.state != 'X') {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}

/// The conductors this process spawned and that still run. Any other child of the supervisor
/// is an orphan that a dead conductor left behind (the supervisor is a subreaper and spawns
/// nothing else), and is killed as part of that job.
static CONDUCTORS: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

fn conductors() -> std::sync::MutexGuard<'static, BTreeSet<i32>> {
    CONDUCTORS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Forgets a conductor once it is gone (its pid may be reused).
pub fn forget_conductor(pid: i32) {
    conductors().remove(&pid);
}

/// Every live process on this host, with its stat.
fn all_processes() -> Vec<(i32, ProcStat)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .filter(|(_, s)| s.state != 'Z' && s.state != 'X')
        .collect()
}

/// Every live process of the job: the conductor, its session, the known task groups, the
/// orphans the supervisor adopted from a dead conductor, and every descendant of those (a task
/// that left its group or session still has a parent in the job). `known` are processes found
/// earlier: they count as long as they live, whatever their parent is now.
fn job_processes(
    conductor: &ConductorId,
    groups: &BTreeSet<i32>,
    known: &BTreeSet<i32>,
) -> BTreeSet<i32> {
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    let all = all_processes();
    // Read after the scan: a conductor seen in it was forked before, and its spawn (which holds
    // the lock from fork to registration) has registered it by the time the lock is ours.
    let live_conductors = conductors().clone();
    // A live process with the conductor's pid but another start time is a stranger that got
    // the pid after the conductor died: then neither the pid nor its session are the job's.
    let recycled = all
        .iter()
        .any(|(pid, s)| *pid == conductor.pid && s.start_time != conductor.start_time);
    let by_conductor =
        |pid: i32, s: &ProcStat| !recycled && (pid == conductor.pid || s.session == conductor.pid);
    let mut found: BTreeSet<i32> = all
        .iter()
        .filter(|(pid, s)| {
            by_conductor(*pid, s)
                || groups.contains(&s.pgrp)
                || known.contains(pid)
                || (s.ppid == me && !live_conductors.contains(pid))
        })
        .map(|(pid, _)| *pid)
        .collect();
    loop {
        let before = found.len();
        for (pid, s) in &all {
            if found.contains(&s.ppid) {
                found.insert(*pid);
            }
        }
        if found.len() == before {
            return found;
        }
    }
}

/// A conductor process: its pid and its start time, which together name it even after the pid
/// is reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConductorId {
    pub pid: i32,
    pub start_time: u64,
}

/// How many times [`kill_job`] scans for survivors.
const KILL_ROUNDS: usize = 50;

/// SIGKILLs everything of the job until nothing is left; returns how many processes it killed.
/// The tree is taken before the conductor dies, so its descendants are known even after they
/// are re-parented.
pub async fn kill_job(conductor: &ConductorId, groups: &BTreeSet<i32>) -> usize {
    let mut known = job_processes(conductor, groups, &BTreeSet::new());
    let mut killed = BTreeSet::new();
    for _ in 0..KILL_ROUNDS {
        if known.is_empty() {
            break;
        }
        for &pid in &known {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            killed.insert(pid);
        }
        for &pgid in groups {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
        // Give the kernel a moment to deliver before scanning again.
        tokio::time::sleep(Duration::from_millis(2)).await;
        known = job_processes(conductor, groups, &known);
    }
    killed.len()
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

fn reap_all() {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(status) => tracing::debug!(?status, "reaped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parses_names_with_spaces_and_parens() {
        let text = "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 98765 0 0";
        let s = parse_stat(text).expect("parse");
        assert_eq!(
            (s.state, s.ppid, s.pgrp, s.session, s.start_time),
            ('S', 1, 1234, 1234, 98765)
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn our_own_process_is_recognised() {
        let me = i32::try_from(std::process::id()).expect("pid");
        let start = start_time(me).expect("stat");
        assert!(is_same_process(me, start));
        assert!(!is_same_process(me, start + 1));
    }
}
