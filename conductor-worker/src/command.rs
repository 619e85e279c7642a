//! The command task: a task's `run` and `revert` commands, each step a process in its own
//! process group. It is one implementation of [`Task`], run by the same engine as native tasks.
//!
//! The step's output is streamed line by line to the supervisor, its stdout kept (trimmed, at
//! most [`MAX_RESULT_LEN`]) as the step's result. An execute is interrupted by the task timeout or
//! a soft cancel, a revert by the task's `revert_timeout` (never by a cancel): SIGTERM to its
//! group, then SIGKILL after the term grace. When the step's process ends, whatever is left in its
//! group (background children) is killed too, before the process is reaped
//! ([`exit_watch`]), so that the group id cannot have been reused.

use crate::exit_watch;
use crate::limits::TaskLimits;
use crate::reaper::OwnedChildren;
use crate::task::{Task, TaskContext, TaskError, TaskFuture};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use shared::protocol::conductor::{MAX_RESULT_LEN, Phase, Stream};
use shared::spec::CommandSpec;
use shared::state::ExecOutcome;
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::rc::Rc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{ChildStderr, ChildStdout, Command};
use tokio::time::{Instant, sleep_until};

/// A task whose steps are commands.
pub struct CommandTask {
    pub run: CommandSpec,
    pub revert: Option<CommandSpec>,
    pub cwd: Option<String>,
    /// The task's whole environment but the step's own variables ([`crate::task_env`]): the
    /// process starts with this and nothing else of the conductor's.
    pub env: BTreeMap<String, String>,
    pub timeout: Option<Duration>,
    /// Deadline of each revert step.
    pub revert_timeout: Duration,
    pub term_grace: Duration,
    pub children: OwnedChildren,
    /// The job's rlimits and identity for each step's process.
    pub limits: Rc<TaskLimits>,
}

impl Task for CommandTask {
    fn execute<'a>(&'a self, ctx: &'a TaskContext) -> TaskFuture<'a, serde_json::Value> {
        Box::pin(async move {
            let result =
                run_step(self.step(ctx, &self.run), ctx, &self.children, &self.limits).await?;
            Ok(serde_json::Value::String(result))
        })
    }

    fn revert<'a>(&'a self, ctx: &'a TaskContext) -> TaskFuture<'a, ()> {
        Box::pin(async move {
            match &self.revert {
                Some(revert) => run_step(self.step(ctx, revert), ctx, &self.children, &self.limits)
                    .await
                    .map(drop),
                None => Ok(()),
            }
        })
    }

    /// A process is stopped with signals (SIGTERM, then SIGKILL after the grace), not dropped.
    fn is_interruptible(&self) -> bool {
        false
    }
}

impl CommandTask {
    fn step<'a>(&'a self, ctx: &TaskContext, command: &'a CommandSpec) -> StepCommand<'a> {
        let mut env = self.env.clone();
        env.insert("JOB_ID".into(), ctx.job_id().to_string());
        env.insert("TASK_NAME".into(), ctx.task_name().to_owned());
        let (results, omitted) = crate::task_env::result_vars(ctx.inputs());
        if !omitted.is_empty() {
            tracing::warn!(
                task = ctx.index(),
                omitted = omitted.join(","),
                "results left out of the step's environment: too large together"
            );
            env.insert("RESULTS_OMITTED".into(), omitted.join(","));
        }
        env.extend(results);
        if ctx.phase() == Phase::Revert {
            env.insert("TASK_RESULT".into(), ctx.result_text().to_owned());
            let outcome = ctx.execute_outcome().unwrap_or(ExecOutcome::Killed);
            env.insert("TASK_OUTCOME".into(), outcome.as_str().into());
        }
        let (program, args) = command.program_and_args();
        StepCommand {
            program,
            args,
            cwd: self.cwd.as_deref(),
            env,
            timeout: match ctx.phase() {
                Phase::Execute => self.timeout,
                Phase::Revert => Some(self.revert_timeout),
            },
            term_grace: self.term_grace,
        }
    }
}

/// Longest output line sent as one; longer lines are split.
pub use shared::protocol::conductor::MAX_LINE_LEN;
/// After the step's process ended, how long to wait for the rest of its output.
pub const OUTPUT_DRAIN: Duration = Duration::from_millis(200);

/// What to run for one step.
struct StepCommand<'a> {
    pub program: &'a str,
    pub args: Vec<&'a str>,
    pub cwd: Option<&'a str>,
    pub env: BTreeMap<String, String>,
    /// The step's deadline, if any (execute: the task's `timeout`; revert: its
    /// `revert_timeout`).
    pub timeout: Option<Duration>,
    /// From SIGTERM to SIGKILL of the group when interrupted.
    pub term_grace: Duration,
}

