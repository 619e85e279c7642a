//! The documented exit codes of `supervisor run` and of `--wait`.

use crate::state::JobState;

/// The job succeeded.
pub const SUCCESS: i32 = 0;
/// A task failed; every revert ran.
pub const TASK_FAILED: i32 = 1;
/// Invalid input (bad file or flags): nothing ran.
pub const INVALID_INPUT: i32 = 2;
/// Cancelled; every revert ran.
pub const CANCELLED: i32 = 3;
/// Killed or crashed: some reverts were skipped.
pub const KILLED: i32 = 4;
/// A revert failed.
pub const REVERT_FAILED: i32 = 5;
/// No such job.
pub const NO_SUCH_JOB: i32 = 6;
/// The daemon is not running (the message says how to start it).
pub const DAEMON_NOT_RUNNING: i32 = 7;
/// The request does not fit the job's state (e.g. `revert` of a live job), or the daemon refuses
/// new work.
pub const REFUSED: i32 = 8;
/// The daemon refused the client: its uid is neither the daemon's nor root's.
pub const PERMISSION_DENIED: i32 = 9;
/// Another error (store, spawn, I/O) kept the command from doing its work.
pub const INTERNAL: i32 = 10;
/// The daemon has no job board (`supervisor daemon --board`), so `hosts` cannot answer.
pub const NO_BOARD: i32 = 11;
/// On a job board: the host that holds the job lost its lease (or stopped), so an order for
/// the job or a `--wait` on it cannot be answered; the job is held there until it is rescued.
pub const HOST_LOST: i32 = 12;

/// The exit code for a job that ended in `state`; `None` while it is still live.
#[must_use]
pub const fn for_job_state(state: JobState) -> Option<i32> {
    match state {
        JobState::Success => Some(SUCCESS),
        JobState::Reverted => Some(TASK_FAILED),
        JobState::Cancelled => Some(CANCELLED),
        JobState::Killed | JobState::Crashed => Some(KILLED),
        JobState::RevertFailed => Some(REVERT_FAILED),
        JobState::Pending | JobState::Running | JobState::Cancelling | JobState::Reverting => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_terminal_state_has_a_code_and_live_ones_none() {
        for state in JobState::ALL {
            assert_eq!(for_job_state(state).is_some(), !state.is_live(), "{state}");
        }
    }
}
