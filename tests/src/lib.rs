//! Helpers for the black-box tests of the real `supervisor` and `conductor-worker` binaries.
//!
//! - [`TestEnv`]: a short private temp dir (Unix socket paths must stay under 108 bytes) with
//!   the state dir inside, job files written into it, and a unique marker that every process of
//!   the test carries in its environment, so that the test can find (and finally kill) whatever
//!   a job left behind.
//! - [`Run`]: one `supervisor run` child whose stdout and stderr are drained by threads into
//!   shared buffers, so a test can wait for a line to appear.
//! - [`wait_for`]: polling with a deadline; deadlines only bound failures, nothing sleeps a
//!   fixed time.
//! - [`Store`]: reads the SQLite store; [`processes_with_env`], [`session_members`],
//!   [`thread_count`] read `/proc`.
//! - [`skip_unless_ci`]: the one way a test skips (not root, no cgroup v2, no tmpfs...): a
//!   printed `SKIPPED` line on a developer's machine, a failure under `CI=true`.
//! - [`submit_at`], [`status_json_at`], [`ls_all_json_at`]: the daemon's CLI, parsed.
//! - [`postgres::Postgres`]: a real PostgreSQL server of its own for a job board test.
//!
//! The binaries are found through `$SUPERVISOR_BIN`, else next to the test executable's
//! directory (`target/debug/deps/TEST` → `target/debug/`). `cargo test` does not build them:
//! run `cargo build --workspace --bins` first.

pub mod postgres;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::fmt::Debug;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long to wait for anything that should happen promptly (a line, a state, an exit).
/// Generous: it only bounds a failing test.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// How long to wait for a job that is expected to take a while (a cancel timeout to expire).
pub const LONG_DEADLINE: Duration = Duration::from_secs(60);
/// How long processes that the supervisor killed (SIGKILL) may take to disappear, once it has
/// exited. Still generous: SIGKILL is delivered in microseconds.
pub const GONE_DEADLINE: Duration = Duration::from_secs(5);
/// How often [`wait_for`] probes.
pub const POLL: Duration = Duration::from_millis(20);

/// The environment variable (in the job's `[env]`) that every task process inherits.
pub const MARK_VAR: &str = "SVT_MARK";
/// The environment variable given to the supervisor itself (so to the conductor too): lets
/// [`TestEnv`]'s drop find every process the test started, conductor included.
pub const OWNER_VAR: &str = "SVT_OWNER";

/// Variables of the test's own environment that would change how the binaries behave.
const SCRUBBED_VARS: [&str; 7] = [
    "SUPERVISOR_STATE_DIR",
    "SUPERVISOR_BOARD",
    "SUPERVISOR_CONDUCTOR_BIN",
    "SUPERVISOR_LOG",
    "RUST_LOG",
    "NO_COLOR",
    "XDG_STATE_HOME",
];

/// Polls `probe` every [`POLL`] until it returns `Ok`, for at most `deadline`. On timeout,
/// panics with `what` and the last `Err` value the probe returned.
pub fn wait_for<T, D: Debug>(
    deadline: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<T, D>,
) -> T {
    let start = Instant::now();
    loop {
        match probe() {
            Ok(value) => return value,
            Err(last) => {
                if start.elapsed() >= deadline {
                    panic!("timed out after {deadline:?} waiting for {what}; last seen: {last:#?}");
                }
            }
        }
        std::thread::sleep(POLL);
    }
}

/// The directory holding the `supervisor` and `conductor-worker` binaries.
#[must_use]
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    // target/debug/deps/TEST -> target/debug
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("the test executable lives in target/<profile>/deps")
}

