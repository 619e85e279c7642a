//! What operators reach for (issue 13): who and why, pause and continue, and the everyday
//! commands, end to end against the real binaries.
//!
//! Build the binaries first: `cargo build --workspace --bins`. Every test has its own
//! [`TestEnv`] and daemon; nothing sleeps a fixed time: tests poll under generous deadlines.

use serde_json::Value;
use std::path::Path;
use tests::{DEADLINE, LONG_DEADLINE, Run, TestEnv, cli_at, wait_for};

fn cli(env: &TestEnv, args: &[&str]) -> (i32, String, String) {
    cli_at(env, &env.state_dir(), args, LONG_DEADLINE)
}

fn spawn_cli(env: &TestEnv, args: &[&str]) -> Run {
    let dir = env.state_dir();
    let mut full = args.to_vec();
    full.extend_from_slice(&["--state-dir", dir.to_str().expect("UTF-8 test paths")]);
    env.spawn(&full)
}

/// Waits until task `task` of job `id` runs (the task wrote its marker file `NAME-started`).
fn wait_started(env: &TestEnv, id: &str, marker: &str) {
    wait_for(DEADLINE, "the task to start", || {
        if env.read(marker).is_empty() {
            Err(env.status_json(id))
        } else {
            Ok(())
        }
    });
}

/// A job of one task that marks its start in `started-NAME` and sleeps; its revert appends to
/// `undo-NAME` (or sleeps too, with `slow_revert`).
fn sleeper(env: &TestEnv, name: &str, top: &str, slow_revert: bool) -> std::path::PathBuf {
    let revert = if slow_revert {
        "sleep 60".to_owned()
    } else {
        format!("echo undone >> \\\"$SVT_DIR/undo-{name}\\\"")
    };
    let tasks = format!(
        "[[task]]\nname = \"a\"\nrun = \"echo go > \\\"$SVT_DIR/started-{name}\\\"; exec sleep 60\"\nrevert = \"{revert}\"\n"
    );
    env.job(
        &format!("{name}.toml"),
        &format!("name = \"{name}\"\n{top}"),
        &tasks,
    )
}

fn my_uid() -> u64 {
    u64::from(nix::unistd::getuid().as_raw())
}

/// Issue 13, who and why: `cancel --reason` records the peer's uid and pid (from the kernel),
/// its command line and the reason; `status` shows them, `status --json` and `events --json`
/// carry them.
#[test]
fn a_cancel_records_who_asked_and_why() {
    let env = TestEnv::new();
    let _daemon = env.start_daemon(&[]);
    let events = spawn_cli(&env, &["events", "--json"]);
    let id = env.submit(&sleeper(&env, "c", "", false));
    wait_started(&env, &id, "started-c");

    let (code, out, err) = cli(
        &env,
        &["cancel", &id, "--reason", "rollout aborted", "--wait"],
    );
    assert_eq!(code, 3, "cancel --wait: {out} {err}");
    let st = env.status_json(&id);
    let order = &st["last_order"];
    assert_eq!(order["action"], "cancel", "{st:#}");
    assert_eq!(order["uid"].as_u64(), Some(my_uid()), "{st:#}");
    assert!(order["pid"].as_i64().is_some_and(|p| p > 0), "{st:#}");
    assert_eq!(order["reason"], "rollout aborted", "{st:#}");
    let command = order["command"].as_str().unwrap_or_default();
    assert!(
        command.contains("cancel") && command.contains(&id),
        "the requester's command line: {command:?}"
    );

    let (code, text, _) = cli(&env, &["status", &id]);
    assert_eq!(code, 0);
    let expected = format!("cancelled by uid {} (pid ", my_uid());
    assert!(text.contains(&expected), "status:\n{text}");
    assert!(text.contains(": \"rollout aborted\""), "status:\n{text}");

    let line = wait_for(DEADLINE, "the cancelling event with its requester", || {
        let out = events.stdout();
        out.lines()
            .find(|l| l.contains("\"cancelling\"") && l.contains("rollout aborted"))
            .map(str::to_owned)
            .ok_or(out)
    });
    let event: Value = serde_json::from_str(&line).expect("event JSON");
    assert_eq!(event["by"]["uid"].as_u64(), Some(my_uid()), "{event:#}");
    assert_eq!(event["job"], id.as_str());
    events.signal(nix::sys::signal::Signal::SIGTERM);
}

