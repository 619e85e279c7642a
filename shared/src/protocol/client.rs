//! Messages between the CLI and the daemon, over the control socket.
//!
//! Each connection starts with [`ClientRequest::Hello`] / [`ClientReply::Hello`] (version check:
//! the daemon answers with the version both speak, [`negotiate`](super::negotiate), and decodes
//! the request in it with [`ClientRequest::decoder`]), then carries one request. Replies have the
//! same layout in every supported version. Most requests get exactly one reply; `Logs { follow: true }` and
//! `Events` get a stream of replies that ends when the daemon closes the connection; in version
//! 3, `List` gets pages of jobs and a `Done`. In version 7, `Events` also carries other hosts'
//! job changes ([`ClientReply::HostedEvent`]), and a `Done` after its first one says that the
//! stream had a gap (a slow client lagged, or the daemon's board listener reconnected): a client
//! that follows a job reads its state again.

use crate::ids::JobId;
use crate::protocol::codec::{
    Decoder, FrameError, MAX_FRAME_LEN, decode_body, encode_frame, encoded_len,
};
use crate::protocol::conductor::{MAX_RESULT_LEN, bound_with_marker};
pub use crate::protocol::operator::{Action, Requester};
use crate::protocol::v1::ClientRequestV1;
use crate::protocol::v2::ClientRequestV2;
use crate::protocol::v3::ClientRequestV3;
use crate::spec::{JobSpec, OnHostLoss};
use crate::state::{ExecOutcome, JobState, TaskState};
use serde::{Deserialize, Serialize};

/// CLI to daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// Always first; `protocol_version` is its first field so any version decodes it.
    Hello {
        protocol_version: u32,
    },
    Submit {
        spec: Box<JobSpec>,
        source: String,
    },
    /// `ls`. In version 3 the daemon answers with pages, [`ClientReply::Jobs`] each, then
    /// [`ClientReply::Done`]; before, with one `Jobs` (which must fit in one frame). `query`
    /// is version 3's: older versions carry `all` alone and read it as `ListQuery::default()`.
    List {
        all: bool,
        query: ListQuery,
    },
    Status {
        job: String,
    },
    Cancel {
        job: String,
        timeout_ms: Option<u64>,
    },
    Kill {
        job: String,
    },
    Logs {
        job: String,
        task: Option<String>,
        follow: bool,
    },
    Revert {
        job: String,
    },
    Resume {
        job: String,
    },
    Events,
    Shutdown {
        cancel: bool,
    },
    /// `prune`: deletes finished jobs that ended more than `older_than_ms` ago (see
    /// `Store::prune` for which), their logs and sockets, and reclaims the space; `vacuum`
    /// rewrites the whole database too. Version 3 only.
    Prune {
        older_than_ms: u64,
        states: Vec<JobState>,
        vacuum: bool,
    },
    /// An operator's order with its reason (version 2 only; `Cancel`, `Kill`, `Revert` and
    /// `Resume` above are kept for older clients). `timeout_ms` applies to a cancel.
    Operate {
        job: String,
        action: Action,
        reason: Option<String>,
        timeout_ms: Option<u64>,
    },
    /// `logs --since`: like `Logs`, from the first line written at or after `since_ms` (ms
    /// since the epoch). Version 3 only.
    LogsSince {
        job: String,
        task: Option<String>,
        follow: bool,
        since_ms: i64,
    },
    /// `hosts`: every host of the daemon's job board, answered with [`ClientReply::Hosts`]
    /// (or [`ErrorCode::NoBoard`]). Version 4 only; added at the end so that every other
    /// request keeps its wire number.
    Hosts,
    /// `submit` of a job file that sets `on_host_loss` (not in the spec's encoding:
    /// `spec::host_loss`); a job that leaves it to its default is sent as `Submit`. Version 4;
    /// added at the end.
    SubmitWithHostLoss {
        spec: Box<JobSpec>,
        source: String,
        on_host_loss: OnHostLoss,
    },
    /// `submit FILE --host NAME` on a job board: the job pinned to host `host` (claimed
    /// there), with its `on_host_loss`. Version 5; added at the end. A submit without
    /// `--host` is sent as `Submit` or `SubmitWithHostLoss`, which every daemon understands.
    SubmitOnBoard {
        spec: Box<JobSpec>,
        source: String,
        on_host_loss: OnHostLoss,
        host: Option<String>,
    },
    /// `status JOB` as the operator reads it: like `Status`, but a job another host of the
    /// board holds is asked of that host, which answers with its whole status
    /// ([`ClientReply::OwnerStatus`]); the daemon falls back to the board's journal when the
    /// host cannot answer. `Status` stays the cheap read (the `--wait` loops). Version 9;
    /// added at the end.
    StatusFromHost {
        job: String,
    },
}

