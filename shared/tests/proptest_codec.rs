//! Property tests of the frame codec (`shared::protocol::codec`) with the real message types.
//!
//! Checked: every message survives `encode_frame` / `write_frame` then `decode_body` /
//! `read_frame`; a stream of frames reads back in order, however the reader splits it; any
//! truncation of a valid stream ends in `Truncated`, or in a clean end exactly at a frame
//! boundary, and never yields a wrong message; garbage never panics; a header announcing more
//! than `MAX_FRAME_LEN` is `TooLarge` and nothing near that size is allocated.

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use shared::ids::JobId;
use shared::limits::Limits;
use shared::protocol::client::{
    Action, ClientReply, ClientRequest, ErrorCode, Event, JobStatus, JobSummary, ListQuery,
    LogLine, Requester, TaskStatus,
};
use shared::protocol::codec::{
    FrameError, MAX_FRAME_LEN, decode_body, encode_frame, read_frame, write_frame,
};
use shared::protocol::conductor::{
    ConductorHello, FromConductor, JobEvent, JobPlan, MAX_REASON_LEN, Phase, PlanAction, PriorTask,
    Report, StepOutcome, Stream, SupervisorHello, ToConductor,
};
use shared::spec::{Backoff, CommandSpec, Flow, JobSpec, OnFailure, TaskBody, TaskSpec};
use shared::state::{ExecOutcome, JobState, TaskState};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt::Debug;
use std::future::Future;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};

// ---------------------------------------------------------------------------------------------
// The largest single allocation made by the current thread, to show that an oversized header is
// refused before its body is allocated. A const-initialised `Cell<usize>` thread local needs no
// allocation and no destructor, so it is safe to touch from inside the allocator.

struct Tracking;

thread_local! {
    static LARGEST_ALLOC: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_alloc(new_size);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

fn note_alloc(size: usize) {
    let _ = LARGEST_ALLOC.try_with(|largest| largest.set(largest.get().max(size)));
}

/// Runs `f` and returns its value with the largest allocation it made on this thread.
fn largest_alloc_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST_ALLOC.with(|largest| largest.set(0));
    let value = f();
    (value, LARGEST_ALLOC.with(Cell::get))
}

// ---------------------------------------------------------------------------------------------
// Driving the async codec without a runtime: the readers and writers used here never return
// `Pending`, so one poll with a no-op waker completes every future.

fn now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(value) => value,
        Poll::Pending => panic!("in-memory I/O never waits"),
    }
}

/// A reader over bytes that hands them out in the given chunk sizes (cycled), so that a header
/// or a body arrives in pieces.
struct Chunked<'a> {
    data: &'a [u8],
    chunks: Vec<usize>,
    next: usize,
}

impl<'a> Chunked<'a> {
    fn new(data: &'a [u8], chunks: Vec<usize>) -> Self {
        Self {
            data,
            chunks,
            next: 0,
        }
    }
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let chunk = if self.chunks.is_empty() {
            usize::MAX
        } else {
            let chunk = self.chunks[self.next % self.chunks.len()].max(1);
            self.next += 1;
            chunk
        };
        let n = chunk.min(buf.remaining()).min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        buf.put_slice(head);
        self.data = tail;
        Poll::Ready(Ok(()))
    }
}

/// Reads frames until a clean end or an error (at most `limit` frames).
fn read_all<T, R>(reader: &mut R, limit: usize) -> (Vec<T>, Result<(), FrameError>)
where
    T: serde::de::DeserializeOwned,
    R: AsyncRead + Unpin,
{
    let mut got = Vec::new();
    for _ in 0..limit {
        match now(read_frame::<T, _>(reader)) {
            Ok(Some(message)) => got.push(message),
            Ok(None) => return (got, Ok(())),
            Err(err) => return (got, Err(err)),
        }
    }
    (got, Ok(()))
}

// ---------------------------------------------------------------------------------------------
// Strategies.

/// Short ASCII, any unicode, long ASCII, and long strings of arbitrary `char`s.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9 ._-]{0,12}",
        3 => "\\PC{0,64}",
        1 => any::<String>(),
        1 => "[ -~]{1000,5000}",
        1 => vec(any::<char>(), 500..3000).prop_map(String::from_iter),
    ]
}

fn short_text() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9._-]{0,16}", "\\PC{0,16}"]
}

fn job_id() -> impl Strategy<Value = JobId> {
    any::<u32>().prop_map(JobId::from_random)
}

fn phase() -> impl Strategy<Value = Phase> {
    prop_oneof![Just(Phase::Execute), Just(Phase::Revert)]
}

