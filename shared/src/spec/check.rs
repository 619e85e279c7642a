//! [`JobSpec::check`]: the validation of a spec that did not come from [`JobSpec::parse`] (a
//! deserialized one, sent by a client that may be hostile), and the size bound that makes every
//! frame carrying the spec fit the codec's limit.

use super::{
    CommandSpec, Flow, JobSpec, MAX_DURATION, TaskBody, TaskSpec, env_name_problem, flow,
    max_output_problem, native_limit_problem, task_name_problem,
};
use crate::duration::format_duration;
use crate::ids::JobId;
use crate::limits::Limits;
use crate::protocol::codec::{MAX_FRAME_LEN, encoded_len};
use crate::protocol::conductor::{JobPlan, PlanAction, PriorTask, ToConductor};
use crate::state::{ExecOutcome, TaskState};
use std::collections::HashSet;
use std::time::Duration;

/// Room left in a frame beside the largest plan of a job: a `Submit` carries the spec with the
/// job file's path, and later versions of a message may add a field or two.
pub const SPEC_FRAME_ROOM: usize = 64 * 1024;

/// The largest encoded plan ([`JobSpec::plan_frame_len`]) a job may have.
pub const MAX_PLAN_FRAME_LEN: usize = MAX_FRAME_LEN - SPEC_FRAME_ROOM;

impl JobSpec {
    /// Checks everything [`JobSpec::parse`] checks that a deserialized spec could get wrong
    /// (names, durations, commands, limits), that paths were resolved (`cwd` is absolute), and
    /// that the job's plan fits in a frame ([`MAX_PLAN_FRAME_LEN`]). The daemon calls it on every
    /// submitted spec: a client can send any bytes. The error is a sentence for the operator.
    pub fn check(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("job name must not be empty".into());
        }
        if let Some(timeout) = self.timeout {
            check_duration(timeout, "timeout")?;
        }
        check_duration(self.cancel_timeout, "cancel_timeout")?;
        check_duration(self.term_grace, "term_grace")?;
        check_duration(self.heartbeat_timeout, "heartbeat_timeout")?;
        if self.term_grace >= self.cancel_timeout {
            return Err(format!(
                "term_grace ({}) must be shorter than cancel_timeout ({})",
                format_duration(self.term_grace),
                format_duration(self.cancel_timeout)
            ));
        }
        if self.worker.as_ref().is_some_and(|w| w.trim().is_empty()) {
            return Err("`worker` must not be empty".into());
        }
        check_limits(&self.limits)?;
        for name in &self.inherit_env {
            if let Some(problem) = env_name_problem(name) {
                return Err(problem);
            }
        }
        if let Some(problem) = self.max_output.and_then(max_output_problem) {
            return Err(problem);
        }
        if self.tasks.is_empty() {
            return Err("the job has no tasks: add at least one [[task]]".into());
        }
        if let Some(problem) = self.hooks.problem() {
            return Err(problem);
        }
        let mut seen = HashSet::new();
        for task in &self.tasks {
            if !seen.insert(task.name.as_str()) {
                return Err(format!("duplicate task name {:?}", task.name));
            }
            self.check_task(task)?;
        }
        self.check_flow()?;
        let len = self.plan_frame_len();
        if len > MAX_PLAN_FRAME_LEN {
            return Err(format!(
                "the job is too large: its plan takes {len} bytes, more than the limit of \
                 {MAX_PLAN_FRAME_LEN} bytes (shorten its commands, params or env)"
            ));
        }
        Ok(())
    }

    /// The flow's keys, and a graph in the order a parsed spec has: every task after the tasks
    /// it runs after (so no cycle and no task after itself), none of them in a linear job.
    fn check_flow(&self) -> Result<(), String> {
        if let Some(problem) = flow::max_parallel_problem(i64::from(self.max_parallel)) {
            return Err(problem);
        }
        if let Some((first, second)) = flow::result_var_clash(&self.tasks) {
            return Err(flow::result_var_problem(
                &self.tasks[first].name,
                &self.tasks[second].name,
            ));
        }
        for (own, task) in self.tasks.iter().enumerate() {
            let name = &task.name;
            if let Some(problem) = task.retry_backoff.problem() {
                return Err(format!("task {name:?}: {problem}"));
            }
            if task.retry_delay > flow::MAX_RETRY_DELAY {
                return Err(format!("task {name:?}: {}", flow::retry_delay_problem()));
            }
            if self.flow == Flow::Linear && !task.after.is_empty() {
                return Err(format!("task {name:?}: `after` needs `flow = \"graph\"`"));
            }
            if let Some(bad) = task
                .after
                .iter()
                .find(|&&a| usize::try_from(a).map_or(true, |a| a >= own))
            {
                return Err(format!(
                    "task {name:?}: `after` names task number {bad}, which is not before it \
                     (a cycle, or tasks out of order)"
                ));
            }
        }
        Ok(())
    }

    fn check_task(&self, task: &TaskSpec) -> Result<(), String> {
        if let Some(problem) = task_name_problem(&task.name) {
            return Err(problem);
        }
        let name = &task.name;
        match &task.body {
            TaskBody::Command { run, revert } => {
                check_command(run, "run").map_err(|p| format!("task {name:?}: {p}"))?;
                if let Some(revert) = revert {
                    check_command(revert, "revert").map_err(|p| format!("task {name:?}: {p}"))?;
                }
            }
            TaskBody::Native { kind, params_json } => {
                if kind.trim().is_empty() {
                    return Err(format!("task {name:?}: `kind` must not be empty"));
                }
                if let Some(field) = per_process_limit(&self.limits) {
                    return Err(native_limit_problem(field, name, kind));
                }
                if self.worker.is_none() {
                    return Err(format!(
                        "task {name:?} has a native `kind` but the job names no `worker` program"
                    ));
                }
                let params: serde_json::Value = serde_json::from_str(params_json)
                    .map_err(|err| format!("task {name:?}: bad params: {err}"))?;
                if !params.is_object() {
                    return Err(format!("task {name:?}: params must be a table"));
                }
            }
        }
        if let Some(problem) = task.max_output.and_then(max_output_problem) {
            return Err(format!("task {name:?}: {problem}"));
        }
        for (value, field) in [
            (task.timeout, "timeout"),
            (task.revert_timeout, "revert_timeout"),
        ] {
            if let Some(value) = value {
                check_duration(value, field).map_err(|p| format!("task {name:?}: {p}"))?;
            }
        }
        if let Some(problem) =
            super::operators::revert_retry_problem(task.revert_retries, task.revert_retry_delay)
        {
            return Err(format!("task {name:?}: {problem}"));
        }
        match task.cwd.as_deref() {
            Some("") => Err(format!("task {name:?}: cwd must not be empty")),
            Some(cwd) if !cwd.starts_with('/') => Err(format!(
                "task {name:?}: cwd {cwd:?} is relative (the job file's loader resolves it)"
            )),
            _ => Ok(()),
        }
    }

    /// The length of the largest `Start` frame body this job can need, with every prior result
    /// left out (they travel in frames of their own): every task begun, with the largest
    /// counters, and a revert of all of them.
    #[must_use]
    pub fn plan_frame_len(&self) -> usize {
        let count = self.tasks.len();
        let worst_prior = PriorTask {
            state: TaskState::RevertFailure,
            attempts: u32::MAX,
            exec_outcome: Some(ExecOutcome::Cancelled),
            result: String::new(),
        };
        let plan = JobPlan {
            job_id: JobId::from_random(u32::MAX),
            spec: self.clone(),
            action: PlanAction::Revert {
                order: vec![u32::MAX; count],
            },
            prior: vec![worst_prior; count],
        };
        encoded_len(&ToConductor::Start(Box::new(plan))).unwrap_or(usize::MAX)
    }
}

