//! Warm conductors (`supervisor daemon --warm N`, ARCHITECTURE.md, Warm conductors), proved on
//! the real binaries, in both containments:
//! - jobs run through a pool of 2: every job's conductor (from `status --json`) is a distinct
//!   process, each one a conductor the pool had spawned (its record in `STATE_DIR/warm/`), and
//!   each served exactly one job (its log says it was assigned once and received one job);
//! - after `shutdown --cancel`, no warm conductor survives (`/proc`), and in cgroup mode their
//!   cgroups are gone;
//! - a warm conductor whose daemon is SIGKILLed exits by itself; one that cannot (stopped) is
//!   killed by the next daemon on the state dir, which removes the dead one's warm cgroups.
//!
//! The pool's files are read as the daemon writes them: `STATE_DIR/warm/sN.rec` holds
//! `PID START_TIME` and the cgroup path (empty in session mode).
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use nix::sys::signal::Signal;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tests::{
    DEADLINE, GONE_DEADLINE, Run, TestEnv, cli_at, is_alive, send_signal, sigkill_run,
    skip_unless_ci, wait_daemon_ready, wait_for,
};

/// One warm conductor as its record names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Record {
    pid: i32,
    start_time: u64,
    cgroup: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Cgroup,
    Session,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Cgroup => "cgroup",
            Self::Session => "session",
        }
    }

    /// A daemon on the env's state dir with `--warm 2` and `extra`, in this containment.
    fn start_daemon(self, env: &TestEnv, extra: &[&str]) -> Run {
        let state = env.state_dir();
        let mut args = vec!["daemon", "--state-dir", path_str(&state), "--warm", "2"];
        args.extend_from_slice(extra);
        let mut daemon = match self {
            Self::Cgroup => env.spawn_with_env(&args, &[], &["SUPERVISOR_CONTAINMENT"]),
            Self::Session => {
                env.spawn_with_env(&args, &[("SUPERVISOR_CONTAINMENT", "session")], &[])
            }
        };
        wait_daemon_ready(env, &state, &mut daemon);
        daemon
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

fn cli(env: &TestEnv, args: &[&str]) -> (i32, String, String) {
    cli_at(env, &env.state_dir(), args, DEADLINE)
}

/// The records of the warm conductors spawned (pid known) now.
fn records(env: &TestEnv) -> BTreeSet<Record> {
    let dir = env.state_dir().join("warm");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeSet::new();
    };
    entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "rec"))
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path()).ok()?;
            let mut lines = text.lines();
            let (pid, start) = lines.next()?.split_once(' ')?;
            let record = Record {
                pid: pid.parse().ok()?,
                start_time: start.parse().ok()?,
                cgroup: lines.next().filter(|l| !l.is_empty()).map(PathBuf::from),
            };
            (record.pid > 0).then_some(record)
        })
        .collect()
}

/// Waits until the pool holds `n` spawned conductors; returns their records.
fn wait_pool(env: &TestEnv, n: usize) -> BTreeSet<Record> {
    wait_for(DEADLINE, &format!("{n} warm conductors"), || {
        let now = records(env);
        if now.len() == n && now.iter().all(|r| is_alive(r.pid)) {
            Ok(now)
        } else {
            Err(now)
        }
    })
}

/// The start time of a live process (field 22 of `/proc/PID/stat`).
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..]
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

fn submit(env: &TestEnv, file: &Path) -> String {
    let (code, out, err) = cli(env, &["submit", path_str(file)]);
    assert_eq!(code, 0, "submit: {out} {err}");
    out.trim().to_owned()
}

fn status(env: &TestEnv, id: &str) -> Value {
    let (code, out, err) = cli(env, &["status", id, "--json"]);
    assert_eq!(code, 0, "status {id}: {out} {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status JSON {out:?}: {e}"))
}

/// Waits until the job runs with a conductor; returns its pid.
fn conductor_of(env: &TestEnv, id: &str) -> i32 {
    wait_for(DEADLINE, &format!("job {id}'s conductor"), || {
        let st = status(env, id);
        match st["conductor_pid"].as_i64() {
            Some(pid) if st["state"] != "pending" => Ok(i32::try_from(pid).expect("a pid")),
            _ => Err(st),
        }
    })
}

