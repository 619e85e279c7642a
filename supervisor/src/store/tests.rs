//! Store tests: compare-and-set, the guarded orders, two writers, migration, the actor.

use super::actor::tests::{
    a_call_that_needs_no_transaction_runs_inside_a_batch,
    a_panic_in_a_write_outside_a_batch_leaves_the_store_usable,
    a_read_before_the_first_write_is_answered_at_once, concurrent_calls_are_answered_committed,
    no_answer_is_sent_before_the_commit_that_covers_it,
    one_call_fails_alone_and_the_others_of_its_batch_commit,
};
use super::journal::tests::{
    a_claimed_job_is_imported_pending, a_rescued_job_is_imported_crashed_with_its_reverts_pending,
};
use super::operators::tests::{
    a_hook_is_begun_once, an_order_is_stored_with_its_transition_and_as_the_last_order,
};
use super::queries::tests::{
    pages_limits_and_globs, summaries_are_those_of_the_list_and_skip_unknown_ids,
};
use super::reports::tests::{
    hard_end_marks_running_as_killed_and_lists_pending_last_first,
    illegal_report_is_skipped_but_held, reports_apply_once_and_replays_are_skipped,
};
use super::*;
use rusqlite::Connection;
use shared::protocol::conductor::{JobEvent, Phase, Report, StepOutcome};

/// A throwaway directory, removed at drop.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new() -> Self {
        let path = std::env::temp_dir().join(format!(
            "store-test-{}-{:08x}",
            std::process::id(),
            random_u32()
        ));
        std::fs::create_dir_all(&path).expect("mkdir");
        Self(path)
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The store's behavioural suite: every case runs on SQLite (a test of its own each) and on
/// PostgreSQL (all in [`the_suite_on_postgres`], on one server, a fresh database each).
macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        /// Every case, by name.
        const SUITE: &[(&str, fn(&Backend))] = &[$((stringify!($case), $case)),*];

        /// Each case of the suite on SQLite.
        mod on_sqlite {
            $(
                #[test]
                fn $case() {
                    super::$case(&super::Backend::sqlite());
                }
            )*
        }
    };
}

suite!(
    transition_is_compare_and_set,
    revert_needs_a_stopped_job_with_a_pending_revert,
    resume_refuses_a_job_that_began_reverting,
    hard_end_acts_only_on_a_live_job,
    racing_orders_on_one_job_start_it_once,
    two_stores_on_one_database_write_concurrently,
    a_gap_in_the_reports_is_refused_whole,
    a_bad_job_id_is_its_own_error,
    state_lists_follow_job_state,
    prune_deletes_finished_jobs_and_keeps_live_recent_and_owing_ones,
    output_pages_are_bounded_and_continue_where_they_stopped,
    a_resume_plan_reverts_the_interrupted_task_then_runs_it_again,
    the_store_knows_its_size,
    reports_apply_once_and_replays_are_skipped,
    hard_end_marks_running_as_killed_and_lists_pending_last_first,
    illegal_report_is_skipped_but_held,
    summaries_are_those_of_the_list_and_skip_unknown_ids,
    pages_limits_and_globs,
    an_order_is_stored_with_its_transition_and_as_the_last_order,
    a_hook_is_begun_once,
    a_rescued_job_is_imported_crashed_with_its_reverts_pending,
    a_claimed_job_is_imported_pending,
    one_call_fails_alone_and_the_others_of_its_batch_commit,
    no_answer_is_sent_before_the_commit_that_covers_it,
    a_read_before_the_first_write_is_answered_at_once,
    a_call_that_needs_no_transaction_runs_inside_a_batch,
    a_panic_in_a_write_outside_a_batch_leaves_the_store_usable,
    concurrent_calls_are_answered_committed,
);

/// Each case of the suite on one PostgreSQL server, a fresh database each; the failed cases
/// are named together at the end. Skipped without a server on a developer's machine, a
/// failure under `CI=true` (`.ci/run` installs one).
#[test]
fn the_suite_on_postgres() {
    let Some(server) = harness::postgres::Postgres::start("the_suite_on_postgres") else {
        return;
    };
    let mut failed = Vec::new();
    for (i, (name, case)) in SUITE.iter().enumerate() {
        let database = format!("case{i}");
        let _created = server.sql(&format!("CREATE DATABASE {database}"));
        let backend = Backend::Postgres(server.url_of(&database));
        if std::panic::catch_unwind(|| case(&backend)).is_err() {
            failed.push(*name);
        }
    }
    assert!(failed.is_empty(), "failed on PostgreSQL: {failed:?}");
}

