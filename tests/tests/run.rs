//! `supervisor run` and `supervisor validate`, end to end, against the real binaries.
//!
//! Build the binaries first: `cargo build --workspace --bins`. Every test has its own
//! [`TestEnv`] (temp dir, state dir, marker), so they run in parallel. Nothing sleeps a fixed
//! time: tests wait for events (a stdout line, a store state, an exit) under generous deadlines.

use nix::sys::signal::Signal;
use std::time::{Duration, Instant};
use tests::{
    DEADLINE, LONG_DEADLINE, Run, TestEnv, examples_dir, is_alive, proc_info, send_signal,
    session_members, thread_count, wait_for,
};

/// A revert that appends `undo-NAME:RESULT:OUTCOME` to `$SVT_DIR/undo`.
const LOG_REVERT: &str =
    r#"revert = 'echo "undo-$TASK_NAME:$TASK_RESULT:$TASK_OUTCOME" >> "$SVT_DIR/undo"'"#;

/// Asserts the exit code, with the output in the message.
fn expect_exit(run: &mut Run, deadline: Duration, expected: i32) {
    let code = run.wait_exit(deadline);
    assert_eq!(code, expected, "unexpected exit code");
}

/// Waits until the store shows the job with its conductor recorded; returns the conductor pid.
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

/// The WARN `revert skipped` line of stderr (colour escapes removed), if any.
fn revert_skipped_line(run: &Run) -> Option<String> {
    run.stderr_plain()
        .lines()
        .find(|l| l.contains("WARN") && l.contains("revert skipped"))
        .map(str::to_owned)
}

#[test]
fn success_runs_every_task_in_order() {
    let env = TestEnv::new();
    let file = env.job(
        "ok.toml",
        r#"name = "in-order""#,
        r#"
[[task]]
name = "one"
run = 'echo one >> "$SVT_DIR/order"; echo first-result'

[[task]]
name = "two"
run = ["/bin/sh", "-c", "echo two >> \"$SVT_DIR/order\"; echo \"$TASK_NAME of $JOB_ID\""]

[[task]]
name = "three"
run = 'echo three >> "$SVT_DIR/order"'
"#,
    );
    let mut run = env.spawn_run(&file);
    expect_exit(&mut run, DEADLINE, 0);
    let id = run.job_id();

    assert_eq!(env.lines("order"), ["one", "two", "three"]);
    let out = run.stdout_lines();
    assert_eq!(out[0], format!("job {id} in-order: 3 task(s)"));
    for expected in [
        "[one] execute",
        "[one] first-result",
        &format!("[two] two of {id}"),
        "[three] execute",
        &format!("job {id} ended: success"),
    ] {
        assert!(
            out.iter().any(|l| l == expected),
            "stdout lacks {expected:?}"
        );
    }
    let position = |prefix: &str| {
        out.iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("stdout lacks a line starting with {prefix:?}"))
    };
    assert!(position("[one] success (") < position("[two] execute"));
    assert!(position("[two] success (") < position("[three] execute"));
    assert_eq!(
        out.last().map(String::as_str),
        Some(&*format!("job {id} ended: success"))
    );

    let store = env.store();
    assert_eq!(store.job_ids(), std::slice::from_ref(&id));
    assert_eq!(store.job_state(&id), "success");
    let tasks = store.tasks(&id);
    assert!(
        tasks
            .iter()
            .all(|t| t.state == "success" && t.attempts == 1),
        "{tasks:#?}"
    );
    assert_eq!(tasks[0].result, "first-result");
    assert_eq!(tasks[1].result, format!("two of {id}"));
    assert_eq!(tasks[0].exec_outcome.as_deref(), Some("success"));
    env.assert_no_job_process_left();
}