/// Issue 13: the `revert skipped` WARN names who caused the kill: an operator's kill, or the
/// kill timer after an operator's cancel (with that operator).
#[test]
fn revert_skipped_names_who_caused_the_kill() {
    let env = TestEnv::new();
    let daemon = env.start_daemon(&[]);

    let id = env.submit(&sleeper(&env, "k", "", false));
    wait_started(&env, &id, "started-k");
    let (code, out, err) = cli(&env, &["kill", &id, "--reason", "stuck", "--wait"]);
    assert_eq!(code, 4, "kill --wait: {out} {err}");
    let warn = |id: &str| {
        wait_for(DEADLINE, "the `revert skipped` WARN line", || {
            let err = daemon.stderr_plain();
            err.lines()
                .find(|l| l.contains("revert skipped") && l.contains(&format!("job_id={id}")))
                .map(str::to_owned)
                .ok_or(err)
        })
    };
    let line = warn(&id);
    assert!(line.contains("cause=\"operator\""), "WARN line: {line}");
    assert!(
        line.contains(&format!("by=\"uid {} (pid", my_uid())),
        "WARN line: {line}"
    );
    let st = env.status_json(&id);
    assert_eq!(st["last_order"]["action"], "kill", "{st:#}");
    assert_eq!(st["last_order"]["reason"], "stuck", "{st:#}");

    // The revert hangs, the cancel's timer kills the job: the timer is the cause, the operator
    // who cancelled is named.
    let top = "term_grace = \"100ms\"\n";
    let id = env.submit(&sleeper(&env, "t", top, true));
    wait_started(&env, &id, "started-t");
    let (code, out, err) = cli(
        &env,
        &[
            "cancel",
            &id,
            "--timeout",
            "1s",
            "--reason",
            "drain",
            "--wait",
        ],
    );
    assert_eq!(
        code, 4,
        "cancel --wait ended by the kill timer: {out} {err}"
    );
    let line = warn(&id);
    assert!(
        line.contains("cause=\"kill timer after an operator's cancel\""),
        "WARN line: {line}"
    );
    assert!(line.contains("by=\"uid "), "WARN line: {line}");
}

/// How the daemon contains jobs in a pause test.
#[derive(Clone, Copy, Debug)]
enum Mode {
    Cgroup,
    Session,
}

/// Starts a daemon in `mode` (cgroup mode only where a writable cgroup v2 is; else `None`,
/// after [`tests::skip_unless_ci`] said why).
fn daemon_in(env: &TestEnv, mode: Mode, test: &str) -> Option<Run> {
    let dir = env.state_dir();
    let args = [
        "daemon",
        "--state-dir",
        dir.to_str().expect("UTF-8 test paths"),
    ];
    let mut daemon = match mode {
        Mode::Session => env.spawn_with_env(&args, &[("SUPERVISOR_CONTAINMENT", "session")], &[]),
        Mode::Cgroup => {
            if let Err(reason) = writable_cgroup() {
                tests::skip_unless_ci(test, &format!("no writable cgroup v2 here ({reason})"));
                return None;
            }
            env.spawn_with_env(&args, &[], &["SUPERVISOR_CONTAINMENT"])
        }
    };
    tests::wait_daemon_ready(env, &dir, &mut daemon);
    Some(daemon)
}

/// Whether this host gives the tests a writable cgroup v2 with `cgroup.freeze` (as root).
fn writable_cgroup() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not running as root".into());
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
    let mount = shared::cgroup::unified_mount(&mountinfo).ok_or("no cgroup2 hierarchy")?;
    let own_text = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
    let own = shared::cgroup::own_cgroup(&own_text).ok_or("no 0:: line in /proc/self/cgroup")?;
    let base = Path::new(mount).join(own.trim_start_matches('/'));
    let probe = base.join(format!("svt-freeze-probe-{}", std::process::id()));
    std::fs::create_dir(&probe).map_err(|e| format!("cannot create a cgroup: {e}"))?;
    let ok = probe.join("cgroup.freeze").exists() && probe.join("cgroup.kill").exists();
    let _ = std::fs::remove_dir(&probe);
    if ok {
        Ok(())
    } else {
        Err("no cgroup.freeze or cgroup.kill".into())
    }
}