/// Where a case's stores live: every [`Backend::open`] is a new connection to one database.
pub(super) enum Backend {
    Sqlite(TempDir),
    /// A connection string.
    Postgres(String),
}

impl Backend {
    pub(super) fn sqlite() -> Self {
        Self::Sqlite(TempDir::new())
    }

    /// The state dir of a SQLite backend.
    pub(super) fn dir(&self) -> &Path {
        match self {
            Self::Sqlite(dir) => dir.path(),
            Self::Postgres(_) => panic!("a PostgreSQL backend has no dir"),
        }
    }

    pub(super) fn open(&self) -> Store {
        match self {
            Self::Sqlite(dir) => Store::open(dir.path()).expect("open SQLite"),
            Self::Postgres(url) => {
                let at = PostgresStore::new(url, PostgresStore::DEFAULT_SCHEMA, None).expect("url");
                Store::open_postgres(&at, Holder::Shared).expect("open PostgreSQL")
            }
        }
    }
}

const TWO_TASKS: &str = "[[task]]\nname = \"a\"\nrun = \"true\"\nrevert = \"true\"\n[[task]]\nname = \"b\"\nrun = \"true\"\nrevert = \"true\"\n";

fn spec() -> JobSpec {
    JobSpec::parse(TWO_TASKS, "t.toml", "t").expect("spec")
}

fn fresh() -> (TempDir, Store) {
    let dir = TempDir::new();
    let store = Store::open(dir.path()).expect("open");
    (dir, store)
}

fn report(seq: u64, event: JobEvent) -> Report {
    Report { seq, event }
}

fn starting(seq: u64, task: u32, phase: Phase) -> Report {
    report(
        seq,
        JobEvent::TaskStarting {
            task,
            phase,
            attempt: 1,
        },
    )
}

fn finished(seq: u64, task: u32, phase: Phase) -> Report {
    report(
        seq,
        JobEvent::TaskFinished {
            task,
            phase,
            outcome: StepOutcome::Success {
                result: String::new(),
            },
        },
    )
}

/// A job killed after task `a` succeeded: task `a`'s revert is pending.
fn killed_with_pending_revert(store: &Store) -> JobId {
    let batch = [
        starting(1, 0, Phase::Execute),
        finished(2, 0, Phase::Execute),
    ];
    hard_ended_after(store, &batch, JobState::Killed, "kill requested")
}

/// A job that ran `batch` and then ended `end` (killed or crashed) with `reason`.
fn hard_ended_after(store: &Store, batch: &[Report], end: JobState, reason: &str) -> JobId {
    let id = store.create_job(&spec(), "t.toml", None).expect("create");
    store
        .transition_job(&id, &[JobState::Pending], JobState::Running, None)
        .expect("running");
    store.apply_reports(&id, batch).expect("apply");
    store.record_hard_end(&id, end, reason).expect("hard end");
    id
}

fn job_transitions(store: &Store, id: &JobId) -> Vec<(Option<String>, String, Option<String>)> {
    store
        .db()
        .query(
            "SELECT from_state, to_state, reason FROM transitions WHERE job_id = ?1 AND task_idx IS NULL ORDER BY id",
            args![id.as_str()],
        )
        .expect("query")
        .iter()
        .map(|row| {
            (
                row.get(0).expect("from"),
                row.get(1).expect("to"),
                row.get(2).expect("reason"),
            )
        })
        .collect()
}

