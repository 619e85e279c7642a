//! The task trait: what every task of a job is to the engine, a command task or a native one.
//!
//! A task has an `execute` and a `revert`, both async on the conductor's single thread. Each
//! gets a [`TaskContext`]: the job's parameters for the task, the cancel signal (a cheap check,
//! [`TaskContext::is_cancelled`], and an awaitable, [`TaskContext::cancelled`]), a way to report
//! progress lines, and in revert the execute's result.
//!
//! Cancellation: when a soft cancel arrives during an *interruptible* execute (the default), the
//! engine drops the execute future at once; the task sees it at whichever `.await` it was
//! waiting on, and its revert runs next (`TASK_OUTCOME` = cancelled). A task that computes
//! without awaiting should check [`TaskContext::is_cancelled`] now and then and return
//! [`TaskError::cancelled`]; one that ignores the cancel is SIGKILLed with the whole job at the
//! job's `cancel_timeout`, and its revert is recorded as skipped. Reverts are never interrupted
//! by a cancel; each is bounded by the task's `revert_timeout` (its future is dropped there, and
//! the revert fails).

use serde::de::DeserializeOwned;
use shared::ids::JobId;
use shared::protocol::conductor::{MAX_LINE_LEN, Phase, Stream, bound_with_marker};
use shared::state::ExecOutcome;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, watch};

use crate::link::CancelReason;

/// The future a task step returns; it runs on the conductor's one thread, so it need not be `Send`.
pub type TaskFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, TaskError>> + 'a>>;

/// A task's code. Implement it for native tasks; command tasks implement it too.
pub trait Task {
    /// The forward step. Its value is the task's result, stored and handed to the revert.
    fn execute<'a>(&'a self, ctx: &'a TaskContext) -> TaskFuture<'a, serde_json::Value>;

    /// The compensation of whatever `execute` did (or began to do: see
    /// [`TaskContext::execute_outcome`]). Should be idempotent.
    fn revert<'a>(&'a self, ctx: &'a TaskContext) -> TaskFuture<'a, ()>;

    /// Whether the engine may interrupt `execute` by dropping it (on cancel, or at the task's
    /// timeout). True for native tasks; a command task stops its process itself instead.
    fn is_interruptible(&self) -> bool {
        true
    }
}

/// Why a step failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskError {
    pub message: String,
    /// The step stopped because of a soft cancel.
    pub cancelled: bool,
    /// What the step had produced before it failed (a command's stdout), for its revert.
    pub partial_result: String,
}

