//! The job's journal on the board: each job's row of `jobs` (its claim epoch, its file and
//! validated spec, `on_host_loss`, state and reason) and its rows of `job_tasks`, written by the
//! job's owner only and only with the current epoch; the stale owner's refused writes in
//! `late_writes`; the rescue of a lost host's jobs; and the claims of unclaimed jobs (host
//! NULL, epoch 1, `pinned` to a host or to none) by hosts with free slots (ARCHITECTURE.md,
//! The job board).
//!
//! Every statement here is one statement (data-modifying CTEs where a job and its tasks are
//! written together), so it is atomic without a transaction and runs on the shared query
//! connection.

use super::mirror::notify_rows;
use crate::store::TaskRow;
use shared::ids::JobId;
use shared::protocol::client::{JobSummary, LateWrite};
use shared::spec::OnHostLoss;
use shared::state::ExecOutcome;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

/// A task's row of the journal, as the local store's `tasks` has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalTask {
    pub idx: i32,
    pub name: String,
    pub has_revert: bool,
    /// A `TaskState` name.
    pub state: String,
    pub attempts: i32,
    /// An `ExecOutcome` name.
    pub exec_outcome: Option<String>,
    pub result: String,
}

impl From<&TaskRow> for JournalTask {
    fn from(task: &TaskRow) -> Self {
        Self {
            idx: i32::try_from(task.idx).unwrap_or(i32::MAX),
            name: task.name.clone(),
            has_revert: task.has_revert,
            state: task.state.as_str().to_owned(),
            attempts: i32::try_from(task.attempts).unwrap_or(i32::MAX),
            exec_outcome: task.exec_outcome.map(|o| o.as_str().to_owned()),
            result: task.result.clone(),
        }
    }
}

impl TryFrom<&JournalTask> for TaskRow {
    type Error = shared::state::UnknownState;

    /// The journal's task as the store's row, without what the journal does not keep (its
    /// error, its times).
    fn try_from(task: &JournalTask) -> Result<Self, Self::Error> {
        Ok(Self {
            idx: u32::try_from(task.idx).unwrap_or(u32::MAX),
            name: task.name.clone(),
            has_revert: task.has_revert,
            state: task.state.parse()?,
            attempts: u32::try_from(task.attempts).unwrap_or(0),
            exec_outcome: task.exec_outcome.as_deref().and_then(ExecOutcome::parse),
            result: task.result.clone(),
            error: None,
            started_ms: None,
            ended_ms: None,
        })
    }
}

/// What the board's journal holds of a job besides its mirrored summary: its reason, file,
/// spec (JSON) and tasks, read together in one statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Journaled {
    pub reason: Option<String>,
    pub source: String,
    pub spec: String,
    pub tasks: Vec<JournalTask>,
}

/// The journal of job `id` as host `host` (empty: no host) holds it; `None` when the board
/// has no such row.
pub async fn read(
    client: &Client,
    id: &JobId,
    host: &str,
) -> Result<Option<Journaled>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT j.reason, j.source, j.spec, t.idx, t.name, t.has_revert, t.state, t.attempts,
                    t.exec_outcome, t.result
             FROM jobs j LEFT JOIN job_tasks t ON t.job_id = j.id
             WHERE j.id = $1 AND COALESCE(j.host, '') = $2
             ORDER BY t.idx",
            &[&id.as_str(), &host],
        )
        .await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let mut journaled = Journaled {
        reason: first.try_get(0)?,
        source: text_or_empty(first, 1)?,
        spec: text_or_empty(first, 2)?,
        tasks: Vec::with_capacity(rows.len()),
    };
    for row in &rows {
        let Some(idx) = row.try_get::<_, Option<i32>>(3)? else {
            continue;
        };
        journaled.tasks.push(JournalTask {
            idx,
            name: row.try_get(4)?,
            has_revert: row.try_get(5)?,
            state: row.try_get(6)?,
            attempts: row.try_get(7)?,
            exec_outcome: row.try_get(8)?,
            result: text_or_empty(row, 9)?,
        });
    }
    Ok(Some(journaled))
}

/// A job as `submit` writes it on the board (epoch 1, state `pending`).
#[derive(Clone, Debug)]
pub struct NewJob {
    pub id: JobId,
    pub name: String,
    pub source: String,
    /// The validated spec, JSON (as the local store keeps it).
    pub spec: String,
    pub on_host_loss: OnHostLoss,
    pub tasks: Vec<JournalTask>,
}

