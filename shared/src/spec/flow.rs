//! The job file's keys for flows (issue 12, ARCHITECTURE.md, Flows): `flow`, `max_parallel`,
//! `on_failure`, a task's `after`, `retry_delay` and `retry_backoff`; and the resolution of the
//! `after` names into a graph, refused with the place of the problem (unknown name, a task after
//! itself, a cycle named in order, `after` in a linear job, two results under one variable).

use super::graph::{Graph, result_var};
use super::{SpecError, TaskSpec, positive_or_zero_duration};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::time::Duration;
use toml::Spanned;

/// Default `max_parallel`.
pub const DEFAULT_MAX_PARALLEL: u32 = 16;
/// The largest `max_parallel`: the conductor's queue of unacknowledged state reports is sized
/// for it.
pub const MAX_PARALLEL: u32 = 256;
/// The longest pause before a retry of an execute, computed backoff included.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);
/// The largest `retry_backoff`.
pub const MAX_BACKOFF: f64 = 100.0;

pub(super) const fn default_max_parallel() -> u32 {
    DEFAULT_MAX_PARALLEL
}

/// How a job's tasks are ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Flow {
    /// File order: each task after the one before it.
    #[default]
    Linear,
    /// Each task after the tasks its `after` names; the others start at once.
    Graph,
}

impl Flow {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Linear => "linear",
            Self::Graph => "graph",
        }
    }
}

/// What the running tasks do when a task fails for good.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OnFailure {
    /// Interrupted like a cancel (SIGTERM, SIGKILL after `term_grace`).
    #[default]
    Interrupt,
    /// Let finish; no new task starts either way.
    Finish,
}

impl OnFailure {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Interrupt => "interrupt",
            Self::Finish => "finish",
        }
    }
}

/// `retry_backoff`, in thousandths (the spec stays `Eq` and its encoding exact): each retry
/// waits this factor times the pause before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff(pub u32);

impl Default for Backoff {
    fn default() -> Self {
        Self(1000)
    }
}

impl Backoff {
    /// The factor as a float.
    #[must_use]
    pub fn factor(self) -> f64 {
        f64::from(self.0) / 1000.0
    }

    /// The pause before retry number `retry` (1 for the first), `delay` times the factor to
    /// the power `retry - 1`, at most `MAX_RETRY_DELAY`.
    #[must_use]
    pub fn delay(self, delay: Duration, retry: u32) -> Duration {
        let power = i32::try_from(retry.saturating_sub(1)).unwrap_or(i32::MAX);
        let seconds = delay.as_secs_f64() * self.factor().powi(power);
        if seconds.is_finite() && seconds < MAX_RETRY_DELAY.as_secs_f64() {
            Duration::from_secs_f64(seconds.max(0.0))
        } else {
            MAX_RETRY_DELAY
        }
    }

    /// Why the factor is not allowed, or `None`: from 1 to `MAX_BACKOFF`.
    #[must_use]
    pub fn problem(self) -> Option<String> {
        let factor = self.factor();
        (!(1.0..=MAX_BACKOFF).contains(&factor))
            .then(|| format!("`retry_backoff` must be from 1.0 to {MAX_BACKOFF:.1}"))
    }
}

impl fmt::Display for Backoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.factor())
    }
}

/// A task's `after` as written: the list's place and each name's.
pub(super) type RawAfter = Option<Spanned<Vec<Spanned<String>>>>;

/// Where a task's parts stand in the file, for errors found once every task is known.
pub(super) struct TaskPlace {
    pub name: Range<usize>,
    pub after: RawAfter,
}

pub(super) fn parse_flow(
    raw: Option<Spanned<String>>,
    at: &impl Fn(Range<usize>, String) -> SpecError,
) -> Result<Flow, SpecError> {
    match raw {
        None => Ok(Flow::Linear),
        Some(flow) => match flow.get_ref().as_str() {
            "linear" => Ok(Flow::Linear),
            "graph" => Ok(Flow::Graph),
            other => Err(at(
                flow.span(),
                format!("`flow` must be \"linear\" or \"graph\", not {other:?}"),
            )),
        },
    }
}

