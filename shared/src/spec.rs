//! The job file: TOML, parsed and validated before anything runs.
//!
//! Every error names the file, line and column ([`SpecError`]). Validation is complete here: a
//! [`JobSpec`] that exists is one the conductor can run.

use crate::duration::parse_duration;
use crate::limits::{Limits, parse_cpu, parse_size};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::time::Duration;
use toml::Spanned;

/// Default time from soft cancel to SIGKILL of the whole job.
pub const DEFAULT_CANCEL_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time, during a cancel, from SIGTERM to SIGKILL of the running task's process group.
pub const DEFAULT_TERM_GRACE: Duration = Duration::from_secs(5);
/// Default time a conductor may stay silent before it is unresponsive.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest task name.
pub const MAX_TASK_NAME_LEN: usize = 64;
/// Default `max_output`: how much of one step's output is kept (head and tail).
pub const DEFAULT_MAX_OUTPUT: u64 = 16 << 20;
/// Smallest `max_output` (room for a head, a tail and the line saying what was dropped).
pub const MIN_MAX_OUTPUT: u64 = 1024;
/// Longest name in `inherit_env`.
pub const MAX_ENV_NAME_LEN: usize = 256;
/// Longest duration a job file may set (about 100 years): far enough for any real deadline,
/// and near enough that adding it to the clock never overflows.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

mod check;
mod flow;
pub mod graph;
pub mod host_loss;
mod operators;

pub use check::{MAX_PLAN_FRAME_LEN, SPEC_FRAME_ROOM};
pub use flow::{Backoff, DEFAULT_MAX_PARALLEL, Flow, MAX_PARALLEL, OnFailure};
pub use graph::{Graph, result_var};
pub use host_loss::OnHostLoss;
pub use operators::{
    DEFAULT_REVERT_RETRY_DELAY, Hooks, MAX_HOOK_LEN, MAX_REVERT_RETRIES, MAX_REVERT_RETRY_DELAY,
    hook_problem,
};

/// Asks a worker program (named as in the job file) which native kinds it provides.
pub type ListKinds<'a> = dyn Fn(&str) -> Result<Vec<String>, String> + 'a;

/// A validated job.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub name: String,
    /// Whole-job deadline; reaching it starts a soft cancel.
    pub timeout: Option<Duration>,
    /// From soft cancel to SIGKILL of the whole job.
    pub cancel_timeout: Duration,
    /// During a cancel, from SIGTERM to SIGKILL of the running task's process group.
    pub term_grace: Duration,
    /// Environment for every task.
    pub env: BTreeMap<String, String>,
    /// Variables of the conductor's environment that tasks get besides the default allow-list
    /// (ARCHITECTURE.md, Security). Specs stored before it existed read as empty.
    #[serde(default)]
    pub inherit_env: Vec<String>,
    /// The default `max_output` of the job's tasks; `None`: [`DEFAULT_MAX_OUTPUT`].
    #[serde(default)]
    pub max_output: Option<u64>,
    /// A custom conductor program (built on the conductor-worker library) that provides the
    /// native task kinds; `None`: the default conductor (command tasks only). A bare name is
    /// looked up next to the supervisor binary; a path is relative to the job file.
    pub worker: Option<String>,
    /// The job's resource limits and identity.
    pub limits: Limits,
    /// A conductor silent for this long is unresponsive.
    pub heartbeat_timeout: Duration,
    /// Hard-kill an unresponsive conductor (with the usual revert accounting).
    pub kill_unresponsive: bool,
    /// The tasks: in file order for a linear job; for a graph in a topological order (file
    /// order where it already is one), so that every task comes after the tasks it runs after.
    pub tasks: Vec<TaskSpec>,
    /// `[hooks]`: alert commands the daemon runs (never the conductor). Specs stored before
    /// this field existed read as no hooks.
    #[serde(default)]
    pub hooks: Hooks,
    /// `flow`: a list (each task after the one before it) or a graph (each after its `after`).
    /// Specs stored before flows existed read as linear.
    #[serde(default)]
    pub flow: Flow,
    /// At most this many steps (executes and reverts) run at once.
    #[serde(default = "flow::default_max_parallel")]
    pub max_parallel: u32,
    /// What running tasks do when one fails for good: interrupted, or let finish.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// What the job board does with the job when its host is lost. Not in the spec's
    /// encoding: it travels beside it ([`host_loss`]).
    #[serde(skip)]
    pub on_host_loss: OnHostLoss,
}

/// A validated task.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub name: String,
    /// What the task runs: commands, or a native kind of the job's worker.
    pub body: TaskBody,
    /// Execute deadline; exceeding it is a failure.
    pub timeout: Option<Duration>,
    /// Deadline of each revert step; exceeding it is a revert failure. `None`: the job's
    /// `cancel_timeout` (see [`JobSpec::revert_timeout`]); specs stored before this field
    /// existed read as `None` too.
    #[serde(default)]
    pub revert_timeout: Option<Duration>,
    /// Extra attempts of a failed revert before the task is `revert_failure` (0 for specs
    /// stored before this field existed).
    #[serde(default)]
    pub revert_retries: u32,
    /// The pause before each extra attempt of the revert.
    #[serde(default)]
    pub revert_retry_delay: Duration,
    /// Extra attempts of execute after a failure.
    pub retries: u32,
    pub cwd: Option<String>,
    pub env: BTreeMap<String, String>,
    /// How much of one step's output is kept, in bytes (head and tail; the rest is dropped and
    /// counted); `None`: the job's. See [`JobSpec::max_output`].
    #[serde(default)]
    pub max_output: Option<u64>,
    /// In a graph: the indices (in [`JobSpec::tasks`]) of the tasks that must succeed before
    /// this one starts, each lower than this task's own. Empty in a linear job.
    #[serde(default)]
    pub after: Vec<u32>,
    /// The pause before the first retry of a failed execute.
    #[serde(default)]
    pub retry_delay: Duration,
    /// Each later retry waits this many times longer than the one before.
    #[serde(default)]
    pub retry_backoff: Backoff,
}

/// What a task runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskBody {
    /// `run` and `revert` commands; `revert: None` means nothing to compensate.
    Command {
        run: CommandSpec,
        revert: Option<CommandSpec>,
    },
    /// A native task kind registered in the job's worker, with its `[task.params]` as JSON (the
    /// wire codec cannot carry self-describing values).
    Native { kind: String, params_json: String },
}

