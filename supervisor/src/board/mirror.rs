//! The `jobs` table: every host's jobs as `ls` shows them, each row written only by the host
//! that holds the job (`daemon/mirror.rs` publishes them from its job events), read by every
//! other host for `ls`, `status` and `--wait`. Times are the database's (`now()`).
//!
//! The mirror is a view, not the truth: the job's own store on its host stays the one writer
//! of its state. A row may lag the job by one publication (the publisher runs in the
//! background, never in a job's write path), and converges: the publisher re-publishes every
//! live job after a reconnect or a lag.

use shared::ids::JobId;
use shared::protocol::client::{HostedJob, JobSummary, ListQuery};
use shared::state::JobState;
use tokio_postgres::{Client, Row};

/// The channel on which a host announces the changes of its jobs' states, in the statements
/// that publish them to `jobs` ([`publish`], `journal::write_announcing`; the mirror
/// publisher's, in the background) and in `journal::cancel_unclaimed`; the payload is a
/// [`JobChange`].
pub const JOBS_CHANNEL: &str = "sv_jobs";

/// The longest host name (bytes) whose jobs' changes are announced: PostgreSQL refuses a
/// payload of 8000 bytes or more, and a refused `pg_notify` would fail the write it rides on.
/// A longer name's jobs are seen by the readers' backstop reads only.
pub const MAX_NOTIFIED_HOST: i32 = 1000;

/// A change of a job's state as [`JOBS_CHANNEL`] announces it (JSON, under 1.1 kB: an id, a
/// host name of at most [`MAX_NOTIFIED_HOST`] bytes, a state name, a flag and a time).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct JobChange {
    pub id: JobId,
    /// The host that holds the job and wrote the change; empty while the job is unclaimed
    /// (a cancel of it ended it).
    pub host: String,
    pub state: JobState,
    /// Whether `state` is terminal.
    pub ended: bool,
    /// When it was written, ms since the epoch (the database's clock).
    pub at_ms: i64,
}

impl JobChange {
    /// A notification's payload; `None` (logged) for one this build cannot read (a newer
    /// host's state, say).
    #[must_use]
    pub fn parse(payload: &str) -> Option<Self> {
        match serde_json::from_str(payload) {
            Ok(change) => Some(change),
            Err(err) => {
                tracing::debug!(error = %err, payload, "board job change left out: unreadable");
                None
            }
        }
    }
}

/// What a daemon learns of other hosts' jobs from its listener ([`Board::remote_jobs`]).
///
/// [`Board::remote_jobs`]: super::Board::remote_jobs
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteJobs {
    /// A job another host holds changed state.
    Changed(JobChange),
    /// The listener (re)connected: changes announced while it was away are lost, so whoever
    /// follows a job reads its state again.
    Missed,
}

/// The CTE `notified` that announces on [`JOBS_CHANNEL`] each row of the CTE `written`
/// (`id, host, state, ended` of the rows a statement wrote; the host NULL while unclaimed,
/// announced empty) for which `which` (an SQL condition on `w`, the written row) holds; a
/// statement must read it (`SELECT count(*) FROM notified`) for it to run.
pub(super) fn notify_rows(written: &str, which: &str) -> String {
    format!(
        "notified AS (
             SELECT w.id, pg_notify('{JOBS_CHANNEL}', json_build_object(
                 'id', w.id, 'host', COALESCE(w.host, ''), 'state', w.state, 'ended', w.ended,
                 'at_ms', (extract(epoch FROM now()) * 1000)::bigint)::text)
             FROM {written} w
             WHERE ({which}) AND octet_length(COALESCE(w.host, '')) <= {MAX_NOTIFIED_HOST})"
    )
}