fn transition_is_compare_and_set(backend: &Backend) {
    let store = backend.open();
    let id = store.create_job(&spec(), "t.toml", None).expect("create");
    let was = store
        .transition_job(&id, &[JobState::Pending], JobState::Running, Some("go"))
        .expect("pending -> running");
    assert_eq!(was, JobState::Pending);
    // The same order again finds the job moved on: refused, not a no-op success.
    let again = store.transition_job(&id, &[JobState::Pending], JobState::Running, None);
    assert!(
        matches!(
            again,
            Err(StoreError::WrongState {
                state: JobState::Running,
                ..
            })
        ),
        "{again:?}"
    );
    // from == to is no transition.
    let same = store.transition_job(&id, &[JobState::Running], JobState::Running, None);
    assert!(matches!(same, Err(StoreError::Illegal(_))), "{same:?}");
    // Accepted by the caller, forbidden by the table.
    let illegal = store.transition_job(&id, &[JobState::Running], JobState::Pending, None);
    assert!(
        matches!(illegal, Err(StoreError::Illegal(_))),
        "{illegal:?}"
    );
    store
        .transition_job(&id, &[JobState::Running], JobState::Killed, Some("kill"))
        .expect("running -> killed");
    let job = store.job(&id).expect("job");
    assert_eq!(job.state, JobState::Killed);
    assert_eq!(job.reason.as_deref(), Some("kill"));
    assert!(job.ended_ms.is_some());
    let refused = store
        .transition_job(&id, &[JobState::Running], JobState::Cancelling, None)
        .expect_err("killed is not running");
    assert_eq!(refused.to_string(), format!("job {id} is killed"));
    let unknown = JobId::from_random(1);
    assert!(matches!(
        store.transition_job(&unknown, &[JobState::Pending], JobState::Running, None),
        Err(StoreError::UnknownJob(_))
    ));
    let recorded = job_transitions(&store, &id);
    assert_eq!(
        recorded,
        [
            (None, "pending".into(), Some("submitted".into())),
            (Some("pending".into()), "running".into(), Some("go".into())),
            (Some("running".into()), "killed".into(), Some("kill".into())),
        ]
    );
}

fn revert_needs_a_stopped_job_with_a_pending_revert(backend: &Backend) {
    let store = backend.open();
    let id = killed_with_pending_revert(&store);
    // A job killed before any task ran has nothing to revert.
    let empty = store.create_job(&spec(), "t.toml", None).expect("create");
    store
        .record_hard_end(&empty, JobState::Killed, "kill requested")
        .expect("kill pending");
    assert!(matches!(
        store.begin_revert(&empty, "revert requested"),
        Err(StoreError::NothingToRevert(_))
    ));
    store.begin_revert(&id, "revert requested").expect("revert");
    assert_eq!(store.job(&id).expect("job").state, JobState::Reverting);
    // A second revert order finds it reverting.
    assert!(matches!(
        store.begin_revert(&id, "revert requested"),
        Err(StoreError::WrongState {
            state: JobState::Reverting,
            ..
        })
    ));
    // Nor can a reverting job be resumed.
    assert!(matches!(
        store.begin_resume(&id, "resume requested"),
        Err(StoreError::WrongState { .. })
    ));
}

fn resume_refuses_a_job_that_began_reverting(backend: &Backend) {
    let store = backend.open();
    let id = killed_with_pending_revert(&store);
    store.begin_resume(&id, "resume requested").expect("resume");
    assert_eq!(store.job(&id).expect("job").state, JobState::Running);
    assert!(matches!(
        store.begin_resume(&id, "resume requested"),
        Err(StoreError::WrongState { .. })
    ));
    // Its conductor starts reverting task a, and is killed: a is revert_failure.
    store
        .set_conductor(
            &id,
            1,
            1,
            Path::new("/nonexistent"),
            SupervisorId {
                pid: 1,
                start_time: 1,
            },
        )
        .expect("conductor");
    store
        .apply_reports(&id, &[starting(1, 0, Phase::Revert)])
        .expect("apply");
    store
        .record_hard_end(&id, JobState::Killed, "kill requested")
        .expect("kill");
    // The end's commit records the conductor gone too: a restart has nothing to look for.
    let exited: bool = store
        .db()
        .query_one(
            "SELECT conductor_exited FROM jobs WHERE id = ?1",
            args![id.as_str()],
        )
        .expect("query")
        .get(0)
        .expect("exited");
    assert!(exited);
    let err = store
        .begin_resume(&id, "resume requested")
        .expect_err("began reverting");
    assert!(matches!(err, StoreError::AlreadyReverting(_)), "{err:?}");
    assert!(err.to_string().contains(&format!("supervisor revert {id}")));
    assert_eq!(store.job(&id).expect("job").state, JobState::Killed);
}

