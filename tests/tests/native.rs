//! Native Rust tasks, end to end: jobs that name a custom conductor (`worker = "test-worker"`,
//! `tests/src/bin/test-worker.rs`, or the example `download-worker`) run by the real
//! `supervisor run`.
//!
//! Build the binaries first: `cargo build --workspace --bins` (it builds `test-worker` and
//! `download-worker` next to `supervisor`). Every test has its own [`TestEnv`]. Nothing sleeps a
//! fixed time: tests wait for a stdout line, a store state or an exit, under generous deadlines.
//!
//! The test worker's kinds append `execute NAME` to their `marker` file when they start, and
//! `revert NAME OUTCOME RESULT` when they are reverted.

use nix::sys::signal::Signal;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tests::{DEADLINE, GONE_DEADLINE, LONG_DEADLINE, Run, TestEnv, is_alive, wait_for};

/// Top-level keys naming the test worker.
const TEST_WORKER: &str = "worker = \"test-worker\"";

/// Asserts the exit code (the [`Run`] prints its output and logs if this panics).
fn expect_exit(run: &mut Run, deadline: Duration, expected: i32) {
    let code = run.wait_exit(deadline);
    assert_eq!(code, expected, "unexpected exit code");
}

/// The marker file's lines (trailing blanks removed: an empty result leaves one).
fn marker_lines(env: &TestEnv) -> Vec<String> {
    env.lines("marker")
        .iter()
        .map(|l| l.trim_end().to_owned())
        .collect()
}

/// The marker file's path, for `[task.params]`.
fn marker(env: &TestEnv) -> String {
    env.path("marker").display().to_string()
}

/// Waits until the store shows the job's conductor; returns its pid.
fn conductor_pid(env: &TestEnv, job_id: &str) -> i32 {
    wait_for(DEADLINE, "the conductor pid in the store", || {
        if !env.has_store() {
            return Err(None);
        }
        let job = env.store().job(job_id);
        job.as_ref()
            .and_then(|j| j.conductor_pid)
            .ok_or_else(|| job.clone())
    })
}

/// `at_ms` of every transition of the job (`task` `None`: the job itself) from `from` to `to`.
fn transitions_at(
    env: &TestEnv,
    job_id: &str,
    task: Option<u32>,
    from: &str,
    to: &str,
) -> Vec<i64> {
    let path = env.state_dir().join("state.db");
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .unwrap_or_else(|err| panic!("cannot open the store {}: {err}", path.display()));
    let mut stmt = conn
        .prepare(
            "SELECT at_ms FROM transitions
             WHERE job_id = ?1 AND task_idx IS ?2 AND from_state IS ?3 AND to_state = ?4
             ORDER BY id",
        )
        .expect("transitions query prepares");
    stmt.query_map(rusqlite::params![job_id, task, from, to], |row| row.get(0))
        .expect("transitions query runs")
        .collect::<rusqlite::Result<Vec<i64>>>()
        .expect("transition rows read")
}

/// The only `at_ms` of one transition; panics (listing them) unless there is exactly one.
fn transition_at(env: &TestEnv, job_id: &str, task: Option<u32>, from: &str, to: &str) -> i64 {
    let found = transitions_at(env, job_id, task, from, to);
    match found[..] {
        [at] => at,
        _ => panic!("expected one {from} -> {to} transition of task {task:?}, found {found:?}"),
    }
}

/// The WARN `revert skipped` line of stderr (colour escapes removed), if any.
fn revert_skipped_line(run: &Run) -> Option<String> {
    run.stderr_plain()
        .lines()
        .find(|l| l.contains("WARN") && l.contains("revert skipped"))
        .map(str::to_owned)
}