/// Writes `jobs` (of `host`) in one statement: new rows get `created_at = now()`, every row
/// `updated_at = now()`; a job in a terminal state is marked ended. Their `created_ms` and
/// `paused_since_ms` are not mirrored. A row another host holds (the job was rescued from
/// this one) is left as it is. The rows of the jobs in `announce` (those whose state changed
/// since their last publication) are announced on [`JOBS_CHANNEL`] in the same statement. For
/// the jobs of this daemon's journal, see `journal::write`.
pub async fn publish(
    client: &Client,
    host: &str,
    jobs: &[JobSummary],
    announce: &[&str],
) -> Result<(), tokio_postgres::Error> {
    if jobs.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
    let states: Vec<&str> = jobs.iter().map(|j| j.state.as_str()).collect();
    let tasks: Vec<Option<&str>> = jobs.iter().map(|j| j.task.as_deref()).collect();
    let running: Vec<i32> = jobs
        .iter()
        .map(|j| i32::try_from(j.running).unwrap_or(i32::MAX))
        .collect();
    let ended: Vec<bool> = jobs.iter().map(|j| !j.state.is_live()).collect();
    client
        .query_one(
            &format!(
                "WITH written AS (
                     INSERT INTO jobs AS j (id, host, name, state, task, running, created_at,
                                            updated_at, ended)
                     SELECT u.id, $1, u.name, u.state, u.task, u.running, now(), now(), u.ended
                     FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::int[],
                                 $7::bool[])
                          AS u(id, name, state, task, running, ended)
                     ON CONFLICT (id) DO UPDATE SET
                         name = EXCLUDED.name, state = EXCLUDED.state, task = EXCLUDED.task,
                         running = EXCLUDED.running, updated_at = now(), ended = EXCLUDED.ended
                     WHERE j.host = $1
                     RETURNING j.id, j.host, j.state, j.ended),
                 {}
                 SELECT count(*) FROM notified",
                notify_rows("written", "w.id = ANY($8::text[])")
            ),
            &[
                &host, &ids, &names, &states, &tasks, &running, &ended, &announce,
            ],
        )
        .await?;
    Ok(())
}

/// The ids of `host`'s rows not yet marked ended (to find the jobs whose end a lag or a lost
/// connection kept from the mirror).
pub async fn unended(client: &Client, host: &str) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT id FROM jobs WHERE host = $1 AND NOT ended",
            &[&host],
        )
        .await?;
    rows.iter().map(|row| row.try_get(0)).collect()
}

/// Deletes `host`'s rows of jobs `ids` (the jobs it pruned); how many it deleted.
pub async fn forget(
    client: &Client,
    host: &str,
    ids: &[&str],
) -> Result<u64, tokio_postgres::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    client
        .execute(
            "DELETE FROM jobs WHERE host = $1 AND id = ANY($2)",
            &[&host, &ids],
        )
        .await
}

/// The row of job `id` (asked for a job the local store does not have): another host's, an
/// unclaimed one (its host reads as empty), or this host's own while a claim of it is being
/// imported here (so that a `--wait` polling it never sees it vanish); a list: at most one
/// since ids are unique across the board, schema version 4.
pub async fn find(client: &Client, id: &JobId) -> Result<Vec<HostedJob>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!("SELECT {COLUMNS} FROM jobs WHERE id = $1 ORDER BY host"),
            &[&id.as_str()],
        )
        .await?;
    rows.iter().filter_map(hosted).collect()
}

/// The columns [`hosted`] reads, in its order.
const COLUMNS: &str = "seq, host, id, name, state, task, running,
    (extract(epoch FROM created_at) * 1000)::bigint";

/// The `WHERE` of `ls` over the mirror: other hosts' jobs and unclaimed ones (live ones
/// unless `$2`), filtered
/// as the local list is: states `$3` (any state when given), name `$4` (a `LIKE` pattern,
/// [`like_pattern`]), created at or after `$5` (ms since the epoch).
const FILTER: &str = "host IS DISTINCT FROM $1 AND (NOT ended OR $2)
    AND (cardinality($3::text[]) = 0 OR state = ANY($3))
    AND ($4::text IS NULL OR name LIKE $4)
    AND ($5::bigint IS NULL OR created_at >= to_timestamp($5::bigint / 1000.0))";

/// The mirror's part of an `ls` query, as parameters of `FILTER`.
pub struct RemoteQuery {
    me: String,
    all: bool,
    states: Vec<String>,
    name: Option<String>,
    since_ms: Option<i64>,
}

impl RemoteQuery {
    /// Other hosts' jobs than `me`'s, filtered by `query` (`all`: ended ones too).
    #[must_use]
    pub fn new(me: &str, all: bool, query: &ListQuery) -> Self {
        Self {
            me: me.to_owned(),
            all: all || !query.states.is_empty(),
            states: query.states.iter().map(|s| s.as_str().to_owned()).collect(),
            name: query.name.as_deref().map(like_pattern),
            since_ms: query.since_ms,
        }
    }
}

/// The `seq` after which the `limit` most recent rows of `query` begin (0 from the first).
pub async fn list_start(
    client: &Client,
    query: &RemoteQuery,
    limit: u64,
) -> Result<i64, tokio_postgres::Error> {
    if limit == 0 {
        return Ok(i64::MAX);
    }
    let offset = i64::try_from(limit - 1).unwrap_or(i64::MAX);
    let row = client
        .query_opt(
            &format!("SELECT seq FROM jobs WHERE {FILTER} ORDER BY seq DESC LIMIT 1 OFFSET $6"),
            &[
                &query.me,
                &query.all,
                &query.states,
                &query.name,
                &query.since_ms,
                &offset,
            ],
        )
        .await?;
    match row {
        Some(row) => Ok(row.try_get::<_, i64>(0)? - 1),
        None => Ok(0),
    }
}

