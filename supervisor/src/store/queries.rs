//! Read-side queries for the CLI: job lookup, `ls`, `status`.

use super::{Result, Store, StoreError, TaskRow, job_row, live_states, sql_list, task_rows};
use rusqlite::params;
use shared::ids::JobId;
use shared::protocol::client::{JobStatus, JobSummary, ListQuery, TaskStatus};
use shared::state::{JobState, TaskState};

impl Store {
    /// The id of a job named by the user; [`StoreError::BadJobId`] when the text is not an id,
    /// [`StoreError::UnknownJob`] when there is no such job.
    pub fn find_job(&self, text: &str) -> Result<JobId> {
        let id = parse_id(text.trim())?;
        let conn = self.conn();
        match job_row(&conn, &id)? {
            Some(_) => Ok(id),
            None => Err(StoreError::UnknownJob(id)),
        }
    }

    /// Jobs in submission order: the live ones, or all, whole (tests and small stores; the
    /// daemon pages with [`Store::list_page`]).
    pub fn list(&self, all: bool) -> Result<Vec<JobSummary>> {
        Ok(self.list_page(all, &ListQuery::default(), 0, u32::MAX)?.0)
    }

    /// The `seq` after which the jobs of `query` begin: 0, or with a limit of N, just before
    /// the N-th most recent job that passes (an index walk backwards, not a scan of history).
    pub fn list_start(&self, all: bool, query: &ListQuery) -> Result<i64> {
        let Some(limit) = query.limit else {
            return Ok(0);
        };
        if limit == 0 {
            return Ok(i64::MAX);
        }
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT j.seq FROM jobs j WHERE {} ORDER BY j.seq DESC LIMIT 1 OFFSET ?4",
            list_filter(all, query)
        ))?;
        let offset = i64::try_from(limit - 1).unwrap_or(i64::MAX);
        let (name, since) = list_params(query);
        let mut rows = stmt.query(params![0_i64, name, since, offset])?;
        match rows.next()? {
            Some(row) => Ok(row.get::<_, i64>(0)? - 1),
            None => Ok(0),
        }
    }

    /// At most `page` jobs of `query` with `seq` above `after`, in submission order, and the
    /// `seq` of the last one (where the next page starts).
    pub fn list_page(
        &self,
        all: bool,
        query: &ListQuery,
        after: i64,
        page: u32,
    ) -> Result<(Vec<JobSummary>, i64)> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "{} LIMIT ?4",
            summary_sql(&list_filter(all, query))
        ))?;
        let (name, since) = list_params(query);
        let rows = stmt
            .query_map(params![after, name, since, page], summary_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let last = rows.last().map_or(after, |row| row.0);
        let jobs = rows.into_iter().map(summary).collect::<Result<Vec<_>>>()?;
        Ok((jobs, last))
    }

    /// The summaries (as `ls` shows them) of those of `ids` the store has, one indexed read
    /// each: what the board's mirror publishes, lighter than a whole [`Store::status`].
    pub fn summaries(&self, ids: &[JobId]) -> Result<Vec<JobSummary>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&summary_sql("j.id = ?1"))?;
        let mut jobs = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(row) = stmt
                .query_map([id.as_str()], summary_row)?
                .next()
                .transpose()?
            {
                jobs.push(summary(row)?);
            }
        }
        Ok(jobs)
    }

    /// The job and each of its tasks.
    pub fn status(&self, id: &JobId) -> Result<JobStatus> {
        let conn = self.conn();
        let job = job_row(&conn, id)?.ok_or_else(|| StoreError::UnknownJob(id.clone()))?;
        let tasks = task_rows(&conn, id)?;
        let (last_order, spec): (Option<String>, String) = conn
            .prepare_cached("SELECT last_order, spec FROM jobs WHERE id = ?1")?
            .query_row([id.as_str()], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(JobStatus {
            id: id.clone(),
            name: job.name,
            state: job.state,
            reason: job.reason,
            source: job.source,
            created_ms: job.created_ms,
            started_ms: job.started_ms,
            ended_ms: job.ended_ms,
            conductor_pid: job.conductor_pid,
            containment: job.containment,
            unresponsive_since_ms: job.unresponsive_ms,
            last_order: super::operators::decode(last_order.as_deref()),
            paused_since_ms: job.paused_ms,
            tasks: task_statuses(job.state, tasks, &spec),
        })
    }

    /// Jobs whose conductor may still run: the live ones, and any whose conductor's exit nobody
    /// saw (a daemon that died between storing a job's end and acknowledging it leaves such a
    /// conductor waiting for the acknowledgement). A new daemon must re-attach to them.
    pub fn attached_jobs(&self) -> Result<Vec<super::JobRow>> {
        let ids: Vec<String> = {
            let conn = self.conn();
            let attached = live_states()
                .into_iter()
                .filter(|s| *s != JobState::Pending);
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT id FROM jobs WHERE state IN ({}) OR conductor_exited = 0 ORDER BY seq",
                sql_list(attached),
            ))?;
            stmt.query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?
        };
        ids.iter().map(|id| self.job(&parse_id(id)?)).collect()
    }

    /// Pending jobs in submission order.
    pub fn queued_jobs(&self) -> Result<Vec<JobId>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT id FROM jobs WHERE state = ?1 ORDER BY seq")?;
        let ids = stmt
            .query_map([JobState::Pending.as_str()], |row| row.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        ids.iter().map(|id| parse_id(id)).collect()
    }
}