fn hard_end_acts_only_on_a_live_job(backend: &Backend) {
    let store = backend.open();
    let id = killed_with_pending_revert(&store);
    let before = store.job(&id).expect("job");
    let again = store.record_hard_end(&id, JobState::Crashed, "the conductor died");
    assert!(
        matches!(
            again,
            Err(StoreError::WrongState {
                state: JobState::Killed,
                ..
            })
        ),
        "{again:?}"
    );
    let after = store.job(&id).expect("job");
    assert_eq!((after.state, after.reason), (before.state, before.reason));
    let pending = store.create_job(&spec(), "t.toml", None).expect("create");
    let reverts = store
        .record_hard_end(&pending, JobState::Killed, "stopped before it started")
        .expect("a pending job ends too");
    assert!(reverts.is_empty());
}

/// Two orders on one job, from two processes' worth of connections at once: exactly one wins.
fn racing_orders_on_one_job_start_it_once(backend: &Backend) {
    let store = backend.open();
    let id = killed_with_pending_revert(&store);
    let results: Vec<Result<()>> = std::thread::scope(|scope| {
        let racers: Vec<_> = (0..4)
            .map(|n| {
                let id = id.clone();
                scope.spawn(move || {
                    let store = backend.open();
                    if n % 2 == 0 {
                        store.begin_revert(&id, "revert requested")
                    } else {
                        store.begin_resume(&id, "resume requested")
                    }
                })
            })
            .collect();
        racers
            .into_iter()
            .map(|r| r.join().expect("thread"))
            .collect()
    });
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "{results:?}");
    for result in &results {
        assert!(
            matches!(result, Ok(()) | Err(StoreError::WrongState { .. })),
            "{result:?}"
        );
    }
}

/// A `run` beside a daemon: two `Store`s on one database, writing at once, never see SQLITE_BUSY
/// (nor, on PostgreSQL, a duplicate `seq`).
fn two_stores_on_one_database_write_concurrently(backend: &Backend) {
    let stores = [backend.open(), backend.open()];
    std::thread::scope(|scope| {
        for store in &stores {
            scope.spawn(move || {
                for _ in 0..15 {
                    let id = store.create_job(&spec(), "t.toml", None).expect("create");
                    store
                        .transition_job(&id, &[JobState::Pending], JobState::Running, None)
                        .expect("running");
                    store
                        .set_conductor(
                            &id,
                            1,
                            1,
                            Path::new("/x"),
                            SupervisorId {
                                pid: 1,
                                start_time: 1,
                            },
                        )
                        .expect("conductor");
                    let batch = [
                        starting(1, 0, Phase::Execute),
                        finished(2, 0, Phase::Execute),
                        report(
                            3,
                            JobEvent::JobFinished {
                                state: JobState::Success,
                            },
                        ),
                    ];
                    store.apply_reports(&id, &batch).expect("reports");
                    store.set_conductor_exited(&id).expect("exited");
                }
            });
        }
    });
    let all = stores[0].list(true).expect("list");
    assert_eq!(all.len(), 30);
    assert!(all.iter().all(|j| j.state == JobState::Success));
}

fn a_gap_in_the_reports_is_refused_whole(backend: &Backend) {
    let store = backend.open();
    let id = store.create_job(&spec(), "t.toml", None).expect("create");
    store
        .transition_job(&id, &[JobState::Pending], JobState::Running, None)
        .expect("running");
    store
        .apply_reports(&id, &[starting(1, 0, Phase::Execute)])
        .expect("first");
    // Report 2 was lost: 3 must not be acknowledged.
    let gap = store.apply_reports(&id, &[finished(3, 0, Phase::Execute)]);
    assert!(
        matches!(
            gap,
            Err(StoreError::ReportGap {
                expected: 2,
                got: 3
            })
        ),
        "{gap:?}"
    );
    // A gap inside a batch refuses the reports before it too.
    let inner = store.apply_reports(
        &id,
        &[
            finished(2, 0, Phase::Execute),
            starting(4, 1, Phase::Execute),
        ],
    );
    assert!(
        matches!(
            inner,
            Err(StoreError::ReportGap {
                expected: 3,
                got: 4
            })
        ),
        "{inner:?}"
    );
    assert_eq!(
        store.tasks(&id).expect("tasks")[0].state,
        TaskState::Running
    );
    // The resent run, from a replay of 1, is applied.
    let applied = store
        .apply_reports(
            &id,
            &[
                starting(1, 0, Phase::Execute),
                finished(2, 0, Phase::Execute),
                starting(3, 1, Phase::Execute),
            ],
        )
        .expect("resent");
    assert_eq!((applied.held, applied.fresh_from), (3, 1));
    let tasks = store.tasks(&id).expect("tasks");
    assert_eq!(
        (tasks[0].state, tasks[1].state),
        (TaskState::Success, TaskState::Running)
    );
}