/// The `supervisor` binary under test; panics with the build command when it is missing.
#[must_use]
pub fn supervisor_bin() -> PathBuf {
    if let Some(explicit) = std::env::var_os("SUPERVISOR_BIN").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(explicit);
        assert!(
            path.is_file(),
            "SUPERVISOR_BIN={} does not exist: run `cargo build --workspace --bins` first",
            path.display()
        );
        return path;
    }
    let dir = bin_dir();
    for name in ["supervisor", "conductor-worker"] {
        let path = dir.join(name);
        assert!(
            path.is_file(),
            "{} is missing: run `cargo build --workspace --bins` first (cargo test does not build the binaries)",
            path.display()
        );
    }
    dir.join("supervisor")
}

/// The workspace's `examples/` directory.
#[must_use]
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .join("examples")
}

/// A fresh unique token (for dir names and markers).
fn unique_token() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut random = [0u8; 4];
    // SAFETY: getrandom writes at most `random.len()` bytes into the buffer we own.
    let got = unsafe { libc::getrandom(random.as_mut_ptr().cast(), random.len(), 0) };
    let random = if got == 4 {
        u32::from_ne_bytes(random)
    } else {
        nanos
    };
    format!("{:x}{n:x}{:08x}", std::process::id(), random ^ nanos)
}