impl TaskError {
    /// A failure with its reason.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            cancelled: false,
            partial_result: String::new(),
        }
    }

    /// The step ran past its deadline: an execute's `timeout` ("timed out after 5s"), or a
    /// revert's `revert_timeout` ("revert timed out (5s)").
    #[must_use]
    pub fn timed_out(phase: Phase, limit: std::time::Duration) -> Self {
        let limit = shared::duration::format_duration(limit);
        Self::new(match phase {
            Phase::Execute => format!("timed out after {limit}"),
            Phase::Revert => format!("revert timed out ({limit})"),
        })
    }

    /// The step gave up because the job is being cancelled.
    #[must_use]
    pub fn cancelled() -> Self {
        Self {
            message: "interrupted by cancel".into(),
            cancelled: true,
            partial_result: String::new(),
        }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TaskError {}

/// What a step reports besides its end.
#[derive(Debug)]
pub(crate) enum Note {
    Line(Stream, String),
    Spawned(u32),
}

/// How many notes a step may have waiting for the engine. A command step waits for room (its
/// process then waits on its full pipe); a native task's [`TaskContext::log`] cannot wait, so a
/// line that finds no room is dropped and counted ([`TaskContext::dropped_lines`]).
pub(crate) const NOTES_CAPACITY: usize = 256;

/// Everything a task step gets from the engine.
pub struct TaskContext {
    pub(crate) job_id: JobId,
    pub(crate) index: u32,
    pub(crate) name: String,
    pub(crate) phase: Phase,
    pub(crate) attempt: u32,
    pub(crate) params: serde_json::Value,
    pub(crate) result: String,
    pub(crate) execute_outcome: Option<ExecOutcome>,
    /// The results of the tasks this one runs after, directly or not, nearest first: (name,
    /// result as stored).
    pub(crate) inputs: Vec<(String, String)>,
    pub(crate) cancel: watch::Receiver<CancelReason>,
    pub(crate) notes: mpsc::Sender<Note>,
    /// Lines [`TaskContext::log`] dropped because the notes were full.
    pub(crate) dropped: Arc<AtomicU64>,
}

impl TaskContext {
    #[must_use]
    pub fn job_id(&self) -> &JobId {
        &self.job_id
    }

    /// The task's name in the job file.
    #[must_use]
    pub fn task_name(&self) -> &str {
        &self.name
    }

    /// The task's index in the job file.
    #[must_use]
    pub fn index(&self) -> u32 {
        self.index
    }

    #[must_use]
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// 1 for the first execute; retries and resumes count up.
    #[must_use]
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The task's `[task.params]`, decoded into the task's own type.
    pub fn params<P: DeserializeOwned>(&self) -> Result<P, TaskError> {
        serde_json::from_value(self.params.clone())
            .map_err(|err| TaskError::new(format!("bad params: {err}")))
    }

    /// The raw `[task.params]`.
    #[must_use]
    pub fn params_value(&self) -> &serde_json::Value {
        &self.params
    }

    /// In a revert: the execute's result, decoded (`None` when the execute produced none or it
    /// does not decode as `R`).
    #[must_use]
    pub fn result<R: DeserializeOwned>(&self) -> Option<R> {
        if self.result.is_empty() {
            return None;
        }
        serde_json::from_str(&self.result)
            .ok()
            .or_else(|| serde_json::from_value(serde_json::Value::String(self.result.clone())).ok())
    }

    /// The result of task `name`, one this task runs after (directly or not), decoded as
    /// [`TaskContext::result`] decodes; `None` when `name` is not such a task, left no result,
    /// or it does not decode as `T`. A command task gets the same as `RESULT_<NAME>`.
    #[must_use]
    pub fn input<T: DeserializeOwned>(&self, name: &str) -> Option<T> {
        let text = self.input_text(name)?;
        if text.is_empty() {
            return None;
        }
        serde_json::from_str(text)
            .ok()
            .or_else(|| serde_json::from_value(serde_json::Value::String(text.to_owned())).ok())
    }

    /// The result of task `name` as stored (see [`TaskContext::input`]).
    #[must_use]
    pub fn input_text(&self, name: &str) -> Option<&str> {
        self.inputs
            .iter()
            .find(|(input, _)| input == name)
            .map(|(_, result)| result.as_str())
    }

    /// The results of every task this one runs after, directly or not, nearest first.
    #[must_use]
    pub fn inputs(&self) -> &[(String, String)] {
        &self.inputs
    }

    /// In a revert: the execute's result as stored (a command's trimmed stdout, or JSON).
    #[must_use]
    pub fn result_text(&self) -> &str {
        &self.result
    }

    /// In a revert: how the execute ended (`None` if it never ran in this job).
    #[must_use]
    pub fn execute_outcome(&self) -> Option<ExecOutcome> {
        self.execute_outcome
    }

    /// The cheap check, for code that computes without awaiting.
    #[must_use]
    pub fn is_cancelled(&self) -> bool {
        crate::signals::cancel_signalled() || self.cancel.borrow().is_some()
    }

    /// Resolves once the job is being cancelled (never, if it is not).
    pub async fn cancelled(&self) {
        let mut cancel = self.cancel.clone();
        if cancel.wait_for(Option::is_some).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Reports a progress line (shown with the task's name, stored in the job's log). A line
    /// longer than [`MAX_LINE_LEN`] is cut, and ends with how many bytes were cut.
    pub fn log(&self, line: impl Into<String>) {
        self.line(Stream::Stdout, line.into());
    }

    /// Reports a line on the task's error stream (cut as in [`TaskContext::log`]).
    pub fn log_error(&self, line: impl Into<String>) {
        self.line(Stream::Stderr, line.into());
    }

    /// Sends a line without waiting: one that finds the notes full is dropped and counted.
    pub(crate) fn line(&self, stream: Stream, mut line: String) {
        bound_with_marker(&mut line, MAX_LINE_LEN);
        if let Err(mpsc::error::TrySendError::Full(_)) =
            self.notes.try_send(Note::Line(stream, line))
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sends a line, waiting for room (a command step: its process waits on its pipe meanwhile).
    pub(crate) async fn send_line(&self, stream: Stream, mut line: String) {
        bound_with_marker(&mut line, MAX_LINE_LEN);
        let _ = self.notes.send(Note::Line(stream, line)).await;
    }

    /// Reports the step's process group leader; never dropped (it waits for room).
    pub(crate) async fn spawned(&self, pid: u32) {
        let _ = self.notes.send(Note::Spawned(pid)).await;
    }

    /// How many lines [`TaskContext::log`] and [`TaskContext::log_error`] dropped because the
    /// engine had not taken the previous ones yet.
    pub(crate) fn dropped_lines(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(notes: mpsc::Sender<Note>) -> TaskContext {
        TaskContext {
            job_id: JobId::from_random(1),
            index: 0,
            name: "t".into(),
            phase: Phase::Execute,
            attempt: 1,
            params: serde_json::Value::Null,
            result: String::new(),
            execute_outcome: None,
            inputs: vec![
                ("a".into(), "{\"n\":3}".into()),
                ("b".into(), "text".into()),
            ],
            cancel: watch::channel(None).1,
            notes,
            dropped: Arc::default(),
        }
    }

    /// A native task that logs without awaiting cannot block the conductor's one thread: past
    /// the notes' capacity its lines are dropped and counted, never queued without bound.
    #[test]
    fn inputs_decode_by_task_name() {
        #[derive(serde::Deserialize, PartialEq, Debug)]
        struct N {
            n: u32,
        }
        let (notes, _queue) = mpsc::channel(1);
        let ctx = context(notes);
        assert_eq!(ctx.input::<N>("a"), Some(N { n: 3 }));
        assert_eq!(ctx.input::<String>("b").as_deref(), Some("text"));
        assert_eq!(ctx.input::<String>("c"), None);
        assert_eq!(ctx.input_text("b"), Some("text"));
    }

    #[test]
    fn log_past_the_notes_capacity_drops_and_counts() {
        let (notes, mut queue) = mpsc::channel(NOTES_CAPACITY);
        let ctx = context(notes);
        for n in 0..NOTES_CAPACITY + 44 {
            ctx.log(format!("line {n}"));
        }
        assert_eq!(ctx.dropped_lines(), 44);
        let mut kept = 0;
        while queue.try_recv().is_ok() {
            kept += 1;
        }
        assert_eq!(kept, NOTES_CAPACITY);
    }
}
