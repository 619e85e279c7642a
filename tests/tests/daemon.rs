//! `supervisor daemon` and its clients (`submit`, `ls`, `status`, `cancel`, `kill`, `logs`,
//! `revert`, `resume`), end to end, against the real binaries.
//!
//! Build the binaries first: `cargo build --workspace --bins`. Every test has its own
//! [`TestEnv`] (temp dir, state dir, marker) and its own daemon; the daemon is a [`Run`], killed
//! when dropped, and the [`TestEnv`] kills every conductor and task left behind. Nothing sleeps
//! a fixed time: tests poll the CLI under generous deadlines.

use nix::sys::signal::Signal;
use serde_json::Value;
use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tests::{
    DEADLINE, LONG_DEADLINE, MARK_VAR, Run, TestEnv, cli_at, is_alive, ls_all_json_at, send_signal,
    sigkill_run, skip_unless_ci, supervisor_bin, wait_for,
};

/// The terminal job states.
const TERMINAL: [&str; 6] = [
    "success",
    "reverted",
    "cancelled",
    "revert_failed",
    "killed",
    "crashed",
];

/// The state dir as a `String` (for the command lines).
fn state_dir(env: &TestEnv) -> String {
    env.state_dir()
        .to_str()
        .expect("test paths are UTF-8")
        .to_owned()
}

/// SIGKILLs the daemon and waits until it is gone (the conductors survive it).
fn sigkill_daemon(daemon: &mut Run) {
    sigkill_run(daemon);
}

/// Runs `supervisor ARGS --state-dir DIR` to its end: (exit code, stdout, stderr).
fn cli(env: &TestEnv, args: &[&str]) -> (i32, String, String) {
    cli_at(env, &env.state_dir(), args, DEADLINE)
}

/// Starts `supervisor ARGS --state-dir DIR` (for the long `--wait` clients).
fn spawn_cli(env: &TestEnv, args: &[&str]) -> Run {
    let dir = state_dir(env);
    let mut full = args.to_vec();
    full.extend_from_slice(&["--state-dir", &dir]);
    env.spawn(&full)
}

/// `ls --all --json`, parsed.
fn ls_all(env: &TestEnv) -> Vec<Value> {
    ls_all_json_at(env, &env.state_dir())
}

fn job_state(status: &Value) -> String {
    status["state"].as_str().unwrap_or_default().to_owned()
}

