//! Containment (per-job cgroup v2, or the session/process-group fallback), `[limits]`, and hang
//! detection (heartbeats, `kill_unresponsive`), end to end, against the real binaries.
//!
//! Build the binaries first: `cargo build --workspace --bins`. Every test has its own
//! [`TestEnv`]; the job files carry the test's marker (`SVT_MARK`) in `[env]`, so every task
//! process, and every process that escaped from a task, can be found (and is finally killed by
//! the [`TestEnv`]'s drop). A job cgroup a failing test leaves behind is killed and removed by a
//! [`CgroupSweep`]. Nothing sleeps a fixed time: everything polls under generous deadlines.
//!
//! What the session fallback cannot promise (so no test asks it): a conductor killed while *no*
//! supervisor watches it (the daemon is down). Its tasks' processes that left its session
//! (`setsid`) and whose parents exited are re-parented to init (or to some subreaper outside
//! the job), carry nothing the next daemon can find them by (not the conductor's session, not a
//! task's process group, not a descendant of anything of the job), and survive. Only a cgroup
//! keeps them: see `cgroup_conductor_crash_while_daemon_down`.

use nix::sys::signal::Signal;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use tests::{
    DEADLINE, GONE_DEADLINE, LONG_DEADLINE, Proc, Run, TestEnv, cli_at, is_alive, send_signal,
    sigkill_run, skip_unless_ci, wait_daemon_ready, wait_for,
};

/// The variable that forces the session fallback.
const CONTAINMENT_VAR: &str = "SUPERVISOR_CONTAINMENT";

/// The terminal job states.
const TERMINAL: [&str; 6] = [
    "success",
    "reverted",
    "cancelled",
    "revert_failed",
    "killed",
    "crashed",
];