impl TaskBody {
    /// Whether the task has a revert to run (a native kind always has one).
    #[must_use]
    pub const fn has_revert(&self) -> bool {
        match self {
            Self::Command { revert, .. } => revert.is_some(),
            Self::Native { .. } => true,
        }
    }
}

/// A command: a string runs under `/bin/sh -c`, an array is argv as is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandSpec {
    Shell(String),
    Argv(Vec<String>),
}

impl CommandSpec {
    /// The program to exec and its arguments.
    #[must_use]
    pub fn program_and_args(&self) -> (&str, Vec<&str>) {
        match self {
            Self::Shell(script) => ("/bin/sh", vec!["-c", script.as_str()]),
            Self::Argv(argv) => {
                let (first, rest) = argv
                    .split_first()
                    .map_or(("", &[][..]), |(f, r)| (f.as_str(), r));
                (first, rest.iter().map(String::as_str).collect())
            }
        }
    }
}

/// Environment values may be secrets: `Debug` shows the keys only.
struct EnvKeys<'a>(&'a BTreeMap<String, String>);

impl fmt::Debug for EnvKeys<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl fmt::Debug for JobSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobSpec")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .field("cancel_timeout", &self.cancel_timeout)
            .field("term_grace", &self.term_grace)
            .field("env_keys", &EnvKeys(&self.env))
            .field("inherit_env", &self.inherit_env)
            .field("max_output", &self.max_output)
            .field("worker", &self.worker)
            .field("limits", &self.limits)
            .field("heartbeat_timeout", &self.heartbeat_timeout)
            .field("kill_unresponsive", &self.kill_unresponsive)
            .field("tasks", &self.tasks)
            .field("hooks", &self.hooks)
            .field("flow", &self.flow)
            .field("max_parallel", &self.max_parallel)
            .field("on_failure", &self.on_failure)
            .field("on_host_loss", &self.on_host_loss)
            .finish()
    }
}

impl fmt::Debug for TaskSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskSpec")
            .field("name", &self.name)
            .field("body", &self.body)
            .field("timeout", &self.timeout)
            .field("revert_timeout", &self.revert_timeout)
            .field("revert_retries", &self.revert_retries)
            .field("revert_retry_delay", &self.revert_retry_delay)
            .field("retries", &self.retries)
            .field("cwd", &self.cwd)
            .field("env_keys", &EnvKeys(&self.env))
            .field("max_output", &self.max_output)
            .field("after", &self.after)
            .field("retry_delay", &self.retry_delay)
            .field("retry_backoff", &self.retry_backoff)
            .finish()
    }
}

/// A job file error, with its place.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{origin}:{line}:{column}: {message}")]
pub struct SpecError {
    /// The file name (or `<stdin>`).
    pub origin: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    name: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    cancel_timeout: Option<Spanned<String>>,
    term_grace: Option<Spanned<String>>,
    env: Option<BTreeMap<String, String>>,
    inherit_env: Option<Vec<Spanned<String>>>,
    max_output: Option<Spanned<toml::Value>>,
    worker: Option<Spanned<String>>,
    limits: Option<RawLimits>,
    heartbeat_timeout: Option<Spanned<String>>,
    kill_unresponsive: Option<bool>,
    task: Option<Spanned<Vec<Spanned<RawTask>>>>,
    hooks: Option<operators::RawHooks>,
    flow: Option<Spanned<String>>,
    max_parallel: Option<Spanned<i64>>,
    on_failure: Option<Spanned<String>>,
    on_host_loss: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory: Option<Spanned<toml::Value>>,
    pids: Option<Spanned<i64>>,
    cpu: Option<Spanned<toml::Value>>,
    nofile: Option<Spanned<i64>>,
    core: Option<Spanned<toml::Value>>,
    cpu_time: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    name: Spanned<String>,
    run: Option<Spanned<toml::Value>>,
    revert: Option<Spanned<toml::Value>>,
    kind: Option<Spanned<String>>,
    params: Option<Spanned<toml::Table>>,
    timeout: Option<Spanned<String>>,
    revert_timeout: Option<Spanned<String>>,
    revert_retries: Option<Spanned<u32>>,
    revert_retry_delay: Option<Spanned<String>>,
    retries: Option<u32>,
    cwd: Option<Spanned<String>>,
    env: Option<BTreeMap<String, String>>,
    max_output: Option<Spanned<toml::Value>>,
    after: Option<Spanned<Vec<Spanned<String>>>>,
    retry_delay: Option<Spanned<String>>,
    retry_backoff: Option<Spanned<toml::Value>>,
}

impl JobSpec {
    /// Makes every task's relative `cwd` absolute, against `dir` (the job file's directory), so
    /// a job runs the same whether the daemon or a foreground `run` starts it.
    pub fn resolve_cwds(&mut self, dir: &std::path::Path) {
        for task in &mut self.tasks {
            if let Some(cwd) = &mut task.cwd {
                if !std::path::Path::new(cwd.as_str()).is_absolute() {
                    *cwd = dir.join(&*cwd).display().to_string();
                }
            }
        }
    }

    /// How much of one step's output of `task` is kept: its `max_output`, else the job's, else
    /// [`DEFAULT_MAX_OUTPUT`].
    #[must_use]
    pub fn max_output(&self, task: &TaskSpec) -> u64 {
        task.max_output
            .or(self.max_output)
            .unwrap_or(DEFAULT_MAX_OUTPUT)
    }

    /// How long each revert step of `task` may run: its `revert_timeout`, else the job's
    /// `cancel_timeout`.
    #[must_use]
    pub fn revert_timeout(&self, task: &TaskSpec) -> Duration {
        task.revert_timeout.unwrap_or(self.cancel_timeout)
    }

    /// Parses and validates a job file. `origin` names it in errors; `default_name` is the job's
    /// name when the file sets none (the file name without `.toml`). Native kinds are not
    /// checked against the worker: see [`JobSpec::parse_checked`].
    pub fn parse(source: &str, origin: &str, default_name: &str) -> Result<Self, SpecError> {
        Self::parse_inner(source, origin, default_name, None)
    }

    /// [`JobSpec::parse`], and every native `kind` is checked against the kinds that
    /// `list_kinds(worker)` says the worker provides (an error there is reported at `worker`).
    pub fn parse_checked(
        source: &str,
        origin: &str,
        default_name: &str,
        list_kinds: &ListKinds<'_>,
    ) -> Result<Self, SpecError> {
        Self::parse_inner(source, origin, default_name, Some(list_kinds))
    }

