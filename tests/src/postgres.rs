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
//! [`Postgres::start_tls`] starts one that also listens on TCP at 127.0.0.1 with TLS on, its
//! certificate (for `localhost`) signed by a CA made for the test ([`TestCa`]).
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
    /// Its port: of the socket's name (`.s.PGSQL.PORT`), and of TCP with [`Postgres::start_tls`].
    port: u16,
    /// Whether it listens on 127.0.0.1 with TLS.
    tls: bool,
}

/// The port of a server on the Unix socket only (no TCP: nothing to collide on).
const SOCKET_PORT: u16 = 5432;

/// A CA made for one test, and the server certificate it signed.
pub struct TestCa {
    /// The CA's certificate (PEM): what `--board-ca` names.
    pub ca_pem: String,
    /// The server's certificate, for `localhost` (PEM).
    pub cert_pem: String,
    /// The server's private key (PEM).
    pub key_pem: String,
}

impl TestCa {
    /// A fresh CA and a certificate it signed for `localhost`.
    #[must_use]
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(
            DnType::CommonName,
            format!("supervisor test CA {}", crate::unique_token()),
        );
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);
        let params = CertificateParams::new(vec!["localhost".to_owned()]).expect("server params");
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &issuer).expect("server certificate");
        Self {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl Postgres {
    /// Starts a fresh server with an empty [`DATABASE`]; `None` (after
    /// [`skip_unless_ci`](crate::skip_unless_ci)) where this host cannot run one.
    #[must_use]
    pub fn start(test: &str) -> Option<Self> {
        let server = Self::init(test)?;
        server.pg_ctl("start");
        server.ready()
    }

    /// Starts a fresh server as [`Postgres::start`] does that also listens on 127.0.0.1 (a
    /// free port) with TLS on, presenting `ca`'s certificate for `localhost`.
    #[must_use]
    pub fn start_tls(test: &str, ca: &TestCa) -> Option<Self> {
        let mut server = Self::init(test)?;
        server.tls = true;
        let data = server.data_dir();
        for (name, pem) in [("server.crt", &ca.cert_pem), ("server.key", &ca.key_pem)] {
            let path = data.join(name);
            std::fs::write(&path, pem).unwrap_or_else(|err| panic!("cannot write {name}: {err}"));
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap_or_else(|err| panic!("cannot chmod {name}: {err}"));
            // The server reads its key only when its own user owns it: the data dir's owner.
            let owner = std::fs::metadata(&data)
                .unwrap_or_else(|err| panic!("cannot stat {}: {err}", data.display()));
            let (uid, gid) = (
                std::os::unix::fs::MetadataExt::uid(&owner),
                std::os::unix::fs::MetadataExt::gid(&owner),
            );
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                .unwrap_or_else(|err| panic!("cannot chown {name}: {err}"));
        }
        // A port that was free a moment ago: another test may take it first, so a start that
        // cannot bind is tried again on another one.
        for _ in 0..20 {
            server.port = free_port();
            let args = server.pg_ctl_args("start");
            let output = server.command(
                "pg_ctl",
                &args.iter().map(String::as_str).collect::<Vec<_>>(),
            );
            if output.status.success() {
                return server.ready();
            }
            let log = std::fs::read_to_string(server.dir.join("server.log")).unwrap_or_default();
            assert!(
                log.contains("could not bind") || log.contains("could not create any TCP/IP"),
                "pg_ctl start failed ({}):\n{}\n--- server log ---\n{log}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        panic!("no free TCP port for PostgreSQL after 20 tries");
    }

    /// A TCP connection string to the server, for `host` (`localhost`, `127.0.0.1`), with
    /// `extra` settings (`sslmode=require`).
    #[must_use]
    pub fn tcp_url(&self, host: &str, extra: &str) -> String {
        format!(
            "host={host} port={} user={PG_USER} dbname={DATABASE} {extra}",
            self.port
        )
    }

    /// Waits until the started server accepts connections, and creates the test's database.
    fn ready(self) -> Option<Self> {
        self.wait_ready();
        let port = self.port.to_string();
        self.run_as_postgres(
            "createdb",
            &["-h", path_str(&self.dir), "-p", &port, DATABASE],
        );
        Some(self)
    }

    /// A fresh data dir, `initdb`-ed; `None` (after [`skip_unless_ci`](crate::skip_unless_ci))
    /// where this host cannot run a server.
    fn init(test: &str) -> Option<Self> {
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
        let server = Self {
            bin,
            dir,
            port: SOCKET_PORT,
            tls: false,
        };
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
        Some(server)
    }

    /// The connection string of the test database (Unix socket, user `postgres`).
    #[must_use]
    pub fn url(&self) -> String {
        self.url_of(DATABASE)
    }

    /// The connection string of the server's database `database` (Unix socket, user
    /// `postgres`).
    #[must_use]
    pub fn url_of(&self, database: &str) -> String {
        format!(
            "host={} port={} user={PG_USER} dbname={database}",
            self.dir.display(),
            self.port
        )
    }

    /// Starts `supervisor daemon` on this board, without waiting: host `host`, state dir
    /// `state_dir`, `--lease LEASE`, no warm conductors, and `extra` arguments; with
    /// [`stores_on_the_board`], its store in the board's database too.
    #[must_use]
    pub fn spawn_daemon(
        &self,
        env: &TestEnv,
        state_dir: &Path,
        (host, lease): (&str, &str),
        extra: &[&str],
    ) -> Run {
        let url = self.url();
        let mut args = daemon_args(&url, state_dir, (host, lease));
        args.extend_from_slice(extra);
        if stores_on_the_board() && !extra.contains(&"--store") {
            args.extend_from_slice(&["--store", &url]);
        }
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
                "-p",
                &self.port.to_string(),
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

    /// Polls `sql` (one value) until it reads `want` (trimmed), within `deadline`.
    pub fn wait_sql(&self, deadline: std::time::Duration, sql: &str, want: &str) {
        wait_for(deadline, &format!("{sql} to read {want}"), || {
            let seen = self.sql(sql);
            if seen.trim() == want {
                Ok(())
            } else {
                Err(seen)
            }
        });
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `pg_ctl ACTION` with the server's options; waits (`-w`) within [`DEADLINE`].
    fn pg_ctl(&self, action: &str) {
        let args = self.pg_ctl_args(action);
        self.run_as_postgres(
            "pg_ctl",
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        );
    }

    /// The arguments of `pg_ctl ACTION`: the server's options, wait (`-w`) within [`DEADLINE`].
    fn pg_ctl_args(&self, action: &str) -> Vec<String> {
        let listen = if self.tls {
            "-c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key"
        } else {
            "-c listen_addresses="
        };
        let options = format!(
            "{listen} -c port={} -k {} -c fsync=off -c full_page_writes=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log");
        [
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
            &DEADLINE.as_secs().to_string(),
            action,
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// Polls `pg_isready` on the socket until it says yes (bounded by [`DEADLINE`]).
    fn wait_ready(&self) {
        wait_for(DEADLINE, "PostgreSQL to accept connections", || {
            let port = self.port.to_string();
            let output = self.command(
                "pg_isready",
                &["-h", path_str(&self.dir), "-p", &port, "-q"],
            );
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

/// The arguments of `supervisor daemon` on the board `url`: state dir `state_dir`, host `host`,
/// `--lease LEASE`, no warm conductors.
#[must_use]
pub fn daemon_args<'a>(
    url: &'a str,
    state_dir: &'a Path,
    (host, lease): (&'a str, &'a str),
) -> Vec<&'a str> {
    vec![
        "daemon",
        "--state-dir",
        path_str(state_dir),
        "--board",
        url,
        "--host",
        host,
        "--lease",
        lease,
        "--warm",
        "0",
    ]
}

/// Whether the board tests' daemons keep their stores in the board's own database
/// (`SVT_BOARD_STORE=postgres`: `daemon --store` with the board's URL, schema `store_HOST`), so
/// that the board's behaviour is proven on both of the store's databases (`.ci/run`).
#[must_use]
pub fn stores_on_the_board() -> bool {
    std::env::var("SVT_BOARD_STORE").is_ok_and(|store| store == "postgres")
}

/// A TCP port of 127.0.0.1 free at this moment.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|err| panic!("cannot find a free port: {err}"))
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