fn stream() -> impl Strategy<Value = Stream> {
    prop_oneof![Just(Stream::Stdout), Just(Stream::Stderr)]
}

fn job_state() -> impl Strategy<Value = JobState> {
    proptest::sample::select(JobState::ALL.to_vec())
}

fn task_state() -> impl Strategy<Value = TaskState> {
    proptest::sample::select(TaskState::ALL.to_vec())
}

fn exec_outcome() -> impl Strategy<Value = ExecOutcome> {
    prop_oneof![
        Just(ExecOutcome::Success),
        Just(ExecOutcome::Failure),
        Just(ExecOutcome::Cancelled),
        Just(ExecOutcome::Killed),
    ]
}

fn duration() -> impl Strategy<Value = Duration> {
    (any::<u64>(), 0u32..1_000_000_000).prop_map(|(secs, nanos)| Duration::new(secs, nanos))
}

fn env() -> impl Strategy<Value = std::collections::BTreeMap<String, String>> {
    btree_map(short_text(), short_text(), 0..4)
}

fn command() -> impl Strategy<Value = CommandSpec> {
    prop_oneof![
        text().prop_map(CommandSpec::Shell),
        vec(short_text(), 0..5).prop_map(CommandSpec::Argv),
    ]
}

fn task_body() -> impl Strategy<Value = TaskBody> {
    prop_oneof![
        3 => (command(), proptest::option::of(command()))
            .prop_map(|(run, revert)| TaskBody::Command { run, revert }),
        1 => (short_text(), text())
            .prop_map(|(kind, params_json)| TaskBody::Native { kind, params_json }),
    ]
}

fn task_spec() -> BoxedStrategy<TaskSpec> {
    (
        short_text(),
        task_body(),
        proptest::option::of(duration()),
        proptest::option::of(duration()),
        any::<u32>(),
        proptest::option::of(short_text()),
        env(),
        (any::<u32>(), duration()),
        (vec(any::<u32>(), 0..4), duration(), any::<u32>()),
    )
        .prop_map(
            |(
                name,
                body,
                timeout,
                revert_timeout,
                retries,
                cwd,
                env,
                (revert_retries, revert_retry_delay),
                (after, retry_delay, backoff),
            )| TaskSpec {
                name,
                body,
                timeout,
                revert_timeout,
                revert_retries,
                revert_retry_delay,
                retries,
                cwd,
                env,
                max_output: None,
                after,
                retry_delay,
                retry_backoff: Backoff(backoff),
            },
        )
        .boxed()
}

fn limits() -> BoxedStrategy<Limits> {
    let opt_u64 = || proptest::option::of(any::<u64>());
    (
        (opt_u64(), opt_u64(), proptest::option::of(any::<u32>())),
        (opt_u64(), opt_u64(), proptest::option::of(duration())),
        (
            proptest::option::of(short_text()),
            proptest::option::of(short_text()),
        ),
    )
        .prop_map(
            |((memory, pids, cpu_millis), (nofile, core, cpu_time), (user, group))| Limits {
                memory,
                pids,
                cpu_millis,
                nofile,
                core,
                cpu_time,
                user,
                group,
            },
        )
        .boxed()
}

/// A `JobSpec` has no public constructor but `parse`: start from a parsed one (so that fields
/// added later keep a valid value) and overwrite every field known here.
fn job_spec() -> BoxedStrategy<JobSpec> {
    (
        (
            short_text(),
            proptest::option::of(duration()),
            duration(),
            duration(),
            env(),
            proptest::option::of(short_text()),
        ),
        (limits(), duration(), any::<bool>(), vec(task_spec(), 0..4)),
        (any::<bool>(), any::<u32>(), any::<bool>()),
    )
        .prop_map(
            |(
                (name, timeout, cancel_timeout, term_grace, env, worker),
                (limits, heartbeat_timeout, kill_unresponsive, tasks),
                (graph, max_parallel, finish),
            )| {
                let mut spec = JobSpec::parse(
                    "[[task]]\nname = \"t\"\nrun = \"true\"\n",
                    "template.toml",
                    "template",
                )
                .expect("the template job file is valid");
                spec.name = name;
                spec.timeout = timeout;
                spec.cancel_timeout = cancel_timeout;
                spec.term_grace = term_grace;
                spec.env = env;
                spec.worker = worker;
                spec.limits = limits;
                spec.heartbeat_timeout = heartbeat_timeout;
                spec.kill_unresponsive = kill_unresponsive;
                spec.tasks = tasks;
                spec.flow = if graph { Flow::Graph } else { Flow::Linear };
                spec.max_parallel = max_parallel;
                spec.on_failure = if finish {
                    OnFailure::Finish
                } else {
                    OnFailure::Interrupt
                };
                spec
            },
        )
        .boxed()
}

