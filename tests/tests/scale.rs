//! Scale and latency of the everyday clients: `ls` of a store far larger than one reply frame
//! (the list streams in pages), and `submit --wait` (it follows the job's events instead of
//! polling). Each test prints its figures (`cargo test -p tests --test scale -- --nocapture`);
//! none asserts a time, only that every answer is whole and right.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use rusqlite::Connection;
use shared::protocol::client::{ClientReply, ClientRequest, ListQuery};
use shared::protocol::codec::decode_body;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};
use tests::{DEADLINE, LONG_DEADLINE, TestEnv, cli_at, start_daemon_at, submit_at, wait_for};

/// Finished jobs in the fixture store: at ~120 bytes a job, many times one 1 MiB frame.
const HISTORY: usize = 60_000;

/// `--wait` runs timed.
const WAIT_RUNS: usize = 30;

/// Runs `supervisor ARGS --state-dir DIR` under `deadline`: (exit code, stdout, stderr).
fn cli(env: &TestEnv, args: &[&str], deadline: Duration) -> (i32, String, String) {
    cli_at(env, &env.state_dir(), args, deadline)
}

/// Stops the daemon with `shutdown` and waits for its exit.
fn shutdown(env: &TestEnv, daemon: &mut tests::Run) {
    let (code, out, err) = cli(env, &["shutdown"], DEADLINE);
    assert_eq!(code, 0, "shutdown: {out:?} {err:?}");
    assert_eq!(daemon.wait_exit(DEADLINE), 0, "{}", daemon.report());
}

/// Copies the finished job `template` (and its tasks) `count` times in one transaction, with
/// fresh ids and submission order after every existing job: the history of a busy host, built
/// in a second instead of by running the jobs.
fn fill_history(store: &Path, template: &str, count: usize) {
    let mut conn = Connection::open(store).expect("open the store");
    let tx = conn.transaction().expect("begin");
    let count = i64::try_from(count).expect("count fits");
    tx.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?2)
         INSERT INTO jobs (id, seq, name, source, spec, state, reason, created_ms, started_ms,
                           ended_ms, containment, last_report)
         SELECT printf('%08x', 268435456 + n.i), (SELECT MAX(seq) FROM jobs) + n.i,
                'history-' || n.i, j.source, j.spec, j.state, j.reason, j.created_ms,
                j.started_ms, j.ended_ms, j.containment, j.last_report
         FROM n, jobs j WHERE j.id = ?1",
        rusqlite::params![template, count],
    )
    .expect("copy the job");
    tx.execute(
        "INSERT INTO tasks (job_id, idx, name, has_revert, state, attempts, exec_outcome,
                            result, error, started_ms, ended_ms)
         SELECT j.id, t.idx, t.name, t.has_revert, t.state, t.attempts, t.exec_outcome,
                t.result, t.error, t.started_ms, t.ended_ms
         FROM jobs j, tasks t WHERE j.name LIKE 'history-%' AND t.job_id = ?1",
        rusqlite::params![template],
    )
    .expect("copy the tasks");
    tx.commit().expect("commit");
}

