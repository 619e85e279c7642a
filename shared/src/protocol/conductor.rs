//! Messages between the supervisor and a conductor, over the job's own socket.
//!
//! # Session
//!
//! 1. The supervisor connects and sends [`ToConductor::Hello`]; the conductor answers
//!    [`FromConductor::Hello`] (its version, job id, pid, and whether it already holds a plan). A
//!    version mismatch on either side ends the connection with a clear error.
//!    Both then speak the lower of the two versions ([`negotiate`](super::negotiate)); a
//!    version 1 conductor closes the connection when the versions differ, so the supervisor
//!    connects again announcing version 1.
//! 2. If the conductor holds no plan yet, the supervisor sends the plan: from version 2, each
//!    non-empty prior result in a [`ToConductor::PriorResult`] frame of its own, then
//!    [`ToConductor::Start`] with those results left empty (so that no frame carries them all;
//!    see [`JobPlan::take_prior_results`]); in version 1, `Start` alone with every result
//!    inline. The conductor puts the results back into the plan.
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
use crate::protocol::codec::{Decoder, FrameError, decode_body, encode_frame};
use crate::protocol::v1::ToConductorV1;
use crate::protocol::v2::ToConductorV2;
use crate::protocol::v3::ToConductorV3;
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
    /// (Version 2.) The result an earlier conductor left for task `task`, sent before `Start`,
    /// whose `prior[task].result` is then empty.
    PriorResult { task: u32, result: String },
    /// (Version 5.) The supervisor's lease on the job board, delegated: the conductor may run
    /// steps for `run_for_ms` from the receipt of this message, and no longer (its *fence*).
    /// Sent after the handshake (and the plan) of every connection and after every lease
    /// renewal, only by a supervisor on a job board; each one replaces the one before. At the
    /// deadline without a newer one the conductor kills its running steps, starts nothing more
    /// and reports [`JobEvent::Fenced`] (ARCHITECTURE.md, The job board).
    Fence { run_for_ms: u64 },
}

impl ToConductor {
    /// Encodes the message as a whole frame in protocol `version`.
    pub fn encode(&self, version: u32) -> Result<Vec<u8>, FrameError> {
        if version >= 6 {
            return encode_frame(self);
        }
        if matches!(self, Self::Start(plan) if matches!(plan.action, PlanAction::Resume { .. })) {
            return Err(FrameError::NotInVersion {
                what: "a resume plan",
                version,
            });
        }
        if version == 5 {
            // The same layout: `PlanAction::Resume`, the only newer variant, is last.
            return encode_frame(self);
        }
        if matches!(self, Self::Fence { .. }) {
            return Err(FrameError::NotInVersion {
                what: "a fence",
                version,
            });
        }
        if version == 4 {
            // The same layout: `Fence`, the only newer variant, is last.
            return encode_frame(self);
        }
        let not_in_version = |_| FrameError::NotInVersion {
            what: "a prior result in a frame of its own",
            version,
        };
        if version == 3 {
            return encode_frame(&ToConductorV3::try_from(self.clone()).map_err(not_in_version)?);
        }
        if version == 2 {
            return encode_frame(&ToConductorV2::try_from(self.clone()).map_err(not_in_version)?);
        }
        encode_frame(&ToConductorV1::try_from(self.clone()).map_err(not_in_version)?)
    }

    /// Decodes a frame body of protocol version 1.
    pub fn decode_v1(body: &[u8]) -> Result<Self, FrameError> {
        decode_body::<ToConductorV1>(body).map(Self::from)
    }

    /// The decoder of frame bodies for protocol `version`.
    #[must_use]
    pub fn decoder(version: u32) -> Decoder<Self> {
        match version {
            4.. => decode_body::<Self>,
            3 => Self::decode_v3,
            2 => Self::decode_v2,
            _ => Self::decode_v1,
        }
    }

    /// Decodes a frame body of protocol version 2.
    pub fn decode_v2(body: &[u8]) -> Result<Self, FrameError> {
        decode_body::<ToConductorV2>(body).map(Self::from)
    }

