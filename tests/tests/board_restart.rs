//! A daemon's life on a board across restarts and upgrades: restarted (`shutdown`, then a new
//! start: a `systemctl restart`), its running jobs go on under the new instance, which holds
//! them at their epoch, so their journal on the board keeps being written and no write of
//! theirs is refused; a newer build does not migrate the board's schema under daemons still
//! running the old one, unless every step it runs keeps them working (a rolling upgrade), and
//! an older build joins a newer board only when every newer step kept it working.
//!
//! Skips where PostgreSQL cannot run, fails there under `CI=true`. Build the binaries first:
//! `cargo build --workspace --bins`.

use std::path::Path;
use tests::postgres::Postgres;
use tests::{
    DEADLINE, Run, TestEnv, cli_at, is_alive, status_json_at, wait_daemon_ready, wait_for,
};

/// A lease long enough that the restart fits well before the conductors' fence (lease * 7/10
/// after the last renewal) on a loaded machine.
const LEASE: &str = "10s";

/// Tasks a and c run `true`; b waits for the file `go` of the test dir.
const TASKS: &str = r#"
[[task]]
name = "a"
run = "true"

[[task]]
name = "b"
run = "touch \"$SVT_DIR/b-running\"; while [ ! -e \"$SVT_DIR/go\" ]; do sleep 0.05; done"

[[task]]
name = "c"
run = "true"
"#;

/// Starts daemon `a` on `state_dir` (with `lease`) and a job of [`TASKS`] there, and waits until its task b
/// runs (its write-ahead on the board); the daemon, the job's id and its conductor's pid.
fn a_job_waiting_on_a(
    pg: &Postgres,
    env: &TestEnv,
    state_dir: &Path,
    lease: &str,
) -> (Run, String, i32) {
    let mut daemon = pg.spawn_daemon(env, state_dir, ("a", lease), &[]);
    wait_daemon_ready(env, state_dir, &mut daemon);
    let file = env.job("restart.toml", "name = \"restart\"", TASKS);
    let (code, out, err) = cli_at(
        env,
        state_dir,
        &["submit", file.to_str().expect("UTF-8")],
        DEADLINE,
    );
    assert_eq!(code, 0, "submit: {out} {err}");
    let id = out.trim().to_owned();
    wait_for(DEADLINE, "task b to run", || {
        if env.path("b-running").exists() {
            Ok(())
        } else {
            Err("not yet")
        }
    });
    pg.wait_sql(
        DEADLINE,
        &format!("SELECT state FROM job_tasks WHERE job_id = '{id}' AND idx = 1"),
        "running",
    );
    let conductor = status_json_at(env, state_dir, &id)["conductor_pid"]
        .as_i64()
        .and_then(|pid| i32::try_from(pid).ok())
        .expect("a conductor pid in the status");
    (daemon, id, conductor)
}

/// Waits until job `id` on `state_dir` ends `success` (any other end fails the test).
fn wait_success(env: &TestEnv, state_dir: &Path, id: &str, daemon: &Run) {
    wait_for(DEADLINE, "the job to end", || {
        let status = status_json_at(env, state_dir, id);
        match status["state"].as_str() {
            Some("success") => Ok(()),
            Some(state @ ("failed" | "cancelled" | "killed" | "crashed")) => {
                panic!("the job ended {state}: {status:#}\n{}", daemon.report())
            }
            _ => Err(status),
        }
    });
}