#[test]
fn failing_third_task_reverts_three_two_one_with_result_and_outcome() {
    let env = TestEnv::new();
    let file = env.job(
        "fail.toml",
        r#"name = "fail-third""#,
        &format!(
            r#"
[[task]]
name = "one"
run = "echo res-one"
{LOG_REVERT}

[[task]]
name = "two"
run = "echo res-two"
{LOG_REVERT}

[[task]]
name = "three"
run = "echo res-three; echo 'disk full' >&2; exit 7"
{LOG_REVERT}

[[task]]
name = "four"
run = 'echo four >> "$SVT_DIR/never"'
{LOG_REVERT}
"#
        ),
    );
    let mut run = env.spawn_run(&file);
    expect_exit(&mut run, DEADLINE, 1);
    let id = run.job_id();

    assert_eq!(
        env.lines("undo"),
        [
            "undo-three:res-three:failure",
            "undo-two:res-two:success",
            "undo-one:res-one:success",
        ]
    );
    assert_eq!(env.read("never"), "", "the fourth task must not run");
    let out = run.stdout_lines();
    assert!(
        out.iter()
            .any(|l| l.starts_with("[three] failure: exited with status 7")),
        "{out:#?}"
    );
    assert!(run.stderr().lines().any(|l| l == "[three] disk full"));
    assert!(
        out.iter()
            .any(|l| l == &format!("job {id} ended: reverted"))
    );

    let store = env.store();
    assert_eq!(store.job_state(&id), "reverted");
    assert_eq!(
        store.task_states(&id),
        [
            ("one".to_owned(), "reverted".to_owned()),
            ("two".to_owned(), "reverted".to_owned()),
            ("three".to_owned(), "reverted".to_owned()),
            ("four".to_owned(), "pending".to_owned()),
        ]
    );
    let tasks = store.tasks(&id);
    assert_eq!(tasks[2].exec_outcome.as_deref(), Some("failure"));
    assert_eq!(tasks[2].result, "res-three");
    assert!(store.pending_reverts(&id).is_empty());
    env.assert_no_job_process_left();
}

#[test]
fn a_retried_task_succeeds_on_its_second_attempt() {
    let env = TestEnv::new();
    let file = env.job(
        "retry.toml",
        "",
        r#"
[[task]]
name = "flaky"
retries = 2
run = '''
echo "attempt" >> "$SVT_DIR/attempts"
if [ -e "$SVT_DIR/tried" ]; then echo second-try; else touch "$SVT_DIR/tried"; echo first-try; exit 1; fi
'''
"#,
    );
    let mut run = env.spawn_run(&file);
    expect_exit(&mut run, DEADLINE, 0);
    let id = run.job_id();

    assert_eq!(env.lines("attempts").len(), 2);
    let out = run.stdout_lines();
    assert!(
        out.iter().any(|l| l == "[flaky] execute (attempt 2)"),
        "{out:#?}"
    );
    assert!(
        out.iter()
            .any(|l| l.starts_with("[flaky] failure: exited with status 1"))
    );
    let store = env.store();
    assert_eq!(store.job_state(&id), "success");
    let task = &store.tasks(&id)[0];
    assert_eq!(task.state, "success");
    assert_eq!(task.attempts, 2);
    assert_eq!(task.result, "second-try");
}