impl ClientRequest {
    /// Encodes the request as a whole frame in protocol `version`.
    pub fn encode(&self, version: u32) -> Result<Vec<u8>, FrameError> {
        if version < 9 && matches!(self, Self::StatusFromHost { .. }) {
            Err(FrameError::NotInVersion {
                what: "status from the job's host",
                version,
            })
        } else if version < 5 && matches!(self, Self::SubmitOnBoard { .. }) {
            Err(FrameError::NotInVersion {
                what: "submit --host",
                version,
            })
        } else if version >= 4 {
            encode_frame(self)
        } else if matches!(self, Self::Hosts) {
            Err(FrameError::NotInVersion {
                what: "hosts",
                version,
            })
        } else if matches!(self, Self::SubmitWithHostLoss { .. }) {
            Err(FrameError::NotInVersion {
                what: "on_host_loss",
                version,
            })
        } else if version == 3 {
            encode_frame(&ClientRequestV3::from(self.clone()))
        } else if matches!(self, Self::LogsSince { .. }) {
            Err(FrameError::NotInVersion {
                what: "logs --since",
                version,
            })
        } else if matches!(self, Self::List { query, .. } if *query != ListQuery::default()) {
            Err(FrameError::NotInVersion {
                what: "ls filters",
                version,
            })
        } else if matches!(self, Self::Prune { .. }) {
            Err(FrameError::NotInVersion {
                what: "prune",
                version,
            })
        } else if version == 2 {
            encode_frame(&ClientRequestV2::from(self.clone()))
        } else if matches!(
            self,
            Self::Operate {
                action: Action::Pause | Action::Continue,
                ..
            }
        ) {
            Err(FrameError::NotInVersion {
                what: "pause and continue",
                version,
            })
        } else {
            match ClientRequestV1::try_from(self.clone()) {
                Ok(v1) => encode_frame(&v1),
                Err(_) => Err(FrameError::NotInVersion {
                    what: "this request",
                    version,
                }),
            }
        }
    }

    /// Decodes a frame body of protocol version 1.
    pub fn decode_v1(body: &[u8]) -> Result<Self, FrameError> {
        decode_body::<ClientRequestV1>(body).map(Self::from)
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
        decode_body::<ClientRequestV2>(body).map(Self::from)
    }

    /// Decodes a frame body of protocol version 3.
    pub fn decode_v3(body: &[u8]) -> Result<Self, FrameError> {
        decode_body::<ClientRequestV3>(body).map(Self::from)
    }
}

