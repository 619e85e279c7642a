//! Read-side queries for the CLI: job lookup, `ls`, `status`.

use super::db::{Database, Dialect, Row, args};
use super::{Result, Store, StoreError, TaskRow, job_row, live_states, sql_list, task_rows};
use shared::ids::JobId;
use shared::protocol::client::{JobStatus, JobSummary, ListQuery, TaskStatus};
use shared::state::{JobState, TaskState};

impl Store {
    /// The id of a job named by the user; [`StoreError::BadJobId`] when the text is not an id,
    /// [`StoreError::UnknownJob`] when there is no such job.
    pub fn find_job(&self, text: &str) -> Result<JobId> {
        let id = parse_id(text.trim())?;
        match job_row(&**self.db(), &id)? {
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
        let db = self.db();
        let dialect = db.dialect();
        let offset = i64::try_from(limit - 1).unwrap_or(i64::MAX);
        let (name, since) = list_params(dialect, query);
        let row = db.query_opt(
            &format!(
                "SELECT j.seq FROM jobs j WHERE {} ORDER BY j.seq DESC LIMIT 1 OFFSET ?4",
                list_filter(dialect, all, query)
            ),
            args![0_i64, name.as_deref(), since, offset],
        )?;
        match row {
            Some(row) => Ok(row.get::<i64>(0)? - 1),
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
        let db = self.db();
        let dialect = db.dialect();
        let (name, since) = list_params(dialect, query);
        let rows = db.query(
            &format!(
                "{} LIMIT ?4",
                summary_sql(&list_filter(dialect, all, query))
            ),
            args![after, name.as_deref(), since, page],
        )?;
        let last = match rows.last() {
            Some(row) => row.get(0)?,
            None => after,
        };
        let jobs = rows.iter().map(summary).collect::<Result<Vec<_>>>()?;
        Ok((jobs, last))
    }

    /// The summaries (as `ls` shows them) of those of `ids` the store has, one indexed read
    /// each: what the board's mirror publishes, lighter than a whole [`Store::status`].
    pub fn summaries(&self, ids: &[JobId]) -> Result<Vec<JobSummary>> {
        let db = self.db();
        let sql = summary_sql("j.id = ?1");
        let mut jobs = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(row) = db.query_opt(&sql, args![id.as_str()])? {
                jobs.push(summary(&row)?);
            }
        }
        Ok(jobs)
    }

    /// The job and each of its tasks.
    pub fn status(&self, id: &JobId) -> Result<JobStatus> {
        let db = self.db();
        let db: &dyn Database = &**db;
        let job = job_row(db, id)?.ok_or_else(|| StoreError::UnknownJob(id.clone()))?;
        let tasks = task_rows(db, id)?;
        let row = db.query_one(
            "SELECT last_order, spec FROM jobs WHERE id = ?1",
            args![id.as_str()],
        )?;
        let (last_order, spec): (Option<String>, String) = (row.get(0)?, row.get(1)?);
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
        let attached = live_states()
            .into_iter()
            .filter(|s| *s != JobState::Pending);
        let rows = self.db().query(
            &format!(
                "SELECT id FROM jobs WHERE state IN ({}) OR conductor_exited = 0 ORDER BY seq",
                sql_list(attached),
            ),
            args![],
        )?;
        rows.iter()
            .map(|row| self.job(&parse_id(&row.get::<String>(0)?)?))
            .collect()
    }

    /// Pending jobs in submission order.
    pub fn queued_jobs(&self) -> Result<Vec<JobId>> {
        self.db()
            .query(
                "SELECT id FROM jobs WHERE state = ?1 ORDER BY seq",
                args![JobState::Pending.as_str()],
            )?
            .iter()
            .map(|row| parse_id(&row.get::<String>(0)?))
            .collect()
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
fn list_filter(dialect: Dialect, all: bool, query: &ListQuery) -> String {
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
    // The casts give PostgreSQL the parameters' types where NULL is tested.
    let name = dialect.name_matches("j.name", "?2");
    format!(
        "{states}j.seq > ?1 AND (CAST(?2 AS TEXT) IS NULL OR {name})
         AND (CAST(?3 AS BIGINT) IS NULL OR j.created_ms >= ?3)"
    )
}

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

/// A summary from its row of [`summary_sql`]: `seq`, id, name, state, created, paused since,
/// the task that runs (or last began), how many tasks run.
fn summary(row: &Row) -> Result<JobSummary> {
    Ok(JobSummary {
        id: parse_id(&row.get::<String>(1)?)?,
        name: row.get(2)?,
        state: row.get::<String>(3)?.parse()?,
        task: row.get(6)?,
        created_ms: row.get(4)?,
        paused_since_ms: row.get(5)?,
        running: row.get::<u32>(7).unwrap_or(0),
    })
}

/// The bound values of [`list_filter`]: the name glob in the database's syntax, the earliest
/// time.
fn list_params(dialect: Dialect, query: &ListQuery) -> (Option<String>, Option<i64>) {
    let name = query.name.as_deref().map(|glob| dialect.name_pattern(glob));
    (name, query.since_ms)
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::tests::Backend;
    use super::*;

    fn store_with(backend: &Backend, names: &[&str]) -> (Store, Vec<JobId>) {
        let store = backend.open();
        let ids = names
            .iter()
            .map(|name| {
                let text = format!("name = \"{name}\"\n[[task]]\nname = \"a\"\nrun = \"true\"\n");
                let spec = shared::spec::JobSpec::parse(&text, "t.toml", "t").expect("spec");
                store.create_job(&spec, "t.toml", None).expect("create")
            })
            .collect();
        (store, ids)
    }

    #[test]
    fn live_jobs_are_read_by_the_state_index() {
        let backend = Backend::sqlite();
        let (store, _) = store_with(&backend, &["a"]);
        let sql = format!(
            "EXPLAIN QUERY PLAN SELECT j.seq FROM jobs j WHERE {} ORDER BY j.seq LIMIT ?4",
            list_filter(Dialect::Sqlite, false, &ListQuery::default())
        );
        let plan: Vec<String> = store
            .db()
            .query(&sql, args![0_i64, None::<&str>, None::<i64>, 500])
            .expect("plan")
            .iter()
            .map(|row| row.get(3).expect("detail"))
            .collect();
        assert!(
            plan.iter().any(|step| step.contains("jobs_by_state")),
            "{plan:?}"
        );
        assert!(
            !plan.iter().any(|step| step.starts_with("SCAN")),
            "{plan:?}"
        );
    }

    pub(in crate::store) fn summaries_are_those_of_the_list_and_skip_unknown_ids(
        backend: &Backend,
    ) {
        let (store, ids) = store_with(backend, &["a", "b", "c"]);
        let unknown = JobId::from_random(0);
        let asked = [ids[2].clone(), unknown, ids[0].clone()];
        let got = store.summaries(&asked).expect("summaries");
        let listed = store.list(true).expect("list");
        assert_eq!(got, [listed[2].clone(), listed[0].clone()]);
    }

    pub(in crate::store) fn pages_limits_and_globs(backend: &Backend) {
        let (store, ids) = store_with(backend, &["a1", "a2", "b[1]", "a3", "a4", "c%_d", "cxyd"]);
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
        assert_eq!(store.list_start(true, &limited).expect("start"), 5);
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
        // Only `*` and `?` are wildcards, in either database's pattern syntax.
        assert_eq!(all(&named("c%_d", None)), [ids[5].clone()]);
        assert_eq!(all(&named("c??d", None)), [5, 6].map(|i| ids[i].clone()));
        let none = ListQuery {
            limit: Some(0),
            ..ListQuery::default()
        };
        assert_eq!(all(&none), Vec::<JobId>::new());
    }
}