/// What the owner writes of one of its jobs: its summary, reason and tasks, under `epoch`.
#[derive(Clone, Debug)]
pub struct Entry {
    pub epoch: i64,
    pub summary: JobSummary,
    pub reason: Option<String>,
    pub tasks: Vec<JournalTask>,
}

/// A job this host took from a lost one ([`rescue`]).
#[derive(Clone, Debug)]
pub struct Rescued {
    pub id: JobId,
    /// The new epoch (the old one plus one).
    pub epoch: i64,
    /// The lost host.
    pub from: String,
    pub source: String,
    pub spec: String,
    /// The job's policy; `hold` for a name this build does not know.
    pub on_host_loss: OnHostLoss,
    /// `host lost: FROM`.
    pub reason: String,
    /// As the lost host last wrote them.
    pub tasks: Vec<JournalTask>,
}

/// The channel on which an unclaimed job is announced; the payload is the host it is pinned
/// to, empty for any host.
pub const CLAIMS_CHANNEL: &str = "sv_claims";

/// Where a new job goes on the board.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement<'a> {
    /// Held by this host at epoch 1 (it runs the job: today's submit).
    Here(&'a str),
    /// Unclaimed (no host, epoch 1: its first owner holds it at 2, never as a job submitted
    /// on its holder, [`held_pending`]), for the host named (`submit --host`), or for any host
    /// with a free slot; announced on [`CLAIMS_CHANNEL`] in the same statement.
    Unclaimed { pinned: Option<&'a str> },
}

/// Inserts `job` as `placement` says with its tasks, in one statement (an unclaimed one is
/// announced in it, so the notification comes with the commit); `false` when the id is taken
/// on the board (draw another).
pub async fn insert(
    client: &Client,
    placement: Placement<'_>,
    job: &NewJob,
) -> Result<bool, tokio_postgres::Error> {
    let t = TaskColumns::of(
        std::iter::repeat_n(job.id.as_str(), job.tasks.len()),
        &job.tasks,
    );
    let (host, pinned, epoch) = match placement {
        Placement::Here(host) => (Some(host), None, 1_i64),
        Placement::Unclaimed { pinned } => (None, pinned, 1),
    };
    let row = client
        .query_one(
            "WITH j AS (
                 INSERT INTO jobs (id, host, name, state, task, running, created_at, updated_at,
                                   ended, epoch, source, spec, on_host_loss, pinned)
                 VALUES ($1, $2, $3, 'pending', NULL, 0, now(), now(), false, $15, $4, $5, $6, $16)
                 ON CONFLICT (id) DO NOTHING
                 RETURNING id),
             t AS (
                 INSERT INTO job_tasks (job_id, idx, name, has_revert, state, attempts, exec_outcome, result)
                 SELECT u.* FROM unnest($7::text[], $8::int[], $9::text[], $10::bool[], $11::text[],
                                        $12::int[], $13::text[], $14::text[])
                          AS u(job_id, idx, name, has_revert, state, attempts, exec_outcome, result)
                 WHERE EXISTS (SELECT 1 FROM j)),
             n AS (
                 SELECT pg_notify($17, COALESCE($16::text, ''))::text FROM j WHERE $2::text IS NULL)
             SELECT (SELECT count(*) FROM j), (SELECT count(*) FROM n)",
            &[
                &job.id.as_str() as &(dyn ToSql + Sync),
                &host,
                &job.name,
                &job.source,
                &job.spec,
                &job.on_host_loss.as_str(),
            ]
            .into_iter()
            .chain(t.params())
            .chain([
                &epoch as &(dyn ToSql + Sync),
                &pinned,
                &CLAIMS_CHANNEL,
            ])
            .collect::<Vec<_>>(),
        )
        .await?;
    Ok(row.try_get::<_, i64>(0)? == 1)
}

/// A job this host claimed ([`claim`]): its tasks are all pending (nothing ran).
#[derive(Clone, Debug)]
pub struct Claimed {
    pub id: JobId,
    /// The epoch this host holds it at.
    pub epoch: i64,
    /// The host it was pinned to (this one), if any.
    pub pinned: Option<String>,
    pub source: String,
    pub spec: String,
}