/// Why a step was interrupted.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Interrupt {
    TimedOut(Duration),
    Cancelled,
}

/// Runs the step to its end; its trimmed stdout on success. Only an execute listens to the
/// cancel; a revert runs out, or up to its timeout.
async fn run_step(
    command: StepCommand<'_>,
    ctx: &TaskContext,
    children: &OwnedChildren,
    limits: &TaskLimits,
) -> Result<String, TaskError> {
    let (task, phase) = (ctx.index(), ctx.phase());
    let mut process = match build_process(&command, limits) {
        Ok(process) => process,
        Err(problem) => {
            return not_started(format!("cannot start {:?}: {problem}", command.program));
        }
    };
    let before = limits.counters();
    let mut child = match process.spawn() {
        Ok(child) => child,
        Err(err) => {
            return not_started(format!("cannot start {:?}: {err}", command.program));
        }
    };
    let Some(pid) = child.id() else {
        return not_started("the process vanished at spawn".into());
    };
    let _owned = children.own(pid);
    let pgid = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
    tracing::info!(task, phase = phase.as_str(), pid, "step started");
    ctx.spawned(pid).await;

    let mut output = StepOutput {
        stdout: LineReader::new(child.stdout.take()),
        stderr: LineReader::new(child.stderr.take()),
        result: Vec::new(),
        pending: None,
    };
    let interrupt = watch_step(&command, ctx, pgid, &mut output).await;
    // Nothing of the step outlives it: its background children go with it. The leader has
    // exited but is not reaped yet, so the group id is still its own.
    let _ = killpg(pgid, Signal::SIGKILL);
    let status = child.wait().await;
    output.drain(ctx).await;
    let exit_status = status.as_ref().ok().copied();
    outcome(status, interrupt, phase, &output.result).map_err(|mut error| {
        if !error.cancelled {
            if let Some(limit) = limits.explain(before, exit_status) {
                error.message = format!("{limit} ({})", error.message);
            }
        }
        error
    })
}

