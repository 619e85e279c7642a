//! Pausing a job in session mode: SIGSTOP to the conductor and to every process of the job
//! (its session, the task groups it reported, their descendants), SIGCONT to go on. cgroup mode
//! freezes the cgroup instead (`containment`), which a task cannot notice or undo.
//!
//! As in `kill`, nothing is signalled by a remembered number: each process through a pidfd
//! checked against the start time of the same scan, each group only while its recorded leader
//! leads it.

use super::kill::{TaskGroups, all_processes, job_processes};
use super::pidfd::Pidfd;
use super::stat::ConductorId;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::collections::BTreeMap;

/// Sends SIGSTOP (`stop`) or SIGCONT to every process of the job, the conductor first when
/// stopping (so it starts no new step meanwhile) and last when continuing; returns how many
/// processes were signalled. The `/proc` scan runs on a blocking thread.
pub async fn stop_job(conductor: ConductorId, groups: &TaskGroups, stop: bool) -> usize {
    let groups = groups.clone();
    let blocking = move || {
        let signal = if stop {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        };
        let conductor_pidfd = Pidfd::open(conductor).ok();
        let signal_conductor = || {
            if let Some(pidfd) = &conductor_pidfd {
                let _ = pidfd.signal(signal);
            }
        };
        if stop {
            signal_conductor();
        }
        let all = all_processes();
        let verified = groups.verified(&all);
        let found = job_processes(conductor, &verified, &BTreeMap::new(), &all);
        let mut count = 0;
        for (&pid, &start_time) in &found {
            if pid == conductor.pid {
                continue;
            }
            if let Ok(pidfd) = Pidfd::open(ConductorId { pid, start_time }) {
                if pidfd.signal(signal).is_ok() {
                    count += 1;
                }
            }
        }
        for &pgid in &verified {
            let _ = killpg(Pid::from_raw(pgid), signal);
        }
        if !stop {
            signal_conductor();
        }
        count + usize::from(conductor_pidfd.is_some())
    };
    match tokio::task::spawn_blocking(blocking).await {
        Ok(count) => count,
        Err(err) => {
            tracing::error!(pid = conductor.pid, error = %err, "signalling the job failed");
            0
        }
    }
}