/// A job whose task appends a line to `ticks-NAME` every 20 ms until stopped; its revert
/// writes `undo-NAME`.
fn ticker(env: &TestEnv, name: &str, top: &str) -> std::path::PathBuf {
    let tasks = format!(
        "[[task]]\nname = \"tick\"\nrun = \"while true; do echo x >> \\\"$SVT_DIR/ticks-{name}\\\"; sleep 0.02; done\"\nrevert = \"echo undone > \\\"$SVT_DIR/undo-{name}\\\"\"\n"
    );
    env.job(
        &format!("{name}.toml"),
        &format!("name = \"{name}\"\n{top}"),
        &tasks,
    )
}

fn ticks(env: &TestEnv, name: &str) -> usize {
    env.lines(&format!("ticks-{name}")).len()
}

fn wait_ticking(env: &TestEnv, name: &str, more_than: usize) {
    wait_for(DEADLINE, "the task to tick", || {
        let n = ticks(env, name);
        if n > more_than { Ok(()) } else { Err(n) }
    });
}

/// The `at_ms` of the first `events --json` line for `id` whose state is `state`.
fn event_at(events: &Run, id: &str, state: &str) -> i64 {
    wait_for(DEADLINE, "the event", || {
        let out = events.stdout();
        out.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| e["job"] == id && e["state"] == state && e["task"].is_null())
            .and_then(|e| e["at_ms"].as_i64())
            .ok_or_else(|| format!("no {state} event for {id} in:\n{out}"))
    })
}

/// Issue 13, pause and continue: a paused job's processes stop (no tick while paused), it is
/// never marked unresponsive (heartbeat_timeout 1s, kill_unresponsive on), its job timeout
/// stops counting, and `continue` thaws it; a paused job can be cancelled (thawed, then the
/// ladder: its revert runs) or killed (nothing is left).
fn pause_and_continue(mode: Mode, test: &str) {
    let env = TestEnv::new();
    let Some(_daemon) = daemon_in(&env, mode, test) else {
        return;
    };
    let events = spawn_cli(&env, &["events", "--json"]);
    let top = "timeout = \"3s\"\nheartbeat_timeout = \"1s\"\nkill_unresponsive = true\n";
    let id = env.submit(&ticker(&env, "p", top));
    wait_ticking(&env, "p", 0);

    let (code, out, err) = cli(&env, &["pause", &id, "--reason", "look at it"]);
    assert_eq!(code, 0, "pause: {out} {err}");
    let paused_at = event_at(&events, &id, "paused");
    let frozen = ticks(&env, "p");
    let st = env.status_json(&id);
    assert!(st["paused_since_ms"].is_i64(), "{st:#}");
    assert_eq!(st["last_order"]["action"], "pause", "{st:#}");
    let (_, ls, _) = cli(&env, &["ls"]);
    assert!(ls.contains("running PAUSED"), "ls:\n{ls}");
    let (code, _, _) = cli(&env, &["pause", &id]);
    assert_eq!(code, 8, "a second pause is refused");

    // Longer than the job timeout and three heartbeat timeouts: nothing may happen.
    std::thread::sleep(std::time::Duration::from_millis(3500));
    assert_eq!(ticks(&env, "p"), frozen, "the task ticked while paused");
    let st = env.status_json(&id);
    assert_eq!(st["state"], "running", "{st:#}");
    assert!(st["unresponsive_since_ms"].is_null(), "{st:#}");

    let (code, out, err) = cli(&env, &["continue", &id]);
    assert_eq!(code, 0, "continue: {out} {err}");
    let continued_at = event_at(&events, &id, "continued");
    assert!(env.status_json(&id)["paused_since_ms"].is_null());
    wait_ticking(&env, "p", frozen);
    // The job timeout resumes where it stopped: what was left of its 3 s when it was paused.
    let cancelling_at = event_at(&events, &id, "cancelling");
    let ran_before = paused_at - env.status_json(&id)["started_ms"].as_i64().unwrap_or(0);
    assert!(
        cancelling_at - continued_at >= 3000 - ran_before - 300,
        "the timeout counted the pause: ran {ran_before} ms, paused at {paused_at}, continued at {continued_at}, cancelled at {cancelling_at}"
    );

    // Cancel of a paused job: thawed, then the ladder (the revert runs).
    let id = env.submit(&ticker(&env, "c", ""));
    wait_ticking(&env, "c", 0);
    assert_eq!(cli(&env, &["pause", &id]).0, 0);
    let (code, out, err) = cli(&env, &["cancel", &id, "--wait"]);
    assert_eq!(code, 3, "cancel of a paused job: {out} {err}");
    assert_eq!(env.read("undo-c").trim(), "undone");
    assert!(env.status_json(&id)["paused_since_ms"].is_null());

    // Kill of a paused job: nothing is left.
    let id = env.submit(&ticker(&env, "k", ""));
    wait_ticking(&env, "k", 0);
    assert_eq!(cli(&env, &["pause", &id]).0, 0);
    let (code, out, err) = cli(&env, &["kill", &id, "--wait"]);
    assert_eq!(code, 4, "kill of a paused job: {out} {err}");
    let st = env.status_json(&id);
    assert!(st["paused_since_ms"].is_null(), "{st:#}");
    wait_for(DEADLINE, "no process of the killed job left", || {
        let left = env.marked_processes();
        if left.is_empty() { Ok(()) } else { Err(left) }
    });
    events.signal(nix::sys::signal::Signal::SIGTERM);
}