/// The ids of `ls ARGS --json`, asserting exit 0 and one valid JSON array.
fn ls_ids(env: &TestEnv, args: &[&str]) -> Vec<String> {
    let mut full = vec!["ls", "--json"];
    full.extend_from_slice(args);
    let (code, out, err) = cli(env, &full, LONG_DEADLINE);
    assert_eq!(code, 0, "ls {args:?}: stderr {err:?}");
    let value: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ls {args:?} JSON: {e}"));
    value
        .as_array()
        .unwrap_or_else(|| panic!("ls {args:?}: not an array"))
        .iter()
        .map(|job| job["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The median and the 90th percentile of `runs` runs of `supervisor ARGS`, each asserted to
/// exit 0.
fn timed(env: &TestEnv, args: &[&str], runs: usize) -> (Duration, Duration) {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            let (code, _, err) = cli(env, args, LONG_DEADLINE);
            assert_eq!(code, 0, "{args:?}: {err:?}");
            start.elapsed()
        })
        .collect();
    times.sort();
    (times[runs / 2], times[runs * 9 / 10])
}

/// `List { all }` as a version 2 client sends it, on a raw connection: the one reply.
fn list_in_version_2(env: &TestEnv, all: bool) -> ClientReply {
    let mut socket = UnixStream::connect(env.state_dir().join("control.sock")).expect("connect");
    socket
        .set_read_timeout(Some(LONG_DEADLINE))
        .expect("read timeout");
    let hello = ClientRequest::Hello {
        protocol_version: 2,
    };
    socket
        .write_all(&hello.encode(2).expect("hello"))
        .expect("send the hello");
    assert_eq!(
        read_reply(&mut socket),
        ClientReply::Hello {
            protocol_version: 2
        }
    );
    let list = ClientRequest::List {
        all,
        query: ListQuery::default(),
    };
    socket
        .write_all(&list.encode(2).expect("list"))
        .expect("send the request");
    read_reply(&mut socket)
}

fn read_reply(socket: &mut UnixStream) -> ClientReply {
    let mut header = [0_u8; 4];
    socket.read_exact(&mut header).expect("a reply header");
    let mut body = vec![0_u8; u32::from_be_bytes(header) as usize];
    socket.read_exact(&mut body).expect("a reply body");
    decode_body(&body).expect("a reply")
}

/// A store of `count` finished jobs and their template (the first, returned), run once by a
/// daemon and copied with SQL ([`fill_history`]); no daemon runs on it after.
fn history_of(env: &TestEnv, count: usize) -> String {
    let mut daemon = start_daemon_at(env, &env.state_dir(), &[]);
    let file = env.job(
        "one.toml",
        "name = \"one\"",
        "[[task]]\nname = \"t\"\nrun = \"true\"\n",
    );
    let template = submit_at(env, &env.state_dir(), &file);
    wait_for(DEADLINE, "the template job to end", || {
        let (_, out, _) = cli(env, &["status", &template, "--json"], DEADLINE);
        out.contains("\"success\"").then_some(()).ok_or(out)
    });
    shutdown(env, &mut daemon);
    let start = Instant::now();
    fill_history(&env.state_dir().join("state.db"), &template, count);
    println!(
        "fixture: {count} finished jobs inserted in {:?}",
        start.elapsed()
    );
    template
}

#[test]
fn ls_streams_a_history_larger_than_a_frame() {
    let env = TestEnv::new();
    let template = history_of(&env, HISTORY);

    let mut daemon = start_daemon_at(&env, &env.state_dir(), &[]);
    let start = Instant::now();
    let ids = ls_ids(&env, &["--all"]);
    println!(
        "ls --all --json of {} jobs: {:?}",
        ids.len(),
        start.elapsed()
    );
    assert_eq!(ids.len(), HISTORY + 1, "every job listed once");
    assert_eq!(ids.first(), Some(&template), "in submission order");
    assert_eq!(
        ids.last().map(String::as_str),
        Some(format!("{:08x}", 268_435_456 + HISTORY).as_str())
    );
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no job listed twice");

    // The filters apply in the daemon, page by page.
    let last: Vec<String> = (HISTORY - 49..=HISTORY)
        .map(|i| format!("{:08x}", 268_435_456 + i))
        .collect();
    assert_eq!(
        ls_ids(&env, &["--all", "--limit", "50"]),
        last,
        "the 50 most recent"
    );
    assert_eq!(ls_ids(&env, &["--name", "history-1234?"]).len(), 10);
    assert_eq!(ls_ids(&env, &["--name", "o[n]e"]), Vec::<String>::new());
    assert_eq!(
        ls_ids(&env, &["--state", "killed", "--limit", "5"]),
        Vec::<String>::new()
    );
    assert_eq!(
        ls_ids(&env, &["--state", "success", "--limit", "3"]).len(),
        3
    );
    assert_eq!(ls_ids(&env, &["--since", "1h"]).len(), HISTORY + 1);
    assert_eq!(ls_ids(&env, &[]), Vec::<String>::new(), "no live job");
    let (code, out, err) = cli(&env, &["ls", "--all"], LONG_DEADLINE);
    assert_eq!(code, 0, "{err:?}");
    assert_eq!(
        out.lines().count(),
        HISTORY + 2,
        "a header and one line a job"
    );

    // A version 2 client gets its one frame, or an error that says what to do.
    match list_in_version_2(&env, true) {
        ClientReply::Error { message, .. } => assert!(message.contains("upgrade"), "{message}"),
        other => panic!("ls --all in version 2 of {HISTORY} jobs: {other:?}"),
    }
    assert_eq!(
        list_in_version_2(&env, false),
        ClientReply::Jobs(Vec::new())
    );

    for args in [
        &["ls"][..],
        &["ls", "--all", "--limit", "50"],
        &["status", template.as_str()],
    ] {
        let (p50, p90) = timed(&env, args, 20);
        println!(
            "{args:?} with {} jobs in the store: p50 {p50:?}, p90 {p90:?}",
            HISTORY + 1
        );
    }
    shutdown(&env, &mut daemon);
}

/// A prune of more jobs than one reply can list (130,000, about 1.2 MB of ids against the
/// protocol's 1 MiB frame) succeeds and says how many it deleted, listing the first 100,000,
/// instead of a closed connection after the deed.
#[test]
fn a_prune_of_more_jobs_than_one_reply_lists_counts_them_all() {
    const MANY: usize = 130_000;
    let env = TestEnv::new();
    let template = history_of(&env, MANY);

    let mut daemon = start_daemon_at(&env, &env.state_dir(), &[]);
    let start = Instant::now();
    let (code, out, err) = cli(
        &env,
        &["prune", "--older-than", "0s", "--json"],
        LONG_DEADLINE,
    );
    println!("prune of {} jobs: {:?}", MANY + 1, start.elapsed());
    assert_eq!(code, 0, "prune: {err}");
    let pruned: serde_json::Value = serde_json::from_str(&out).expect("prune --json is JSON");
    assert_eq!(pruned["count"], MANY + 1, "{}", &out[..out.len().min(300)]);
    let listed = pruned["jobs"].as_array().map_or(0, Vec::len);
    assert_eq!(listed, 100_000);
    assert_eq!(pruned["jobs"][0], template.as_str(), "in submission order");
    assert_eq!(
        ls_ids(&env, &["--all"]),
        Vec::<String>::new(),
        "all of them gone"
    );
    let (code, out, err) = cli(&env, &["prune", "--older-than", "0s"], DEADLINE);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("pruned 0 job(s)"), "{out}");
    shutdown(&env, &mut daemon);
}