/// Daemon to CLI.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientReply {
    Hello {
        protocol_version: u32,
    },
    Submitted {
        job: JobId,
    },
    /// `ls`: the whole list (versions 1 and 2) or one page of it (version 3, then `Done`).
    Jobs(Vec<JobSummary>),
    Status(Box<JobStatus>),
    /// The request was carried out; in version 3 also the end of `ls`'s pages, and the first
    /// frame of `Events` (the subscription is in place: no later change is missed).
    Done,
    /// One line of a job's output.
    Log(LogLine),
    /// A job or task changed state.
    Event(Event),
    Error {
        code: ErrorCode,
        message: String,
    },
    /// The answer to `Prune` (added at the end, as `Prune` was).
    Pruned(PruneSummary),
    /// The answer to `Hosts`: every host of the board, by name (added at the end, as `Hosts`
    /// was; only a client that asked for it ever gets one).
    Hosts(Vec<HostSummary>),
    /// A page of `ls` from a daemon on a job board, to a version 4 client: each job with the
    /// host that holds it (this daemon's own jobs first, then the other hosts' from the board's
    /// mirror). Added at the end; a daemon without a board still sends [`ClientReply::Jobs`].
    HostedJobs(Vec<HostedJob>),
    /// `status` of a job another host of the board holds: its summary from the board's mirror
    /// (the details stay on its host). Added at the end; version 4 clients only.
    HostedStatus(Box<HostedJob>),
    /// A `cancel` or `kill` of a job another host holds, written on the board for that host
    /// (committed, and announced to it). Added at the end; version 4 clients only.
    Requested {
        /// The host that holds the job and will carry the order out.
        host: String,
    },
    /// `status` of a job this daemon holds, from a daemon on a job board to a version 4
    /// client: the status with this daemon's host name. Added at the end.
    HostStatus {
        host: String,
        status: Box<JobStatus>,
    },
    /// `status` of a job this daemon holds whose journal on the board holds refused writes of
    /// a stale owner (a host it was taken from), to a version 4 client: `HostStatus` with
    /// those writes, oldest first. Sent only when there are some; added at the end.
    JournalStatus {
        host: String,
        status: Box<JobStatus>,
        late_writes: Vec<LateWrite>,
    },
    /// In `events`, to a version 7 client of a daemon on a job board: a state change of a job
    /// another host holds, as that host wrote it to the board (`event.task` is `None`, `by`
    /// too). Added at the end (protocol 7).
    HostedEvent {
        host: String,
        event: Event,
    },
    /// `status` of a job another host holds (or no host yet), to a version 8 client: the
    /// mirror's summary (its host, current task) and its status as the board's journal has it:
    /// its reason, file and tasks (state, attempts, result, revert pending), a moment behind
    /// its host; its output, times, process and history stay on its host. Added at the end
    /// (protocol 8); older clients get `HostedStatus`.
    BoardStatus {
        hosted: Box<HostedJob>,
        status: Box<JobStatus>,
    },
    /// The answer to `Prune` when the ids of the jobs it deleted do not fit in one frame (over
    /// a hundred thousand), to a version 8 client: `count` jobs were deleted, `summary.jobs`
    /// lists the first of them. Added at the end (protocol 8); an older client gets an error
    /// that says the reply is too large (the prune is done all the same).
    PrunedMany {
        summary: PruneSummary,
        count: u64,
    },
    /// The answer to `StatusFromHost` of a job another host holds: the mirror's summary (its
    /// host) and the whole status as that host answered it (times, process, tasks' errors and
    /// times, the last order), with the refused writes of a stale owner kept on the board.
    /// Added at the end (protocol 9).
    OwnerStatus {
        hosted: Box<HostedJob>,
        status: Box<JobStatus>,
        late_writes: Vec<LateWrite>,
    },
}

/// A write a stale owner made about a job after the job was taken from it, refused by the
/// board and kept there (issue 11): what the stale host did, without giving it the job back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LateWrite {
    /// The stale owner's host name and instance.
    pub host: String,
    pub instance: String,
    /// The epoch it wrote under (no longer the job's).
    pub epoch: i64,
    /// What it wrote (`task 1 starting`, `job state`).
    pub what: String,
    /// When the board refused it, ms since the epoch (the database's clock).
    pub at_ms: i64,
}

/// A job and the host of the job board that holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostedJob {
    /// The host (`--host`) whose daemon holds the job.
    pub host: String,
    /// The job as `ls` shows it; from the board's mirror for another host's job (its
    /// `created_ms` is then the board's clock at the first publication, and
    /// `paused_since_ms` is not mirrored).
    pub job: JobSummary,
}

/// One host of the job board, as `hosts` shows it. Ages and liveness are judged by the
/// database's clock, never by a host's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSummary {
    /// The host name (`--host`).
    pub name: String,
    /// The daemon start that holds the name (128 random bits in hex): a restarted host gets
    /// a new one.
    pub instance: String,
    /// Whether its last renewal is younger than its lease.
    pub state: HostState,
    /// How long ago (ms, by the database's clock) it last renewed its lease.
    pub renewal_age_ms: i64,
    /// Its lease (`--lease`).
    pub lease_ms: i64,
    /// The jobs that held a conductor on it at its last renewal.
    pub live_jobs: i64,
    /// Its `--max-jobs` (as capped at start).
    pub max_jobs: i64,
    /// The version of its `supervisor`.
    pub version: String,
}

/// Whether a host's lease is current.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    /// Renewed within its lease.
    Alive,
    /// Its lease expired without a renewal.
    Lost,
    /// Its daemon stopped cleanly (`shutdown`); the same host name may start again at once.
    Stopped,
}

