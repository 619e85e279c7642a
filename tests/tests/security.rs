//! Issue 10, the supervisor's side: what a hostile task or a careless operator can no longer do.
//! Each test is named after the hole it closes.
//!
//! - hole 1: a task holding a copy of the job's listening socket accepts the supervisor's
//!   connection and answers as the conductor: it is refused (kernel-checked pid), the refusal
//!   is logged, the job keeps its real conductor and ends normally;
//! - hole 5: `logs` of a large output, `prune`, `--keep`, sockets removed with their conductor;
//! - hole 7: a daemon alone in its cgroup (systemd's `Delegate=yes`) moves into a `daemon`
//!   leaf and puts its job cgroups beside it, also after a restart.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tests::{
    DEADLINE, LONG_DEADLINE, MARK_VAR, TestEnv, cli_at, is_alive, ls_all_json_at, sigkill_run,
    skip_unless_ci, status_json_at, submit_at, wait_daemon_ready, wait_for,
};

fn cli(env: &TestEnv, args: &[&str]) -> (i32, String, String) {
    cli_at(env, &env.state_dir(), args, DEADLINE)
}

/// A job file with the test marker in its environment (so that the test env finds and kills
/// whatever is left), then `tasks`.
fn job(env: &TestEnv, name: &str, top: &str, tasks: &str) -> PathBuf {
    let contents = format!(
        "name = \"{name}\"\n{top}\n[env]\n{MARK_VAR} = \"{}\"\n\n{tasks}",
        env.marker()
    );
    env.write(&format!("{name}.toml"), &contents)
}