fn prior_task() -> impl Strategy<Value = PriorTask> {
    (
        task_state(),
        any::<u32>(),
        proptest::option::of(exec_outcome()),
        text(),
    )
        .prop_map(|(state, attempts, exec_outcome, result)| PriorTask {
            state,
            attempts,
            exec_outcome,
            result,
        })
}

fn job_plan() -> BoxedStrategy<JobPlan> {
    (
        job_id(),
        job_spec(),
        prop_oneof![
            any::<u32>().prop_map(|from| PlanAction::Execute { from }),
            vec(any::<u32>(), 0..8).prop_map(|order| PlanAction::Revert { order }),
            vec(any::<u32>(), 0..8).prop_map(|revert| PlanAction::Resume { revert }),
        ],
        vec(prior_task(), 0..4),
    )
        .prop_map(|(job_id, spec, action, prior)| JobPlan {
            job_id,
            spec,
            action,
            prior,
        })
        .boxed()
}

fn to_conductor() -> impl Strategy<Value = ToConductor> {
    prop_oneof![
        (any::<u32>(), job_id()).prop_map(|(protocol_version, job_id)| {
            ToConductor::Hello(SupervisorHello {
                protocol_version,
                job_id,
            })
        }),
        job_plan().prop_map(|plan| ToConductor::Start(Box::new(plan))),
        any::<u64>().prop_map(|seq| ToConductor::Ack { seq }),
        text().prop_map(|reason| ToConductor::Cancel { reason }),
        (any::<u32>(), text()).prop_map(|(task, result)| ToConductor::PriorResult { task, result }),
        any::<u64>().prop_map(|run_for_ms| ToConductor::Fence { run_for_ms }),
    ]
}

/// Whether `message` exists only in versions after 4: a fence (5), a resume plan (6).
fn is_newer_than_4(message: &ToConductor) -> bool {
    match message {
        ToConductor::Fence { .. } => true,
        ToConductor::Start(plan) => matches!(plan.action, PlanAction::Resume { .. }),
        _ => false,
    }
}

/// What a version 3 (or older) peer receives of `spec`: the same, without flows.
fn without_flows(spec: &mut JobSpec) {
    spec.flow = Flow::Linear;
    spec.max_parallel = shared::spec::DEFAULT_MAX_PARALLEL;
    spec.on_failure = OnFailure::Interrupt;
    for task in &mut spec.tasks {
        task.after.clear();
        task.retry_delay = Duration::ZERO;
        task.retry_backoff = Backoff::default();
    }
}

/// What a version 1 peer receives of `message`: the same, without any `revert_timeout`.
fn as_v1(message: &ToConductor) -> ToConductor {
    let mut message = message.clone();
    if let ToConductor::Start(plan) = &mut message {
        without_flows(&mut plan.spec);
        for task in &mut plan.spec.tasks {
            task.revert_timeout = None;
            task.revert_retries = 0;
            task.revert_retry_delay = Duration::ZERO;
        }
    }
    message
}

fn step_outcome() -> impl Strategy<Value = StepOutcome> {
    prop_oneof![
        text().prop_map(|result| StepOutcome::Success { result }),
        (text(), any::<bool>(), text()).prop_map(|(reason, cancelled, result)| {
            StepOutcome::Failure {
                reason,
                cancelled,
                result,
            }
        }),
    ]
}

fn job_event() -> impl Strategy<Value = JobEvent> {
    prop_oneof![
        (any::<u32>(), phase(), any::<u32>()).prop_map(|(task, phase, attempt)| {
            JobEvent::TaskStarting {
                task,
                phase,
                attempt,
            }
        }),
        (any::<u32>(), phase(), any::<u32>())
            .prop_map(|(task, phase, pid)| JobEvent::TaskSpawned { task, phase, pid }),
        (any::<u32>(), phase(), stream(), text()).prop_map(|(task, phase, stream, line)| {
            JobEvent::Output {
                task,
                phase,
                stream,
                line,
            }
        }),
        (any::<u32>(), phase(), step_outcome()).prop_map(|(task, phase, outcome)| {
            JobEvent::TaskFinished {
                task,
                phase,
                outcome,
            }
        }),
        text().prop_map(|reason| JobEvent::Cancelling { reason }),
        text().prop_map(|reason| JobEvent::Fenced { reason }),
        job_state().prop_map(|state| JobEvent::JobFinished { state }),
    ]
}