impl std::fmt::Display for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Alive => "alive",
            Self::Lost => "lost",
            Self::Stopped => "stopped",
        })
    }
}

/// What `prune` did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneSummary {
    /// The jobs deleted, in submission order: this host's, then (on a job board) the ended
    /// unclaimed ones it deleted from the board.
    pub jobs: Vec<JobId>,
    /// The store's size on disk (database and WAL) before and after.
    pub store_bytes_before: u64,
    pub store_bytes_after: u64,
}

/// Why a request failed; each maps to a documented exit code of the CLI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    InvalidRequest,
    UnknownJob,
    /// The job is not in a state that allows the request (e.g. `revert` of a live job).
    WrongState,
    /// The daemon refuses new work (shutting down, or the store is full).
    Unavailable,
    Internal,
    /// The client's uid is neither the daemon's nor root's. Added after version 2's first
    /// release, at the end so that every other code keeps its wire number; an older CLI cannot
    /// decode it (it reports a malformed answer, and still fails).
    PermissionDenied,
    /// The daemon runs without a job board (`--board`), so `hosts` has nothing to show. Added
    /// at the end with `Hosts`, which only version 4 clients send.
    NoBoard,
    /// The host of the job board that holds the job lost its lease (or stopped): an order for
    /// it, or a `--wait` on it, cannot be answered now. Added at the end; only a version 4
    /// client that asked about another host's job gets it.
    HostLost,
}

impl ErrorCode {
    /// Every code, in wire order.
    pub const ALL: [Self; 8] = [
        Self::InvalidRequest,
        Self::UnknownJob,
        Self::WrongState,
        Self::Unavailable,
        Self::Internal,
        Self::PermissionDenied,
        Self::NoBoard,
        Self::HostLost,
    ];
}

/// The filters of `ls` (version 3): every one given must hold. The daemon applies them while
/// it pages through the store, so that no list is ever whole in memory or in one frame.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListQuery {
    /// Only jobs in these states (any state, not only the live ones, when given).
    pub states: Vec<JobState>,
    /// Only jobs whose name matches this glob (`*` any text, `?` one character).
    pub name: Option<String>,
    /// Only jobs submitted at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
    /// At most this many jobs: the most recent that pass, still sent in submission order.
    pub limit: Option<u64>,
}

/// One line of `ls`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSummary {
    pub id: JobId,
    pub name: String,
    pub state: JobState,
    /// The task that runs (or last ran).
    pub task: Option<String>,
    pub created_ms: i64,
    /// Since when the job is paused (frozen), if it is.
    pub paused_since_ms: Option<i64>,
    /// How many of its tasks run (execute or revert) now: several in a graph.
    #[serde(default)]
    pub running: u32,
}

/// `status`: the job and each task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    pub id: JobId,
    pub name: String,
    pub state: JobState,
    pub reason: Option<String>,
    pub source: String,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub ended_ms: Option<i64>,
    pub conductor_pid: Option<i32>,
    /// `cgroup` or `session`: how the job's processes are contained.
    pub containment: Option<String>,
    /// Since when (ms since the epoch) the conductor has not answered, if it has not.
    pub unresponsive_since_ms: Option<i64>,
    pub tasks: Vec<TaskStatus>,
    /// The last operator's order on the job: who, when and why.
    pub last_order: Option<Requester>,
    /// Since when the job is paused (frozen), if it is.
    pub paused_since_ms: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub name: String,
    pub state: TaskState,
    /// The execute began and the revert has not completed (on a killed, crashed or
    /// revert_failed job, and for tasks that have a revert).
    pub revert_pending: bool,
    pub attempts: u32,
    pub exec_outcome: Option<ExecOutcome>,
    pub result: String,
    pub error: Option<String>,
    pub started_ms: Option<i64>,
    pub ended_ms: Option<i64>,
    /// The tasks it runs after, in a graph (`after`); empty in a linear job.
    #[serde(default)]
    pub after: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub task: String,
    pub phase: String,
    pub stream: String,
    pub line: String,
}

impl JobStatus {
    /// Bounds each task's result and error to `max` bytes, marker included
    /// ([`bound_with_marker`]): a status of many large results then fits in one frame. The
    /// whole texts stay in the store; a result is its step's stdout (`supervisor logs`).
    pub fn bound_texts(&mut self, max: usize) {
        for task in &mut self.tasks {
            bound_with_marker(&mut task.result, max);
            if let Some(error) = &mut task.error {
                bound_with_marker(error, max);
            }
        }
    }
}

