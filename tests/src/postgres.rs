//! A real PostgreSQL server per test, for the job board's tests.
//!
//! [`Postgres::start`] finds Debian's server binaries (`/usr/lib/postgresql/*/bin`, the newest
//! version), makes a short temp dir owned by the unprivileged `postgres` user (the server
//! refuses to run as root), runs `initdb` and `pg_ctl start` as that user through `runuser`,
//! with a Unix socket only (`listen_addresses=` and `-k DIR`: no port to collide on, and the
//! socket path stays far below the 108-byte limit), waits with a deadline until `pg_isready`
//! says yes, and creates the test's database. Drop stops the server (`pg_ctl stop -m
//! immediate`) and removes the dir. Each test starts its own server, so tests run in parallel.
//!
//! Without the binaries, the `postgres` user or root, [`Postgres::start`] returns `None` after
//! [`skip_unless_ci`](crate::skip_unless_ci): a skip on a developer's machine, a failure under
//! `CI=true` (`.ci/run` installs the server).

use crate::{DEADLINE, Run, TestEnv, path_str, wait_for};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Where Debian installs the server, one directory per major version.
const PG_ROOT: &str = "/usr/lib/postgresql";

/// The database the tests use.
pub const DATABASE: &str = "board";

/// The system user the server runs as.
const PG_USER: &str = "postgres";

/// One running PostgreSQL server in a temp dir of its own.
pub struct Postgres {
    bin: PathBuf,
    dir: PathBuf,
}

impl Postgres {
    /// Starts a fresh server with an empty [`DATABASE`]; `None` (after
    /// [`skip_unless_ci`](crate::skip_unless_ci)) where this host cannot run one.
    #[must_use]
    pub fn start(test: &str) -> Option<Self> {
        let Some(bin) = find_bin_dir() else {
            crate::skip_unless_ci(test, "no PostgreSQL server under /usr/lib/postgresql/*/bin");
            return None;
        };
        if !nix::unistd::geteuid().is_root() {
            crate::skip_unless_ci(test, "not root: cannot run PostgreSQL as the postgres user");
            return None;
        }
        let Ok(Some(user)) = nix::unistd::User::from_name(PG_USER) else {
            crate::skip_unless_ci(test, "no `postgres` system user");
            return None;
        };
        let dir = make_dir();
        std::os::unix::fs::chown(&dir, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
            .unwrap_or_else(|err| panic!("cannot chown {}: {err}", dir.display()));
        let server = Self { bin, dir };
        let data = server.data_dir();
        server.run_as_postgres(
            "initdb",
            &[
                "-D",
                path_str(&data),
                "-U",
                PG_USER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        server.pg_ctl("start");
        server.wait_ready();
        server.run_as_postgres("createdb", &["-h", path_str(&server.dir), DATABASE]);
        Some(server)
    }

    /// The connection string of the test database (Unix socket, user `postgres`).
    #[must_use]
    pub fn url(&self) -> String {
        format!(
            "host={} user={PG_USER} dbname={DATABASE}",
            self.dir.display()
        )
    }

    /// Starts `supervisor daemon` on this board, without waiting: host `host`, state dir
    /// `state_dir`, `--lease LEASE`, no warm conductors, and `extra` arguments.
    #[must_use]
    pub fn spawn_daemon(
        &self,
        env: &TestEnv,
        state_dir: &Path,
        (host, lease): (&str, &str),
        extra: &[&str],
    ) -> Run {
        let url = self.url();
        let mut args = vec![
            "daemon",
            "--state-dir",
            path_str(state_dir),
            "--board",
            &url,
            "--host",
            host,
            "--lease",
            lease,
            "--warm",
            "0",
        ];
        args.extend_from_slice(extra);
        env.spawn(&args)
    }

    /// Restarts the server (`pg_ctl restart -m fast`: every connection is cut) and waits until
    /// it accepts connections again.
    pub fn restart(&self) {
        self.pg_ctl("restart");
        self.wait_ready();
    }

    /// Stops the server (`pg_ctl stop -m fast`): every connection is cut, and connecting
    /// fails until [`Postgres::start_again`].
    pub fn stop(&self) {
        self.pg_ctl("stop");
    }

    /// Starts the server [`Postgres::stop`] stopped and waits until it accepts connections.
    pub fn start_again(&self) {
        self.pg_ctl("start");
        self.wait_ready();
    }

    /// Runs one SQL statement on the test database with `psql` (unaligned, tuples only) and
    /// returns what it printed; panics if it fails.
    #[must_use]
    pub fn sql(&self, statement: &str) -> String {
        let output = self.command(
            "psql",
            &[
                "-h",
                path_str(&self.dir),
                "-d",
                DATABASE,
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                statement,
            ],
        );
        assert!(
            output.status.success(),
            "psql {statement:?} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `pg_ctl ACTION` with the server's options; waits (`-w`) within [`DEADLINE`].
    fn pg_ctl(&self, action: &str) {
        let options = format!(
            "-c listen_addresses= -k {} -c fsync=off -c full_page_writes=off",
            self.dir.display()
        );
        let log = self.dir.join("server.log");
        let timeout = DEADLINE.as_secs().to_string();
        self.run_as_postgres(
            "pg_ctl",
            &[
                "-D",
                path_str(&self.data_dir()),
                "-l",
                path_str(&log),
                "-o",
                &options,
                "-m",
                "fast",
                "-w",
                "-t",
                &timeout,
                action,
            ],
        );
    }

    /// Polls `pg_isready` on the socket until it says yes (bounded by [`DEADLINE`]).
    fn wait_ready(&self) {
        wait_for(DEADLINE, "PostgreSQL to accept connections", || {
            let output = self.command("pg_isready", &["-h", path_str(&self.dir), "-q"]);
            if output.status.success() {
                Ok(())
            } else {
                Err(output.status)
            }
        });
    }

    /// Runs a server program as `postgres`, panicking with its output and the server log if it
    /// fails.
    fn run_as_postgres(&self, program: &str, args: &[&str]) {
        let output = self.command(program, args);
        assert!(
            output.status.success(),
            "{program} {args:?} failed ({}):\n{}{}\n--- server log ---\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
        );
    }

    fn command(&self, program: &str, args: &[&str]) -> Output {
        Command::new("runuser")
            .args(["-u", PG_USER, "--"])
            .arg(self.bin.join(program))
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|err| panic!("cannot run {program} through runuser: {err}"))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.command(
            "pg_ctl",
            &["-D", path_str(&self.data_dir()), "-m", "immediate", "stop"],
        );
        if std::env::var_os("KEEP_TEST_DIRS").is_some_and(|v| v == "1") {
            eprintln!("keeping PostgreSQL dir {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The `bin` dir of the newest PostgreSQL under [`PG_ROOT`] that has `initdb`.
fn find_bin_dir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(PG_ROOT)
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// A fresh `/tmp/svpg-XXXXXX` (short: the server's socket lives in it).
fn make_dir() -> PathBuf {
    for _ in 0..100 {
        let token = crate::unique_token();
        let short = &token[token.len().saturating_sub(6)..];
        let dir = PathBuf::from(format!("/tmp/svpg-{short}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => panic!("cannot create {}: {err}", dir.display()),
        }
    }
    panic!("cannot find a free /tmp/svpg-XXXXXX name");
}