/// A job id, typed by a user or stored; [`StoreError::BadJobId`] if it is not one.
fn parse_id(text: &str) -> Result<JobId> {
    JobId::parse(text).ok_or_else(|| StoreError::BadJobId(text.to_owned()))
}

/// For each task of the stored spec `spec` (JSON) of a graph, the names of the tasks it runs
/// after; empty for a linear job (file order says it) and when the spec does not read
/// (`status` still shows the rest).
fn after_names(spec: &str) -> Vec<Vec<String>> {
    let Ok(spec) = serde_json::from_str::<shared::spec::JobSpec>(spec) else {
        return Vec::new();
    };
    if spec.flow == shared::spec::Flow::Linear {
        return Vec::new();
    }
    let graph = shared::spec::Graph::of(&spec);
    (0..spec.tasks.len())
        .map(|i| {
            graph
                .deps(i)
                .iter()
                .map(|&d| spec.tasks[d].name.clone())
                .collect()
        })
        .collect()
}

/// The tasks of a job in `state` as `status` shows them, from their rows and the job's spec
/// (JSON; a graph's `after` comes from it): the store's, or the board's journal of another
/// host's job.
#[must_use]
pub fn task_statuses(state: JobState, tasks: Vec<TaskRow>, spec: &str) -> Vec<TaskStatus> {
    let after = after_names(spec);
    let accounting = matches!(
        state,
        JobState::Killed | JobState::Crashed | JobState::RevertFailed
    );
    tasks
        .into_iter()
        .map(|t| {
            let after = usize::try_from(t.idx)
                .ok()
                .and_then(|i| after.get(i).cloned())
                .unwrap_or_default();
            task_status(t, accounting, after)
        })
        .collect()
}

fn task_status(task: TaskRow, accounting: bool, after: Vec<String>) -> TaskStatus {
    let revert_pending = accounting && task.revert_began_or_needed();
    TaskStatus {
        after,
        revert_pending,
        name: task.name,
        state: task.state,
        attempts: task.attempts,
        exec_outcome: task.exec_outcome,
        result: task.result,
        error: task.error,
        started_ms: task.started_ms,
        ended_ms: task.ended_ms,
    }
}

/// The `WHERE` clause of `ls`: `?1` the `seq` to start after, `?2` the name glob, `?3` the
/// earliest `created_ms`. The states are inlined (names from `as_str`, never input) so that the
/// planner sees them and walks `jobs_by_state` for the live jobs instead of the whole table.
fn list_filter(all: bool, query: &ListQuery) -> String {
    let states = if !query.states.is_empty() {
        format!(
            "j.state IN ({}) AND ",
            sql_list(query.states.iter().copied())
        )
    } else if all {
        String::new()
    } else {
        format!("j.state IN ({}) AND ", sql_list(live_states()))
    };
    format!(
        "{states}j.seq > ?1 AND (?2 IS NULL OR j.name GLOB ?2) AND (?3 IS NULL OR j.created_ms >= ?3)"
    )
}

/// A job summary's columns as [`summary_row`] reads them: `seq`, id, name, state, created,
/// paused since, the task that runs (or last began), how many tasks run.
type SummaryRow = (
    i64,
    String,
    String,
    String,
    i64,
    Option<i64>,
    Option<String>,
    i64,
);

/// The `SELECT` of the summaries of the jobs `j` where `filter` holds, in submission order.
fn summary_sql(filter: &str) -> String {
    format!(
        "SELECT j.seq, j.id, j.name, j.state, j.created_ms, j.paused_ms,
                (SELECT t.name FROM tasks t WHERE t.job_id = j.id AND t.state != '{}'
                 ORDER BY t.started_ms DESC, t.idx DESC LIMIT 1),
                (SELECT COUNT(*) FROM tasks t WHERE t.job_id = j.id AND t.state IN ('{}', '{}'))
         FROM jobs j
         WHERE {filter}
         ORDER BY j.seq",
        TaskState::Pending.as_str(),
        TaskState::Running.as_str(),
        TaskState::Reverting.as_str(),
    )
}