/// The `(name, field)` of each task of a status, as strings (`revert_pending` as "true"/"false").
fn task_field(status: &Value, field: &str) -> Vec<(String, String)> {
    status["tasks"]
        .as_array()
        .map(|tasks| {
            tasks
                .iter()
                .map(|t| {
                    let name = t["name"].as_str().unwrap_or_default().to_owned();
                    let value = match &t[field] {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (name, value)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

/// Waits until the job's status satisfies `ok`; returns that status.
fn wait_status(env: &TestEnv, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    wait_for(LONG_DEADLINE, what, || {
        let status = env.status_json(id);
        if ok(&status) { Ok(status) } else { Err(status) }
    })
}

/// Waits until the named task of the job is `running`.
fn wait_task_running(env: &TestEnv, id: &str, task: &str) -> Value {
    wait_status(env, id, &format!("task {task} of {id} running"), |s| {
        task_field(s, "state")
            .iter()
            .any(|(n, st)| n == task && st == "running")
    })
}

/// Writes a job file: `top`, an `[env]` with the test marker, `SVT_DIR` and `MARKER` (the
/// file `m-NAME` of the test dir, for the tasks to append to), then `tasks`.
fn job(env: &TestEnv, name: &str, top: &str, tasks: &str) -> PathBuf {
    let contents = format!(
        "name = \"{name}\"\n{top}\n[env]\n{MARK_VAR} = \"{}\"\nSVT_DIR = \"{}\"\nMARKER = \"{}\"\n\n{tasks}",
        env.marker(),
        env.dir().display(),
        env.path(&format!("m-{name}")).display(),
    );
    env.write(&format!("{name}.toml"), &contents)
}

/// How many times each of `names` appended its name to the job's marker file.
fn marker_counts(env: &TestEnv, job_name: &str, names: &[&str]) -> Vec<(String, usize)> {
    let lines = env.lines(&format!("m-{job_name}"));
    names
        .iter()
        .map(|n| ((*n).to_owned(), lines.iter().filter(|l| l == n).count()))
        .collect()
}

fn counts(expected: &[(&str, usize)]) -> Vec<(String, usize)> {
    expected
        .iter()
        .map(|(n, c)| ((*n).to_owned(), *c))
        .collect()
}

/// Three tasks, each appending its name to `$MARKER`, each with a revert appending `undo-NAME`.
const THREE_TASKS: &str = r#"
[[task]]
name = "a"
run = 'echo a >> "$MARKER"; echo out-a'
revert = 'echo undo-a >> "$MARKER"'

[[task]]
name = "b"
run = 'echo b >> "$MARKER"; echo out-b'
revert = 'echo undo-b >> "$MARKER"'

[[task]]
name = "c"
run = 'echo c >> "$MARKER"; echo out-c'
revert = 'echo undo-c >> "$MARKER"'
"#;

/// Task a quick, task b blocks (until `$SVT_DIR/GO` exists, else 60 s), task c quick; each
/// appends its name to `$MARKER`; a and b have reverts.
fn blocking_tasks(go: &str) -> String {
    format!(
        r#"
[[task]]
name = "a"
run = 'echo a >> "$MARKER"'
revert = 'echo undo-a >> "$MARKER"'

[[task]]
name = "b"
run = 'echo b >> "$MARKER"; i=0; while [ ! -e "$SVT_DIR/{go}" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done; [ -e "$SVT_DIR/{go}" ]'
revert = 'echo undo-b >> "$MARKER"'

[[task]]
name = "c"
run = 'echo c >> "$MARKER"'
"#
    )
}

#[test]
fn happy_path_submit_wait_status_ls_logs() {
    let env = TestEnv::new();
    let _daemon = env.start_daemon(&[]);
    let file = job(&env, "happy", "", THREE_TASKS);

    let id = env.submit_wait(&file, LONG_DEADLINE);
    assert!(
        id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "first line {id:?} is not a job id"
    );

    let st = env.status_json(&id);
    assert_eq!(job_state(&st), "success", "{st:#}");
    assert_eq!(st["id"], Value::String(id.clone()));
    assert_eq!(st["name"], Value::String("happy".to_owned()));
    assert_eq!(
        task_field(&st, "state"),
        pairs(&[("a", "success"), ("b", "success"), ("c", "success")])
    );
    assert_eq!(
        task_field(&st, "result"),
        pairs(&[("a", "out-a"), ("b", "out-b"), ("c", "out-c")])
    );
    assert_eq!(env.lines("m-happy"), ["a", "b", "c"]);

    let all = ls_all(&env);
    let row = all
        .iter()
        .find(|j| j["id"] == Value::String(id.clone()))
        .unwrap_or_else(|| panic!("ls --all --json lacks {id}: {all:#?}"));
    assert_eq!(row["state"], Value::String("success".to_owned()));
    assert_eq!(row["name"], Value::String("happy".to_owned()));
    assert!(row["created_ms"].is_u64(), "{row:#}");

    // A finished job is not live: plain `ls` does not list it.
    let (code, out, _) = cli(&env, &["ls", "--json"]);
    assert_eq!(code, 0);
    assert!(
        !out.contains(&id),
        "ls (live only) lists a finished job: {out}"
    );

    let (code, out, err) = cli(&env, &["logs", &id]);
    assert_eq!(code, 0, "logs: {err}");
    for line in ["[a] out-a", "[b] out-b", "[c] out-c"] {
        assert!(
            out.lines().any(|l| l == line),
            "logs lacks {line:?}:\n{out}"
        );
    }
    let (code, out, _) = cli(&env, &["logs", &id, "--task", "b"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().collect::<Vec<_>>(), ["[b] out-b"]);
}

/// A status too large for one reply (20 tasks of 60,000-byte results, 1.2 MB against the
/// protocol's 1 MiB frame) is sent with each task's result cut, saying so, instead of a
/// connection closed without a word; the whole output stays in `logs` (in lines of 16 KiB).
#[test]
fn a_status_of_large_results_is_cut_to_fit_one_reply() {
    let env = TestEnv::new();
    let _daemon = env.start_daemon(&[]);
    let tasks: String = (0..20)
        .map(|i| {
            format!("[[task]]\nname = \"t{i}\"\nrun = \"head -c 60000 /dev/zero | tr '\\\\0' x\"\n")
        })
        .collect();
    let file = job(&env, "large", "", &tasks);
    let id = env.submit_wait(&file, LONG_DEADLINE);

    let (code, out, err) = cli(&env, &["status", &id, "--json"]);
    assert_eq!(code, 0, "status: {err}");
    let status: Value = serde_json::from_str(&out).expect("status --json is JSON");
    let results = task_field(&status, "result");
    assert_eq!(results.len(), 20, "{out}");
    for (task, result) in &results {
        assert!(result.starts_with("xxx"), "{task}: {result}");
        assert!(result.ends_with(" bytes cut]"), "{task}: {}", result.len());
    }
    let (code, out, err) = cli(&env, &["logs", &id, "--task", "t7"]);
    assert_eq!(code, 0, "logs: {err}");
    // Split into lines of at most 16 KiB, all of it there.
    let text: String = out
        .lines()
        .filter_map(|l| l.strip_prefix("[t7] "))
        .collect();
    assert_eq!(text, "x".repeat(60_000), "{}", out.len());
}

#[test]
fn error_exit_codes() {
    let env = TestEnv::new();
    let good = job(&env, "good", "", THREE_TASKS);
    let good_path = good.to_str().expect("UTF-8").to_owned();

    // No daemon: 7, and the message says how to start it.
    let (code, out, err) = cli(&env, &["submit", &good_path]);
    assert_eq!(
        code, 7,
        "submit without a daemon: stdout {out:?} stderr {err:?}"
    );
    assert!(
        err.contains("supervisor daemon"),
        "the message should say how to start the daemon: {err:?}"
    );

    let _daemon = env.start_daemon(&[]);

    // Unknown job: 6.
    let (code, out, err) = cli(&env, &["status", "deadbeef", "--json"]);
    assert_eq!(
        code, 6,
        "status of an unknown job: stdout {out:?} stderr {err:?}"
    );

    // Invalid file: 2, nothing stored.
    let bad = env.write(
        "bad.toml",
        "name = \"bad\"\n[[task]]\nname = \"x\"\nrun = \"true\"\nbogus_key = 1\n",
    );
    let (code, out, err) = cli(&env, &["submit", bad.to_str().expect("UTF-8")]);
    assert_eq!(
        code, 2,
        "submit of an invalid file: stdout {out:?} stderr {err:?}"
    );
    assert!(out.trim().is_empty(), "no id for an invalid file: {out:?}");
    let no_task = env.write("empty.toml", "name = \"empty\"\n");
    let (code, _, _) = cli(&env, &["submit", no_task.to_str().expect("UTF-8")]);
    assert_eq!(code, 2, "submit of a file without tasks");
    let all = ls_all(&env);
    assert!(all.is_empty(), "an invalid file was stored: {all:#?}");

    // Revert of a successful job: 8.
    let id = env.submit(&good);
    wait_status(&env, &id, "the good job to succeed", |s| {
        job_state(s) == "success"
    });
    let (code, out, err) = cli(&env, &["revert", &id]);
    assert_eq!(
        code, 8,
        "revert of a successful job: stdout {out:?} stderr {err:?}"
    );
    let (code, _, _) = cli(&env, &["resume", &id]);
    assert_eq!(code, 8, "resume of a successful job");
    // Nothing was reverted.
    assert_eq!(env.lines("m-good"), ["a", "b", "c"]);
    assert_eq!(job_state(&env.status_json(&id)), "success");
}

#[test]
fn two_hundred_concurrent_submits_all_succeed() {
    let env = TestEnv::new();
    let _daemon = env.start_daemon(&["--max-jobs", "8"]);
    let file = job(
        &env,
        "trivial",
        "",
        "[[task]]\nname = \"t\"\nrun = \"true\"\n",
    );

    let ids: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| (0..50).map(|_| env.submit(&file)).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a submit thread panicked"))
            .collect()
    });
    assert_eq!(ids.len(), 200);
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 200, "duplicate job ids");

    let all = wait_for(
        Duration::from_secs(180),
        "all 200 jobs to be terminal",
        || {
            let all = ls_all(&env);
            let live = all
                .iter()
                .filter(|j| !TERMINAL.contains(&j["state"].as_str().unwrap_or_default()))
                .count();
            if all.len() >= 200 && live == 0 {
                Ok(all)
            } else {
                Err(format!("{} jobs listed, {live} not terminal", all.len()))
            }
        },
    );
    assert_eq!(all.len(), 200, "ls --all lists {} jobs", all.len());
    let listed: HashSet<String> = all
        .iter()
        .filter_map(|j| j["id"].as_str().map(str::to_owned))
        .collect();
    for id in &ids {
        assert!(listed.contains(id), "job {id} is lost");
    }
    let not_ok: Vec<&Value> = all.iter().filter(|j| j["state"] != "success").collect();
    assert!(not_ok.is_empty(), "jobs not successful: {not_ok:#?}");
}

/// `shutdown --cancel` while jobs are being submitted and started: a start that had passed
/// the daemon's stopping check when the shutdown came was neither cancelled nor awaited (found
/// with 800 jobs: the daemon waited for it forever). Now every job ends `cancelled`, or stays
/// `pending` for the next daemon, and nothing of any job outlives the daemon.
#[test]
fn a_cancelling_shutdown_during_a_burst_of_starts_leaves_no_job_running() {
    let env = TestEnv::new();
    let mut daemon = env.start_daemon(&["--max-jobs", "200"]);
    let file = job(
        &env,
        "sleeper",
        "",
        "[[task]]\nname = \"t\"\nrun = \"sleep 300\"\n",
    );
    let file = file.to_str().expect("test paths are UTF-8");
    let ids = std::sync::Mutex::new(Vec::new());
    let count = || ids.lock().map_or(0, |ids| ids.len());
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..30 {
                    let (code, out, _) = cli(&env, &["submit", file]);
                    if code != 0 {
                        // The daemon is stopping or gone.
                        break;
                    }
                    if let Ok(mut ids) = ids.lock() {
                        ids.push(out.trim().to_owned());
                    }
                }
            });
        }
        // Once 20 were answered, with the others still coming and starting.
        wait_for(DEADLINE, "20 submits answered", || {
            if count() >= 20 { Ok(()) } else { Err(count()) }
        });
        let (code, out, err) = cli(&env, &["shutdown", "--cancel"]);
        assert_eq!(code, 0, "shutdown --cancel: {out} {err}");
    });
    daemon.wait_exit(DEADLINE);
    let ids = ids.into_inner().expect("no submit thread panicked");
    let store = env.store();
    for id in &ids {
        let state = store.job_state(id);
        assert!(
            state == "cancelled" || state == "pending",
            "job {id} is {state} after shutdown --cancel"
        );
    }
    env.assert_no_job_process_left();
}