#[test]
fn sigint_cancels_the_running_task_and_reverts_what_began() {
    let env = TestEnv::new();
    // A long term_grace: `sleep` dies on SIGTERM at once, so the cancel must not wait for it.
    // Long enough that a loaded machine cannot make the SIGTERM path look like the SIGKILL one.
    let file = env.job(
        "cancel.toml",
        "cancel_timeout = \"55s\"\nterm_grace = \"50s\"",
        &format!(
            r#"
[[task]]
name = "setup"
run = "echo setup-done"
{LOG_REVERT}

[[task]]
name = "long"
run = "echo long-started; sleep 60"
{LOG_REVERT}

[[task]]
name = "never"
run = 'echo ran >> "$SVT_DIR/never"'
{LOG_REVERT}
"#
        ),
    );
    let mut run = env.spawn_run(&file);
    run.wait_for_stdout_line("[long] long-started");
    let id = run.job_id();
    let sent = Instant::now();
    run.signal(Signal::SIGINT);
    expect_exit(&mut run, LONG_DEADLINE, 3);
    let took = sent.elapsed();

    assert!(
        run.stderr().contains("supervisor: SIGINT: cancelling"),
        "no cancel notice on stderr"
    );
    assert_eq!(
        env.lines("undo"),
        [
            "undo-long:long-started:cancelled",
            "undo-setup:setup-done:success"
        ]
    );
    assert_eq!(env.read("never"), "");
    assert!(
        took < Duration::from_secs(25),
        "the cancel took {took:?}: the task should have ended on SIGTERM, long before term_grace (50s)"
    );
    let store = env.store();
    assert_eq!(store.job_state(&id), "cancelled");
    let tasks = store.tasks(&id);
    assert_eq!(
        store.task_states(&id),
        [
            ("setup".to_owned(), "reverted".to_owned()),
            ("long".to_owned(), "reverted".to_owned()),
            ("never".to_owned(), "pending".to_owned()),
        ]
    );
    assert_eq!(tasks[1].exec_outcome.as_deref(), Some("cancelled"));
    assert!(store.pending_reverts(&id).is_empty());
    assert!(
        run.stdout_lines()
            .iter()
            .any(|l| l == &format!("job {id} ended: cancelled")),
        "no end line"
    );
    env.assert_no_job_process_left();
}

#[test]
fn a_task_ignoring_sigterm_is_killed_after_term_grace_and_reverts_still_run() {
    let env = TestEnv::new();
    let file = env.job(
        "stubborn.toml",
        "cancel_timeout = \"50s\"\nterm_grace = \"500ms\"",
        &format!(
            r#"
[[task]]
name = "first"
run = "echo first-done"
{LOG_REVERT}

[[task]]
name = "stubborn"
run = "trap '' TERM; echo ready; sleep 60"
{LOG_REVERT}
"#
        ),
    );
    let mut run = env.spawn_run(&file);
    run.wait_for_stdout_line("[stubborn] ready");
    let id = run.job_id();
    let sent = Instant::now();
    run.signal(Signal::SIGINT);
    // Exit 3, not 4: the job ended before cancel_timeout (50s: ample under load) killed it.
    expect_exit(&mut run, LONG_DEADLINE, 3);
    let took = sent.elapsed();

    assert!(
        took >= Duration::from_millis(500),
        "ended {took:?} after SIGINT: the task ignores SIGTERM, so it should live for term_grace (500ms)"
    );
    assert!(
        took < Duration::from_secs(50),
        "took {took:?}: as long as cancel_timeout"
    );
    assert_eq!(
        env.lines("undo"),
        [
            "undo-stubborn:ready:cancelled",
            "undo-first:first-done:success"
        ]
    );
    let store = env.store();
    assert_eq!(store.job_state(&id), "cancelled");
    assert_eq!(
        store.task_states(&id),
        [
            ("first".to_owned(), "reverted".to_owned()),
            ("stubborn".to_owned(), "reverted".to_owned()),
        ]
    );
    assert_eq!(
        store.tasks(&id)[1].exec_outcome.as_deref(),
        Some("cancelled")
    );
    env.assert_no_job_process_left();
}

#[test]
fn a_task_over_its_timeout_fails_and_is_reverted() {
    let env = TestEnv::new();
    let file = env.job(
        "timeout.toml",
        "term_grace = \"1s\"",
        &format!(
            r#"
[[task]]
name = "first"
run = "echo first-done"
{LOG_REVERT}

[[task]]
name = "slow"
run = "echo slow-started; sleep 60"
timeout = "300ms"
{LOG_REVERT}
"#
        ),
    );
    let mut run = env.spawn_run(&file);
    expect_exit(&mut run, DEADLINE, 1);
    let id = run.job_id();

    let out = run.stdout_lines();
    assert!(
        out.iter()
            .any(|l| l.starts_with("[slow] failure: timed out after 300ms")),
        "{out:#?}"
    );
    assert_eq!(
        env.lines("undo"),
        [
            "undo-slow:slow-started:failure",
            "undo-first:first-done:success"
        ]
    );
    let store = env.store();
    assert_eq!(store.job_state(&id), "reverted");
    assert_eq!(store.tasks(&id)[1].exec_outcome.as_deref(), Some("failure"));
    env.assert_no_job_process_left();
}