    fn parse_inner(
        source: &str,
        origin: &str,
        default_name: &str,
        list_kinds: Option<&ListKinds<'_>>,
    ) -> Result<Self, SpecError> {
        let at = |span: Range<usize>, message: String| locate(source, origin, span.start, message);
        let raw: RawJob = toml::from_str(source).map_err(|err| {
            let start = err.span().map_or(0, |s| s.start);
            locate(source, origin, start, err.message().trim_end().to_owned())
        })?;

        let name = parse_job_name(raw.name, default_name, &at)?;
        let timeout = raw
            .timeout
            .map(|d| positive_duration(d, "timeout", &at))
            .transpose()?;
        let cancel_timeout = raw
            .cancel_timeout
            .map(|d| positive_duration(d, "cancel_timeout", &at))
            .transpose()?
            .unwrap_or(DEFAULT_CANCEL_TIMEOUT);
        let term_grace = parse_term_grace(raw.term_grace, cancel_timeout, &at)?;

        let worker = match raw.worker {
            Some(worker) if worker.get_ref().trim().is_empty() => {
                return Err(at(worker.span(), "`worker` must not be empty".into()));
            }
            other => other,
        };
        let flow = flow::parse_flow(raw.flow, &at)?;
        let max_parallel = flow::parse_max_parallel(raw.max_parallel, &at)?;
        let on_failure = flow::parse_on_failure(raw.on_failure, &at)?;
        let on_host_loss = host_loss::parse_on_host_loss(raw.on_host_loss, &at)?;
        let tasks = parse_tasks(raw.task, worker.as_ref(), list_kinds, flow, &at)?;
        if let Some(raw_limits) = &raw.limits {
            check_identity_limits(raw_limits, &tasks, &at)?;
        }
        let limits = raw
            .limits
            .map(|l| parse_limits(l, &at))
            .transpose()?
            .unwrap_or_default();
        let inherit_env = parse_inherit_env(raw.inherit_env.unwrap_or_default(), &at)?;
        let max_output = raw
            .max_output
            .map(|v| parse_max_output(v, &at))
            .transpose()?;
        let heartbeat_timeout = raw
            .heartbeat_timeout
            .map(|d| positive_duration(d, "heartbeat_timeout", &at))
            .transpose()?
            .unwrap_or(DEFAULT_HEARTBEAT_TIMEOUT);
        Ok(Self {
            name,
            timeout,
            cancel_timeout,
            term_grace,
            env: raw.env.unwrap_or_default(),
            inherit_env,
            max_output,
            worker: worker.map(Spanned::into_inner),
            limits,
            heartbeat_timeout,
            kill_unresponsive: raw.kill_unresponsive.unwrap_or(false),
            tasks,
            hooks: raw
                .hooks
                .map(|h| parse_hooks(h, &at))
                .transpose()?
                .unwrap_or_default(),
            flow,
            max_parallel,
            on_failure,
            on_host_loss,
        })
    }
}

/// The job's `name`, or `default_name` (the file's stem) when it sets none.
fn parse_job_name(
    raw: Option<Spanned<String>>,
    default_name: &str,
    at: &impl Fn(Range<usize>, String) -> SpecError,
) -> Result<String, SpecError> {
    match raw {
        Some(name) => {
            let span = name.span();
            let name = name.into_inner();
            if name.trim().is_empty() {
                return Err(at(span, "job name must not be empty".into()));
            }
            Ok(name)
        }
        None => Ok(default_name.to_owned()),
    }
}

/// `term_grace`: shorter than `cancel_timeout`, or a default that leaves the conductor time.
fn parse_term_grace(
    raw: Option<Spanned<String>>,
    cancel_timeout: Duration,
    at: &impl Fn(Range<usize>, String) -> SpecError,
) -> Result<Duration, SpecError> {
    Ok(match raw {
        Some(d) => {
            let span = d.span();
            let grace = positive_duration(d, "term_grace", at)?;
            if grace >= cancel_timeout {
                return Err(at(
                    span,
                    format!(
                        "term_grace ({}) must be shorter than cancel_timeout ({})",
                        crate::duration::format_duration(grace),
                        crate::duration::format_duration(cancel_timeout)
                    ),
                ));
            }
            grace
        }
        None if DEFAULT_TERM_GRACE < cancel_timeout => DEFAULT_TERM_GRACE,
        // A short cancel_timeout with no term_grace: leave the conductor half of it.
        None => cancel_timeout / 2,
    })
}

/// The `[[task]]` tables: at least one, unique names, native kinds only with a `worker` that
/// provides them (asked with `list_kinds` when given).
fn parse_tasks(
    raw: Option<Spanned<Vec<Spanned<RawTask>>>>,
    worker: Option<&Spanned<String>>,
    list_kinds: Option<&ListKinds<'_>>,
    flow: Flow,
    at: &impl Fn(Range<usize>, String) -> SpecError,
) -> Result<Vec<TaskSpec>, SpecError> {
    let no_tasks = "the job has no tasks: add at least one [[task]]";
    let Some(raw_tasks) = raw else {
        return Err(at(0..0, no_tasks.into()));
    };
    let tasks_span = raw_tasks.span();
    let raw_tasks = raw_tasks.into_inner();
    if raw_tasks.is_empty() {
        return Err(at(tasks_span, no_tasks.into()));
    }
    let mut seen: HashMap<String, ()> = HashMap::new();
    let mut tasks = Vec::with_capacity(raw_tasks.len());
    let mut kinds = Vec::new();
    let mut places = Vec::with_capacity(raw_tasks.len());
    for raw_task in raw_tasks {
        let task_span = raw_task.span();
        let (task, name_span, kind_span, after) = parse_task(raw_task.into_inner(), at)?;
        places.push(flow::TaskPlace {
            name: name_span.clone(),
            after,
        });
        if seen.insert(task.name.clone(), ()).is_some() {
            return Err(at(
                name_span,
                format!("duplicate task name {:?}", task.name),
            ));
        }
        if let TaskBody::Native { kind, .. } = &task.body {
            if worker.is_none() {
                return Err(at(
                    task_span,
                    format!(
                        "task {:?} has a native `kind` but the job names no `worker` program",
                        task.name
                    ),
                ));
            }
            kinds.push((kind.clone(), kind_span));
        }
        tasks.push(task);
    }
    if let (Some(list_kinds), Some(worker), false) = (list_kinds, worker, kinds.is_empty()) {
        let known = list_kinds(worker.get_ref()).map_err(|problem| at(worker.span(), problem))?;
        if let Some((kind, span)) = kinds.iter().find(|(kind, _)| !known.contains(kind)) {
            return Err(at(
                span.clone(),
                format!(
                    "unknown kind {kind:?}: worker {:?} provides {}",
                    worker.get_ref(),
                    known.join(", ")
                ),
            ));
        }
    }
    flow::resolve(flow, tasks, places, at)
}