#[test]
fn cancel_running_and_cancel_or_kill_queued() {
    let env = TestEnv::new();
    let _daemon = env.start_daemon(&["--max-jobs", "1"]);
    let blocking = r#"
[[task]]
name = "first"
run = 'echo first >> "$MARKER"'
revert = 'echo undo-first >> "$MARKER"'

[[task]]
name = "long"
run = 'echo long >> "$MARKER"; exec sleep 60'
revert = 'echo undo-long >> "$MARKER"'
"#;
    let running = job(&env, "running", "", blocking);
    let id = env.submit(&running);
    wait_task_running(&env, &id, "long");

    // Two more jobs wait behind it (max-jobs 1).
    let q1 = env.submit(&job(&env, "queued1", "", THREE_TASKS));
    let q2 = env.submit(&job(&env, "queued2", "", THREE_TASKS));
    for q in [&q1, &q2] {
        assert_eq!(job_state(&env.status_json(q)), "pending");
    }

    let mut cancel = spawn_cli(&env, &["cancel", &q1, "--wait"]);
    assert_eq!(cancel.wait_exit(LONG_DEADLINE), 3, "{}", cancel.report());
    let st = env.status_json(&q1);
    assert_eq!(job_state(&st), "cancelled", "{st:#}");
    assert!(
        task_field(&st, "state").iter().all(|(_, s)| s == "pending"),
        "a cancelled queued job ran tasks: {st:#}"
    );

    let mut kill = spawn_cli(&env, &["kill", &q2, "--wait"]);
    assert_eq!(kill.wait_exit(LONG_DEADLINE), 4, "{}", kill.report());
    let st = env.status_json(&q2);
    assert_eq!(job_state(&st), "killed", "{st:#}");
    assert!(
        task_field(&st, "revert_pending")
            .iter()
            .all(|(_, p)| p == "false"),
        "a killed queued job has pending reverts: {st:#}"
    );

    // The running job is still running; cancel it: interrupted, reverted, cancelled.
    assert_eq!(job_state(&env.status_json(&id)), "running");
    let mut cancel = spawn_cli(&env, &["cancel", &id, "--wait"]);
    assert_eq!(cancel.wait_exit(LONG_DEADLINE), 3, "{}", cancel.report());
    let st = env.status_json(&id);
    assert_eq!(job_state(&st), "cancelled", "{st:#}");
    assert_eq!(
        task_field(&st, "state"),
        pairs(&[("first", "reverted"), ("long", "reverted")])
    );
    assert_eq!(
        env.lines("m-running"),
        ["first", "long", "undo-long", "undo-first"]
    );
    // The queued jobs never ran.
    assert!(env.lines("m-queued1").is_empty());
    assert!(env.lines("m-queued2").is_empty());
}