#[test]
fn a_cancel_interrupts_a_native_task_at_its_await_without_waiting_for_any_grace() {
    let env = TestEnv::new();
    let marker = marker(&env);
    // Long grace and timeout: had the interruption waited for either, it would show.
    let file = env.job(
        "cancel.toml",
        &format!(
            "name = \"native-cancel\"\n{TEST_WORKER}\ncancel_timeout = \"30s\"\nterm_grace = \"20s\""
        ),
        &format!(
            r#"
[[task]]
name = "a"
kind = "echo"
[task.params]
value = {{ from = "a" }}
marker = "{marker}"

[[task]]
name = "b"
kind = "sleep"
[task.params]
ms = 60000
marker = "{marker}"
"#
        ),
    );
    let mut run = env.spawn_run(&file);
    run.wait_for_stdout_line("[b] sleeping");
    let id = run.job_id();
    let sent = Instant::now();
    run.signal(Signal::SIGINT);
    expect_exit(&mut run, DEADLINE, 3);
    let took = sent.elapsed();

    assert_eq!(
        marker_lines(&env),
        [
            "execute a",
            "execute b",
            "revert b cancelled",
            r#"revert a success {"from":"a"}"#,
        ]
    );
    let store = env.store();
    assert_eq!(store.job_state(&id), "cancelled");
    assert_eq!(
        store.task_states(&id),
        [
            ("a".to_owned(), "reverted".to_owned()),
            ("b".to_owned(), "reverted".to_owned()),
        ]
    );
    let tasks = store.tasks(&id);
    assert_eq!(tasks[0].exec_outcome.as_deref(), Some("success"));
    assert_eq!(tasks[1].exec_outcome.as_deref(), Some("cancelled"));
    assert!(store.pending_reverts(&id).is_empty());

    let cancelling = transition_at(&env, &id, None, "running", "cancelling");
    let interrupted = transition_at(&env, &id, Some(1), "running", "failure");
    let figure = interrupted - cancelling;
    eprintln!(
        "native cancel: job cancelling -> task b running->failure = {figure} ms \
         (SIGINT -> supervisor exit {} ms; term_grace 20 s, cancel_timeout 30 s)",
        took.as_millis()
    );
    assert!(
        (0..5000).contains(&figure),
        "cancelling at {cancelling} ms, b interrupted at {interrupted} ms: {figure} ms, \
         the interruption must not wait for a grace (20 s)"
    );
    assert!(
        run.stdout_lines()
            .iter()
            .any(|l| l == &format!("job {id} ended: cancelled")),
        "no end line"
    );
    env.assert_no_job_process_left();
}

