//! The spawn on real children of the test process (which has no reaper: each test reaps its
//! own child).

use super::*;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

thread_local! {
    /// Set by a test to take the `fork` fallback on its own thread.
    static FORCE_FORK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// True when this thread's test asked for the `fork` fallback.
pub(super) fn fork_forced() -> bool {
    FORCE_FORK.with(std::cell::Cell::get)
}

/// How long a spawned shell may take to finish.
const DEADLINE: Duration = Duration::from_secs(20);

struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self { dir }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Spawns `sh -c script` as a conductor, waits for it through its pidfd, reaps it, and returns
/// its log. `adjust` may change the config before the spawn.
fn run_script_with(
    scratch: &Scratch,
    script: &str,
    cgroup: Option<&Path>,
    adjust: impl FnOnce(&mut SpawnConfig),
) -> anyhow::Result<(Spawned, String)> {
    let listener =
        std::os::unix::net::UnixListener::bind(scratch.dir.join("s")).expect("bind the socket");
    let log = scratch.dir.join("log");
    let args = ["-c".to_owned(), script.to_owned()];
    let mut config = SpawnConfig::new(
        Path::new("/bin/sh"),
        &args,
        std::os::fd::AsFd::as_fd(&listener),
        &log,
        cgroup,
    )?;
    adjust(&mut config);
    let spawned = spawn_conductor(&config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime
        .block_on(async { tokio::time::timeout(DEADLINE, spawned.pidfd.exited()).await })
        .expect("the script finishes");
    let pid = nix::unistd::Pid::from_raw(spawned.id.pid);
    nix::sys::wait::waitpid(pid, None).expect("reap");
    Ok((
        spawned,
        std::fs::read_to_string(&log).expect("read the log"),
    ))
}

fn run_script(
    scratch: &Scratch,
    script: &str,
    cgroup: Option<&Path>,
) -> anyhow::Result<(Spawned, String)> {
    run_script_with(scratch, script, cgroup, |_| {})
}

/// Prints, on the log, what the shell has at 0, 1 and 3. Read in a command substitution: a
/// redirection of the reading command would show up in the shell's own descriptors.
const SHOW_FDS: &str =
    "fds=$(readlink /proc/$$/fd/0 /proc/$$/fd/1 /proc/$$/fd/3); echo \"$fds\" >&2";

/// Set (in a re-run of this test binary) to run [`low_fd_sources_helper`] for real.
const LOW_FDS_HELPER: &str = "SUPERVISOR_TEST_LOW_FDS_HELPER";

/// Moves `fd` to the number `target` (close-on-exec, as every source is).
fn move_to(fd: &mut OwnedFd, target: i32) {
    if fd.as_raw_fd() == target {
        return;
    }
    // SAFETY: dup3 onto a number this process (a re-run of the tests, with one test) gives up.
    let rc = unsafe { libc::dup3(fd.as_raw_fd(), target, libc::O_CLOEXEC) };
    assert_eq!(rc, target, "dup3");
    // SAFETY: `target` now holds a descriptor that nothing else owns; the old one closes.
    *fd = unsafe { OwnedFd::from_raw_fd(target) };
}

/// Sources numbered 0 to 3 (the listener at 0, /dev/null at 3): a `dup2` of the listener onto 3
/// first would overwrite /dev/null. Runs only in its own process (it takes over fd 0 and 3).
#[test]
fn low_fd_sources_helper() {
    if std::env::var_os(LOW_FDS_HELPER).is_none() {
        return;
    }
    // Hold 3 first (the lowest free number, as nothing else runs here), to give it up to the
    // moved /dev/null below: else the test's own listener would get it.
    let placeholder = std::fs::File::open("/dev/null").expect("open /dev/null");
    assert_eq!(
        placeholder.as_raw_fd(),
        3,
        "fd 3 is taken in the helper process"
    );
    let _given_up = std::os::fd::IntoRawFd::into_raw_fd(placeholder);
    let scratch = Scratch::new("lowfd");
    let (_spawned, log) = run_script_with(&scratch, SHOW_FDS, None, |config| {
        move_to(&mut config.listener, 0);
        move_to(&mut config.null, 3);
    })
    .expect("spawn");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.first(), Some(&"/dev/null"), "stdin: {log}");
    assert_eq!(lines.get(1), Some(&"/dev/null"), "stdout: {log}");
    assert!(
        lines.get(2).is_some_and(|l| l.starts_with("socket:")),
        "fd 3 is the listener: {log}"
    );
}

#[test]
fn descriptors_numbered_0_to_3_are_placed_right() {
    crate::test_support::run_in_own_process(
        "spawn::tests::low_fd_sources_helper",
        true,
        LOW_FDS_HELPER,
    );
}

#[test]
fn the_conductor_gets_its_descriptors_session_and_signals() {
    let scratch = Scratch::new("fds");
    let script = format!(
        "{SHOW_FDS}; cut -d' ' -f6 /proc/$$/stat >&2; echo $$ >&2; \
                  grep -E '^Sig(Blk|Ign)' /proc/self/status >&2; \
                  exec ls /proc/self/fd >&2"
    );
    let (spawned, log) = run_script(&scratch, &script, None).expect("spawn");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.first(), Some(&"/dev/null"), "stdin: {log}");
    assert_eq!(lines.get(1), Some(&"/dev/null"), "stdout: {log}");
    assert!(
        lines.get(2).is_some_and(|l| l.starts_with("socket:")),
        "fd 3 is the listener: {log}"
    );
    // Its own session: the session id is its pid.
    assert_eq!(lines.get(3), lines.get(4), "setsid: {log}");
    assert_eq!(
        lines.get(4).copied(),
        Some(spawned.id.pid.to_string().as_str())
    );
    assert!(
        lines.contains(&"SigBlk:\t0000000000000000"),
        "no signal blocked: {log}"
    );
    // Nothing but 0 to 3 (and the directory `ls` reads, 4): not even what the test process
    // inherited without close-on-exec (cargo's jobserver pipe).
    let fds: Vec<&str> = lines.iter().rev().take(5).rev().copied().collect();
    assert_eq!(fds, ["0", "1", "2", "3", "4"], "descriptors: {log}");
    // Rust ignores SIGPIPE (bit 13); the conductor must not inherit that.
    let ignored = lines
        .iter()
        .find_map(|l| l.strip_prefix("SigIgn:\t"))
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .expect("SigIgn line");
    assert_eq!(
        ignored & (1 << (libc::SIGPIPE - 1)),
        0,
        "SIGPIPE ignored: {log}"
    );
}