/// One test's private world: a temp dir (state dir inside), and a unique marker.
pub struct TestEnv {
    dir: PathBuf,
    marker: String,
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl TestEnv {
    /// Creates `/tmp/svt-XXXXXX` (short on purpose: the job sockets live in it).
    #[must_use]
    pub fn new() -> Self {
        for _ in 0..100 {
            let token = unique_token();
            let short = &token[token.len().saturating_sub(6)..];
            let dir = PathBuf::from(format!("/tmp/svt-{short}"));
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    return Self {
                        dir,
                        marker: format!("svt-{token}"),
                    };
                }
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(err) => panic!("cannot create {}: {err}", dir.display()),
            }
        }
        panic!("cannot find a free /tmp/svt-XXXXXX name");
    }

    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The state dir given to `--state-dir` (not created: the supervisor does it).
    #[must_use]
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The unique value of [`MARK_VAR`] (and [`OWNER_VAR`]) for this test.
    #[must_use]
    pub fn marker(&self) -> &str {
        &self.marker
    }

    /// A path inside the test dir.
    #[must_use]
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes `contents` to `name` in the test dir; returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, contents)
            .unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
        path
    }

    /// Writes a job file: `top` (top-level keys), then an `[env]` table with [`MARK_VAR`] and
    /// `SVT_DIR` (the test dir, for the tasks' files), then `tasks` (the `[[task]]` tables).
    pub fn job(&self, name: &str, top: &str, tasks: &str) -> PathBuf {
        let contents = format!(
            "{top}\n[env]\n{MARK_VAR} = \"{}\"\nSVT_DIR = \"{}\"\n\n{tasks}",
            self.marker,
            self.dir.display()
        );
        self.write(name, &contents)
    }

    /// Reads a file of the test dir; empty when it does not exist.
    #[must_use]
    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// The non-empty lines of a file of the test dir.
    #[must_use]
    pub fn lines(&self, name: &str) -> Vec<String> {
        self.read(name)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// A `supervisor` command with the scrubbed environment and the owner marker.
    #[must_use]
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(supervisor_bin());
        for var in SCRUBBED_VARS {
            command.env_remove(var);
        }
        command
            .args(args)
            .env(OWNER_VAR, &self.marker)
            .current_dir(&self.dir)
            .stdin(Stdio::null());
        no_inherited_fds(&mut command);
        command
    }

    /// Starts `supervisor run --state-dir DIR FILE` with piped output.
    #[must_use]
    pub fn spawn_run(&self, file: &Path) -> Run {
        let state_dir = self.state_dir();
        let args = ["run", "--state-dir", path_str(&state_dir), path_str(file)];
        self.spawn(&args)
    }

    /// Starts `supervisor ARGS` with piped output.
    #[must_use]
    pub fn spawn(&self, args: &[&str]) -> Run {
        Run::spawn(self.command(args), args, &self.dir, &self.state_dir())
    }

    /// Runs `supervisor ARGS` to its end (bounded by [`DEADLINE`]).
    #[must_use]
    pub fn run_to_end(&self, args: &[&str]) -> Run {
        let mut run = self.spawn(args);
        run.wait_exit(DEADLINE);
        run
    }

    /// The store, once `state.db` exists.
    #[must_use]
    pub fn store(&self) -> Store {
        Store::open(&self.state_dir().join("state.db"))
    }

    /// Whether the state dir holds a store at all.
    #[must_use]
    pub fn has_store(&self) -> bool {
        self.state_dir().join("state.db").exists()
    }

    /// Live (non-zombie) processes carrying this test's [`MARK_VAR`]: the job's task processes
    /// and their children.
    #[must_use]
    pub fn marked_processes(&self) -> Vec<Proc> {
        processes_with_env(&format!("{MARK_VAR}={}", self.marker))
    }

    /// Live processes carrying this test's [`OWNER_VAR`]: supervisors and conductors (and the
    /// tasks, which inherit it).
    #[must_use]
    pub fn owned_processes(&self) -> Vec<Proc> {
        processes_with_env(&format!("{OWNER_VAR}={}", self.marker))
    }

    /// The pids of the daemon's warm conductors that no job has taken yet (`STATE_DIR/warm/
    /// *.rec`, first field): part of the daemon, not of any job.
    #[must_use]
    pub fn warm_pool_pids(&self) -> Vec<i32> {
        let Ok(entries) = std::fs::read_dir(self.state_dir().join("warm")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "rec"))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter_map(|text| text.split_whitespace().next()?.parse().ok())
            .filter(|&pid| pid > 0)
            .collect()
    }

    /// Waits until no process of the job (marker) is alive; panics listing them otherwise.
    pub fn assert_no_job_process_left(&self) {
        wait_for(GONE_DEADLINE, "every process of the job to be gone", || {
            let mut left = self.marked_processes();
            for process in self.owned_processes() {
                if !left.iter().any(|q| q.pid == process.pid) {
                    left.push(process);
                }
            }
            if left.is_empty() { Ok(()) } else { Err(left) }
        });
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        // Kill whatever the test left running, however it ended.
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let mut left = self.owned_processes();
            left.extend(self.marked_processes());
            if left.is_empty() || Instant::now() >= until {
                if !left.is_empty() {
                    eprintln!("test processes still alive after cleanup: {left:#?}");
                }
                break;
            }
            for process in &left {
                let _ = kill(Pid::from_raw(process.pid), Signal::SIGKILL);
            }
            std::thread::sleep(POLL);
        }
        if std::env::var_os("KEEP_TEST_DIRS").is_some_and(|v| v == "1") {
            eprintln!("keeping test dir {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Makes every descriptor above 2 that the test runner leaked (a shell's, a CI agent's) close
/// at the exec of `command`, so the binaries start as from a clean shell and a test of what a
/// task inherits (`ownership.rs`, `task_sees_only_descriptors_0_1_2`) sees only what the
/// supervisor itself passes on. std's own exec-error pipe is already close-on-exec.
fn no_inherited_fds(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure only makes raw syscalls (close_range, fcntl), which are
    // async-signal-safe, and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            let all = libc::syscall(
                libc::SYS_close_range,
                3_u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            if all != 0 {
                // Kernels before 5.11: mark them one by one.
                for fd in 3..1024 {
                    let flags = libc::fcntl(fd, libc::F_GETFD);
                    if flags >= 0 {
                        libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
                    }
                }
            }
            Ok(())
        });
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Text shared between a reader thread and the test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<String>>);

impl Captured {
    fn get(&self) -> String {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn push(&self, text: &str) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_str(text);
    }
}

fn drain(pipe: impl Read + Send + 'static, into: Captured) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => into.push(&String::from_utf8_lossy(&line)),
            }
        }
    })
}

