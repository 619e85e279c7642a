//! What operators reach for (issue 13): who and why, pause and continue, and the everyday
//! commands, end to end against the real binaries.
//!
//! Build the binaries first: `cargo build --workspace --bins`. Every test has its own
//! [`TestEnv`] and daemon; nothing sleeps a fixed time: tests poll under generous deadlines.

use serde_json::Value;
use std::path::Path;
use tests::{
    DEADLINE, LONG_DEADLINE, Run, TestEnv, cli_at, start_daemon_at, status_json_at, submit_at,
    wait_for,
};

fn cli(env: &TestEnv, args: &[&str]) -> (i32, String, String) {
    cli_at(env, &env.state_dir(), args, LONG_DEADLINE)
}

fn start_daemon(env: &TestEnv, extra: &[&str]) -> Run {
    start_daemon_at(env, &env.state_dir(), extra)
}

fn submit(env: &TestEnv, file: &Path) -> String {
    submit_at(env, &env.state_dir(), file)
}

fn status(env: &TestEnv, id: &str) -> Value {
    status_json_at(env, &env.state_dir(), id)
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
            Err(status(env, id))
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
    let _daemon = start_daemon(&env, &[]);
    let events = spawn_cli(&env, &["events", "--json"]);
    let id = submit(&env, &sleeper(&env, "c", "", false));
    wait_started(&env, &id, "started-c");

    let (code, out, err) = cli(
        &env,
        &["cancel", &id, "--reason", "rollout aborted", "--wait"],
    );
    assert_eq!(code, 3, "cancel --wait: {out} {err}");
    let st = status(&env, &id);
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
    let daemon = start_daemon(&env, &[]);

    let id = submit(&env, &sleeper(&env, "k", "", false));
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
    let st = status(&env, &id);
    assert_eq!(st["last_order"]["action"], "kill", "{st:#}");
    assert_eq!(st["last_order"]["reason"], "stuck", "{st:#}");

    // The revert hangs, the cancel's timer kills the job: the timer is the cause, the operator
    // who cancelled is named.
    let top = "term_grace = \"100ms\"\n";
    let id = submit(&env, &sleeper(&env, "t", top, true));
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