#[test]
fn pause_and_continue_in_session_mode() {
    pause_and_continue(Mode::Session, "pause_and_continue_in_session_mode");
}

#[test]
fn pause_and_continue_in_cgroup_mode() {
    pause_and_continue(Mode::Cgroup, "pause_and_continue_in_cgroup_mode");
}

/// Issue 13, compensation retries: a revert that fails twice is tried again after
/// `revert_retry_delay` and succeeds on its third attempt (the job ends `reverted`, each attempt
/// was written ahead and reported); one that keeps failing gives up after `revert_retries`
/// extra attempts (`revert_failed`).
#[test]
fn a_failed_revert_is_retried_before_the_job_gives_up() {
    let env = TestEnv::new();
    let _daemon = env.start_daemon(&[]);
    let events = spawn_cli(&env, &["events", "--json"]);
    // The revert fails until its third attempt (it counts them in a file).
    let flaky = |name: &str, succeed_at: u32| {
        let tasks = format!(
            "[[task]]\nname = \"a\"\nrun = \"true\"\nrevert = \"n=$(cat \\\"$SVT_DIR/n-{name}\\\" 2>/dev/null || echo 0); n=$((n+1)); echo $n > \\\"$SVT_DIR/n-{name}\\\"; [ $n -ge {succeed_at} ]\"\nrevert_retries = 2\nrevert_retry_delay = \"50ms\"\n[[task]]\nname = \"b\"\nrun = \"false\"\n"
        );
        env.job(
            &format!("{name}.toml"),
            &format!("name = \"{name}\""),
            &tasks,
        )
    };

    let id = env.submit(&flaky("third", 3));
    let (code, out, err) = cli(&env, &["wait", &id]);
    assert_eq!(code, 1, "the task failed and every revert ran: {out} {err}");
    let st = env.status_json(&id);
    assert_eq!(st["state"], "reverted", "{st:#}");
    assert_eq!(env.read("n-third").trim(), "3");
    let reverting = wait_for(DEADLINE, "three revert attempts in the events", || {
        let out = events.stdout();
        let n = out
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["job"] == id.as_str() && e["task"] == "a" && e["state"] == "reverting")
            .count();
        if n == 3 { Ok(n) } else { Err(out) }
    });
    assert_eq!(reverting, 3);

    let id = env.submit(&flaky("never", 99));
    let (code, out, err) = cli(&env, &["wait", &id]);
    assert_eq!(code, 5, "a revert failed for good: {out} {err}");
    assert_eq!(env.status_json(&id)["state"], "revert_failed");
    assert_eq!(
        env.read("n-never").trim(),
        "3",
        "one attempt and two retries"
    );
    events.signal(nix::sys::signal::Signal::SIGTERM);
}