fn summary_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SummaryRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
    ))
}

fn summary(
    (_, id, name, state, created_ms, paused_since_ms, task, running): SummaryRow,
) -> Result<JobSummary> {
    Ok(JobSummary {
        id: parse_id(&id)?,
        name,
        state: state.parse()?,
        task,
        created_ms,
        paused_since_ms,
        running: u32::try_from(running).unwrap_or(0),
    })
}

/// The bound values of [`list_filter`]: the name glob in SQLite's syntax, the earliest time.
fn list_params(query: &ListQuery) -> (Option<String>, Option<i64>) {
    // `ls --name` knows `*` and `?` only: a `[` is a literal, which GLOB spells `[[]`.
    let name = query.name.as_ref().map(|glob| glob.replace('[', "[[]"));
    (name, query.since_ms)
}

#[cfg(test)]
mod tests {
    use super::super::tests::TempDir;
    use super::*;

    fn store_with(names: &[&str]) -> (TempDir, Store, Vec<JobId>) {
        let dir = TempDir::new();
        let store = Store::open(dir.path()).expect("open");
        let ids = names
            .iter()
            .map(|name| {
                let text = format!("name = \"{name}\"\n[[task]]\nname = \"a\"\nrun = \"true\"\n");
                let spec = shared::spec::JobSpec::parse(&text, "t.toml", "t").expect("spec");
                store.create_job(&spec, "t.toml", None).expect("create")
            })
            .collect();
        (dir, store, ids)
    }

    #[test]
    fn live_jobs_are_read_by_the_state_index() {
        let (_dir, store, _) = store_with(&["a"]);
        let conn = store.conn();
        let sql = format!(
            "EXPLAIN QUERY PLAN SELECT j.seq FROM jobs j WHERE {} ORDER BY j.seq LIMIT ?4",
            list_filter(false, &ListQuery::default())
        );
        let mut stmt = conn.prepare(&sql).expect("prepare");
        let plan: Vec<String> = stmt
            .query_map(params![0_i64, None::<String>, None::<i64>, 500], |row| {
                row.get::<_, String>(3)
            })
            .expect("plan")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert!(
            plan.iter().any(|step| step.contains("jobs_by_state")),
            "{plan:?}"
        );
        assert!(
            !plan.iter().any(|step| step.starts_with("SCAN")),
            "{plan:?}"
        );
    }

    #[test]
    fn summaries_are_those_of_the_list_and_skip_unknown_ids() {
        let (_dir, store, ids) = store_with(&["a", "b", "c"]);
        let unknown = JobId::from_random(0);
        let asked = [ids[2].clone(), unknown, ids[0].clone()];
        let got = store.summaries(&asked).expect("summaries");
        let listed = store.list(true).expect("list");
        assert_eq!(got, [listed[2].clone(), listed[0].clone()]);
    }

    #[test]
    fn pages_limits_and_globs() {
        let (_dir, store, ids) = store_with(&["a1", "a2", "b[1]", "a3", "a4"]);
        let all = |query: &ListQuery| {
            let mut after = store.list_start(true, query).expect("start");
            let mut got = Vec::new();
            loop {
                let (page, last) = store.list_page(true, query, after, 2).expect("page");
                let more = page.len() == 2;
                got.extend(page.into_iter().map(|j| j.id));
                after = last;
                if !more {
                    return got;
                }
            }
        };
        assert_eq!(all(&ListQuery::default()), ids);
        let limited = ListQuery {
            limit: Some(2),
            ..ListQuery::default()
        };
        assert_eq!(store.list_start(true, &limited).expect("start"), 3);
        let named = |glob: &str, limit| ListQuery {
            name: Some(glob.into()),
            limit,
            ..ListQuery::default()
        };
        assert_eq!(
            all(&named("a?", Some(3))),
            [1, 3, 4].map(|i| ids[i].clone())
        );
        assert_eq!(all(&named("b[1]", None)), [ids[2].clone()]);
        assert_eq!(all(&named("b1", None)), Vec::<JobId>::new());
        let none = ListQuery {
            limit: Some(0),
            ..ListQuery::default()
        };
        assert_eq!(all(&none), Vec::<JobId>::new());
    }
}