fn from_conductor() -> impl Strategy<Value = FromConductor> {
    prop_oneof![
        (any::<u32>(), job_id(), any::<u32>(), any::<bool>()).prop_map(
            |(protocol_version, job_id, pid, has_plan)| {
                FromConductor::Hello(ConductorHello {
                    protocol_version,
                    job_id,
                    pid,
                    has_plan,
                })
            }
        ),
        (any::<u64>(), job_event())
            .prop_map(|(seq, event)| FromConductor::Report(Report { seq, event })),
    ]
}

fn list_query() -> impl Strategy<Value = ListQuery> {
    (
        proptest::collection::vec(job_state(), 0..3),
        proptest::option::of(short_text()),
        proptest::option::of(any::<i64>()),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(|(states, name, since_ms, limit)| ListQuery {
            states,
            name,
            since_ms,
            limit,
        })
}

fn client_request() -> impl Strategy<Value = ClientRequest> {
    prop_oneof![
        any::<u32>().prop_map(|protocol_version| ClientRequest::Hello { protocol_version }),
        (job_spec(), text()).prop_map(|(spec, source)| ClientRequest::Submit {
            spec: Box::new(spec),
            source,
        }),
        (any::<bool>(), list_query()).prop_map(|(all, query)| ClientRequest::List { all, query }),
        short_text().prop_map(|job| ClientRequest::Status { job }),
        (short_text(), proptest::option::of(any::<u64>()))
            .prop_map(|(job, timeout_ms)| ClientRequest::Cancel { job, timeout_ms }),
        short_text().prop_map(|job| ClientRequest::Kill { job }),
        (
            short_text(),
            proptest::option::of(short_text()),
            any::<bool>()
        )
            .prop_map(|(job, task, follow)| ClientRequest::Logs { job, task, follow }),
        short_text().prop_map(|job| ClientRequest::Revert { job }),
        short_text().prop_map(|job| ClientRequest::Resume { job }),
        Just(ClientRequest::Events),
        any::<bool>().prop_map(|cancel| ClientRequest::Shutdown { cancel }),
        (
            short_text(),
            prop_oneof![Just(Action::Pause), Just(Action::Continue)],
            proptest::option::of(short_text()),
        )
            .prop_map(|(job, action, reason)| ClientRequest::Operate {
                job,
                action,
                reason,
                timeout_ms: None,
            }),
        (short_text(), any::<bool>(), any::<i64>()).prop_map(|(job, follow, since_ms)| {
            ClientRequest::LogsSince {
                job,
                task: None,
                follow,
                since_ms,
            }
        }),
    ]
}

fn task_status() -> impl Strategy<Value = TaskStatus> {
    (
        (short_text(), task_state(), any::<bool>(), any::<u32>()),
        (
            proptest::option::of(exec_outcome()),
            text(),
            proptest::option::of(short_text()),
            proptest::option::of(any::<i64>()),
            proptest::option::of(any::<i64>()),
        ),
        vec(short_text(), 0..3),
    )
        .prop_map(
            |(
                (name, state, revert_pending, attempts),
                (exec_outcome, result, error, started_ms, ended_ms),
                after,
            )| TaskStatus {
                after,
                name,
                state,
                revert_pending,
                attempts,
                exec_outcome,
                result,
                error,
                started_ms,
                ended_ms,
            },
        )
}

fn client_reply() -> BoxedStrategy<ClientReply> {
    let error_code = proptest::sample::select(vec![
        ErrorCode::InvalidRequest,
        ErrorCode::UnknownJob,
        ErrorCode::WrongState,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::PermissionDenied,
    ]);
    let summary = (
        job_id(),
        short_text(),
        job_state(),
        proptest::option::of(short_text()),
        any::<i64>(),
    )
        .prop_map(|(id, name, state, task, created_ms)| JobSummary {
            id,
            name,
            state,
            task,
            created_ms,
            paused_since_ms: Some(created_ms),
            running: u32::from(created_ms > 0),
        });
    let status = (
        (
            job_id(),
            short_text(),
            job_state(),
            proptest::option::of(text()),
        ),
        (
            text(),
            any::<i64>(),
            proptest::option::of(any::<i64>()),
            proptest::option::of(any::<i64>()),
            proptest::option::of(any::<i32>()),
        ),
        (
            proptest::option::of(short_text()),
            proptest::option::of(any::<i64>()),
        ),
        vec(task_status(), 0..4),
    )
        .prop_map(
            |(
                (id, name, state, reason),
                (source, created_ms, started_ms, ended_ms, conductor_pid),
                (containment, unresponsive_since_ms),
                tasks,
            )| JobStatus {
                id,
                name,
                state,
                reason,
                source,
                created_ms,
                started_ms,
                ended_ms,
                conductor_pid,
                containment,
                unresponsive_since_ms,
                tasks,
                last_order: Some(Requester {
                    action: Action::Cancel,
                    uid: 0,
                    pid: 1,
                    command: "supervisor cancel".into(),
                    at_ms: created_ms,
                    reason: Some("because".into()),
                }),
                paused_since_ms: unresponsive_since_ms,
            },
        );
    prop_oneof![
        any::<u32>().prop_map(|protocol_version| ClientReply::Hello { protocol_version }),
        job_id().prop_map(|job| ClientReply::Submitted { job }),
        vec(summary, 0..4).prop_map(ClientReply::Jobs),
        status.prop_map(|status| ClientReply::Status(Box::new(status))),
        Just(ClientReply::Done),
        (short_text(), short_text(), short_text(), text()).prop_map(
            |(task, phase, stream, line)| ClientReply::Log(LogLine {
                task,
                phase,
                stream,
                line,
            })
        ),
        (
            job_id(),
            proptest::option::of(short_text()),
            short_text(),
            any::<i64>()
        )
            .prop_map(|(job, task, state, at_ms)| ClientReply::Event(Event {
                job,
                task,
                state,
                at_ms,
                by: None,
            })),
        (error_code, text()).prop_map(|(code, message)| ClientReply::Error { code, message }),
    ]
    .boxed()
}

/// Chunk sizes for a [`Chunked`] reader: empty means "all at once".
fn chunks() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        Just(Vec::new()),
        vec(1usize..9, 1..6),
        vec(1usize..512, 1..4)
    ]
}