impl ClientReply {
    /// The job status this reply carries, if it carries one.
    pub fn status_mut(&mut self) -> Option<&mut JobStatus> {
        match self {
            Self::Status(status)
            | Self::HostStatus { status, .. }
            | Self::JournalStatus { status, .. }
            | Self::BoardStatus { status, .. }
            | Self::OwnerStatus { status, .. } => Some(status),
            _ => None,
        }
    }

    /// This reply as one frame can carry it, to a client of protocol `version`: a status too
    /// large for one has its tasks' texts cut ([`JobStatus::bound_texts`]), to less and less
    /// until it fits; a prune's list of jobs is cut to its first [`PRUNED_LISTED`] with their
    /// count beside (`PrunedMany`, version 8); any other reply too large, or a status that
    /// cannot fit (tens of thousands of tasks), becomes an error that says so, instead of a
    /// connection closed without a word.
    #[must_use]
    pub fn within_frame(mut self, version: u32) -> Self {
        let mut max = MAX_RESULT_LEN;
        loop {
            let len = match encoded_len(&self) {
                Ok(len) if len <= MAX_FRAME_LEN => return self,
                Ok(len) => len,
                Err(err) => {
                    return Self::Error {
                        code: ErrorCode::Internal,
                        message: format!("cannot encode the reply: {err}"),
                    };
                }
            };
            if let Self::Pruned(summary) = &mut self {
                if version >= PRUNED_MANY && summary.jobs.len() > PRUNED_LISTED {
                    let count = u64::try_from(summary.jobs.len()).unwrap_or(u64::MAX);
                    summary.jobs.truncate(PRUNED_LISTED);
                    let summary = std::mem::take(summary);
                    return Self::PrunedMany { summary, count };
                }
            }
            match self.status_mut() {
                Some(status) if max >= MIN_BOUND => {
                    status.bound_texts(max);
                    max /= 4;
                }
                _ => {
                    return Self::Error {
                        code: ErrorCode::Internal,
                        message: format!(
                            "the reply is {len} bytes, over the protocol's limit of {MAX_FRAME_LEN}"
                        ),
                    };
                }
            }
        }
    }
}

/// The least a status's texts are cut to before [`ClientReply::within_frame`] gives up.
const MIN_BOUND: usize = 64;

/// How many of a prune's jobs a `PrunedMany` lists: their ids take 9 bytes each, so these fit
/// in one frame with room to spare.
pub const PRUNED_LISTED: usize = 100_000;

/// The first protocol version whose clients read `PrunedMany`.
const PRUNED_MANY: u32 = 8;