#[test]
fn schema_1_store_is_migrated() {
    let dir = TempDir::new();
    {
        let conn = Connection::open(dir.path().join("state.db")).expect("create");
        conn.execute_batch(include_str!("fixtures/schema1.sql"))
            .expect("fixture");
    }
    let store = Store::open(dir.path()).expect("open migrates");
    let version = user_version(&store);
    assert_eq!(version, SCHEMA_VERSION);
    let state = |id: &str| {
        store
            .job(&JobId::parse(id).expect("id"))
            .expect("job")
            .state
    };
    assert_eq!(state("1a2b3c4d"), JobState::Success);
    assert_eq!(state("5e6f7a8b"), JobState::Killed);
    assert_eq!(state("9c0d1e2f"), JobState::Pending);
    assert_eq!(state("0a1b2c3d"), JobState::Running);
    let killed = JobId::parse("5e6f7a8b").expect("id");
    let pending: Vec<_> = pending_reverts(&store.tasks(&killed).expect("tasks"))
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(pending, ["b", "a"]);
    assert_eq!(store.spec(&killed).expect("spec").tasks.len(), 2);
    let exited: Vec<(String, bool)> = store
        .db()
        .query(
            "SELECT id, conductor_exited FROM jobs ORDER BY seq",
            args![],
        )
        .expect("query")
        .iter()
        .map(|row| (row.get(0).expect("id"), row.get(1).expect("exited")))
        .collect();
    let expected = [
        ("1a2b3c4d", true),
        ("5e6f7a8b", true),
        ("9c0d1e2f", true),
        ("0a1b2c3d", false),
    ];
    assert_eq!(exited, expected.map(|(id, e)| (id.to_owned(), e)).to_vec());
    let attached: Vec<_> = store
        .attached_jobs()
        .expect("attached")
        .into_iter()
        .map(|j| j.id.to_string())
        .collect();
    assert_eq!(attached, ["0a1b2c3d"]);
    // The migrated store works as a fresh one does.
    store
        .begin_revert(&killed, "revert requested")
        .expect("revert");
    drop(store);
    Store::open(dir.path()).expect("reopen a current store");
}

/// `n` openers of the store in `dir` at once, each on its own thread.
fn open_at_once(dir: &Path, n: usize) -> Vec<Result<Store>> {
    std::thread::scope(|scope| {
        let openers: Vec<_> = (0..n).map(|_| scope.spawn(|| Store::open(dir))).collect();
        openers
            .into_iter()
            .map(|o| o.join().expect("thread"))
            .collect()
    })
}

/// Two processes upgrading at once: the second finds the store migrated, under the lock.
#[test]
fn concurrent_opens_migrate_once() {
    let dir = TempDir::new();
    Connection::open(dir.path().join("state.db"))
        .expect("create")
        .execute_batch(include_str!("fixtures/schema1.sql"))
        .expect("fixture");
    let opened = open_at_once(dir.path(), 4);
    for store in opened {
        let store = store.expect("open");
        assert_eq!(user_version(&store), SCHEMA_VERSION);
        assert_eq!(store.list(true).expect("list").len(), 4);
    }
}