/// The `[limits]` keys that act on each task process (rlimits and identity): a native task runs
/// inside the conductor, which runs as the supervisor's user, so none of them could apply to
/// it; and `group` alone would keep the supervisor's user (root).
fn check_identity_limits(
    raw: &RawLimits,
    tasks: &[TaskSpec],
    at: &impl Fn(Range<usize>, String) -> SpecError,
) -> Result<(), SpecError> {
    if let (Some(group), None) = (&raw.group, &raw.user) {
        return Err(at(
            group.span(),
            "`group` needs `user`: alone it would leave the tasks running as the supervisor's \
             user (root) with another group; set `user` (its own group is the default)"
                .into(),
        ));
    }
    let per_process = [
        ("user", raw.user.as_ref().map(Spanned::span)),
        ("group", raw.group.as_ref().map(Spanned::span)),
        ("nofile", raw.nofile.as_ref().map(Spanned::span)),
        ("core", raw.core.as_ref().map(Spanned::span)),
        ("cpu_time", raw.cpu_time.as_ref().map(Spanned::span)),
    ];
    let native = tasks.iter().find_map(|task| match &task.body {
        TaskBody::Native { kind, .. } => Some((task.name.as_str(), kind.as_str())),
        TaskBody::Command { .. } => None,
    });
    if let Some((name, kind)) = native {
        if let Some((field, Some(span))) = per_process.into_iter().find(|(_, s)| s.is_some()) {
            return Err(at(span, native_limit_problem(field, name, kind)));
        }
    }
    Ok(())
}

/// Why a per-process limit cannot go with a native task.
fn native_limit_problem(field: &str, task: &str, kind: &str) -> String {
    format!(
        "`{field}` cannot apply to native task {task:?} (kind {kind:?}): native tasks run inside \
         the conductor, which runs as the supervisor's user; remove `{field}` or make the task a \
         command"
    )
}

/// Why a name cannot be in `inherit_env`, or `None`: a variable name as the shell writes them.
#[must_use]
pub fn env_name_problem(name: &str) -> Option<String> {
    let first_ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    let ok = first_ok
        && name.len() <= MAX_ENV_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    (!ok).then(|| {
        format!(
            "`inherit_env`: {name:?} is not a variable name (letters, digits and '_', not \
             starting with a digit, at most {MAX_ENV_NAME_LEN} characters)"
        )
    })
}

/// The `inherit_env` names, each a variable name.
fn parse_inherit_env(
    names: Vec<Spanned<String>>,
    at: &impl Fn(Range<usize>, String) -> SpecError,
) -> Result<Vec<String>, SpecError> {
    names
        .into_iter()
        .map(|name| {
            let span = name.span();
            let name = name.into_inner();
            env_name_problem(&name).map_or(Ok(name), |problem| Err(at(span, problem)))
        })
        .collect()
}

/// Why a `max_output` is not allowed, or `None`.
fn max_output_problem(bytes: u64) -> Option<String> {
    (bytes < MIN_MAX_OUTPUT)
        .then(|| format!("`max_output` must be at least {MIN_MAX_OUTPUT} bytes"))
}

fn parse_max_output(
    value: Spanned<toml::Value>,
    at: &impl Fn(Range<usize>, String) -> SpecError,
) -> Result<u64, SpecError> {
    let span = value.span();
    let bytes = match value.into_inner() {
        toml::Value::Integer(n) => {
            u64::try_from(n).map_err(|_| "`max_output` must not be negative".to_owned())
        }
        toml::Value::String(text) => parse_size(&text).map_err(|p| format!("`max_output`: {p}")),
        _ => Err("`max_output` must be a size like \"16M\" or a number of bytes".to_owned()),
    }
    .map_err(|problem| at(span.clone(), problem))?;
    max_output_problem(bytes).map_or(Ok(bytes), |problem| Err(at(span, problem)))
}

fn parse_limits(
    raw: RawLimits,
    at: &impl Fn(Range<usize>, String) -> SpecError,
) -> Result<Limits, SpecError> {
    let size = |value: Spanned<toml::Value>, field: &str| {
        let span = value.span();
        match value.into_inner() {
            toml::Value::Integer(n) if n >= 0 => {
                u64::try_from(n).map_err(|_| at(span.clone(), format!("`{field}` is too large")))
            }
            toml::Value::String(text) => parse_size(&text)
                .map_err(|problem| at(span.clone(), format!("`{field}`: {problem}"))),
            _ => Err(at(
                span,
                format!("`{field}` must be a size like \"512M\" or a number of bytes"),
            )),
        }
    };
    let count = |value: Spanned<i64>, field: &str| {
        let span = value.span();
        u64::try_from(value.into_inner())
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| at(span, format!("`{field}` must be a positive number")))
    };
    let name = |value: Spanned<String>, field: &str| {
        let span = value.span();
        let text = value.into_inner();
        if text.trim().is_empty() {
            Err(at(span, format!("`{field}` must not be empty")))
        } else {
            Ok(text)
        }
    };
    let cpu = match raw.cpu {
        Some(value) => {
            let span = value.span();
            let parsed = match value.into_inner() {
                toml::Value::String(text) => parse_cpu(&text),
                toml::Value::Float(f) => parse_cpu(&f.to_string()),
                toml::Value::Integer(n) => parse_cpu(&n.to_string()),
                _ => Err("`cpu` must be like \"50%\" or a number of CPUs".to_owned()),
            };
            Some(parsed.map_err(|problem| at(span, problem))?)
        }
        None => None,
    };
    Ok(Limits {
        memory: raw.memory.map(|v| size(v, "memory")).transpose()?,
        pids: raw.pids.map(|v| count(v, "pids")).transpose()?,
        cpu_millis: cpu,
        nofile: raw.nofile.map(|v| count(v, "nofile")).transpose()?,
        core: raw.core.map(|v| size(v, "core")).transpose()?,
        cpu_time: raw
            .cpu_time
            .map(|d| positive_duration(d, "cpu_time", at))
            .transpose()?,
        user: raw.user.map(|v| name(v, "user")).transpose()?,
        group: raw.group.map(|v| name(v, "group")).transpose()?,
    })
}