#[test]
fn the_job_timeout_cancels_softly() {
    let env = TestEnv::new();
    let file = env.job(
        "job-timeout.toml",
        "timeout = \"1s\"\ncancel_timeout = \"20s\"\nterm_grace = \"5s\"",
        &format!(
            r#"
[[task]]
name = "long"
run = "echo long-started; sleep 60"
{LOG_REVERT}
"#
        ),
    );
    let mut run = env.spawn_run(&file);
    expect_exit(&mut run, DEADLINE, 3);
    let id = run.job_id();

    assert!(
        run.stdout_lines()
            .iter()
            .any(|l| l.starts_with("cancelling: ")),
        "no cancel notice"
    );
    let store = env.store();
    // The timeout counts from the job's start: on a loaded machine it can fire before the task
    // printed its line, or even before the task began. What is reverted must match what began.
    let started = run
        .stdout_lines()
        .iter()
        .any(|l| l == "[long] long-started");
    let began = store.tasks(&id)[0].state != "pending";
    let undo = env.lines("undo");
    if started {
        assert_eq!(undo, ["undo-long:long-started:cancelled"]);
    } else if began {
        assert_eq!(undo.len(), 1, "{undo:?}");
        assert!(undo[0].starts_with("undo-long:"), "{undo:?}");
    } else {
        assert!(
            undo.is_empty(),
            "a task that never began was reverted: {undo:?}"
        );
    }
    let job = store.job(&id).expect("the job is stored");
    assert_eq!(job.state, "cancelled");
    assert_eq!(
        job.reason.as_deref(),
        Some("job timeout reached"),
        "{job:?}"
    );
    env.assert_no_job_process_left();
}

#[test]
fn a_failing_revert_does_not_stop_the_others_and_exits_5() {
    let env = TestEnv::new();
    let file = env.job(
        "revert-fails.toml",
        "",
        &format!(
            r#"
[[task]]
name = "one"
run = "echo res-one"
{LOG_REVERT}

[[task]]
name = "two"
run = "echo res-two"
revert = "echo cannot-undo >&2; exit 3"

[[task]]
name = "three"
run = "exit 1"
{LOG_REVERT}
"#
        ),
    );
    let mut run = env.spawn_run(&file);
    expect_exit(&mut run, DEADLINE, 5);
    let id = run.job_id();

    assert_eq!(
        env.lines("undo"),
        ["undo-three::failure", "undo-one:res-one:success"]
    );
    let out = run.stdout_lines();
    assert!(
        out.iter()
            .any(|l| l.starts_with("[two] revert failed: exited with status 3")),
        "{out:#?}"
    );
    assert!(
        out.iter()
            .any(|l| l == &format!("job {id} ended: revert_failed"))
    );
    let store = env.store();
    assert_eq!(store.job_state(&id), "revert_failed");
    assert_eq!(
        store.task_states(&id),
        [
            ("one".to_owned(), "reverted".to_owned()),
            ("two".to_owned(), "revert_failure".to_owned()),
            ("three".to_owned(), "reverted".to_owned()),
        ]
    );
    assert_eq!(store.pending_reverts(&id), ["two"]);
}