/// The claim: in ONE statement, up to `free` unclaimed, unended jobs that any host or `me`
/// may take, oldest first, `FOR UPDATE SKIP LOCKED` (another claimer or a cancel holds the
/// row: skipped), become `me`'s at the next epoch.
pub async fn claim(
    client: &Client,
    me: &str,
    free: i64,
) -> Result<Vec<Claimed>, tokio_postgres::Error> {
    let rows = client
        .query(
            "UPDATE jobs SET host = $1, epoch = epoch + 1, updated_at = now()
             WHERE id IN (
                 SELECT id FROM jobs
                 WHERE host IS NULL AND NOT ended AND spec IS NOT NULL
                   AND (pinned IS NULL OR pinned = $1)
                 ORDER BY seq LIMIT $2
                 FOR UPDATE SKIP LOCKED)
             RETURNING id, epoch, pinned, source, spec",
            &[&me, &free],
        )
        .await?;
    claimed_rows(&rows)
}

/// The jobs `me` claimed (epoch 2 or later) that never began a step (`pending`, unended,
/// every task `pending`; a rescued job that began one is not among them): those it claimed
/// just before a crash, before its store had them, are among them (read at start). A job
/// submitted on `me` (epoch 1) is not: one whose local commit failed was refused to its
/// client, and must never run.
pub async fn held_pending(
    client: &Client,
    me: &str,
) -> Result<Vec<Claimed>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT id, epoch, pinned, source, spec FROM jobs
             WHERE host = $1 AND NOT ended AND state = 'pending' AND spec IS NOT NULL
               AND epoch >= 2
               AND NOT EXISTS (SELECT 1 FROM job_tasks t
                               WHERE t.job_id = jobs.id AND t.state <> 'pending')",
            &[&me],
        )
        .await?;
    claimed_rows(&rows)
}

/// Rows of (id, epoch, pinned, source, spec) as [`Claimed`] jobs.
fn claimed_rows(rows: &[Row]) -> Result<Vec<Claimed>, tokio_postgres::Error> {
    let mut claimed = Vec::with_capacity(rows.len());
    for row in rows {
        let Some(id) = row_id(row)? else {
            continue;
        };
        claimed.push(Claimed {
            id,
            epoch: row.try_get(1)?,
            pinned: row.try_get(2)?,
            source: text_or_empty(row, 3)?,
            spec: text_or_empty(row, 4)?,
        });
    }
    Ok(claimed)
}

/// Gives job `id`, claimed by `me` at `epoch`, back to the board unclaimed (its import here
/// failed); the next claim takes it at the next epoch. Not announced: a job no host can
/// import (a spec from a newer build, say) is tried again at the hosts' renewals, every
/// lease/3, not in a loop; a newer host takes it. `false` if the row was no longer `me`'s at
/// that epoch.
pub async fn release(
    client: &Client,
    me: &str,
    id: &JobId,
    epoch: i64,
) -> Result<bool, tokio_postgres::Error> {
    let released = client
        .execute(
            "UPDATE jobs SET host = NULL, updated_at = now()
             WHERE id = $1 AND host = $2 AND epoch = $3 AND NOT ended",
            &[&id.as_str(), &me, &epoch],
        )
        .await?;
    Ok(released == 1)
}

/// Column 0 of a row as a job id; `None` (logged) for an id this build cannot read.
fn row_id(row: &Row) -> Result<Option<JobId>, tokio_postgres::Error> {
    let id: String = row.try_get(0)?;
    let parsed = JobId::parse(&id);
    if parsed.is_none() {
        tracing::warn!(job_id = %id, "board job row left out: unreadable");
    }
    Ok(parsed)
}

/// Column 0 of each row as a job id, those this build cannot read left out (logged).
fn row_ids(rows: &[Row]) -> Result<Vec<JobId>, tokio_postgres::Error> {
    let mut ids = Vec::with_capacity(rows.len());
    for row in rows {
        ids.extend(row_id(row)?);
    }
    Ok(ids)
}

/// A nullable text column, empty when NULL.
fn text_or_empty(row: &Row, idx: usize) -> Result<String, tokio_postgres::Error> {
    Ok(row.try_get::<_, Option<String>>(idx)?.unwrap_or_default())
}