/// A task, its name's place, and its kind's place (the name's for command tasks).
/// A native task's body: its `kind` and `[task.params]` (no `revert`: the kind has its own).
fn parse_native(
    kind: Spanned<String>,
    params: Option<Spanned<toml::Table>>,
    revert: Option<Spanned<toml::Value>>,
    at: &impl Fn(Range<usize>, String) -> SpecError,
) -> Result<TaskBody, SpecError> {
    if let Some(revert) = revert {
        return Err(at(
            revert.span(),
            "a native task's revert is its kind's own: remove `revert`".into(),
        ));
    }
    let kind_span = kind.span();
    if kind.get_ref().trim().is_empty() {
        return Err(at(kind_span, "`kind` must not be empty".into()));
    }
    let params = params.map(Spanned::into_inner).unwrap_or_default();
    let params_json = serde_json::to_string(&params)
        .map_err(|err| at(kind_span, format!("params cannot be represented: {err}")))?;
    Ok(TaskBody::Native {
        kind: kind.into_inner(),
        params_json,
    })
}

fn parse_task(
    raw: RawTask,
    at: &impl Fn(Range<usize>, String) -> SpecError,
) -> Result<(TaskSpec, Range<usize>, Range<usize>, flow::RawAfter), SpecError> {
    let name_span = raw.name.span();
    let name = raw.name.into_inner();
    if let Some(problem) = task_name_problem(&name) {
        return Err(at(name_span, problem));
    }
    let mut kind_span = name_span.clone();
    let body = match (raw.run, raw.kind) {
        (Some(_), Some(kind)) => {
            return Err(at(
                kind.span(),
                format!("task {name:?} has both `run` and `kind`: choose one"),
            ));
        }
        (None, None) => {
            return Err(at(
                name_span,
                format!("task {name:?} needs `run` (a command) or `kind` (a native task)"),
            ));
        }
        (Some(run), None) => {
            if let Some(params) = raw.params {
                return Err(at(
                    params.span(),
                    "`params` belongs to native tasks (with `kind`)".into(),
                ));
            }
            let run = parse_command(run, "run", at)?;
            let revert = raw
                .revert
                .map(|c| parse_command(c, "revert", at))
                .transpose()?;
            TaskBody::Command { run, revert }
        }
        (None, Some(kind)) => {
            kind_span = kind.span();
            parse_native(kind, raw.params, raw.revert, at)?
        }
    };
    let timeout = raw
        .timeout
        .map(|d| positive_duration(d, "timeout", at))
        .transpose()?;
    let revert_timeout = raw
        .revert_timeout
        .map(|d| positive_duration(d, "revert_timeout", at))
        .transpose()?;
    let (revert_retries, revert_retry_delay) =
        parse_revert_retries(raw.revert_retries, raw.revert_retry_delay, at)?;
    let (retry_delay, retry_backoff) =
        flow::parse_retry_pacing(raw.retry_delay, raw.retry_backoff, at)?;
    let cwd = match raw.cwd {
        Some(cwd) if cwd.get_ref().is_empty() => {
            return Err(at(cwd.span(), "cwd must not be empty".into()));
        }
        other => other.map(Spanned::into_inner),
    };
    let task = TaskSpec {
        name,
        body,
        timeout,
        revert_timeout,
        revert_retries,
        revert_retry_delay,
        retries: raw.retries.unwrap_or(0),
        cwd,
        env: raw.env.unwrap_or_default(),
        max_output: raw
            .max_output
            .map(|v| parse_max_output(v, at))
            .transpose()?,
        after: Vec::new(),
        retry_delay,
        retry_backoff,
    };
    Ok((task, name_span, kind_span, raw.after))
}

/// Why a task name is not allowed, or `None`.
#[must_use]
pub fn task_name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > MAX_TASK_NAME_LEN {
        return Some(format!(
            "task name {name:?} must be 1 to {MAX_TASK_NAME_LEN} characters long"
        ));
    }
    let ok = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    (!ok).then(|| format!("task name {name:?} may only hold letters, digits, '-', '_' and '.'"))
}

fn parse_command(
    value: Spanned<toml::Value>,
    field: &str,
    at: &impl Fn(Range<usize>, String) -> SpecError,
) -> Result<CommandSpec, SpecError> {
    let span = value.span();
    match value.into_inner() {
        toml::Value::String(script) if script.trim().is_empty() => {
            Err(at(span, format!("`{field}` must not be an empty command")))
        }
        toml::Value::String(script) => Ok(CommandSpec::Shell(script)),
        toml::Value::Array(items) => {
            let mut argv = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    toml::Value::String(arg) => argv.push(arg),
                    other => {
                        return Err(at(
                            span,
                            format!(
                                "`{field}` array items must be strings, found {}",
                                other.type_str()
                            ),
                        ));
                    }
                }
            }
            match argv.first() {
                None => Err(at(span, format!("`{field}` must not be an empty command"))),
                Some(program) if program.is_empty() => Err(at(
                    span,
                    format!("`{field}`: the program (first item) must not be empty"),
                )),
                Some(_) => Ok(CommandSpec::Argv(argv)),
            }
        }
        other => Err(at(
            span,
            format!(
                "`{field}` must be a string (run by /bin/sh -c) or an array (argv), found {}",
                other.type_str()
            ),
        )),
    }
}

fn positive_duration(
    text: Spanned<String>,
    field: &str,
    at: &impl Fn(Range<usize>, String) -> SpecError,
) -> Result<Duration, SpecError> {
    let span = text.span();
    let duration = positive_or_zero_duration(text, field, at)?;
    if duration.is_zero() {
        return Err(at(span, format!("`{field}` must be longer than zero")));
    }
    Ok(duration)
}

/// A duration that may be zero, at most [`MAX_DURATION`].
fn positive_or_zero_duration(
    text: Spanned<String>,
    field: &str,
    at: &impl Fn(Range<usize>, String) -> SpecError,
) -> Result<Duration, SpecError> {
    let span = text.span();
    match parse_duration(text.get_ref()) {
        Ok(d) if d > MAX_DURATION => Err(at(
            span,
            format!(
                "`{field}` must be at most {}",
                crate::duration::format_duration(MAX_DURATION)
            ),
        )),
        Ok(d) => Ok(d),
        Err(problem) => Err(at(span, format!("`{field}`: {problem}"))),
    }
}