/// A state change, for `events`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub job: JobId,
    /// `None` for the job itself.
    pub task: Option<String>,
    pub state: String,
    pub at_ms: i64,
    /// The operator whose order caused the change, if one did.
    pub by: Option<Requester>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec::FrameError;

    /// `hosts` is a version 4 request: an older daemon is never sent it (the CLI says so
    /// instead of sending something else).
    #[test]
    fn hosts_round_trips_in_version_4_and_is_refused_before() {
        let frame = ClientRequest::Hosts.encode(4).expect("encodes");
        let decoded = ClientRequest::decoder(4)(&frame[4..]).expect("decodes");
        assert_eq!(decoded, ClientRequest::Hosts);
        for version in 1..4 {
            assert!(
                matches!(
                    ClientRequest::Hosts.encode(version),
                    Err(FrameError::NotInVersion { what: "hosts", .. })
                ),
                "version {version}"
            );
        }
    }

    /// A submit that sets `on_host_loss` carries it beside the spec, in version 4 only.
    #[test]
    fn a_submit_with_its_host_loss_policy_round_trips_in_version_4_only() {
        let src = "on_host_loss = \"resume\"\n[[task]]\nname = \"a\"\nrun = \"true\"\n";
        let spec = JobSpec::parse(src, "r.toml", "r").expect("valid");
        let request = ClientRequest::SubmitWithHostLoss {
            on_host_loss: spec.on_host_loss,
            spec: Box::new(spec),
            source: "/r.toml".into(),
        };
        let frame = request.encode(4).expect("encodes");
        let decoded = ClientRequest::decoder(4)(&frame[4..]).expect("decodes");
        assert!(
            matches!(
                decoded,
                ClientRequest::SubmitWithHostLoss {
                    on_host_loss: OnHostLoss::Resume,
                    ..
                }
            ),
            "{decoded:?}"
        );
        for version in 1..4 {
            assert!(
                matches!(
                    request.encode(version),
                    Err(FrameError::NotInVersion {
                        what: "on_host_loss",
                        ..
                    })
                ),
                "version {version}"
            );
        }
    }

    /// `status` asked of the job's host is a version 9 request: an older daemon is never sent
    /// it (the CLI sends it `Status` instead).
    #[test]
    fn a_status_from_the_host_round_trips_in_version_9_only() {
        let request = ClientRequest::StatusFromHost {
            job: "0000abcd".into(),
        };
        let frame = request.encode(9).expect("encodes");
        let decoded = ClientRequest::decoder(9)(&frame[4..]).expect("decodes");
        assert_eq!(decoded, request);
        for version in 1..9 {
            assert!(
                matches!(
                    request.encode(version),
                    Err(FrameError::NotInVersion {
                        what: "status from the job's host",
                        ..
                    })
                ),
                "version {version}"
            );
        }
    }

    /// `submit --host` carries the host beside the spec, in version 5 only.
    #[test]
    fn a_pinned_submit_round_trips_in_version_5_only() {
        let src = "[[task]]\nname = \"a\"\nrun = \"true\"\n";
        let spec = JobSpec::parse(src, "p.toml", "p").expect("valid");
        let request = ClientRequest::SubmitOnBoard {
            on_host_loss: OnHostLoss::Revert,
            spec: Box::new(spec),
            source: "/p.toml".into(),
            host: Some("c".into()),
        };
        let frame = request.encode(5).expect("encodes");
        let decoded = ClientRequest::decoder(5)(&frame[4..]).expect("decodes");
        assert_eq!(decoded, request);
        for version in 1..5 {
            assert!(
                matches!(
                    request.encode(version),
                    Err(FrameError::NotInVersion {
                        what: "submit --host",
                        ..
                    })
                ),
                "version {version}"
            );
        }
    }

    #[test]
    fn the_board_replies_and_the_no_board_error_round_trip() {
        let reply = ClientReply::Hosts(vec![HostSummary {
            name: "a".into(),
            instance: "00ff".repeat(8),
            state: HostState::Lost,
            renewal_age_ms: 1500,
            lease_ms: 1000,
            live_jobs: 2,
            max_jobs: 16,
            version: "0.1.0".into(),
        }]);
        let summary = JobSummary {
            id: JobId::from_random(7),
            name: "deploy".into(),
            state: JobState::Cancelling,
            task: Some("wait".into()),
            created_ms: 1,
            paused_since_ms: None,
            running: 1,
        };
        let hosted = HostedJob {
            host: "a".into(),
            job: summary,
        };
        let status = JobStatus {
            id: JobId::from_random(9),
            name: "deploy".into(),
            state: JobState::Running,
            reason: None,
            source: "/jobs/deploy.toml".into(),
            created_ms: 1,
            started_ms: Some(2),
            ended_ms: None,
            conductor_pid: Some(42),
            containment: None,
            unresponsive_since_ms: None,
            tasks: Vec::new(),
            last_order: None,
            paused_since_ms: None,
        };
        for message in [
            reply,
            ClientReply::HostedJobs(vec![hosted.clone()]),
            ClientReply::HostedStatus(Box::new(hosted.clone())),
            ClientReply::Requested { host: "b".into() },
            ClientReply::HostStatus {
                host: "c".into(),
                status: Box::new(status.clone()),
            },
            ClientReply::BoardStatus {
                hosted: Box::new(hosted.clone()),
                status: Box::new(status.clone()),
            },
            ClientReply::OwnerStatus {
                hosted: Box::new(hosted.clone()),
                status: Box::new(status.clone()),
                late_writes: Vec::new(),
            },
            ClientReply::JournalStatus {
                host: "c".into(),
                status: Box::new(status),
                late_writes: vec![LateWrite {
                    host: "a".into(),
                    instance: "00ff".repeat(8),
                    epoch: 1,
                    what: "task 1 starting".into(),
                    at_ms: 3,
                }],
            },
            ClientReply::Error {
                code: ErrorCode::NoBoard,
                message: "no board".into(),
            },
            ClientReply::Error {
                code: ErrorCode::HostLost,
                message: "host a lost its lease".into(),
            },
        ] {
            let frame = crate::protocol::codec::encode_frame(&message).expect("encodes");
            let decoded: ClientReply = decode_body(&frame[4..]).expect("decodes");
            assert_eq!(decoded, message);
        }
    }

    fn status_of(tasks: usize, result_len: usize) -> JobStatus {
        JobStatus {
            id: JobId::from_random(7),
            name: "big".into(),
            state: JobState::Success,
            reason: None,
            source: "/jobs/big.toml".into(),
            created_ms: 1,
            started_ms: None,
            ended_ms: None,
            conductor_pid: None,
            containment: None,
            unresponsive_since_ms: None,
            tasks: (0..tasks)
                .map(|i| TaskStatus {
                    name: format!("t{i}"),
                    state: TaskState::Success,
                    revert_pending: false,
                    attempts: 1,
                    exec_outcome: None,
                    result: "é".repeat(result_len / 2),
                    error: Some("x".repeat(result_len)),
                    started_ms: None,
                    ended_ms: None,
                    after: Vec::new(),
                })
                .collect(),
            last_order: None,
            paused_since_ms: None,
        }
    }

    /// A status whose results do not fit in one frame is sent with its texts cut, saying so;
    /// one that fits is sent as it is.
    #[test]
    fn a_status_too_large_for_a_frame_is_sent_with_its_texts_cut() {
        let small = ClientReply::Status(Box::new(status_of(3, 1000)));
        assert_eq!(
            small
                .clone()
                .within_frame(crate::protocol::PROTOCOL_VERSION),
            small
        );

        let reply = ClientReply::Status(Box::new(status_of(40, 60_000)))
            .within_frame(crate::protocol::PROTOCOL_VERSION);
        let len = encoded_len(&reply).expect("encodes");
        assert!(len <= MAX_FRAME_LEN, "{len}");
        let ClientReply::Status(status) = reply else {
            panic!("not a status: {reply:?}");
        };
        assert_eq!(status.tasks.len(), 40);
        for task in &status.tasks {
            assert!(
                task.result.ends_with(" bytes cut]"),
                "{}",
                task.result.len()
            );
            assert!(task.result.starts_with("éé"), "cut at a character boundary");
            assert!(
                task.error
                    .as_deref()
                    .is_some_and(|e| e.ends_with(" bytes cut]"))
            );
        }
    }

    /// A prune of more jobs than one frame lists says how many, and lists the first; a client
    /// older than version 8 gets an error instead (the prune is done all the same).
    #[test]
    fn a_prune_of_more_jobs_than_a_frame_lists_gives_their_count() {
        let summary = PruneSummary {
            jobs: (0..130_000).map(JobId::from_random).collect(),
            store_bytes_before: 9,
            store_bytes_after: 3,
        };
        let reply = ClientReply::Pruned(summary.clone()).within_frame(8);
        let ClientReply::PrunedMany {
            summary: cut,
            count,
        } = &reply
        else {
            panic!("not PrunedMany");
        };
        assert_eq!(*count, 130_000);
        assert_eq!(cut.jobs[..], summary.jobs[..PRUNED_LISTED]);
        assert_eq!((cut.store_bytes_before, cut.store_bytes_after), (9, 3));
        let frame = encode_frame(&reply).expect("fits one frame");
        assert_eq!(
            decode_body::<ClientReply>(&frame[4..]).expect("decodes"),
            reply
        );
        assert!(matches!(
            ClientReply::Pruned(summary).within_frame(7),
            ClientReply::Error { .. }
        ));
        let small = ClientReply::Pruned(PruneSummary::default());
        assert_eq!(small.clone().within_frame(8), small);
    }

    /// A reply that cannot be cut to fit becomes an error that says why.
    #[test]
    fn a_reply_that_cannot_fit_becomes_an_error() {
        let huge = ClientReply::Status(Box::new(status_of(200_000, 0)));
        let ClientReply::Error { code, message } =
            huge.within_frame(crate::protocol::PROTOCOL_VERSION)
        else {
            panic!("not an error");
        };
        assert_eq!(code, ErrorCode::Internal);
        assert!(message.contains("over the protocol's limit"), "{message}");
    }
}
