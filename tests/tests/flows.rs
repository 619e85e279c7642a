//! Flows (issue 12): graph jobs, end to end, against the real binaries.
//!
//! Build the binaries first: `cargo build --workspace --bins`. Every test has its own
//! [`TestEnv`]. Overlap is proven, never hoped for: two tasks that must run together each wait
//! (bounded) for the other's marker file, so the job can only succeed if they overlapped.
//! Nothing sleeps a fixed time in the test itself: it waits for store states and files under
//! deadlines.

use serde_json::Value;
use std::path::{Path, PathBuf};
use tests::{DEADLINE, LONG_DEADLINE, MARK_VAR, TestEnv, cli_at, thread_count, wait_for};

/// Shell that waits (at most 30 s) until `$SVT_DIR/NAME` exists, and fails if it never does.
fn wait_file(name: &str) -> String {
    format!(
        r#"i=0; while [ ! -e "$SVT_DIR/{name}" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; [ -e "$SVT_DIR/{name}" ]"#
    )
}

/// A revert that appends `undo-NAME` to `$SVT_DIR/undo`.
const UNDO: &str = r#"revert = 'echo "undo-$TASK_NAME" >> "$SVT_DIR/undo"'"#;

/// A `[[task]]` of a graph: `name`, after `after`, running `run`, with the logging revert.
fn task(name: &str, after: &[&str], run: &str) -> String {
    let after: Vec<String> = after.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "[[task]]\nname = \"{name}\"\nafter = [{}]\nrun = '{run}'\n{UNDO}\n\n",
        after.join(", ")
    )
}

/// Writes a graph job file with `top` keys and `tasks`.
fn graph_job(env: &TestEnv, name: &str, top: &str, tasks: &str) -> PathBuf {
    env.job(
        &format!("{name}.toml"),
        &format!("name = \"{name}\"\nflow = \"graph\"\n{top}"),
        tasks,
    )
}

/// Runs `supervisor ARGS --state-dir DIR` to its end: (exit code, stdout, stderr).
fn cli(env: &TestEnv, args: &[&str]) -> (i32, String, String) {
    cli_at(env, &env.state_dir(), args, LONG_DEADLINE)
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Waits until the store shows the job's tasks in a state `ok` accepts; returns them as
/// (name, state).
fn wait_tasks(
    env: &TestEnv,
    id: &str,
    what: &str,
    ok: impl Fn(&[(String, String)]) -> bool,
) -> Vec<(String, String)> {
    wait_for(LONG_DEADLINE, what, || {
        if !env.has_store() {
            return Err(Vec::new());
        }
        let states = env.store().task_states(id);
        if ok(&states) { Ok(states) } else { Err(states) }
    })
}

fn state_of<'a>(states: &'a [(String, String)], name: &str) -> &'a str {
    states
        .iter()
        .find(|(n, _)| n == name)
        .map_or("", |(_, s)| s.as_str())
}

/// Waits until the job's state is `state`.
fn wait_job_state(env: &TestEnv, id: &str, state: &str) {
    wait_for(LONG_DEADLINE, &format!("job {id} {state}"), || {
        let now = env.store().job_state(id);
        if now == state { Ok(()) } else { Err(now) }
    });
}

/// The position of `line` in `lines`; panics without it.
fn position(lines: &[String], line: &str) -> usize {
    lines
        .iter()
        .position(|l| l == line)
        .unwrap_or_else(|| panic!("{line:?} not in {lines:?}"))
}

/// The job id `supervisor run` printed first.
fn run_job_id(env: &TestEnv, run: &tests::Run) -> String {
    wait_for(DEADLINE, "the job id on stdout", || {
        if run.stdout_lines().is_empty() {
            Err(run.stdout())
        } else {
            Ok(())
        }
    });
    let _ = env;
    run.job_id()
}