#[test]
fn tasks_get_their_cwd_and_env_with_task_values_over_job_values() {
    let env = TestEnv::new();
    let sub = env.path("sub");
    std::fs::create_dir(&sub).expect("mkdir sub");
    let file = env.write(
        "env.toml",
        &format!(
            r#"name = "env-job"
[env]
SVT_MARK = "{mark}"
SHARED = "from-job"
ONLY_JOB = "job-value"

[[task]]
name = "where"
cwd = "{sub}"
env = {{ SHARED = "from-task" }}
run = 'echo "$(pwd)|$SHARED|$ONLY_JOB|$TASK_NAME|$JOB_ID"'
revert = "true"

[[task]]
name = "fail"
run = "exit 1"
"#,
            mark = env.marker(),
            sub = sub.display()
        ),
    );
    let mut run = env.spawn_run(&file);
    expect_exit(&mut run, DEADLINE, 1);
    let id = run.job_id();
    let store = env.store();
    assert_eq!(
        store.tasks(&id)[0].result,
        format!("{}|from-task|job-value|where|{id}", sub.display())
    );
}

#[test]
fn sigterm_to_run_cancels_softly_too() {
    let env = TestEnv::new();
    let file = env.job(
        "term.toml",
        "",
        &format!(
            r#"
[[task]]
name = "long"
run = "echo long-started; sleep 60"
{LOG_REVERT}
"#
        ),
    );
    let mut run = env.spawn_run(&file);
    run.wait_for_stdout_line("[long] long-started");
    let id = run.job_id();
    run.signal(Signal::SIGTERM);
    expect_exit(&mut run, DEADLINE, 3);
    assert!(run.stderr().contains("supervisor: SIGTERM: cancelling"));
    assert_eq!(env.lines("undo"), ["undo-long:long-started:cancelled"]);
    assert_eq!(env.store().job_state(&id), "cancelled");
    env.assert_no_job_process_left();
}

/// A task that starts `sleep 1000` in a new session (`setsid`) and exits once it is there:
/// the daemon is an orphan of the job, outside every task group and the conductor's session,
/// but inside the conductor's tree (the conductor is a child subreaper).
const DAEMONIZE_TASK: &str = r#"
[[task]]
name = "daemonize"
run = '''
setsid sleep 1000 &
pid=$!
i=0
while [ "$(cut -d' ' -f6 /proc/$pid/stat)" != "$pid" ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done
echo "daemon $pid"
'''
"#;

#[test]
fn a_daemon_started_by_a_task_does_not_outlive_the_job() {
    let env = TestEnv::new();
    let file = env.job(
        "daemon.toml",
        "",
        &format!("{DAEMONIZE_TASK}\n[[task]]\nname = \"after\"\nrun = \"echo done\"\n"),
    );
    let mut run = env.spawn_run(&file);
    expect_exit(&mut run, DEADLINE, 0);
    assert!(
        run.stdout_lines()
            .iter()
            .any(|l| l.starts_with("[daemonize] daemon ")),
        "the daemon did not start"
    );
    env.assert_no_job_process_left();
}

#[test]
fn a_daemon_started_by_a_task_does_not_outlive_a_crashed_conductor() {
    let env = TestEnv::new();
    let file = env.job(
        "daemon-crash.toml",
        "",
        &format!(
            "{DAEMONIZE_TASK}\n[[task]]\nname = \"long\"\nrun = \"echo long-started; sleep 60\"\n"
        ),
    );
    let mut run = env.spawn_run(&file);
    run.wait_for_stdout_line("[long] long-started");
    let id = run.job_id();
    send_signal(conductor_pid(&env, &id), Signal::SIGKILL);
    expect_exit(&mut run, DEADLINE, 4);
    assert_eq!(env.store().job_state(&id), "crashed");
    env.assert_no_job_process_left();
}

/// A job whose second task's revert ignores SIGTERM and never ends.
fn hanging_revert_job(env: &TestEnv, cancel_timeout: &str) -> std::path::PathBuf {
    env.job(
        "hang.toml",
        &format!("cancel_timeout = \"{cancel_timeout}\"\nterm_grace = \"500ms\""),
        &format!(
            r#"
[[task]]
name = "task1"
run = "echo one"
{LOG_REVERT}

[[task]]
name = "task2"
run = "echo running; sleep 60"
revert = "trap '' TERM; sleep 1000 & echo started; wait"
"#
        ),
    )
}