// ---------------------------------------------------------------------------------------------
// Shared checks, generic over the message type.

fn check_round_trip<T>(message: &T) -> Result<(), TestCaseError>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + Debug,
{
    let frame = encode_frame(message).map_err(|err| TestCaseError::fail(format!("{err}")))?;
    prop_assert!(frame.len() >= 4);
    let (header, body) = frame.split_at(4);
    let announced = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    prop_assert_eq!(announced as usize, body.len(), "header is the body length");
    prop_assert!(body.len() <= MAX_FRAME_LEN);

    let decoded: T = decode_body(body).map_err(|err| TestCaseError::fail(format!("{err}")))?;
    prop_assert_eq!(&decoded, message);

    // write_frame writes exactly what encode_frame returns.
    let mut written = Vec::new();
    now(write_frame(&mut written, message)).map_err(|err| TestCaseError::fail(format!("{err}")))?;
    prop_assert_eq!(&written, &frame);

    // read_frame reads it back, then reports a clean end.
    let mut reader = &frame[..];
    let got = now(read_frame::<T, _>(&mut reader))
        .map_err(|err| TestCaseError::fail(format!("{err}")))?;
    prop_assert_eq!(got.as_ref(), Some(message));
    let end = now(read_frame::<T, _>(&mut reader))
        .map_err(|err| TestCaseError::fail(format!("{err}")))?;
    prop_assert!(end.is_none());
    Ok(())
}

fn encode_stream<T: serde::Serialize>(messages: &[T]) -> Result<(Vec<u8>, Vec<usize>), String> {
    let mut bytes = Vec::new();
    let mut boundaries = vec![0];
    for message in messages {
        bytes.extend(encode_frame(message).map_err(|err| err.to_string())?);
        boundaries.push(bytes.len());
    }
    Ok((bytes, boundaries))
}

fn check_stream<T>(messages: &[T], chunks: Vec<usize>) -> Result<(), TestCaseError>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + Debug,
{
    let (bytes, _) = encode_stream(messages).map_err(TestCaseError::fail)?;
    let mut reader = Chunked::new(&bytes, chunks);
    let (got, end) = read_all::<T, _>(&mut reader, messages.len() + 1);
    prop_assert!(end.is_ok(), "clean end expected, got {:?}", end);
    prop_assert_eq!(got.as_slice(), messages);
    Ok(())
}