pub(super) fn parse_on_failure(
    raw: Option<Spanned<String>>,
    at: &impl Fn(Range<usize>, String) -> SpecError,
) -> Result<OnFailure, SpecError> {
    match raw {
        None => Ok(OnFailure::Interrupt),
        Some(value) => match value.get_ref().as_str() {
            "interrupt" => Ok(OnFailure::Interrupt),
            "finish" => Ok(OnFailure::Finish),
            other => Err(at(
                value.span(),
                format!("`on_failure` must be \"interrupt\" or \"finish\", not {other:?}"),
            )),
        },
    }
}

/// Why a `max_parallel` is not allowed, or `None`.
#[must_use]
pub(super) fn max_parallel_problem(value: i64) -> Option<String> {
    (!(1..=i64::from(MAX_PARALLEL)).contains(&value))
        .then(|| format!("`max_parallel` must be from 1 to {MAX_PARALLEL}"))
}

pub(super) fn parse_max_parallel(
    raw: Option<Spanned<i64>>,
    at: &impl Fn(Range<usize>, String) -> SpecError,
) -> Result<u32, SpecError> {
    let Some(raw) = raw else {
        return Ok(DEFAULT_MAX_PARALLEL);
    };
    let value = *raw.get_ref();
    match max_parallel_problem(value) {
        Some(problem) => Err(at(raw.span(), problem)),
        None => Ok(u32::try_from(value).unwrap_or(DEFAULT_MAX_PARALLEL)),
    }
}

/// A task's `retry_delay` (zero allowed, at most [`MAX_RETRY_DELAY`]) and `retry_backoff` (a
/// number from 1 to [`MAX_BACKOFF`]).
pub(super) fn parse_retry_pacing(
    delay: Option<Spanned<String>>,
    backoff: Option<Spanned<toml::Value>>,
    at: &impl Fn(Range<usize>, String) -> SpecError,
) -> Result<(Duration, Backoff), SpecError> {
    let delay = match delay {
        None => Duration::ZERO,
        Some(text) => {
            let span = text.span();
            let delay = positive_or_zero_duration(text, "retry_delay", at)?;
            if delay > MAX_RETRY_DELAY {
                return Err(at(span, retry_delay_problem()));
            }
            delay
        }
    };
    let backoff = match backoff {
        None => Backoff::default(),
        Some(value) => {
            let span = value.span();
            let factor = match value.into_inner() {
                toml::Value::Float(f) => f,
                #[allow(clippy::cast_precision_loss)]
                toml::Value::Integer(n) => n as f64,
                _ => f64::NAN,
            };
            let bad = || at(span.clone(), Backoff(0).problem().unwrap_or_default());
            if !(1.0..=MAX_BACKOFF).contains(&factor) {
                return Err(bad());
            }
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Backoff((factor * 1000.0).round() as u32)
        }
    };
    Ok((delay, backoff))
}

pub(super) fn retry_delay_problem() -> String {
    format!(
        "`retry_delay` must be at most {}",
        crate::duration::format_duration(MAX_RETRY_DELAY)
    )
}

/// Two task names whose results would travel in the same variable, if any (by index).
pub(super) fn result_var_clash(tasks: &[TaskSpec]) -> Option<(usize, usize)> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (index, task) in tasks.iter().enumerate() {
        if let Some(&first) = seen.get(&result_var(&task.name)) {
            return Some((first, index));
        }
        seen.insert(result_var(&task.name), index);
    }
    None
}

pub(super) fn result_var_problem(first: &str, second: &str) -> String {
    format!(
        "tasks {first:?} and {second:?} would both pass their result as {}: rename one",
        result_var(second)
    )
}

