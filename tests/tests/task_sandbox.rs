//! What a task sees and what it can make the supervisor keep: black-box proofs that the holes of
//! the sandbox are closed. Each test names the hole it proves closed.
//!
//! Build the binaries first: `cargo build --workspace --bins`. Tests that switch users need
//! root: elsewhere they skip through [`skip_unless_ci`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tests::{
    DEADLINE, LONG_DEADLINE, MARK_VAR, Run, TestEnv, cli_at, skip_unless_ci, wait_daemon_ready,
};

fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// `supervisor ARGS --state-dir DIR` to its end: (exit code, stdout, stderr).
fn cli(env: &TestEnv, args: &[&str]) -> (i32, String, String) {
    cli_at(env, &env.state_dir(), args, DEADLINE)
}

/// Writes a job file: `top`, an `[env]` with the test marker, then `tasks`.
fn job(env: &TestEnv, name: &str, top: &str, tasks: &str) -> PathBuf {
    env.job(&format!("{name}.toml"), top, tasks)
}

/// Runs `supervisor run FILE` to its end; (exit code, the run).
fn run_job(env: &TestEnv, file: &Path, deadline: Duration) -> (i32, Run) {
    let mut run = env.spawn_run(file);
    let code = run.wait_exit(deadline);
    (code, run)
}

/// The lines task `task` printed under `supervisor run`, without the `[task] ` prefix.
fn task_lines(run: &Run, task: &str) -> Vec<String> {
    let prefix = format!("[{task}] ");
    run.stdout_lines()
        .into_iter()
        .filter_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
        .collect()
}

/// `NAME=VALUE` lines as a map (lines without `=` are left out).
fn env_map(lines: &[String]) -> BTreeMap<String, String> {
    lines
        .iter()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Starts a daemon on the test's state dir with `set` added to its environment.
fn start_daemon_with_env(env: &TestEnv, set: &[(&str, &str)]) -> Run {
    let state_dir = env.state_dir();
    let args = ["daemon", "--state-dir", path_str(&state_dir)];
    let mut daemon = env.spawn_with_env(&args, set, &[]);
    wait_daemon_ready(env, &state_dir, &mut daemon);
    daemon
}

/// The job's stored output (`supervisor logs ID`), one line each.
fn logs(env: &TestEnv, id: &str) -> Vec<String> {
    let (code, out, err) = cli(env, &["logs", id]);
    assert_eq!(code, 0, "logs {id}: {err}");
    out.lines().map(str::to_owned).collect()
}

/// Hole 3 closed: a task inherited the daemon's whole environment (its `SUPERVISOR_*`,
/// `RUST_LOG`, systemd's variables, any secret). Now it gets the allow-list (PATH, LANG, LC_*,
/// TZ, TERM), its login (HOME, USER, LOGNAME, SHELL), what the conductor sets, the job's and the
/// task's `env`, and the names in `inherit_env`: nothing else.
#[test]
fn a_task_sees_only_the_allowed_environment() {
    let env = TestEnv::new();
    let _daemon = start_daemon_with_env(
        &env,
        &[
            ("SUPERVISOR_SECRET", "s3cret"),
            ("RUST_LOG", "trace"),
            ("INVOCATION_ID", "0123abcd"),
            ("NOTIFY_SOCKET", "/run/systemd/notify"),
            ("DATABASE_PASSWORD", "hunter2"),
            ("HTTP_PROXY", "http://proxy.invalid:3128"),
            ("LC_TIME", "C"),
            ("TZ", "UTC"),
        ],
    );
    let file = job(
        &env,
        "envs",
        "inherit_env = [\"HTTP_PROXY\", \"NOT_SET_ANYWHERE\"]",
        "[[task]]\nname = \"e\"\nrun = \"env\"\nenv = { TASK_VAR = \"t\" }\n",
    );
    let id = env.submit_wait(&file, LONG_DEADLINE);
    let seen = env_map(
        &logs(&env, &id)
            .iter()
            .filter_map(|l| l.strip_prefix("[e] ").map(str::to_owned))
            .collect::<Vec<_>>(),
    );
    for hidden in [
        "SUPERVISOR_SECRET",
        "SUPERVISOR_STATE_DIR",
        "RUST_LOG",
        "INVOCATION_ID",
        "NOTIFY_SOCKET",
        "DATABASE_PASSWORD",
        "NOT_SET_ANYWHERE",
        tests::OWNER_VAR,
    ] {
        assert!(!seen.contains_key(hidden), "{hidden} leaked: {seen:#?}");
    }
    assert!(
        seen.keys().all(|k| !k.starts_with("SUPERVISOR")),
        "{seen:#?}"
    );
    assert_eq!(seen.get("JOB_ID"), Some(&id));
    assert_eq!(seen.get("TASK_NAME").map(String::as_str), Some("e"));
    assert_eq!(seen.get("TASK_VAR").map(String::as_str), Some("t"));
    assert_eq!(seen.get(MARK_VAR).map(String::as_str), Some(env.marker()));
    assert_eq!(
        seen.get("HTTP_PROXY").map(String::as_str),
        Some("http://proxy.invalid:3128")
    );
    assert_eq!(seen.get("LC_TIME").map(String::as_str), Some("C"));
    assert_eq!(seen.get("TZ").map(String::as_str), Some("UTC"));
    assert!(seen.contains_key("PATH"), "{seen:#?}");
    let allowed = [
        "PATH",
        "LANG",
        "TZ",
        "TERM",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "JOB_ID",
        "TASK_NAME",
        "TASK_VAR",
        "HTTP_PROXY",
        "SVT_DIR",
        MARK_VAR,
        // The shell's own.
        "PWD",
        "SHLVL",
        "_",
        "OLDPWD",
    ];
    let extra: Vec<&String> = seen
        .keys()
        .filter(|k| !allowed.contains(&k.as_str()) && !k.starts_with("LC_"))
        .collect();
    assert!(
        extra.is_empty(),
        "variables beyond the allow-list: {extra:?}"
    );
}

/// A user with supplementary groups beyond its own (a member listed in `/etc/group`), else
/// `nobody`.
fn user_with_groups() -> Option<String> {
    let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let member = groups.lines().find_map(|line| {
        let members = line.split(':').nth(3)?;
        members
            .split(',')
            .find(|m| !m.is_empty() && m != &"root")
            .map(str::to_owned)
    });
    member
        .filter(|m| nix::unistd::User::from_name(m).ok().flatten().is_some())
        .or_else(|| {
            nix::unistd::User::from_name("nobody")
                .ok()
                .flatten()
                .map(|u| u.name)
        })
}

/// `id -G USER`, sorted.
fn groups_of(user: &str) -> Vec<u32> {
    let out = std::process::Command::new("id")
        .args(["-G", user])
        .output()
        .expect("id runs");
    let mut groups: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|g| g.parse().ok())
        .collect();
    groups.sort_unstable();
    groups
}

