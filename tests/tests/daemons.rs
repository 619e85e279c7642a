//! Real servers that daemonize (double fork, `setsid`, pid files), which nobody here wrote, run
//! as tasks (issue 10, "Proof"): `memcached -d`, `redis-server --daemonize yes` and `lighttpd`
//! (which daemonizes by default). After a normal end, a cancel, a kill, a SIGKILL of the
//! conductor, and a daemon restart followed by a kill, none of their processes remain: `/proc`
//! is scanned for their executable (among the processes of this test: its marker in their
//! environment, or its directory on their command line), and the pid each wrote to its pid
//! file must be gone. Each server listens on a Unix socket in the test's directory, so tests
//! run in parallel without ports.
//!
//! Every scenario runs under both containments: cgroup mode where this host has a writable
//! cgroup v2 (else it is skipped with the reason, a failure under CI), and session mode
//! (`SUPERVISOR_CONTAINMENT=session`). A missing server binary is a skip outside CI and a
//! failure under CI=true (`.ci/run` installs them from Debian's packages).
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::path::{Path, PathBuf};
use tests::{
    DEADLINE, GONE_DEADLINE, LONG_DEADLINE, MARK_VAR, Run, TestEnv, cli_at, live_processes,
    send_signal, send_signal_if_alive, sigkill_run, skip_unless_ci, submit_at, wait_daemon_ready,
    wait_for,
};

/// One server: its binary, the shell command that starts it daemonized, its pid file.
struct Server {
    name: &'static str,
    binary: &'static str,
    /// Writes any configuration it needs into `dir`; returns the start command.
    start: fn(&Path) -> String,
}

const SERVERS: [Server; 3] = [
    Server {
        name: "memcached",
        binary: "/usr/bin/memcached",
        start: |dir| {
            format!(
                "memcached -d -u root -s {0}/memcached.sock -P {0}/memcached.pid",
                dir.display()
            )
        },
    },
    Server {
        name: "redis",
        binary: "/usr/bin/redis-server",
        start: |dir| {
            format!(
                "redis-server --daemonize yes --port 0 --unixsocket {0}/redis.sock --pidfile {0}/redis.pid --dir {0} --save '' --appendonly no --logfile {0}/redis.log",
                dir.display()
            )
        },
    },
    Server {
        name: "lighttpd",
        binary: "/usr/sbin/lighttpd",
        start: |dir| {
            let conf = format!(
                "server.document-root = \"{0}\"\nserver.bind = \"{0}/lighttpd.sock\"\nserver.pid-file = \"{0}/lighttpd.pid\"\nserver.errorlog = \"{0}/lighttpd.err\"\n",
                dir.display()
            );
            std::fs::write(dir.join("lighttpd.conf"), conf).expect("lighttpd.conf");
            format!("lighttpd -f {}/lighttpd.conf", dir.display())
        },
    },
];

impl Server {
    fn pid_file(&self, dir: &Path) -> PathBuf {
        let stem = self.binary.rsplit('/').next().unwrap_or(self.name);
        let stem = if stem == "redis-server" {
            "redis"
        } else {
            stem
        };
        dir.join(format!("{stem}.pid"))
    }

    /// The server's live processes that belong to this test.
    fn processes(&self, env: &TestEnv) -> Vec<i32> {
        let mark = format!("{MARK_VAR}={}", env.marker());
        // `/proc/PID/exe` names the file itself (redis-server is a symlink to redis-check-rdb).
        let binary = std::fs::canonicalize(self.binary).unwrap_or_else(|_| self.binary.into());
        let dir = env.dir().display().to_string();
        live_processes()
            .into_iter()
            .filter(|p| {
                std::fs::read_link(format!("/proc/{}/exe", p.pid)).is_ok_and(|exe| exe == binary)
            })
            .filter(|p| {
                p.cmdline.contains(&dir)
                    || std::fs::read(format!("/proc/{}/environ", p.pid))
                        .is_ok_and(|e| e.split(|&b| b == 0).any(|v| v == mark.as_bytes()))
            })
            .map(|p| p.pid)
            .collect()
    }