/// Processes creating one store at once: one `state.db` is made, every opener uses it, and no
/// file of the making is left.
#[test]
fn concurrent_fresh_opens_share_one_store() {
    let dir = TempDir::new();
    let opened = open_at_once(dir.path(), 4);
    let stores: Vec<Store> = opened.into_iter().map(|s| s.expect("open")).collect();
    let id = stores[0]
        .create_job(&spec(), "t.toml", None)
        .expect("create");
    for store in &stores {
        assert_eq!(user_version(store), SCHEMA_VERSION);
        assert_eq!(store.job(&id).expect("seen by every opener").id, id);
    }
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .filter(|name| name.to_string_lossy().starts_with(".state.db.new"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// An empty `state.db` (a file system where a store cannot be made aside, or an empty file
/// found there) is made a store in place, the same as one made aside.
#[test]
fn an_empty_state_db_is_made_a_store_in_place() {
    let dir = TempDir::new();
    std::fs::write(dir.path().join("state.db"), b"").expect("empty file");
    let store = Store::open(dir.path()).expect("open");
    assert_eq!(user_version(&store), SCHEMA_VERSION);
    assert_eq!(auto_vacuum(&store), 2, "incremental");
    store.create_job(&spec(), "t.toml", None).expect("create");
}

/// A WAL left without its database (`state.db` deleted, its `-wal` not) is not replayed onto a
/// new store: the new store is whole and empty.
#[test]
fn a_wal_left_without_its_database_is_not_replayed_onto_a_new_store() {
    let dir = TempDir::new();
    let other = TempDir::new();
    let old = Connection::open(other.path().join("old.db")).expect("open");
    old.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
         CREATE TABLE jobs (x); INSERT INTO jobs VALUES (randomblob(5000));",
    )
    .expect("an old database with its pages in its WAL");
    std::fs::copy(
        other.path().join("old.db-wal"),
        dir.path().join("state.db-wal"),
    )
    .expect("the WAL left behind");
    drop(old);
    let store = Store::open(dir.path()).expect("open");
    assert_eq!(user_version(&store), SCHEMA_VERSION);
    assert!(store.list(true).expect("list").is_empty());
    store.create_job(&spec(), "t.toml", None).expect("create");
    let check: String = store
        .db()
        .query_one("PRAGMA integrity_check", args![])
        .and_then(|row| row.get(0))
        .expect("integrity_check");
    assert_eq!(check, "ok");
}

/// The migrations end where a fresh store starts: the same columns, in the same order.
#[test]
fn migrated_schema_equals_the_fresh_schema() {
    let columns = |store: &Store| -> Vec<(String, String, String)> {
        store
            .db()
            .query(
                "SELECT m.name, p.name, p.type || ' ' || p.\"notnull\" || ' ' || COALESCE(p.dflt_value, '')
                 FROM sqlite_master m, pragma_table_info(m.name) p
                 WHERE m.type = 'table' ORDER BY m.name, p.cid",
                args![],
            )
            .expect("query")
            .iter()
            .map(|row| {
                (
                    row.get(0).expect("table"),
                    row.get(1).expect("column"),
                    row.get(2).expect("type"),
                )
            })
            .collect()
    };
    let (_fresh_dir, fresh) = fresh();
    let old = TempDir::new();
    Connection::open(old.path().join("state.db"))
        .expect("create")
        .execute_batch(include_str!("fixtures/schema1.sql"))
        .expect("fixture");
    let migrated = Store::open(old.path()).expect("migrate");
    assert_eq!(columns(&migrated), columns(&fresh));
}

#[test]
fn a_newer_store_is_refused() {
    let dir = TempDir::new();
    drop(Store::open(dir.path()).expect("create"));
    Connection::open(dir.path().join("state.db"))
        .expect("open")
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .expect("bump");
    let err = Store::open(dir.path()).err().expect("refused");
    assert!(matches!(err, StoreError::SchemaNewer { .. }), "{err:?}");
    assert!(err.to_string().contains("newer version"), "{err}");
}

fn a_bad_job_id_is_its_own_error(backend: &Backend) {
    let store = backend.open();
    let err = store.find_job("nope").expect_err("not an id");
    assert!(
        matches!(&err, StoreError::BadJobId(text) if text == "nope"),
        "{err:?}"
    );
    assert!(!err.to_string().contains("00000000"), "{err}");
    assert!(matches!(
        store.find_job("0000beef"),
        Err(StoreError::UnknownJob(_))
    ));
}

fn state_lists_follow_job_state(backend: &Backend) {
    let store = backend.open();
    let queued = store.create_job(&spec(), "t.toml", None).expect("create");
    let done = killed_with_pending_revert(&store);
    let live: Vec<_> = store
        .list(false)
        .expect("live")
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(live, std::slice::from_ref(&queued));
    assert_eq!(store.list(true).expect("all").len(), 2);
    assert_eq!(store.queued_jobs().expect("queued"), [queued]);
    assert!(
        store
            .attached_jobs()
            .expect("attached")
            .iter()
            .all(|j| j.id != done)
    );
}

fn actor_isolates_panics() -> impl std::future::Future<Output = ()> {
    let dir = TempDir::new();
    let handle = StoreHandle::open(dir.path()).expect("open");
    async move {
        let id = handle
            .call(|store| store.create_job(&spec(), "t.toml", None))
            .await
            .expect("create");
        let panicked: Result<()> = handle
            .call(|_| -> Result<()> { panic!("deliberate test panic") })
            .await;
        assert!(
            matches!(&panicked, Err(StoreError::Unavailable(m)) if m.contains("deliberate")),
            "{panicked:?}"
        );
        // The thread serves on, and a clone reaches the same store.
        let other = handle.clone();
        let (a, b) = {
            let (id1, id2) = (id.clone(), id.clone());
            let first = handle.call(move |store| store.job(&id1).map(|j| j.state));
            let second = other.call(move |store| store.job(&id2).map(|j| j.state));
            (first.await, second.await)
        };
        assert_eq!(
            (a.expect("a"), b.expect("b")),
            (JobState::Pending, JobState::Pending)
        );
        let blocking = handle.clone();
        let state = tokio::task::spawn_blocking(move || {
            blocking.call_blocking(move |store| store.job(&id).map(|j| j.state))
        })
        .await
        .expect("join")
        .expect("blocking call");
        assert_eq!(state, JobState::Pending);
        drop(dir);
    }
}

#[test]
fn actor_on_a_current_thread_runtime() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(actor_isolates_panics());
}

#[test]
fn actor_on_a_multi_thread_runtime() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(actor_isolates_panics());
}