#[test]
fn submit_wait_returns_at_the_end_of_the_job() {
    let env = TestEnv::new();
    let mut daemon = start_daemon_at(&env, &env.state_dir(), &[]);
    let file = env.job(
        "one.toml",
        "name = \"one\"",
        "[[task]]\nname = \"t\"\nrun = \"true\"\n",
    );
    let path = file.to_str().expect("UTF-8 paths");
    let (code, out, err) = cli(&env, &["submit", path, "--wait"], DEADLINE);
    assert_eq!(code, 0, "submit --wait: {out:?} {err:?}");
    assert!(err.contains("ended: success"), "{err:?}");
    let (p50, p90) = timed(&env, &["submit", path, "--wait"], WAIT_RUNS);
    let (v50, _) = timed(&env, &["--version"], WAIT_RUNS);
    println!(
        "submit --wait of a one-task `true` job, whole command, {WAIT_RUNS} runs: p50 {p50:?}, p90 {p90:?} (`supervisor --version`: p50 {v50:?})"
    );
    // `wait` of a job that is over already answers at once.
    let id = out.lines().next().unwrap_or_default().trim().to_owned();
    let (code, _, err) = cli(&env, &["wait", &id], DEADLINE);
    assert_eq!(code, 0, "wait: {err:?}");
    shutdown(&env, &mut daemon);
}
