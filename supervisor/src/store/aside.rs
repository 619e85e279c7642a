//! Flushes beside the store's thread (ARCHITECTURE.md, Durability and restart): a daemon's
//! submit commits its job without a flush, hands it to the scheduler, and waits here for an
//! `fdatasync` of the WAL while the job starts; the store's thread goes on meanwhile (the
//! job's start, other jobs' reports).
//!
//! One thread named `flusher` takes the requests: every request already waiting when a flush
//! begins is answered by that flush (concurrent submits share one, as the store's own batches
//! share a commit's), and a request that arrives while one runs waits for the next: a flush
//! covers what was written before it began, and each request was sent after its commit.

use super::db::Flusher;
use super::group::replicate;
use super::{Result, StoreError};
use std::sync::mpsc;
use tokio::sync::oneshot;

type Request = oneshot::Sender<Result<()>>;

/// The `flusher` thread's door. It ends when this is dropped (the store's last handle).
pub struct AsideFlusher {
    requests: mpsc::Sender<Request>,
}

impl AsideFlusher {
    /// Starts the thread that flushes with `flusher`.
    pub fn start(flusher: Flusher) -> Result<Self> {
        let (requests, incoming) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("flusher".into())
            .spawn(move || {
                while let Ok(first) = incoming.recv() {
                    let waiting: Vec<Request> =
                        std::iter::once(first).chain(incoming.try_iter()).collect();
                    let flushed = flusher.flush();
                    if let Err(err) = &flushed {
                        tracing::error!(error = %err, "store: cannot flush the WAL");
                    }
                    for request in waiting {
                        // The caller may have gone (a cancelled future): nobody to tell.
                        let _ = request.send(flushed.as_ref().map_err(replicate).copied());
                    }
                }
            })
            .map_err(|err| StoreError::Unavailable(format!("cannot start the flusher: {err}")))?;
        Ok(Self { requests })
    }

    /// Returns once a flush that began after this call reached the disk: every commit made
    /// before the call is durable then.
    pub async fn flush(&self) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(reply)
            .map_err(|_| StoreError::Unavailable("the flusher is gone".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the flusher is gone".into()))?
    }
}
