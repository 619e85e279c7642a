//! Fencing on the job board (issue 11, rule 2: no two hosts ever run steps of one job at once).
//! A daemon whose lease is not renewed soft-cancels its jobs at `t_r + lease/2` (their reverts
//! run here), kills those still live at `t_r + lease*7/10`, and takes no job until a renewal
//! succeeds; a conductor whose daemon falls silent kills its running step at its own fence.
//!
//! Each test starts its own PostgreSQL ([`Postgres`]; skipped where it cannot run, a failure
//! under `CI=true`) and real daemons. Build the binaries first: `cargo build --workspace
//! --bins`. Every wait polls under a deadline.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tests::postgres::Postgres;
use tests::{
    DEADLINE, Run, TestEnv, cli_at, is_alive, live_processes, send_signal, status_json_at,
    submit_at, wait_daemon_ready, wait_for,
};

/// `shared::exit::REFUSED`: the daemon refuses new work.
const REFUSED: i32 = 8;
/// What one round of polling (a CLI start, a `/proc` scan) may cost on a loaded 2-core
/// machine, on top of the times the fencing promises.
const SLACK: Duration = Duration::from_secs(1);

/// One daemon on a fresh board, with `--lease LEASE` and `extra` arguments: the server, the test dir, the daemon and
/// its state dir; `None` where PostgreSQL cannot run (skipped).
fn host_on_board(
    test: &str,
    lease: &str,
    extra: &[&str],
) -> Option<(Postgres, TestEnv, Run, PathBuf)> {
    let pg = Postgres::start(test)?;
    let env = TestEnv::new();
    let state_dir = env.path("a");
    let mut daemon = pg.spawn_daemon(&env, &state_dir, ("a", lease), extra);
    wait_daemon_ready(&env, &state_dir, &mut daemon);
    Some((pg, env, daemon, state_dir))
}

/// A job whose one task `wait` sleeps a minute, with `revert` as its revert.
fn long_job(env: &TestEnv, name: &str, revert: &str) -> PathBuf {
    env.job(
        name,
        "",
        &format!("[[task]]\nname = \"wait\"\nrun = \"sleep 60\"\nrevert = '{revert}'\n"),
    )
}

/// Waits until the job's status (asked of the daemon on `state_dir`) satisfies `done`;
/// returns it.
fn wait_status(
    env: &TestEnv,
    state_dir: &Path,
    id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(DEADLINE, &format!("{id} to be {what}"), || {
        let (code, out, err) = cli_at(env, state_dir, &["status", id, "--json"], DEADLINE);
        let seen = serde_json::from_str::<Value>(&out).unwrap_or(Value::Null);
        if code == 0 && done(&seen) {
            Ok(seen)
        } else {
            Err(format!("exit {code}: {seen} {err}"))
        }
    })
}

fn is_state(state: &'static str) -> impl Fn(&Value) -> bool {
    move |status| status["state"] == state
}

/// Asserts that the job's status says it was fenced: its reason starts with `prefix`.
fn assert_fenced(status: &Value, prefix: &str) {
    assert!(
        status["reason"]
            .as_str()
            .is_some_and(|reason| reason.starts_with(prefix)),
        "{status}"
    );
}

