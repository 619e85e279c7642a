//! Job and task states and their one transition function each (ARCHITECTURE.md, States).
//!
//! ```mermaid
//! stateDiagram-v2
//!     [*] --> pending
//!     pending --> running
//!     running --> success
//!     running --> failure
//!     failure --> running: retry
//!     success --> reverting
//!     failure --> reverting
//!     reverting --> reverted
//!     reverting --> revert_failure
//!     reverted --> running: resume after a host's loss
//! ```
//!
//! The task table is TaskFlow's atom table. Two additions make re-runs possible: `supervisor
//! revert` may revert again a task whose revert failed (`revert_failure -> reverting`), and
//! `supervisor resume` re-runs a task whose revert never started (`failure -> running`, the retry
//! edge). A third makes `on_host_loss = "resume"` possible: a task that a lost host's death
//! interrupted is reverted first and then runs again (`reverted -> running`). It is safe
//! because only a resume plan ([`crate::protocol::conductor::PlanAction::Resume`]) executes a
//! reverted task: an execute plan is never made for a job any of whose tasks began reverting
//! (`supervisor resume` refuses it), and a revert plan never executes; a reverted task is as if
//! it never ran, so running it again compensates nothing twice. The job's table has the
//! matching edge, `reverting -> running`, taken when that plan's first execute starts after
//! its reverts. Nothing else is legal; an illegal change is an [`InvalidTransition`].

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A task's state, as TaskFlow's atom states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Pending,
    Running,
    Success,
    Failure,
    Reverting,
    Reverted,
    RevertFailure,
}

/// A job's state. The first four are live; the rest are terminal (`killed` and `crashed` can
/// still move on with `revert` or `resume`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Pending,
    Running,
    Cancelling,
    Reverting,
    Success,
    Reverted,
    Cancelled,
    RevertFailed,
    Killed,
    Crashed,
}

/// A state change that the tables do not allow.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("illegal {kind} transition from {from} to {to}")]
pub struct InvalidTransition {
    pub kind: &'static str,
    pub from: &'static str,
    pub to: &'static str,
}

impl TaskState {
    pub const ALL: [Self; 7] = [
        Self::Pending,
        Self::Running,
        Self::Success,
        Self::Failure,
        Self::Reverting,
        Self::Reverted,
        Self::RevertFailure,
    ];

    /// The only way a task changes state.
    pub fn transition(self, to: Self) -> Result<Self, InvalidTransition> {
        use TaskState::{Failure, Pending, RevertFailure, Reverted, Reverting, Running, Success};
        let legal = matches!(
            (self, to),
            (Pending, Running)
                | (Running, Success | Failure)
                | (Success | Failure, Reverting)
                | (Reverting, Reverted | RevertFailure)
                | (Failure, Running)
                | (RevertFailure, Reverting)
                | (Reverted, Running)
        );
        if legal {
            Ok(to)
        } else {
            Err(InvalidTransition {
                kind: "task",
                from: self.as_str(),
                to: to.as_str(),
            })
        }
    }

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Reverting => "reverting",
            Self::Reverted => "reverted",
            Self::RevertFailure => "revert_failure",
        }
    }
}

impl JobState {
    pub const ALL: [Self; 10] = [
        Self::Pending,
        Self::Running,
        Self::Cancelling,
        Self::Reverting,
        Self::Success,
        Self::Reverted,
        Self::Cancelled,
        Self::RevertFailed,
        Self::Killed,
        Self::Crashed,
    ];

    /// The only way a job changes state.
    pub fn transition(self, to: Self) -> Result<Self, InvalidTransition> {
        use JobState::{
            Cancelled, Cancelling, Crashed, Killed, Pending, RevertFailed, Reverted, Reverting,
            Running, Success,
        };
        let legal = matches!(
            (self, to),
            (Pending, Running | Cancelled | Killed | Crashed)
                | (
                    Running,
                    Success | Reverting | Cancelling | Killed | Crashed | RevertFailed
                )
                | (
                    Reverting,
                    Reverted | RevertFailed | Cancelling | Killed | Crashed
                )
                | (
                    Cancelling,
                    Cancelled | Reverted | RevertFailed | Killed | Crashed
                )
                | (Killed | Crashed, Reverting | Running)
                | (RevertFailed, Reverting)
                | (Reverting, Running)
        );
        if legal {
            Ok(to)
        } else {
            Err(InvalidTransition {
                kind: "job",
                from: self.as_str(),
                to: to.as_str(),
            })
        }
    }