    /// Decodes a frame body of protocol version 3.
    pub fn decode_v3(body: &[u8]) -> Result<Self, FrameError> {
        decode_body::<ToConductorV3>(body).map(Self::from)
    }
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
    /// (Version 5, only after a [`ToConductor::Fence`].) The conductor's fence passed without
    /// a newer one: it SIGKILLed its running steps and starts nothing more, not even a revert
    /// (another host may own the job by now). The last report: the supervisor records the
    /// job `killed` with `reason`, its reverts skipped, and the conductor exits once this is
    /// acknowledged.
    Fenced { reason: String },
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

/// The longest fence a conductor honours ([`ToConductor::Fence`]; a longer `run_for_ms`
/// counts as this, so that no deadline overflows a clock): a year. A supervisor sends it to a
/// conductor it is about to freeze (`pause`: a frozen job runs nothing, and its clocks would
/// otherwise find the fence passed the instant it thaws), and a fresh fence before it thaws
/// it.
pub const MAX_FENCE_MS: u64 = 365 * 86_400_000;

/// Longest result kept from an execute (a command's stdout, a native task's value); longer
/// ones are cut at the source.
pub const MAX_RESULT_LEN: usize = 64 * 1024;
/// Longest output line sent in one report; a command's longer lines are split, a native task's
/// are cut (ending with [`cut_marker`], within this length).
pub const MAX_LINE_LEN: usize = 16 * 1024;
/// Longest failure or cancel reason sent in a report; longer ones are cut (ending with
/// [`cut_marker`], within this length).
pub const MAX_REASON_LEN: usize = 16 * 1024;

/// What replaces the end of a cut line or reason: how many bytes were cut.
#[must_use]
pub fn cut_marker(cut: usize) -> String {
    format!(" [... {cut} bytes cut]")
}

/// Cuts `text` to at most `max` bytes, at a character boundary; returns how many bytes were
/// cut.
pub fn truncate_at_boundary(text: &mut String, max: usize) -> usize {
    if text.len() <= max {
        return 0;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let cut = text.len() - end;
    text.truncate(end);
    cut
}

/// Cuts `text` to at most `max` bytes, marker included, and says so at its end with
/// [`cut_marker`]. A text already within `max` is left as is, so bounding twice changes nothing.
pub fn bound_with_marker(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    // The marker for the whole length is at least as long as the one finally written.
    let keep = max.saturating_sub(cut_marker(text.len()).len());
    let cut = truncate_at_boundary(text, keep);
    text.push_str(&cut_marker(cut));
}

impl JobEvent {
    /// Bounds every text the event carries (results to [`MAX_RESULT_LEN`], lines to
    /// [`MAX_LINE_LEN`], reasons to [`MAX_REASON_LEN`]), so that no report can exceed a frame.
    #[must_use]
    pub fn bounded(mut self) -> Self {
        match &mut self {
            Self::Output { line, .. } => bound_with_marker(line, MAX_LINE_LEN),
            Self::TaskFinished { outcome, .. } => match outcome {
                StepOutcome::Success { result } => {
                    truncate_at_boundary(result, MAX_RESULT_LEN);
                }
                StepOutcome::Failure { reason, result, .. } => {
                    bound_with_marker(reason, MAX_REASON_LEN);
                    truncate_at_boundary(result, MAX_RESULT_LEN);
                }
            },
            Self::Cancelling { reason } | Self::Fenced { reason } => {
                bound_with_marker(reason, MAX_REASON_LEN);
            }
            Self::TaskStarting { .. } | Self::TaskSpawned { .. } | Self::JobFinished { .. } => {}
        }
        self
    }
}

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
    /// Revert exactly the tasks in `revert` (those a lost host's death interrupted), in this
    /// order; if every one succeeded, execute as [`PlanAction::Execute`] does (each task that
    /// did not succeed, the reverted ones included), else end `revert_failed`
    /// (`on_host_loss = "resume"`). Version 6.
    Resume { revert: Vec<u32> },
}

/// A task as an earlier conductor left it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriorTask {
    pub state: TaskState,
    pub attempts: u32,
    pub exec_outcome: Option<ExecOutcome>,
    pub result: String,
}