/// Ends job `id` while it is unclaimed, in one guarded statement: `cancelled` with `reason`
/// (nothing ran, nothing to revert), announced on
/// [`JOBS_CHANNEL`](super::mirror::JOBS_CHANNEL) in it. `false` when it is not unclaimed any
/// more (a host claimed it meanwhile, or it ended).
pub async fn cancel_unclaimed(
    client: &Client,
    id: &JobId,
    reason: &str,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            &format!(
                "WITH j AS (
                     UPDATE jobs SET state = 'cancelled', ended = true, reason = $2,
                                     updated_at = now()
                     WHERE id = $1 AND host IS NULL AND NOT ended
                     RETURNING id, host, state, ended),
                 {}
                 SELECT (SELECT count(*) FROM j), (SELECT count(*) FROM notified)",
                notify_rows("j", "true")
            ),
            &[&id.as_str(), &reason],
        )
        .await?;
    Ok(row.try_get::<_, i64>(0)? == 1)
}

/// Deletes the ended unclaimed jobs (cancelled or killed before any host claimed them: no
/// host's store has them, so no host's own prune reaches them) whose end is older than
/// `older_than_ms` by the database's clock, in `states` (any ended state when empty), with
/// their tasks; their ids, oldest first. One statement: two hosts pruning at once each delete
/// a row at most once (the second waits for the first's row lock, then finds it gone).
pub async fn prune_unclaimed(
    client: &Client,
    older_than_ms: i64,
    states: &[&str],
) -> Result<Vec<JobId>, tokio_postgres::Error> {
    let rows = client
        .query(
            "WITH d AS (
                 DELETE FROM jobs
                 WHERE host IS NULL AND ended
                   AND updated_at < now() - $1::bigint * interval '1 millisecond'
                   AND (cardinality($2::text[]) = 0 OR state = ANY($2))
                 RETURNING seq, id)
             SELECT id FROM d ORDER BY seq",
            &[&older_than_ms, &states],
        )
        .await?;
    row_ids(&rows)
}

/// Removes job `id` of `host` at epoch 1 (a submit whose local commit failed after its board
/// one).
pub async fn forget(client: &Client, host: &str, id: &JobId) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM jobs WHERE id = $1 AND host = $2 AND epoch = 1",
            &[&id.as_str(), &host],
        )
        .await?;
    Ok(())
}

/// Writes `entries` of `host`'s jobs in one statement, each only where the row is still
/// `host`'s at the entry's epoch; returns the ids whose write matched no row (refused: the
/// job was taken from this host). A task the board shows begun is never written back to
/// `pending` (no task goes back there; a mirror snapshot read before a write-ahead's local
/// commit and written after its board commit would): the rescue reads "every task pending"
/// as "never began a step" ([`rescue`]). Announces nothing: see [`write_announcing`].
pub async fn write(
    client: &Client,
    host: &str,
    entries: &[Entry],
) -> Result<Vec<JobId>, tokio_postgres::Error> {
    write_announcing(client, host, entries, &[]).await
}