#[test]
fn a_failed_exec_is_reported() {
    let scratch = Scratch::new("noexec");
    let listener = std::os::unix::net::UnixListener::bind(scratch.dir.join("s")).expect("bind");
    let config = SpawnConfig::new(
        Path::new("/nonexistent/conductor"),
        &[],
        std::os::fd::AsFd::as_fd(&listener),
        &scratch.dir.join("log"),
        None,
    )
    .expect("config");
    let err = spawn_conductor(&config).expect_err("no such program");
    let text = format!("{err:#}");
    assert!(text.contains("No such file"), "{text}");
    // The child that exited with 127 stays a zombie until the test process ends: reaping any
    // child here could steal another test's.
}

#[test]
fn a_conductor_is_born_in_its_cgroup() {
    let Some(cgroup) = crate::containment::test_cgroup("spawn") else {
        return;
    };
    let scratch = Scratch::new("cg");
    let (_spawned, log) =
        run_script(&scratch, "cat /proc/self/cgroup >&2", Some(cgroup.path())).expect("spawn");
    let name = cgroup
        .path()
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name");
    assert!(
        log.lines()
            .any(|l| l.starts_with("0::") && l.ends_with(name)),
        "the conductor runs in {}: {log}",
        cgroup.path().display()
    );
}

#[test]
fn the_fork_fallback_joins_the_cgroup_before_exec() {
    let Some(cgroup) = crate::containment::test_cgroup("fork") else {
        return;
    };
    let scratch = Scratch::new("fork");
    FORCE_FORK.with(|force| force.set(true));
    let ran = run_script(&scratch, "cat /proc/self/cgroup >&2", Some(cgroup.path()));
    FORCE_FORK.with(|force| force.set(false));
    let (spawned, log) = ran.expect("spawn");
    assert!(spawned.pidfd.has_exited());
    let name = cgroup
        .path()
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name");
    assert!(
        log.lines()
            .any(|l| l.starts_with("0::") && l.ends_with(name)),
        "the conductor runs in {}: {log}",
        cgroup.path().display()
    );
}
