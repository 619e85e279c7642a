//! The store on its own thread, for async callers (review M1): SQLite calls block (fsync, the
//! busy timeout while another process writes), and must not stall the runtime's workers.
//!
//! [`StoreHandle`] is a cheap clone of a channel's sending end; the thread named `store` owns
//! the [`Store`] and runs the calls one at a time, in arrival order. A panic inside one call is
//! caught and answered as [`StoreError::Unavailable`] to that caller only; the thread serves on.
//! The thread ends when the last handle is dropped.

use super::{Result, Store, StoreError};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::mpsc;
use std::thread::ThreadId;

/// One call: runs on the store's thread and sends its own reply.
type Call = Box<dyn FnOnce(&Store) + Send>;

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
    /// Opens the store in `dir` (on the calling thread, so that an error returns here) and
    /// starts its thread.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::serve(Store::open(dir)?)
    }

    /// Moves an open store onto its own thread.
    pub fn serve(store: Store) -> Result<Self> {
        let (calls, incoming) = mpsc::channel::<Call>();
        let thread = std::thread::Builder::new()
            .name("store".into())
            .spawn(move || {
                while let Ok(call) = incoming.recv() {
                    call(&store);
                }
                tracing::debug!("store: last handle dropped; thread ends");
            })
            .map_err(|err| StoreError::Unavailable(format!("cannot start its thread: {err}")))?;
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
        if let Some(store) = &self.in_place {
            return run_caught(store, f);
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.send(Box::new(move |store| {
            // The caller may have gone (a cancelled future): nobody to tell.
            let _ = reply.send(run_caught(store, f));
        }))?;
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
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(Box::new(move |store| {
            let _ = reply.send(run_caught(store, f));
        }))?;
        answer.recv().map_err(|_| gone())?
    }

    fn send(&self, call: Call) -> Result<()> {
        self.calls.send(call).map_err(|_| gone())
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