/// [`write`](fn@write), and in the same statement the rows written of the jobs in
/// `announce` (those whose state changed since their last publication) announced on
/// [`JOBS_CHANNEL`](super::mirror::JOBS_CHANNEL).
pub async fn write_announcing(
    client: &Client,
    host: &str,
    entries: &[Entry],
    announce: &[&str],
) -> Result<Vec<JobId>, tokio_postgres::Error> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = entries.iter().map(|e| e.summary.id.as_str()).collect();
    let epochs: Vec<i64> = entries.iter().map(|e| e.epoch).collect();
    let names: Vec<&str> = entries.iter().map(|e| e.summary.name.as_str()).collect();
    let states: Vec<&str> = entries.iter().map(|e| e.summary.state.as_str()).collect();
    let tasks: Vec<Option<&str>> = entries.iter().map(|e| e.summary.task.as_deref()).collect();
    let running: Vec<i32> = entries
        .iter()
        .map(|e| i32::try_from(e.summary.running).unwrap_or(i32::MAX))
        .collect();
    let ended: Vec<bool> = entries.iter().map(|e| !e.summary.state.is_live()).collect();
    let reasons: Vec<Option<&str>> = entries.iter().map(|e| e.reason.as_deref()).collect();
    let all_tasks: Vec<JournalTask> = entries.iter().flat_map(|e| e.tasks.clone()).collect();
    let owners = entries
        .iter()
        .flat_map(|e| std::iter::repeat_n(e.summary.id.as_str(), e.tasks.len()));
    let t = TaskColumns::of(owners, &all_tasks);
    let rows = client
        .query(
            &format!(
            "WITH j AS (
                 UPDATE jobs SET name = u.name, state = u.state, task = u.task, running = u.running,
                                 ended = u.ended, reason = u.reason, updated_at = now()
                 FROM unnest($2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::int[],
                             $8::bool[], $9::text[])
                      AS u(id, epoch, name, state, task, running, ended, reason)
                 WHERE jobs.id = u.id AND jobs.host = $1 AND jobs.epoch = u.epoch
                 RETURNING jobs.id, jobs.host, jobs.state, jobs.ended),
             t AS (
                 INSERT INTO job_tasks (job_id, idx, name, has_revert, state, attempts, exec_outcome, result)
                 SELECT v.* FROM unnest($10::text[], $11::int[], $12::text[], $13::bool[], $14::text[],
                                        $15::int[], $16::text[], $17::text[])
                          AS v(job_id, idx, name, has_revert, state, attempts, exec_outcome, result)
                 WHERE v.job_id IN (SELECT id FROM j)
                 ON CONFLICT (job_id, idx) DO UPDATE SET
                     state = EXCLUDED.state, attempts = EXCLUDED.attempts,
                     exec_outcome = EXCLUDED.exec_outcome, result = EXCLUDED.result
                 WHERE EXCLUDED.state <> 'pending' OR job_tasks.state = 'pending'),
             {}
             SELECT id, (SELECT count(*) FROM notified) FROM j",
                notify_rows("j", "w.id = ANY($18::text[])")
            ),
            &[
                &host as &(dyn ToSql + Sync),
                &ids,
                &epochs,
                &names,
                &states,
                &tasks,
                &running,
                &ended,
                &reasons,
            ]
            .into_iter()
            .chain(t.params())
            .chain([&announce as &(dyn ToSql + Sync)])
            .collect::<Vec<_>>(),
        )
        .await?;
    let matched = rows
        .iter()
        .map(|row| row.try_get::<_, String>(0))
        .collect::<Result<std::collections::HashSet<_>, _>>()?;
    Ok(entries
        .iter()
        .filter(|e| !matched.contains(e.summary.id.as_str()))
        .map(|e| e.summary.id.clone())
        .collect())
}

/// Records a refused write of `host`'s instance `instance` at `epoch` about job `id`.
pub async fn record_late(
    client: &Client,
    id: &JobId,
    host: &str,
    instance: &str,
    epoch: i64,
    what: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO late_writes (job_id, host, instance, epoch, what, at)
             VALUES ($1, $2, $3, $4, $5, now())",
            &[&id.as_str(), &host, &instance, &epoch, &what],
        )
        .await?;
    Ok(())
}

/// The refused writes about job `id`, oldest first.
pub async fn late_writes(
    client: &Client,
    id: &JobId,
) -> Result<Vec<LateWrite>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT host, instance, epoch, what, (extract(epoch FROM at) * 1000)::bigint
             FROM late_writes WHERE job_id = $1 ORDER BY seq",
            &[&id.as_str()],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(LateWrite {
                host: row.try_get(0)?,
                instance: row.try_get(1)?,
                epoch: row.try_get(2)?,
                what: row.try_get(3)?,
                at_ms: row.try_get(4)?,
            })
        })
        .collect()
}

/// Of `ids`, the jobs of the journal that `me` does not hold: another host's, or
/// unclaimed (a rescue took them while `me` was away).
pub async fn held_elsewhere(
    client: &Client,
    me: &str,
    ids: &[JobId],
) -> Result<Vec<JobId>, tokio_postgres::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = ids.iter().map(JobId::as_str).collect();
    let rows = client
        .query(
            "SELECT id FROM jobs
             WHERE id = ANY($2) AND spec IS NOT NULL AND host IS DISTINCT FROM $1",
            &[&me, &ids],
        )
        .await?;
    row_ids(&rows)
}

/// The jobs of the journal `host` holds, with their epochs (read at join).
pub async fn held(client: &Client, host: &str) -> Result<Vec<(JobId, i64)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT id, epoch FROM jobs WHERE host = $1 AND spec IS NOT NULL",
            &[&host],
        )
        .await?;
    let mut held = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: String = row.try_get(0)?;
        if let Some(id) = JobId::parse(&id) {
            held.push((id, row.try_get(1)?));
        }
    }
    Ok(held)
}