    /// Live states: a conductor runs (or will run) for the job.
    #[must_use]
    pub const fn is_live(self) -> bool {
        matches!(
            self,
            Self::Pending | Self::Running | Self::Cancelling | Self::Reverting
        )
    }

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Cancelling => "cancelling",
            Self::Reverting => "reverting",
            Self::Success => "success",
            Self::Reverted => "reverted",
            Self::Cancelled => "cancelled",
            Self::RevertFailed => "revert_failed",
            Self::Killed => "killed",
            Self::Crashed => "crashed",
        }
    }
}

/// A state name that is not one of ours (from the store or the command line).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown state {0:?}")]
pub struct UnknownState(pub String);

impl FromStr for TaskState {
    type Err = UnknownState;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| UnknownState(text.to_owned()))
    }
}

impl FromStr for JobState {
    type Err = UnknownState;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| UnknownState(text.to_owned()))
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a task's execute ended, as a revert sees it in `TASK_OUTCOME`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecOutcome {
    Success,
    Failure,
    Cancelled,
    Killed,
}

impl ExecOutcome {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Cancelled => "cancelled",
            Self::Killed => "killed",
        }
    }

    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Success, Self::Failure, Self::Cancelled, Self::Killed]
            .into_iter()
            .find(|o| o.as_str() == text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (from, to) pair of the task table, as ARCHITECTURE.md (States) lists it.
    #[test]
    fn task_table_is_exactly_the_design() {
        use TaskState::*;
        let legal = [
            (Pending, Running),
            (Running, Success),
            (Running, Failure),
            (Success, Reverting),
            (Failure, Reverting),
            (Reverting, Reverted),
            (Reverting, RevertFailure),
            (Failure, Running),
            (RevertFailure, Reverting),
            (Reverted, Running),
        ];
        for from in TaskState::ALL {
            for to in TaskState::ALL {
                let expected = legal.contains(&(from, to));
                assert_eq!(from.transition(to).is_ok(), expected, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn job_table_covers_every_pair() {
        use JobState::*;
        let legal = [
            (Pending, Running),
            (Pending, Cancelled),
            (Pending, Killed),
            (Pending, Crashed),
            (Running, Success),
            (Running, Reverting),
            (Running, Cancelling),
            (Running, Killed),
            (Running, Crashed),
            (Running, RevertFailed),
            (Reverting, Reverted),
            (Reverting, RevertFailed),
            (Reverting, Cancelling),
            (Reverting, Killed),
            (Reverting, Crashed),
            (Cancelling, Cancelled),
            (Cancelling, Reverted),
            (Cancelling, RevertFailed),
            (Cancelling, Killed),
            (Cancelling, Crashed),
            (Killed, Reverting),
            (Killed, Running),
            (Crashed, Reverting),
            (Crashed, Running),
            (RevertFailed, Reverting),
            (Reverting, Running),
        ];
        for from in JobState::ALL {
            for to in JobState::ALL {
                let expected = legal.contains(&(from, to));
                assert_eq!(from.transition(to).is_ok(), expected, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for s in TaskState::ALL {
            assert_eq!(s.as_str().parse::<TaskState>(), Ok(s));
        }
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>(), Ok(s));
        }
        assert!("RUNNING".parse::<JobState>().is_err());
    }

    #[test]
    fn illegal_transition_is_a_value_with_names() {
        let err = JobState::Success
            .transition(JobState::Running)
            .expect_err("illegal");
        assert_eq!(
            err.to_string(),
            "illegal job transition from success to running"
        );
    }
}
