//! Operators' orders in the store: who asked, when and why (stored with the transition the
//! order caused, and as the job's last order), whether a job is paused, and which alert hooks
//! were started.

use super::transitions::change_job_state;
use super::{Result, Store, StoreError};
use rusqlite::{Connection, params};
use shared::ids::JobId;
use shared::protocol::client::Requester;
use shared::state::JobState;

impl Store {
    /// [`Store::transition_job`], recording `by` (the operator whose order caused it) with the
    /// transition and as the job's last order, in the same transaction.
    pub fn transition_job_by(
        &self,
        id: &JobId,
        from: &[JobState],
        to: JobState,
        reason: Option<&str>,
        by: Option<&Requester>,
    ) -> Result<JobState> {
        let durable = !to.is_live() || to == JobState::Cancelling;
        self.write(durable, |tx| {
            let was = change_job_state(tx, id, from, to, reason)?;
            stamp_order(tx, id, by)?;
            Ok(was)
        })
    }

    /// Records `by` as the job's last order, for an order that changes no state now (a kill
    /// whose end comes with the conductor's exit, a pause).
    pub fn record_order(&self, id: &JobId, by: &Requester) -> Result<()> {
        self.write(false, |tx| set_last_order(tx, id, by))
    }

    /// Marks the job paused since `since_ms`, or running again (`None`), with the order.
    pub fn set_paused(
        &self,
        id: &JobId,
        since_ms: Option<i64>,
        by: Option<&Requester>,
    ) -> Result<()> {
        self.write(false, |tx| {
            let changed = tx
                .prepare_cached("UPDATE jobs SET paused_ms = ?2 WHERE id = ?1")?
                .execute(params![id.as_str(), since_ms])?;
            if changed == 0 {
                return Err(StoreError::UnknownJob(id.clone()));
            }
            match by {
                Some(by) => set_last_order(tx, id, by),
                None => Ok(()),
            }
        })
    }

    /// Records that the hook `hook` (`job` or `daemon`) for `event` of the job starts now;
    /// false when it was recorded before (it ran already, perhaps under an earlier daemon), so
    /// that no hook ever runs twice for one event. Fsynced: the record must outlive a crash
    /// that follows the start.
    pub fn begin_hook(&self, id: &JobId, event: &str, hook: &str) -> Result<bool> {
        self.write(true, |tx| {
            let inserted = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO hook_runs (job_id, event, hook, started_ms) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![id.as_str(), event, hook, super::now_ms()])?;
            Ok(inserted == 1)
        })
    }
}

impl Store {
    /// The number of the job's last output line written before `since_ms` (0 if none): pass
    /// it to [`Store::output_page`] for the lines written since.
    pub fn output_before(&self, id: &JobId, since_ms: i64) -> Result<i64> {
        Ok(self.conn().query_row(
            "SELECT COALESCE(MAX(id), 0) FROM output WHERE job_id = ?1 AND at_ms < ?2",
            params![id.as_str(), since_ms],
            |row| row.get(0),
        )?)
    }
}

/// What the metrics read at scrape time.
#[derive(Clone, Debug, Default)]
pub struct MetricsCounts {
    /// Jobs per state.
    pub by_state: Vec<(JobState, i64)>,
    /// Live jobs whose conductor is unresponsive.
    pub unresponsive: i64,
    /// Live jobs paused.
    pub paused: i64,
}

impl Store {
    /// The counts the metrics show at each scrape: one read transaction.
    pub fn metrics_counts(&self) -> Result<MetricsCounts> {
        let conn = self.conn();
        let by_state = conn
            .prepare_cached("SELECT state, COUNT(*) FROM jobs GROUP BY state")?
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?
            .into_iter()
            .filter_map(|(state, n)| Some((state.parse().ok()?, n)))
            .collect();
        let live = super::sql_list(super::live_states());
        let (unresponsive, paused) = conn.query_row(
            &format!(
                "SELECT COUNT(unresponsive_ms), COUNT(paused_ms) FROM jobs WHERE state IN ({live})"
            ),
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        Ok(MetricsCounts {
            by_state,
            unresponsive,
            paused,
        })
    }
}

/// Stamps the transition just recorded in this transaction with the order that caused it, and
/// makes it the job's last order. Nothing without an order.
pub(super) fn stamp_order(conn: &Connection, id: &JobId, by: Option<&Requester>) -> Result<()> {
    let Some(by) = by else {
        return Ok(());
    };
    let json = encode(by);
    conn.prepare_cached(
        "UPDATE transitions SET by_order = ?2 WHERE id = last_insert_rowid() AND job_id = ?1",
    )?
    .execute(params![id.as_str(), json])?;
    set_last_order(conn, id, by)
}

fn set_last_order(conn: &Connection, id: &JobId, by: &Requester) -> Result<()> {
    let changed = conn
        .prepare_cached("UPDATE jobs SET last_order = ?2 WHERE id = ?1")?
        .execute(params![id.as_str(), encode(by)])?;
    if changed == 0 {
        return Err(StoreError::UnknownJob(id.clone()));
    }
    Ok(())
}

fn encode(by: &Requester) -> String {
    // A struct of strings and integers always encodes.
    serde_json::to_string(by).unwrap_or_default()
}

/// A stored order, if readable (one written by a later version may not be: it is then left out
/// rather than failing the whole status).
pub(super) fn decode(json: Option<&str>) -> Option<Requester> {
    json.and_then(|text| serde_json::from_str(text).ok())
}

#[cfg(test)]
mod tests {
    use super::super::tests::TempDir;
    use super::*;
    use shared::protocol::client::Action;
    use shared::spec::JobSpec;

    fn requester(action: Action) -> Requester {
        Requester {
            action,
            uid: 1000,
            pid: 4242,
            command: "supervisor cancel".into(),
            at_ms: 1,
            reason: Some("rollout aborted".into()),
        }
    }

    #[test]
    fn an_order_is_stored_with_its_transition_and_as_the_last_order() {
        let dir = TempDir::new();
        let store = Store::open(dir.path()).expect("open");
        let spec = JobSpec::parse("[[task]]\nname = \"a\"\nrun = \"true\"\n", "t.toml", "t")
            .expect("spec");
        let id = store.create_job(&spec, "t.toml", None).expect("create");
        let by = requester(Action::Cancel);
        store
            .transition_job_by(
                &id,
                &[JobState::Pending],
                JobState::Cancelled,
                None,
                Some(&by),
            )
            .expect("cancelled");
        let status = store.status(&id).expect("status");
        assert_eq!(status.last_order.as_ref(), Some(&by));
        let stamped: Vec<Option<String>> = store
            .conn()
            .prepare("SELECT by_order FROM transitions WHERE job_id = ?1 ORDER BY id")
            .expect("prepare")
            .query_map([id.as_str()], |row| row.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert_eq!(stamped.len(), 2, "{stamped:?}");
        assert_eq!(stamped[0], None, "the submission had no order");
        assert_eq!(decode(stamped[1].as_deref()), Some(by));
    }

    #[test]
    fn a_hook_is_begun_once() {
        let dir = TempDir::new();
        let store = Store::open(dir.path()).expect("open");
        let id = JobId::from_random(7);
        assert!(store.begin_hook(&id, "end", "job").expect("first"));
        assert!(!store.begin_hook(&id, "end", "job").expect("second"));
        assert!(store.begin_hook(&id, "end", "daemon").expect("other hook"));
    }
}