/// Cutting a valid stream anywhere gives a prefix of the messages in order, then a clean end if
/// the cut is on a frame boundary, else `Truncated`.
fn check_truncations<T>(
    messages: &[T],
    cuts: &[prop::sample::Index],
    chunks: &[usize],
) -> Result<(), TestCaseError>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + Debug,
{
    let (bytes, boundaries) = encode_stream(messages).map_err(TestCaseError::fail)?;
    // Every cut near each boundary, plus random ones.
    let mut positions: Vec<usize> = boundaries
        .iter()
        .flat_map(|&b| b.saturating_sub(5)..=(b + 5).min(bytes.len()))
        .collect();
    positions.extend(cuts.iter().map(|i| i.index(bytes.len() + 1)));
    positions.sort_unstable();
    positions.dedup();
    for cut in positions {
        let mut reader = Chunked::new(&bytes[..cut], chunks.to_vec());
        let (got, end) = read_all::<T, _>(&mut reader, messages.len() + 1);
        let complete = boundaries.iter().filter(|&&b| b != 0 && b <= cut).count();
        prop_assert_eq!(
            got.as_slice(),
            &messages[..complete],
            "cut at {} of {}",
            cut,
            bytes.len()
        );
        if boundaries.contains(&cut) {
            prop_assert!(end.is_ok(), "cut at boundary {}: {:?}", cut, end);
        } else {
            prop_assert!(
                matches!(end, Err(FrameError::Truncated)),
                "cut at {} of {}: {:?}",
                cut,
                bytes.len(),
                end
            );
        }
    }
    Ok(())
}

/// Whatever the bytes, reading gives messages then a clean end or an error, without panicking;
/// a clean end is only possible on a frame boundary, which the reader must have consumed.
fn check_garbage<T>(bytes: &[u8], chunks: Vec<usize>) -> Result<(), TestCaseError>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + Debug,
{
    let _ = decode_body::<T>(bytes);
    let mut reader = Chunked::new(bytes, chunks);
    let (got, end) = read_all::<T, _>(&mut reader, bytes.len() + 1);
    prop_assert!(got.len() <= bytes.len() / 4);
    if end.is_ok() {
        prop_assert!(reader.data.is_empty(), "clean end with bytes left");
    }
    // Anything decoded re-encodes to something that decodes to the same value.
    for message in &got {
        let frame = encode_frame(message).map_err(|err| TestCaseError::fail(format!("{err}")))?;
        let again: T =
            decode_body(&frame[4..]).map_err(|err| TestCaseError::fail(format!("{err}")))?;
        prop_assert_eq!(&again, message);
    }
    Ok(())
}

/// A correct header in front of a random body: the body goes through postcard; the outcome is a
/// message or `Malformed`, never `Truncated` or `TooLarge`.
fn check_random_body<T>(body: &[u8]) -> Result<(), TestCaseError>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + Debug,
{
    let len = u32::try_from(body.len()).map_err(|err| TestCaseError::fail(format!("{err}")))?;
    let mut bytes = len.to_be_bytes().to_vec();
    bytes.extend_from_slice(body);
    let mut reader = &bytes[..];
    match now(read_frame::<T, _>(&mut reader)) {
        Ok(Some(_)) | Err(FrameError::Malformed(_)) => {}
        other => prop_assert!(false, "unexpected {:?}", other),
    }
    prop_assert!(reader.is_empty(), "the whole frame is consumed");
    Ok(())
}

