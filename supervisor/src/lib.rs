//! The supervisor: spawns one conductor process per job, supervises it over the job's socket,
//! and owns the store.
//!
//! # Theory of operation
//!
//! - [`state_dir`] lays out the state dir (0700): the store, one socket per job, conductor logs.
//! - [`store`] is SQLite (WAL, `synchronous=FULL`): the single truth. Every state change goes
//!   through `shared::state`'s transition functions.
//! - [`launch`] binds a job's socket (0600) *before* spawning its conductor, which inherits the
//!   listener as fd 3 ([`process`] spawns it in a new session, so a terminal's Ctrl-C never
//!   reaches it). Because the conductor owns a listening socket at a known path, a supervisor can
//!   connect to it again after a restart.
//! - [`session`] is the supervisor's end of that socket: peer uid check, version handshake, frames.
//! - [`supervise`] applies the conductor's numbered reports to the store and acknowledges them
//!   (write-ahead), and runs the cancellation ladder: soft cancel, then at `cancel_timeout`
//!   SIGKILL of the conductor and every process of the job, with the skipped reverts recorded and
//!   logged at WARN (`revert skipped`).
//! - [`process`] holds the Linux details: spawn, `/proc` stat and start time, pidfd exit watch,
//!   killing a job's process tree, and reaping as a child subreaper.
//! - [`cli`] is the command line; only it maps outcomes to exit codes.

pub mod cli;
pub mod clock;
pub mod containment;
pub mod daemon;
pub mod job;
pub mod logging;
pub mod metrics;
pub mod process;
pub mod session;
pub mod spawn;
pub mod state_dir;
pub mod store;
