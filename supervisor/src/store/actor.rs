//! The store on its own thread, for async callers (review M1): SQLite calls block (fsync, the
//! busy timeout while another process writes), and must not stall the runtime's workers.
//!
//! [`StoreHandle`] is a cheap clone of a channel's sending end; the thread named `store` owns
//! the [`Store`] and runs the calls one at a time, in arrival order, in batches: every call
//! already queued (at most [`BATCH`]) runs inside one transaction, committed once, and a call
//! that ran inside it is answered only after that commit (group commit, `group.rs`). A call
//! that ran before the batch's first write is answered at once. A call made with
//! [`StoreHandle::read`] only reads: it runs before the batch's writes, outside their
//! transaction, and is answered at once, so that a read never waits for their commit nor
//! fails with it (a full disk). That order is one the calls could have arrived in: a write of
//! the batch is answered only after its commit, so nothing queued beside it can depend on it.
//! A panic inside one
//! call is caught and answered as [`StoreError::Unavailable`] to that caller only (its writes
//! are rolled back, the batch's others stand); the thread serves on. The thread ends when the
//! last handle is dropped.

use super::group::replicate;
use super::{Holder, PostgresStore, Result, Store, StoreError};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::mpsc;
use std::thread::ThreadId;

/// One call: runs on the store's thread and returns its answer, to be sent when the store says.
struct Call {
    run: Box<dyn FnOnce(&Store) -> Answer + Send>,
    /// It only reads ([`StoreHandle::read`]): run before the batch's writes.
    reads_only: bool,
}

/// A call's answer, held until its batch's commit: sent as it is, or as the error that kept
/// the batch from committing.
type Answer = Box<dyn FnOnce(Option<&StoreError>) + Send>;

/// The most calls one batch runs: a burst cannot hold the write lock, nor the answers of its
/// first calls, for long.
pub(super) const BATCH: usize = 64;

/// A handle to the store's thread. Clone it freely.
#[derive(Clone)]
pub struct StoreHandle {
    calls: mpsc::Sender<Call>,
    thread: ThreadId,
    /// Tests with a paused clock run calls in place: tokio would otherwise advance its clock
    /// while a call runs on the store's thread, and fire timers early.
    in_place: Option<std::sync::Arc<Store>>,
}

impl StoreHandle {
    /// Opens the store in `dir` on its own thread; an error returns here.
    pub fn open(dir: &Path) -> Result<Self> {
        let dir = dir.to_owned();
        Self::start(move || Store::open(&dir))
    }

    /// Opens the store in PostgreSQL at `at` on its own thread (the blocking client must not
    /// run on an async runtime's), held as the daemon's; an error returns here.
    pub fn open_postgres(at: PostgresStore) -> Result<Self> {
        Self::start(move || Store::open_postgres(&at, Holder::Daemon))
    }

    /// Moves an open store onto its own thread: for tests.
    #[cfg(test)]
    pub fn serve(store: Store) -> Result<Self> {
        Self::start(move || Ok(store))
    }

    /// Starts the store's thread, which opens the store with `open` (the answer returns here)
    /// and then serves its calls.
    fn start(open: impl FnOnce() -> Result<Store> + Send + 'static) -> Result<Self> {
        let (calls, incoming) = mpsc::channel::<Call>();
        let (opened, open_result) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("store".into())
            .spawn(move || {
                let store = match open() {
                    Ok(store) => {
                        let _ = opened.send(Ok(()));
                        store
                    }
                    Err(err) => {
                        let _ = opened.send(Err(err));
                        return;
                    }
                };
                while let Ok(first) = incoming.recv() {
                    let mut batch = vec![first];
                    while batch.len() < BATCH {
                        match incoming.try_recv() {
                            Ok(call) => batch.push(call),
                            Err(_) => break,
                        }
                    }
                    run_batch(&store, batch);
                }
                tracing::debug!("store: last handle dropped; thread ends");
            })
            .map_err(|err| StoreError::Unavailable(format!("cannot start its thread: {err}")))?;
        open_result.recv().map_err(|_| gone())??;
        Ok(Self {
            calls,
            thread: thread.thread().id(),
            in_place: None,
        })
    }

    /// A handle whose calls run on the caller's thread: for deterministic tests only.
    #[cfg(test)]
    pub fn in_place(store: Store) -> Self {
        let (calls, _) = mpsc::channel::<Call>();
        Self {
            calls,
            thread: std::thread::current().id(),
            in_place: Some(std::sync::Arc::new(store)),
        }
    }