/// The step's process: its own process group, its own environment only, output piped (the
/// pipes' conductor ends are close-on-exec, as every descriptor the conductor opens), the
/// job's limits applied.
fn build_process(command: &StepCommand<'_>, limits: &TaskLimits) -> Result<Command, String> {
    let mut process = Command::new(command.program);
    process
        .args(&command.args)
        .env_clear()
        .envs(&command.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    limits.apply(&mut process, command.cwd)?;
    Ok(process)
}

/// Forwards the step's output until its process (the group leader `pgid`) exits, without
/// reaping it; stops the group at the step's deadline or (an execute) at a cancel: SIGTERM,
/// then SIGKILL after the term grace. Returns why the step was interrupted, if it was.
async fn watch_step(
    command: &StepCommand<'_>,
    ctx: &TaskContext,
    pgid: Pid,
    output: &mut StepOutput,
) -> Option<Interrupt> {
    let (task, phase) = (ctx.index(), ctx.phase());
    let mut cancel = ctx.cancel.clone();
    let leader_exited = exit_watch::exited(pgid);
    tokio::pin!(leader_exited);
    let far = Instant::now() + Duration::from_secs(86400 * 365);
    let timeout_at = command.timeout.map_or(far, |t| Instant::now() + t);
    let mut interrupt: Option<Interrupt> = None;
    let mut kill_at = far;
    let listens_to_cancel = phase == Phase::Execute;
    if listens_to_cancel && cancel.borrow().is_some() {
        interrupt = Some(Interrupt::Cancelled);
        kill_at = terminate(pgid, command.term_grace);
    }
    loop {
        tokio::select! {
            () = output.forward_next(ctx) => {}
            () = &mut leader_exited => return interrupt,
            changed = cancel.changed(), if listens_to_cancel && interrupt.is_none() => {
                if changed.is_ok() && cancel.borrow().is_some() {
                    interrupt = Some(Interrupt::Cancelled);
                    kill_at = terminate(pgid, command.term_grace);
                }
            }
            () = sleep_until(timeout_at), if interrupt.is_none() => {
                interrupt = command.timeout.map(Interrupt::TimedOut);
                kill_at = terminate(pgid, command.term_grace);
            }
            () = sleep_until(kill_at) => {
                tracing::warn!(task, phase = phase.as_str(), pgid = pgid.as_raw(), grace_ms = millis(command.term_grace), "term grace expired, sending SIGKILL");
                let _ = killpg(pgid, Signal::SIGKILL);
                kill_at = far;
            }
        }
    }
}

/// A step's two output pipes, and its stdout kept as its result.
struct StepOutput {
    stdout: LineReader<ChildStdout>,
    stderr: LineReader<ChildStderr>,
    result: Vec<u8>,
    /// A line read but not yet handed to the engine.
    pending: Option<(Stream, String)>,
}

impl StepOutput {
    /// Forwards the next line of either pipe (cancel-safe: a line read is forwarded before
    /// the next read); pends once both are closed. Waits while the engine's notes are full, so
    /// that a step printing faster than its output is taken waits on its pipe.
    async fn forward_next(&mut self, ctx: &TaskContext) {
        if let Some((stream, line)) = self.pending.clone() {
            ctx.send_line(stream, line).await;
            self.pending = None;
            return;
        }
        let next = tokio::select! {
            line = self.stdout.next_line() => line.map(|line| {
                keep_result(&mut self.result, &line);
                (Stream::Stdout, line)
            }),
            line = self.stderr.next_line() => line.map(|line| (Stream::Stderr, line)),
        };
        if let Some((stream, line)) = next {
            // Kept until sent: a `select!` that drops this future mid-send loses nothing.
            self.pending = Some((stream, line.clone()));
            ctx.send_line(stream, line).await;
            self.pending = None;
        }
    }

    /// After the process ended: forwards what is left, for at most [`OUTPUT_DRAIN`] (a
    /// background child that escaped the group may hold a pipe open).
    async fn drain(&mut self, ctx: &TaskContext) {
        let drain_until = Instant::now() + OUTPUT_DRAIN;
        while !(self.stdout.is_done() && self.stderr.is_done() && self.pending.is_none()) {
            tokio::select! {
                () = self.forward_next(ctx) => {}
                () = sleep_until(drain_until) => break,
            }
        }
    }
}

fn outcome(
    status: std::io::Result<ExitStatus>,
    interrupt: Option<Interrupt>,
    phase: Phase,
    result: &[u8],
) -> Result<String, TaskError> {
    let partial_result = trimmed_result(result);
    let (message, cancelled) = match (interrupt, status) {
        (Some(Interrupt::Cancelled), _) => ("interrupted by cancel".to_owned(), true),
        (Some(Interrupt::TimedOut(limit)), _) => {
            (TaskError::timed_out(phase, limit).message, false)
        }
        (None, Err(err)) => (format!("cannot wait for the process: {err}"), false),
        (None, Ok(status)) if status.success() => return Ok(partial_result),
        (None, Ok(status)) => (describe_status(status), false),
    };
    Err(TaskError {
        message,
        cancelled,
        partial_result,
    })
}

/// The outcome of a step that could not start.
fn not_started(reason: String) -> Result<String, TaskError> {
    Err(TaskError::new(reason))
}

/// "exited with status 3" or "killed by signal SIGKILL".
#[must_use]
pub fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(signal) => format!("killed by signal {}", signal.as_str()),
            Err(_) => format!("killed by signal {signal}"),
        },
        (None, None) => format!("ended with {status}"),
    }
}

/// SIGTERM to the group; returns when to SIGKILL it.
fn terminate(pgid: Pid, grace: Duration) -> Instant {
    tracing::info!(
        pgid = pgid.as_raw(),
        grace_ms = millis(grace),
        "sending SIGTERM to the step"
    );
    let _ = killpg(pgid, Signal::SIGTERM);
    Instant::now() + grace
}

/// A duration in whole milliseconds, for log fields.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn keep_result(result: &mut Vec<u8>, line: &str) {
    // Keep a little more than the limit so trimming still sees the real end.
    if result.len() < MAX_RESULT_LEN + MAX_LINE_LEN {
        result.extend_from_slice(line.as_bytes());
        result.push(b'\n');
    }
}