/// Resolves every task's `after` names into indices and sorts a graph's tasks topologically;
/// refuses `after` in a linear job, unknown names, a task after itself, cycles, and two names
/// with one result variable, each where it stands.
pub(super) fn resolve(
    flow: Flow,
    mut tasks: Vec<TaskSpec>,
    places: Vec<TaskPlace>,
    at: &impl Fn(Range<usize>, String) -> SpecError,
) -> Result<Vec<TaskSpec>, SpecError> {
    if let Some((first, second)) = result_var_clash(&tasks) {
        return Err(at(
            places[second].name.clone(),
            result_var_problem(&tasks[first].name, &tasks[second].name),
        ));
    }
    if flow == Flow::Linear {
        if let Some(after) = places.iter().find_map(|p| p.after.as_ref()) {
            return Err(at(
                after.span(),
                "`after` needs `flow = \"graph\"`: a linear job runs its tasks in file order"
                    .into(),
            ));
        }
        return Ok(tasks);
    }
    let index: HashMap<&str, usize> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    let mut deps = Vec::with_capacity(tasks.len());
    // For each task, each dependency with the place of its name.
    let mut dep_places: Vec<Vec<(usize, Range<usize>)>> = Vec::with_capacity(tasks.len());
    for (own, place) in places.iter().enumerate() {
        let mut list = Vec::new();
        for name in place
            .after
            .as_ref()
            .map_or(&[][..], |a| a.get_ref().as_slice())
        {
            let Some(&dep) = index.get(name.get_ref().as_str()) else {
                return Err(at(
                    name.span(),
                    format!("`after`: unknown task {:?}", name.get_ref()),
                ));
            };
            if dep == own {
                return Err(at(
                    name.span(),
                    format!("task {:?} cannot run after itself", name.get_ref()),
                ));
            }
            list.push((dep, name.span()));
        }
        deps.push(list.iter().map(|(d, _)| *d).collect());
        dep_places.push(list);
    }
    let graph = Graph::from_deps(deps);
    if let Some(cycle) = graph.find_cycle() {
        let named: Vec<&str> = cycle.iter().map(|&t| tasks[t].name.as_str()).collect();
        // The edge that closes the cycle: its first task runs after the one before the end.
        let (first, last) = (cycle[0], cycle[cycle.len() - 2]);
        let span = dep_places[first]
            .iter()
            .find(|(d, _)| *d == last)
            .map_or_else(|| places[first].name.clone(), |(_, s)| s.clone());
        return Err(at(span, format!("cycle: {}", named.join(" -> "))));
    }
    let order = graph
        .topo_order()
        .unwrap_or_else(|| (0..tasks.len()).collect());
    let mut new_index = vec![0u32; tasks.len()];
    for (position, &old) in order.iter().enumerate() {
        new_index[old] = u32::try_from(position).unwrap_or(u32::MAX);
    }
    for (old, task) in tasks.iter_mut().enumerate() {
        task.after = graph.deps(old).iter().map(|&d| new_index[d]).collect();
        task.after.sort_unstable();
    }
    let mut slots: Vec<Option<TaskSpec>> = tasks.into_iter().map(Some).collect();
    Ok(order.iter().filter_map(|&old| slots[old].take()).collect())
}

#[cfg(test)]
mod tests {
    use super::super::JobSpec;
    use super::*;

    fn parse(src: &str) -> Result<JobSpec, SpecError> {
        JobSpec::parse(src, "g.toml", "g")
    }

    fn task(name: &str, after: &[&str]) -> String {
        let after: Vec<String> = after.iter().map(|a| format!("{a:?}")).collect();
        format!(
            "[[task]]\nname = \"{name}\"\nrun = \"true\"\nafter = [{}]\n",
            after.join(", ")
        )
    }

    #[test]
    fn a_diamond_parses_sorted_with_its_keys() {
        let src = format!(
            "flow = \"graph\"\nmax_parallel = 2\non_failure = \"finish\"\n{}{}{}{}",
            task("d", &["b", "c"]),
            task("b", &["a"]),
            task("c", &["a"]),
            "[[task]]\nname = \"a\"\nrun = \"true\"\nretries = 2\nretry_delay = \"1s\"\nretry_backoff = 2.5\n",
        );
        let spec = parse(&src).expect("valid");
        assert_eq!(
            (spec.flow, spec.max_parallel, spec.on_failure),
            (Flow::Graph, 2, OnFailure::Finish)
        );
        let names: Vec<&str> = spec.tasks.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
        let after: Vec<&[u32]> = spec.tasks.iter().map(|t| t.after.as_slice()).collect();
        assert_eq!(after, [&[][..], &[0], &[0], &[1, 2]]);
        assert_eq!(spec.tasks[0].retry_delay, Duration::from_secs(1));
        assert_eq!(spec.tasks[0].retry_backoff, Backoff(2500));
        assert!(spec.check().is_ok(), "{:?}", spec.check());
        assert_eq!(
            Graph::of(&spec).levels(),
            vec![vec![0], vec![1, 2], vec![3]]
        );
    }

