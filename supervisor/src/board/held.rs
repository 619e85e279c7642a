//! Which jobs of the journal this daemon holds, at which epoch, and which it lost: every owner
//! write about a job carries the epoch found here (`journal::write`), and a job whose write was
//! refused is never reported as this host's again.

use super::Board;
use shared::ids::JobId;
use std::sync::PoisonError;

/// This daemon's standing on one job of the journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// Held at this epoch (submitted here: 1; rescued: the rescue's).
    Epoch(i64),
    /// A write was refused: another host took the job. Nothing more is written about it.
    Stale,
}

impl Board {
    /// This daemon's standing on job `id`; `None` for a job outside the journal (submitted
    /// before this daemon was on a board, or another host's).
    #[must_use]
    pub fn held(&self, id: &JobId) -> Option<Held> {
        self.inner
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .copied()
    }

    /// Records that this daemon holds job `id` at `epoch`.
    pub fn hold(&self, id: &JobId, epoch: i64) {
        self.inner
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone(), Held::Epoch(epoch));
    }

    /// Forgets `ids` (pruned from the local store), so the map stays as large as the store.
    pub fn forget(&self, ids: &[JobId]) {
        let mut held = self
            .inner
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for id in ids {
            held.remove(id);
        }
    }

    /// Records that job `id` was taken from this daemon; `false` if that was known already.
    pub(super) fn mark_stale(&self, id: &JobId) -> bool {
        let previous = self
            .inner
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone(), Held::Stale);
        previous != Some(Held::Stale)
    }

    /// A write of `what` about job `id` at `epoch` matched no row: logs `stale owner: write
    /// refused`, stops counting on the job, and records the write in `late_writes` (a failure
    /// to record is logged). The caller hard-kills the job if it still runs here.
    pub async fn refused(&self, id: &JobId, epoch: i64, what: &str) {
        if self.mark_stale(id) {
            tracing::warn!(job_id = %id, epoch, what, host = %self.inner.config.host, "stale owner: write refused");
        }
        if let Err(err) = self.record_late(id, epoch, what).await {
            tracing::warn!(job_id = %id, epoch, error = %err, "cannot record a late write");
        }
    }
}