/// Issue 13, hooks: the job's `[hooks]` and the daemon's `--hook-end` / `--hook-revert-skipped`
/// run when a job ends (with its status JSON on stdin and JOB_ID, JOB_STATE, JOB_REASON), once
/// each; a hanging hook delays nothing.
#[test]
fn hooks_run_once_at_the_end_with_the_status() {
    let env = TestEnv::new();
    let dir = env.dir().display().to_string();
    let daemon_end = format!(
        "cat > \"{dir}/daemon-end-$JOB_ID.json\"; echo \"$JOB_STATE\" >> \"{dir}/daemon-ends\""
    );
    let daemon_skipped =
        format!("echo \"$JOB_ID $JOB_STATE $JOB_REASON\" >> \"{dir}/daemon-skipped\"");
    let _daemon = env.start_daemon(&[
        "--hook-end",
        &daemon_end,
        "--hook-revert-skipped",
        &daemon_skipped,
    ]);

    // A job with its own hooks: one that records, one that hangs for 20 s (and must delay nothing).
    let hooks = format!(
        "[hooks]\non_end = \"echo $JOB_STATE >> '{dir}/job-end'; exec sleep 20\"\non_revert_skipped = \"echo $JOB_STATE >> '{dir}/job-skipped'\"\n"
    );
    let ok = env.job(
        "ok.toml",
        &format!("name = \"ok\"\n{hooks}"),
        "[[task]]\nname = \"a\"\nrun = \"true\"\n",
    );
    let id = env.submit(&ok);
    let (code, out, err) = cli(&env, &["wait", &id]);
    assert_eq!(code, 0, "{out} {err}");
    let json = wait_for(DEADLINE, "the daemon's end hook", || {
        let text = env.read(&format!("daemon-end-{id}.json"));
        serde_json::from_str::<Value>(&text).map_err(|e| (e.to_string(), text))
    });
    assert_eq!(json["id"], id.as_str(), "{json:#}");
    assert_eq!(json["state"], "success", "{json:#}");
    wait_for(DEADLINE, "the job's end hook", || {
        let lines = env.lines("job-end");
        if lines == ["success"] {
            Ok(())
        } else {
            Err(lines)
        }
    });

    // A killed job: the revert_skipped hooks run too, with the state and the reason.
    let killed = sleeper(&env, "k", &hooks, false);
    let id2 = env.submit(&killed);
    wait_started(&env, &id2, "started-k");
    let (code, _, _) = cli(&env, &["kill", &id2, "--wait"]);
    assert_eq!(code, 4);
    let line = wait_for(DEADLINE, "the daemon's revert_skipped hook", || {
        let lines = env.lines("daemon-skipped");
        lines.first().cloned().ok_or(lines)
    });
    assert!(line.starts_with(&format!("{id2} killed ")), "{line}");
    assert!(line.contains("kill requested"), "{line}");
    wait_for(DEADLINE, "the job's hooks for the kill", || {
        let (ends, skipped) = (env.lines("job-end"), env.lines("job-skipped"));
        if ends == ["success", "killed"] && skipped == ["killed"] {
            Ok(())
        } else {
            Err((ends, skipped))
        }
    });
    wait_for(DEADLINE, "the daemon's end hooks", || {
        let ends = env.lines("daemon-ends");
        if ends == ["success", "killed"] {
            Ok(())
        } else {
            Err(ends)
        }
    });
    assert_eq!(env.lines("daemon-skipped").len(), 1, "run once");
}

