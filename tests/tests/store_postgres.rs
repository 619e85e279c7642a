//! `supervisor daemon --store URL`: the store in PostgreSQL instead of SQLite in the state dir
//! (the store's two databases, issue 11 rule 4). The daemon runs, cancels and re-attaches to
//! jobs as on SQLite; its history is in the database, not on the host's disk; one daemon holds
//! a schema at a time.
//!
//! Each test starts its own PostgreSQL ([`Postgres`]); it skips where the server cannot run and
//! fails there under `CI=true`. Every wait polls under a deadline.

use serde_json::Value;
use std::path::Path;
use tests::postgres::Postgres;
use tests::{
    DEADLINE, LONG_DEADLINE, TestEnv, cli_at, ls_all_json_at, sigkill_run, start_daemon_at,
    status_json_at, submit_at, wait_for,
};

/// A job of two tasks with reverts, each writing its step to `steps` in the test dir; the
/// second waits until the file `go` exists, so that the test decides when it ends.
const GATED: &str = r#"
[[task]]
name = "first"
run = "echo first >> $SVT_DIR/steps; echo out-first"
revert = "echo undo-first >> $SVT_DIR/steps"

[[task]]
name = "second"
run = "echo second >> $SVT_DIR/steps; while [ ! -e $SVT_DIR/go ]; do sleep 0.02; done"
revert = "echo undo-second >> $SVT_DIR/steps"
"#;

fn job_state(status: &Value) -> &str {
    status["state"].as_str().unwrap_or_default()
}

/// Waits until task `name` of job `id` runs.
fn wait_task_running(env: &TestEnv, state_dir: &Path, id: &str, name: &str) {
    wait_for(DEADLINE, "the task to run", || {
        let status = status_json_at(env, state_dir, id);
        let running = status["tasks"].as_array().is_some_and(|tasks| {
            tasks
                .iter()
                .any(|t| t["name"] == name && t["state"] == "running")
        });
        if running { Ok(()) } else { Err(status) }
    });
}

/// Waits until job `id` ended; returns its status.
fn wait_ended(env: &TestEnv, state_dir: &Path, id: &str) -> Value {
    wait_for(LONG_DEADLINE, "the job to end", || {
        let status = status_json_at(env, state_dir, id);
        if status["ended_ms"].is_null() {
            Err(status)
        } else {
            Ok(status)
        }
    })
}