#[test]
fn a_diamond_runs_b_and_c_together_d_after_both_and_d_sees_a_s_result() {
    let env = TestEnv::new();
    // b and c each mark their start and wait for the other's: only an overlap lets both end.
    let tasks = format!(
        "{}{}{}{}",
        task(
            "d",
            &["b", "c"],
            r#"[ -e "$SVT_DIR/b.done" ] && [ -e "$SVT_DIR/c.done" ] && echo "$RESULT_A|$RESULT_B|$RESULT_C" > "$SVT_DIR/d.saw""#
        ),
        task(
            "b",
            &["a"],
            &format!(
                r#"touch "$SVT_DIR/b.started"; {}; touch "$SVT_DIR/b.done"; echo from-b"#,
                wait_file("c.started")
            )
        ),
        task(
            "c",
            &["a"],
            &format!(
                r#"touch "$SVT_DIR/c.started"; {}; touch "$SVT_DIR/c.done"; echo from-c"#,
                wait_file("b.started")
            )
        ),
        task("a", &[], "echo from-a"),
    );
    let file = graph_job(&env, "diamond", "", &tasks);

    let (code, out, err) = cli(&env, &["validate", path_str(&file)]);
    assert_eq!(code, 0, "{out}{err}");
    for line in [
        "  flow: graph, max_parallel 16, on_failure interrupt",
        "  level 0: a",
        "  level 1: b (after a), c (after a)",
        "  level 2: d (after b, c)",
    ] {
        assert!(out.lines().any(|l| l == line), "{line:?} not in:\n{out}");
    }

    let mut run = env.spawn_run(&file);
    assert_eq!(run.wait_exit(LONG_DEADLINE), 0, "{}", run.report());
    let id = run.job_id();
    let store = env.store();
    assert_eq!(store.job_state(&id), "success");
    // Stored in a topological order: a first, d last.
    let names: Vec<String> = store.tasks(&id).into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["a", "b", "c", "d"]);
    // Two edges away, d sees a's result; and b's and c's.
    assert_eq!(env.lines("d.saw"), ["from-a|from-b|from-c"]);
    env.assert_no_job_process_left();
}