/// `GET PATH` on `addr` with a plain HTTP/1.1 client over a `TcpStream`: (status, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the metrics address");
    stream
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample `name` (with its labels, as exposed) in an exposition.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Issue 13, metrics: `--metrics 127.0.0.1:0` serves the exposition at /metrics, read here by
/// a real HTTP client; the figures move as jobs run, end and are killed. A public address
/// without `--metrics-public` is refused (exit 2).
#[test]
fn metrics_are_served_and_move() {
    let env = TestEnv::new();
    let dir = env.state_dir();
    let dir = dir.to_str().expect("UTF-8");
    let mut refused = env.spawn(&["daemon", "--state-dir", dir, "--metrics", "0.0.0.0:9464"]);
    assert_eq!(refused.wait_exit(DEADLINE), 2, "{}", refused.report());
    assert!(
        refused.stderr().contains("--metrics-public"),
        "{}",
        refused.report()
    );

    let daemon = env.start_daemon(&["--metrics", "127.0.0.1:0"]);
    let addr = wait_for(DEADLINE, "the metrics address in the daemon's log", || {
        let err = daemon.stderr_plain();
        err.lines()
            .find(|l| l.contains("metrics served"))
            .and_then(|l| l.split("addr=").nth(1))
            .map(|a| a.split_whitespace().next().unwrap_or_default().to_owned())
            .ok_or(err)
    });
    let (status, body) = http_get(&addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("supervisor_build_info{version=\""), "{body}");
    assert_eq!(
        sample(&body, "supervisor_live_conductors"),
        Some(0.0),
        "{body}"
    );
    assert_eq!(http_get(&addr, "/").0, 404);

    let ok = env.job(
        "ok.toml",
        "name = \"ok\"",
        "[[task]]\nname = \"a\"\nrun = \"true\"\n",
    );
    let id = env.submit(&ok);
    assert_eq!(cli(&env, &["wait", &id]).0, 0);
    let id = env.submit(&sleeper(&env, "k", "", false));
    wait_started(&env, &id, "started-k");
    let (_, during) = http_get(&addr, "/metrics");
    assert_eq!(
        sample(&during, "supervisor_live_conductors"),
        Some(1.0),
        "{during}"
    );
    assert_eq!(
        sample(&during, "supervisor_jobs{state=\"running\"}"),
        Some(1.0),
        "{during}"
    );
    assert_eq!(cli(&env, &["kill", &id, "--wait"]).0, 4);

    let (_, after) = http_get(&addr, "/metrics");
    for (name, want) in [
        ("supervisor_jobs_ended_total{state=\"success\"}", 1.0),
        ("supervisor_jobs_ended_total{state=\"killed\"}", 1.0),
        ("supervisor_jobs{state=\"success\"}", 1.0),
        ("supervisor_jobs{state=\"killed\"}", 1.0),
        ("supervisor_kills_total{cause=\"operator\"}", 1.0),
        ("supervisor_reverts_skipped_total", 1.0),
        ("supervisor_tasks_started_total", 2.0),
        ("supervisor_kill_to_gone_seconds_count", 1.0),
        ("supervisor_live_conductors", 0.0),
    ] {
        assert_eq!(sample(&after, name), Some(want), "{name} in:\n{after}");
    }
    assert!(
        sample(&after, "supervisor_store_bytes").is_some_and(|b| b > 0.0),
        "{after}"
    );
}