fn cases(n: u32) -> ProptestConfig {
    // No regression files next to the tests: a failure prints its minimal input instead.
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn to_conductor_round_trips(message in to_conductor()) {
        check_round_trip(&message)?;
    }

    #[test]
    fn to_conductor_round_trips_in_version_1(message in to_conductor()) {
        let encoded = message.encode(1);
        if matches!(message, ToConductor::PriorResult { .. }) || is_newer_than_4(&message) {
            prop_assert!(matches!(encoded, Err(FrameError::NotInVersion { .. })), "{encoded:?}");
        } else if let Ok(frame) = encoded {
            let decoded = ToConductor::decode_v1(&frame[4..]).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(decoded, as_v1(&message));
        }
    }

    #[test]
    fn client_request_round_trips_in_version_1(message in client_request()) {
        if let Ok(frame) = message.encode(1) {
            let decoded = ClientRequest::decode_v1(&frame[4..]).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let expected = match message {
                ClientRequest::Submit { mut spec, source } => {
                    without_flows(&mut spec);
                    for task in &mut spec.tasks {
                        task.revert_timeout = None;
                        task.revert_retries = 0;
                        task.revert_retry_delay = Duration::ZERO;
                    }
                    ClientRequest::Submit { spec, source }
                }
                // Version 1 carries `all` alone.
                ClientRequest::List { all, .. } => ClientRequest::List { all, query: ListQuery::default() },
                other => other,
            };
            prop_assert_eq!(decoded, expected);
        }
    }

    #[test]
    fn client_request_round_trips_in_version_2(message in client_request()) {
        if matches!(message, ClientRequest::LogsSince { .. }) {
            let refused = matches!(message.encode(2), Err(FrameError::NotInVersion { .. }));
            prop_assert!(refused, "logs --since is refused before version 3");
            return Ok(());
        }
        if matches!(&message, ClientRequest::List { query, .. } if *query != ListQuery::default()) {
            let refused = matches!(message.encode(2), Err(FrameError::NotInVersion { .. }));
            prop_assert!(refused, "ls filters are refused before version 3");
            return Ok(());
        }
        let frame = message.encode(2).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let decoded = ClientRequest::decoder(2)(&frame[4..]).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let expected = match message {
            ClientRequest::Submit { mut spec, source } => {
                without_flows(&mut spec);
                for task in &mut spec.tasks {
                    task.revert_retries = 0;
                    task.revert_retry_delay = Duration::ZERO;
                }
                spec.hooks = shared::spec::Hooks::default();
                ClientRequest::Submit { spec, source }
            }
            // Version 2 carries `all` alone.
            ClientRequest::List { all, .. } => ClientRequest::List { all, query: ListQuery::default() },
            other => other,
        };
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn to_conductor_round_trips_in_version_2(message in to_conductor()) {
        if is_newer_than_4(&message) {
            let refused = matches!(message.encode(2), Err(FrameError::NotInVersion { .. }));
            prop_assert!(refused, "a fence or a resume plan is refused before its version");
            return Ok(());
        }
        let frame = message.encode(2).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let decoded = ToConductor::decoder(2)(&frame[4..]).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut expected = message;
        if let ToConductor::Start(plan) = &mut expected {
            without_flows(&mut plan.spec);
            for task in &mut plan.spec.tasks {
                task.revert_retries = 0;
                task.revert_retry_delay = Duration::ZERO;
            }
        }
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn to_conductor_round_trips_in_version_3(message in to_conductor()) {
        if is_newer_than_4(&message) {
            let refused = matches!(message.encode(3), Err(FrameError::NotInVersion { .. }));
            prop_assert!(refused, "a fence or a resume plan is refused before its version");
            return Ok(());
        }
        let frame = message.encode(3).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let decoded = ToConductor::decoder(3)(&frame[4..]).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut expected = message;
        if let ToConductor::Start(plan) = &mut expected {
            without_flows(&mut plan.spec);
        }
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn client_request_round_trips_in_version_3(message in client_request()) {
        let frame = message.encode(3).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let decoded = ClientRequest::decoder(3)(&frame[4..]).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let expected = match message {
            ClientRequest::Submit { mut spec, source } => {
                without_flows(&mut spec);
                ClientRequest::Submit { spec, source }
            }
            other => other,
        };
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn a_bounded_event_always_fits_in_a_frame(
        event in job_event(),
        extra in prop::sample::select(vec![0usize, 100, 2 * MAX_REASON_LEN, MAX_FRAME_LEN, 3 * MAX_FRAME_LEN]),
        seq in any::<u64>(),
    ) {
        let big = "\u{e9}".repeat(extra / 2);
        let event = match event {
            JobEvent::Output { task, phase, stream, line } => JobEvent::Output { task, phase, stream, line: line + &big },
            JobEvent::TaskFinished { task, phase, outcome: StepOutcome::Failure { reason, cancelled, result } } => JobEvent::TaskFinished {
                task, phase, outcome: StepOutcome::Failure { reason: reason + &big, cancelled, result: result + &big },
            },
            JobEvent::TaskFinished { task, phase, outcome: StepOutcome::Success { result } } => JobEvent::TaskFinished {
                task, phase, outcome: StepOutcome::Success { result: result + &big },
            },
            JobEvent::Cancelling { reason } => JobEvent::Cancelling { reason: reason + &big },
            JobEvent::Fenced { reason } => JobEvent::Fenced { reason: reason + &big },
            other => other,
        };
        let report = FromConductor::Report(Report { seq, event: event.bounded() });
        prop_assert!(encode_frame(&report).is_ok());
    }

    #[test]
    fn from_conductor_round_trips(message in from_conductor()) {
        check_round_trip(&message)?;
    }

    #[test]
    fn client_request_round_trips(message in client_request()) {
        check_round_trip(&message)?;
    }

    #[test]
    fn client_reply_round_trips(message in client_reply()) {
        check_round_trip(&message)?;
    }

    #[test]
    fn from_conductor_stream_reads_back_in_order(
        messages in vec(from_conductor(), 0..6),
        chunks in chunks(),
    ) {
        check_stream(&messages, chunks)?;
    }

    #[test]
    fn to_conductor_stream_reads_back_in_order(
        messages in vec(to_conductor(), 0..4),
        chunks in chunks(),
    ) {
        check_stream(&messages, chunks)?;
    }

    #[test]
    fn client_request_stream_reads_back_in_order(
        messages in vec(client_request(), 0..6),
        chunks in chunks(),
    ) {
        check_stream(&messages, chunks)?;
    }

    #[test]
    fn truncated_from_conductor_stream_never_yields_a_wrong_message(
        messages in vec(from_conductor(), 1..5),
        cuts in vec(any::<prop::sample::Index>(), 8),
        chunks in chunks(),
    ) {
        check_truncations(&messages, &cuts, &chunks)?;
    }

    #[test]
    fn truncated_to_conductor_stream_never_yields_a_wrong_message(
        messages in vec(to_conductor(), 1..4),
        cuts in vec(any::<prop::sample::Index>(), 8),
        chunks in chunks(),
    ) {
        check_truncations(&messages, &cuts, &chunks)?;
    }

    #[test]
    fn truncated_client_request_stream_never_yields_a_wrong_message(
        messages in vec(client_request(), 1..5),
        cuts in vec(any::<prop::sample::Index>(), 8),
        chunks in chunks(),
    ) {
        check_truncations(&messages, &cuts, &chunks)?;
    }

    #[test]
    fn garbage_never_panics(
        bytes in prop_oneof![
            vec(any::<u8>(), 0..64),
            vec(any::<u8>(), 0..2048),
            // Small lengths in the header, so that some bodies are complete.
            (0u8..4, vec(any::<u8>(), 0..256)).prop_map(|(len, mut rest)| {
                let mut bytes = vec![0, 0, 0, len * 8];
                bytes.append(&mut rest);
                bytes
            }),
        ],
        chunks in chunks(),
    ) {
        check_garbage::<ToConductor>(&bytes, chunks.clone())?;
        check_garbage::<FromConductor>(&bytes, chunks.clone())?;
        check_garbage::<ClientRequest>(&bytes, chunks.clone())?;
        check_garbage::<ClientReply>(&bytes, chunks)?;
    }

    #[test]
    fn random_body_is_a_message_or_malformed(body in vec(any::<u8>(), 0..512)) {
        check_random_body::<ToConductor>(&body)?;
        check_random_body::<FromConductor>(&body)?;
        check_random_body::<ClientRequest>(&body)?;
        check_random_body::<ClientReply>(&body)?;
    }

    #[test]
    fn corrupted_valid_frame_never_panics(
        message in from_conductor(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut frame = encode_frame(&message)
            .map_err(|err| TestCaseError::fail(format!("{err}")))?;
        // Leave the header alone so that postcard sees the damage.
        if frame.len() > 4 {
            for (at, byte) in flips {
                let i = 4 + at.index(frame.len() - 4);
                frame[i] ^= byte;
            }
        }
        check_random_body::<FromConductor>(&frame[4..])?;
        check_random_body::<ToConductor>(&frame[4..])?;
    }
}

proptest! {
    #![proptest_config(cases(64))]

    #[test]
    fn oversized_header_is_too_large_without_allocating_it(
        len in (MAX_FRAME_LEN as u32 + 1)..=u32::MAX,
        tail in vec(any::<u8>(), 0..16),
        chunks in chunks(),
    ) {
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend(tail);
        let (got, largest) = largest_alloc_during(|| {
            let mut reader = Chunked::new(&bytes, chunks.clone());
            now(read_frame::<FromConductor, _>(&mut reader))
        });
        prop_assert!(
            matches!(got, Err(FrameError::TooLarge { len: l }) if l == len as usize),
            "{:?}",
            got
        );
        prop_assert!(largest < 64 * 1024, "allocated {} bytes", largest);
        let (got, _) = largest_alloc_during(|| {
            let mut reader = &bytes[..];
            now(read_frame::<ClientRequest, _>(&mut reader))
        });
        prop_assert!(matches!(got, Err(FrameError::TooLarge { .. })), "{:?}", got);
    }
}

#[test]
fn header_of_exactly_max_frame_len_is_not_too_large() {
    let header = u32::try_from(MAX_FRAME_LEN)
        .expect("limit fits in u32")
        .to_be_bytes();
    let mut reader = &header[..];
    let got = now(read_frame::<FromConductor, _>(&mut reader));
    assert!(matches!(got, Err(FrameError::Truncated)), "{got:?}");
}

#[test]
fn the_allocation_tracker_sees_a_large_allocation() {
    let ((), largest) = largest_alloc_during(|| {
        let big = vec![0u8; MAX_FRAME_LEN];
        std::hint::black_box(&big);
    });
    assert!(largest >= MAX_FRAME_LEN, "{largest}");
}