/// A running (or ended) `supervisor` process.
pub struct Run {
    child: Child,
    description: String,
    dir: PathBuf,
    state_dir: PathBuf,
    stdout: Captured,
    stderr: Captured,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Run {
    fn spawn(mut command: Command, args: &[&str], dir: &Path, state_dir: &Path) -> Self {
        let description = format!("{} {}", supervisor_bin().display(), args.join(" "));
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start `{description}`: {err}"));
        let stdout = Captured::default();
        let stderr = Captured::default();
        let readers = vec![
            drain(
                child.stdout.take().expect("stdout is piped"),
                stdout.clone(),
            ),
            drain(
                child.stderr.take().expect("stderr is piped"),
                stderr.clone(),
            ),
        ];
        Self {
            child,
            description,
            dir: dir.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            stdout,
            stderr,
            readers,
            status: None,
        }
    }

    /// The supervisor's pid.
    #[must_use]
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits in i32")
    }

    /// Everything on stdout so far.
    #[must_use]
    pub fn stdout(&self) -> String {
        self.stdout.get()
    }

    /// Everything on stderr so far.
    #[must_use]
    pub fn stderr(&self) -> String {
        self.stderr.get()
    }

    /// Stderr with the terminal colour escapes (`ESC [ ... m`) removed.
    #[must_use]
    pub fn stderr_plain(&self) -> String {
        strip_ansi(&self.stderr())
    }

    /// The stdout lines.
    #[must_use]
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout().lines().map(str::to_owned).collect()
    }

    /// Waits until stdout has a line equal to `line`.
    pub fn wait_for_stdout_line(&self, line: &str) {
        wait_for(DEADLINE, &format!("stdout line {line:?}"), || {
            let out = self.stdout();
            if out.lines().any(|l| l == line) {
                Ok(())
            } else {
                Err(out)
            }
        });
    }

    /// The job id from the first stdout line (`job <id> <name>: N task(s)`), once printed.
    #[must_use]
    pub fn job_id(&self) -> String {
        wait_for(DEADLINE, "the `job <id> ...` line", || {
            let out = self.stdout();
            let id = out
                .lines()
                .next()
                .filter(|l| l.ends_with("task(s)"))
                .and_then(|l| l.strip_prefix("job "))
                .and_then(|rest| rest.split(' ').next())
                .filter(|id| id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()))
                .map(str::to_owned);
            id.ok_or(out)
        })
    }

    /// Sends `signal` to the supervisor.
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid()), signal)
            .unwrap_or_else(|err| panic!("cannot send {signal} to the supervisor: {err}"));
    }

    /// Waits for the exit (at most `deadline`) and returns the exit code; panics on a timeout
    /// or a death by signal.
    pub fn wait_exit(&mut self, deadline: Duration) -> i32 {
        let status = match self.status {
            Some(status) => status,
            None => {
                let child = &mut self.child;
                let status = wait_for(deadline, "the supervisor to exit", || {
                    match child.try_wait() {
                        Ok(Some(status)) => Ok(status),
                        Ok(None) => Err("still running".to_owned()),
                        Err(err) => Err(format!("try_wait failed: {err}")),
                    }
                });
                self.status = Some(status);
                // The pipes close with the process (nothing else holds them): collect the rest.
                let readers = std::mem::take(&mut self.readers);
                wait_for(DEADLINE, "the output pipes to close", || {
                    if readers.iter().all(JoinHandle::is_finished) {
                        Ok(())
                    } else {
                        Err("a pipe is still open (held by a leftover process?)")
                    }
                });
                for reader in readers {
                    let _ = reader.join();
                }
                status
            }
        };
        status
            .code()
            .unwrap_or_else(|| panic!("the supervisor did not exit normally: {status}"))
    }

    /// Whether the supervisor has exited (without waiting).
    pub fn has_exited(&mut self) -> bool {
        self.status.is_some() || matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Everything useful when a test fails: the command, the dir, the output, the logs.
    #[must_use]
    pub fn report(&self) -> String {
        let mut text = format!(
            "command: {}\ndir: {}\nstatus: {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.description,
            self.dir.display(),
            self.status,
            self.stdout(),
            self.stderr()
        );
        if let Ok(entries) = std::fs::read_dir(self.state_dir.join("logs")) {
            for entry in entries.flatten() {
                let log = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                text.push_str(&format!(
                    "--- {} (last {} lines) ---\n",
                    entry.path().display(),
                    tail.len()
                ));
                for line in tail.into_iter().rev() {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
        text
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "==== supervisor run of the failed test ====\n{}",
                self.report()
            );
        }
        if self.status.is_none() && !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Removes `ESC [ ... <letter>` sequences.
#[must_use]
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A live process seen in `/proc`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    pub cmdline: String,
}

/// Reads `/proc/PID/stat` (and the command line); `None` when the process is gone.
#[must_use]
pub fn proc_info(pid: i32) -> Option<Proc> {
    // The command line first, then the session and group: read the other way round, a
    // process that ran `setsid` and then `exec` between the two reads showed the new command
    // with its old session (a flaky containment test). Now they are at least as new as it.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .unwrap_or_default();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    Some(Proc {
        pid,
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        session: fields.get(3)?.parse().ok()?,
        cmdline: cmdline.trim_end().to_owned(),
    })
}