/// Issue 13: `examples/deploy.toml` works for any user on a shared host and any number of runs:
/// its paths are the user's and the job's own (two runs in a row both succeed, in two
/// directories named by the uid and the job id).
#[test]
fn the_deploy_example_runs_twice_in_paths_of_its_own() {
    let env = TestEnv::new();
    let _daemon = env.start_daemon(&[]);
    let file = tests::examples_dir().join("deploy.toml");
    let mut dirs = Vec::new();
    for _ in 0..2 {
        let id = env.submit(&file);
        let (code, out, err) = cli(&env, &["wait", &id]);
        assert_eq!(code, 0, "the deploy example: {out} {err}");
        let st = env.status_json(&id);
        let prepared = st["tasks"][0]["result"]
            .as_str()
            .unwrap_or_default()
            .trim()
            .to_owned();
        assert!(
            prepared.ends_with(&format!("supervisor-example-{}/deploy-{id}", my_uid())),
            "{st:#}"
        );
        dirs.push(prepared);
    }
    assert_ne!(dirs[0], dirs[1]);
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Issue 13, everyday CLI: `ls --state --name --since --limit`, `status` of several jobs,
/// `revert --wait` of a killed job exits 0 once every pending revert ran.
#[test]
fn everyday_commands() {
    let env = TestEnv::new();
    let _daemon = env.start_daemon(&[]);
    let quick = |name: &str| {
        let file = env.job(
            &format!("{name}.toml"),
            &format!("name = \"{name}\""),
            "[[task]]\nname = \"a\"\nrun = \"true\"\n",
        );
        let id = env.submit(&file);
        assert_eq!(cli(&env, &["wait", &id]).0, 0);
        id
    };
    let web1 = quick("deploy-web");
    let db = quick("deploy-db");
    let web2 = quick("deploy-web");
    let killed = env.submit(&sleeper(&env, "k", "", false));
    wait_started(&env, &killed, "started-k");
    assert_eq!(cli(&env, &["kill", &killed, "--wait"]).0, 4);

    let ids = |args: &[&str]| -> Vec<String> {
        let mut full = vec!["ls", "--json"];
        full.extend_from_slice(args);
        let (code, out, err) = cli(&env, &full);
        assert_eq!(code, 0, "ls {args:?}: {err}");
        let jobs: Value = serde_json::from_str(&out).expect("ls JSON");
        jobs.as_array()
            .expect("array")
            .iter()
            .filter_map(|j| j["id"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(
        ids(&["--state", "success", "--name", "deploy-web"]),
        [web1.clone(), web2.clone()]
    );
    assert_eq!(
        ids(&["--name", "deploy-*", "--limit", "2"]),
        [db.clone(), web2.clone()]
    );
    assert_eq!(ids(&["--state", "killed,crashed"]), vec![killed.clone()]);
    assert_eq!(ids(&["--since", "1h"]).len(), 4);
    assert_eq!(cli(&env, &["ls", "--state", "bogus"]).0, 2);

    let (code, out, _) = cli(&env, &["status", &web1, &db, "--json"]);
    assert_eq!(code, 0);
    let both: Value = serde_json::from_str(&out).expect("status JSON");
    assert_eq!(both.as_array().map(Vec::len), Some(2), "{both:#}");
    assert_eq!(both[1]["id"], db.as_str());
    let (code, text, _) = cli(&env, &["status", &web1, &killed]);
    assert_eq!(code, 0);
    assert!(
        text.contains(&format!("job {web1}")) && text.contains(&format!("job {killed}")),
        "{text}"
    );

    let (code, out, err) = cli(&env, &["revert", &killed, "--wait"]);
    assert_eq!(code, 0, "revert --wait of a killed job: {out} {err}");
    assert_eq!(env.status_json(&killed)["state"], "reverted");
}

/// Issue 13: `run` draws a progress line (task i of n, elapsed) on a terminal, and only there:
/// with stderr a pseudo-terminal the line is redrawn in place; with stderr a pipe, plain lines.
#[test]
fn run_draws_a_progress_line_only_on_a_terminal() {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    let env = TestEnv::new();
    let file = env.job(
        "p.toml",
        "name = \"p\"",
        "[[task]]\nname = \"one\"\nrun = \"true\"\n[[task]]\nname = \"two\"\nrun = \"true\"\n",
    );
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two descriptors into the integers given; no name, no settings.
    let opened = unsafe {
        libc::openpty(
            &raw mut master,
            &raw mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(opened, 0, "openpty");
    // SAFETY: both descriptors were just opened by openpty and are owned here alone.
    let (mut master, slave) = unsafe {
        (
            std::fs::File::from_raw_fd(master),
            std::fs::File::from_raw_fd(slave),
        )
    };
    let state_dir = env.state_dir();
    let mut command = env.command(&[
        "run",
        "--state-dir",
        state_dir.to_str().expect("UTF-8"),
        file.to_str().expect("UTF-8"),
    ]);
    command.stdout(std::process::Stdio::null()).stderr(slave);
    let mut child = command.spawn().expect("spawn run");
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once the last writer (the run and its children) closed the terminal.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    let status = wait_for(DEADLINE, "the run to end", || {
        child.try_wait().expect("try_wait").ok_or("running")
    });
    assert!(status.success(), "{status:?}");
    drop(command);
    let seen = reader.join().expect("reader");
    assert!(
        seen.contains("\r\x1b[2Ktask 2/2 two: execute, "),
        "{seen:?}"
    );
    assert!(seen.contains("s elapsed"), "{seen:?}");

    let mut piped = env.spawn_run(&file);
    assert_eq!(piped.wait_exit(DEADLINE), 0);
    assert!(!piped.stderr().contains("\x1b[2K"), "{}", piped.stderr());
    assert!(!piped.stderr().contains("elapsed"), "{}", piped.stderr());
}

/// Issue 13: `logs --since DUR` prints only the lines written within DUR.
#[test]
fn logs_since_leaves_out_older_lines() {
    let env = TestEnv::new();
    let _daemon = env.start_daemon(&[]);
    let file = env.job(
        "l.toml",
        "name = \"l\"",
        "[[task]]\nname = \"a\"\nrun = \"echo early; while [ ! -e \\\"$SVT_DIR/go\\\" ]; do sleep 0.02; done; echo late\"\n",
    );
    let id = env.submit(&file);
    wait_for(DEADLINE, "the early line", || {
        let (_, out, _) = cli(&env, &["logs", &id]);
        if out.contains("early") {
            Ok(())
        } else {
            Err(out)
        }
    });
    // Two seconds between the lines: the one bound `--since 1s` falls between.
    std::thread::sleep(std::time::Duration::from_secs(2));
    env.write("go", "");
    assert_eq!(cli(&env, &["wait", &id]).0, 0);
    let (code, out, err) = cli(&env, &["logs", &id, "--since", "1s"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("late") && !out.contains("early"), "{out}");
    let (_, all, _) = cli(&env, &["logs", &id]);
    assert!(all.contains("early") && all.contains("late"), "{all}");
}

/// Issue 13: `supervisor run` runs the job's hooks and waits for them before it exits (which
/// would otherwise kill them).
#[test]
fn run_waits_for_the_jobs_hooks() {
    let env = TestEnv::new();
    let dir = env.dir().display().to_string();
    let file = env.job(
        "h.toml",
        &format!("name = \"h\"\n[hooks]\non_end = \"sleep 0.3; echo $JOB_STATE > '{dir}/ran'\"\n"),
        "[[task]]\nname = \"a\"\nrun = \"true\"\n",
    );
    let mut run = env.spawn_run(&file);
    assert_eq!(run.wait_exit(DEADLINE), 0, "{}", run.report());
    assert_eq!(env.read("ran").trim(), "success");
}

/// Issue 13: a job paused when its daemon dies stays paused under the next daemon, which
/// re-attaches to it without marking it unresponsive, and `continue` thaws it.
#[test]
fn a_paused_job_stays_paused_across_a_daemon_restart() {
    let env = TestEnv::new();
    let Some(mut daemon) = daemon_in(&env, Mode::Session, "restart") else {
        return;
    };
    let top = "heartbeat_timeout = \"1s\"\nkill_unresponsive = true\n";
    let id = env.submit(&ticker(&env, "r", top));
    wait_ticking(&env, "r", 0);
    assert_eq!(cli(&env, &["pause", &id]).0, 0);
    let frozen = ticks(&env, "r");
    tests::sigkill_run(&mut daemon);
    let Some(_daemon) = daemon_in(&env, Mode::Session, "restart") else {
        return;
    };
    // Past the heartbeat timeout under the new daemon: still paused, still running.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let st = env.status_json(&id);
    assert!(st["paused_since_ms"].is_i64(), "{st:#}");
    assert!(st["unresponsive_since_ms"].is_null(), "{st:#}");
    assert_eq!(st["state"], "running", "{st:#}");
    assert_eq!(ticks(&env, "r"), frozen, "the task ticked while paused");
    let (code, out, err) = cli(&env, &["continue", &id]);
    assert_eq!(code, 0, "continue under the new daemon: {out} {err}");
    wait_ticking(&env, "r", frozen);
    let (code, out, err) = cli(&env, &["cancel", &id, "--wait"]);
    assert_eq!(code, 3, "{out} {err}");
}