    /// Runs `f` on the store's thread and returns its result. Works on any tokio runtime
    /// (multi-thread or current-thread): waiting is a oneshot, no blocking. Once sent, a call
    /// runs to its end even if this future is dropped (its transaction commits or not as a
    /// whole; only the answer is lost).
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.call_as(false, f).await
    }

    /// Like [`call`](Self::call), for a call that only reads (`f` must write nothing): in a
    /// batch it runs before the writes, outside their transaction, and is answered at once.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.call_as(true, f).await
    }

    async fn call_as<T: Send + 'static>(
        &self,
        reads_only: bool,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        if let Some(store) = &self.in_place {
            return run_caught(store, f);
        }
        tracing::trace!(
            call = std::any::type_name_of_val(&f),
            reads_only,
            "store: call"
        );
        let (reply, answer) = tokio::sync::oneshot::channel();
        let mut call = boxed(f, move |result| {
            // The caller may have gone (a cancelled future): nobody to tell.
            let _ = reply.send(result);
        });
        call.reads_only = reads_only;
        self.send(call)?;
        answer.await.map_err(|_| gone())?
    }

    /// Like [`call`](Self::call), blocking the calling thread: for code that is not async (the
    /// CLI, a `spawn_blocking` task). Never call it from a runtime's worker thread, nor from
    /// inside another call (that is refused: it would wait for itself).
    pub fn call_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        if std::thread::current().id() == self.thread {
            return Err(StoreError::Unavailable(
                "a blocking call from the store's own thread".into(),
            ));
        }
        tracing::trace!(
            call = std::any::type_name_of_val(&f),
            "store: blocking call"
        );
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(boxed(f, move |result| {
            let _ = reply.send(result);
        }))?;
        answer.recv().map_err(|_| gone())?
    }

    fn send(&self, call: Call) -> Result<()> {
        self.calls.send(call).map_err(|_| gone())
    }
}

/// `f` as a call whose result goes to `deliver` when its batch says: as it is, or replaced by
/// the error that kept the batch from committing.
fn boxed<T: Send + 'static>(
    f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    deliver: impl FnOnce(Result<T>) + Send + 'static,
) -> Call {
    Call {
        run: Box::new(move |store| {
            let result = run_caught(store, f);
            Box::new(move |failed: Option<&StoreError>| {
                deliver(failed.map_or(result, |err| Err(replicate(err))));
            })
        }),
        reads_only: false,
    }
}

/// Runs one batch of calls: those that only read first, each answered at once; then the others
/// in one transaction (opened by their first write), a call that ran before any write answered
/// at once, the others once the commit covers them. A call alone runs as it would outside the
/// thread (each write its own transaction, committed before the answer).
fn run_batch(store: &Store, batch: Vec<Call>) {
    let (reads, mut batch): (Vec<Call>, Vec<Call>) =
        batch.into_iter().partition(|call| call.reads_only);
    for call in reads {
        (call.run)(store)(None);
    }
    if batch.len() <= 1 {
        // Alone: its writes are transactions of their own, without savepoints to pay for.
        if let Some(call) = batch.pop() {
            (call.run)(store)(None);
        }
        return;
    }
    store.begin_group();
    let mut held = Vec::with_capacity(batch.len());
    for call in batch {
        let answer = (call.run)(store);
        if store.group_holds_answers() {
            held.push(answer);
        } else {
            answer(None);
        }
    }
    let committed = store.end_group();
    if !held.is_empty() {
        tracing::trace!(calls = held.len(), "store: batch committed");
    }
    for answer in held {
        answer(committed.as_ref().err());
    }
}

fn gone() -> StoreError {
    StoreError::Unavailable("the store's thread is gone".into())
}

/// Runs one call; a panic becomes this call's error. The store stays usable: a transaction
/// open at the panic is rolled back as it unwinds, and the connection's lock ignores poisoning.
fn run_caught<T>(store: &Store, f: impl FnOnce(&Store) -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(|| f(store))).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a call panicked".to_owned());
        tracing::error!(panic = %message, "store: a call panicked");
        Err(StoreError::Unavailable(format!(
            "a call panicked: {message}"
        )))
    })
}

#[cfg(test)]
pub(super) mod tests;