fn state_of(env: &TestEnv, id: &str) -> String {
    status_json_at(env, &env.state_dir(), id)["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Waits until the job is in `state`; returns its status.
fn wait_state(env: &TestEnv, id: &str, state: &str) -> Value {
    wait_for(LONG_DEADLINE, &format!("job {id} {state}"), || {
        let status = status_json_at(env, &env.state_dir(), id);
        if status["state"] == state {
            Ok(status)
        } else {
            Err(status)
        }
    })
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Hole 1: the forger (`tests/src/bin/forge-worker.rs`) inherits the job's listening socket
/// and, while the conductor's thread is blocked, is the only one to accept the connections of
/// a restarted daemon. It answers each as the conductor (claiming the conductor's pid) and
/// sends a forged `TaskSpawned` naming a bystander's process group. Each is refused by the
/// kernel-checked pid and logged; the forged report is never applied (the bystander lives);
/// once the forger gives up, the daemon reaches the real conductor and the job succeeds.
#[test]
fn hole1_a_task_holding_the_job_socket_cannot_pass_for_its_conductor() {
    let env = TestEnv::new();
    let mut daemon = env.start_daemon(&[]);
    let mut bystander = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("sleep")
            .arg("300")
            .process_group(0)
            .spawn()
            .expect("spawn the bystander")
    };
    let victim = bystander.id();
    let forgeries = 3;
    let file = job(
        &env,
        "forged",
        "worker = \"forge-worker\"\nheartbeat_timeout = \"120s\"",
        &format!(
            "[[task]]\nname = \"leak\"\nkind = \"leak_listener\"\n[task.params]\ndir = \"{}\"\nforgeries = {forgeries}\nvictim = {victim}\n",
            env.dir().display()
        ),
    );
    let id = submit_at(&env, &env.state_dir(), &file);
    wait_for(DEADLINE, "the forger to hold the socket", || {
        if env.path("forger-ready").exists() {
            Ok(())
        } else {
            Err(state_of(&env, &id))
        }
    });
    let conductor = status_json_at(&env, &env.state_dir(), &id)["conductor_pid"]
        .as_i64()
        .expect("a conductor pid");
    sigkill_run(&mut daemon);
    let mut daemon = env.spawn(&["daemon", "--state-dir", path_str(&env.state_dir())]);
    wait_daemon_ready(&env, &env.state_dir(), &mut daemon);
    let status = wait_state(&env, &id, "success");
    assert_eq!(status["conductor_pid"].as_i64(), Some(conductor));
    assert_eq!(env.read("forged").trim(), forgeries.to_string());
    let log = daemon.stderr_plain();
    let refusals = log
        .lines()
        .filter(|l| {
            l.contains("refused a connection: the answer does not come from the job's conductor")
        })
        .collect::<Vec<_>>();
    assert_eq!(refusals.len(), forgeries as usize, "{log}");
    for line in refusals {
        assert!(
            line.contains(&format!("expected_pid={conductor}")),
            "{line}"
        );
        assert!(line.contains(&format!("claimed_pid={conductor}")), "{line}");
        assert!(!line.contains(&format!("sender_pid={conductor}")), "{line}");
    }
    assert!(
        is_alive(i32::try_from(victim).expect("pid")),
        "the forged TaskSpawned killed a bystander"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
}

/// Hole 5: `logs` sends a long output whole and in order (read from the store a page at a
/// time); the job's socket goes with its conductor.
#[test]
fn hole5_logs_stream_a_long_output_and_the_socket_goes_with_the_conductor() {
    let env = TestEnv::new();
    let _daemon = env.start_daemon(&[]);
    let file = job(
        &env,
        "long",
        "",
        "[[task]]\nname = \"count\"\nrun = \"seq 1 3000\"\n",
    );
    let id = submit_at(&env, &env.state_dir(), &file);
    wait_state(&env, &id, "success");
    let (code, out, err) = cli(&env, &["logs", &id]);
    assert_eq!(code, 0, "{err}");
    let numbers: Vec<u32> = out
        .lines()
        .filter_map(|l| l.rsplit(' ').next().and_then(|n| n.trim().parse().ok()))
        .collect();
    assert_eq!(numbers, (1..=3000).collect::<Vec<_>>(), "{out}");
    let socket = env.state_dir().join("sock").join(&id);
    wait_for(DEADLINE, "the job's socket to be removed", || {
        if socket.exists() {
            Err(socket.clone())
        } else {
            Ok(())
        }
    });
}

/// Hole 5: `prune` deletes finished jobs (rows, log, socket) and never a live one, nor one
/// that owes reverts unless its state is named; a live state is refused.
#[test]
fn hole5_prune_deletes_finished_jobs_only() {
    let env = TestEnv::new();
    let _daemon = env.start_daemon(&[]);
    let done = job(
        &env,
        "done",
        "",
        "[[task]]\nname = \"a\"\nrun = \"echo hi\"\n",
    );
    let done = submit_at(&env, &env.state_dir(), &done);
    wait_state(&env, &done, "success");
    let owing = job(
        &env,
        "owing",
        "",
        "[[task]]\nname = \"a\"\nrun = \"sleep 300\"\nrevert = \"true\"\n",
    );
    let owing = submit_at(&env, &env.state_dir(), &owing);
    wait_state(&env, &owing, "running");
    let (code, _, err) = cli(&env, &["kill", &owing, "--wait"]);
    assert_eq!(code, 4, "{err}");
    let live = job(
        &env,
        "live",
        "",
        "[[task]]\nname = \"a\"\nrun = \"sleep 300\"\n",
    );
    let live = submit_at(&env, &env.state_dir(), &live);
    wait_state(&env, &live, "running");

    let prune = |args: &[&str]| -> Value {
        let mut full = vec!["prune", "--json"];
        full.extend_from_slice(args);
        let (code, out, err) = cli(&env, &full);
        assert_eq!(code, 0, "prune {args:?}: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("prune JSON {out:?}: {e}"))
    };
    let ids = |summary: &Value| -> Vec<String> {
        summary["jobs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(ids(&prune(&["--older-than", "1d"])).is_empty());
    let summary = prune(&["--older-than", "0s"]);
    assert_eq!(ids(&summary), vec![done.clone()]);
    assert!(summary["store_bytes_after"].as_u64().is_some());
    let left: Vec<String> = ls_all_json_at(&env, &env.state_dir())
        .iter()
        .filter_map(|j| j["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(!left.contains(&done));
    assert!(
        !env.state_dir()
            .join("logs")
            .join(format!("{done}.log"))
            .exists()
    );
    let (code, _, _) = cli(&env, &["status", &done]);
    assert_eq!(code, 6, "a pruned job is unknown");

    let (code, _, err) = cli(&env, &["prune", "--older-than", "0s", "--state", "running"]);
    assert_eq!(code, 2, "a live state is invalid input: {err}");
    assert_eq!(
        ids(&prune(&[
            "--older-than",
            "0s",
            "--state",
            "killed",
            "--vacuum"
        ])),
        vec![owing.clone()]
    );
    assert_eq!(state_of(&env, &live), "running");
    let (code, _, err) = cli(&env, &["kill", &live, "--wait"]);
    assert_eq!(code, 4, "{err}");
}

/// Hole 5: `daemon --keep DUR` prunes at start.
#[test]
fn hole5_daemon_keep_prunes_finished_jobs_at_start() {
    let env = TestEnv::new();
    let mut daemon = env.start_daemon(&[]);
    let file = job(&env, "kept", "", "[[task]]\nname = \"a\"\nrun = \"true\"\n");
    let id = submit_at(&env, &env.state_dir(), &file);
    wait_state(&env, &id, "success");
    sigkill_run(&mut daemon);
    let _daemon = env.start_daemon(&["--keep", "0s"]);
    wait_for(DEADLINE, "--keep to prune the finished job", || {
        let all = ls_all_json_at(&env, &env.state_dir());
        if all.is_empty() { Ok(()) } else { Err(all) }
    });
}

/// A scratch cgroup under this process's own cgroup v2, killed and removed (with its
/// children) on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Result<Self, String> {
        let mountinfo =
            std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
        let mount = shared::cgroup::unified_mount(&mountinfo)
            .ok_or("no cgroup v2 hierarchy is mounted")?
            .to_owned();
        let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
        let own = shared::cgroup::own_cgroup(&own)
            .ok_or("no cgroup v2 line")?
            .to_owned();
        let path = Path::new(&mount)
            .join(own.trim_start_matches('/'))
            .join(format!("svt-{name}-{}", std::process::id()));
        std::fs::create_dir(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            let children: Vec<PathBuf> = std::fs::read_dir(&self.0)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.path())
                        .filter(|p| p.is_dir())
                        .collect()
                })
                .unwrap_or_default();
            for child in children {
                let _ = std::fs::remove_dir(child);
            }
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The pids in a cgroup's `cgroup.procs`.
fn procs(cgroup: &Path) -> Vec<i32> {
    std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Hole 7: a daemon born alone in a cgroup (as systemd starts a `Delegate=yes` service) moves
/// into its `daemon` leaf and creates the job cgroups beside it; a restarted daemon does the
/// same and still reaches and kills the job. (Enabling controllers cannot be checked on a
/// host whose hierarchy offers none.)
#[test]
fn hole7_a_daemon_alone_in_its_cgroup_moves_into_a_leaf_and_jobs_go_beside_it() {
    const NAME: &str = "hole7_a_daemon_alone_in_its_cgroup_moves_into_a_leaf_and_jobs_go_beside_it";
    if !nix::unistd::geteuid().is_root() {
        skip_unless_ci(NAME, "needs root");
        return;
    }
    let scratch = match Scratch::new("h7") {
        Ok(scratch) => scratch,
        Err(reason) => {
            skip_unless_ci(NAME, &reason);
            return;
        }
    };
    let env = TestEnv::new();
    let state_dir = env.state_dir();
    let args = ["daemon", "--state-dir", path_str(&state_dir)];
    let mut daemon = env.spawn_in_cgroup(&args, &scratch.0);
    wait_daemon_ready(&env, &env.state_dir(), &mut daemon);
    let leaf = scratch.0.join("daemon");
    wait_for(DEADLINE, "the daemon in its leaf", || {
        let (base, leaf) = (procs(&scratch.0), procs(&leaf));
        if base.is_empty() && leaf.contains(&daemon.pid()) {
            Ok(())
        } else {
            Err((base, leaf))
        }
    });
    let file = job(
        &env,
        "beside",
        "",
        "[[task]]\nname = \"a\"\nrun = \"sleep 300\"\n",
    );
    let id = submit_at(&env, &env.state_dir(), &file);
    let status = wait_state(&env, &id, "running");
    assert_eq!(status["containment"], "cgroup", "{status}");
    // `BASE/job-ID`, or the cgroup of the warm conductor the job took (cgroup v2 cannot rename
    // it): beside the daemon's leaf either way.
    let (containment, cgroup) = env.store().job_containment(&id).expect("job stored");
    assert_eq!(containment.as_deref(), Some("cgroup"));
    let job_cgroup = PathBuf::from(cgroup.expect("jobs.cgroup"));
    let name = job_cgroup
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    assert!(
        job_cgroup.parent() == Some(scratch.0.as_path())
            && (name == format!("job-{id}") || name.starts_with("warm-")),
        "{}",
        job_cgroup.display()
    );
    assert!(!procs(&job_cgroup).is_empty(), "the job runs in its cgroup");

    sigkill_run(&mut daemon);
    let mut daemon = env.spawn_in_cgroup(&args, &scratch.0);
    wait_daemon_ready(&env, &env.state_dir(), &mut daemon);
    wait_for(DEADLINE, "the restarted daemon in its leaf", || {
        let (base, leaf) = (procs(&scratch.0), procs(&leaf));
        if base.is_empty() && leaf.contains(&daemon.pid()) {
            Ok(())
        } else {
            Err((base, leaf))
        }
    });
    let (code, _, err) = cli(&env, &["kill", &id, "--wait"]);
    assert_eq!(code, 4, "{err}");
    wait_for(DEADLINE, "the job's cgroup to be removed", || {
        if job_cgroup.exists() {
            Err(procs(&job_cgroup))
        } else {
            Ok(())
        }
    });
    sigkill_run(&mut daemon);
}

/// Hole 1: a task holds only descriptors 0, 1 and 2 (not the job's listening socket, nor
/// anything else of the conductor's).
#[test]
fn hole1_a_task_sees_only_descriptors_0_1_2() {
    let env = TestEnv::new();
    let _daemon = env.start_daemon(&[]);
    let file = job(
        &env,
        "fds",
        "",
        // `ls` runs as a child of the shell and lists the shell's descriptors, not its own.
        "[[task]]\nname = \"list\"\nrun = 'ls -l /proc/$$/fd/'\n",
    );
    let id = submit_at(&env, &env.state_dir(), &file);
    wait_state(&env, &id, "success");
    let (code, out, err) = cli(&env, &["logs", &id]);
    assert_eq!(code, 0, "{err}");
    // `... 64 Dec  3 06:55 0 -> /dev/null`: the name before the arrow.
    let fds: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_once(" -> ")?.0.split_whitespace().last())
        .collect();
    assert_eq!(fds, ["0", "1", "2"], "{out}");
}