/// A job of a lost host that never began a step, given back to the board unclaimed by
/// [`rescue`] for any host with a free slot to claim (nothing ran: nothing to revert).
#[derive(Clone, Debug)]
pub struct Returned {
    pub id: JobId,
    /// The new epoch (the old one plus one): the lost host's late writes are refused, and
    /// its claimer holds it at the next.
    pub epoch: i64,
    /// The lost host.
    pub from: String,
    /// The host it stays pinned to, if any (the lost one itself included: see [`rescue`]).
    pub pinned: Option<String>,
}

/// What one [`rescue`] took: the jobs now this host's, `crashed`; those given back to the
/// board unclaimed; and those that never began a step but had a cancel or kill waiting for
/// the lost host, ended `cancelled` on the board instead (unclaimed).
#[derive(Clone, Debug, Default)]
pub struct Rescue {
    pub taken: Vec<Rescued>,
    pub returned: Vec<Returned>,
    pub cancelled: Vec<Returned>,
}

/// The rescue (DESIGN.md section 11): in ONE statement, up to `batch` unended jobs of the
/// journal whose host's lease expired by the database's clock (never this host's, never by
/// run time) are taken, `FOR UPDATE SKIP LOCKED` (an owner's write in flight, or another
/// rescuer, holds its row: skipped), each at the epoch plus one with `lost_from` the old host:
///
/// - a job that never began a step (`pending` on its host, every task of its journal
///   `pending`: the write-ahead puts a task's start on the board before the step starts, and
///   [`write()`] never sets a started task back to `pending`) is given back unclaimed (host
///   NULL, still `pending`) and announced on [`CLAIMS_CHANNEL`] in the same statement: a host
///   with a free slot claims it at the epoch after ([`claim`]) and runs it from the start. Its
///   `pinned` is kept, the lost host's own name included: a job submitted for one host runs
///   there only, and waits unclaimed for that host to join again (a restarted daemon of that
///   name claims it at once), or for an operator's `cancel` from any host. One for which a
///   `cancel` or `kill` was written for the lost host and not yet carried out is ended
///   `cancelled` instead, unclaimed, and those requests marked done: an accepted cancel is
///   never lost with its host;
/// - any other is this host's, `crashed` with reason `host lost: OLD`; then their task rows
///   are read, for the rescuer to follow their `on_host_loss`.
///
/// Every job moved is announced on [`JOBS_CHANNEL`](super::mirror::JOBS_CHANNEL) in the same
/// statement (its new host, empty when given back, and state): a `--wait` on it elsewhere
/// follows it at once.
pub async fn rescue(
    client: &Client,
    me: &str,
    batch: i64,
) -> Result<Rescue, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "WITH lost AS (
                 SELECT j.id, j.host,
                        CASE WHEN j.state <> 'pending' OR EXISTS (
                                  SELECT 1 FROM job_tasks t
                                  WHERE t.job_id = j.id AND t.state <> 'pending')
                             THEN 'crashed'
                             WHEN EXISTS (
                                  SELECT 1 FROM requests q
                                  WHERE q.job_id = j.id AND q.host = j.host
                                    AND q.done_at IS NULL AND q.kind IN ('cancel', 'kill'))
                             THEN 'cancelled'
                             ELSE 'returned' END AS fate
                 FROM jobs j JOIN hosts h ON h.name = j.host
                 WHERE NOT j.ended AND j.host <> $1 AND j.spec IS NOT NULL
                   AND now() - h.renewed_at > h.lease_ms * interval '1 millisecond'
                 ORDER BY j.seq LIMIT $2
                 FOR UPDATE OF j SKIP LOCKED),
             r AS (
                 UPDATE jobs j SET
                     host = CASE WHEN lost.fate = 'crashed' THEN $1 END,
                     epoch = j.epoch + 1, lost_from = lost.host,
                     state = CASE WHEN lost.fate = 'returned' THEN 'pending' ELSE lost.fate END,
                     reason = CASE lost.fate
                         WHEN 'crashed' THEN 'host lost: ' || lost.host
                         WHEN 'cancelled' THEN 'cancelled before it started (its host '
                             || lost.host || ' was lost with the request pending)' END,
                     task = NULL, running = 0, ended = lost.fate <> 'returned', updated_at = now()
                 FROM lost WHERE j.id = lost.id
                 RETURNING j.id, j.epoch, lost.host AS lost_host, j.source, j.spec, j.on_host_loss,
                           j.reason, lost.fate, j.pinned, j.host, j.state, j.ended),
             q AS (
                 UPDATE requests SET done_at = now(), outcome = 'done'
                 FROM r
                 WHERE r.fate = 'cancelled' AND requests.job_id = r.id
                   AND requests.host = r.lost_host AND requests.done_at IS NULL
                   AND requests.kind IN ('cancel', 'kill')),
             n AS (
                 SELECT pg_notify($3, COALESCE(pinned, ''))::text FROM r WHERE fate = 'returned'),
             {}
             SELECT r.*, (SELECT count(*) FROM n), (SELECT count(*) FROM notified) FROM r",
                super::mirror::notify_rows("r", "true")
            ),
            &[&me, &batch, &CLAIMS_CHANNEL],
        )
        .await?;
    let mut rescue = Rescue::default();
    for row in &rows {
        let Some(id) = row_id(row)? else {
            continue;
        };
        let fate: String = row.try_get(7)?;
        if fate != "crashed" {
            let returned = Returned {
                id,
                epoch: row.try_get(1)?,
                from: row.try_get(2)?,
                pinned: row.try_get(8)?,
            };
            if fate == "cancelled" {
                rescue.cancelled.push(returned);
            } else {
                rescue.returned.push(returned);
            }
            continue;
        }
        rescue.taken.push(Rescued {
            id,
            epoch: row.try_get(1)?,
            from: row.try_get(2)?,
            source: text_or_empty(row, 3)?,
            spec: text_or_empty(row, 4)?,
            on_host_loss: OnHostLoss::from_name(row.try_get(5)?).unwrap_or_default(),
            reason: text_or_empty(row, 6)?,
            tasks: Vec::new(),
        });
    }
    if rescue.taken.is_empty() {
        return Ok(rescue);
    }
    let ids: Vec<&str> = rescue.taken.iter().map(|r| r.id.as_str()).collect();
    let rows = client
        .query(
            "SELECT job_id, idx, name, has_revert, state, attempts, exec_outcome, result
             FROM job_tasks WHERE job_id = ANY($1) ORDER BY job_id, idx",
            &[&ids],
        )
        .await?;
    for row in &rows {
        let owner: String = row.try_get(0)?;
        let task = journal_task(row)?;
        if let Some(job) = rescue.taken.iter_mut().find(|r| r.id.as_str() == owner) {
            job.tasks.push(task);
        }
    }
    Ok(rescue)
}

