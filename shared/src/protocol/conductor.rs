//! Messages between the supervisor and a conductor, over the job's own socket.
//!
//! # Session
//!
//! 1. The supervisor connects and sends [`ToConductor::Hello`]; the conductor answers
//!    [`FromConductor::Hello`] (its version, job id, pid, and whether it already holds a plan). A
//!    version mismatch on either side ends the connection with a clear error.
//! 2. If the conductor holds no plan yet, the supervisor sends [`ToConductor::Start`].
//! 3. The conductor sends [`Report`]s, numbered from 1 without gaps for the life of the conductor.
//!    On a new connection it first sends again every report not yet acknowledged, in order.
//! 4. The supervisor applies each report to the store once (it ignores a `seq` it already holds)
//!    and answers [`ToConductor::Ack`] with the highest `seq` it holds.
//!
//! # Ordering guarantees
//!
//! Reports arrive in `seq` order. [`JobEvent::TaskStarting`] is a write-ahead point: the
//! conductor starts no process for that step before the report is acknowledged. The last report
//! is [`JobEvent::JobFinished`]; the conductor exits once it is acknowledged.

use crate::ids::JobId;
use crate::spec::JobSpec;
use crate::state::{ExecOutcome, JobState, TaskState};
use serde::{Deserialize, Serialize};

/// Supervisor to conductor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToConductor {
    /// Always the first frame of a connection.
    Hello(SupervisorHello),
    /// The job to run; sent once, to a conductor that holds no plan.
    Start(Box<JobPlan>),
    /// Every report up to and including `seq` is durable.
    Ack { seq: u64 },
    /// Soft cancel: start no new task, interrupt the running one, revert what began.
    Cancel { reason: String },
}

/// The supervisor's half of the handshake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorHello {
    /// First field, so that any version can decode it.
    pub protocol_version: u32,
    pub job_id: JobId,
}

/// Conductor to supervisor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromConductor {
    /// The answer to [`ToConductor::Hello`].
    Hello(ConductorHello),
    Report(Report),
    /// "Still here": sent every third of the job's `heartbeat_timeout` while connected. Not
    /// numbered, not stored. A conductor whose one thread is blocked cannot send it.
    Heartbeat,
}

/// The conductor's half of the handshake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConductorHello {
    /// First field, so that any version can decode it.
    pub protocol_version: u32,
    pub job_id: JobId,
    pub pid: u32,
    /// False until a [`ToConductor::Start`] was received.
    pub has_plan: bool,
}

/// One numbered report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub seq: u64,
    pub event: JobEvent,
}

/// Whether a step is a task's execute or its revert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    Execute,
    Revert,
}

impl Phase {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Execute => "execute",
            Self::Revert => "revert",
        }
    }
}

/// Which output stream of a task process a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// What happened in the job, in the order it happened. `task` is the index in the job file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobEvent {
    /// Write-ahead: the step is about to start. No process starts before the acknowledgement.
    TaskStarting {
        task: u32,
        phase: Phase,
        attempt: u32,
    },
    /// The step's process runs, leading its own process group `pid`.
    TaskSpawned { task: u32, phase: Phase, pid: u32 },
    /// One line of the step's output (without its newline).
    Output {
        task: u32,
        phase: Phase,
        stream: Stream,
        line: String,
    },
    /// The step ended.
    TaskFinished {
        task: u32,
        phase: Phase,
        outcome: StepOutcome,
    },
    /// The conductor began a soft cancel (asked by the supervisor or by a signal).
    Cancelling { reason: String },
    /// The job ended; the last report.
    JobFinished { state: JobState },
}

/// How a step ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepOutcome {
    /// `result` is the step's stdout, trimmed, at most [`MAX_RESULT_LEN`] bytes.
    Success { result: String },
    /// `cancelled`: the step was interrupted by a soft cancel. `result` is what it printed on
    /// stdout before it ended, trimmed, so that a revert knows how far it got.
    Failure {
        reason: String,
        cancelled: bool,
        result: String,
    },
}

/// Longest `TASK_RESULT` kept from an execute's stdout.
pub const MAX_RESULT_LEN: usize = 64 * 1024;

/// The job as the conductor must run it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobPlan {
    pub job_id: JobId,
    pub spec: JobSpec,
    pub action: PlanAction,
    /// What earlier conductors of this job left, one per task in file order.
    pub prior: Vec<PriorTask>,
}

/// What the conductor does with the plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlanAction {
    /// Execute the tasks from index `from` on; the ones before it succeeded earlier.
    Execute { from: u32 },
    /// Revert exactly these tasks, in this order.
    Revert { order: Vec<u32> },
}

/// A task as an earlier conductor left it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriorTask {
    pub state: TaskState,
    pub attempts: u32,
    pub exec_outcome: Option<ExecOutcome>,
    pub result: String,
}

impl PriorTask {
    /// A task that never ran.
    #[must_use]
    pub const fn fresh() -> Self {
        Self {
            state: TaskState::Pending,
            attempts: 0,
            exec_outcome: None,
            result: String::new(),
        }
    }
}