#[test]
fn blocking_call_from_the_store_thread_is_refused() {
    let dir = TempDir::new();
    let handle = StoreHandle::open(dir.path()).expect("open");
    let inner = handle.clone();
    let nested = handle
        .call_blocking(move |_| Ok(inner.call_blocking(|_| Ok(()))))
        .expect("outer call");
    assert!(
        matches!(nested, Err(StoreError::Unavailable(_))),
        "{nested:?}"
    );
}

#[test]
fn migrations_are_consecutive() {
    for (i, migration) in migrate::MIGRATIONS.iter().enumerate() {
        assert_eq!(migration.from, i64::try_from(i).expect("few") + 1);
    }
    assert_eq!(
        SCHEMA_VERSION,
        i64::try_from(migrate::MIGRATIONS.len()).expect("few") + 1
    );
}

#[test]
fn live_states_are_listed_for_sql() {
    assert_eq!(
        sql_list(live_states()),
        "'pending', 'running', 'cancelling', 'reverting'"
    );
}

#[test]
fn a_fresh_sqlite_store_vacuums_incrementally() {
    let (_dir, store) = fresh();
    assert_eq!(auto_vacuum(&store), 2, "incremental");
}

/// Retention: finished jobs go with every row; live ones, recent ones and those that still owe
/// reverts stay (the latter go when their state is named).
fn prune_deletes_finished_jobs_and_keeps_live_recent_and_owing_ones(backend: &Backend) {
    let store = backend.open();
    let done = store.create_job(&spec(), "t.toml", None).expect("create");
    store
        .transition_job(&done, &[JobState::Pending], JobState::Running, None)
        .expect("running");
    store
        .apply_reports(&done, &[starting(1, 0, Phase::Execute)])
        .expect("apply");
    store
        .transition_job(&done, &[JobState::Running], JobState::Success, None)
        .expect("success");
    let live = store.create_job(&spec(), "t.toml", None).expect("create");
    let owing = killed_with_pending_revert(&store);
    for id in [&done, &owing] {
        store.set_conductor_exited(id).expect("exited");
    }
    let count = |table: &str, id: &JobId| -> i64 {
        store
            .db()
            .query_one(
                &format!(
                    "SELECT COUNT(*) FROM {table} WHERE {} = ?1",
                    if table == "jobs" { "id" } else { "job_id" }
                ),
                args![id.as_str()],
            )
            .and_then(|row| row.get(0))
            .expect("count")
    };
    assert!(count("transitions", &done) > 0);
    // Nothing ended before a cutoff in the past.
    assert!(store.prune(0, &[]).expect("prune").is_empty());
    let future = now_ms() + 1000;
    assert_eq!(store.prune(future, &[]).expect("prune"), vec![done.clone()]);
    for table in ["jobs", "tasks", "transitions", "output"] {
        assert_eq!(count(table, &done), 0, "{table} still has rows");
    }
    assert_eq!(count("jobs", &live), 1);
    assert_eq!(
        count("jobs", &owing),
        1,
        "a job that owes reverts stays by default"
    );
    // Naming a live state prunes nothing; naming `killed` takes the owing job.
    assert!(
        store
            .prune(future, &[JobState::Pending])
            .expect("prune")
            .is_empty()
    );
    assert_eq!(
        store.prune(future, &[JobState::Killed]).expect("prune"),
        vec![owing.clone()]
    );
    assert_eq!(count("jobs", &live), 1);
    store.reclaim(false).expect("reclaim");
    store.reclaim(true).expect("vacuum");
}

