//! The job actor: exactly one owner for each job's life (ARCHITECTURE.md, The job actor).
//!
//! # Theory of operation
//!
//! - [`Jobs`] is the registry: at most one actor task per job at any time. Everybody who wants
//!   something of a job (a control handler, the scheduler, re-attach at start-up, `supervisor
//!   run`'s signal handler) calls [`Jobs::ask`] with an [`Order`] and awaits the actor's answer;
//!   an order the actor cannot carry out is answered with an [`OrderError`], never a silent
//!   success.
//! - The actor alone changes its job's state, and each change is a compare-and-set in the store
//!   (one immediate transaction, one row changed or refused), so that even a second process
//!   writing the same store (a `supervisor run` beside the daemon) cannot make two owners.
//! - The actor alone talks to the job's conductor (`supervise.rs`): it applies the conductor's
//!   numbered reports (write-ahead acknowledgements), runs the cancellation ladder, reconnects
//!   with a capped exponential backoff for as long as the conductor lives, and bounds reverts.
//! - No supervision ends without an end: whatever fails after a spawn, the actor hard-kills the
//!   job's tree and records `crashed` (or `killed`) with the pending reverts, logged at WARN with
//!   the words `revert skipped`.
//! - An actor with no conductor and nothing to do retires; the next order starts a new one.
//!   Orders that raced with the retirement are answered [`OrderError::Retry`] and sent again by
//!   [`Jobs::ask`], so none is lost and no two actors ever own one job.

mod actor;
mod end;
mod hooks;
mod journal;
mod ladder;
mod launch;
mod registry;
mod supervise;
pub mod warm;

pub use hooks::{DaemonHooks, HOOK_TIMEOUT, hooks_settled};
pub use launch::{Launcher, check_runnable, cold_only};
pub use registry::{Jobs, JobsConfig};
pub use warm::WarmPool;

use shared::ids::JobId;
use std::time::Duration;

pub use shared::protocol::client::Requester;

/// What may be asked of a job's actor. `by` names the operator who asked (from the control
/// socket's peer credentials), `None` for the daemon's own orders (a job timeout, shutdown) and
/// `supervisor run`'s Ctrl-C; the actor records it with the transition the order causes.
#[derive(Clone, Debug)]
pub enum Order {
    /// From the scheduler: a `pending` job gets its conductor.
    Start,
    /// Soft cancel; `timeout` overrides the job's `cancel_timeout`.
    Cancel {
        timeout: Option<Duration>,
        reason: String,
        by: Option<Requester>,
    },
    /// SIGKILL of everything of the job now; the reverts that did not complete become pending.
    Kill {
        reason: String,
        by: Option<Requester>,
    },
    /// Run the pending reverts of a killed, crashed or revert_failed job in a new conductor.
    Revert {
        reason: String,
        by: Option<Requester>,
    },
    /// Run a killed or crashed job again from its first task that did not succeed. With
    /// `revert_interrupted` (`on_host_loss = "resume"`), the tasks a hard end interrupted
    /// mid-execute that have a revert are reverted first, then run again with the rest.
    Resume {
        reason: String,
        by: Option<Requester>,
        revert_interrupted: bool,
    },
    /// At start-up, or for a live job nobody supervises: take up its conductor, or record that
    /// it is gone.
    Adopt,
    /// Freeze every process of a running or reverting job (cgroup.freeze, or SIGSTOP in session
    /// mode); its deadlines stop counting until [`Order::Continue`].
    Pause { by: Option<Requester> },
    /// Thaw a paused job; its deadlines count again from where they stopped.
    Continue { by: Option<Requester> },
}

/// Why an order was not carried out.
#[derive(Clone, Debug, thiserror::Error)]
pub enum OrderError {
    #[error("no such job: {0}")]
    UnknownJob(JobId),
    /// The order itself is wrong (e.g. a cancel timeout shorter than the term grace).
    #[error("{0}")]
    Invalid(String),
    /// The job's state does not allow the order (the message says why).
    #[error("{0}")]
    WrongState(String),
    /// The daemon takes no new work (shutting down), or the store refuses writes.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    /// The actor retired while the order was on its way; [`Jobs::ask`] sends it again.
    #[error("the job's actor retired; try again")]
    Retry,
}

impl From<crate::store::StoreError> for OrderError {
    fn from(err: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match err {
            StoreError::UnknownJob(id) => Self::UnknownJob(id),
            StoreError::WrongState { .. }
            | StoreError::NothingToRevert(_)
            | StoreError::AlreadyReverting(_)
            | StoreError::Illegal(_) => Self::WrongState(err.to_string()),
            StoreError::Unavailable(_) => Self::Unavailable(err.to_string()),
            other if other.is_disk_full() || other.is_unreachable() => {
                Self::Unavailable(other.to_string())
            }
            other => Self::Internal(other.to_string()),
        }
    }
}

/// What a launched conductor is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Execute the job from its first task that did not succeed.
    Execute,
    /// Run the pending reverts, last first.
    Revert,
    /// Revert the tasks a hard end interrupted mid-execute (those with a revert), then execute
    /// as [`Purpose::Execute`]; just that when none was.
    Resume,
}

#[cfg(test)]
mod tests;