    #[test]
    fn defaults_are_a_linear_flow_of_sixteen_that_interrupts() {
        let spec = parse("[[task]]\nname = \"a\"\nrun = \"true\"\n").expect("valid");
        assert_eq!(
            (spec.flow, spec.max_parallel, spec.on_failure),
            (Flow::Linear, DEFAULT_MAX_PARALLEL, OnFailure::Interrupt)
        );
        assert_eq!(spec.tasks[0].retry_backoff, Backoff(1000));
        assert_eq!(spec.tasks[0].retry_delay, Duration::ZERO);
    }

    #[test]
    fn invalid_graphs_are_refused_where_they_stand() {
        let graph = "flow = \"graph\"\n";
        let cases = [
            // `after` in a linear job: at the list.
            (
                format!(
                    "[[task]]\nname = \"a\"\nrun = \"true\"\n{}",
                    task("b", &["a"])
                ),
                7,
                9,
                "needs `flow",
            ),
            (
                format!("{graph}{}", task("a", &["zz"])),
                5,
                10,
                "unknown task \"zz\"",
            ),
            (
                format!("{graph}{}", task("a", &["a"])),
                5,
                10,
                "after itself",
            ),
            (
                format!(
                    "{graph}{}{}{}",
                    task("a", &["c"]),
                    task("b", &["a"]),
                    task("c", &["b"])
                ),
                5,
                10,
                "cycle: a -> b -> c -> a",
            ),
            (
                format!("{graph}{}{}", task("x-y", &[]), task("X_Y", &[])),
                7,
                8,
                "RESULT_X_Y",
            ),
            (
                "max_parallel = 0\n[[task]]\nname = \"a\"\nrun = \"true\"\n".into(),
                1,
                16,
                "max_parallel",
            ),
            (
                "flow = \"tree\"\n[[task]]\nname = \"a\"\nrun = \"true\"\n".into(),
                1,
                8,
                "flow",
            ),
            (
                "on_failure = \"x\"\n[[task]]\nname = \"a\"\nrun = \"true\"\n".into(),
                1,
                14,
                "on_failure",
            ),
            (
                "[[task]]\nname = \"a\"\nrun = \"true\"\nretry_backoff = 0.5\n".into(),
                4,
                17,
                "retry_backoff",
            ),
            (
                "[[task]]\nname = \"a\"\nrun = \"true\"\nretry_delay = \"2h\"\n".into(),
                4,
                15,
                "retry_delay",
            ),
        ];
        for (src, line, column, needle) in cases {
            let err = parse(&src).expect_err(&src);
            assert_eq!((err.line, err.column), (line, column), "{src}: {err}");
            assert!(err.message.contains(needle), "{src}: {err}");
        }
    }

    #[test]
    fn check_refuses_what_parse_would() {
        let src = format!("flow = \"graph\"\n{}{}", task("a", &[]), task("b", &["a"]));
        let spec = parse(&src).expect("valid");
        let mut backwards = spec.clone();
        backwards.tasks[0].after = vec![1];
        assert!(backwards.check().is_err());
        let mut linear = spec.clone();
        linear.flow = Flow::Linear;
        assert!(linear.check().is_err());
        let mut wide = spec;
        wide.max_parallel = MAX_PARALLEL + 1;
        assert!(wide.check().is_err());
    }

    #[test]
    fn backoff_multiplies_each_retry_s_delay_up_to_a_bound() {
        let base = Duration::from_millis(100);
        assert_eq!(Backoff(2000).delay(base, 1), base);
        assert_eq!(Backoff(2000).delay(base, 3), Duration::from_millis(400));
        assert_eq!(Backoff(1000).delay(base, 9), base);
        assert_eq!(Backoff(100_000).delay(base, 50), MAX_RETRY_DELAY);
    }
}