#[test]
fn a_restarted_daemon_keeps_its_running_jobs_and_their_journal() {
    let Some(pg) = Postgres::start("a_restarted_daemon_keeps_its_running_jobs") else {
        return;
    };
    let env = TestEnv::new();
    let state_dir = env.path("a");
    let (mut daemon, id, conductor) = a_job_waiting_on_a(&pg, &env, &state_dir, LEASE);

    let (code, out, err) = cli_at(&env, &state_dir, &["shutdown"], DEADLINE);
    assert_eq!(code, 0, "shutdown: {out} {err}");
    assert_eq!(daemon.wait_exit(DEADLINE), 0, "{}", daemon.report());
    assert!(
        is_alive(conductor),
        "shutdown without --cancel kept the job"
    );

    let mut again = pg.spawn_daemon(&env, &state_dir, ("a", LEASE), &[]);
    wait_daemon_ready(&env, &state_dir, &mut again);
    env.write("go", "");
    wait_success(&env, &state_dir, &id, &again);
    // The new instance holds the job at its epoch: the journal has c's write-ahead and end, and
    // the job's end, all written after the restart; nothing of it was refused.
    pg.wait_sql(
        DEADLINE,
        &format!("SELECT state || ' ' || epoch FROM jobs WHERE id = '{id}'"),
        "success 1",
    );
    pg.wait_sql(
        DEADLINE,
        &format!("SELECT string_agg(state, ',' ORDER BY idx) FROM job_tasks WHERE job_id = '{id}'"),
        "success,success,success",
    );
    assert_eq!(pg.sql("SELECT count(*) FROM late_writes").trim(), "0");
    let log = again.stderr();
    assert!(!log.contains("stale owner"), "{log}");
    assert!(!log.contains("board fencing"), "{log}");
    assert!(!again.has_exited(), "{}", again.report());
}

/// A newer build does not migrate a board on which a daemon of the old schema lives when a
/// step does not keep it working: its start stops with the reason, naming the live host and
/// both versions, and the schema stays as it was. (The board is made to look older than this
/// build by setting its version back to 5, as the step from 5 to 6 keeps no older daemon
/// working: daemon a, already running, stands for the old build.)
#[test]
fn a_newer_build_does_not_migrate_the_board_under_a_live_daemon() {
    let Some(pg) = Postgres::start("a_newer_build_does_not_migrate_the_board") else {
        return;
    };
    let env = TestEnv::new();
    let a_dir = env.path("a");
    let mut a = pg.spawn_daemon(&env, &a_dir, ("a", LEASE), &[]);
    wait_daemon_ready(&env, &a_dir, &mut a);
    let ours: i32 = pg
        .sql("SELECT version FROM board_schema")
        .trim()
        .parse()
        .expect("a schema version");
    let older = 5;
    let _ = pg.sql(&format!("UPDATE board_schema SET version = {older}"));

    let mut b = pg.spawn_daemon(&env, &env.path("b"), ("b", LEASE), &[]);
    let code = b.wait_exit(DEADLINE);
    let err = b.stderr();
    assert_eq!(code, 10, "{err}");
    assert!(
        err.contains(&format!(
            "the board's schema is version {older}, older than this supervisor's ({ours})"
        )),
        "{err}"
    );
    assert!(err.contains("a (supervisor "), "names the live host: {err}");
    assert!(err.contains("stop every daemon of the board"), "{err}");
    assert_eq!(
        pg.sql("SELECT version FROM board_schema").trim(),
        older.to_string(),
        "nothing was migrated"
    );
    assert_eq!(
        pg.sql("SELECT count(*) FROM hosts WHERE name = 'b'").trim(),
        "0",
        "b did not join"
    );
    assert!(!a.has_exited(), "{}", a.report());
}