fn wait_state(env: &TestEnv, id: &str, state: &str) {
    wait_for(DEADLINE, &format!("job {id} {state}"), || {
        let st = status(env, id);
        if st["state"] == state {
            Ok(())
        } else {
            Err(st)
        }
    });
}

/// How many lines of the job's conductor log contain `text`.
fn log_count(env: &TestEnv, id: &str, text: &str) -> usize {
    std::fs::read_to_string(env.state_dir().join("logs").join(format!("{id}.log")))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(text))
        .count()
}

/// Skips (or fails under CI) when the daemon does not run in `mode`.
fn in_mode(env: &TestEnv, mode: Mode, test: &str, id: &str) -> bool {
    let st = status(env, id);
    if st["containment"] == mode.name() {
        return true;
    }
    skip_unless_ci(
        test,
        &format!("the daemon runs in {} mode", st["containment"]),
    );
    false
}

/// Jobs through a pool of 2, one at a time (each finds the pool full: a warm start), then
/// four at once (hits and misses), then `shutdown --cancel` with jobs running.
fn one_job_per_warm_conductor_and_none_survives_a_cancelling_shutdown(mode: Mode, test: &str) {
    let env = TestEnv::new();
    let mut daemon = mode.start_daemon(&env, &["--max-jobs", "4"]);
    let quick = env.job("quick.toml", "", "[[task]]\nname = \"a\"\nrun = \"true\"\n");
    let mut spawned: BTreeSet<Record> = BTreeSet::new();
    let mut conductors: BTreeMap<i32, String> = BTreeMap::new();
    let note = |conductors: &mut BTreeMap<i32, String>, id: &str, pid: i32| {
        if let Some(other) = conductors.insert(pid, id.to_owned()) {
            panic!("conductor {pid} served job {other} and then job {id}");
        }
    };
    for round in 0..4 {
        let pool = wait_pool(&env, 2);
        spawned.extend(pool.iter().cloned());
        let id = submit(&env, &quick);
        let pid = conductor_of(&env, &id);
        if round == 0 && !in_mode(&env, mode, test, &id) {
            return;
        }
        let warm = pool.iter().find(|r| r.pid == pid).unwrap_or_else(|| {
            panic!("job {id}'s conductor {pid} is not one of the pool's {pool:?}")
        });
        wait_state(&env, &id, "success");
        note(&mut conductors, &id, pid);
        // Its record was emptied for reuse when the job took it over: a restarted daemon must
        // never find a job's conductor among the pool's.
        assert!(
            !records(&env).iter().any(|r| r.pid == pid),
            "job {id}'s conductor {pid} still has a pool record"
        );
        assert_eq!(
            log_count(&env, &id, "warm conductor assigned"),
            1,
            "job {id}"
        );
        assert_eq!(log_count(&env, &id, "job received"), 1, "job {id}");
        if let Some(cgroup) = &warm.cgroup {
            let stored = env.store().job_containment(&id).and_then(|(_, c)| c);
            assert_eq!(
                stored.as_deref(),
                Some(path_str(cgroup)),
                "the job keeps the warm cgroup"
            );
        }
    }
    // Four at once: the pool serves what it holds, the others are cold spawns.
    let slow = env.job(
        "slow.toml",
        "",
        "[[task]]\nname = \"a\"\nrun = \"sleep 300\"\n",
    );
    spawned.extend(wait_pool(&env, 2));
    let ids: Vec<String> = (0..4).map(|_| submit(&env, &slow)).collect();
    for id in &ids {
        wait_state(&env, id, "running");
        note(&mut conductors, id, conductor_of(&env, id));
    }
    spawned.extend(wait_pool(&env, 2));
    for id in &ids {
        let pid = conductor_of(&env, id);
        assert!(log_count(&env, id, "job received") == 1, "job {id}");
        assert!(
            log_count(&env, id, "warm conductor assigned") <= 1,
            "job {id}"
        );
        assert!(
            !spawned.iter().any(|r| r.pid == pid)
                || log_count(&env, id, "warm conductor assigned") == 1,
            "job {id}: conductor {pid} came from the pool but was not assigned"
        );
    }
    assert_eq!(
        conductors.len(),
        8,
        "eight jobs, eight conductors: {conductors:?}"
    );

    let (code, out, err) = cli(&env, &["shutdown", "--cancel"]);
    assert_eq!(code, 0, "shutdown --cancel: {out} {err}");
    daemon.wait_exit(DEADLINE);
    for id in &ids {
        assert_eq!(env.store().job_state(id), "cancelled");
    }
    // No conductor the pool ever spawned survives the daemon (a job's conductor ended with its
    // job; the ones still waiting were killed), and their cgroups are gone.
    wait_for(GONE_DEADLINE, "no warm conductor left", || {
        let left: Vec<&Record> = spawned
            .iter()
            .filter(|r| is_alive(r.pid) && start_time(r.pid) == Some(r.start_time))
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    });
    for record in &spawned {
        if let Some(cgroup) = &record.cgroup {
            assert!(!cgroup.exists(), "{} survived the daemon", cgroup.display());
        }
    }
    assert!(records(&env).is_empty(), "the pool's records are gone");
}