/// `revert_retries` and `revert_retry_delay` (zero allowed: retry at once; the default is
/// [`DEFAULT_REVERT_RETRY_DELAY`]).
fn parse_revert_retries(
    retries: Option<Spanned<u32>>,
    delay: Option<Spanned<String>>,
    at: &impl Fn(Range<usize>, String) -> SpecError,
) -> Result<(u32, Duration), SpecError> {
    let (count, count_span) = retries.map_or((0, 0..0), |r| (*r.get_ref(), r.span()));
    let delay = match delay {
        None => DEFAULT_REVERT_RETRY_DELAY,
        Some(text) => {
            let span = text.span();
            let delay = parse_duration(text.get_ref())
                .map_err(|problem| at(span.clone(), format!("`revert_retry_delay`: {problem}")))?;
            if let Some(problem) = operators::revert_retry_problem(0, delay) {
                return Err(at(span, problem));
            }
            delay
        }
    };
    if let Some(problem) = operators::revert_retry_problem(count, Duration::ZERO) {
        return Err(at(count_span, problem));
    }
    // Without retries there is no delay: every spec without them reads the same, whatever
    // version of the wire or the store it came through.
    Ok((count, if count == 0 { Duration::ZERO } else { delay }))
}

fn parse_hooks(
    raw: operators::RawHooks,
    at: &impl Fn(Range<usize>, String) -> SpecError,
) -> Result<Hooks, SpecError> {
    let mut hooks = Hooks::default();
    for (slot, value, field) in [
        (&mut hooks.on_end, raw.on_end, "on_end"),
        (
            &mut hooks.on_revert_skipped,
            raw.on_revert_skipped,
            "on_revert_skipped",
        ),
    ] {
        if let Some(value) = value {
            if let Some(problem) = hook_problem(value.get_ref(), field) {
                return Err(at(value.span(), problem));
            }
            *slot = Some(value.into_inner());
        }
    }
    Ok(hooks)
}