#[test]
fn a_hanging_revert_is_killed_at_cancel_timeout_and_the_skipped_reverts_recorded() {
    let env = TestEnv::new();
    let file = hanging_revert_job(&env, "2s");
    let mut run = env.spawn_run(&file);
    run.wait_for_stdout_line("[task2] running");
    let id = run.job_id();
    let sent = Instant::now();
    run.signal(Signal::SIGINT);
    expect_exit(&mut run, LONG_DEADLINE, 4);
    let took = sent.elapsed();

    assert!(
        took >= Duration::from_secs(2),
        "killed {took:?} after SIGINT, before cancel_timeout (2s)"
    );
    assert!(
        run.stdout_lines().iter().any(|l| l == "[task2] started"),
        "the revert did not start"
    );
    let warn = revert_skipped_line(&run)
        .unwrap_or_else(|| panic!("no WARN `revert skipped` line on stderr"));
    assert!(warn.contains(&format!("job_id={id}")), "{warn}");
    assert!(warn.contains(r#"tasks="task2,task1""#), "{warn}");
    let out = run.stdout_lines();
    assert!(
        out.iter().any(|l| l == &format!("job {id} ended: killed")),
        "{out:#?}"
    );
    assert!(
        out.iter().any(|l| l
            == &format!(
                "reverts pending: task2, task1 (run them later with: supervisor revert {id})"
            )),
        "{out:#?}"
    );
    assert_eq!(env.read("undo"), "", "task1's revert must not have run");

    let store = env.store();
    assert_eq!(store.job_state(&id), "killed");
    assert_eq!(
        store.task_states(&id),
        [
            ("task1".to_owned(), "success".to_owned()),
            ("task2".to_owned(), "revert_failure".to_owned()),
        ]
    );
    assert_eq!(store.pending_reverts(&id), ["task2", "task1"]);
    assert_eq!(
        store.tasks(&id)[1].exec_outcome.as_deref(),
        Some("cancelled")
    );
    // The revert's background `sleep 1000` (which ignores SIGTERM) included.
    env.assert_no_job_process_left();
}

#[test]
fn a_second_sigint_kills_the_job_at_once() {
    let env = TestEnv::new();
    let file = hanging_revert_job(&env, "5m");
    let mut run = env.spawn_run(&file);
    run.wait_for_stdout_line("[task2] running");
    let id = run.job_id();
    run.signal(Signal::SIGINT);
    // The revert of task2 is running (and will never end by itself).
    run.wait_for_stdout_line("[task2] started");
    run.signal(Signal::SIGINT);
    expect_exit(&mut run, DEADLINE, 4);

    assert!(
        run.stderr()
            .contains("supervisor: SIGINT again: killing the job")
    );
    let warn = revert_skipped_line(&run)
        .unwrap_or_else(|| panic!("no WARN `revert skipped` line on stderr"));
    assert!(warn.contains(&format!("job_id={id}")), "{warn}");
    assert!(warn.contains(r#"tasks="task2,task1""#), "{warn}");
    let store = env.store();
    assert_eq!(store.job_state(&id), "killed");
    assert_eq!(store.pending_reverts(&id), ["task2", "task1"]);
    env.assert_no_job_process_left();
}

/// Runs a two-task job, SIGKILLs its conductor while the second task runs; returns the run
/// (ended) and the job id.
fn run_and_kill_the_conductor(env: &TestEnv) -> (Run, String) {
    let file = env.job(
        "crash.toml",
        "",
        &format!(
            r#"
[[task]]
name = "first"
run = "echo first-done"
{LOG_REVERT}

[[task]]
name = "long"
run = "echo long-started; sleep 60"
{LOG_REVERT}
"#
        ),
    );
    let mut run = env.spawn_run(&file);
    run.wait_for_stdout_line("[long] long-started");
    let id = run.job_id();
    let conductor = conductor_pid(env, &id);
    assert!(
        is_alive(conductor),
        "the recorded conductor {conductor} is not alive"
    );
    send_signal(conductor, Signal::SIGKILL);
    expect_exit(&mut run, DEADLINE, 4);
    (run, id)
}

#[test]
fn a_conductor_killed_from_outside_leaves_the_job_crashed_with_reverts_pending() {
    let env = TestEnv::new();
    let (run, id) = run_and_kill_the_conductor(&env);

    let out = run.stdout_lines();
    assert!(
        out.iter().any(|l| l == &format!("job {id} ended: crashed")),
        "{out:#?}"
    );
    assert!(
        out.iter().any(|l| l
            == &format!(
                "reverts pending: long, first (run them later with: supervisor revert {id})"
            )),
        "{out:#?}"
    );
    let warn = revert_skipped_line(&run)
        .unwrap_or_else(|| panic!("no WARN `revert skipped` line on stderr"));
    assert!(warn.contains(&format!("job_id={id}")), "{warn}");
    assert!(warn.contains(r#"tasks="long,first""#), "{warn}");
    assert_eq!(env.read("undo"), "", "no revert may have run");

    let store = env.store();
    assert_eq!(store.job_state(&id), "crashed");
    let tasks = store.tasks(&id);
    assert_eq!(tasks[0].state, "success");
    assert_eq!(tasks[1].state, "failure");
    assert_eq!(tasks[1].exec_outcome.as_deref(), Some("killed"));
    assert_eq!(store.pending_reverts(&id), ["long", "first"]);
    env.assert_no_job_process_left();
}

/// The WARN line must be greppable as documented (`job_id=ID`, `tasks="..."`) when stderr is
/// a pipe or a file, not a terminal.
#[test]
fn log_lines_on_a_pipe_are_plain_text() {
    let env = TestEnv::new();
    let (run, id) = run_and_kill_the_conductor(&env);
    let stderr = run.stderr();
    assert!(
        stderr.contains(&format!("job_id={id}")) && stderr.contains(r#"tasks="long,first""#),
        "stderr is not a terminal, yet the WARN line's fields are split by colour escapes: {stderr:?}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "colour escapes on a pipe: {stderr:?}"
    );
}

#[test]
fn the_conductor_is_one_single_threaded_process_in_its_own_session() {
    let env = TestEnv::new();
    let file = env.job(
        "thread.toml",
        "term_grace = \"1s\"",
        r#"
[[task]]
name = "long"
run = "echo ready; sleep 60"
"#,
    );
    let mut run = env.spawn_run(&file);
    run.wait_for_stdout_line("[long] ready");
    let id = run.job_id();
    let conductor = conductor_pid(&env, &id);

    assert_eq!(
        thread_count(conductor),
        Some(1),
        "threads of the conductor {conductor}"
    );
    let info = proc_info(conductor).expect("the conductor is alive");
    assert_eq!(
        info.session, conductor,
        "the conductor leads its own session: {info:?}"
    );
    assert_ne!(info.ppid, 0);
    let members = session_members(conductor);
    assert!(
        members.iter().any(|p| p.cmdline.contains("sleep 60")),
        "the task runs in the conductor's session: {members:#?}"
    );
    let marked = env.marked_processes();
    assert!(
        marked
            .iter()
            .all(|p| p.session == conductor && p.pgrp != conductor),
        "task processes sit in their own group inside the conductor's session: {marked:#?}"
    );

    run.signal(Signal::SIGINT);
    expect_exit(&mut run, DEADLINE, 3);
    env.assert_no_job_process_left();
}

/// `supervisor run` on an invalid file: exit 2, `FILE:LINE:COL: message` on stderr, nothing
/// recorded.
fn assert_invalid(source: &str, line: usize, needle: &str) {
    let env = TestEnv::new();
    let file = env.write("bad.toml", source);
    let state_dir = env.state_dir();
    let mut run = env.run_to_end(&[
        "run",
        "--state-dir",
        state_dir.to_str().expect("utf-8"),
        file.to_str().expect("utf-8"),
    ]);
    assert_eq!(run.wait_exit(DEADLINE), 2, "exit code");
    assert_eq!(run.stdout(), "", "nothing runs");
    let prefix = format!("{}:{line}:", file.display());
    let stderr = run.stderr();
    let found = stderr.lines().find_map(|l| l.strip_prefix(&prefix));
    let rest = found.unwrap_or_else(|| panic!("stderr lacks {prefix:?}COL: {stderr:?}"));
    let (column, message) = rest
        .split_once(": ")
        .unwrap_or_else(|| panic!("no `: message` after the place: {rest:?}"));
    assert!(
        !column.is_empty() && column.bytes().all(|b| b.is_ascii_digit()),
        "column {column:?}"
    );
    assert!(
        message.contains(needle),
        "message {message:?} lacks {needle:?}"
    );
    if env.has_store() {
        assert!(env.store().job_ids().is_empty(), "a job was recorded");
    }
    env.assert_no_job_process_left();
}

#[test]
fn invalid_unknown_key() {
    assert_invalid(
        "[[task]]\nname = \"a\"\nrun = \"true\"\nrunn = \"x\"\n",
        4,
        "runn",
    );
}

#[test]
fn invalid_duplicate_task_name() {
    assert_invalid(
        "[[task]]\nname = \"a\"\nrun = \"true\"\n\n[[task]]\nname = \"a\"\nrun = \"true\"\n",
        6,
        "duplicate task name",
    );
}

#[test]
fn invalid_empty_command() {
    assert_invalid("[[task]]\nname = \"a\"\nrun = \"  \"\n", 3, "empty command");
    assert_invalid("[[task]]\nname = \"a\"\nrun = []\n", 3, "empty command");
}

#[test]
fn invalid_bad_duration() {
    assert_invalid(
        "[[task]]\nname = \"a\"\nrun = \"true\"\ntimeout = \"5 parsecs\"\n",
        4,
        "timeout",
    );
}

#[test]
fn invalid_term_grace_not_shorter_than_cancel_timeout() {
    assert_invalid(
        "cancel_timeout = \"2s\"\nterm_grace = \"2s\"\n[[task]]\nname = \"a\"\nrun = \"true\"\n",
        2,
        "shorter than cancel_timeout",
    );
}

#[test]
fn invalid_no_tasks() {
    assert_invalid("name = \"x\"\n", 1, "no tasks");
}

#[test]
fn invalid_toml_syntax() {
    assert_invalid("[[task]]\nname = \"a\"\nrun = \"true\"\n[[task\n", 4, "");
}

#[test]
fn validate_accepts_the_examples_and_rejects_a_bad_file() {
    let env = TestEnv::new();
    let mut examples: Vec<_> = std::fs::read_dir(examples_dir())
        .expect("examples/ is readable")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    examples.sort();
    assert!(!examples.is_empty(), "no examples found");
    for example in &examples {
        let mut run = env.run_to_end(&["validate", example.to_str().expect("utf-8")]);
        assert_eq!(run.wait_exit(DEADLINE), 0, "validate {}", example.display());
        assert!(
            run.stdout().contains(": valid job "),
            "validate {}: {}",
            example.display(),
            run.stdout()
        );
    }
    let bad = env.write("bad.toml", "[[task]]\nname = \"a b\"\nrun = \"true\"\n");
    let mut run = env.run_to_end(&["validate", bad.to_str().expect("utf-8")]);
    assert_eq!(run.wait_exit(DEADLINE), 2);
    assert!(
        run.stderr().starts_with(&format!("{}:2:", bad.display())),
        "{}",
        run.stderr()
    );
    assert!(!env.has_store(), "validate must not create a store");
}