/// One page of the mirror's jobs.
#[derive(Debug)]
pub struct Page {
    /// The jobs read, in the order they were first published.
    pub jobs: Vec<HostedJob>,
    /// The `seq` of the last row read (where the next page starts).
    pub last: i64,
    /// How many rows were read (more than `jobs` when some could not be read).
    pub rows: usize,
}

/// At most `page` rows of `query` with `seq` above `after`.
pub async fn list_page(
    client: &Client,
    query: &RemoteQuery,
    after: i64,
    page: i64,
) -> Result<Page, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM jobs WHERE {FILTER} AND seq > $6 ORDER BY seq LIMIT $7"
            ),
            &[
                &query.me,
                &query.all,
                &query.states,
                &query.name,
                &query.since_ms,
                &after,
                &page,
            ],
        )
        .await?;
    let last = match rows.last() {
        Some(row) => row.try_get(0)?,
        None => after,
    };
    let jobs = rows.iter().filter_map(hosted).collect::<Result<_, _>>()?;
    Ok(Page {
        jobs,
        last,
        rows: rows.len(),
    })
}

/// A row as a [`HostedJob`] (an unclaimed job's host empty: the wire has no null there);
/// `None` for a row whose id or state this build cannot read (a
/// newer host's state, say), which is left out and logged rather than failing the whole list.
fn hosted(row: &Row) -> Option<Result<HostedJob, tokio_postgres::Error>> {
    let fields = (|| {
        let host: String = row.try_get::<_, Option<String>>(1)?.unwrap_or_default();
        let id: String = row.try_get(2)?;
        let state: String = row.try_get(4)?;
        Ok::<_, tokio_postgres::Error>((host, id, state))
    })();
    let (host, id, state) = match fields {
        Ok(fields) => fields,
        Err(err) => return Some(Err(err)),
    };
    let (Some(job_id), Ok(state)) = (JobId::parse(&id), state.parse::<JobState>()) else {
        tracing::warn!(host = %host, job_id = %id, state = %state, "board job row left out: unreadable");
        return None;
    };
    let summary = (|| {
        let running: i32 = row.try_get(6)?;
        Ok(JobSummary {
            id: job_id,
            name: row.try_get(3)?,
            state,
            task: row.try_get(5)?,
            created_ms: row.try_get(7)?,
            paused_since_ms: None,
            running: u32::try_from(running).unwrap_or(0),
        })
    })();
    Some(summary.map(|job| HostedJob { host, job }))
}

/// An `ls --name` glob (`*` any text, `?` one character) as a `LIKE` pattern: `%`, `_` and
/// `\` of the glob are matched literally.
#[must_use]
pub fn like_pattern(glob: &str) -> String {
    let mut out = String::with_capacity(glob.len() + 2);
    for c in glob.chars() {
        match c {
            '*' => out.push('%'),
            '?' => out.push('_'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_become_like_patterns_with_like_wildcards_escaped() {
        assert_eq!(like_pattern("deploy-*"), "deploy-%");
        assert_eq!(like_pattern("a?c"), "a_c");
        assert_eq!(like_pattern("100%_done\\"), "100\\%\\_done\\\\");
        assert_eq!(like_pattern(""), "");
    }

    #[test]
    fn a_change_is_read_from_its_payload_and_an_unreadable_one_left_out() {
        let payload = r#"{"id" : "0123abcd", "host" : "a", "state" : "cancelled", "ended" : true, "at_ms" : 17}"#;
        let change = JobChange::parse(payload).expect("readable");
        assert_eq!(
            change,
            JobChange {
                id: JobId::parse("0123abcd").expect("valid"),
                host: "a".into(),
                state: JobState::Cancelled,
                ended: true,
                at_ms: 17,
            }
        );
        let newer = payload.replace("cancelled", "hibernating");
        assert_eq!(JobChange::parse(&newer), None);
        assert_eq!(JobChange::parse(&payload.replace("0123abcd", "../x")), None);
        assert_eq!(JobChange::parse("a"), None);
    }

    #[test]
    fn state_filters_include_ended_jobs() {
        let query = ListQuery {
            states: vec![JobState::Cancelled],
            ..ListQuery::default()
        };
        let remote = RemoteQuery::new("a", false, &query);
        assert!(remote.all);
        assert_eq!(remote.states, ["cancelled"]);
        assert!(!RemoteQuery::new("a", false, &ListQuery::default()).all);
    }
}