fn check_duration(value: Duration, field: &str) -> Result<(), String> {
    if value.is_zero() {
        Err(format!("`{field}` must be longer than zero"))
    } else if value > MAX_DURATION {
        Err(format!(
            "`{field}` must be at most {}",
            format_duration(MAX_DURATION)
        ))
    } else {
        Ok(())
    }
}

fn check_command(command: &CommandSpec, field: &str) -> Result<(), String> {
    match command {
        CommandSpec::Shell(script) if script.trim().is_empty() => {
            Err(format!("`{field}` must not be an empty command"))
        }
        CommandSpec::Shell(_) => Ok(()),
        CommandSpec::Argv(argv) => match argv.first() {
            None => Err(format!("`{field}` must not be an empty command")),
            Some(program) if program.is_empty() => Err(format!(
                "`{field}`: the program (first item) must not be empty"
            )),
            Some(_) => Ok(()),
        },
    }
}

/// The first `[limits]` key set that acts on each task process (rlimits, identity), if any.
fn per_process_limit(limits: &Limits) -> Option<&'static str> {
    [
        (limits.user.is_some(), "user"),
        (limits.group.is_some(), "group"),
        (limits.nofile.is_some(), "nofile"),
        (limits.core.is_some(), "core"),
        (limits.cpu_time.is_some(), "cpu_time"),
    ]
    .into_iter()
    .find_map(|(set, field)| set.then_some(field))
}