/// Stops PostgreSQL under the host's running job `id` and waits until the job is `state`,
/// fenced (its reason starting with `reason`): returns where the daemon's log stood before
/// the stop.
fn stop_the_board_under(
    (pg, env, daemon, state_dir): (&Postgres, &TestEnv, &Run, &Path),
    id: &str,
    (state, reason): (&'static str, &str),
) -> usize {
    let before = daemon.stderr_plain().len();
    pg.stop();
    let status = wait_status(env, state_dir, id, state, is_state(state));
    assert_fenced(&status, reason);
    before
}

/// Waits until the daemon's log holds `message`.
fn wait_for_log(daemon: &Run, message: &str) {
    wait_for(DEADLINE, &format!("the daemon to log {message:?}"), || {
        let log = daemon.stderr_plain();
        if log.contains(message) {
            Ok(())
        } else {
            Err(log)
        }
    });
}

/// Where `needle` first occurs in the daemon's log, after `from` (panics with the log if it
/// does not).
fn log_position(daemon: &Run, needle: &str, from: usize) -> usize {
    let log = daemon.stderr_plain();
    log[from..]
        .find(needle)
        .map(|at| from + at)
        .unwrap_or_else(|| panic!("{needle:?} not in the log after byte {from}:\n{log}"))
}

/// The job's running `sleep 60`: a child of its conductor (`conductor_pid` of its status),
/// found in `/proc`; returns (conductor, task).
fn running_task(env: &TestEnv, state_dir: &Path, id: &str) -> (i32, i32) {
    let status = wait_status(env, state_dir, id, "running its task", |status| {
        status["state"] == "running"
            && status["conductor_pid"].is_i64()
            && status["tasks"][0]["state"] == "running"
    });
    let conductor = status["conductor_pid"]
        .as_i64()
        .and_then(|pid| i32::try_from(pid).ok())
        .unwrap_or_else(|| panic!("no conductor pid: {status}"));
    let task = wait_for(DEADLINE, "the task's process", || {
        live_processes()
            .into_iter()
            .find(|p| p.ppid == conductor && p.cmdline.contains("sleep 60"))
            .map(|p| p.pid)
            .ok_or("not yet")
    });
    (conductor, task)
}

/// PostgreSQL stopped under a running job: the daemon soft-cancels it at `t_r + lease/2`, its
/// revert runs, and it ends `cancelled` before the daemon counts its lease lost (at `t_r +
/// lease * 4/5`, earlier than the database can judge it expired); meanwhile `submit --host a`
/// (held here) is refused (exit 8, naming the lease), a plain `submit` too (it would be
/// written unclaimed, and the board is down), and both are accepted again once the board is
/// back and a renewal succeeded.
#[test]
fn a_lease_not_renewed_cancels_the_jobs_and_refuses_new_ones_until_renewed() {
    let test = "a_lease_not_renewed_cancels_the_jobs_and_refuses_new_ones_until_renewed";
    let Some((pg, env, daemon, state_dir)) = host_on_board(test, "3s", &["--max-jobs", "1"]) else {
        return;
    };
    let file = long_job(&env, "long.toml", r#"echo reverted >> "$SVT_DIR/reverted""#);
    let id = submit_at(&env, &state_dir, &file);
    running_task(&env, &state_dir, &id);
    // A second job waits for the one slot here (`--host a`: held here, where a plain submit
    // would be written unclaimed for any host with a free slot).
    let path = file.to_str().expect("UTF-8");
    let (code, out, err) = cli_at(&env, &state_dir, &["submit", path, "--host", "a"], DEADLINE);
    assert_eq!(code, 0, "stdout {out:?} stderr {err:?}");
    let queued = out.trim().to_owned();
    let host = (&pg, &env, &daemon, state_dir.as_path());
    let cancelled = ("cancelled", "fenced: board lease not renewed for ");
    let before = stop_the_board_under(host, &id, cancelled);
    assert_eq!(env.lines("reverted"), ["reverted"]);
    // In order: the soft fence, the job's end with its revert run, then (later) the lease
    // counted lost.
    wait_for_log(&daemon, "lease lost");
    let fenced = log_position(&daemon, "board fencing", before);
    assert!(
        daemon.stderr_plain()[fenced..]
            .lines()
            .next()
            .is_some_and(|line| line.contains("soft")),
        "{}",
        daemon.report()
    );
    let ended = log_position(&daemon, "job ended", fenced);
    let lost = log_position(&daemon, "lease lost", before);
    assert!(ended < lost, "{}", daemon.report());

    // No new job held here while the lease is not current; a plain submit would be written
    // unclaimed for another host, which the board being down refuses too.
    let pinned_here = ["submit", path, "--host", "a"];
    let (code, out, err) = cli_at(&env, &state_dir, &pinned_here, DEADLINE);
    assert_eq!(code, REFUSED, "stdout {out:?} stderr {err:?}");
    assert!(
        err.contains(
            "this host's board lease is not current; not accepting jobs until it is renewed"
        ),
        "{err}"
    );
    let (code, out, err) = cli_at(&env, &state_dir, &["submit", path], DEADLINE);
    assert_eq!(code, REFUSED, "stdout {out:?} stderr {err:?}");
    assert!(err.contains("cannot write the job on the board"), "{err}");

    // The slot is free, but the queued job does not start while the lease is not current.
    assert_eq!(
        status_json_at(&env, &state_dir, &queued)["state"],
        "pending"
    );

    // Back: regained; the queued job starts, and jobs are taken again.
    pg.start_again();
    wait_for_log(&daemon, "board lease regained");
    running_task(&env, &state_dir, &queued);
    wait_for(DEADLINE, "a submit to be accepted again", || {
        let (code, out, err) = cli_at(&env, &state_dir, &["submit", path], DEADLINE);
        if code == 0 {
            Ok(out)
        } else {
            Err(format!("exit {code}: {err}"))
        }
    });
    // The fenced job stays ended.
    assert_eq!(status_json_at(&env, &state_dir, &id)["state"], "cancelled");
}

/// PostgreSQL stopped under a job whose revert hangs: soft-cancelled at `t_r + lease/2`, then
/// killed at `t_r + lease*7/10` with its revert skipped (`revert skipped` names the task);
/// `revert JOB` is refused while the board is down and runs it once the board is back.
#[test]
fn a_revert_that_outlasts_the_soft_fence_is_killed_and_runs_later() {
    let test = "a_revert_that_outlasts_the_soft_fence_is_killed_and_runs_later";
    let Some((pg, env, daemon, state_dir)) = host_on_board(test, "3s", &[]) else {
        return;
    };
    // Hangs the first time (while fenced), completes the second (`revert JOB`).
    let revert = r#"if [ -e "$SVT_DIR/hung" ]; then echo reverted >> "$SVT_DIR/reverted"; else touch "$SVT_DIR/hung"; sleep 60; fi"#;
    let file = long_job(&env, "hang.toml", revert);
    let id = submit_at(&env, &state_dir, &file);
    running_task(&env, &state_dir, &id);
    let host = (&pg, &env, &daemon, state_dir.as_path());
    // Killed at `t_r + lease*7/10` by the daemon (`fenced: board lease not renewed for Nms`)
    // or, at the same point, by the conductor's own fence (`fenced: supervisor silent`).
    let before = stop_the_board_under(host, &id, ("killed", "fenced: "));
    assert!(env.path("hung").exists(), "the revert began");
    let skipped = log_position(&daemon, "revert skipped", before);
    let line = daemon.stderr_plain()[skipped..]
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(line.contains("wait"), "{line}");
    let soft = log_position(&daemon, "board fencing", before);
    let hard = log_position(&daemon, "board fencing", soft + 1);
    assert!(
        daemon.stderr_plain()[hard..]
            .lines()
            .next()
            .is_some_and(|l| l.contains("hard")),
        "{}",
        daemon.report()
    );

    // No new conductor while the lease is not current: `revert` is refused too.
    let (code, out, err) = cli_at(&env, &state_dir, &["revert", &id], DEADLINE);
    assert_eq!(code, REFUSED, "stdout {out:?} stderr {err:?}");
    assert!(err.contains("board lease is not current"), "{err}");

    pg.start_again();
    wait_for_log(&daemon, "board lease regained");
    let (code, out, err) = cli_at(&env, &state_dir, &["revert", &id], DEADLINE);
    assert_eq!(code, 0, "stdout {out:?} stderr {err:?}");
    wait_status(&env, &state_dir, &id, "reverted", is_state("reverted"));
    assert_eq!(env.lines("reverted"), ["reverted"]);
}

/// A partition: the daemon SIGSTOPped past its lease (its conductors run on). The conductor's
/// own fence (`t_r + lease*7/10`, delegated at each renewal) kills the task while the daemon
/// is still stopped, and the conductor keeps its report; after SIGCONT the job ends `killed`,
/// fenced, with its revert recorded as skipped.
#[test]
fn a_frozen_daemon_cannot_leave_a_task_running() {
    let test = "a_frozen_daemon_cannot_leave_a_task_running";
    let Some((_pg, env, daemon, state_dir)) = host_on_board(test, "1500ms", &[]) else {
        return;
    };
    let file = long_job(&env, "long.toml", r#"echo reverted >> "$SVT_DIR/reverted""#);
    let id = submit_at(&env, &state_dir, &file);
    let (conductor, task) = running_task(&env, &state_dir, &id);

    // The last renewal was sent at most lease/3 (plus its round trip) before the stop: the
    // fence falls at most lease*7/10 after it.
    let stopped_at = Instant::now();
    send_signal(daemon.pid(), nix::sys::signal::Signal::SIGSTOP);
    let deadline = Duration::from_millis(1050) + SLACK;
    wait_for(deadline, "the task to be killed by its conductor", || {
        if is_alive(task) { Err("alive") } else { Ok(()) }
    });
    let took = stopped_at.elapsed();
    assert!(took < deadline, "the task lived {took:?} after the stop");
    // The conductor did it (its log says so once the daemon drains it again), and waits
    // with its report for the daemon.
    assert!(is_alive(conductor), "the conductor keeps its report");
    assert_eq!(
        tests::proc_info(daemon.pid()).map(|p| p.state),
        Some('T'),
        "the daemon is still stopped"
    );

    send_signal(daemon.pid(), nix::sys::signal::Signal::SIGCONT);
    let status = wait_status(&env, &state_dir, &id, "killed", is_state("killed"));
    assert_fenced(&status, "fenced: ");
    let tasks = status["tasks"].as_array().cloned().unwrap_or_default();
    assert!(
        tasks
            .iter()
            .any(|t| t["name"] == "wait" && t["revert_pending"] == true),
        "{status}"
    );
    assert!(
        env.lines("reverted").is_empty(),
        "no revert ran on a fenced host"
    );
    wait_for_log(&daemon, "revert skipped");
    let conductor_log = state_dir.join("logs").join(format!("{id}.log"));
    wait_for(DEADLINE, "the conductor to log that it fenced", || {
        let log = std::fs::read_to_string(&conductor_log).unwrap_or_default();
        if log.contains(r#""message":"fenced""#) {
            Ok(())
        } else {
            Err(log)
        }
    });
    wait_for(DEADLINE, "the conductor to exit", || {
        if is_alive(conductor) {
            Err("alive")
        } else {
            Ok(())
        }
    });
}