#[test]
fn kill_then_revert_and_kill_then_resume() {
    let env = TestEnv::new();
    let daemon = env.start_daemon(&[]);

    // Kill: pending reverts, the WARN line; then revert runs them.
    let file = job(&env, "killed", "", &blocking_tasks("never"));
    let id = env.submit(&file);
    wait_task_running(&env, &id, "b");
    let mut kill = spawn_cli(&env, &["kill", &id, "--wait"]);
    assert_eq!(kill.wait_exit(LONG_DEADLINE), 4, "{}", kill.report());
    let st = env.status_json(&id);
    assert_eq!(job_state(&st), "killed", "{st:#}");
    assert_eq!(
        task_field(&st, "revert_pending"),
        pairs(&[("a", "true"), ("b", "true"), ("c", "false")]),
        "{st:#}"
    );
    let line = wait_for(DEADLINE, "the `revert skipped` WARN line", || {
        let err = daemon.stderr_plain();
        err.lines()
            .find(|l| {
                l.contains("WARN")
                    && l.contains("revert skipped")
                    && l.contains(&format!("job_id={id}"))
            })
            .map(str::to_owned)
            .ok_or(err)
    });
    assert!(line.contains(r#"tasks="b,a""#), "WARN line: {line}");

    let mut revert = spawn_cli(&env, &["revert", &id, "--wait"]);
    let code = revert.wait_exit(LONG_DEADLINE);
    let st = env.status_json(&id);
    assert_eq!(
        task_field(&st, "state"),
        pairs(&[("a", "reverted"), ("b", "reverted"), ("c", "pending")]),
        "revert exit {code}: {st:#}\n{}",
        revert.report()
    );
    assert_eq!(
        task_field(&st, "revert_pending"),
        pairs(&[("a", "false"), ("b", "false"), ("c", "false")])
    );
    assert_eq!(
        code, 0,
        "revert --wait of a killed job: every pending revert ran"
    );
    assert_eq!(job_state(&st), "reverted", "{st:#}");
    assert_eq!(env.lines("m-killed"), ["a", "b", "undo-b", "undo-a"]);

    // Kill another, then resume it: a (succeeded) is not run again, b is.
    let file = job(&env, "resumed", "", &blocking_tasks("go-resumed"));
    let id = env.submit(&file);
    wait_task_running(&env, &id, "b");
    let mut kill = spawn_cli(&env, &["kill", &id, "--wait"]);
    assert_eq!(kill.wait_exit(LONG_DEADLINE), 4, "{}", kill.report());
    env.write("go-resumed", "");
    let mut resume = spawn_cli(&env, &["resume", &id, "--wait"]);
    assert_eq!(resume.wait_exit(LONG_DEADLINE), 0, "{}", resume.report());
    let st = env.status_json(&id);
    assert_eq!(job_state(&st), "success", "{st:#}");
    assert_eq!(
        task_field(&st, "state"),
        pairs(&[("a", "success"), ("b", "success"), ("c", "success")])
    );
    assert_eq!(
        marker_counts(&env, "resumed", &["a", "b", "c", "undo-a", "undo-b"]),
        counts(&[("a", 1), ("b", 2), ("c", 1), ("undo-a", 0), ("undo-b", 0)])
    );
}

#[test]
fn daemon_sigkill_and_restart_reattaches_running_jobs() {
    let env = TestEnv::new();
    let mut daemon = env.start_daemon(&[]);
    let tasks = blocking_tasks("go");
    let ids: Vec<(String, String)> = (0..5)
        .map(|i| {
            let name = format!("j{i}");
            let id = env.submit(&job(&env, &name, "", &tasks));
            (name, id)
        })
        .collect();
    for (_, id) in &ids {
        wait_task_running(&env, id, "b");
    }

    sigkill_daemon(&mut daemon);
    // The jobs' processes survive the daemon.
    assert!(
        !env.marked_processes().is_empty(),
        "no task process survived the daemon's SIGKILL"
    );

    let _daemon = env.start_daemon(&[]);
    for (_, id) in &ids {
        let st = env.status_json(id);
        assert!(
            !TERMINAL.contains(&job_state(&st).as_str()),
            "job {id} ended after the restart, before the go file: {st:#}"
        );
        let pid = st["conductor_pid"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .unwrap_or_else(|| panic!("no conductor_pid: {st:#}"));
        assert!(is_alive(pid), "conductor {pid} of {id} is gone");
    }
    env.write("go", "");
    for (name, id) in &ids {
        let st = wait_status(&env, id, &format!("job {id} to end"), |s| {
            TERMINAL.contains(&job_state(s).as_str())
        });
        assert_eq!(job_state(&st), "success", "{st:#}");
        assert_eq!(
            marker_counts(&env, name, &["a", "b", "c", "undo-a", "undo-b"]),
            counts(&[("a", 1), ("b", 1), ("c", 1), ("undo-a", 0), ("undo-b", 0)]),
            "job {name} ({id})"
        );
    }
}

#[test]
fn conductor_killed_while_daemon_down_is_crashed_after_restart() {
    let env = TestEnv::new();
    let mut daemon = env.start_daemon(&[]);
    let file = job(&env, "crash", "", &blocking_tasks("never"));
    let id = env.submit(&file);
    let st = wait_task_running(&env, &id, "b");
    let pid = st["conductor_pid"]
        .as_i64()
        .and_then(|p| i32::try_from(p).ok())
        .unwrap_or_else(|| panic!("no conductor_pid in status: {st:#}"));

    sigkill_daemon(&mut daemon);
    assert!(is_alive(pid), "the conductor died with the daemon");
    send_signal(pid, Signal::SIGKILL);
    wait_for(DEADLINE, "the conductor to be gone", || {
        if is_alive(pid) { Err(pid) } else { Ok(()) }
    });

    let _daemon = env.start_daemon(&[]);
    let st = wait_status(&env, &id, "the job to be crashed", |s| {
        TERMINAL.contains(&job_state(s).as_str())
    });
    assert_eq!(job_state(&st), "crashed", "{st:#}");
    assert_eq!(
        task_field(&st, "revert_pending"),
        pairs(&[("a", "true"), ("b", "true"), ("c", "false")]),
        "{st:#}"
    );
    assert_eq!(task_field(&st, "state")[0].1, "success", "{st:#}");
    assert_eq!(task_field(&st, "state")[2].1, "pending", "{st:#}");
    // The task that outlived its conductor (b's loop) does not outlive the crash record.
    wait_for(DEADLINE, "no process of the crashed job left", || {
        let left = env.marked_processes();
        if left.is_empty() { Ok(()) } else { Err(left) }
    });
    // Then the pending reverts can run.
    let mut revert = spawn_cli(&env, &["revert", &id, "--wait"]);
    revert.wait_exit(LONG_DEADLINE);
    let st = env.status_json(&id);
    assert_eq!(
        task_field(&st, "revert_pending"),
        pairs(&[("a", "false"), ("b", "false"), ("c", "false")]),
        "{st:#}\n{}",
        revert.report()
    );
    assert_eq!(
        marker_counts(&env, "crash", &["undo-a", "undo-b"]),
        counts(&[("undo-a", 1), ("undo-b", 1)])
    );
}

#[test]
fn garbage_on_the_control_socket_is_harmless() {
    let env = TestEnv::new();
    let mut daemon = env.start_daemon(&[]);
    let sock = env.state_dir().join("control.sock");
    let connect = || UnixStream::connect(&sock).expect("the control socket accepts");

    // Nothing, then close.
    drop(connect());
    // Random bytes.
    {
        let mut s = connect();
        let mut bytes = Vec::with_capacity(4096);
        let mut x: u32 = 0x9e37_79b9;
        for _ in 0..4096 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            bytes.push(x.to_le_bytes()[0]);
        }
        let _ = s.write_all(&bytes);
    }
    // An oversized length header: the daemon must not allocate 4 GiB nor wait for it; it
    // should close the connection.
    {
        let mut s = connect();
        let _ = s.write_all(&[0xFF, 0xFF, 0xFF, 0xFF]);
        let _ = s.write_all(b"more");
        s.set_read_timeout(Some(DEADLINE))
            .expect("read timeout is settable");
        let mut buf = [0u8; 256];
        let got = s.read(&mut buf);
        assert!(
            !matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut),
            "the daemon kept a connection with a 4 GiB length header open: {got:?}"
        );
    }
    // A half-written header, left open while other clients work.
    let mut idle = connect();
    let _ = idle.write_all(&[0x10, 0x00]);

    assert!(
        !daemon.has_exited(),
        "the daemon died:\n{}",
        daemon.report()
    );
    let (code, out, err) = cli(&env, &["ls", "--json"]);
    assert_eq!(code, 0, "ls after garbage: {out:?} {err:?}");
    let file = job(&env, "after", "", THREE_TASKS);
    let mut waiter = spawn_cli(&env, &["submit", file.to_str().expect("UTF-8"), "--wait"]);
    assert_eq!(waiter.wait_exit(LONG_DEADLINE), 0, "{}", waiter.report());
    assert_eq!(env.lines("m-after"), ["a", "b", "c"]);
    drop(idle);
    assert!(
        !daemon.has_exited(),
        "the daemon died:\n{}",
        daemon.report()
    );
}

#[test]
fn shutdown_leaves_conductors_and_a_new_daemon_reattaches() {
    let env = TestEnv::new();
    let mut daemon = env.start_daemon(&[]);
    let file = job(&env, "survivor", "", &blocking_tasks("go"));
    let id = env.submit(&file);
    let st = wait_task_running(&env, &id, "b");
    let pid = st["conductor_pid"]
        .as_i64()
        .and_then(|p| i32::try_from(p).ok())
        .unwrap_or_else(|| panic!("no conductor_pid in status: {st:#}"));

    let (code, out, err) = cli(&env, &["shutdown"]);
    assert_eq!(code, 0, "shutdown: {out:?} {err:?}");
    wait_for(DEADLINE, "the daemon to exit after shutdown", || {
        if daemon.has_exited() {
            Ok(())
        } else {
            Err("still running")
        }
    });
    assert!(
        is_alive(pid),
        "shutdown (without --cancel) killed the conductor"
    );
    let (code, _, _) = cli(&env, &["ls"]);
    assert_eq!(code, 7, "ls with the daemon shut down");

    let _daemon = env.start_daemon(&[]);
    env.write("go", "");
    let st = wait_status(&env, &id, "the job to end", |s| {
        TERMINAL.contains(&job_state(s).as_str())
    });
    assert_eq!(job_state(&st), "success", "{st:#}");
    assert_eq!(
        marker_counts(&env, "survivor", &["a", "b", "c"]),
        counts(&[("a", 1), ("b", 1), ("c", 1)])
    );
}

#[test]
fn events_stream_every_transition_in_order() {
    let env = TestEnv::new();
    let _daemon = env.start_daemon(&[]);
    let events = spawn_cli(&env, &["events", "--json"]);
    // The stream has no ready signal: submit probes until one shows up in it.
    let probe = job(
        &env,
        "probe",
        "",
        "[[task]]\nname = \"p\"\nrun = \"true\"\n",
    );
    wait_for(DEADLINE, "the events stream to carry a probe job", || {
        let out = events.stdout();
        if out.lines().any(|l| l.contains("\"state\":\"success\"")) {
            Ok(())
        } else {
            let id = env.submit(&probe);
            wait_status(&env, &id, "the probe to end", |s| job_state(s) == "success");
            Err(out)
        }
    });

    let file = job(&env, "watched", "", THREE_TASKS);
    let id = env.submit(&file);
    let expected = [
        ("null", "pending"),
        ("null", "running"),
        ("a", "running"),
        ("a", "success"),
        ("b", "running"),
        ("b", "success"),
        ("c", "running"),
        ("c", "success"),
        ("null", "success"),
    ];
    let seen = wait_for(DEADLINE, "every event of the watched job", || {
        let seen: Vec<(String, String)> = events
            .stdout()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["job"] == Value::String(id.clone()))
            .map(|v| {
                let task = match &v["task"] {
                    Value::String(t) => t.clone(),
                    other => other.to_string(),
                };
                assert!(v["at_ms"].is_u64(), "event without at_ms: {v}");
                (task, v["state"].as_str().unwrap_or_default().to_owned())
            })
            .collect();
        if seen.len() >= expected.len() {
            Ok(seen)
        } else {
            Err(seen)
        }
    });
    assert_eq!(seen, pairs(&expected));
}

