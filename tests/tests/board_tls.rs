//! TLS to the job board: with `--board-ca`, every connection of the daemon is TLS, the board's
//! certificate verified against that CA and the host name of the URL; a certificate that does
//! not verify, or a server without TLS, stops the daemon at start with the reason.
//!
//! Each test starts its own PostgreSQL, listening on 127.0.0.1 with TLS on and a certificate
//! for `localhost` signed by a CA made for the test ([`TestCa`]); it skips where the server
//! cannot run and fails there under `CI=true`. Build the binaries first: `cargo build
//! --workspace --bins`.

use std::path::Path;
use tests::postgres::{Postgres, TestCa, daemon_args};
use tests::{DEADLINE, Run, TestEnv, cli_at, wait_daemon_ready, wait_for};

/// `daemon --board URL --host NAME` on `ENV/NAME`, with `extra` arguments, not waited for.
fn spawn_daemon(env: &TestEnv, url: &str, name: &str, extra: &[&str]) -> Run {
    spawn_daemon_with_env(env, url, name, extra, &[])
}

/// [`spawn_daemon`] with the variables `set` in its environment.
fn spawn_daemon_with_env(
    env: &TestEnv,
    url: &str,
    name: &str,
    extra: &[&str],
    set: &[(&str, &str)],
) -> Run {
    let state_dir = env.path(name);
    let mut args = daemon_args(url, &state_dir, (name, "1s"));
    args.extend_from_slice(extra);
    env.spawn_with_env(&args, set, &[])
}

/// The test's CA written to `ENV/ca.pem`.
fn ca_file(env: &TestEnv, ca: &TestCa) -> String {
    let path = env.write("ca.pem", &ca.ca_pem);
    path.to_str().expect("UTF-8").to_owned()
}

/// How many of the supervisor's connections to `pg` use TLS, and how many do not.
fn tls_connections(pg: &Postgres) -> (u32, u32) {
    let counts = pg.sql(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
         FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
         WHERE a.application_name LIKE 'supervisor-%'",
    );
    let mut fields = counts.trim().split('|').map(|n| n.parse().unwrap_or(0));
    (fields.next().unwrap_or(0), fields.next().unwrap_or(0))
}

/// A daemon with `--board-ca` joins a board over TLS: every connection it opens is TLS, its
/// store's too (`--store` on the board's URL takes the board's CA), and a job submitted there
/// runs through the board (the submit and its write-ahead are board commits) to its end.
#[test]
fn a_board_over_tls_is_verified_against_the_ca_given() {
    let ca = TestCa::new();
    let Some(pg) = Postgres::start_tls("a_board_over_tls_is_verified_against_the_ca_given", &ca)
    else {
        return;
    };
    let env = TestEnv::new();
    let ca_path = ca_file(&env, &ca);
    let url = pg.tcp_url("localhost", "");
    let mut daemon = spawn_daemon(&env, &url, "a", &["--board-ca", &ca_path, "--store", &url]);
    let state_dir = env.path("a");
    wait_daemon_ready(&env, &state_dir, &mut daemon);

    let (code, out, err) = cli_at(&env, &state_dir, &["hosts", "--json"], DEADLINE);
    assert_eq!(code, 0, "hosts: {out} {err}");
    assert!(out.contains("\"alive\""), "{out}");

    let job = env.job(
        "one.toml",
        "name = \"over-tls\"",
        "[[task]]\nname = \"t\"\nrun = \"echo $JOB_ID > \\\"$SVT_DIR/ran\\\"\"\n",
    );
    let (code, out, err) = cli_at(
        &env,
        &state_dir,
        &["submit", job.to_str().expect("UTF-8"), "--wait"],
        DEADLINE,
    );
    assert_eq!(code, 0, "submit --wait: {out} {err}\n{}", daemon.report());
    let id = out.trim().lines().next().unwrap_or_default().to_owned();
    assert_eq!(
        env.read("ran").trim(),
        id,
        "the task ran once, for job {id}"
    );
    let on_board = pg.sql(&format!("SELECT state FROM jobs WHERE id = '{id}'"));
    assert_eq!(
        on_board.trim(),
        "success",
        "the board's journal has the job's end"
    );

    let stored = pg.sql(&format!("SELECT state FROM store_a.jobs WHERE id = '{id}'"));
    assert_eq!(
        stored.trim(),
        "success",
        "the store in the board's database"
    );

    wait_for(
        DEADLINE,
        "the daemon's connections to show in pg_stat_ssl",
        || match tls_connections(&pg) {
            (tls, 0) if tls >= 3 => Ok(()),
            other => Err(other),
        },
    );
    let store_tls = pg.sql(
        "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
         WHERE a.application_name = 'supervisor-store'",
    );
    assert_eq!(store_tls.trim(), "t", "the store's connection is TLS");
}

