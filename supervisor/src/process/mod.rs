//! Linux process details, kept in one place: recognising a process again (`/proc` stat and
//! start time), naming it for good (pidfd), killing everything of a job in session mode, reaping
//! as a child subreaper, and which program runs as a conductor. Spawning lives in
//! [`crate::spawn`], which uses from here only the identity types ([`ConductorId`], [`Pidfd`])
//! and the registry lock it shares with the reaper ([`reaper`]); nothing here uses it outside
//! tests.

pub mod freeze;
pub mod kill;
pub mod pidfd;
pub mod reaper;
pub mod stat;
pub mod worker;

pub use freeze::stop_job;
pub use kill::{TaskGroups, kill_job};
pub use pidfd::Pidfd;
pub use reaper::start_reaper;
pub use stat::{
    ConductorId, ProcStat, is_same_process, own_id, own_supervisor_id, parse_stat, start_time, stat,
};
pub use worker::{WorkerCommand, list_kinds};