/// A rolling upgrade: the step from version 6 to 7 keeps older daemons working, so a newer
/// build runs it at once under a live daemon of version 6, which goes on running jobs; a build
/// older than the board joins it when every newer step kept it working (`readable_from`), and
/// is refused when one did not. (Daemon a, already running, stands for the old build; the
/// board's version is set back, or ahead, by hand.)
#[test]
fn a_schema_step_that_keeps_older_daemons_runs_under_them() {
    let Some(pg) = Postgres::start("a_schema_step_that_keeps_older_daemons") else {
        return;
    };
    let env = TestEnv::new();
    let a_dir = env.path("a");
    let mut a = pg.spawn_daemon(&env, &a_dir, ("a", LEASE), &[]);
    wait_daemon_ready(&env, &a_dir, &mut a);
    let schema = || pg.sql("SELECT version, readable_from FROM board_schema");
    assert_eq!(
        schema().trim(),
        "7|6",
        "this build's version, and the oldest it keeps"
    );
    let _ = pg.sql("UPDATE board_schema SET version = 6, readable_from = NULL");

    // b migrates under a: one step, which keeps a working.
    let b_dir = env.path("b");
    let mut b = pg.spawn_daemon(&env, &b_dir, ("b", LEASE), &[]);
    wait_daemon_ready(&env, &b_dir, &mut b);
    assert!(
        b.stderr().contains("board schema migrated"),
        "{}",
        b.report()
    );
    assert_eq!(schema().trim(), "7|6");
    assert!(!a.has_exited(), "{}", a.report());
    let file = env.job(
        "true.toml",
        "name = \"t\"",
        "[[task]]\nname = \"t\"\nrun = \"true\"\n",
    );
    let (code, out, err) = cli_at(
        &env,
        &a_dir,
        &["submit", file.to_str().expect("UTF-8"), "--wait"],
        DEADLINE,
    );
    assert_eq!(code, 0, "a still runs jobs: {out} {err}");

    // A board one version newer, whose step kept this build working: joined as it is.
    let _ = pg.sql("UPDATE board_schema SET version = 8, readable_from = 7");
    let c_dir = env.path("c");
    let mut c = pg.spawn_daemon(&env, &c_dir, ("c", LEASE), &[]);
    wait_daemon_ready(&env, &c_dir, &mut c);
    assert!(
        c.stderr().contains("board schema newer than this build"),
        "{}",
        c.report()
    );
    assert_eq!(schema().trim(), "8|7", "nothing was migrated");

    // One whose step did not: refused, and nothing changes.
    let _ = pg.sql("UPDATE board_schema SET readable_from = 8");
    let mut d = pg.spawn_daemon(&env, &env.path("d"), ("d", LEASE), &[]);
    let code = d.wait_exit(DEADLINE);
    let err = d.stderr();
    assert_eq!(code, 10, "{err}");
    assert!(
        err.contains("the board's schema is version 8, newer than this supervisor's (7)"),
        "{err}"
    );
    assert_eq!(schema().trim(), "8|8");
}

/// A clean stop renews the lease as it leaves the board, and the conductors it leaves running
/// get their last fence from that renewal: a restart has the whole `lease*7/10` (14 s here,
/// with a 20 s lease) to reconnect to them, however old the last periodic renewal was. The
/// daemon stops once its last periodic renewal is 5 s old, and the new one starts once the
/// database's clock is past a fence counted from that renewal (`renewed_at + 14.5 s`), at
/// least 4.5 s before the fence counted from the stop: the job still ends `success`.
#[test]
fn a_clean_stop_gives_its_conductors_the_whole_fence_for_a_restart() {
    let Some(pg) = Postgres::start("a_clean_stop_gives_its_conductors") else {
        return;
    };
    let env = TestEnv::new();
    let state_dir = env.path("a");
    let (mut daemon, id, conductor) = a_job_waiting_on_a(&pg, &env, &state_dir, SLOW_LEASE);
    pg.wait_sql(
        DEADLINE,
        "SELECT now() - renewed_at >= interval '5 seconds' FROM hosts WHERE name = 'a'",
        "t",
    );
    let last_periodic = pg.sql("SELECT renewed_at FROM hosts WHERE name = 'a'");
    let (code, out, err) = cli_at(&env, &state_dir, &["shutdown"], DEADLINE);
    assert_eq!(code, 0, "shutdown: {out} {err}");
    assert_eq!(daemon.wait_exit(DEADLINE), 0, "{}", daemon.report());
    assert_eq!(
        pg.sql("SELECT renewed_at = stopped_at FROM hosts WHERE name = 'a'")
            .trim(),
        "t",
        "the lease was renewed as the daemon left"
    );
    // The slow restart: the new daemon starts only once a conductor holding a fence from the
    // last periodic renewal would have killed its step.
    pg.wait_sql(
        DEADLINE,
        &format!(
            "SELECT now() >= timestamptz '{}' + interval '14.5 seconds'",
            last_periodic.trim()
        ),
        "t",
    );
    assert!(is_alive(conductor), "the conductor waits for a daemon");
    let mut again = pg.spawn_daemon(&env, &state_dir, ("a", SLOW_LEASE), &[]);
    wait_daemon_ready(&env, &state_dir, &mut again);
    env.write("go", "");
    wait_success(&env, &state_dir, &id, &again);
    assert!(!again.stderr().contains("fenced"), "{}", again.report());
}

/// The slow restart's lease: its fence, 14 s, leaves a restart in a loaded CI 4.5 s to spare.
const SLOW_LEASE: &str = "20s";