fn check_limits(limits: &Limits) -> Result<(), String> {
    if limits.group.is_some() && limits.user.is_none() {
        return Err(
            "`group` needs `user`: alone it would leave the tasks running as the \
                    supervisor's user (root) with another group"
                .into(),
        );
    }
    for (value, field) in [(limits.pids, "pids"), (limits.nofile, "nofile")] {
        if value == Some(0) {
            return Err(format!("`{field}` must be a positive number"));
        }
    }
    if limits.cpu_millis == Some(0) {
        return Err("cpu must be above zero".into());
    }
    if let Some(cpu_time) = limits.cpu_time {
        check_duration(cpu_time, "cpu_time")?;
    }
    for (value, field) in [(&limits.user, "user"), (&limits.group, "group")] {
        if value.as_ref().is_some_and(|v| v.trim().is_empty()) {
            return Err(format!("`{field}` must not be empty"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> JobSpec {
        JobSpec::parse(
            "worker = \"/opt/w\"\n[[task]]\nname = \"a\"\nrun = \"true\"\nrevert = [\"rm\", \"x\"]\ncwd = \"/srv\"\nrevert_timeout = \"3s\"\n[[task]]\nname = \"n\"\nkind = \"k\"\n[task.params]\nx = 1\n",
            "job.toml",
            "job",
        )
        .expect("valid")
    }

    #[test]
    fn a_parsed_spec_passes() {
        assert_eq!(valid().check(), Ok(()));
    }

    /// Each way a client could send a spec that `parse` would never have produced.
    #[test]
    fn hostile_specs_are_refused_with_a_reason() {
        type Break = fn(&mut JobSpec);
        let cases: [(Break, &str); 21] = [
            (|s| s.name = " ".into(), "name"),
            (|s| s.tasks.clear(), "no tasks"),
            (|s| s.cancel_timeout = Duration::ZERO, "cancel_timeout"),
            (|s| s.term_grace = s.cancel_timeout, "shorter"),
            (|s| s.timeout = Some(Duration::MAX), "at most"),
            (|s| s.heartbeat_timeout = Duration::ZERO, "heartbeat"),
            (|s| s.tasks[0].name = "a b".into(), "letters"),
            (|s| s.tasks[1].name = "a".into(), "duplicate"),
            (
                |s| s.tasks[0].revert_timeout = Some(Duration::ZERO),
                "revert_timeout",
            ),
            (|s| s.tasks[0].cwd = Some("rel/dir".into()), "relative"),
            (
                |s| {
                    s.tasks[0].body = TaskBody::Command {
                        run: CommandSpec::Argv(vec![String::new()]),
                        revert: None,
                    }
                },
                "program",
            ),
            (
                |s| {
                    s.tasks[0].body = TaskBody::Command {
                        run: CommandSpec::Shell("true".into()),
                        revert: Some(CommandSpec::Argv(Vec::new())),
                    }
                },
                "empty command",
            ),
            (|s| s.worker = None, "worker"),
            (
                |s| {
                    s.tasks[1].body = TaskBody::Native {
                        kind: "k".into(),
                        params_json: "[1]".into(),
                    }
                },
                "table",
            ),
            (|s| s.limits.pids = Some(0), "pids"),
            (|s| s.limits.user = Some(String::new()), "user"),
            (|s| s.limits.group = Some("g".into()), "needs `user`"),
            (|s| s.limits.nofile = Some(64), "native task"),
            (|s| s.inherit_env = vec!["A=B".into()], "inherit_env"),
            (|s| s.max_output = Some(1), "max_output"),
            (|s| s.tasks[0].max_output = Some(0), "max_output"),
        ];
        for (break_it, needle) in cases {
            let mut spec = valid();
            break_it(&mut spec);
            let problem = spec.check().expect_err(needle);
            assert!(problem.contains(needle), "{needle}: {problem}");
        }
    }

    #[test]
    fn a_plan_too_large_for_a_frame_is_refused_with_its_size() {
        let mut spec = valid();
        spec.tasks[0].body = TaskBody::Command {
            run: CommandSpec::Shell("x".repeat(MAX_FRAME_LEN)),
            revert: None,
        };
        let problem = spec.check().expect_err("too large");
        assert!(problem.contains("too large"), "{problem}");
        assert!(
            problem.contains(&MAX_PLAN_FRAME_LEN.to_string()),
            "{problem}"
        );
        // Just under the limit passes, and its plan then fits in a frame.
        let room = MAX_PLAN_FRAME_LEN - valid().plan_frame_len();
        spec.tasks[0].body = TaskBody::Command {
            run: CommandSpec::Shell("x".repeat(room - 16)),
            revert: None,
        };
        assert_eq!(spec.check(), Ok(()));
        assert!(spec.plan_frame_len() <= MAX_PLAN_FRAME_LEN);
    }
}
