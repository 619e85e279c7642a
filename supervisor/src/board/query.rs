//! The board's shared query connection ([`Role::Query`]): operators' reads of the mirror
//! (`ls`, `status`, `--wait`), their requests and the reads of the owners' answers, the
//! owner's reads and marks of its requests, and the journal's submits, write-aheads, late
//! writes and rescues. It is opened on first use and again after a failure or a timeout (a
//! stuck one is abandoned), so a board that was down costs one failed request, not the
//! daemon. It is never the renewals' nor the listener's connection.

use super::journal::{self, Claimed, Entry, NewJob, Placement, Rescue};
use super::mirror::{self, RemoteQuery};
use super::requests::{self, Answer, Ask, Outcome, Pending, Written};
use super::{Board, BoardError, Connection, QUERY_TIMEOUT, Role, connect};
use shared::ids::JobId;
use shared::protocol::client::{HostedJob, LateWrite};
use std::future::Future;
use std::sync::{Arc, MutexGuard, PoisonError};

impl Board {
    /// The cached shared connection (the lock is held only to read or swap it).
    fn query_slot(&self) -> MutexGuard<'_, Option<Arc<Connection>>> {
        self.inner
            .query
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The shared query connection, (re)opened when there is none or it closed.
    async fn query_connection(&self) -> Result<Arc<Connection>, BoardError> {
        let cached = self.query_slot().clone();
        if let Some(connection) = cached.filter(|c| !c.is_closed()) {
            return Ok(connection);
        }
        let fresh = Arc::new(connect(&self.inner.config, Role::Query).await?);
        *self.query_slot() = Some(Arc::clone(&fresh));
        Ok(fresh)
    }

    /// Forgets the shared connection (after an error or a timeout: the next query reconnects).
    fn drop_query_connection(&self) {
        let old = self.query_slot().take();
        if let Some(old) = old.and_then(|old| Arc::try_unwrap(old).ok()) {
            old.abandon();
        }
    }