/// Every live (not zombie, not dead) process.
#[must_use]
pub fn live_processes() -> Vec<Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(proc_info)
        .filter(|p| p.state != 'Z' && p.state != 'X')
        .collect()
}

/// Live processes whose environment holds exactly the entry `KEY=VALUE`.
#[must_use]
pub fn processes_with_env(entry: &str) -> Vec<Proc> {
    live_processes()
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{}/environ", p.pid))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|e| e == entry.as_bytes()))
        })
        // Read again: it may have become a zombie meanwhile.
        .filter(|p| proc_info(p.pid).is_some_and(|q| q.state != 'Z' && q.state != 'X'))
        .collect()
}

/// Live processes of session `sid`.
#[must_use]
pub fn session_members(sid: i32) -> Vec<Proc> {
    live_processes()
        .into_iter()
        .filter(|p| p.session == sid)
        .collect()
}

/// How many threads `pid` has (entries of `/proc/PID/task`); `None` when it is gone.
#[must_use]
pub fn thread_count(pid: i32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()
        .map(|entries| entries.count())
}

/// Whether `pid` is alive and not a zombie.
#[must_use]
pub fn is_alive(pid: i32) -> bool {
    proc_info(pid).is_some_and(|p| p.state != 'Z' && p.state != 'X')
}

/// Sends `signal` to `pid`.
pub fn send_signal(pid: i32, signal: Signal) {
    kill(Pid::from_raw(pid), signal)
        .unwrap_or_else(|err| panic!("cannot send {signal} to {pid}: {err}"));
}

/// Sends `signal` to `pid`, taken from a listing of processes: one that has exited since and
/// been reaped (`ESRCH`) is not an error.
pub fn send_signal_if_alive(pid: i32, signal: Signal) {
    match kill(Pid::from_raw(pid), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(err) => panic!("cannot send {signal} to {pid}: {err}"),
    }
}

/// A job's row, as far as the tests look at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobInfo {
    pub id: String,
    pub name: String,
    pub state: String,
    pub reason: Option<String>,
    pub conductor_pid: Option<i32>,
}

/// A task's row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskInfo {
    pub idx: u32,
    pub name: String,
    pub has_revert: bool,
    pub state: String,
    pub attempts: u32,
    pub exec_outcome: Option<String>,
    pub result: String,
    pub error: Option<String>,
}