/// Turns a byte offset into the 1-based line and column of an error.
fn locate(source: &str, origin: &str, offset: usize, message: String) -> SpecError {
    let offset = offset.min(source.len());
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    SpecError {
        origin: origin.to_owned(),
        line,
        column,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<JobSpec, SpecError> {
        JobSpec::parse(src, "job.toml", "job")
    }

    fn err_at(src: &str) -> (usize, usize, String) {
        let err = parse(src).expect_err("should be rejected");
        (err.line, err.column, err.message)
    }

    #[test]
    fn full_file_parses_with_defaults() {
        let spec = parse(
            r#"
timeout = "10m"
[env]
REGION = "eu"

[[task]]
name = "fetch"
run = "echo hi"
revert = ["rm", "-f", "/tmp/x"]
timeout = "1m"
retries = 2
cwd = "/tmp"
env = { MODE = "fast" }

[[task]]
name = "b.2_x-y"
run = ["true"]
"#,
        )
        .expect("valid");
        assert_eq!(spec.name, "job");
        assert_eq!(spec.timeout, Some(Duration::from_secs(600)));
        assert_eq!(spec.cancel_timeout, DEFAULT_CANCEL_TIMEOUT);
        assert_eq!(spec.term_grace, DEFAULT_TERM_GRACE);
        assert_eq!(spec.env["REGION"], "eu");
        assert_eq!(spec.tasks.len(), 2);
        let fetch = &spec.tasks[0];
        let TaskBody::Command { run, revert } = &fetch.body else {
            panic!("a command task")
        };
        assert_eq!(run, &CommandSpec::Shell("echo hi".into()));
        assert_eq!(
            revert.as_ref().map(CommandSpec::program_and_args),
            Some(("rm", vec!["-f", "/tmp/x"]))
        );
        assert_eq!(fetch.retries, 2);
        assert_eq!(fetch.env["MODE"], "fast");
        assert!(!spec.tasks[1].body.has_revert());
    }

    #[test]
    fn unknown_key_is_located() {
        let (line, column, message) =
            err_at("[[task]]\nname = \"a\"\nrun = \"true\"\nrunn = \"x\"\n");
        assert_eq!((line, column), (4, 1));
        assert!(message.contains("runn"), "{message}");
    }

    #[test]
    fn duplicate_task_name_points_at_the_second() {
        let (line, column, message) = err_at(
            "[[task]]\nname = \"a\"\nrun = \"true\"\n[[task]]\nname = \"a\"\nrun = \"true\"\n",
        );
        assert_eq!((line, column), (5, 8));
        assert!(message.contains("duplicate"), "{message}");
    }

    #[test]
    fn invalid_names_commands_and_durations() {
        let cases = [
            ("[[task]]\nname = \"a b\"\nrun = \"true\"\n", 2, "letters"),
            ("[[task]]\nname = \"\"\nrun = \"true\"\n", 2, "1 to 64"),
            ("[[task]]\nname = \"a\"\nrun = \"  \"\n", 3, "empty command"),
            ("[[task]]\nname = \"a\"\nrun = []\n", 3, "empty command"),
            ("[[task]]\nname = \"a\"\nrun = [1]\n", 3, "strings"),
            ("[[task]]\nname = \"a\"\nrun = 5\n", 3, "must be a string"),
            (
                "[[task]]\nname = \"a\"\nrun = \"true\"\ntimeout = \"5 parsecs\"\n",
                4,
                "timeout",
            ),
            (
                "timeout = \"0s\"\n[[task]]\nname = \"a\"\nrun = \"true\"\n",
                1,
                "longer than zero",
            ),
            (
                "cancel_timeout = \"2s\"\nterm_grace = \"2s\"\n[[task]]\nname = \"a\"\nrun = \"true\"\n",
                2,
                "shorter",
            ),
            (
                "[[task]]\nname = \"a\"\nrun = \"true\"\nretries = -1\n",
                4,
                "",
            ),
            ("name = \"x\"\n", 1, "no tasks"),
            ("task = []\n", 1, "no tasks"),
            ("[[task]]\nrun = \"true\"\n", 1, "name"),
            ("[[task]]\nname = \"a\"\nrun = \"true\"\n[[task\n", 4, ""),
        ];
        for (src, line, needle) in cases {
            let (got_line, _, message) = err_at(src);
            assert_eq!(got_line, line, "{src:?}: {message}");
            assert!(message.contains(needle), "{src:?}: {message}");
        }
    }

    #[test]
    fn error_display_is_file_line_column() {
        let err = parse("[[task]]\nname = \"a\"\nrun = \"\"\n").expect_err("empty run");
        assert_eq!(
            err.to_string(),
            "job.toml:3:7: `run` must not be an empty command"
        );
    }

    #[test]
    fn short_cancel_timeout_gets_a_shorter_default_grace() {
        let spec = parse("cancel_timeout = \"2s\"\n[[task]]\nname = \"a\"\nrun = \"true\"\n")
            .expect("valid");
        assert!(spec.term_grace < spec.cancel_timeout);
    }

    #[test]
    fn debug_hides_env_values() {
        let spec = parse("[env]\nTOKEN = \"s3cret\"\n[[task]]\nname = \"a\"\nrun = \"true\"\nenv = { K = \"hidden\" }\n")
            .expect("valid");
        let shown = format!("{spec:?}");
        assert!(shown.contains("TOKEN") && !shown.contains("s3cret") && !shown.contains("hidden"));
    }

    #[test]
    fn native_tasks_need_a_worker_and_carry_params_as_json() {
        let spec = parse(
            "worker = \"my-worker\"\n[[task]]\nname = \"dl\"\nkind = \"download\"\n[task.params]\nurl = \"x\"\nsize = 3\n",
        )
        .expect("valid");
        assert_eq!(spec.worker.as_deref(), Some("my-worker"));
        assert_eq!(
            spec.tasks[0].body,
            TaskBody::Native {
                kind: "download".into(),
                params_json: r#"{"size":3,"url":"x"}"#.into()
            }
        );
        let cases = [
            ("[[task]]\nname = \"a\"\nkind = \"k\"\n", 1, "worker"),
            (
                "worker = \"w\"\n[[task]]\nname = \"a\"\nkind = \"k\"\nrun = \"true\"\n",
                4,
                "both",
            ),
            (
                "worker = \"w\"\n[[task]]\nname = \"a\"\nkind = \"k\"\nrevert = \"true\"\n",
                5,
                "revert",
            ),
            ("[[task]]\nname = \"a\"\n", 2, "needs `run`"),
            (
                "[[task]]\nname = \"a\"\nrun = \"true\"\n[task.params]\nx = 1\n",
                4,
                "params",
            ),
        ];
        for (src, line, needle) in cases {
            let (got_line, _, message) = err_at(src);
            assert_eq!(got_line, line, "{src:?}: {message}");
            assert!(message.contains(needle), "{src:?}: {message}");
        }
    }

    #[test]
    fn unknown_kinds_are_rejected_where_they_stand() {
        let src = "worker = \"w\"\n[[task]]\nname = \"a\"\nkind = \"good\"\n[[task]]\nname = \"b\"\nkind = \"bad\"\n";
        let kinds = |_: &str| Ok(vec!["good".to_owned()]);
        let err = JobSpec::parse_checked(src, "j.toml", "j", &kinds).expect_err("unknown kind");
        assert_eq!((err.line, err.column), (7, 8));
        assert!(
            err.message.contains("unknown kind \"bad\""),
            "{}",
            err.message
        );
        let broken = |_: &str| Err("cannot run it".to_owned());
        let err = JobSpec::parse_checked(src, "j.toml", "j", &broken).expect_err("no worker");
        assert_eq!((err.line, err.message.as_str()), (1, "cannot run it"));
    }

    #[test]
    fn revert_retries_parse_with_their_delay() {
        let spec = JobSpec::parse(
            "[[task]]\nname = \"a\"\nrun = \"true\"\nrevert = \"true\"\nrevert_retries = 3\nrevert_retry_delay = \"250ms\"\n[[task]]\nname = \"b\"\nrun = \"true\"\nrevert = \"true\"\nrevert_retries = 1\n[[task]]\nname = \"c\"\nrun = \"true\"\n",
            "t.toml",
            "t",
        )
        .expect("valid");
        assert_eq!(spec.tasks[0].revert_retries, 3);
        assert_eq!(spec.tasks[0].revert_retry_delay, Duration::from_millis(250));
        assert_eq!(spec.tasks[1].revert_retry_delay, DEFAULT_REVERT_RETRY_DELAY);
        assert_eq!(spec.tasks[2].revert_retries, 0);
        assert_eq!(spec.tasks[2].revert_retry_delay, Duration::ZERO);
        assert!(spec.check().is_ok());
        let err = JobSpec::parse(
            "[[task]]\nname = \"a\"\nrun = \"true\"\nrevert_retries = 1000\n",
            "t.toml",
            "t",
        )
        .expect_err("too many");
        assert!(err.message.contains("revert_retries"), "{err}");
    }

    #[test]
    fn hooks_parse_and_are_checked() {
        let spec = JobSpec::parse(
            "[hooks]\non_end = \"logger ended\"\non_revert_skipped = \"page-oncall\"\n[[task]]\nname = \"a\"\nrun = \"true\"\n",
            "t.toml",
            "t",
        )
        .expect("valid");
        assert_eq!(spec.hooks.on_end.as_deref(), Some("logger ended"));
        assert_eq!(spec.hooks.on_revert_skipped.as_deref(), Some("page-oncall"));
        let err = JobSpec::parse(
            "[hooks]\non_end = \" \"\n[[task]]\nname = \"a\"\nrun = \"true\"\n",
            "t.toml",
            "t",
        )
        .expect_err("empty hook");
        assert!(err.message.contains("hooks.on_end"), "{err}");
        assert!(
            JobSpec::parse(
                "[hooks]\non_start = \"x\"\n[[task]]\nname = \"a\"\nrun = \"true\"\n",
                "t.toml",
                "t",
            )
            .is_err()
        );
    }

    #[test]
    fn revert_timeout_defaults_to_the_cancel_timeout() {
        let spec = parse(
            "cancel_timeout = \"40s\"\n[[task]]\nname = \"a\"\nrun = \"true\"\nrevert_timeout = \"2s\"\n[[task]]\nname = \"b\"\nrun = \"true\"\n",
        )
        .expect("valid");
        assert_eq!(spec.tasks[0].revert_timeout, Some(Duration::from_secs(2)));
        assert_eq!(spec.revert_timeout(&spec.tasks[0]), Duration::from_secs(2));
        assert_eq!(spec.tasks[1].revert_timeout, None);
        assert_eq!(spec.revert_timeout(&spec.tasks[1]), Duration::from_secs(40));
        for (src, needle) in [
            (
                "[[task]]\nname = \"a\"\nrun = \"true\"\nrevert_timeout = \"0s\"\n",
                "longer than zero",
            ),
            (
                "[[task]]\nname = \"a\"\nrun = \"true\"\nrevert_timeout = \"999999999h\"\n",
                "at most",
            ),
        ] {
            let (line, _, message) = err_at(src);
            assert_eq!(line, 4, "{message}");
            assert!(message.contains(needle), "{message}");
        }
    }

    #[test]
    fn a_spec_stored_before_revert_timeout_existed_still_reads() {
        let spec = parse("[[task]]\nname = \"a\"\nrun = \"true\"\n").expect("valid");
        let mut json: serde_json::Value = serde_json::to_value(&spec).expect("json");
        let removed = json["tasks"][0]
            .as_object_mut()
            .and_then(|task| task.remove("revert_timeout"));
        assert!(removed.is_some());
        let old: JobSpec = serde_json::from_value(json).expect("reads");
        assert_eq!(old, spec);
    }

    #[test]
    fn native_tasks_refuse_per_process_limits_where_they_stand() {
        let native = "[[task]]\nname = \"n\"\nkind = \"k\"\n";
        for (limit, column) in [
            ("user = \"deploy\"", 8),
            ("nofile = 64", 10),
            ("core = 0", 8),
            ("cpu_time = \"1s\"", 12),
        ] {
            let src = format!("worker = \"w\"\n[limits]\nmemory = \"1G\"\n{limit}\n{native}");
            let (line, col, message) = err_at(&src);
            assert_eq!((line, col), (4, column), "{limit}: {message}");
            assert!(
                message.contains("native task \"n\"") && message.contains("supervisor's user"),
                "{message}"
            );
        }
        // Cgroup limits are the whole job's: a native task is inside them too.
        let src = format!("worker = \"w\"\n[limits]\nmemory = \"1G\"\npids = 10\n{native}");
        assert!(parse(&src).is_ok());
    }

    #[test]
    fn group_alone_is_refused() {
        let (line, column, message) =
            err_at("[limits]\ngroup = \"adm\"\n[[task]]\nname = \"a\"\nrun = \"true\"\n");
        assert_eq!((line, column), (2, 9));
        assert!(message.contains("`group` needs `user`"), "{message}");
        let spec = parse(
            "[limits]\nuser = \"nobody\"\ngroup = \"adm\"\n[[task]]\nname = \"a\"\nrun = \"true\"\n",
        )
        .expect("valid");
        assert_eq!(spec.limits.group.as_deref(), Some("adm"));
    }

    #[test]
    fn inherit_env_takes_variable_names() {
        let spec = parse(
            "inherit_env = [\"HTTP_PROXY\", \"_X1\"]\n[[task]]\nname = \"a\"\nrun = \"true\"\n",
        )
        .expect("valid");
        assert_eq!(spec.inherit_env, ["HTTP_PROXY", "_X1"]);
        for bad in ["\"\"", "\"A=B\"", "\"1X\"", "\"A B\"", "\"\u{e9}\""] {
            let src =
                format!("inherit_env = [\"OK\", {bad}]\n[[task]]\nname = \"a\"\nrun = \"true\"\n");
            let (line, column, message) = err_at(&src);
            assert_eq!((line, column), (1, 22), "{bad}: {message}");
            assert!(message.contains("not a variable name"), "{message}");
        }
    }

    #[test]
    fn max_output_is_a_size_at_job_and_task_level() {
        let spec = parse(
            "max_output = \"1M\"\n[[task]]\nname = \"a\"\nrun = \"true\"\nmax_output = 4096\n[[task]]\nname = \"b\"\nrun = \"true\"\n",
        )
        .expect("valid");
        assert_eq!(spec.max_output(&spec.tasks[0]), 4096);
        assert_eq!(spec.max_output(&spec.tasks[1]), 1 << 20);
        let plain = parse("[[task]]\nname = \"a\"\nrun = \"true\"\n").expect("valid");
        assert_eq!(plain.max_output(&plain.tasks[0]), DEFAULT_MAX_OUTPUT);
        for (src, line, needle) in [
            (
                "max_output = \"lots\"\n[[task]]\nname = \"a\"\nrun = \"true\"\n",
                1,
                "bad size",
            ),
            (
                "max_output = -1\n[[task]]\nname = \"a\"\nrun = \"true\"\n",
                1,
                "negative",
            ),
            (
                "[[task]]\nname = \"a\"\nrun = \"true\"\nmax_output = 10\n",
                4,
                "at least",
            ),
            (
                "[[task]]\nname = \"a\"\nrun = \"true\"\nmax_output = true\n",
                4,
                "size",
            ),
        ] {
            let (got, _, message) = err_at(src);
            assert_eq!(got, line, "{src:?}: {message}");
            assert!(message.contains(needle), "{src:?}: {message}");
        }
    }

    #[test]
    fn limits_and_heartbeat() {
        let spec = parse(
            "heartbeat_timeout = \"5s\"\nkill_unresponsive = true\n[limits]\nmemory = \"64M\"\npids = 50\ncpu = \"50%\"\nnofile = 256\ncore = 0\ncpu_time = \"2s\"\n[[task]]\nname = \"a\"\nrun = \"true\"\n",
        )
        .expect("valid");
        assert_eq!(spec.heartbeat_timeout, Duration::from_secs(5));
        assert!(spec.kill_unresponsive);
        assert_eq!(spec.limits.memory, Some(64 << 20));
        assert_eq!(spec.limits.pids, Some(50));
        assert_eq!(spec.limits.cpu_millis, Some(500));
        assert_eq!(spec.limits.nofile, Some(256));
        assert_eq!(spec.limits.core, Some(0));
        assert_eq!(spec.limits.cpu_time, Some(Duration::from_secs(2)));
        assert_eq!(spec.limits.cgroup_controllers(), ["memory", "pids", "cpu"]);
        for (src, line) in [
            (
                "[limits]\nmemory = \"lots\"\n[[task]]\nname = \"a\"\nrun = \"true\"\n",
                2,
            ),
            (
                "[limits]\npids = 0\n[[task]]\nname = \"a\"\nrun = \"true\"\n",
                2,
            ),
            (
                "[limits]\nswap = 1\n[[task]]\nname = \"a\"\nrun = \"true\"\n",
                2,
            ),
            (
                "[limits]\nuser = \"\"\n[[task]]\nname = \"a\"\nrun = \"true\"\n",
                2,
            ),
        ] {
            assert_eq!(err_at(src).0, line, "{src:?}");
        }
        assert_eq!(
            parse("[[task]]\nname = \"a\"\nrun = \"true\"\n")
                .expect("valid")
                .heartbeat_timeout,
            DEFAULT_HEARTBEAT_TIMEOUT
        );
    }
}
