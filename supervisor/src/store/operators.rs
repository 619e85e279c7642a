//! Operators' orders in the store: who asked, when and why (stored with the transition the
//! order caused, and as the job's last order), whether a job is paused, and which alert hooks
//! were started.

use super::db::{Database, args};
use super::transitions::change_job_state;
use super::{Result, Store, StoreError};
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
            let changed = tx.execute(
                "UPDATE jobs SET paused_ms = ?2 WHERE id = ?1",
                args![id.as_str(), since_ms],
            )?;
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
            let inserted = tx.execute(
                "INSERT INTO hook_runs (job_id, event, hook, started_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT DO NOTHING",
                args![id.as_str(), event, hook, super::now_ms()],
            )?;
            Ok(inserted == 1)
        })
    }
}

impl Store {
    /// The number of the job's last output line written before `since_ms` (0 if none): pass
    /// it to [`Store::output_page`] for the lines written since.
    pub fn output_before(&self, id: &JobId, since_ms: i64) -> Result<i64> {
        self.db()
            .query_one(
                "SELECT COALESCE(MAX(id), 0) FROM output WHERE job_id = ?1 AND at_ms < ?2",
                args![id.as_str(), since_ms],
            )?
            .get(0)
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
    /// The store's size ([`Store::size_bytes`]).
    pub store_bytes: u64,
}

impl Store {
    /// How many bytes the store takes where it lives: SQLite's file and WAL, or the tables
    /// and indexes of its schema in PostgreSQL.
    pub fn size_bytes(&self) -> Result<u64> {
        self.db().size_bytes()
    }

    /// The counts the metrics show at each scrape: one read transaction.
    pub fn metrics_counts(&self) -> Result<MetricsCounts> {
        let db = self.db();
        let mut by_state = Vec::new();
        for row in db.query("SELECT state, COUNT(*) FROM jobs GROUP BY state", args![])? {
            if let Ok(state) = row.get::<String>(0)?.parse() {
                by_state.push((state, row.get(1)?));
            }
        }
        let live = super::sql_list(super::live_states());
        let row = db.query_one(
            &format!(
                "SELECT COUNT(unresponsive_ms), COUNT(paused_ms) FROM jobs WHERE state IN ({live})"
            ),
            args![],
        )?;
        let (unresponsive, paused) = (row.get(0)?, row.get(1)?);
        Ok(MetricsCounts {
            by_state,
            unresponsive,
            paused,
            store_bytes: db.size_bytes()?,
        })
    }
}

/// Stamps the transition just recorded in this transaction with the order that caused it, and
/// makes it the job's last order. Nothing without an order.
pub(super) fn stamp_order(db: &dyn Database, id: &JobId, by: Option<&Requester>) -> Result<()> {
    let Some(by) = by else {
        return Ok(());
    };
    // The job's newest transition: the one this transaction just recorded.
    db.execute(
        "UPDATE transitions SET by_order = ?2
         WHERE id = (SELECT MAX(id) FROM transitions WHERE job_id = ?1)",
        args![id.as_str(), encode(by).as_str()],
    )?;
    set_last_order(db, id, by)
}

fn set_last_order(db: &dyn Database, id: &JobId, by: &Requester) -> Result<()> {
    let changed = db.execute(
        "UPDATE jobs SET last_order = ?2 WHERE id = ?1",
        args![id.as_str(), encode(by).as_str()],
    )?;
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
pub(super) mod tests {
    use super::super::tests::Backend;
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

    pub(in crate::store) fn an_order_is_stored_with_its_transition_and_as_the_last_order(
        backend: &Backend,
    ) {
        let store = backend.open();
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
            .db()
            .query(
                "SELECT by_order FROM transitions WHERE job_id = ?1 ORDER BY id",
                args![id.as_str()],
            )
            .expect("query")
            .iter()
            .map(|row| row.get(0).expect("by_order"))
            .collect();
        assert_eq!(stamped.len(), 2, "{stamped:?}");
        assert_eq!(stamped[0], None, "the submission had no order");
        assert_eq!(decode(stamped[1].as_deref()), Some(by));
    }

    pub(in crate::store) fn a_hook_is_begun_once(backend: &Backend) {
        let store = backend.open();
        let id = JobId::from_random(7);
        assert!(store.begin_hook(&id, "end", "job").expect("first"));
        assert!(!store.begin_hook(&id, "end", "job").expect("second"));
        assert!(store.begin_hook(&id, "end", "daemon").expect("other hook"));
    }
}