/// The store, read with SQLite directly (never created here).
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens an existing `state.db`; panics when it does not exist.
    #[must_use]
    pub fn open(path: &Path) -> Self {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .unwrap_or_else(|err| panic!("cannot open the store {}: {err}", path.display()));
        conn.busy_timeout(Duration::from_secs(10))
            .expect("busy_timeout is settable");
        Self { conn }
    }

    /// Every job id, in submission order.
    #[must_use]
    pub fn job_ids(&self) -> Vec<String> {
        let mut stmt = self
            .conn
            .prepare("SELECT id FROM jobs ORDER BY seq")
            .expect("jobs query prepares");
        stmt.query_map([], |row| row.get(0))
            .expect("jobs query runs")
            .collect::<rusqlite::Result<Vec<String>>>()
            .expect("job ids read")
    }

    /// The job's row; `None` when there is no such job.
    #[must_use]
    pub fn job(&self, id: &str) -> Option<JobInfo> {
        self.conn
            .query_row(
                "SELECT id, name, state, reason, conductor_pid FROM jobs WHERE id = ?1",
                [id],
                |row| {
                    Ok(JobInfo {
                        id: row.get(0)?,
                        name: row.get(1)?,
                        state: row.get(2)?,
                        reason: row.get(3)?,
                        conductor_pid: row.get(4)?,
                    })
                },
            )
            .optional()
            .expect("job query runs")
    }

    /// The job's state; panics when the job does not exist.
    #[must_use]
    pub fn job_state(&self, id: &str) -> String {
        self.job(id)
            .unwrap_or_else(|| panic!("job {id} is not in the store"))
            .state
    }

    /// The job's tasks, in file order.
    #[must_use]
    pub fn tasks(&self, id: &str) -> Vec<TaskInfo> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT idx, name, has_revert, state, attempts, exec_outcome, result, error
                 FROM tasks WHERE job_id = ?1 ORDER BY idx",
            )
            .expect("tasks query prepares");
        stmt.query_map([id], |row| {
            Ok(TaskInfo {
                idx: row.get(0)?,
                name: row.get(1)?,
                has_revert: row.get(2)?,
                state: row.get(3)?,
                attempts: row.get(4)?,
                exec_outcome: row.get(5)?,
                result: row.get(6)?,
                error: row.get(7)?,
            })
        })
        .expect("tasks query runs")
        .collect::<rusqlite::Result<Vec<_>>>()
        .expect("task rows read")
    }

    /// `(name, state)` of each task, in file order.
    #[must_use]
    pub fn task_states(&self, id: &str) -> Vec<(String, String)> {
        self.tasks(id)
            .into_iter()
            .map(|t| (t.name, t.state))
            .collect()
    }

    /// Names of the tasks whose revert is pending (has a revert, state neither `pending` nor
    /// `reverted`), last first.
    #[must_use]
    pub fn pending_reverts(&self, id: &str) -> Vec<String> {
        self.tasks(id)
            .into_iter()
            .rev()
            .filter(|t| t.has_revert && t.state != "pending" && t.state != "reverted")
            .map(|t| t.name)
            .collect()
    }

    /// The states task `task` (`None`: the job itself) went through, in order, from its
    /// recorded transitions.
    #[must_use]
    pub fn history(&self, id: &str, task: Option<u32>) -> Vec<String> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT to_state FROM transitions WHERE job_id = ?1 AND task_idx IS ?2 ORDER BY id",
            )
            .expect("transitions query prepares");
        stmt.query_map(rusqlite::params![id, task], |row| row.get(0))
            .expect("transitions query runs")
            .collect::<rusqlite::Result<Vec<String>>>()
            .expect("transition rows read")
    }
}

/// The live job states.
pub const JOB_LIVE_STATES: [&str; 4] = ["pending", "running", "cancelling", "reverting"];
/// The terminal job states.
pub const JOB_TERMINAL_STATES: [&str; 6] = [
    "success",
    "reverted",
    "cancelled",
    "revert_failed",
    "killed",
    "crashed",
];