#[test]
fn cgroup_one_job_per_warm_conductor_and_none_survives_a_cancelling_shutdown() {
    const NAME: &str = "cgroup_one_job_per_warm_conductor_and_none_survives_a_cancelling_shutdown";
    if !nix::unistd::geteuid().is_root() {
        skip_unless_ci(NAME, "needs root for a writable cgroup v2");
        return;
    }
    one_job_per_warm_conductor_and_none_survives_a_cancelling_shutdown(Mode::Cgroup, NAME);
}

#[test]
fn session_one_job_per_warm_conductor_and_none_survives_a_cancelling_shutdown() {
    one_job_per_warm_conductor_and_none_survives_a_cancelling_shutdown(
        Mode::Session,
        "session_one_job_per_warm_conductor_and_none_survives_a_cancelling_shutdown",
    );
}

/// A warm conductor whose daemon dies exits at once (it waits on a pidfd of its parent); one
/// that cannot (stopped here with SIGSTOP) is killed by the next daemon on the state dir, which
/// also removes the dead daemon's warm cgroups, then fills a pool of its own.
fn a_restarted_daemon_clears_a_dead_daemons_warm_conductors(mode: Mode) {
    let env = TestEnv::new();
    let mut daemon = mode.start_daemon(&env, &[]);
    let left = wait_pool(&env, 2);
    let mut pair = left.iter();
    let (stuck, free) = (
        pair.next().expect("two").clone(),
        pair.next().expect("two").clone(),
    );
    send_signal(stuck.pid, Signal::SIGSTOP);
    sigkill_run(&mut daemon);
    wait_for(
        GONE_DEADLINE,
        "the free warm conductor to exit by itself",
        || {
            if is_alive(free.pid) {
                Err(free.clone())
            } else {
                Ok(())
            }
        },
    );
    assert!(
        is_alive(stuck.pid),
        "{stuck:?} is stopped: only a daemon can clear it"
    );
    let mut daemon = mode.start_daemon(&env, &[]);
    wait_for(
        GONE_DEADLINE,
        "the dead daemon's warm conductors gone",
        || {
            let alive: Vec<&Record> = left
                .iter()
                .filter(|r| is_alive(r.pid) && start_time(r.pid) == Some(r.start_time))
                .collect();
            let cgroups: Vec<&PathBuf> = left
                .iter()
                .filter_map(|r| r.cgroup.as_ref())
                .filter(|c| c.exists())
                .collect();
            if alive.is_empty() && cgroups.is_empty() {
                Ok(())
            } else {
                Err(format!("{alive:?} {cgroups:?}"))
            }
        },
    );
    let fresh = wait_pool(&env, 2);
    assert!(fresh.is_disjoint(&left), "a new pool: {fresh:?} {left:?}");
    let (code, out, err) = cli(&env, &["shutdown"]);
    assert_eq!(code, 0, "shutdown: {out} {err}");
    daemon.wait_exit(DEADLINE);
    // Killed at a plain shutdown too.
    wait_for(GONE_DEADLINE, "the pool killed at shutdown", || {
        let alive: Vec<&Record> = fresh.iter().filter(|r| is_alive(r.pid)).collect();
        if alive.is_empty() {
            Ok(())
        } else {
            Err(format!("{alive:?}"))
        }
    });
}

