//! INTERIM (lead's scaffold until the store branch lands): the planned compare-and-set API.

use super::{Result, Store, StoreError, change_job_state, job_row};
use shared::ids::JobId;
use shared::state::JobState;
use std::sync::Arc;

impl Store {
    pub fn transition_job(
        &self,
        id: &JobId,
        from: &[JobState],
        to: JobState,
        reason: Option<&str>,
    ) -> Result<JobState> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let state = job_row(&tx, id)?
            .ok_or_else(|| StoreError::UnknownJob(id.clone()))?
            .state;
        if !from.contains(&state) {
            return Err(StoreError::WrongState {
                id: id.clone(),
                state,
            });
        }
        change_job_state(&tx, id, to, reason)?;
        tx.commit()?;
        Ok(state)
    }

    pub fn begin_revert(&self, id: &JobId, reason: &str) -> Result<()> {
        let tasks = self.tasks(id)?;
        if super::pending_reverts(&tasks).is_empty() {
            return Err(StoreError::NothingToRevert(id.clone()));
        }
        self.transition_job(
            id,
            &[JobState::Killed, JobState::Crashed, JobState::RevertFailed],
            JobState::Reverting,
            Some(reason),
        )
        .map(|_| ())
    }

    pub fn begin_resume(&self, id: &JobId, reason: &str) -> Result<()> {
        use shared::state::TaskState;
        let tasks = self.tasks(id)?;
        if tasks.iter().any(|t| {
            matches!(
                t.state,
                TaskState::Reverting | TaskState::Reverted | TaskState::RevertFailure
            )
        }) {
            return Err(StoreError::AlreadyReverting(id.clone()));
        }
        self.transition_job(
            id,
            &[JobState::Killed, JobState::Crashed],
            JobState::Running,
            Some(reason),
        )
        .map(|_| ())
    }
}

/// The store on its own thread (interim: spawn_blocking).
#[derive(Clone)]
pub struct StoreHandle {
    store: Arc<Store>,
    inline: bool,
}

impl StoreHandle {
    pub fn open(dir: &std::path::Path) -> Result<Self> {
        Ok(Self {
            store: Arc::new(Store::open(dir)?),
            inline: false,
        })
    }

    pub fn inline(store: Store) -> Self {
        Self {
            store: Arc::new(store),
            inline: true,
        }
    }

    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        if self.inline {
            return f(&self.store);
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }
}