fn output_pages_are_bounded_and_continue_where_they_stopped(backend: &Backend) {
    let store = backend.open();
    let id = store.create_job(&spec(), "t.toml", None).expect("create");
    store
        .transition_job(&id, &[JobState::Pending], JobState::Running, None)
        .expect("running");
    let mut batch = vec![starting(1, 0, Phase::Execute)];
    for seq in 2..12 {
        batch.push(report(
            seq,
            JobEvent::Output {
                task: 0,
                phase: Phase::Execute,
                stream: shared::protocol::conductor::Stream::Stdout,
                line: format!("line {seq}"),
            },
        ));
    }
    store.apply_reports(&id, &batch).expect("apply");
    let mut after = 0;
    let mut lines = Vec::new();
    loop {
        let page = store.output_page(&id, after, 3).expect("page");
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        after = last.id;
        lines.extend(page.into_iter().map(|l| l.line));
    }
    assert_eq!(lines.len(), 10);
    assert_eq!(lines.first().map(String::as_str), Some("line 2"));
}

/// A resume plan's reports after a hard end: the interrupted task's revert moves the job to
/// `reverting`, its execute again back to `running`, and the job can succeed; each step is a
/// recorded transition.
fn a_resume_plan_reverts_the_interrupted_task_then_runs_it_again(backend: &Backend) {
    let store = backend.open();
    let first = [
        starting(1, 0, Phase::Execute),
        finished(2, 0, Phase::Execute),
        starting(3, 1, Phase::Execute),
    ];
    let id = hard_ended_after(&store, &first, JobState::Crashed, "host lost: a");
    store.begin_resume(&id, "resume").expect("resume");
    let revert = [starting(4, 1, Phase::Revert), finished(5, 1, Phase::Revert)];
    store.apply_reports(&id, &revert).expect("revert");
    assert_eq!(store.job(&id).expect("job").state, JobState::Reverting);
    assert_eq!(
        store.tasks(&id).expect("tasks")[1].state,
        TaskState::Reverted
    );
    let again = JobEvent::TaskStarting {
        task: 1,
        phase: Phase::Execute,
        attempt: 2,
    };
    let end = JobEvent::JobFinished {
        state: JobState::Success,
    };
    let rest = [
        report(6, again),
        finished(7, 1, Phase::Execute),
        report(8, end),
    ];
    store.apply_reports(&id, &rest).expect("execute again");
    let tasks = store.tasks(&id).expect("tasks");
    assert_eq!((tasks[1].state, tasks[1].attempts), (TaskState::Success, 2));
    let states: Vec<String> = job_transitions(&store, &id)
        .into_iter()
        .map(|(_, to, _)| to)
        .collect();
    assert_eq!(
        states,
        [
            "pending",
            "running",
            "crashed",
            "running",
            "reverting",
            "running",
            "success"
        ]
    );
}

/// The store's size (for `prune` and the metrics) is that of what it holds, and grows with it.
fn the_store_knows_its_size(backend: &Backend) {
    let store = backend.open();
    let empty = store.size_bytes().expect("size");
    assert!(empty > 0, "an empty store still has its tables");
    for _ in 0..200 {
        store.create_job(&spec(), "t.toml", None).expect("create");
    }
    store.reclaim(false).expect("settle");
    let full = store.size_bytes().expect("size");
    assert!(full > empty, "{full} after 200 jobs, {empty} before");
}

/// The schema version SQLite keeps (`PRAGMA user_version`).
fn user_version(store: &Store) -> i64 {
    pragma(store, "user_version")
}

fn auto_vacuum(store: &Store) -> i64 {
    pragma(store, "auto_vacuum")
}

/// An integer pragma's value.
fn pragma(store: &Store, name: &str) -> i64 {
    store
        .db()
        .query_one(&format!("PRAGMA {name}"), args![])
        .and_then(|row| row.get(0))
        .expect(name)
}