/// The command lines of the three processes the escaping task leaves behind.
const ESCAPES: [&str; 3] = ["sleep 1000", "sleep 1001", "sleep 1002"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Whatever the supervisor detects (cgroup where one is writable), never forced.
    Cgroup,
    /// `SUPERVISOR_CONTAINMENT=session`.
    Session,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Cgroup => "cgroup",
            Self::Session => "session",
        }
    }

    /// Starts `supervisor ARGS` in this mode.
    fn spawn(self, env: &TestEnv, args: &[&str]) -> Run {
        match self {
            Self::Cgroup => env.spawn_with_env(args, &[], &[CONTAINMENT_VAR]),
            Self::Session => env.spawn_with_env(args, &[(CONTAINMENT_VAR, "session")], &[]),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// cgroup detection and cleanup
// ---------------------------------------------------------------------------------------------

/// The base cgroup the supervisor will use (`<cgroup2 mount>/<own cgroup>/supervisor`), when
/// this host has a writable cgroup v2 with `cgroup.kill` and the test runs as root; else why not.
fn cgroup_base() -> Result<PathBuf, String> {
    static PROBES: AtomicU32 = AtomicU32::new(0);
    if !nix::unistd::geteuid().is_root() {
        return Err("not running as root".into());
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let mount = shared::cgroup::unified_mount(&mountinfo)
        .ok_or("no cgroup2 hierarchy in /proc/self/mountinfo")?;
    let own_text = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let own = shared::cgroup::own_cgroup(&own_text).ok_or("no 0:: line in /proc/self/cgroup")?;
    let base = Path::new(mount)
        .join(own.trim_start_matches('/'))
        .join("supervisor");
    std::fs::create_dir_all(&base).map_err(|e| format!("cannot create {}: {e}", base.display()))?;
    let probe = base.join(format!(
        "svt-probe-{}-{}",
        std::process::id(),
        PROBES.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir(&probe)
        .map_err(|e| format!("cannot create a cgroup under {}: {e}", base.display()))?;
    let has_kill = probe.join("cgroup.kill").exists();
    let _ = std::fs::remove_dir(&probe);
    if has_kill {
        Ok(base)
    } else {
        Err(format!("{} has no cgroup.kill", base.display()))
    }
}

/// The cgroup base, or `None` once [`skip_unless_ci`] said why the test is skipped (under
/// `CI=true` it fails instead).
fn require_cgroup(test: &str) -> Option<PathBuf> {
    match cgroup_base() {
        Ok(base) => Some(base),
        Err(reason) => {
            skip_unless_ci(test, &format!("no writable cgroup v2 here ({reason})"));
            None
        }
    }
}

/// Kills and removes a job cgroup left behind by a failing test (declare it after the
/// [`TestEnv`], so it drops first).
struct CgroupSweep(Option<PathBuf>);

impl Drop for CgroupSweep {
    fn drop(&mut self) {
        let Some(path) = &self.0 else { return };
        if !path.exists() {
            return;
        }
        eprintln!("sweeping the leftover cgroup {}", path.display());
        let _ = std::fs::write(path.join("cgroup.kill"), "1");
        let start = std::time::Instant::now();
        while start.elapsed() < GONE_DEADLINE {
            let events = std::fs::read_to_string(path.join("cgroup.events")).unwrap_or_default();
            if !events.lines().any(|l| l.trim() == "populated 1") {
                break;
            }
            std::thread::sleep(tests::POLL);
        }
        let _ = std::fs::remove_dir(path);
    }
}

/// A [`CgroupSweep`] for the job `id` when this host gives jobs cgroups (default mode).
fn sweep_for(id: &str) -> CgroupSweep {
    CgroupSweep(cgroup_base().ok().map(|b| b.join(format!("job-{id}"))))
}

/// The pids listed in a cgroup's `cgroup.procs`.
fn cgroup_procs(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// jobs, daemon and CLI helpers
// ---------------------------------------------------------------------------------------------

fn state_dir(env: &TestEnv) -> String {
    env.state_dir()
        .to_str()
        .expect("test paths are UTF-8")
        .to_owned()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Runs `supervisor ARGS --state-dir DIR` to its end: (exit code, stdout, stderr).
fn cli(env: &TestEnv, args: &[&str]) -> (i32, String, String) {
    cli_at(env, &env.state_dir(), args, DEADLINE)
}

/// Starts `supervisor daemon --state-dir DIR` in `mode` and waits until `ls` works.
fn start_daemon(env: &TestEnv, mode: Mode) -> Run {
    let dir = state_dir(env);
    let mut daemon = mode.spawn(env, &["daemon", "--state-dir", &dir]);
    wait_daemon_ready(env, &env.state_dir(), &mut daemon);
    daemon
}

/// SIGKILLs the daemon and waits until it is gone.
fn sigkill_daemon(daemon: &mut Run) {
    sigkill_run(daemon);
}

/// `submit FILE`: the job id.
fn submit(env: &TestEnv, file: &Path) -> String {
    let (code, out, err) = cli(env, &["submit", path_str(file)]);
    assert_eq!(code, 0, "submit failed: stdout {out:?} stderr {err:?}");
    out.trim().to_owned()
}

/// `status JOB --json`, parsed.
fn status(env: &TestEnv, id: &str) -> Value {
    let (code, out, err) = cli(env, &["status", id, "--json"]);
    assert_eq!(code, 0, "status {id} failed: stdout {out:?} stderr {err:?}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status JSON {out:?}: {e}"))
}

fn job_state(status: &Value) -> String {
    status["state"].as_str().unwrap_or_default().to_owned()
}

/// Waits until the job's status satisfies `ok`; returns that status.
fn wait_status(env: &TestEnv, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    wait_for(LONG_DEADLINE, what, || {
        let status = status(env, id);
        if ok(&status) { Ok(status) } else { Err(status) }
    })
}

fn wait_terminal(env: &TestEnv, id: &str) -> Value {
    wait_status(env, id, &format!("job {id} to end"), |s| {
        TERMINAL.contains(&job_state(s).as_str())
    })
}

/// The job's conductor pid, from the store.
fn conductor_pid(env: &TestEnv, id: &str) -> i32 {
    wait_for(DEADLINE, "the conductor pid in the store", || {
        env.store()
            .job(id)
            .and_then(|j| j.conductor_pid)
            .ok_or("no conductor_pid yet")
    })
}

/// Top-level keys of the escaping jobs: with `stubborn`, the task ignores SIGTERM for long
/// enough that a second Ctrl-C (or `kill`) surely comes before the cancel could finish.
fn escape_top(stubborn: bool) -> &'static str {
    if stubborn {
        "cancel_timeout = \"40s\"\nterm_grace = \"30s\""
    } else {
        "cancel_timeout = \"20s\"\nterm_grace = \"1s\""
    }
}

/// One task that leaves three processes behind that escape its process group: a `setsid` one,
/// a double-forked one, and a daemonizing one (`nohup`, then `setsid` in a child that exits);
/// then it waits for `$SVT_DIR/go` (60 s at most) and succeeds.
fn escape_job(env: &TestEnv, stubborn: bool) -> PathBuf {
    let trap = if stubborn { "trap '' TERM" } else { ":" };
    let task = format!(
        r#"
[[task]]
name = "esc"
run = '''
{trap}
setsid sh -c 'sleep 1000' </dev/null >/dev/null 2>&1 &
(sleep 1001 </dev/null >/dev/null 2>&1 &)
nohup sh -c 'setsid sleep 1002 </dev/null >/dev/null 2>&1 &' </dev/null >/dev/null 2>&1 &
i=0; while [ ! -e "$SVT_DIR/go" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done
[ -e "$SVT_DIR/go" ]
'''
"#
    );
    env.job("escape.toml", escape_top(stubborn), &task)
}

/// Waits until the three escaped processes run; checks that two left the conductor's session
/// (so they are real escapes); returns them.
fn wait_escapes(env: &TestEnv, conductor: i32) -> Vec<Proc> {
    let escapes = wait_for(DEADLINE, "the three escaped processes", || {
        let marked = env.marked_processes();
        let found: Vec<Proc> = ESCAPES
            .iter()
            .filter_map(|c| marked.iter().find(|p| p.cmdline == *c).cloned())
            .collect();
        if found.len() == ESCAPES.len() {
            Ok(found)
        } else {
            Err(marked)
        }
    });
    for escaped in [&escapes[0], &escapes[2]] {
        assert_ne!(
            escaped.session, conductor,
            "{escaped:?} should have left the conductor's session"
        );
    }
    escapes
}

/// While the job runs (cgroup mode): the store names its cgroup, `BASE/job-ID` (a new
/// conductor) or `BASE/warm-*` (a warm conductor's, which a job keeps: cgroup v2 cannot rename
/// it), and its `cgroup.procs` lists the conductor and every escaped process.
fn check_cgroup_while_running(
    env: &TestEnv,
    id: &str,
    base: &Path,
    conductor: i32,
    escapes: &[Proc],
) -> PathBuf {
    let (containment, cgroup) = env
        .store()
        .job_containment(id)
        .unwrap_or_else(|| panic!("job {id} is not in the store"));
    assert_eq!(containment.as_deref(), Some("cgroup"), "jobs.containment");
    let expected = PathBuf::from(cgroup.unwrap_or_else(|| panic!("job {id} has no cgroup")));
    let name = expected
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    assert!(
        expected.parent() == Some(base)
            && (name == format!("job-{id}") || name.starts_with("warm-")),
        "jobs.cgroup {} should be BASE/job-ID or BASE/warm-*",
        expected.display()
    );
    assert!(expected.is_dir(), "{} does not exist", expected.display());
    let procs = cgroup_procs(&expected);
    assert!(
        procs.contains(&conductor),
        "cgroup.procs {procs:?} lacks the conductor {conductor}"
    );
    for escaped in escapes {
        assert!(
            procs.contains(&escaped.pid),
            "cgroup.procs {procs:?} lacks the escaped {escaped:?}"
        );
    }
    // The task's own shell too: every live process of the job is in it.
    for process in env.marked_processes() {
        assert!(
            cgroup_procs(&expected).contains(&process.pid) || !is_alive(process.pid),
            "{process:?} of the job is not in its cgroup"
        );
    }
    expected
}

/// After the job's end: no process of the job (marker) and not the conductor is alive, and in
/// cgroup mode the job's cgroup directory is gone.
fn assert_nothing_survives(env: &TestEnv, conductor: i32, cgroup: Option<&Path>, when: &str) {
    wait_for(
        GONE_DEADLINE,
        &format!("every process of the job gone ({when})"),
        || {
            let left = env.marked_processes();
            if left.is_empty() && !is_alive(conductor) {
                Ok(())
            } else {
                Err((left, is_alive(conductor)))
            }
        },
    );
    if let Some(path) = cgroup {
        wait_for(
            GONE_DEADLINE,
            &format!("the job's cgroup to be removed ({when})"),
            || {
                if path.exists() {
                    Err(cgroup_procs(path))
                } else {
                    Ok(())
                }
            },
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 1 and 2: escapes do not survive
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum RunEnd {
    /// The task succeeds: exit 0.
    Normal,
    /// One SIGINT: exit 3.
    Cancel,
    /// Two SIGINTs: exit 4.
    Kill,
    /// SIGKILL of the conductor while `run` watches: exit 4 (crashed).
    ConductorCrash,
}

/// `supervisor run` of the escaping job in `mode`, ended as `end`: nothing survives.
fn escapes_under_run(mode: Mode, end: RunEnd, base: Option<&Path>) {
    let env = TestEnv::new();
    let file = escape_job(&env, matches!(end, RunEnd::Kill));
    let state = state_dir(&env);
    let mut run = mode.spawn(&env, &["run", "--state-dir", &state, path_str(&file)]);
    let id = run.job_id();
    let mut sweep = CgroupSweep(base.map(|b| b.join(format!("job-{id}"))));
    let conductor = conductor_pid(&env, &id);
    let escapes = wait_escapes(&env, conductor);
    let cgroup = match base {
        Some(base) => Some(check_cgroup_while_running(
            &env, &id, base, conductor, &escapes,
        )),
        None => {
            let (containment, cgroup) = env.store().job_containment(&id).expect("job stored");
            assert_eq!(containment.as_deref(), Some("session"), "jobs.containment");
            assert_eq!(cgroup, None, "jobs.cgroup in session mode");
            None
        }
    };
    let (expected_code, expected_state) = match end {
        RunEnd::Normal => {
            env.write("go", "");
            (0, "success")
        }
        RunEnd::Cancel => {
            run.signal(Signal::SIGINT);
            (3, "cancelled")
        }
        RunEnd::Kill => {
            run.signal(Signal::SIGINT);
            wait_for(DEADLINE, "the cancel to be acknowledged", || {
                let err = run.stderr_plain();
                if err.contains("cancelling") {
                    Ok(())
                } else {
                    Err(err)
                }
            });
            run.signal(Signal::SIGINT);
            (4, "killed")
        }
        RunEnd::ConductorCrash => {
            send_signal(conductor, Signal::SIGKILL);
            (4, "crashed")
        }
    };
    let code = run.wait_exit(LONG_DEADLINE);
    assert_eq!(
        code,
        expected_code,
        "{} {end:?}: exit code\n{}",
        mode.name(),
        run.report()
    );
    assert_eq!(
        env.store().job_state(&id),
        expected_state,
        "{}",
        run.report()
    );
    assert_nothing_survives(
        &env,
        conductor,
        cgroup.as_deref(),
        &format!("{} run {end:?}", mode.name()),
    );
    sweep.0 = None;
}

#[derive(Clone, Copy, Debug)]
enum DaemonEnd {
    /// `supervisor kill JOB --wait`.
    Kill,
    /// SIGKILL of the conductor while the daemon watches.
    ConductorCrash,
    /// The daemon SIGKILLed, then the conductor, then a new daemon.
    ConductorCrashWhileDown,
}

/// The escaping job submitted to a daemon in `mode`, ended as `end`: nothing survives.
fn escapes_under_daemon(mode: Mode, end: DaemonEnd, base: Option<&Path>) {
    let env = TestEnv::new();
    let mut daemon = start_daemon(&env, mode);
    let file = escape_job(&env, false);
    let id = submit(&env, &file);
    let mut sweep = CgroupSweep(base.map(|b| b.join(format!("job-{id}"))));
    let conductor = conductor_pid(&env, &id);
    let escapes = wait_escapes(&env, conductor);
    let st = status(&env, &id);
    assert_eq!(st["containment"], mode.name(), "status --json: {st:#}");
    let cgroup = base.map(|base| check_cgroup_while_running(&env, &id, base, conductor, &escapes));
    // A warm conductor's cgroup, when the job took one.
    sweep.0.clone_from(&cgroup);
    let expected_state = match end {
        DaemonEnd::Kill => {
            let (code, out, err) = cli(&env, &["kill", &id, "--wait"]);
            assert_eq!(code, 4, "kill --wait: stdout {out:?} stderr {err:?}");
            "killed"
        }
        DaemonEnd::ConductorCrash => {
            send_signal(conductor, Signal::SIGKILL);
            "crashed"
        }
        DaemonEnd::ConductorCrashWhileDown => {
            sigkill_daemon(&mut daemon);
            send_signal(conductor, Signal::SIGKILL);
            wait_for(DEADLINE, "the conductor to be gone", || {
                if is_alive(conductor) {
                    Err(conductor)
                } else {
                    Ok(())
                }
            });
            // Nobody watched: the escapes outlived their conductor (the cgroup still holds
            // them)...
            let alive: Vec<&Proc> = escapes.iter().filter(|p| is_alive(p.pid)).collect();
            assert_eq!(
                alive.len(),
                escapes.len(),
                "the escapes should outlive a conductor killed while no daemon runs"
            );
            // ...until a daemon comes back.
            daemon = start_daemon(&env, mode);
            "crashed"
        }
    };
    let st = wait_terminal(&env, &id);
    assert_eq!(
        job_state(&st),
        expected_state,
        "{st:#}\n{}",
        daemon.report()
    );
    assert_nothing_survives(
        &env,
        conductor,
        cgroup.as_deref(),
        &format!("{} daemon {end:?}", mode.name()),
    );
    sweep.0 = None;
}

#[test]
fn cgroup_escapes_do_not_survive_a_normal_end() {
    if let Some(base) = require_cgroup("cgroup_escapes_do_not_survive_a_normal_end") {
        escapes_under_run(Mode::Cgroup, RunEnd::Normal, Some(&base));
    }
}

#[test]
fn cgroup_escapes_do_not_survive_a_cancel() {
    if let Some(base) = require_cgroup("cgroup_escapes_do_not_survive_a_cancel") {
        escapes_under_run(Mode::Cgroup, RunEnd::Cancel, Some(&base));
    }
}

#[test]
fn cgroup_escapes_do_not_survive_a_second_ctrl_c() {
    if let Some(base) = require_cgroup("cgroup_escapes_do_not_survive_a_second_ctrl_c") {
        escapes_under_run(Mode::Cgroup, RunEnd::Kill, Some(&base));
    }
}

#[test]
fn cgroup_escapes_do_not_survive_a_conductor_crash_under_run() {
    if let Some(base) = require_cgroup("cgroup_escapes_do_not_survive_a_conductor_crash_under_run")
    {
        escapes_under_run(Mode::Cgroup, RunEnd::ConductorCrash, Some(&base));
    }
}

#[test]
fn cgroup_escapes_do_not_survive_a_daemon_kill() {
    if let Some(base) = require_cgroup("cgroup_escapes_do_not_survive_a_daemon_kill") {
        escapes_under_daemon(Mode::Cgroup, DaemonEnd::Kill, Some(&base));
    }
}

#[test]
fn cgroup_escapes_do_not_survive_a_conductor_crash_under_the_daemon() {
    if let Some(base) =
        require_cgroup("cgroup_escapes_do_not_survive_a_conductor_crash_under_the_daemon")
    {
        escapes_under_daemon(Mode::Cgroup, DaemonEnd::ConductorCrash, Some(&base));
    }
}

#[test]
fn cgroup_conductor_crash_while_daemon_down() {
    if let Some(base) = require_cgroup("cgroup_conductor_crash_while_daemon_down") {
        escapes_under_daemon(
            Mode::Cgroup,
            DaemonEnd::ConductorCrashWhileDown,
            Some(&base),
        );
    }
}

#[test]
fn session_escapes_do_not_survive_a_normal_end() {
    escapes_under_run(Mode::Session, RunEnd::Normal, None);
}

#[test]
fn session_escapes_do_not_survive_a_cancel() {
    escapes_under_run(Mode::Session, RunEnd::Cancel, None);
}

#[test]
fn session_escapes_do_not_survive_a_second_ctrl_c() {
    escapes_under_run(Mode::Session, RunEnd::Kill, None);
}

#[test]
fn session_escapes_do_not_survive_a_conductor_crash_under_run() {
    escapes_under_run(Mode::Session, RunEnd::ConductorCrash, None);
}

#[test]
fn session_escapes_do_not_survive_a_daemon_kill() {
    escapes_under_daemon(Mode::Session, DaemonEnd::Kill, None);
}

#[test]
fn session_escapes_do_not_survive_a_conductor_crash_under_the_daemon() {
    escapes_under_daemon(Mode::Session, DaemonEnd::ConductorCrash, None);
}

// ---------------------------------------------------------------------------------------------
// 3: limits
// ---------------------------------------------------------------------------------------------

/// `supervisor run FILE` in the default (detected) containment, to its end: the exit code, the
/// run, and a sweep of the job's cgroup, should the supervisor leave it.
fn run_to_end(env: &TestEnv, file: &Path) -> (i32, Run, CgroupSweep) {
    let state = state_dir(env);
    let mut run = Mode::Cgroup.spawn(env, &["run", "--state-dir", &state, path_str(file)]);
    let code = run.wait_exit(LONG_DEADLINE);
    let sweep = if env.has_store() {
        env.store()
            .job_ids()
            .pop()
            .map_or(CgroupSweep(None), |id| sweep_for(&id))
    } else {
        CgroupSweep(None)
    };
    (code, run, sweep)
}

#[test]
fn cpu_time_limit_fails_the_task_with_its_reason() {
    let env = TestEnv::new();
    let file = env.job(
        "cpu.toml",
        "[limits]\ncpu_time = \"1s\"",
        "[[task]]\nname = \"spin\"\nrun = 'while :; do :; done'\n",
    );
    let (code, run, _sweep) = run_to_end(&env, &file);
    assert_eq!(code, 1, "a task over its cpu_time fails\n{}", run.report());
    let store = env.store();
    let id = store.job_ids().pop().expect("the job is stored");
    let task = store.tasks(&id).pop().expect("the task is stored");
    let error = task.error.unwrap_or_default();
    assert!(
        error.contains("cpu_time limit reached (1s) (killed by signal SIGXCPU)"),
        "task error {error:?}\n{}",
        run.report()
    );
    let shown = format!("{}{}", run.stdout(), run.stderr_plain());
    assert!(
        shown.contains("cpu_time limit reached (1s)"),
        "run should show the reason\n{}",
        run.report()
    );
    env.assert_no_job_process_left();
}

#[test]
fn nofile_limit_is_visible_to_the_task() {
    let env = TestEnv::new();
    let file = env.job(
        "nofile.toml",
        "[limits]\nnofile = 123",
        "[[task]]\nname = \"n\"\nrun = 'ulimit -n'\n",
    );
    let (code, run, _sweep) = run_to_end(&env, &file);
    assert_eq!(code, 0, "{}", run.report());
    let store = env.store();
    let id = store.job_ids().pop().expect("the job is stored");
    assert_eq!(
        store.tasks(&id)[0].result,
        "123",
        "ulimit -n in the task\n{}",
        run.report()
    );
}

/// Whether the supervisor can enable `controller` for the job cgroups (the base's
/// `cgroup.subtree_control`, which it tries to fill; we try as well).
fn controller_enabled(base: &Path, controller: &str) -> bool {
    let control = base.join("cgroup.subtree_control");
    let _ = std::fs::write(&control, format!("+{controller}"));
    std::fs::read_to_string(&control)
        .unwrap_or_default()
        .split_whitespace()
        .any(|c| c == controller)
}

#[test]
fn memory_limit_is_enforced_or_refused_with_a_clear_message() {
    let env = TestEnv::new();
    let enforced = cgroup_base().is_ok_and(|base| controller_enabled(&base, "memory"));
    let task = "[[task]]\nname = \"hog\"\nrun = 'touch \"$SVT_DIR/ran\"; head -c 300M /dev/zero | tail >/dev/null'\n";
    let file = env.job("mem.toml", "[limits]\nmemory = \"64M\"", task);
    let (code, run, _sweep) = run_to_end(&env, &file);
    if enforced {
        eprintln!("the memory controller is enabled here: checking enforcement");
        assert_eq!(
            code,
            1,
            "a task over the memory limit fails\n{}",
            run.report()
        );
        let store = env.store();
        let id = store.job_ids().pop().expect("the job is stored");
        let error = store.tasks(&id)[0].error.clone().unwrap_or_default();
        assert!(
            error.contains("memory limit reached"),
            "task error {error:?}\n{}",
            run.report()
        );
        return;
    }
    eprintln!("the memory controller is not enabled here: checking the refusal");
    assert_eq!(code, 2, "run must refuse the limit\n{}", run.report());
    let err = run.stderr_plain();
    assert!(
        err.contains("limits on memory cannot be enforced on this host"),
        "stderr {err:?}"
    );
    assert!(!env.path("ran").exists(), "the task ran anyway");
    assert!(
        !env.has_store() || env.store().job_ids().is_empty(),
        "a refused job must not be stored"
    );
    // pids and cpu need their controllers just the same.
    for (key, value, name) in [("pids", "10", "pids"), ("cpu", "\"50%\"", "cpu")] {
        let file = env.job(
            &format!("{name}.toml"),
            &format!("[limits]\n{key} = {value}"),
            task,
        );
        let (code, run, _sweep) = run_to_end(&env, &file);
        assert_eq!(code, 2, "{name}: run must refuse\n{}", run.report());
        assert!(
            run.stderr_plain()
                .contains(&format!("limits on {name} cannot be enforced on this host")),
            "{}",
            run.report()
        );
    }
    // The daemon refuses the submit the same way.
    let _daemon = start_daemon(&env, Mode::Cgroup);
    let (code, out, err) = cli(&env, &["submit", path_str(&file)]);
    assert_eq!(
        code, 2,
        "submit must be refused: stdout {out:?} stderr {err:?}"
    );
    assert!(
        err.contains("cannot be enforced on this host"),
        "submit stderr {err:?}"
    );
    let (code, out, _) = cli(&env, &["ls", "--all", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "[]", "the refused job must not be stored");
    assert!(!env.path("ran").exists(), "the task ran anyway");
}

#[test]
fn user_limit_runs_the_tasks_as_that_user() {
    if !nix::unistd::geteuid().is_root() {
        skip_unless_ci("user_limit_runs_the_tasks_as_that_user", "not root");
        return;
    }
    let Ok(Some(nobody)) = nix::unistd::User::from_name("nobody") else {
        skip_unless_ci("user_limit_runs_the_tasks_as_that_user", "no user nobody");
        return;
    };
    let env = TestEnv::new();
    let file = env.job(
        "user.toml",
        "[limits]\nuser = \"nobody\"",
        "[[task]]\nname = \"who\"\nrun = 'echo \"$(id -u):$(id -g)\"'\n",
    );
    let (code, run, _sweep) = run_to_end(&env, &file);
    assert_eq!(code, 0, "{}", run.report());
    let store = env.store();
    let id = store.job_ids().pop().expect("the job is stored");
    assert_eq!(
        store.tasks(&id)[0].result,
        format!("{}:{}", nobody.uid, nobody.gid),
        "id -u:id -g of the task\n{}",
        run.report()
    );
}

// ---------------------------------------------------------------------------------------------
// 4: hang detection
// ---------------------------------------------------------------------------------------------

/// One task that waits for `$SVT_DIR/go` (60 s at most), with a revert.
const WAITING_TASK: &str = r#"
[[task]]
name = "wait"
run = 'i=0; while [ ! -e "$SVT_DIR/go" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done; touch "$SVT_DIR/done"'
revert = 'touch "$SVT_DIR/reverted"'
"#;

#[test]
fn stopped_conductor_is_killed_with_kill_unresponsive() {
    let env = TestEnv::new();
    let file = env.job(
        "hang.toml",
        "heartbeat_timeout = \"1s\"\nkill_unresponsive = true",
        WAITING_TASK,
    );
    let state = state_dir(&env);
    let mut run = Mode::Cgroup.spawn(&env, &["run", "--state-dir", &state, path_str(&file)]);
    let id = run.job_id();
    let _sweep = sweep_for(&id);
    let conductor = conductor_pid(&env, &id);
    wait_for(DEADLINE, "the task to run", || {
        let states = env.store().task_states(&id);
        if states.iter().any(|(_, s)| s == "running") {
            Ok(())
        } else {
            Err(states)
        }
    });
    send_signal(conductor, Signal::SIGSTOP);
    let code = run.wait_exit(DEADLINE);
    assert_eq!(code, 4, "a silent conductor is killed\n{}", run.report());
    let err = run.stderr_plain();
    assert!(err.contains("conductor unresponsive"), "{}", run.report());
    assert!(err.contains("revert skipped"), "{}", run.report());
    assert_eq!(env.store().job_state(&id), "killed", "{}", run.report());
    assert_eq!(env.store().pending_reverts(&id), ["wait"]);
    assert!(!env.path("reverted").exists(), "no revert could run");
    env.assert_no_job_process_left();
}

#[test]
fn stopped_conductor_is_reported_unresponsive_then_goes_on() {
    let env = TestEnv::new();
    let daemon = start_daemon(&env, Mode::Cgroup);
    let file = env.job("hang.toml", "heartbeat_timeout = \"1s\"", WAITING_TASK);
    let id = submit(&env, &file);
    let _sweep = sweep_for(&id);
    let st = wait_status(&env, &id, "the task to run", |s| {
        s["tasks"][0]["state"] == "running"
    });
    assert!(
        st["unresponsive_since_ms"].is_null(),
        "a live conductor is not unresponsive: {st:#}"
    );
    let conductor = conductor_pid(&env, &id);
    let stopped_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock is after 1970")
            .as_millis(),
    )
    .expect("ms fit in i64");
    send_signal(conductor, Signal::SIGSTOP);
    let st = wait_status(&env, &id, "unresponsive_since_ms to be set", |s| {
        !s["unresponsive_since_ms"].is_null()
    });
    let since = st["unresponsive_since_ms"]
        .as_i64()
        .unwrap_or_else(|| panic!("unresponsive_since_ms is not a number: {st:#}"));
    // The conductor was silent from its last heartbeat (at most a third of the timeout before
    // the stop) on; allow a second of slack either way.
    assert!(
        (stopped_ms - 2000..=stopped_ms + 1000).contains(&since),
        "unresponsive since {since}, stopped at {stopped_ms}"
    );
    assert!(
        !TERMINAL.contains(&job_state(&st).as_str()),
        "without kill_unresponsive the job lives on: {st:#}"
    );
    wait_for(
        DEADLINE,
        "the daemon's `conductor unresponsive` warning",
        || {
            let err = daemon.stderr_plain();
            if err.contains("conductor unresponsive") {
                Ok(())
            } else {
                Err(err)
            }
        },
    );
    assert!(
        is_alive(conductor),
        "the silent conductor must not be killed"
    );

    send_signal(conductor, Signal::SIGCONT);
    wait_status(&env, &id, "unresponsive_since_ms back to null", |s| {
        s["unresponsive_since_ms"].is_null()
    });
    env.write("go", "");
    let st = wait_terminal(&env, &id);
    assert_eq!(job_state(&st), "success", "{st:#}\n{}", daemon.report());
    assert!(st["unresponsive_since_ms"].is_null(), "{st:#}");
    assert!(env.path("done").exists(), "the task finished");
}

// ---------------------------------------------------------------------------------------------
// 5: the containment mode, in the daemon's log and in status
// ---------------------------------------------------------------------------------------------

/// The daemon's stderr lines that announce its containment.
fn containment_lines(daemon: &Run) -> Vec<String> {
    daemon
        .stderr_plain()
        .lines()
        .filter(|l| l.contains("containment:"))
        .map(str::to_owned)
        .collect()
}

fn containment_is_logged_once_and_shown_in_status(mode: Mode, expected: &str) {
    let env = TestEnv::new();
    let daemon = start_daemon(&env, mode);
    let file = env.job("quick.toml", "", "[[task]]\nname = \"q\"\nrun = 'true'\n");
    let ids = [submit(&env, &file), submit(&env, &file)];
    for id in &ids {
        let st = wait_terminal(&env, id);
        assert_eq!(job_state(&st), "success", "{st:#}");
        assert_eq!(st["containment"], mode.name(), "status --json: {st:#}");
        let (code, out, _) = cli(&env, &["status", id]);
        assert_eq!(code, 0);
        assert!(
            out.contains(&format!("containment: {}", mode.name())),
            "status text: {out}"
        );
    }
    let lines = containment_lines(&daemon);
    assert_eq!(
        lines.len(),
        1,
        "the mode is logged once, at startup:\n{}",
        daemon.report()
    );
    assert!(
        lines[0].contains(expected) && lines[0].contains(&format!("mode=\"{}\"", mode.name())),
        "containment line {:?}",
        lines[0]
    );
}

#[test]
fn cgroup_daemon_logs_its_containment_once() {
    if require_cgroup("cgroup_daemon_logs_its_containment_once").is_some() {
        containment_is_logged_once_and_shown_in_status(
            Mode::Cgroup,
            "containment: one cgroup per job",
        );
    }
}

#[test]
fn session_daemon_logs_its_containment_once() {
    containment_is_logged_once_and_shown_in_status(
        Mode::Session,
        "containment: sessions and process groups",
    );
}

// ---------------------------------------------------------------------------------------------
// Regressions: bugs found while testing, fixed since; these keep them fixed.
// ---------------------------------------------------------------------------------------------

/// A conductor that cannot start (here: one that exits at once, so the supervisor's connect is
/// refused) ends the job `crashed` with exit 4, as documented; its cgroup, created before the
/// spawn, must not be left behind. Regression: a failed launch used to return the error of the
/// spawn or the connect without removing `BASE/job-ID`, leaking one cgroup directory each.
#[test]
fn cgroup_of_a_failed_launch_is_removed() {
    let Some(base) = require_cgroup("cgroup_of_a_failed_launch_is_removed") else {
        return;
    };
    let env = TestEnv::new();
    let file = env.job("quick.toml", "", "[[task]]\nname = \"q\"\nrun = 'true'\n");
    let state = state_dir(&env);
    let mut run = Mode::Cgroup.spawn(
        &env,
        &[
            "run",
            "--state-dir",
            &state,
            "--conductor-bin",
            "/bin/true",
            path_str(&file),
        ],
    );
    let id = run.job_id();
    let cgroup = base.join(format!("job-{id}"));
    let _sweep = CgroupSweep(Some(cgroup.clone()));
    let code = run.wait_exit(DEADLINE);
    assert_eq!(code, 4, "a failed launch is a crash\n{}", run.report());
    assert_eq!(env.store().job_state(&id), "crashed", "{}", run.report());
    assert!(
        !cgroup.exists(),
        "the failed launch left its cgroup {} behind\n{}",
        cgroup.display(),
        run.report()
    );
}

/// A conductor that is silent when a new daemon re-attaches to it (SIGSTOPped while no daemon
/// ran) is as silent as one that stops under the daemon's eyes: with `kill_unresponsive` it must
/// be killed. The re-attaching daemon's handshake times out (5 s) and the job starts without a
/// link; the silence timer must run without a link too (regression: it used to be armed only
/// while a link existed, so such a job was never marked unresponsive nor killed). The other
/// half, a conductor that speaks again after that failed first connect and must be re-attached,
/// is `ownership.rs`, `conductor_stopped_across_a_daemon_restart_then_succeeds`.
#[test]
fn conductor_silent_at_reattach_is_killed_with_kill_unresponsive() {
    let env = TestEnv::new();
    let mut daemon = start_daemon(&env, Mode::Cgroup);
    let file = env.job(
        "hang.toml",
        "heartbeat_timeout = \"1s\"\nkill_unresponsive = true",
        WAITING_TASK,
    );
    let id = submit(&env, &file);
    let _sweep = sweep_for(&id);
    wait_status(&env, &id, "the task to run", |s| {
        s["tasks"][0]["state"] == "running"
    });
    let conductor = conductor_pid(&env, &id);
    sigkill_daemon(&mut daemon);
    send_signal(conductor, Signal::SIGSTOP);
    let daemon = start_daemon(&env, Mode::Cgroup);
    // The handshake timeout (5 s) plus the heartbeat timeout (1 s), with ample slack.
    let st = wait_for(
        std::time::Duration::from_secs(20),
        "the silent conductor to be killed",
        || {
            let st = status(&env, &id);
            if TERMINAL.contains(&job_state(&st).as_str()) {
                Ok(st)
            } else {
                Err(st)
            }
        },
    );
    assert_eq!(job_state(&st), "killed", "{st:#}\n{}", daemon.report());
    assert_nothing_survives(&env, conductor, None, "silent at re-attach");
}