/// Hole 3 closed: with `[limits] user`, a task kept root's HOME, USER, LOGNAME, SHELL and PATH,
/// lost its supplementary groups instead of getting the user's. Now it gets the user's login
/// environment and group list. And hole 1 holds with `user` too: the task sees only 0, 1, 2.
#[test]
fn with_user_a_task_gets_that_user_s_login_groups_and_only_descriptors_0_1_2() {
    const TEST: &str = "with_user_a_task_gets_that_user_s_login_groups_and_only_descriptors_0_1_2";
    if !is_root() {
        skip_unless_ci(TEST, "not root");
        return;
    }
    let Some(user) = user_with_groups() else {
        skip_unless_ci(TEST, "no user to switch to");
        return;
    };
    let entry = nix::unistd::User::from_name(&user)
        .ok()
        .flatten()
        .expect("the user exists");
    let env = TestEnv::new();
    let file = job(
        &env,
        "login",
        &format!("[limits]\nuser = \"{user}\""),
        "[[task]]\nname = \"env\"\nrun = \"env\"\n\
         [[task]]\nname = \"ids\"\nrun = 'echo \"uid=$(id -u) groups=$(id -G)\"'\n\
         [[task]]\nname = \"fds\"\nrun = 'ls /proc/$$/fd; true'\n",
    );
    let (code, run) = run_job(&env, &file, LONG_DEADLINE);
    assert_eq!(code, 0, "{}", run.report());

    let seen = env_map(&task_lines(&run, "env"));
    assert_eq!(seen.get("USER"), Some(&user), "{seen:#?}");
    assert_eq!(seen.get("LOGNAME"), Some(&user), "{seen:#?}");
    assert_eq!(
        seen.get("HOME").map(String::as_str),
        entry.dir.to_str(),
        "{seen:#?}"
    );
    assert_eq!(
        seen.get("SHELL").map(String::as_str),
        entry.shell.to_str(),
        "{seen:#?}"
    );
    assert_eq!(
        seen.get("PATH").map(String::as_str),
        Some(conductor_worker::task_env::USER_PATH)
    );

    let ids = task_lines(&run, "ids");
    let line = ids
        .iter()
        .find(|l| l.starts_with("uid="))
        .unwrap_or_else(|| panic!("the ids task printed nothing: {ids:?}"));
    let (uid, groups) = line
        .strip_prefix("uid=")
        .and_then(|rest| rest.split_once(" groups="))
        .expect("uid=N groups=...");
    assert_eq!(uid, entry.uid.to_string());
    let mut groups: Vec<u32> = groups
        .split_whitespace()
        .filter_map(|g| g.parse().ok())
        .collect();
    groups.sort_unstable();
    assert_eq!(groups, groups_of(&user), "supplementary groups of {user}");
    assert!(!groups.contains(&0), "root's group kept: {groups:?}");

    let fds: Vec<String> = task_lines(&run, "fds")
        .into_iter()
        .filter(|l| l.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    assert_eq!(fds, ["0", "1", "2"], "{}", run.report());
}

/// Hole 1 closed, with `user` too: a task running as `nobody` under the daemon lists its own
/// descriptors and sees only 0, 1 and 2 (not the job's socket, nor any pipe, pidfd or log of
/// the conductor).
#[test]
fn a_task_as_nobody_sees_only_descriptors_0_1_2() {
    const TEST: &str = "a_task_as_nobody_sees_only_descriptors_0_1_2";
    if !is_root() {
        skip_unless_ci(TEST, "not root");
        return;
    }
    if nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .is_none()
    {
        skip_unless_ci(TEST, "no user nobody");
        return;
    }
    let env = TestEnv::new();
    let _daemon = start_daemon_with_env(&env, &[]);
    let file = job(
        &env,
        "fds-nobody",
        "[limits]\nuser = \"nobody\"",
        "[[task]]\nname = \"fds\"\nrun = 'id -un; ls /proc/$$/fd; true'\n",
    );
    let id = env.submit_wait(&file, LONG_DEADLINE);
    let lines: Vec<String> = logs(&env, &id)
        .iter()
        .map(|l| l.trim_end().to_owned())
        .collect();
    assert_eq!(
        lines,
        ["[fds] nobody", "[fds] 0", "[fds] 1", "[fds] 2"],
        "the task as nobody saw other descriptors"
    );
}

/// A user unknown on this host fails the task that needs it, with the name in the reason; a
/// command without `revert` then has nothing to undo: the job ends `reverted` (exit 1), not
/// `revert_failed` (exit 5, which asked for a `supervisor revert` that could only fail again).
#[test]
fn an_unknown_user_fails_the_task_and_a_command_without_revert_needs_no_revert() {
    let env = TestEnv::new();
    let file = job(
        &env,
        "nouser",
        "[limits]\nuser = \"sv-no-such-user\"",
        "[[task]]\nname = \"a\"\nrun = \"true\"\n",
    );
    let (code, run) = run_job(&env, &file, LONG_DEADLINE);
    assert_eq!(code, shared::exit::TASK_FAILED, "{}", run.report());
    let lines = task_lines(&run, "a");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("failure: no user \"sv-no-such-user\" on this host")),
        "{}",
        run.report()
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("revert failed")),
        "{}",
        run.report()
    );
}