impl JobPlan {
    /// Moves every non-empty prior result out of the plan, as `(task, result)`, each cut to
    /// [`MAX_RESULT_LEN`]: what version 2 sends in [`ToConductor::PriorResult`] frames.
    pub fn take_prior_results(&mut self) -> Vec<(u32, String)> {
        let mut results = Vec::new();
        for (index, prior) in self.prior.iter_mut().enumerate() {
            if prior.result.is_empty() {
                continue;
            }
            let mut result = std::mem::take(&mut prior.result);
            truncate_at_boundary(&mut result, MAX_RESULT_LEN);
            // A plan has far fewer than 2^32 tasks (its spec fits in a frame).
            if let Ok(task) = u32::try_from(index) {
                results.push((task, result));
            }
        }
        results
    }

    /// Puts a result received in a [`ToConductor::PriorResult`] back; false when the plan has
    /// no such task.
    pub fn put_prior_result(&mut self, task: u32, result: String) -> bool {
        let slot = usize::try_from(task)
            .ok()
            .and_then(|index| self.prior.get_mut(index));
        match slot {
            Some(prior) => {
                prior.result = result;
                true
            }
            None => false,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_and_reasons_are_cut_with_a_marker_and_results_without() {
        let event = JobEvent::TaskFinished {
            task: 0,
            phase: Phase::Execute,
            outcome: StepOutcome::Failure {
                reason: "r".repeat(MAX_REASON_LEN + 10),
                cancelled: false,
                result: "é".repeat(MAX_RESULT_LEN),
            },
        }
        .bounded();
        let JobEvent::TaskFinished {
            outcome: StepOutcome::Failure { reason, result, .. },
            ..
        } = event
        else {
            panic!("same variant")
        };
        // Marker included, the reason is within the limit; bounding it again changes nothing.
        assert!(reason.len() <= MAX_REASON_LEN, "{}", reason.len());
        let kept = reason.rfind(" [... ").expect("a marker");
        assert!(reason.ends_with(&cut_marker(MAX_REASON_LEN + 10 - kept)));
        let again = JobEvent::Cancelling {
            reason: reason.clone(),
        };
        assert_eq!(again.clone().bounded(), again);
        assert!(result.len() <= MAX_RESULT_LEN && !result.contains("cut"));
        let short = JobEvent::Cancelling {
            reason: "why".into(),
        };
        assert_eq!(short.clone().bounded(), short);
    }

    #[test]
    fn prior_results_travel_apart_and_come_back() {
        let mut plan = JobPlan {
            job_id: JobId::from_random(1),
            spec: JobSpec::parse("[[task]]\nname = \"a\"\nrun = \"true\"\n", "j", "j")
                .expect("valid"),
            action: PlanAction::Execute { from: 0 },
            prior: vec![
                PriorTask::fresh(),
                PriorTask {
                    result: "x".repeat(MAX_RESULT_LEN + 1),
                    ..PriorTask::fresh()
                },
            ],
        };
        let results = plan.take_prior_results();
        assert!(plan.prior.iter().all(|p| p.result.is_empty()));
        assert_eq!(results.len(), 1);
        assert_eq!((results[0].0, results[0].1.len()), (1, MAX_RESULT_LEN));
        assert!(plan.put_prior_result(1, "back".into()));
        assert!(!plan.put_prior_result(2, "no such task".into()));
        assert_eq!(plan.prior[1].result, "back");
        let prior = ToConductor::PriorResult {
            task: 1,
            result: "r".into(),
        };
        assert!(matches!(
            prior.encode(1),
            Err(FrameError::NotInVersion { version: 1, .. })
        ));
        assert!(prior.encode(2).is_ok());
    }

    #[test]
    fn a_fence_is_refused_before_version_5_and_nothing_else_moves() {
        let fence = ToConductor::Fence { run_for_ms: 700 };
        for version in 1..=4 {
            assert!(
                matches!(
                    fence.encode(version),
                    Err(FrameError::NotInVersion { what: "a fence", version: v }) if v == version
                ),
                "version {version}"
            );
        }
        let frame = fence.encode(5).expect("version 5");
        assert_eq!(
            ToConductor::decoder(5)(&frame[4..]).expect("decodes"),
            fence
        );
        // Appended: every older message keeps its wire number, so version 4 bytes are these.
        let ack = ToConductor::Ack { seq: 3 };
        assert_eq!(ack.encode(4).expect("v4"), ack.encode(5).expect("v5"));
    }
}
