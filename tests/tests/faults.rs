//! Resource faults against the real daemon: a full disk under the store, and load (100 jobs,
//! 50 clients hammering the control socket, then 100 parallel cancels).
//!
//! Build the binaries first: `cargo build --workspace --bins`. The disk-full test needs root (it
//! mounts a 2 MiB tmpfs as the state dir, fills it, then frees and grows it); without root, or when the mount fails, it says why on
//! stderr and passes without checking anything.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tests::{
    DEADLINE, JOB_TERMINAL_STATES, LONG_DEADLINE, Run, TestEnv, cli_at, sigkill_run,
    skip_unless_ci, start_daemon_at, wait_for,
};

/// A tmpfs mounted for the test; unmounted (lazily if still busy) when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (mount's syntax: `2m`) on `dir`; `Err` says why not.
    fn mount(dir: &Path, size: &str) -> Result<Self, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("not root".to_owned());
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(Self {
                dir: dir.to_path_buf(),
            })
        } else {
            Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

impl Tmpfs {
    /// Gives the mounted tmpfs a new `size` (`mount -o remount`), keeping its files.
    fn resize(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -o remount,size={size} {}: {}",
            self.dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let plain = Command::new("umount").arg(&self.dir).output();
        if !plain.is_ok_and(|o| o.status.success()) {
            let lazy = Command::new("umount").arg("-l").arg(&self.dir).output();
            if !lazy.is_ok_and(|o| o.status.success()) {
                eprintln!("cannot unmount the test tmpfs {}", self.dir.display());
            }
        }
    }
}

fn text(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Parses `status --json`; `None` unless exit 0 and a JSON object.
fn parse_status(code: i32, out: &str) -> Option<Value> {
    (code == 0)
        .then(|| serde_json::from_str::<Value>(out).ok())
        .flatten()
        .filter(Value::is_object)
}

/// Free bytes of the file system holding `path`.
fn free_bytes(path: &Path) -> u64 {
    nix::sys::statvfs::statvfs(path).map_or(0, |s| s.blocks_available() * s.fragment_size())
}

#[test]
fn disk_full_refuses_submits_keeps_serving_and_recovers() {
    let env = TestEnv::new();
    let mount_point = env.path("fs");
    let tmpfs = match Tmpfs::mount(&mount_point, "2m") {
        Ok(tmpfs) => tmpfs,
        Err(reason) => {
            skip_unless_ci(
                "disk_full_refuses_submits_keeps_serving_and_recovers",
                &reason,
            );
            return;
        }
    };
    let state_dir = mount_point.join("state");
    // The filler: freed at the end to give the store room again.
    let filler = mount_point.join("filler");
    std::fs::write(&filler, vec![b'x'; 512 * 1024]).expect("the filler fits in the tmpfs");
    let mut daemon = start_daemon_at(&env, &state_dir, &[]);
    let cli = |args: &[&str]| cli_at(&env, &state_dir, args, DEADLINE);

    // Each job prints about 50 KB, which the daemon stores line by line.
    let noisy = env.job(
        "noisy.toml",
        "name = \"noisy\"",
        "[[task]]\nname = \"talk\"\nrun = \"seq 1 800 | sed 's/$/ ............................................................/'\"\nrevert = \"true\"\n",
    );
    let mut accepted: Vec<String> = Vec::new();
    let mut refusal = None;
    for attempt in 0..80 {
        let started = Instant::now();
        let (code, out, err) = cli(&["submit", text(&noisy)]);
        let took = started.elapsed();
        if code == 0 {
            let id = out.trim().to_owned();
            assert!(
                id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()),
                "submit printed {out:?}"
            );
            accepted.push(id);
        } else {
            refusal = Some((attempt, code, out, err, took));
            break;
        }
        // Let the job run (and write its output) before the next submit, within reason.
        let id = accepted.last().expect("just pushed").clone();
        let _ = wait_for_terminal_or(&env, &state_dir, &id, Duration::from_secs(5));
    }
    let free_when_full = free_bytes(&mount_point);
    let Some((attempt, code, out, err, took)) = refusal else {
        panic!(
            "80 noisy jobs were accepted and the 2 MiB store never refused a submit ({free_when_full} bytes free); accepted: {accepted:?}"
        );
    };
    eprintln!(
        "disk full: submit #{attempt} refused after {took:?} with exit {code}, stdout {out:?}, stderr {:?}; {} jobs accepted before; {free_when_full} bytes free",
        err.trim(),
        accepted.len()
    );
    assert_ne!(code, 0);
    assert!(
        !err.trim().is_empty(),
        "a refused submit must say why on stderr (exit {code}, stdout {out:?})"
    );
    assert!(
        out.trim().is_empty(),
        "a refused submit printed something that looks like an id: {out:?}"
    );
    assert!(
        took < Duration::from_secs(15),
        "the refused submit took {took:?}"
    );
    assert!(
        !daemon.has_exited(),
        "the daemon died with the disk full:\n{}",
        daemon.report()
    );
    // Another submit is refused as well (not a hang, not a crash).
    let started = Instant::now();
    let (code2, out2, err2) = cli(&["submit", text(&noisy)]);
    eprintln!(
        "disk full: second submit: exit {code2} after {:?}, stderr {:?}",
        started.elapsed(),
        err2.trim()
    );
    if code2 == 0 {
        // The store found a little room (e.g. a WAL checkpoint freed pages): acknowledged, so it
        // must be kept like the others.
        accepted.push(out2.trim().to_owned());
    } else {
        assert!(!err2.trim().is_empty(), "second refusal without a message");
    }

    // The daemon keeps serving reads.
    let (code, out, err) = cli(&["ls", "--all", "--json"]);
    assert_eq!(code, 0, "ls --all with the disk full: {out:?} {err:?}");
    let listed: Value = serde_json::from_str(&out).expect("ls --json parses");
    let listed = listed.as_array().cloned().expect("ls --json is an array");
    for id in &accepted {
        assert!(
            listed.iter().any(|j| j["id"] == Value::String(id.clone())),
            "acknowledged job {id} is not listed with the disk full"
        );
        let (code, out, err) = cli(&["status", id, "--json"]);
        let status = parse_status(code, &out).unwrap_or_else(|| {
            panic!("status {id} with the disk full: exit {code} {out:?} {err:?}")
        });
        check_consistent(&status, id);
    }
    let states_full: Vec<String> = accepted
        .iter()
        .map(|id| {
            let (_, out, _) = cli(&["status", id, "--json"]);
            serde_json::from_str::<Value>(&out).map_or_else(
                |_| "?".to_owned(),
                |v| v["state"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect();
    eprintln!("disk full: states of the accepted jobs while full: {states_full:?}");

    // Free space: the refused work can go on, new submits work again. The filler alone may
    // not be room enough: each job still streaming when the disk filled holds up to its 50 KB
    // of output for the store, which takes more than that in the database and its WAL (four
    // such jobs once filled the freed 512 KiB again, and the fourth waited, rightly, for room
    // that never came). So the file system grows as well, as an operator's would.
    std::fs::remove_file(&filler).expect("the filler can be removed");
    tmpfs.resize("16m");
    eprintln!(
        "disk full: filler removed, {} bytes free",
        free_bytes(&mount_point)
    );
    let again = env.job(
        "quiet.toml",
        "name = \"quiet\"",
        "[[task]]\nname = \"q\"\nrun = \"echo quiet\"\n",
    );
    let id = wait_for(DEADLINE, "a submit to be accepted again", || {
        let (code, out, err) = cli(&["submit", text(&again)]);
        if code == 0 {
            Ok(out.trim().to_owned())
        } else {
            Err((code, out, err))
        }
    });
    let state = wait_for_terminal_or(&env, &state_dir, &id, LONG_DEADLINE);
    assert_eq!(
        state.as_deref(),
        Some("success"),
        "the job submitted after freeing space"
    );

    // Every acknowledged job is still there, ends, and its tasks are recorded.
    let mut stuck = Vec::new();
    for id in &accepted {
        let state = wait_for_terminal_or(&env, &state_dir, id, Duration::from_secs(20));
        let (code, out, err) = cli(&["status", id, "--json"]);
        let status = parse_status(code, &out)
            .unwrap_or_else(|| panic!("status {id} after freeing: exit {code} {out:?} {err:?}"));
        check_consistent(&status, id);
        if state.is_none() {
            let pid = status["conductor_pid"]
                .as_i64()
                .and_then(|p| i32::try_from(p).ok());
            let alive = pid.is_some_and(tests::is_alive);
            let (kcode, kout, kerr) = cli(&["kill", id]);
            let after = wait_for_terminal_or(&env, &state_dir, id, Duration::from_secs(10));
            stuck.push(format!(
                "job {id} still {} 20 s after space was freed (conductor {pid:?} alive: {alive}); `kill {id}` then: exit {kcode} {kout:?} {kerr:?}, state 10 s later {after:?}",
                status["state"]
            ));
            continue;
        }
        let tasks = status["tasks"].as_array().cloned().unwrap_or_default();
        assert_eq!(tasks.len(), 1, "job {id} lost its task rows: {status:#}");
        if state.as_deref() == Some("success") {
            assert_eq!(tasks[0]["state"], "success", "{status:#}");
            assert!(
                tasks[0]["attempts"].as_u64().is_some_and(|a| a >= 1),
                "a finished task without an attempt: {status:#}"
            );
        }
    }
    let ends: Vec<String> = accepted
        .iter()
        .map(|id| {
            let (_, out, _) = cli(&["status", id, "--json"]);
            serde_json::from_str::<Value>(&out).map_or_else(
                |_| "?".to_owned(),
                |v| v["state"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect();
    eprintln!("disk full: end states of the accepted jobs after freeing: {ends:?}");
    assert!(
        stuck.is_empty(),
        "acknowledged jobs never ended once space was freed:\n{}\ndaemon stderr:\n{}",
        stuck.join("\n"),
        daemon.stderr_plain()
    );
    assert!(
        !daemon.has_exited(),
        "the daemon died:\n{}",
        daemon.report()
    );

    sigkill_run(&mut daemon);
    drop(daemon);
    // Let the conductors go before unmounting (the env's drop kills whatever is left).
    wait_for(DEADLINE, "the test's processes to end", || {
        let left = env.owned_processes();
        if left.is_empty() { Ok(()) } else { Err(left) }
    });
    drop(tmpfs);
}

/// A job's status must be self-consistent: a known state, one row per task, live tasks only in
/// a live job.
fn check_consistent(status: &Value, id: &str) {
    let state = status["state"].as_str().unwrap_or_default();
    let live = ["pending", "running", "cancelling", "reverting"];
    assert!(
        live.contains(&state) || JOB_TERMINAL_STATES.contains(&state),
        "job {id} in an unknown state: {status:#}"
    );
    let tasks = status["tasks"].as_array().cloned().unwrap_or_default();
    assert!(!tasks.is_empty(), "job {id} has no task rows: {status:#}");
    if JOB_TERMINAL_STATES.contains(&state) {
        for task in &tasks {
            let ts = task["state"].as_str().unwrap_or_default();
            assert!(
                ts != "running" && ts != "reverting",
                "terminal job {id} with a task in flight: {status:#}"
            );
        }
    }
    if state == "success" {
        assert!(
            tasks.iter().all(|t| t["state"] == "success"),
            "successful job {id} with unfinished tasks: {status:#}"
        );
    }
}

/// Waits up to `deadline` for the job to be terminal; its state, or `None` on timeout.
fn wait_for_terminal_or(
    env: &TestEnv,
    state_dir: &Path,
    id: &str,
    deadline: Duration,
) -> Option<String> {
    let start = Instant::now();
    loop {
        let (code, out, _) = cli_at(env, state_dir, &["status", id, "--json"], DEADLINE);
        if let Some(status) = parse_status(code, &out) {
            let state = status["state"].as_str().unwrap_or_default().to_owned();
            if JOB_TERMINAL_STATES.contains(&state.as_str()) {
                return Some(state);
            }
        }
        if start.elapsed() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `q`th quantile (0..=1) of sorted durations.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let last = sorted.len() - 1;
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let index = ((last as f64) * q).round() as usize;
    sorted[index.min(last)]
}

#[test]
fn load_hundred_jobs_fifty_clients_then_hundred_cancels() {
    const JOBS: usize = 100;
    const CLIENTS: usize = 50;
    const EVENT_STREAMS: usize = 3;
    let cancel_timeout = Duration::from_secs(20);
    let test_start = Instant::now();

    let env = TestEnv::new();
    let state_dir = env.state_dir();
    let mut daemon = start_daemon_at(&env, &state_dir, &["--max-jobs", "100"]);
    // The task outlasts the hammering (a `sleep 2` would end `success` before its cancel); the
    // cancel interrupts it.
    let file = env.job(
        "load.toml",
        "name = \"load\"\ncancel_timeout = \"20s\"\nterm_grace = \"2s\"",
        "[[task]]\nname = \"nap\"\nrun = \"sleep 60\"\nrevert = \"true\"\n",
    );
    let dir_arg = text(&state_dir).to_owned();
    let mut events: Vec<Run> = (0..EVENT_STREAMS)
        .map(|_| env.spawn(&["events", "--json", "--state-dir", &dir_arg]))
        .collect();

    let ids: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let requests = AtomicU32::new(0);
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut cancel_times: Vec<(String, i32, Duration)> = Vec::new();

    std::thread::scope(|scope| {
        // The hammering clients.
        for client in 0..CLIENTS {
            let (env, state_dir, ids, stop, requests, failures) =
                (&env, &state_dir, &ids, &stop, &requests, &failures);
            scope.spawn(move || {
                let mut n = client;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let id = {
                        let ids = ids.lock().expect("ids lock");
                        (!ids.is_empty()).then(|| ids[n % ids.len()].clone())
                    };
                    let args: Vec<&str> = match (n % 2, &id) {
                        (0, Some(id)) => vec!["status", id.as_str(), "--json"],
                        _ => vec!["ls", "--json"],
                    };
                    let (code, out, err) = cli_at(env, state_dir, &args, DEADLINE);
                    requests.fetch_add(1, Ordering::Relaxed);
                    let parsed = serde_json::from_str::<Value>(&out);
                    if code != 0 || parsed.is_err() {
                        failures.lock().expect("failures lock").push(format!(
                            "{args:?}: exit {code}, stdout {out:?}, stderr {err:?}"
                        ));
                    }
                }
            });
        }

        // Submit the jobs (4 submitters).
        let submitters: Vec<_> = (0..4)
            .map(|_| {
                let (env, state_dir, ids, file) = (&env, &state_dir, &ids, &file);
                scope.spawn(move || {
                    for _ in 0..JOBS / 4 {
                        let (code, out, err) =
                            cli_at(env, state_dir, &["submit", text(file)], DEADLINE);
                        assert_eq!(code, 0, "submit under load: {out:?} {err:?}");
                        ids.lock().expect("ids lock").push(out.trim().to_owned());
                    }
                })
            })
            .collect();
        for s in submitters {
            s.join().expect("a submitter panicked");
        }
        let all_ids = ids.lock().expect("ids lock").clone();
        assert_eq!(all_ids.len(), JOBS);
        eprintln!(
            "load: {JOBS} jobs submitted after {:.1}s",
            test_start.elapsed().as_secs_f64()
        );

        // Every task running, so that every cancel interrupts a real task.
        wait_for(LONG_DEADLINE, "every job's task to be running", || {
            let store = env.store();
            let not_running: Vec<(String, Vec<(String, String)>)> = all_ids
                .iter()
                .map(|id| (id.clone(), store.task_states(id)))
                .filter(|(_, t)| t.iter().any(|(_, s)| s != "running"))
                .collect();
            if not_running.is_empty() {
                Ok(())
            } else {
                Err(not_running.len())
            }
        });
        eprintln!(
            "load: every task running after {:.1}s",
            test_start.elapsed().as_secs_f64()
        );

        // Cancel them all at once, still under the hammering.
        let cancels: Vec<_> = all_ids
            .iter()
            .map(|id| {
                let (env, state_dir) = (&env, &state_dir);
                let id = id.clone();
                scope.spawn(move || {
                    let start = Instant::now();
                    let (code, _, _) = cli_at(
                        env,
                        state_dir,
                        &["cancel", &id, "--wait"],
                        cancel_timeout + DEADLINE,
                    );
                    (id, code, start.elapsed())
                })
            })
            .collect();
        for c in cancels {
            cancel_times.push(c.join().expect("a cancel thread panicked"));
        }
        stop.store(true, Ordering::Relaxed);
    });

    for stream in &mut events {
        sigkill_run(stream);
    }
    let mut event_lines = 0;
    for stream in &events {
        let out = stream.stdout();
        for line in out.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
            event_lines += 1;
            assert!(
                serde_json::from_str::<Value>(line).is_ok(),
                "an events --json line does not parse: {line:?}"
            );
        }
        assert!(
            !out.is_empty(),
            "an events stream printed nothing:\n{}",
            stream.report()
        );
    }

    let failures = failures.into_inner().expect("failures lock");
    let requests = requests.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {requests} requests failed under load:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let store = env.store();
    let mut bad = Vec::new();
    for (id, code, took) in &cancel_times {
        let state = store.job_state(id);
        if state != "cancelled" || *code != 3 || *took >= cancel_timeout {
            bad.push(format!(
                "{id}: {state}, cancel --wait exit {code} after {took:?}"
            ));
        }
    }
    let mut times: Vec<Duration> = cancel_times.iter().map(|(_, _, t)| *t).collect();
    times.sort();
    eprintln!(
        "load: {requests} requests by {CLIENTS} clients, {event_lines} event lines on {EVENT_STREAMS} streams; cancel-to-cancelled p50 {:?} p95 {:?} max {:?}; total {:.1}s",
        quantile(&times, 0.5),
        quantile(&times, 0.95),
        quantile(&times, 1.0),
        test_start.elapsed().as_secs_f64()
    );
    assert!(
        bad.is_empty(),
        "jobs not cancelled in time:\n{}",
        bad.join("\n")
    );
    assert!(
        !daemon.has_exited(),
        "the daemon died under load:\n{}",
        daemon.report()
    );
    sigkill_run(&mut daemon);
}