fn trimmed_result(result: &[u8]) -> String {
    let text = String::from_utf8_lossy(result);
    let text = text.trim();
    let mut end = text.len().min(MAX_RESULT_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Reads a pipe line by line, cancel-safely (partial lines stay in the buffer).
struct LineReader<R> {
    reader: Option<BufReader<R>>,
    buffer: Vec<u8>,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    fn new(reader: Option<R>) -> Self {
        Self {
            reader: reader.map(BufReader::new),
            buffer: Vec::new(),
        }
    }

    fn is_done(&self) -> bool {
        self.reader.is_none()
    }

    /// The next line; pends forever once the pipe is closed (so `select!` ignores it).
    async fn next_line(&mut self) -> Option<String> {
        loop {
            if let Some(line) = take_line(&mut self.buffer, false) {
                return Some(line);
            }
            let Some(reader) = self.reader.as_mut() else {
                return std::future::pending().await;
            };
            let available = reader.fill_buf().await.unwrap_or(&[]);
            if available.is_empty() {
                self.reader = None;
                return take_line(&mut self.buffer, true);
            }
            let take = available
                .iter()
                .position(|&b| b == b'\n')
                .map_or(available.len(), |i| i + 1);
            self.buffer.extend_from_slice(&available[..take]);
            reader.consume(take);
        }
    }
}

/// Cuts the first whole line (or an over-long piece, or at the end the rest) off `buffer`.
fn take_line(buffer: &mut Vec<u8>, at_end: bool) -> Option<String> {
    let cut = match buffer.iter().position(|&b| b == b'\n') {
        Some(i) => i + 1,
        None if buffer.len() >= MAX_LINE_LEN => MAX_LINE_LEN,
        None if at_end && !buffer.is_empty() => buffer.len(),
        None => return None,
    };
    let rest = buffer.split_off(cut);
    let mut line = std::mem::replace(buffer, rest);
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    Some(String::from_utf8_lossy(&line).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::ids::JobId;
    use tokio::sync::{mpsc, watch};

    /// A command task with these steps, and a context for `phase`; the notes go nowhere.
    fn task_and_context(run: &str, revert: &str, phase: Phase) -> (CommandTask, TaskContext) {
        let limits = TaskLimits::new(
            &shared::limits::Limits::default(),
            crate::limits::Own::look_up(),
        )
        .expect("no limits");
        let task = CommandTask {
            run: CommandSpec::Shell(run.into()),
            revert: Some(CommandSpec::Shell(revert.into())),
            cwd: None,
            env: BTreeMap::new(),
            timeout: None,
            revert_timeout: Duration::from_millis(300),
            term_grace: Duration::from_millis(200),
            children: OwnedChildren::default(),
            limits: Rc::new(limits),
        };
        let (notes, mut sink) = mpsc::channel(crate::task::NOTES_CAPACITY);
        tokio::spawn(async move { while sink.recv().await.is_some() {} });
        let ctx = TaskContext {
            job_id: JobId::from_random(1),
            index: 0,
            name: "t".into(),
            phase,
            attempt: 1,
            params: serde_json::Value::Null,
            result: String::new(),
            execute_outcome: Some(ExecOutcome::Failure),
            inputs: Vec::new(),
            cancel: watch::channel(None).1,
            notes,
            dropped: std::sync::Arc::default(),
        };
        (task, ctx)
    }

    /// Whether `pid` is gone (or a zombie nobody has reaped yet).
    fn is_dead(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        }
    }

    #[tokio::test]
    async fn a_step_s_background_children_die_with_it() {
        let (task, ctx) = task_and_context("sleep 30 & echo $!", "true", Phase::Execute);
        let started = std::time::Instant::now();
        let result = task.execute(&ctx).await.expect("the step succeeds");
        let pid = result.as_str().expect("a pid").to_owned();
        assert!(started.elapsed() < Duration::from_secs(10));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !is_dead(&pid) {
            assert!(std::time::Instant::now() < deadline, "{pid} still alive");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_revert_past_its_timeout_is_stopped_and_fails() {
        // It ignores SIGTERM: only the SIGKILL after the term grace ends it.
        let (task, ctx) = task_and_context("true", "trap '' TERM; sleep 30", Phase::Revert);
        let started = std::time::Instant::now();
        let error = task.revert(&ctx).await.expect_err("timed out");
        assert_eq!(error.message, "revert timed out (300ms)");
        assert!(!error.cancelled);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(500), "{took:?}");
        assert!(took < Duration::from_secs(10), "{took:?}");
    }

    #[tokio::test]
    async fn line_reader_splits_lines_and_keeps_the_last_partial_one() {
        let input: &[u8] = b"one\ntwo\n\nthree";
        let mut reader = LineReader::new(Some(input));
        let mut lines = Vec::new();
        while !reader.is_done() {
            if let Some(line) = reader.next_line().await {
                lines.push(line);
            }
        }
        while let Some(line) = take_line(&mut reader.buffer, true) {
            lines.push(line);
        }
        assert_eq!(lines, ["one", "two", "", "three"]);
    }

    #[test]
    fn result_is_trimmed_and_bounded() {
        assert_eq!(trimmed_result(b"  hello \n\n"), "hello");
        let big = "é".repeat(MAX_RESULT_LEN);
        assert!(trimmed_result(big.as_bytes()).len() <= MAX_RESULT_LEN);
    }
}