/// Exit code of a daemon that cannot join its board (`shared::exit` 10: another error).
const CANNOT_JOIN: i32 = 10;
/// Exit code of bad arguments (`shared::exit::INVALID_INPUT`).
const INVALID_INPUT: i32 = 2;

/// Starts a daemon that must not join `url` (with `set` in its environment), and returns what
/// it said; it exits `code`.
fn refused(
    env: &TestEnv,
    (url, name): (&str, &str),
    extra: &[&str],
    set: &[(&str, &str)],
    code: i32,
) -> String {
    let mut daemon = spawn_daemon_with_env(env, url, name, extra, set);
    let exit = daemon.wait_exit(DEADLINE);
    let err = daemon.stderr();
    assert_eq!(exit, code, "exit code; stderr:\n{err}");
    assert!(!Path::new(&env.path(name)).join("control.sock").exists());
    err
}

/// A certificate that does not verify stops the daemon at start with the reason: a CA the
/// daemon was not given (`sslmode=require` trusts the system's roots only: here another CA's,
/// through `SSL_CERT_FILE`), a name the certificate does not carry, TLS asked of a server that
/// offers none (a Unix socket), and a `--board-ca` without a certificate.
#[test]
fn a_board_whose_certificate_does_not_verify_is_refused() {
    let ca = TestCa::new();
    let Some(pg) = Postgres::start_tls("a_board_whose_certificate_does_not_verify_is_refused", &ca)
    else {
        return;
    };
    let env = TestEnv::new();
    let ca_path = ca_file(&env, &ca);

    let other = env.write("other-ca.pem", &TestCa::new().ca_pem);
    let other = other.to_str().expect("UTF-8");
    let url = pg.tcp_url("localhost", "sslmode=require");
    let err = refused(
        &env,
        (&url, "a"),
        &[],
        &[("SSL_CERT_FILE", other)],
        CANNOT_JOIN,
    );
    assert!(err.contains("cannot connect to the board at"), "{err}");
    assert!(
        err.contains("invalid peer certificate: UnknownIssuer"),
        "{err}"
    );

    let url = pg.tcp_url("127.0.0.1", "");
    let err = refused(
        &env,
        (&url, "b"),
        &["--board-ca", &ca_path],
        &[],
        CANNOT_JOIN,
    );
    assert!(err.contains("not valid for name"), "{err}");

    let url = pg.url();
    let err = refused(
        &env,
        (&url, "c"),
        &["--board-ca", &ca_path],
        &[],
        CANNOT_JOIN,
    );
    assert!(err.contains("cannot connect to the board at"), "{err}");
    assert!(err.to_lowercase().contains("tls"), "{err}");

    let junk = env.write("junk.pem", "not a certificate\n");
    let url = pg.tcp_url("localhost", "");
    let junk = ["--board-ca", junk.to_str().expect("UTF-8")];
    let err = refused(&env, (&url, "d"), &junk, &[], INVALID_INPUT);
    assert!(err.contains("holds no certificate"), "{err}");
}