/// Hole 3 closed: `group` without `user` kept uid 0 (a task ran as root with another group).
/// Now it is refused at validation: exit 2, at the `group` key, saying why.
#[test]
fn group_alone_is_refused() {
    let env = TestEnv::new();
    let file = job(
        &env,
        "group",
        "[limits]\ngroup = \"nogroup\"",
        "[[task]]\nname = \"a\"\nrun = \"true\"\n",
    );
    for verb in ["validate", "run"] {
        let mut run = env.spawn(&[
            verb,
            "--state-dir",
            path_str(&env.state_dir()),
            path_str(&file),
        ]);
        assert_eq!(run.wait_exit(DEADLINE), 2, "{verb}: {}", run.report());
        let err = run.stderr_plain();
        assert!(
            err.contains(&format!("{}:2:9:", path_str(&file)))
                && err.contains("`group` needs `user`"),
            "{verb}: {err}"
        );
    }
}

/// Hole 2 closed: a native task runs inside the conductor, which runs as the supervisor's user
/// (root): under `user = "..."` it ran as root anyway. Now a job with a native task and a
/// per-process limit (user, group, nofile, core, cpu_time) is refused at validation, by
/// `validate`, `run` and `submit` alike.
#[test]
fn a_native_task_with_user_is_refused() {
    let env = TestEnv::new();
    let file = job(
        &env,
        "native-user",
        "worker = \"test-worker\"\n[limits]\nuser = \"nobody\"",
        "[[task]]\nname = \"n\"\nkind = \"echo\"\n",
    );
    let _daemon = tests::start_daemon_at(&env, &env.state_dir(), &[]);
    for verb in ["validate", "run", "submit"] {
        let mut run = env.spawn(&[
            verb,
            path_str(&file),
            "--state-dir",
            path_str(&env.state_dir()),
        ]);
        assert_eq!(run.wait_exit(DEADLINE), 2, "{verb}: {}", run.report());
        let err = run.stderr_plain();
        assert!(
            err.contains(&format!("{}:3:8:", path_str(&file)))
                && err.contains("native task \"n\"")
                && err.contains("supervisor's user"),
            "{verb}: {err}"
        );
    }
    let (code, out, _) = cli(&env, &["ls", "--all", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "[]", "nothing was submitted");
}

/// Hole 3 closed: rlimits were set after `setuid`, so raising one above the daemon's hard limit
/// failed under `user`. Now they are set while still root: a task as `nobody` gets a `nofile`
/// above the daemon's own hard limit.
#[test]
fn a_raised_nofile_works_with_user() {
    const TEST: &str = "a_raised_nofile_works_with_user";
    if !is_root() {
        skip_unless_ci(TEST, "not root");
        return;
    }
    if nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .is_none()
    {
        skip_unless_ci(TEST, "no user nobody");
        return;
    }
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("getrlimit");
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(1 << 20);
    let raised = (hard + 1000).min(nr_open);
    assert!(
        raised > hard,
        "cannot raise above {hard} (nr_open {nr_open})"
    );
    // Root needs CAP_SYS_RESOURCE to raise a hard limit; some containers drop it.
    let probe = std::process::Command::new("/bin/sh")
        .args(["-c", &format!("ulimit -n {raised}")])
        .status()
        .expect("sh runs");
    if !probe.success() {
        // Not a missing privilege CI could grant: this machine kind runs root without
        // CAP_SYS_RESOURCE, and without it nobody (root or not, before or after the switch) may
        // raise a hard limit, so there is nothing to tell apart. Printed, even under CI=true.
        eprintln!(
            "SKIPPED {TEST}: root may not raise RLIMIT_NOFILE here (no CAP_SYS_RESOURCE); rlimits-before-setuid is not exercised on this host"
        );
        return;
    }
    let env = TestEnv::new();
    let file = job(
        &env,
        "nofile",
        &format!("[limits]\nuser = \"nobody\"\nnofile = {raised}"),
        "[[task]]\nname = \"n\"\nrun = 'echo \"$(id -un) $(ulimit -n)\"'\n",
    );
    let (code, run) = run_job(&env, &file, LONG_DEADLINE);
    assert_eq!(code, 0, "{}", run.report());
    let lines = task_lines(&run, "n");
    assert!(
        lines.contains(&format!("nobody {raised}")),
        "{lines:?}\n{}",
        run.report()
    );
}

/// Total size of the files under `dir`.
fn tree_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => tree_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// A process's resident set and its peak, in KiB (`VmRSS`, `VmHWM`).
fn rss_kib(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Hole 5 closed: a task printing 270 MB grew the store by 357 MB. Now each step keeps at most
/// its `max_output` (16 MiB by default: the head and the tail), with a line saying how many
/// bytes were dropped, and the queues between conductor and supervisor are bounded: a 300 MB
/// flood grows the store by about the cap.
#[test]
fn an_output_flood_grows_the_store_by_about_the_cap() {
    let env = TestEnv::new();
    let daemon = start_daemon_with_env(&env, &[]);
    let state_dir = env.state_dir();
    let store_before = tree_size(&state_dir);
    let rss_before = rss_kib(daemon.pid());
    let file = job(
        &env,
        "flood",
        "",
        "[[task]]\nname = \"flood\"\n\
         run = \"head -c 300000000 /dev/zero | tr '\\\\0' x | fold -w 100; echo; echo last line\"\n",
    );
    let id = env.submit_wait(&file, Duration::from_secs(120));
    let store_after = tree_size(&state_dir);
    let rss_after = rss_kib(daemon.pid());
    let grown = store_after.saturating_sub(store_before);
    eprintln!(
        "flood of 300000000 bytes: store {store_before} -> {store_after} bytes (grew {grown}); \
         daemon VmRSS {} -> {} KiB, VmHWM {} KiB",
        rss_before.0, rss_after.0, rss_after.1
    );
    assert!(grown < 64 << 20, "the store grew by {grown} bytes");
    let lines = logs(&env, &id);
    let behind = lines
        .iter()
        .filter(|l| l.contains("the supervisor was not taking them"))
        .count();
    eprintln!(
        "flood: {} lines in `logs`, {behind} of them say the supervisor fell behind",
        lines.len()
    );
    let dropped = lines
        .iter()
        .find(|l| l.contains("bytes of output dropped"))
        .unwrap_or_else(|| panic!("no line says what was dropped ({} lines)", lines.len()));
    assert!(dropped.contains("max_output"), "{dropped}");
    assert_eq!(
        lines.last().map(|l| l.trim_end()),
        Some("[flood] last line"),
        "the tail is kept"
    );
    assert_eq!(
        lines.first().map(|l| l.trim_end()),
        Some(&*format!("[flood] {}", "x".repeat(100))),
        "the head is kept"
    );
}
