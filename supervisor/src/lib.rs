//! The supervisor: spawns one conductor process per job, supervises it over the job's socket,
//! and owns the store.
//!
//! # Theory of operation (ARCHITECTURE.md has the whole picture)
//!
//! - [`job`] is the job actor: exactly one owner per job, from `pending` to terminal. The daemon's
//!   handlers and scheduler, and `supervisor run`, only send it orders ([`job::Jobs::ask`]); it
//!   alone changes the job's state (compare-and-set in the store) and talks to its conductor:
//!   launch, write-ahead acknowledgements, the cancellation ladder, reconnection, the end.
//! - [`store`] is the store on a thread of its own ([`store::StoreHandle`]): its logic written
//!   once over [`store::db::Database`], SQLite (WAL) in the state dir by default, PostgreSQL
//!   with `daemon --store`; every write one transaction that holds the write lock.
//! - [`spawn`] starts a conductor in a new session, born in its cgroup, with the job's listening
//!   socket as fd 3 and a pidfd from the clone; [`process`] holds the rest of the Linux details:
//!   `/proc` stat and start times, pidfds, session-mode kills, reaping as a child subreaper.
//! - [`containment`] is one cgroup v2 per job (or sessions and process groups as a fallback).
//! - [`session`] is the supervisor's end of a job socket: handshake (versions N and N-1), frames.
//! - [`daemon`] is the control socket (one handler per request), the scheduler and re-attachment.
//! - [`state_dir`] lays out the state dir (0700): the store, one socket per job, conductor logs.
//! - [`board`] is the job board on PostgreSQL (`--board`): hosts register and renew leases,
//!   each job's journal is kept there under a claim epoch, and orders, rescues and claims
//!   travel through it.
//! - [`pg`] is what the board and a store in PostgreSQL share to connect: TLS, and URLs
//!   shown without their password.
//! - [`cli`] is the command line; only it maps outcomes to exit codes.

pub mod board;
pub mod cli;
pub mod clock;
pub mod containment;
pub mod daemon;
pub mod job;
pub mod logging;
pub mod metrics;
pub mod pg;
pub mod process;
pub mod session;
pub mod spawn;
pub mod state_dir;
pub mod store;
#[cfg(test)]
mod test_support;