#[test]
fn cgroup_a_restarted_daemon_clears_a_dead_daemons_warm_conductors() {
    if !nix::unistd::geteuid().is_root() {
        skip_unless_ci(
            "cgroup_a_restarted_daemon_clears_a_dead_daemons_warm_conductors",
            "needs root for a writable cgroup v2",
        );
        return;
    }
    a_restarted_daemon_clears_a_dead_daemons_warm_conductors(Mode::Cgroup);
}

#[test]
fn session_a_restarted_daemon_clears_a_dead_daemons_warm_conductors() {
    a_restarted_daemon_clears_a_dead_daemons_warm_conductors(Mode::Session);
}

/// `--warm 0`: no conductor is spawned ahead, and jobs run as before.
#[test]
fn warm_0_spawns_nothing_ahead() {
    let env = TestEnv::new();
    let state = env.state_dir();
    let mut daemon = env.spawn(&["daemon", "--state-dir", path_str(&state), "--warm", "0"]);
    wait_daemon_ready(&env, &state, &mut daemon);
    let quick = env.job("quick.toml", "", "[[task]]\nname = \"a\"\nrun = \"true\"\n");
    let id = submit(&env, &quick);
    wait_state(&env, &id, "success");
    assert!(records(&env).is_empty(), "{:?}", records(&env));
    assert_eq!(log_count(&env, &id, "warm conductor assigned"), 0);
    let (code, _, err) = cli(&env, &["shutdown"]);
    assert_eq!(code, 0, "{err}");
    daemon.wait_exit(DEADLINE);
}

/// The cgroups of a dead daemon's warm conductors (which exited by themselves) are removed by
/// the next daemon of any state dir sharing the cgroup base, even when the dead daemon's state
/// dir never sees a daemon again.
#[test]
fn cgroup_a_dead_daemons_warm_cgroups_are_swept_by_any_daemon() {
    const NAME: &str = "cgroup_a_dead_daemons_warm_cgroups_are_swept_by_any_daemon";
    if !nix::unistd::geteuid().is_root() {
        skip_unless_ci(NAME, "needs root for a writable cgroup v2");
        return;
    }
    let dead = TestEnv::new();
    let mut daemon = Mode::Cgroup.start_daemon(&dead, &[]);
    let left = wait_pool(&dead, 2);
    let cgroups: Vec<PathBuf> = left.iter().filter_map(|r| r.cgroup.clone()).collect();
    if cgroups.is_empty() {
        skip_unless_ci(NAME, "the daemon runs in session mode");
        return;
    }
    sigkill_run(&mut daemon);
    wait_for(
        GONE_DEADLINE,
        "the warm conductors to exit by themselves",
        || {
            let alive: Vec<&Record> = left.iter().filter(|r| is_alive(r.pid)).collect();
            if alive.is_empty() {
                Ok(())
            } else {
                Err(format!("{alive:?}"))
            }
        },
    );
    // Never a daemon on that state dir again: no record will be read.
    std::fs::remove_dir_all(dead.state_dir().join("warm")).expect("remove the records");
    // They stay until a daemon sweeps them: not asserted, since any daemon starting meanwhile
    // (another test's, sharing the cgroup base) may already have.
    let other = TestEnv::new();
    let mut daemon = Mode::Cgroup.start_daemon(&other, &[]);
    wait_for(
        GONE_DEADLINE,
        "the dead daemon's warm cgroups swept",
        || {
            let left: Vec<&PathBuf> = cgroups.iter().filter(|c| c.exists()).collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        },
    );
    let (code, _, err) = cli(&other, &["shutdown"]);
    assert_eq!(code, 0, "{err}");
    daemon.wait_exit(DEADLINE);
}