/// Runs `supervisor ARGS --state-dir STATE_DIR` to its end (at most `deadline`, else panics):
/// (exit code, stdout, stderr).
#[must_use]
pub fn cli_at(
    env: &TestEnv,
    state_dir: &Path,
    args: &[&str],
    deadline: Duration,
) -> (i32, String, String) {
    let mut full = args.to_vec();
    full.extend_from_slice(&["--state-dir", path_str(state_dir)]);
    let mut run = env.spawn(&full);
    let code = run.wait_exit(deadline);
    (code, run.stdout(), run.stderr())
}

/// Starts `supervisor daemon --state-dir STATE_DIR EXTRA...` and waits until `ls` answers.
#[must_use]
pub fn start_daemon_at(env: &TestEnv, state_dir: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["daemon", "--state-dir", path_str(state_dir)];
    args.extend_from_slice(extra);
    let mut daemon = env.spawn(&args);
    wait_daemon_ready(env, state_dir, &mut daemon);
    daemon
}

/// Waits until a daemon started on `state_dir` answers `ls` (panics if it exits first).
pub fn wait_daemon_ready(env: &TestEnv, state_dir: &Path, daemon: &mut Run) {
    wait_for(DEADLINE, "the daemon to accept `ls`", || {
        if daemon.has_exited() {
            panic!("the daemon exited early:\n{}", daemon.report());
        }
        let (code, out, err) = cli_at(env, state_dir, &["ls"], DEADLINE);
        if code == 0 {
            Ok(())
        } else {
            Err((code, out, err))
        }
    });
}

/// SIGKILLs a [`Run`] and waits until it has exited (without waiting for its pipes, which its
/// surviving children may hold).
pub fn sigkill_run(run: &mut Run) {
    if !run.has_exited() {
        let _ = kill(Pid::from_raw(run.pid()), Signal::SIGKILL);
    }
    wait_for(DEADLINE, "the SIGKILLed process to be gone", || {
        if run.has_exited() {
            Ok(())
        } else {
            Err("still running")
        }
    });
}