fn journal_task(row: &Row) -> Result<JournalTask, tokio_postgres::Error> {
    Ok(JournalTask {
        idx: row.try_get(1)?,
        name: row.try_get(2)?,
        has_revert: row.try_get(3)?,
        state: row.try_get(4)?,
        attempts: row.try_get(5)?,
        exec_outcome: row.try_get(6)?,
        result: row.try_get(7)?,
    })
}

/// Task rows as the column arrays an `unnest` takes.
struct TaskColumns<'a> {
    job_ids: Vec<&'a str>,
    idx: Vec<i32>,
    names: Vec<&'a str>,
    has_revert: Vec<bool>,
    states: Vec<&'a str>,
    attempts: Vec<i32>,
    outcomes: Vec<Option<&'a str>>,
    results: Vec<&'a str>,
}

impl<'a> TaskColumns<'a> {
    /// The arrays as the eight parameters that follow a statement's own.
    fn params(&self) -> [&(dyn ToSql + Sync); 8] {
        [
            &self.job_ids,
            &self.idx,
            &self.names,
            &self.has_revert,
            &self.states,
            &self.attempts,
            &self.outcomes,
            &self.results,
        ]
    }

    /// `tasks`, the n-th of them belonging to the n-th of `owners`.
    fn of(owners: impl Iterator<Item = &'a str>, tasks: &'a [JournalTask]) -> Self {
        Self {
            job_ids: owners.collect(),
            idx: tasks.iter().map(|t| t.idx).collect(),
            names: tasks.iter().map(|t| t.name.as_str()).collect(),
            has_revert: tasks.iter().map(|t| t.has_revert).collect(),
            states: tasks.iter().map(|t| t.state.as_str()).collect(),
            attempts: tasks.iter().map(|t| t.attempts).collect(),
            outcomes: tasks.iter().map(|t| t.exec_outcome.as_deref()).collect(),
            results: tasks.iter().map(|t| t.result.as_str()).collect(),
        }
    }
}