    /// Skips (outside CI) when the binary is missing.
    fn available(&self, test: &str) -> bool {
        if Path::new(self.binary).exists() {
            return true;
        }
        skip_unless_ci(
            test,
            &format!(
                "{} is not installed (apt-get install {})",
                self.binary,
                if self.name == "redis" {
                    "redis-server"
                } else {
                    self.name
                }
            ),
        );
        false
    }
}

/// How the job ends.
#[derive(Clone, Copy, Debug)]
enum End {
    Normal,
    Cancel,
    Kill,
    ConductorSigkill,
    RestartThenKill,
}

const ENDS: [End; 5] = [
    End::Normal,
    End::Cancel,
    End::Kill,
    End::ConductorSigkill,
    End::RestartThenKill,
];

/// Which containment the daemon uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Cgroup,
    Session,
}

fn daemon(env: &TestEnv, mode: Mode) -> Run {
    let state_dir = env.state_dir();
    let args = ["daemon", "--state-dir", state_dir.to_str().expect("UTF-8")];
    let set: &[(&str, &str)] = match mode {
        Mode::Cgroup => &[],
        Mode::Session => &[("SUPERVISOR_CONTAINMENT", "session")],
    };
    let mut daemon = env.spawn_with_env(&args, set, &["SUPERVISOR_CONTAINMENT"]);
    wait_daemon_ready(env, &state_dir, &mut daemon);
    daemon
}

fn cli(env: &TestEnv, args: &[&str]) -> (i32, String, String) {
    cli_at(env, &env.state_dir(), args, LONG_DEADLINE)
}

/// Waits until the server's pid file names a live process: it has daemonized.
fn wait_server_up(env: &TestEnv, server: &Server) -> i32 {
    let pid_file = server.pid_file(env.dir());
    wait_for(DEADLINE, &format!("{} to daemonize", server.name), || {
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok());
        match pid {
            Some(pid) if server.processes(env).contains(&pid) => Ok(pid),
            _ => Err((pid, server.processes(env))),
        }
    })
}

/// The job file: a task that starts the server and returns once its pid file is written
/// (after it forked away), then `check` (a normal end) or `hold` (a long step to end early).
fn job_file(env: &TestEnv, server: &Server, end: End) -> PathBuf {
    let hold = if matches!(end, End::Normal) {
        "[[task]]\nname = \"check\"\nrun = \"true\"\n"
    } else {
        "[[task]]\nname = \"hold\"\nrun = \"sleep 300\"\n"
    };
    let start = format!(
        "{} && for i in $(seq 400); do test -s {pid} && exit 0; sleep 0.05; done; exit 1",
        (server.start)(env.dir()),
        pid = server.pid_file(env.dir()).display()
    );
    let contents = format!(
        "name = \"{}\"\ncancel_timeout = \"20s\"\n[env]\n{MARK_VAR} = \"{}\"\n\n[[task]]\nname = \"start\"\nrun = \"{}\"\n\n{hold}",
        server.name,
        env.marker(),
        start.replace('"', "\\\""),
    );
    env.write("job.toml", &contents)
}

/// Ends the job as `end` says (the `hold` step running first); returns the state expected.
fn end_job(env: &TestEnv, id: &str, end: End, mode: Mode, supervisor: &mut Run) -> &'static str {
    if !matches!(end, End::Normal) {
        wait_for(DEADLINE, "the hold task to run", || {
            let s = env.status_json(id);
            if s["tasks"][1]["state"] == "running" {
                Ok(())
            } else {
                Err(s)
            }
        });
    }
    let order = |verb: &str, code: i32| {
        let (got, _, err) = cli(env, &[verb, id, "--wait"]);
        assert_eq!(got, code, "{verb}: {err}");
    };
    match end {
        End::Normal => "success",
        End::Cancel => {
            order("cancel", 3);
            "cancelled"
        }
        End::Kill => {
            order("kill", 4);
            "killed"
        }
        End::ConductorSigkill => {
            let conductor = env.status_json(id)["conductor_pid"]
                .as_i64()
                .and_then(|p| i32::try_from(p).ok())
                .expect("a conductor pid");
            send_signal(conductor, nix::sys::signal::Signal::SIGKILL);
            "crashed"
        }
        End::RestartThenKill => {
            sigkill_run(supervisor);
            *supervisor = daemon(env, mode);
            order("kill", 4);
            "killed"
        }
    }
}