/// The value of `KEY` in the environment of `pid`; `None` when absent or unreadable.
#[must_use]
pub fn env_of(pid: i32, key: &str) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{key}=");
    raw.split(|&b| b == 0)
        .find_map(|e| e.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

impl TestEnv {
    /// Starts `supervisor ARGS` with piped output, like [`TestEnv::spawn`], with the variables of
    /// `set` added to its environment and those of `remove` taken out of it.
    #[must_use]
    pub fn spawn_with_env(&self, args: &[&str], set: &[(&str, &str)], remove: &[&str]) -> Run {
        let mut command = self.command(args);
        for var in remove {
            command.env_remove(var);
        }
        for (var, value) in set {
            command.env(var, value);
        }
        Run::spawn(command, args, &self.dir, &self.state_dir())
    }
}

impl Store {
    /// The job's `(containment, cgroup)` columns; `None` when there is no such job.
    #[must_use]
    pub fn job_containment(&self, id: &str) -> Option<(Option<String>, Option<String>)> {
        self.conn
            .query_row(
                "SELECT containment, cgroup FROM jobs WHERE id = ?1",
                [id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .expect("job containment query runs")
    }
}

/// Whether the tests run under CI (`CI=true`, as `.ci/run` and most CI services set it).
#[must_use]
pub fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// The one way a test skips because this host cannot run it (not root, no writable cgroup v2,
/// no tmpfs, ...). On a developer's machine it prints `SKIPPED TEST: REASON` and the caller
/// returns; under CI ([`is_ci`]) it panics with the reason instead, because a skipped test
/// passes without testing anything and CI runs where every test can run (as root).
pub fn skip_unless_ci(test: &str, reason: &str) {
    assert!(
        !is_ci(),
        "{test} cannot run here ({reason}), and CI=true forbids skipping it: run CI as root on a host with a writable cgroup v2"
    );
    eprintln!("SKIPPED {test}: {reason}");
}

/// `supervisor submit FILE --state-dir STATE_DIR`: the job id (asserting exit 0 and 8 hex digits).
#[must_use]
pub fn submit_at(env: &TestEnv, state_dir: &Path, file: &Path) -> String {
    let (code, out, err) = cli_at(env, state_dir, &["submit", path_str(file)], DEADLINE);
    assert_eq!(code, 0, "submit failed: stdout {out:?} stderr {err:?}");
    let id = out.trim().to_owned();
    assert!(
        id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "submit printed {out:?}, not a job id"
    );
    id
}

/// `supervisor status JOB --json`, parsed (asserting exit 0).
#[must_use]
pub fn status_json_at(env: &TestEnv, state_dir: &Path, id: &str) -> serde_json::Value {
    let (code, out, err) = cli_at(env, state_dir, &["status", id, "--json"], DEADLINE);
    assert_eq!(code, 0, "status {id} failed: stdout {out:?} stderr {err:?}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status JSON {out:?}: {e}"))
}

/// `supervisor ls --all --json`, parsed (asserting exit 0).
#[must_use]
pub fn ls_all_json_at(env: &TestEnv, state_dir: &Path) -> Vec<serde_json::Value> {
    let (code, out, err) = cli_at(env, state_dir, &["ls", "--all", "--json"], DEADLINE);
    assert_eq!(code, 0, "ls --all failed: stdout {out:?} stderr {err:?}");
    let value: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ls JSON {out:?}: {e}"));
    value
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("ls --json is not an array: {out}"))
}

impl TestEnv {
    /// [`start_daemon_at`] on this environment's own state dir.
    #[must_use]
    pub fn start_daemon(&self, extra: &[&str]) -> Run {
        start_daemon_at(self, &self.state_dir(), extra)
    }

    /// [`submit_at`] on this environment's own state dir: the new job's id.
    #[must_use]
    pub fn submit(&self, file: &Path) -> String {
        submit_at(self, &self.state_dir(), file)
    }

    /// `submit FILE --wait` on this environment's own state dir, asserting exit 0 within
    /// `deadline` (the job succeeded): the job's id, the first line it prints.
    #[must_use]
    pub fn submit_wait(&self, file: &Path, deadline: Duration) -> String {
        let state_dir = self.state_dir();
        let args = [
            "submit",
            path_str(file),
            "--wait",
            "--state-dir",
            path_str(&state_dir),
        ];
        let mut waiter = self.spawn(&args);
        assert_eq!(waiter.wait_exit(deadline), 0, "{}", waiter.report());
        waiter
            .stdout_lines()
            .first()
            .map(|l| l.trim().to_owned())
            .expect("submit --wait prints the job id first")
    }

    /// [`status_json_at`] on this environment's own state dir.
    #[must_use]
    pub fn status_json(&self, id: &str) -> serde_json::Value {
        status_json_at(self, &self.state_dir(), id)
    }
}

/// Whether a job state (as `status --json` or the store spells it) is terminal.
#[must_use]
pub fn is_terminal(state: &str) -> bool {
    JOB_TERMINAL_STATES.contains(&state)
}

impl TestEnv {
    /// Starts `supervisor ARGS` like [`TestEnv::spawn`], born in the cgroup v2 directory
    /// `cgroup` (it moves itself there between fork and exec, as systemd starts a service in
    /// its own cgroup).
    #[must_use]
    pub fn spawn_in_cgroup(&self, args: &[&str], cgroup: &Path) -> Run {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::process::CommandExt;
        let procs = std::ffi::CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes())
            .expect("a cgroup path has no NUL");
        let mut command = self.command(args);
        // SAFETY: between fork and exec only async-signal-safe calls (open, write, close) run,
        // on memory prepared before the fork.
        unsafe {
            command.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let error = std::io::Error::last_os_error();
                libc::close(fd);
                if written == 1 { Ok(()) } else { Err(error) }
            });
        }
        Run::spawn(command, args, &self.dir, &self.state_dir())
    }
}