/// Issue 3: a peer of another uid is refused by the daemon itself (its SO_PEERCRED check), not
/// only by the modes of the state dir and socket, and the attempt is logged. Needs root (to act
/// as another uid with `setpriv`); skipped with the reason otherwise.
#[test]
fn a_client_of_another_uid_is_refused_and_logged() {
    if !nix::unistd::geteuid().is_root() {
        skip_unless_ci(
            "a_client_of_another_uid_is_refused_and_logged",
            "needs root",
        );
        return;
    }
    let Some(setpriv) = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
    else {
        skip_unless_ci(
            "a_client_of_another_uid_is_refused_and_logged",
            "no setpriv on this host",
        );
        return;
    };
    let env = TestEnv::new();
    let daemon = env.start_daemon(&[]);
    let dir = state_dir(&env);
    let as_nobody = || {
        std::process::Command::new(setpriv)
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(supervisor_bin())
            .args(["ls", "--state-dir", &dir])
            .output()
            .expect("setpriv runs")
    };
    // As created (state dir 0700, socket 0600): the file system already refuses.
    let out = as_nobody();
    assert!(!out.status.success(), "another uid listed jobs: {out:?}");

    // Doors opened on purpose: the daemon's own check must refuse, say why, and log it.
    use std::os::unix::fs::PermissionsExt;
    let mut path = env.state_dir();
    loop {
        if path.as_os_str().len() <= "/tmp".len() {
            break;
        }
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o711));
        if !path.pop() {
            break;
        }
    }
    std::fs::set_permissions(
        env.state_dir().join("control.sock"),
        std::fs::Permissions::from_mode(0o666),
    )
    .expect("chmod the control socket");
    let out = as_nobody();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "another uid listed jobs: {out:?}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert_eq!(
        out.status.code(),
        Some(9),
        "exit 9 is permission denied: {stderr}"
    );
    wait_for(DEADLINE, "the daemon to log the refusal", || {
        let log = daemon.stderr_plain();
        if log.contains("client refused: another user") {
            Ok(())
        } else {
            Err(log)
        }
    });
    let (code, _, err) = cli(&env, &["ls"]);
    assert_eq!(code, 0, "the daemon stopped serving its own user: {err}");
}
