//! What the supervisor and the conductor-worker must agree on, and nothing that touches the OS.
//!
//! # Theory of operation
//!
//! A **job** is a list of **tasks** read from a TOML job file ([`spec`]). Each task has an
//! *execute* command and an optional *revert* command. The supervisor runs each job in its own
//! single-threaded **conductor** process and talks to it over one Unix socket per job, with the
//! length-prefixed postcard frames of [`protocol`].
//!
//! The conductor announces every step before it starts it (write-ahead) and waits for the
//! supervisor to acknowledge that the store holds it. Every report carries a sequence number, and
//! the conductor keeps unacknowledged reports until they are acknowledged, so a supervisor that
//! restarts and reconnects receives them again and applies each exactly once.
//!
//! Every state change of a job or a task goes through the pure transition functions of
//! [`state`]; an illegal change is an error value, never a panic. [`exit`] maps a job's terminal
//! state to the documented exit codes of `supervisor run`.
//!
//! Glossary: *cancel* is the soft stop (a protocol message; the running task is interrupted and the
//! begun tasks are reverted); *kill* is SIGKILL of everything of the job, after which the reverts
//! that did not complete are recorded as *pending*.

pub mod cgroup;
pub mod duration;
pub mod exit;
pub mod ids;
pub mod limits;
pub mod protocol;
pub mod spec;
pub mod state;