#[test]
fn a_native_task_ignoring_the_cancel_in_a_cpu_loop_is_killed_at_cancel_timeout() {
    let env = TestEnv::new();
    let marker = marker(&env);
    let file = env.job(
        "spin.toml",
        &format!(
            "name = \"native-spin\"\n{TEST_WORKER}\ncancel_timeout = \"2s\"\nterm_grace = \"1s\""
        ),
        &format!(
            r#"
[[task]]
name = "s"
kind = "spin"
[task.params]
ms = 60000
marker = "{marker}"
"#
        ),
    );
    let mut run = env.spawn_run(&file);
    run.wait_for_stdout_line("[s] spinning");
    let id = run.job_id();
    let conductor = conductor_pid(&env, &id);
    assert!(
        is_alive(conductor),
        "the conductor {conductor} is not alive"
    );
    let sent = Instant::now();
    run.signal(Signal::SIGINT);
    expect_exit(&mut run, LONG_DEADLINE, 4);
    let took = sent.elapsed();

    assert!(
        took >= Duration::from_secs(2),
        "killed {took:?} after SIGINT, before cancel_timeout (2s)"
    );
    let warn = revert_skipped_line(&run)
        .unwrap_or_else(|| panic!("no WARN `revert skipped` line on stderr"));
    assert!(warn.contains(&format!("job_id={id}")), "{warn}");
    assert!(warn.contains(r#"tasks="s""#), "{warn}");
    let out = run.stdout_lines();
    assert!(
        out.iter().any(|l| l == &format!("job {id} ended: killed")),
        "{out:#?}"
    );
    assert!(
        out.iter()
            .any(|l| l
                == &format!("reverts pending: s (run them later with: supervisor revert {id})")),
        "{out:#?}"
    );

    let store = env.store();
    assert_eq!(store.job_state(&id), "killed");
    let tasks = store.tasks(&id);
    assert_eq!(tasks[0].state, "failure", "{tasks:#?}");
    assert_eq!(tasks[0].exec_outcome.as_deref(), Some("killed"));
    assert_eq!(store.pending_reverts(&id), ["s"]);
    assert_eq!(marker_lines(&env), ["execute s"], "no revert may have run");

    wait_for(GONE_DEADLINE, "the conductor to be gone", || {
        if is_alive(conductor) {
            Err(conductor)
        } else {
            Ok(())
        }
    });
    env.assert_no_job_process_left();
}

/// A CPU loop that checks `TaskContext::is_cancelled` sees the cancel although the conductor's
/// one thread never returns to its event loop (the flag is set from the signal handler).
#[test]
fn a_native_cpu_loop_that_checks_the_flag_is_cancelled_and_reverted() {
    let env = TestEnv::new();
    let marker = marker(&env);
    let file = env.job(
        "spin-checked.toml",
        &format!("name = \"native-spin-checked\"\n{TEST_WORKER}\ncancel_timeout = \"20s\"\nterm_grace = \"10s\""),
        &format!(
            r#"
[[task]]
name = "s"
kind = "spin"
[task.params]
ms = 60000
check = true
marker = "{marker}"
"#
        ),
    );
    let mut run = env.spawn_run(&file);
    run.wait_for_stdout_line("[s] spinning");
    let sent = Instant::now();
    run.signal(Signal::SIGINT);
    expect_exit(&mut run, LONG_DEADLINE, 3);
    eprintln!(
        "cpu loop with the cheap check: SIGINT to exit in {:?}",
        sent.elapsed()
    );
    let lines = marker_lines(&env);
    assert_eq!(
        lines.first().map(String::as_str),
        Some("execute s"),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("revert s cancelled")),
        "{lines:?}"
    );
    let id = run.job_id();
    assert_eq!(env.store().job_state(&id), "cancelled");
    env.assert_no_job_process_left();
}

#[test]
fn a_native_result_flows_into_its_revert_and_the_store() {
    let env = TestEnv::new();
    let marker = marker(&env);
    let file = env.job(
        "result.toml",
        &format!("name = \"native-result\"\n{TEST_WORKER}"),
        &format!(
            r#"
[[task]]
name = "e"
kind = "echo"
[task.params]
value = {{ k = "v", n = 3 }}
marker = "{marker}"

[[task]]
name = "boom"
run = "exit 1"
"#
        ),
    );
    let mut run = env.spawn_run(&file);
    expect_exit(&mut run, DEADLINE, 1);
    let id = run.job_id();
    let expected = serde_json::json!({ "k": "v", "n": 3 });

    let lines = marker_lines(&env);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert_eq!(lines[0], "execute e");
    let result = lines[1]
        .strip_prefix("revert e success ")
        .unwrap_or_else(|| panic!("not e's revert after a success: {:?}", lines[1]));
    let seen: serde_json::Value = serde_json::from_str(result)
        .unwrap_or_else(|err| panic!("the revert's result {result:?} is not JSON: {err}"));
    assert_eq!(seen, expected);

    let store = env.store();
    assert_eq!(store.job_state(&id), "reverted");
    let tasks = store.tasks(&id);
    assert_eq!(tasks[0].state, "reverted");
    assert_eq!(tasks[0].exec_outcome.as_deref(), Some("success"));
    let stored: serde_json::Value = serde_json::from_str(&tasks[0].result)
        .unwrap_or_else(|err| panic!("the stored result {:?} is not JSON: {err}", tasks[0].result));
    assert_eq!(stored, expected);
    assert_eq!(tasks[0].result, result, "the revert got the stored text");
    // A command task without `revert` goes through an empty revert step too.
    assert_eq!(tasks[1].state, "reverted");
    assert_eq!(tasks[1].exec_outcome.as_deref(), Some("failure"));
    assert!(store.pending_reverts(&id).is_empty());
    env.assert_no_job_process_left();
}

#[test]
fn a_failing_native_task_is_reverted_with_the_others() {
    let env = TestEnv::new();
    let marker = marker(&env);
    let file = env.job(
        "fail.toml",
        &format!("name = \"native-fail\"\n{TEST_WORKER}"),
        &format!(
            r#"
[[task]]
name = "first"
kind = "echo"
[task.params]
value = "first-done"
marker = "{marker}"

[[task]]
name = "f"
kind = "fail"
[task.params]
marker = "{marker}"

[[task]]
name = "never"
kind = "echo"
[task.params]
value = 0
marker = "{marker}"
"#
        ),
    );
    let mut run = env.spawn_run(&file);
    expect_exit(&mut run, DEADLINE, 1);
    let id = run.job_id();

    assert_eq!(
        marker_lines(&env),
        [
            "execute first",
            "execute f",
            "revert f failure",
            "revert first success first-done",
        ]
    );
    assert!(
        run.stdout_lines()
            .iter()
            .any(|l| l.starts_with("[f] failure: failed on purpose")),
        "{:#?}",
        run.stdout_lines()
    );
    let store = env.store();
    assert_eq!(store.job_state(&id), "reverted");
    assert_eq!(
        store.task_states(&id),
        [
            ("first".to_owned(), "reverted".to_owned()),
            ("f".to_owned(), "reverted".to_owned()),
            ("never".to_owned(), "pending".to_owned()),
        ]
    );
    // (The execute's reason is not kept in `tasks.error`: a successful revert clears it.)
    assert_eq!(store.tasks(&id)[1].exec_outcome.as_deref(), Some("failure"));
    env.assert_no_job_process_left();
}

#[test]
fn an_unknown_kind_is_rejected_before_anything_runs() {
    let env = TestEnv::new();
    let marker = marker(&env);
    // The unknown kind's value starts at column 8 of its line.
    let source = format!(
        r#"name = "unknown-kind"
worker = "test-worker"

[[task]]
name = "first"
kind = "echo"
[task.params]
value = 1
marker = "{marker}"

[[task]]
name = "second"
kind = "nope"
"#
    );
    let file = env.write("unknown.toml", &source);
    let kind_line = source
        .lines()
        .position(|l| l == "kind = \"nope\"")
        .expect("the source has the kind line")
        + 1;
    let file_str = file.to_str().expect("test paths are UTF-8");
    let state_dir = env.state_dir();
    let state_dir = state_dir.to_str().expect("test paths are UTF-8");

    for args in [
        vec!["validate", file_str],
        vec!["run", "--state-dir", state_dir, file_str],
    ] {
        let mut run = env.run_to_end(&args);
        assert_eq!(run.wait_exit(DEADLINE), 2, "`{}` exit code", args[0]);
        assert_eq!(run.stdout(), "", "`{}`: nothing runs", args[0]);
        let stderr = run.stderr();
        let expected = format!(
            "{file_str}:{kind_line}:8: unknown kind \"nope\": worker \"test-worker\" provides big, echo, fail, sleep, spin, stuck_revert"
        );
        assert!(
            stderr.lines().any(|l| l == expected),
            "`{}`: stderr lacks {expected:?}: {stderr:?}",
            args[0]
        );
    }
    if env.has_store() {
        assert!(env.store().job_ids().is_empty(), "a job was recorded");
    }
    assert_eq!(env.read("marker"), "", "a task ran");
    env.assert_no_job_process_left();
}

/// Writes an `examples/download.toml`-like job (worker `download-worker`) whose files all go
/// under `DIR/SUB/`; returns the job file and the download's destination.
fn download_job(env: &TestEnv, sub: &str, size_kb: u32, chunk_ms: u64) -> (PathBuf, PathBuf) {
    let base = env.path(sub);
    let dest = base.join("app.tgz");
    let into = base.join("app");
    let file = env.job(
        &format!("{sub}.toml"),
        "name = \"download\"\nworker = \"download-worker\"\ncancel_timeout = \"10s\"",
        &format!(
            r#"
[[task]]
name = "download"
kind = "download"
[task.params]
url = "https://example.invalid/app.tgz"
dest = "{dest}"
size_kb = {size_kb}
chunk_ms = {chunk_ms}

[[task]]
name = "unpack"
kind = "unpack"
[task.params]
archive = "{dest}"
into = "{into}"
"#,
            dest = dest.display(),
            into = into.display(),
        ),
    );
    (file, dest)
}

/// A file's size; `None` when it does not exist.
fn file_size(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

#[test]
fn the_example_download_job_succeeds_and_a_cancelled_one_leaves_no_partial_file() {
    let env = TestEnv::new();

    // As in examples/download.toml, smaller and faster.
    let (file, dest) = download_job(&env, "done", 256, 50);
    let mut run = env.spawn_run(&file);
    expect_exit(&mut run, DEADLINE, 0);
    let id = run.job_id();
    let out = run.stdout_lines();
    for expected in ["[download] 100%", "[download] success", "[unpack] success"] {
        assert!(
            out.iter().any(|l| l.starts_with(expected)),
            "stdout lacks {expected:?}: {out:#?}"
        );
    }
    assert_eq!(file_size(&dest), Some(256 * 1024));
    let into = dest.with_file_name("app");
    for name in ["bin", "lib", "VERSION"] {
        assert!(into.join(name).is_file(), "{} missing", name);
    }
    let store = env.store();
    assert_eq!(store.job_state(&id), "success");
    let result: serde_json::Value =
        serde_json::from_str(&store.tasks(&id)[0].result).expect("the download's result is JSON");
    assert_eq!(
        result,
        serde_json::json!({ "path": dest.display().to_string(), "bytes": 256 * 1024 })
    );

    // Slow chunks, so that the cancel surely lands mid-transfer (16 chunks of 500 ms).
    let (file, dest) = download_job(&env, "cancelled", 1024, 500);
    let mut run = env.spawn_run(&file);
    let progress = wait_for(DEADLINE, "a `[download] N%` line", || {
        let out = run.stdout();
        out.lines()
            .find(|l| l.starts_with("[download] ") && l.ends_with('%'))
            .map(str::to_owned)
            .ok_or(out)
    });
    let id = run.job_id();
    let partial = file_size(&dest).unwrap_or_else(|| panic!("no partial file after {progress:?}"));
    assert!(
        partial < 1024 * 1024,
        "the download is complete ({partial} bytes) before the cancel"
    );
    run.signal(Signal::SIGINT);
    expect_exit(&mut run, DEADLINE, 3);

    assert_eq!(file_size(&dest), None, "the partial file is still there");
    let out = run.stdout_lines();
    let removed = format!("[download] removed {}", dest.display());
    assert!(out.iter().any(|l| l == &removed), "{out:#?}");
    assert!(
        !out.iter().any(|l| l.starts_with("[unpack]")),
        "unpack ran: {out:#?}"
    );
    let store = env.store();
    assert_eq!(store.job_state(&id), "cancelled");
    assert_eq!(
        store.task_states(&id),
        [
            ("download".to_owned(), "reverted".to_owned()),
            ("unpack".to_owned(), "pending".to_owned()),
        ]
    );
    assert_eq!(
        store.tasks(&id)[0].exec_outcome.as_deref(),
        Some("cancelled")
    );
    env.assert_no_job_process_left();
}