/// A daemon on a PostgreSQL store: a job runs, another is cancelled with its reverts in order,
/// a third outlives a SIGKILL of the daemon (re-attached by the next one); nothing of the
/// store is in the state dir, and a daemon on another state dir reads the whole history. A
/// second daemon on the same schema is refused; one on another schema starts empty.
#[test]
fn a_daemon_keeps_its_store_in_postgres() {
    let Some(pg) = Postgres::start("a_daemon_keeps_its_store_in_postgres") else {
        return;
    };
    let env = TestEnv::new();
    let url = pg.url();
    let store = ["--store", url.as_str()];
    let a = env.path("a");
    let mut daemon = start_daemon_at(&env, &a, &store);

    // Runs to its end; its output is kept.
    let done = env.job("done.toml", "", GATED);
    std::fs::write(env.path("go"), "").expect("go");
    let id = submit_at(&env, &a, &done);
    let status = wait_ended(&env, &a, &id);
    assert_eq!(job_state(&status), "success", "{status:#}");
    let (code, logs, err) = cli_at(&env, &a, &["logs", &id], DEADLINE);
    assert_eq!(code, 0, "{err}");
    assert!(logs.contains("out-first"), "{logs}");
    std::fs::remove_file(env.path("go")).expect("stop");
    std::fs::remove_file(env.path("steps")).expect("steps");

    // Cancelled while its second task runs: both reverted, last first.
    let cancelled = submit_at(&env, &a, &env.job("cancel.toml", "", GATED));
    wait_task_running(&env, &a, &cancelled, "second");
    let (code, _, err) = cli_at(&env, &a, &["cancel", &cancelled, "--wait"], LONG_DEADLINE);
    assert_eq!(code, 3, "{err}");
    assert_eq!(
        env.lines("steps"),
        ["first", "second", "undo-second", "undo-first"]
    );
    std::fs::remove_file(env.path("steps")).expect("steps");

    // The daemon dies while a job runs; the next one re-attaches from the store and the job
    // ends as if nothing happened.
    let survivor = submit_at(&env, &a, &env.job("survivor.toml", "", GATED));
    wait_task_running(&env, &a, &survivor, "second");
    sigkill_run(&mut daemon);
    let mut daemon = start_daemon_at(&env, &a, &store);
    std::fs::write(env.path("go"), "").expect("go");
    let status = wait_ended(&env, &a, &survivor);
    assert_eq!(job_state(&status), "success", "{status:#}");

    assert!(
        !a.join("state.db").exists(),
        "a SQLite store was made in the state dir"
    );
    // The store's size is its schema's, in PostgreSQL.
    let (code, out, err) = cli_at(
        &env,
        &a,
        &["prune", "--older-than", "1000d", "--json"],
        DEADLINE,
    );
    assert_eq!(code, 0, "{err}");
    let pruned: Value = serde_json::from_str(&out).expect("prune JSON");
    assert_eq!(pruned["count"], 0, "{pruned}");
    assert!(
        pruned["store_bytes_before"].as_u64().unwrap_or(0) > 0,
        "{pruned}"
    );
    assert_eq!(pg.sql("SELECT count(*) FROM supervisor.jobs").trim(), "3");

    // One daemon per schema: a second one on it is refused, naming the way out.
    let (code, _, err) = cli_at(&env, &env.path("b"), &["daemon", "--store", &url], DEADLINE);
    assert_ne!(code, 0, "a second daemon started on the same schema");
    assert!(err.contains("--store-schema"), "{err}");
    let mut other = start_daemon_at(
        &env,
        &env.path("c"),
        &["--store", &url, "--store-schema", "other"],
    );
    assert!(ls_all_json_at(&env, &env.path("c")).is_empty());
    let (code, _, err) = cli_at(&env, &env.path("c"), &["shutdown"], DEADLINE);
    assert_eq!(code, 0, "{err}");
    assert_eq!(other.wait_exit(DEADLINE), 0, "{}", other.report());

    // The history is the database's: a daemon on a fresh state dir lists every job.
    let (code, _, err) = cli_at(&env, &a, &["shutdown"], DEADLINE);
    assert_eq!(code, 0, "{err}");
    assert_eq!(daemon.wait_exit(DEADLINE), 0, "{}", daemon.report());
    let d = env.path("d");
    let mut fresh = start_daemon_at(&env, &d, &store);
    let states: Vec<(String, String)> = ls_all_json_at(&env, &d)
        .iter()
        .map(|j| {
            (
                j["id"].as_str().unwrap_or_default().to_owned(),
                j["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            (id, "success".to_owned()),
            (cancelled, "cancelled".to_owned()),
            (survivor, "success".to_owned()),
        ]
    );
    let (code, _, err) = cli_at(&env, &d, &["shutdown"], DEADLINE);
    assert_eq!(code, 0, "{err}");
    assert_eq!(fresh.wait_exit(DEADLINE), 0, "{}", fresh.report());
}

/// A bad `--store` is refused before anything starts, without showing its password; a
/// server that does not answer is an error at start, not a daemon without a store.
#[test]
fn a_bad_store_is_refused_at_start() {
    let env = TestEnv::new();
    let state_dir = env.path("s");
    let (code, _, err) = cli_at(
        &env,
        &state_dir,
        &[
            "daemon",
            "--store",
            "postgresql://u:s3cret@host:notaport/db",
        ],
        DEADLINE,
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--store"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
    let (code, _, err) = cli_at(
        &env,
        &state_dir,
        &[
            "daemon",
            "--store",
            "host=/nonexistent",
            "--store-schema",
            "1x",
        ],
        DEADLINE,
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--store-schema"), "{err}");
    let (code, _, err) = cli_at(
        &env,
        &state_dir,
        &["daemon", "--store", "host=/nonexistent/socket-dir dbname=x"],
        DEADLINE,
    );
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("cannot open the store"), "{err}");
}

/// PostgreSQL restarted (every connection cut) while a job runs on a `--store` daemon: the
/// step's end is written once the server is back (the job actor writes again; the store
/// connects again), the job ends `success` with every step once, and the daemon takes new
/// jobs and answers `status` at once after the restart.
#[test]
fn a_store_outlives_a_restart_of_its_server() {
    let Some(pg) = Postgres::start("a_store_outlives_a_restart_of_its_server") else {
        return;
    };
    let env = TestEnv::new();
    let url = pg.url();
    let a = env.path("a");
    let mut daemon = start_daemon_at(&env, &a, &["--store", &url]);
    let id = submit_at(&env, &a, &env.job("gated.toml", "", GATED));
    wait_task_running(&env, &a, &id, "second");
    pg.restart();
    // The first call after the restart finds the connection closed and connects again.
    let status = status_json_at(&env, &a, &id);
    assert_eq!(job_state(&status), "running", "{status:#}");
    std::fs::write(env.path("go"), "").expect("go");
    let status = wait_ended(&env, &a, &id);
    assert_eq!(job_state(&status), "success", "{status:#}");
    assert_eq!(env.lines("steps"), ["first", "second"]);
    let next = submit_at(&env, &a, &env.job("next.toml", "", GATED));
    let status = wait_ended(&env, &a, &next);
    assert_eq!(job_state(&status), "success", "{status:#}");
    let (code, _, err) = cli_at(&env, &a, &["shutdown"], DEADLINE);
    assert_eq!(code, 0, "{err}");
    assert_eq!(daemon.wait_exit(DEADLINE), 0, "{}", daemon.report());
    assert!(
        daemon
            .stderr()
            .contains("the PostgreSQL connection was closed; connecting again"),
        "{}",
        daemon.report()
    );
}

/// PostgreSQL stopped (not restarted) under a running job of a `--store` daemon: while it is
/// down, `status`, `ls` and `submit` are refused as `unavailable` (exit 8, try again), not as
/// an internal error, and nothing is acknowledged; the step's end, reached during the outage,
/// waits (the conductor's reports are applied in order or not at all) and is recorded once
/// the server is back: the job ends `success`, each
/// step once.
#[test]
fn a_store_whose_server_is_down_answers_unavailable_and_records_the_end_later() {
    let Some(pg) = Postgres::start("a_store_whose_server_is_down") else {
        return;
    };
    let env = TestEnv::new();
    let url = pg.url();
    let a = env.path("a");
    let mut daemon = start_daemon_at(&env, &a, &["--store", &url]);
    let file = env.job("gated.toml", "", GATED);
    let id = submit_at(&env, &a, &file);
    wait_task_running(&env, &a, &id, "second");
    pg.stop();
    for args in [
        vec!["status", id.as_str(), "--json"],
        vec!["ls", "--json"],
        vec!["submit", file.to_str().expect("UTF-8")],
    ] {
        let (code, out, err) = cli_at(&env, &a, &args, DEADLINE);
        assert_eq!(
            code,
            shared::exit::REFUSED,
            "{args:?} with the store's server down: {out:?} {err:?}"
        );
        assert!(out.trim().is_empty(), "{args:?}: {out:?}");
        assert!(!err.trim().is_empty(), "{args:?}: a refusal says why");
    }
    std::fs::write(env.path("go"), "").expect("go");
    // The conductor's report of the step's end (or the job's end) cannot be written: it waits.
    wait_for(DEADLINE, "the step's end to wait for the store", || {
        let stderr = daemon.stderr();
        if stderr.contains("cannot apply the conductor's reports")
            || stderr.contains("cannot record the job's end")
        {
            Ok(())
        } else {
            Err(stderr.lines().last().unwrap_or_default().to_owned())
        }
    });
    pg.start_again();
    let status = wait_ended(&env, &a, &id);
    assert_eq!(job_state(&status), "success", "{status:#}");
    assert_eq!(env.lines("steps"), ["first", "second"]);
    let (code, _, err) = cli_at(&env, &a, &["shutdown"], DEADLINE);
    assert_eq!(code, 0, "{err}");
    assert_eq!(daemon.wait_exit(DEADLINE), 0, "{}", daemon.report());
}