/// a; b after a (runs until `go`, or until interrupted); c after a (fails once b started);
/// d after b and c (never runs).
fn failing_c_job(env: &TestEnv, on_failure: &str) -> PathBuf {
    let tasks = format!(
        "{}{}{}{}",
        task("a", &[], "true"),
        task(
            "b",
            &["a"],
            &format!(r#"touch "$SVT_DIR/b.started"; {}"#, wait_file("go"))
        ),
        task(
            "c",
            &["a"],
            &format!(r#"{}; echo c fails >&2; exit 3"#, wait_file("b.started"))
        ),
        task("d", &["b", "c"], "true"),
    );
    graph_job(
        env,
        &format!("fail-{on_failure}"),
        &format!("on_failure = \"{on_failure}\"\ncancel_timeout = \"10s\"\nterm_grace = \"2s\""),
        &tasks,
    )
}

/// b and c are reverted before a; d never ran nor reverted.
fn assert_graph_revert_order(env: &TestEnv) {
    let undo = env.lines("undo");
    assert_eq!(undo.len(), 3, "{undo:?}");
    let a = position(&undo, "undo-a");
    assert!(position(&undo, "undo-b") < a, "{undo:?}");
    assert!(position(&undo, "undo-c") < a, "{undo:?}");
    assert!(!undo.iter().any(|l| l == "undo-d"), "{undo:?}");
}

#[test]
fn a_failure_in_c_interrupts_running_b_then_reverts_b_and_c_before_a() {
    let env = TestEnv::new();
    let file = failing_c_job(&env, "interrupt");
    let started = std::time::Instant::now();
    let mut run = env.spawn_run(&file);
    assert_eq!(run.wait_exit(LONG_DEADLINE), 1, "{}", run.report());
    // b was interrupted (SIGTERM), not waited for: far less than its 30 s wait.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let id = run.job_id();
    let store = env.store();
    assert_eq!(store.job_state(&id), "reverted");
    let tasks = store.tasks(&id);
    let outcome = |name: &str| {
        tasks
            .iter()
            .find(|t| t.name == name)
            .and_then(|t| t.exec_outcome.clone())
    };
    assert_eq!(outcome("b").as_deref(), Some("cancelled"), "{tasks:#?}");
    assert_eq!(outcome("c").as_deref(), Some("failure"), "{tasks:#?}");
    assert_eq!(outcome("d"), None, "{tasks:#?}");
    assert_graph_revert_order(&env);
    env.assert_no_job_process_left();
}

#[test]
fn a_failure_in_c_lets_b_finish_then_reverts_b_and_c_before_a() {
    let env = TestEnv::new();
    let file = failing_c_job(&env, "finish");
    let mut run = env.spawn_run(&file);
    let id = run_job_id(&env, &run);
    let states = wait_tasks(&env, &id, "c failed with b running", |s| {
        state_of(s, "c") == "failure"
    });
    assert_eq!(state_of(&states, "b"), "running", "{states:?}");
    assert!(env.lines("undo").is_empty(), "no revert while b runs");
    env.write("go", "");
    assert_eq!(run.wait_exit(LONG_DEADLINE), 1, "{}", run.report());
    let store = env.store();
    assert_eq!(store.job_state(&id), "reverted");
    let b = store
        .tasks(&id)
        .into_iter()
        .find(|t| t.name == "b")
        .expect("task b");
    assert_eq!(b.exec_outcome.as_deref(), Some("success"), "{b:#?}");
    assert_graph_revert_order(&env);
}

/// r; x, y and z after r, each running until `go` (never written).
fn three_branches(env: &TestEnv, name: &str) -> PathBuf {
    let tasks = format!(
        "{}{}{}{}",
        task("r", &[], "true"),
        task("x", &["r"], &wait_file("go")),
        task("y", &["r"], &wait_file("go")),
        task("z", &["r"], &wait_file("go")),
    );
    graph_job(
        env,
        name,
        "cancel_timeout = \"20s\"\nterm_grace = \"2s\"",
        &tasks,
    )
}

fn all_running(states: &[(String, String)], names: &[&str]) -> bool {
    names.iter().all(|n| state_of(states, n) == "running")
}

#[test]
fn cancel_with_three_branches_running_interrupts_all_and_reverts_the_root_last() {
    let env = TestEnv::new();
    let _daemon = env.start_daemon(&[]);
    let id = env.submit(&three_branches(&env, "branches"));
    wait_tasks(&env, &id, "x, y and z running", |s| {
        all_running(s, &["x", "y", "z"])
    });

    // status shows every running task and each task's `after`; ls counts them.
    let (code, out, err) = cli(&env, &["status", &id]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.lines().any(|l| l == "  running: x, y, z"),
        "status:\n{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with('x') && l.ends_with("after r")),
        "status:\n{out}"
    );
    let status: Value = env.status_json(&id);
    assert_eq!(status["tasks"][1]["after"], serde_json::json!(["r"]));
    let (code, out, err) = cli(&env, &["ls"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("3 tasks running"), "ls:\n{out}");

    let (code, out, err) = cli(&env, &["cancel", &id, "--wait"]);
    assert_eq!(code, 3, "{out}{err}");
    let store = env.store();
    assert_eq!(store.job_state(&id), "cancelled");
    for task in store.tasks(&id) {
        assert_eq!(task.state, "reverted", "{task:#?}");
        if task.name != "r" {
            assert_eq!(task.exec_outcome.as_deref(), Some("cancelled"), "{task:#?}");
        }
    }
    let undo = env.lines("undo");
    assert_eq!(undo.len(), 4, "{undo:?}");
    assert_eq!(undo.last().map(String::as_str), Some("undo-r"), "{undo:?}");
}

#[test]
fn kill_then_revert_runs_the_pending_reverts_in_graph_order() {
    let env = TestEnv::new();
    let daemon = env.start_daemon(&[]);
    let id = env.submit(&three_branches(&env, "killed"));
    wait_tasks(&env, &id, "x, y and z running", |s| {
        all_running(s, &["x", "y", "z"])
    });
    let (code, out, err) = cli(&env, &["kill", &id, "--wait"]);
    assert_eq!(code, 4, "{out}{err}");
    assert_eq!(env.store().pending_reverts(&id), ["z", "y", "x", "r"]);
    let line = wait_for(DEADLINE, "the `revert skipped` WARN line", || {
        let err = daemon.stderr_plain();
        err.lines()
            .find(|l| l.contains("revert skipped") && l.contains(&format!("job_id={id}")))
            .map(str::to_owned)
            .ok_or(err)
    });
    // Reverse dependency order: the root after its branches.
    assert!(line.contains(r#"tasks="z,y,x,r""#), "WARN line: {line}");

    let (code, out, err) = cli(&env, &["revert", &id, "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(env.store().job_state(&id), "reverted");
    let undo = env.lines("undo");
    assert_eq!(undo.len(), 4, "{undo:?}");
    assert_eq!(undo.last().map(String::as_str), Some("undo-r"), "{undo:?}");
}

#[test]
fn max_parallel_two_is_never_exceeded() {
    let env = TestEnv::new();
    // Each step counts itself in under `flock`, records the highest count, and counts out.
    env.write(
        "count.sh",
        r#"cd "$SVT_DIR"
flock lock sh -c 'n=$(($(cat n 2>/dev/null || echo 0) + 1)); echo $n > n; m=$(cat max 2>/dev/null || echo 0); if [ $n -gt $m ]; then echo $n > max; fi'
sleep 0.3
flock lock sh -c 'echo $(($(cat n) - 1)) > n'
"#,
    );
    let body = r#"sh "$SVT_DIR/count.sh""#;
    let tasks: String = (0..8)
        .map(|i| format!("[[task]]\nname = \"t{i}\"\nrun = '{body}'\nrevert = '{body}'\n\n"))
        .collect();
    // The last task fails once the others are done, so that the reverts are counted too.
    let tasks = format!(
        "{tasks}[[task]]\nname = \"last\"\nafter = [{}]\nrun = 'exit 1'\n",
        (0..8)
            .map(|i| format!("\"t{i}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let file = graph_job(&env, "bounded", "max_parallel = 2", &tasks);
    let mut run = env.spawn_run(&file);
    assert_eq!(run.wait_exit(LONG_DEADLINE), 1, "{}", run.report());
    let id = run.job_id();
    assert_eq!(env.store().job_state(&id), "reverted");
    assert_eq!(
        env.lines("max"),
        ["2"],
        "at most two steps at once, and two did overlap"
    );
    assert_eq!(env.lines("n"), ["0"]);
}

#[test]
fn every_invalid_graph_exits_2_with_file_line_and_column() {
    let env = TestEnv::new();
    let graph = "flow = \"graph\"\n";
    let plain = |name: &str| format!("[[task]]\nname = \"{name}\"\nrun = \"true\"\n");
    let with_after = |name: &str, after: &str| {
        format!("[[task]]\nname = \"{name}\"\nrun = \"true\"\nafter = [\"{after}\"]\n")
    };
    let cases = [
        (
            "linear.toml",
            format!("{}{}", plain("a"), with_after("b", "a")),
            "linear.toml:7:9: `after` needs `flow = \"graph\"`",
        ),
        (
            "unknown.toml",
            format!("{graph}{}", with_after("a", "nope")),
            "unknown.toml:5:10: `after`: unknown task \"nope\"",
        ),
        (
            "self.toml",
            format!("{graph}{}", with_after("a", "a")),
            "self.toml:5:10: task \"a\" cannot run after itself",
        ),
        (
            "cycle.toml",
            format!(
                "{graph}{}{}{}",
                with_after("a", "c"),
                with_after("b", "a"),
                with_after("c", "b")
            ),
            "cycle.toml:5:10: cycle: a -> b -> c -> a",
        ),
        (
            "clash.toml",
            format!("{graph}{}{}", plain("web-1"), plain("WEB_1")),
            "clash.toml:6:8: tasks \"web-1\" and \"WEB_1\" would both pass their result as RESULT_WEB_1",
        ),
    ];
    for (name, contents, expected) in cases {
        let file = env.write(name, &contents);
        for command in ["validate", "run"] {
            let (code, out, err) = cli(&env, &[command, path_str(&file)]);
            assert_eq!(code, 2, "{command} {name}: {out}{err}");
            assert!(
                err.lines()
                    .any(|l| l.ends_with(expected) || l.contains(expected)),
                "{command} {name}: {expected:?} not in:\n{err}"
            );
        }
    }
}

#[test]
fn resume_of_a_killed_graph_runs_only_unfinished_tasks_whose_dependencies_succeeded() {
    let env = TestEnv::new();
    let _daemon = env.start_daemon(&[]);
    let mark = r#"echo "$TASK_NAME" >> "$SVT_DIR/ran""#;
    let tasks = format!(
        "{}{}{}{}{}",
        task("a", &[], mark),
        task("b", &["a"], &format!("{mark}; {}", wait_file("go"))),
        task("c", &["a"], mark),
        task("d", &["b", "c"], mark),
        task("e", &[], mark),
    );
    let id = env.submit(&graph_job(&env, "resumed", "", &tasks));
    wait_tasks(&env, &id, "b running, c and e done", |s| {
        state_of(s, "b") == "running"
            && state_of(s, "c") == "success"
            && state_of(s, "e") == "success"
    });
    let (code, out, err) = cli(&env, &["kill", &id, "--wait"]);
    assert_eq!(code, 4, "{out}{err}");
    env.write("go", "");
    let (code, out, err) = cli(&env, &["resume", &id, "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_job_state(&env, &id, "success");
    let ran = env.lines("ran");
    let times = |name: &str| ran.iter().filter(|l| *l == name).count();
    assert_eq!(
        ["a", "b", "c", "d", "e"].map(times),
        [1, 2, 1, 1, 1],
        "{ran:?}"
    );
    assert!(position(&ran, "d") > ran.iter().rposition(|l| l == "b").unwrap_or(0));
    assert!(env.lines("undo").is_empty());
}

/// VmRSS of `pid` in kB, from `/proc/PID/status`.
fn rss_kb(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[test]
fn one_conductor_thread_runs_a_hundred_tasks_at_once() {
    let env = TestEnv::new();
    let tasks: String = (0..100)
        .map(|i| format!("[[task]]\nname = \"t{i}\"\nrun = '{}'\n\n", wait_file("go")))
        .collect();
    let file = graph_job(&env, "hundred", "max_parallel = 100", &tasks);
    let mut run = env.spawn_run(&file);
    let id = run_job_id(&env, &run);
    wait_tasks(&env, &id, "100 tasks running", |s| {
        s.len() == 100 && s.iter().all(|(_, st)| st == "running")
    });
    // Written ahead is not spawned yet: wait for the 100 processes themselves.
    let marker = format!("{MARK_VAR}={}", env.marker());
    wait_for(LONG_DEADLINE, "100 task processes", || {
        let marked = tests::processes_with_env(&marker);
        let shells = marked
            .iter()
            .filter(|p| p.cmdline.starts_with("/bin/sh"))
            .count();
        if shells == 100 { Ok(()) } else { Err(shells) }
    });
    let pid = env
        .store()
        .job(&id)
        .and_then(|j| j.conductor_pid)
        .expect("the conductor's pid");
    assert_eq!(thread_count(pid), Some(1), "the conductor is one thread");
    let rss = rss_kb(pid).expect("the conductor's VmRSS");
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map_or_else(String::new, |v| v.trim().to_owned())
    };
    eprintln!(
        "conductor with 100 tasks running: VmRSS {rss} kB, Pss {}, Private_Dirty {}",
        field("Pss:"),
        field("Private_Dirty:")
    );
    assert!(rss < 64 * 1024, "the conductor uses {rss} kB");
    env.write("go", "");
    assert_eq!(run.wait_exit(LONG_DEADLINE), 0, "{}", run.report());
}

#[test]
fn retries_wait_retry_delay_times_the_backoff() {
    let env = TestEnv::new();
    // Fails twice, then succeeds; each attempt records its time in ns.
    let run = r#"date +%s%N >> "$SVT_DIR/at"; [ $(wc -l < "$SVT_DIR/at") -ge 3 ]"#;
    let file = env.job(
        "retry.toml",
        "name = \"retry\"",
        &format!(
            "[[task]]\nname = \"flaky\"\nrun = '{run}'\nretries = 2\nretry_delay = \"200ms\"\nretry_backoff = 2.0\n"
        ),
    );
    let mut run = env.spawn_run(&file);
    assert_eq!(run.wait_exit(LONG_DEADLINE), 0, "{}", run.report());
    let at: Vec<u128> = env
        .lines("at")
        .iter()
        .map(|l| l.parse().expect("ns"))
        .collect();
    assert_eq!(at.len(), 3, "{at:?}");
    let gap_ms = |i: usize| (at[i + 1] - at[i]) / 1_000_000;
    assert!(gap_ms(0) >= 200, "first retry after {} ms", gap_ms(0));
    assert!(gap_ms(1) >= 400, "second retry after {} ms", gap_ms(1));
    let tasks = env.store().tasks(&run.job_id());
    assert_eq!((tasks[0].attempts, tasks[0].state.as_str()), (3, "success"));
}