    /// Runs `query` on the shared connection within [`QUERY_TIMEOUT`].
    async fn with_query<T, F, Fut>(&self, what: &'static str, query: F) -> Result<T, BoardError>
    where
        F: FnOnce(Arc<Connection>) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let connection = self.query_connection().await?;
        match tokio::time::timeout(QUERY_TIMEOUT, query(connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => {
                self.drop_query_connection();
                Err(BoardError::Query { what, source })
            }
            Err(_) => {
                self.drop_query_connection();
                Err(BoardError::Timeout {
                    url: self.inner.config.shown_url.clone(),
                    timeout: QUERY_TIMEOUT,
                })
            }
        }
    }

    /// Job `id` as the mirror shows it ([`mirror::find`]: for a job the local store lacks).
    pub async fn find_job(&self, id: &JobId) -> Result<Vec<HostedJob>, BoardError> {
        let id = id.clone();
        self.with_query("read a job", |c| async move {
            mirror::find(c.client(), &id).await
        })
        .await
    }

    /// The journal of job `id` as `host` (empty: no host) holds it ([`journal::read`]).
    pub async fn read_journal(
        &self,
        id: &JobId,
        host: &str,
    ) -> Result<Option<journal::Journaled>, BoardError> {
        let (id, host) = (id.clone(), host.to_owned());
        self.with_query("read a job's journal", |c| async move {
            journal::read(c.client(), &id, &host).await
        })
        .await
    }

    /// Where the `limit` most recent jobs of `query` begin in the mirror.
    pub async fn list_start(&self, query: Arc<RemoteQuery>, limit: u64) -> Result<i64, BoardError> {
        self.with_query("list the board's jobs", |c| async move {
            mirror::list_start(c.client(), &query, limit).await
        })
        .await
    }

    /// One page of the mirror's jobs of `query` after `after`.
    pub async fn list_page(
        &self,
        query: Arc<RemoteQuery>,
        after: i64,
        page: i64,
    ) -> Result<mirror::Page, BoardError> {
        self.with_query("list the board's jobs", |c| async move {
            mirror::list_page(c.client(), &query, after, page).await
        })
        .await
    }

    /// Deletes this host's mirror rows of `ids` (jobs it pruned); how many it deleted.
    pub async fn forget_jobs(&self, ids: Vec<JobId>) -> Result<u64, BoardError> {
        let me = self.inner.config.host.clone();
        self.with_query("delete pruned jobs", |c| async move {
            let ids: Vec<&str> = ids.iter().map(JobId::as_str).collect();
            mirror::forget(c.client(), &me, &ids).await
        })
        .await
    }

    /// Deletes the board's ended unclaimed jobs older than `older_than` in `states`
    /// ([`journal::prune_unclaimed`]); their ids.
    pub async fn prune_unclaimed(
        &self,
        older_than: std::time::Duration,
        states: Vec<shared::state::JobState>,
    ) -> Result<Vec<JobId>, BoardError> {
        let older_than_ms = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
        self.with_query("prune the board's unclaimed jobs", |c| async move {
            let states: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
            journal::prune_unclaimed(c.client(), older_than_ms, &states).await
        })
        .await
    }

    /// Writes `ask` of job `id` for the host that holds it, and notifies it.
    pub async fn request(&self, id: &JobId, ask: Ask) -> Result<Written, BoardError> {
        let me = self.inner.config.host.clone();
        let id = id.clone();
        self.with_query("write a request", |c| async move {
            requests::request(c.client(), &id, &me, &ask).await
        })
        .await
    }

    /// This host's requests not yet done.
    pub async fn pending_requests(&self) -> Result<Vec<Pending>, BoardError> {
        let me = self.inner.config.host.clone();
        self.with_query("read this host's requests", |c| async move {
            requests::pending(c.client(), &me).await
        })
        .await
    }

    /// Marks request `seq` done with `outcome`.
    pub async fn mark_done(&self, seq: i64, outcome: Outcome) -> Result<(), BoardError> {
        self.with_query("mark a request done", |c| async move {
            requests::mark_done(c.client(), seq, &outcome).await
        })
        .await
    }

    /// Forgets the owner's reply to request `seq` (its requester read it).
    pub async fn clear_reply(&self, seq: i64) -> Result<(), BoardError> {
        self.with_query("clear a request's reply", |c| async move {
            requests::clear_reply(c.client(), seq).await
        })
        .await
    }

    /// Deletes request `seq` (done, its answer read).
    pub async fn forget_request(&self, seq: i64) -> Result<(), BoardError> {
        self.with_query("delete a request", |c| async move {
            requests::forget(c.client(), seq).await
        })
        .await
    }

    /// Writes `job` on the journal, held by this host at epoch 1 (`pinned` `None`), or
    /// unclaimed (`pinned` `Some`: the host asked, or `None` for any host) and announced;
    /// `false` if its id is taken.
    pub async fn insert_job(
        &self,
        job: NewJob,
        unclaimed: Option<Option<String>>,
    ) -> Result<bool, BoardError> {
        let me = self.inner.config.host.clone();
        self.with_query("write a job", |c| async move {
            let placement = match &unclaimed {
                None => Placement::Here(&me),
                Some(pinned) => Placement::Unclaimed {
                    pinned: pinned.as_deref(),
                },
            };
            journal::insert(c.client(), placement, &job).await
        })
        .await
    }

    /// Claims up to `free` unclaimed jobs ([`journal::claim`]) and holds them.
    pub async fn claim(&self, free: usize) -> Result<Vec<Claimed>, BoardError> {
        let me = self.inner.config.host.clone();
        let free = i64::try_from(free).unwrap_or(i64::MAX);
        let claimed = self
            .with_query("claim jobs", |c| async move {
                journal::claim(c.client(), &me, free).await
            })
            .await?;
        for job in &claimed {
            self.hold(&job.id, job.epoch);
        }
        Ok(claimed)
    }

    /// Where request `seq` stands, and whether its job's mirror row changed after
    /// `updated_us`.
    pub async fn request_answer(&self, seq: i64, updated_us: i64) -> Result<Answer, BoardError> {
        self.with_query("read a request's answer", |c| async move {
            requests::answer(c.client(), seq, updated_us).await
        })
        .await
    }
    /// Removes job `id` that [`Board::insert_job`] wrote (its local commit failed).
    pub async fn forget_job(&self, id: &JobId) -> Result<(), BoardError> {
        let me = self.inner.config.host.clone();
        let id = id.clone();
        self.with_query("remove a job", |c| async move {
            journal::forget(c.client(), &me, &id).await
        })
        .await
    }

    /// Writes `entries` of this host's jobs, each under its epoch; returns the refused ones'
    /// ids (the caller calls [`Board::refused`] for each).
    pub async fn write_journal(&self, entries: Vec<Entry>) -> Result<Vec<JobId>, BoardError> {
        let me = self.inner.config.host.clone();
        self.with_query("write the journal", |c| async move {
            journal::write(c.client(), &me, &entries).await
        })
        .await
    }

    /// Records a refused write of this instance.
    pub(super) async fn record_late(
        &self,
        id: &JobId,
        epoch: i64,
        what: &str,
    ) -> Result<(), BoardError> {
        let (me, instance) = (self.inner.config.host.clone(), self.inner.instance.clone());
        let (id, what) = (id.clone(), what.to_owned());
        self.with_query("record a late write", |c| async move {
            journal::record_late(c.client(), &id, &me, &instance, epoch, &what).await
        })
        .await
    }

    /// The refused writes about job `id`.
    pub async fn late_writes(&self, id: &JobId) -> Result<Vec<LateWrite>, BoardError> {
        let id = id.clone();
        self.with_query("read a job's late writes", |c| async move {
            journal::late_writes(c.client(), &id).await
        })
        .await
    }

    /// The jobs this host holds that never started ([`journal::held_pending`]).
    pub async fn held_pending(&self) -> Result<Vec<Claimed>, BoardError> {
        let me = self.inner.config.host.clone();
        self.with_query("read this host's pending jobs", |c| async move {
            journal::held_pending(c.client(), &me).await
        })
        .await
    }

    /// Gives job `id`, claimed here at `epoch`, back unclaimed ([`journal::release`]) and
    /// forgets it; whether the board still had it so.
    pub async fn release_claim(&self, id: &JobId, epoch: i64) -> Result<bool, BoardError> {
        let me = self.inner.config.host.clone();
        let job = id.clone();
        let released = self
            .with_query("give a claimed job back", |c| async move {
                journal::release(c.client(), &me, &job, epoch).await
            })
            .await?;
        self.forget(std::slice::from_ref(id));
        Ok(released)
    }

    /// Takes up to `batch` jobs of lost hosts ([`journal::rescue`]) and holds those it took
    /// (those given back unclaimed are claimed as any other).
    pub async fn rescue(&self, batch: i64) -> Result<Rescue, BoardError> {
        let me = self.inner.config.host.clone();
        let rescue = self
            .with_query("rescue the jobs of lost hosts", |c| async move {
                journal::rescue(c.client(), &me, batch).await
            })
            .await?;
        for job in &rescue.taken {
            self.hold(&job.id, job.epoch);
        }
        Ok(rescue)
    }

    /// Of `ids` (jobs of the local store), those the journal has and this host does not hold
    /// ([`journal::held_elsewhere`]: taken while this daemon was away); each is marked stale
    /// here, so nothing about it is written or started under an epoch of the past.
    pub async fn taken_elsewhere(&self, ids: Vec<JobId>) -> Result<Vec<JobId>, BoardError> {
        let me = self.inner.config.host.clone();
        let taken = self
            .with_query("read which jobs another host holds", |c| async move {
                journal::held_elsewhere(c.client(), &me, &ids).await
            })
            .await?;
        for id in &taken {
            self.mark_stale(id);
        }
        Ok(taken)
    }
}