/// Kills the server's processes of this test when dropped: a failing test must not leave a
/// server behind (redis rewrites its environment area with its title, so the test env's
/// marker scan would miss it).
struct Reap<'a>(&'a Server, &'a TestEnv);

impl Drop for Reap<'_> {
    fn drop(&mut self) {
        for pid in self.0.processes(self.1) {
            send_signal_if_alive(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// One scenario: the server started by a task, the job ended by `end`, nothing left.
fn scenario(server: &Server, mode: Mode, end: End) {
    let env = TestEnv::new();
    let _reap = Reap(server, &env);
    let mut supervisor = daemon(&env, mode);
    let id = submit_at(&env, &env.state_dir(), &job_file(&env, server, end));
    let server_pid = if matches!(end, End::Normal) {
        None
    } else {
        Some(wait_server_up(&env, server))
    };
    let expected = end_job(&env, &id, end, mode, &mut supervisor);
    wait_for(LONG_DEADLINE, &format!("job {id} {expected}"), || {
        let s = env.status_json(&id);
        if s["state"] == expected {
            Ok(())
        } else {
            Err(s)
        }
    });
    let what = format!(
        "every {} process to be gone ({mode:?}, {end:?})",
        server.name
    );
    wait_for(GONE_DEADLINE, &what, || {
        let left = server.processes(&env);
        // The pid file outlives a SIGKILLed server: the pid it names must be gone too.
        let named = server_pid.or_else(|| {
            std::fs::read_to_string(server.pid_file(env.dir()))
                .ok()
                .and_then(|t| t.trim().parse().ok())
        });
        if left.is_empty() && !named.is_some_and(tests::is_alive) {
            Ok(())
        } else {
            Err(left)
        }
    });
    // The daemon carries the test's owner marker too: gone first, then nothing of the job.
    sigkill_run(&mut supervisor);
    env.assert_no_job_process_left();
}

/// Whether cgroup mode can run here; a skip (failure under CI) otherwise.
fn cgroup_mode_available(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        skip_unless_ci(test, "cgroup mode needs root");
        return false;
    }
    let writable = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|m| shared::cgroup::unified_mount(&m).map(str::to_owned))
        .is_some();
    if !writable {
        skip_unless_ci(test, "no cgroup v2 hierarchy is mounted");
    }
    writable
}

fn all_ends(server: &Server, mode: Mode, test: &str) {
    if !server.available(test) {
        return;
    }
    if mode == Mode::Cgroup && !cgroup_mode_available(test) {
        return;
    }
    for end in ENDS {
        scenario(server, mode, end);
    }
}

#[test]
fn memcached_leaves_nothing_behind_in_cgroup_mode() {
    all_ends(
        &SERVERS[0],
        Mode::Cgroup,
        "memcached_leaves_nothing_behind_in_cgroup_mode",
    );
}

#[test]
fn memcached_leaves_nothing_behind_in_session_mode() {
    all_ends(
        &SERVERS[0],
        Mode::Session,
        "memcached_leaves_nothing_behind_in_session_mode",
    );
}

#[test]
fn redis_leaves_nothing_behind_in_cgroup_mode() {
    all_ends(
        &SERVERS[1],
        Mode::Cgroup,
        "redis_leaves_nothing_behind_in_cgroup_mode",
    );
}

#[test]
fn redis_leaves_nothing_behind_in_session_mode() {
    all_ends(
        &SERVERS[1],
        Mode::Session,
        "redis_leaves_nothing_behind_in_session_mode",
    );
}

#[test]
fn lighttpd_leaves_nothing_behind_in_cgroup_mode() {
    all_ends(
        &SERVERS[2],
        Mode::Cgroup,
        "lighttpd_leaves_nothing_behind_in_cgroup_mode",
    );
}

#[test]
fn lighttpd_leaves_nothing_behind_in_session_mode() {
    all_ends(
        &SERVERS[2],
        Mode::Session,
        "lighttpd_leaves_nothing_behind_in_session_mode",
    );
}
