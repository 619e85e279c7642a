//! Property tests of the job file parser (`JobSpec::parse`).
//!
//! Checked: random text, TOML-like token soup and mutations of valid files (a byte range deleted,
//! a line duplicated, characters inserted, lines swapped, a character replaced) never panic, and
//! every error has a line within the file (at most its line count + 1), a column within that line
//! (at least 1), a message, and a `Display` of `origin:line:column: message`; a generated valid
//! file (random task names, commands, durations, env, retries, cwd, native kinds) parses to
//! exactly the values it was generated from.

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::Index;
use shared::spec::{
    CommandSpec, DEFAULT_CANCEL_TIMEOUT, DEFAULT_HEARTBEAT_TIMEOUT, DEFAULT_TERM_GRACE, Flow,
    Graph, JobSpec, MAX_TASK_NAME_LEN, SpecError, TaskBody, result_var,
};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// The invariant every parse must keep.

/// Parses `source` and checks that it either succeeds or fails with a well-placed error.
fn parse_checked(source: &str, origin: &str) -> Result<Result<JobSpec, SpecError>, TestCaseError> {
    let result = JobSpec::parse(source, origin, "default-job");
    if let Err(err) = &result {
        check_error(source, origin, err)?;
    }
    Ok(result)
}

fn check_error(source: &str, origin: &str, err: &SpecError) -> Result<(), TestCaseError> {
    let lines: Vec<&str> = source.split('\n').collect();
    let line_count = source.lines().count();
    prop_assert!(err.line >= 1, "line 0: {:?}", err);
    prop_assert!(err.column >= 1, "column 0: {:?}", err);
    prop_assert!(
        err.line <= line_count + 1,
        "line {} beyond {} lines: {:?}",
        err.line,
        line_count,
        err
    );
    // `split('\n')` has one more piece than there are newlines, so the line always exists.
    let line_chars = lines
        .get(err.line - 1)
        .map_or(0, |line| line.chars().count());
    prop_assert!(
        err.column <= line_chars + 1,
        "column {} beyond the {} characters of line {}: {:?}",
        err.column,
        line_chars,
        err.line,
        err
    );
    prop_assert!(!err.message.trim().is_empty(), "empty message: {:?}", err);
    prop_assert_eq!(&err.origin, origin);
    let shown = err.to_string();
    prop_assert!(shown.starts_with(&format!("{origin}:")), "{}", shown);
    prop_assert_eq!(
        shown,
        format!("{origin}:{}:{}: {}", err.line, err.column, err.message)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Writing TOML values.

/// A TOML string for `text`: a basic string with escapes, or a literal string when it can be one.
fn quote(text: &str, literal: bool) -> String {
    let can_be_literal = !text.contains('\'') && !text.chars().any(char::is_control);
    if literal && can_be_literal {
        return format!("'{text}'");
    }
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Spacing around `=` and at the end of a line, with an optional comment.
#[derive(Clone, Debug)]
struct Style {
    literal: bool,
    before_eq: &'static str,
    after_eq: &'static str,
    comment: Option<String>,
}

fn style() -> impl Strategy<Value = Style> {
    (
        any::<bool>(),
        prop::sample::select(vec!["", " ", "\t", "  "]),
        prop::sample::select(vec!["", " ", "\t", "  "]),
        proptest::option::weighted(0.2, "[ -~]{0,20}"),
    )
        .prop_map(|(literal, before_eq, after_eq, comment)| Style {
            literal,
            before_eq,
            after_eq,
            comment,
        })
}

impl Style {
    fn line(&self, out: &mut String, key: &str, value: &str) {
        out.push_str(key);
        out.push_str(self.before_eq);
        out.push('=');
        out.push_str(self.after_eq);
        out.push_str(value);
        if let Some(comment) = &self.comment {
            out.push_str(" #");
            out.push_str(comment);
        }
        out.push('\n');
    }

    fn string(&self, text: &str) -> String {
        quote(text, self.literal)
    }

    fn array(&self, items: &[String]) -> String {
        let items: Vec<String> = items.iter().map(|item| self.string(item)).collect();
        format!("[{}]", items.join(", "))
    }

    fn inline_table(&self, map: &BTreeMap<String, String>) -> String {
        let pairs: Vec<String> = map
            .iter()
            .map(|(k, v)| format!("{} = {}", quote(k, false), self.string(v)))
            .collect();
        format!("{{ {} }}", pairs.join(", "))
    }
}

// ---------------------------------------------------------------------------------------------
// Generated valid job files, and the values they must parse to.

/// A positive duration written in one to three parts (`1m30s`), with the value it means.
fn duration() -> impl Strategy<Value = (String, Duration)> {
    let unit = prop::sample::select(vec!["ms", "s", "m", "h"]);
    vec((1u64..5000, unit), 1..4).prop_map(|parts| {
        let mut text = String::new();
        let mut total = Duration::ZERO;
        for (value, unit) in parts {
            let _ = write!(text, "{value}{unit}");
            total += match unit {
                "ms" => Duration::from_millis(value),
                "s" => Duration::from_secs(value),
                "m" => Duration::from_secs(value * 60),
                _ => Duration::from_secs(value * 3600),
            };
        }
        (text, total)
    })
}

/// Any text, with unicode and the characters that need escaping.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9 ./_-]{0,16}",
        2 => "\\PC{0,24}",
        1 => "[\"'\\\\\n\t\r#=\\[\\]{} a]{0,12}",
        1 => any::<String>(),
    ]
}

fn non_blank_text() -> impl Strategy<Value = String> {
    any_text().prop_filter("not blank", |text| !text.trim().is_empty())
}

fn task_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,8}",
        "[A-Za-z0-9._-]{1,64}",
        proptest::string::string_regex(&format!("[a-z]{{{MAX_TASK_NAME_LEN}}}"))
            .expect("a valid regex"),
    ]
}

fn command() -> impl Strategy<Value = CommandSpec> {
    prop_oneof![
        non_blank_text().prop_map(CommandSpec::Shell),
        (
            any_text().prop_filter("program not empty", |p| !p.is_empty()),
            vec(any_text(), 0..4)
        )
            .prop_map(|(program, mut args)| {
                args.insert(0, program);
                CommandSpec::Argv(args)
            }),
    ]
}

fn env() -> impl Strategy<Value = BTreeMap<String, String>> {
    btree_map(any_text(), any_text(), 0..4)
}

/// A `[task.params]` value, with the JSON it must become.
fn param() -> impl Strategy<Value = (String, serde_json::Value)> {
    prop_oneof![
        any_text().prop_map(|text| (quote(&text, false), serde_json::Value::from(text))),
        any::<i64>().prop_map(|n| (n.to_string(), serde_json::Value::from(n))),
        any::<bool>().prop_map(|b| (b.to_string(), serde_json::Value::from(b))),
    ]
}

#[derive(Clone, Debug)]
enum GenBody {
    Command(CommandSpec, Option<CommandSpec>),
    Native {
        kind: String,
        params: BTreeMap<String, (String, serde_json::Value)>,
    },
}

#[derive(Clone, Debug)]
struct GenTask {
    name: String,
    body: GenBody,
    timeout: Option<(String, Duration)>,
    revert_timeout: Option<(String, Duration)>,
    retries: Option<u32>,
    cwd: Option<String>,
    env: BTreeMap<String, String>,
    env_as_table: bool,
    style: Style,
}

fn task(native: bool) -> BoxedStrategy<GenTask> {
    let body = if native {
        prop_oneof![
            3 => (command(), proptest::option::of(command()))
                .prop_map(|(run, revert)| GenBody::Command(run, revert)),
            1 => ("[a-z][a-z_]{0,10}", btree_map("[a-z]{1,6}", param(), 0..4))
                .prop_map(|(kind, params)| GenBody::Native { kind, params }),
        ]
        .boxed()
    } else {
        (command(), proptest::option::of(command()))
            .prop_map(|(run, revert)| GenBody::Command(run, revert))
            .boxed()
    };
    (
        task_name(),
        body,
        (
            proptest::option::of(duration()),
            proptest::option::of(duration()),
        ),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any_text().prop_filter("cwd not empty", |c| !c.is_empty())),
        env(),
        any::<bool>(),
        style(),
    )
        .prop_map(
            |(name, body, (timeout, revert_timeout), retries, cwd, env, env_as_table, style)| {
                GenTask {
                    name,
                    body,
                    timeout,
                    revert_timeout,
                    retries,
                    cwd,
                    env,
                    env_as_table,
                    style,
                }
            },
        )
        .boxed()
}

/// A `[limits]` table: each value as written, with what it must parse to.
#[derive(Clone, Debug, Default)]
struct GenLimits {
    memory: Option<(String, u64)>,
    pids: Option<u64>,
    cpu: Option<(String, u32)>,
    nofile: Option<u64>,
    core: Option<(String, u64)>,
    cpu_time: Option<(String, Duration)>,
    user: Option<String>,
    group: Option<String>,
}

/// A size, as a TOML integer or a string with a unit, and its value in bytes.
fn size() -> impl Strategy<Value = (String, u64)> {
    let unit = prop::sample::select(vec![
        ("", 0),
        ("B", 0),
        ("K", 10),
        ("k", 10),
        ("KiB", 10),
        ("M", 20),
        ("m", 20),
        ("MiB", 20),
        ("G", 30),
        ("GiB", 30),
        ("T", 40),
        ("t", 40),
    ]);
    prop_oneof![
        (0..=i64::MAX).prop_map(|n| (n.to_string(), n.unsigned_abs())),
        (0u64..100_000, unit, prop::sample::select(vec!["", " "])).prop_map(
            |(n, (unit, shift), space)| (quote(&format!("{n}{space}{unit}"), false), n << shift)
        ),
    ]
}

/// A CPU share: `"P%"`, a whole number of CPUs (integer or string), or `"A.B"` CPUs.
fn cpu() -> impl Strategy<Value = (String, u32)> {
    prop_oneof![
        (1u32..=1000).prop_map(|p| (format!("\"{p}%\""), p * 10)),
        (1u32..=4096).prop_map(|n| (n.to_string(), n * 1000)),
        (1u32..=4096).prop_map(|n| (format!("\"{n}\""), n * 1000)),
        (0u32..64, 1u32..10).prop_map(|(a, b)| (format!("\"{a}.{b}\""), a * 1000 + b * 100)),
    ]
}

fn limits() -> BoxedStrategy<GenLimits> {
    let positive = || proptest::option::of((1..=i64::MAX).prop_map(i64::unsigned_abs));
    (
        (
            proptest::option::of(size()),
            positive(),
            proptest::option::of(cpu()),
            positive(),
        ),
        (
            proptest::option::of(size()),
            proptest::option::of(duration()),
            proptest::option::of(non_blank_text()),
            proptest::option::of(non_blank_text()),
        ),
    )
        .prop_map(
            |((memory, pids, cpu, nofile), (core, cpu_time, user, group))| GenLimits {
                memory,
                pids,
                cpu,
                nofile,
                core,
                cpu_time,
                user,
                group,
            },
        )
        .boxed()
}

impl GenLimits {
    fn render(&self, out: &mut String, s: &Style) {
        out.push_str("\n[limits]\n");
        let mut line = |key: &str, value: Option<String>| {
            if let Some(value) = value {
                s.line(out, key, &value);
            }
        };
        line("memory", self.memory.as_ref().map(|(text, _)| text.clone()));
        line("pids", self.pids.map(|n| n.to_string()));
        line("cpu", self.cpu.as_ref().map(|(text, _)| text.clone()));
        line("nofile", self.nofile.map(|n| n.to_string()));
        line("core", self.core.as_ref().map(|(text, _)| text.clone()));
        line(
            "cpu_time",
            self.cpu_time.as_ref().map(|(text, _)| s.string(text)),
        );
        line("user", self.user.as_ref().map(|text| s.string(text)));
        line("group", self.group.as_ref().map(|text| s.string(text)));
    }

    fn check(&self, got: &shared::limits::Limits) -> Result<(), TestCaseError> {
        prop_assert_eq!(got.memory, self.memory.as_ref().map(|(_, n)| *n));
        prop_assert_eq!(got.pids, self.pids);
        prop_assert_eq!(got.cpu_millis, self.cpu.as_ref().map(|(_, n)| *n));
        prop_assert_eq!(got.nofile, self.nofile);
        prop_assert_eq!(got.core, self.core.as_ref().map(|(_, n)| *n));
        prop_assert_eq!(got.cpu_time, self.cpu_time.as_ref().map(|(_, d)| *d));
        prop_assert_eq!(&got.user, &self.user);
        prop_assert_eq!(&got.group, &self.group);
        Ok(())
    }
}

#[derive(Clone, Debug)]
struct GenJob {
    name: Option<String>,
    timeout: Option<(String, Duration)>,
    cancel_timeout: Option<(String, Duration)>,
    term_grace: Option<(String, Duration)>,
    worker: Option<String>,
    heartbeat_timeout: Option<(String, Duration)>,
    kill_unresponsive: Option<bool>,
    limits: Option<GenLimits>,
    env: BTreeMap<String, String>,
    env_as_table: bool,
    tasks: Vec<GenTask>,
    style: Style,
}

fn job() -> BoxedStrategy<GenJob> {
    let worker = proptest::option::of(non_blank_text());
    worker
        .prop_flat_map(|worker| {
            (
                (
                    proptest::option::of(non_blank_text()),
                    proptest::option::of(duration()),
                    proptest::option::of(duration()),
                    proptest::option::of(duration()),
                    Just(worker.clone()),
                ),
                (
                    proptest::option::of(duration()),
                    proptest::option::of(any::<bool>()),
                    proptest::option::of(limits()),
                ),
                (
                    env(),
                    any::<bool>(),
                    vec(task(worker.is_some()), 1..5).prop_filter("unique names", |tasks| {
                        // Unique as result variables too (`RESULT_<NAME>`), which implies unique.
                        let names: BTreeSet<String> =
                            tasks.iter().map(|t| result_var(&t.name)).collect();
                        names.len() == tasks.len()
                    }),
                    style(),
                ),
            )
        })
        .prop_map(
            |(
                (name, timeout, cancel_timeout, term_grace, worker),
                (heartbeat_timeout, kill_unresponsive, limits),
                (env, env_as_table, tasks, style),
            )| {
                let cancel = cancel_timeout
                    .as_ref()
                    .map_or(DEFAULT_CANCEL_TIMEOUT, |(_, d)| *d);
                // A grace that is not shorter than the cancel timeout is an error: leave it out.
                let term_grace = term_grace.filter(|(_, grace)| *grace < cancel);
                // `group` without `user` is an error, and so is a per-process limit (rlimits,
                // identity) in a job with a native task: leave them out.
                let has_native = tasks
                    .iter()
                    .any(|t| matches!(t.body, GenBody::Native { .. }));
                let limits = limits.map(|mut l| {
                    if l.user.is_none() {
                        l.group = None;
                    }
                    if has_native {
                        (l.user, l.group, l.nofile, l.core, l.cpu_time) =
                            (None, None, None, None, None);
                    }
                    l
                });
                GenJob {
                    name,
                    timeout,
                    cancel_timeout,
                    term_grace,
                    worker,
                    heartbeat_timeout,
                    kill_unresponsive,
                    limits,
                    env,
                    env_as_table,
                    tasks,
                    style,
                }
            },
        )
        .boxed()
}

fn command_value(style: &Style, command: &CommandSpec) -> String {
    match command {
        CommandSpec::Shell(script) => style.string(script),
        CommandSpec::Argv(argv) => style.array(argv),
    }
}

impl GenJob {
    fn render(&self) -> String {
        let s = &self.style;
        let mut out = String::new();
        if let Some(comment) = &s.comment {
            let _ = writeln!(out, "#{comment}");
        }
        if let Some(name) = &self.name {
            s.line(&mut out, "name", &s.string(name));
        }
        if let Some((text, _)) = &self.timeout {
            s.line(&mut out, "timeout", &s.string(text));
        }
        if let Some((text, _)) = &self.cancel_timeout {
            s.line(&mut out, "cancel_timeout", &s.string(text));
        }
        if let Some((text, _)) = &self.term_grace {
            s.line(&mut out, "term_grace", &s.string(text));
        }
        if let Some(worker) = &self.worker {
            s.line(&mut out, "worker", &s.string(worker));
        }
        if let Some((text, _)) = &self.heartbeat_timeout {
            s.line(&mut out, "heartbeat_timeout", &s.string(text));
        }
        if let Some(kill) = self.kill_unresponsive {
            s.line(&mut out, "kill_unresponsive", &kill.to_string());
        }
        if !self.env.is_empty() {
            if self.env_as_table {
                out.push_str("\n[env]\n");
                for (k, v) in &self.env {
                    s.line(&mut out, &quote(k, false), &s.string(v));
                }
            } else {
                s.line(&mut out, "env", &s.inline_table(&self.env));
            }
        }
        if let Some(limits) = &self.limits {
            limits.render(&mut out, s);
        }
        for task in &self.tasks {
            task.render(&mut out);
        }
        out
    }

    fn check(&self, spec: &JobSpec) -> Result<(), TestCaseError> {
        prop_assert_eq!(
            spec.name.as_str(),
            self.name.as_deref().unwrap_or("default-job")
        );
        prop_assert_eq!(spec.timeout, self.timeout.as_ref().map(|(_, d)| *d));
        let cancel = self
            .cancel_timeout
            .as_ref()
            .map_or(DEFAULT_CANCEL_TIMEOUT, |(_, d)| *d);
        prop_assert_eq!(spec.cancel_timeout, cancel);
        let grace = match &self.term_grace {
            Some((_, grace)) => *grace,
            None if DEFAULT_TERM_GRACE < cancel => DEFAULT_TERM_GRACE,
            None => cancel / 2,
        };
        prop_assert_eq!(spec.term_grace, grace);
        prop_assert!(spec.term_grace < spec.cancel_timeout);
        prop_assert_eq!(&spec.worker, &self.worker);
        prop_assert_eq!(
            spec.heartbeat_timeout,
            self.heartbeat_timeout
                .as_ref()
                .map_or(DEFAULT_HEARTBEAT_TIMEOUT, |(_, d)| *d)
        );
        prop_assert_eq!(
            spec.kill_unresponsive,
            self.kill_unresponsive.unwrap_or(false)
        );
        self.limits
            .clone()
            .unwrap_or_default()
            .check(&spec.limits)?;
        prop_assert_eq!(&spec.env, &self.env);
        prop_assert_eq!(spec.tasks.len(), self.tasks.len());
        for (got, want) in spec.tasks.iter().zip(&self.tasks) {
            prop_assert_eq!(&got.name, &want.name);
            match &want.body {
                GenBody::Command(run, revert) => prop_assert_eq!(
                    &got.body,
                    &TaskBody::Command {
                        run: run.clone(),
                        revert: revert.clone(),
                    }
                ),
                GenBody::Native { kind, params } => {
                    let TaskBody::Native {
                        kind: got_kind,
                        params_json,
                    } = &got.body
                    else {
                        return Err(TestCaseError::fail(format!("{:?} is not native", got.body)));
                    };
                    prop_assert_eq!(got_kind, kind);
                    let got_params: serde_json::Value = serde_json::from_str(params_json)
                        .map_err(|err| TestCaseError::fail(format!("{err}: {params_json}")))?;
                    let want_params: serde_json::Map<String, serde_json::Value> = params
                        .iter()
                        .map(|(k, (_, v))| (k.clone(), v.clone()))
                        .collect();
                    prop_assert_eq!(got_params, serde_json::Value::Object(want_params));
                }
            }
            prop_assert_eq!(got.timeout, want.timeout.as_ref().map(|(_, d)| *d));
            prop_assert_eq!(
                got.revert_timeout,
                want.revert_timeout.as_ref().map(|(_, d)| *d)
            );
            prop_assert_eq!(
                spec.revert_timeout(got),
                got.revert_timeout.unwrap_or(spec.cancel_timeout)
            );
            prop_assert_eq!(got.retries, want.retries.unwrap_or(0));
            prop_assert_eq!(&got.cwd, &want.cwd);
            prop_assert_eq!(&got.env, &want.env);
        }
        Ok(())
    }
}

impl GenTask {
    fn render(&self, out: &mut String) {
        let s = &self.style;
        out.push_str("\n[[task]]\n");
        s.line(out, "name", &s.string(&self.name));
        match &self.body {
            GenBody::Command(run, revert) => {
                s.line(out, "run", &command_value(s, run));
                if let Some(revert) = revert {
                    s.line(out, "revert", &command_value(s, revert));
                }
            }
            GenBody::Native { kind, .. } => s.line(out, "kind", &s.string(kind)),
        }
        if let Some((text, _)) = &self.timeout {
            s.line(out, "timeout", &s.string(text));
        }
        if let Some((text, _)) = &self.revert_timeout {
            s.line(out, "revert_timeout", &s.string(text));
        }
        if let Some(retries) = self.retries {
            s.line(out, "retries", &retries.to_string());
        }
        if let Some(cwd) = &self.cwd {
            s.line(out, "cwd", &s.string(cwd));
        }
        if !self.env.is_empty() && !self.env_as_table {
            s.line(out, "env", &s.inline_table(&self.env));
        }
        if let GenBody::Native { params, .. } = &self.body {
            if !params.is_empty() {
                out.push_str("[task.params]\n");
                for (k, (value, _)) in params {
                    s.line(out, k, value);
                }
            }
        }
        if !self.env.is_empty() && self.env_as_table {
            out.push_str("[task.env]\n");
            for (k, v) in &self.env {
                s.line(out, &quote(k, false), &s.string(v));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Random and mutated input.

const TOKENS: &[&str] = &[
    "[[task]]",
    "[task]",
    "[env]",
    "[task.env]",
    "[task.params]",
    "[[task.params]]",
    "[limits]",
    "memory",
    "pids",
    "cpu",
    "nofile",
    "core",
    "cpu_time",
    "user",
    "group",
    "heartbeat_timeout",
    "kill_unresponsive",
    "\"64M\"",
    "\"50%\"",
    "\"1.5\"",
    "\"18446744073709551615T\"",
    "name",
    "run",
    "revert",
    "kind",
    "params",
    "worker",
    "timeout",
    "revert_timeout",
    "cancel_timeout",
    "term_grace",
    "retries",
    "cwd",
    "env",
    " = ",
    "=",
    "\"",
    "'",
    "\"\"\"",
    "'''",
    "\n",
    "\n",
    "\r\n",
    " ",
    "\t",
    "#",
    "[",
    "]",
    "{",
    "}",
    ",",
    ".",
    "\"5s\"",
    "\"0s\"",
    "\"1m30s\"",
    "\"99999999999999999999h\"",
    "\"\"",
    "\"  \"",
    "\"true\"",
    "[\"ls\", \"-l\"]",
    "[\"\"]",
    "[1]",
    "[]",
    "{}",
    "1",
    "-1",
    "4294967296",
    "true",
    "1979-05-27T07:32:00Z",
    "3.14",
    "inf",
    "nan",
    "\\u0000",
    "\\",
    "é",
    "日本",
    "\u{1F600}",
    "\u{FEFF}",
    "\u{0}",
];

fn token_soup() -> impl Strategy<Value = String> {
    vec(prop::sample::select(TOKENS), 0..80).prop_map(|tokens| tokens.concat())
}

/// Lines that look like a job file: headers, `key = value` with plausible and wrong values.
fn plausible_lines() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "name",
        "run",
        "revert",
        "kind",
        "params",
        "worker",
        "timeout",
        "revert_timeout",
        "cancel_timeout",
        "term_grace",
        "retries",
        "cwd",
        "env",
        "heartbeat_timeout",
        "kill_unresponsive",
        "memory",
        "pids",
        "cpu",
        "nofile",
        "core",
        "cpu_time",
        "user",
        "group",
        "runn",
        "\"name\"",
        "a.b",
    ]);
    let value = prop::sample::select(vec![
        "\"a\"",
        "\"b\"",
        "\"a b\"",
        "\"\"",
        "\" \"",
        "\"true\"",
        "\"5s\"",
        "\"0s\"",
        "\"2s\"",
        "\"1h\"",
        "\"5 parsecs\"",
        "[\"ls\"]",
        "[]",
        "[\"\"]",
        "[1, 2]",
        "5",
        "-1",
        "0",
        "true",
        "{ A = \"b\" }",
        "{ A = 1 }",
        "{}",
        "\"64M\"",
        "\"12X\"",
        "\"50%\"",
        "\"0%\"",
        "\"1.5\"",
        "1.5",
        "nan",
        "inf",
        "-0.0",
        "9223372036854775807",
        "1979-05-27",
        "'lit'",
        "\"\"\"multi\nline\"\"\"",
    ]);
    let line = prop_oneof![
        4 => (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        2 => Just("[[task]]".to_owned()),
        1 => prop::sample::select(vec![
            "[env]",
            "[task.env]",
            "[task.params]",
            "[task]",
            "[[env]]",
            "[limits]",
        ])
            .prop_map(str::to_owned),
        1 => Just(String::new()),
        1 => "#[ -~]{0,10}",
    ];
    vec(line, 0..24).prop_map(|lines| lines.join("\n"))
}

fn random_source() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "\\PC{0,200}",
        vec(any::<char>(), 0..300).prop_map(String::from_iter),
        token_soup(),
        plausible_lines(),
    ]
}

#[derive(Clone, Debug)]
enum Mutation {
    DeleteBytes(Index, usize),
    DuplicateLine(Index),
    Insert(Index, String),
    SwapLines(Index, Index),
    Replace(Index, char),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let insertion = prop_oneof![
        prop::sample::select(TOKENS).prop_map(str::to_owned),
        "\\PC{1,4}",
        any::<char>().prop_map(String::from),
    ];
    prop_oneof![
        (any::<Index>(), 1usize..24).prop_map(|(at, len)| Mutation::DeleteBytes(at, len)),
        any::<Index>().prop_map(Mutation::DuplicateLine),
        (any::<Index>(), insertion).prop_map(|(at, text)| Mutation::Insert(at, text)),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        (
            any::<Index>(),
            prop_oneof![
                prop::sample::select(vec!['"', '\'', '[', ']', '=', '\n', '#', '\\', ' ', '{']),
                any::<char>(),
            ]
        )
            .prop_map(|(at, c)| Mutation::Replace(at, c)),
    ]
}

/// The largest char boundary at or before `at`.
fn floor_boundary(text: &str, at: usize) -> usize {
    (0..=at.min(text.len()))
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0)
}

fn apply(source: &str, mutation: &Mutation) -> String {
    let mut lines: Vec<&str> = source.split('\n').collect();
    match mutation {
        Mutation::DeleteBytes(at, len) => {
            let start = floor_boundary(source, at.index(source.len() + 1));
            let end = floor_boundary(source, start + len);
            let end = if end <= start {
                // The range held part of one wide char: take the whole char.
                source[start..]
                    .chars()
                    .next()
                    .map_or(start, |c| start + c.len_utf8())
            } else {
                end
            };
            format!("{}{}", &source[..start], &source[end..])
        }
        Mutation::DuplicateLine(at) => {
            let i = at.index(lines.len());
            lines.insert(i, lines[i]);
            lines.join("\n")
        }
        Mutation::Insert(at, text) => {
            let i = floor_boundary(source, at.index(source.len() + 1));
            format!("{}{}{}", &source[..i], text, &source[i..])
        }
        Mutation::SwapLines(a, b) => {
            let (a, b) = (a.index(lines.len()), b.index(lines.len()));
            lines.swap(a, b);
            lines.join("\n")
        }
        Mutation::Replace(at, c) => {
            let mut chars: Vec<char> = source.chars().collect();
            if !chars.is_empty() {
                let i = at.index(chars.len());
                chars[i] = *c;
            }
            chars.into_iter().collect()
        }
    }
}

const SEEDS: &[&str] = &[
    "heartbeat_timeout = \"5s\"\nkill_unresponsive = true\n[limits]\nmemory = \"64M\"\npids = 50\ncpu = \"50%\"\nnofile = 256\ncore = 0\ncpu_time = \"2s\"\nuser = \"nobody\"\n[[task]]\nname = \"a\"\nrun = \"true\"\n",
    "timeout = \"10m\"\n[env]\nREGION = \"eu\"\n\n[[task]]\nname = \"fetch\"\nrun = \"echo hi\"\nrevert = [\"rm\", \"-f\", \"/tmp/x\"]\ntimeout = \"1m\"\nretries = 2\ncwd = \"/tmp\"\nenv = { MODE = \"fast\" }\n\n[[task]]\nname = \"b.2_x-y\"\nrun = [\"true\"]\n",
    "name = \"deploy\"\ncancel_timeout = \"2s\"\nterm_grace = \"1s\"\n[[task]]\nname = \"a\"\nrun = \"true\"\n",
    "worker = \"my-worker\"\n[[task]]\nname = \"dl\"\nkind = \"download\"\n[task.params]\nurl = \"x\"\nsize = 3\n[[task]]\nname = \"c\"\nrun = ['sh', '-c', 'exit 1']\n",
    "[[task]]\nname = \"é\"\nrun = \"\"\"\nmulti\nline\n\"\"\"\n",
];

fn base_source() -> BoxedStrategy<String> {
    prop_oneof![
        1 => prop::sample::select(SEEDS).prop_map(str::to_owned),
        2 => job().prop_map(|job| job.render()),
    ]
    .boxed()
}

fn origin() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("job.toml".to_owned()),
        Just("<stdin>".to_owned()),
        "[a-z/._-]{1,20}",
        "\\PC{1,10}",
    ]
}

fn cases(n: u32) -> ProptestConfig {
    // No regression files next to the tests: a failure prints its minimal input instead.
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn random_text_never_panics_and_errors_are_placed(
        source in random_source(),
        origin in origin(),
    ) {
        let _ = parse_checked(&source, &origin)?;
    }

    #[test]
    fn mutated_files_never_panic_and_errors_are_placed(
        base in base_source(),
        mutations in vec(mutation(), 1..5),
        origin in origin(),
    ) {
        let mut source = base;
        for mutation in &mutations {
            source = apply(&source, mutation);
            let _ = parse_checked(&source, &origin)?;
        }
    }

    #[test]
    fn generated_valid_file_parses_to_what_was_generated(job in job()) {
        let source = job.render();
        match parse_checked(&source, "gen.toml")? {
            Ok(spec) => {
                job.check(&spec)?;
                // What parse accepts, `JobSpec::check` accepts once paths are resolved.
                let mut resolved = spec.clone();
                for task in &mut resolved.tasks {
                    if let Some(cwd) = &mut task.cwd {
                        cwd.insert(0, '/');
                    }
                }
                prop_assert_eq!(resolved.check(), Ok(()));
            }
            Err(err) => prop_assert!(false, "{}\n--- source:\n{}", err, source),
        }
    }

    #[test]
    fn term_grace_not_shorter_than_cancel_timeout_is_rejected_on_its_line(
        cancel in duration(),
        extra in 0u64..10_000,
    ) {
        let grace = cancel.1 + Duration::from_millis(extra);
        let source = format!(
            "cancel_timeout = \"{}\"\nterm_grace = \"{}ms\"\n[[task]]\nname = \"a\"\nrun = \"true\"\n",
            cancel.0,
            grace.as_millis()
        );
        let err = parse_checked(&source, "job.toml")?
            .err()
            .ok_or_else(|| TestCaseError::fail(format!("accepted:\n{source}")))?;
        prop_assert_eq!((err.line, err.column), (2, 14));
        prop_assert!(err.message.contains("shorter"), "{}", err.message);
    }

    #[test]
    fn invalid_task_name_is_rejected_on_its_line(
        prefix in "[a-z]{0,4}",
        bad in prop_oneof![
            "[ !@$%^&*()+/:;<>?\u{e9}]",
            proptest::string::string_regex(&format!("[a-z]{{{}}}", MAX_TASK_NAME_LEN + 1))
                .expect("a valid regex"),
        ],
        blank_lines in 0usize..4,
    ) {
        let name = format!("{prefix}{bad}");
        let source = format!(
            "{}[[task]]\nname = {}\nrun = \"true\"\n",
            "\n".repeat(blank_lines),
            quote(&name, false)
        );
        let err = parse_checked(&source, "job.toml")?
            .err()
            .ok_or_else(|| TestCaseError::fail(format!("accepted:\n{source}")))?;
        prop_assert_eq!((err.line, err.column), (blank_lines + 2, 8));
    }
}

// ---------------------------------------------------------------------------------------------
// Graphs (issue 12): random DAGs parse, random cycles are refused with the cycle named.

/// A `[[task]]` of a graph job, running after `after`.
fn graph_task(name: &str, after: &[String]) -> String {
    let after: Vec<String> = after.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "[[task]]\nname = \"{name}\"\nrun = \"true\"\nafter = [{}]\n",
        after.join(", ")
    )
}

/// `n` tasks, each after a random subset of the ones before it (so acyclic), written in the
/// order `file_order` (a permutation: forward references included).
fn dag() -> impl Strategy<Value = (Vec<Vec<usize>>, Vec<usize>)> {
    (1usize..14).prop_flat_map(|n| {
        let edges = (0..n)
            .map(|i| proptest::sample::subsequence((0..i).collect::<Vec<_>>(), 0..=i.min(4)))
            .collect::<Vec<_>>();
        let order = Just((0..n).collect::<Vec<_>>()).prop_shuffle();
        (edges, order)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_dags_parse_in_a_topological_order((deps, file_order) in dag()) {
        let name = |i: usize| format!("t{i}");
        let mut source = String::from("flow = \"graph\"\n");
        for &task in &file_order {
            let after: Vec<String> = deps[task].iter().map(|&d| name(d)).collect();
            source.push_str(&graph_task(&name(task), &after));
        }
        let spec = parse_checked(&source, "g.toml")?
            .map_err(|err| TestCaseError::fail(format!("{err}\n{source}")))?;
        prop_assert_eq!(spec.flow, Flow::Graph);
        prop_assert!(spec.check().is_ok(), "{:?}", spec.check());
        prop_assert_eq!(spec.tasks.len(), deps.len());
        for (own, task) in spec.tasks.iter().enumerate() {
            let original: usize = task.name[1..].parse().map_err(|_| TestCaseError::fail("name"))?;
            let mut got: Vec<String> = task
                .after
                .iter()
                .map(|&a| spec.tasks[a as usize].name.clone())
                .collect();
            got.sort();
            let mut wanted: Vec<String> = deps[original].iter().map(|&d| name(d)).collect();
            wanted.sort();
            prop_assert_eq!(got, wanted);
            prop_assert!(task.after.iter().all(|&a| (a as usize) < own));
        }
        let levels = Graph::of(&spec).levels();
        prop_assert_eq!(levels.iter().map(Vec::len).sum::<usize>(), deps.len());
    }

    #[test]
    fn random_cycles_are_refused_with_the_cycle_named(
        cycle_len in 2usize..6,
        extra in 0usize..5,
        seed in proptest::collection::vec(any::<u8>(), 16),
        file_order in Just(()).prop_flat_map(|()| Just((0..11).collect::<Vec<usize>>()).prop_shuffle()),
    ) {
        // c0 -> c1 -> ... -> c0 (each after the one before, c0 after the last); extra tasks
        // after cycle members or earlier extras only, which adds no cycle.
        let cycle: Vec<String> = (0..cycle_len).map(|i| format!("c{i}")).collect();
        let mut tasks: Vec<(String, Vec<String>)> = (0..cycle_len)
            .map(|i| (cycle[i].clone(), vec![cycle[(i + cycle_len - 1) % cycle_len].clone()]))
            .collect();
        for (e, &byte) in seed.iter().enumerate().take(extra) {
            let pick = usize::from(byte) % (cycle_len + e);
            let dep = if pick < cycle_len { cycle[pick].clone() } else { format!("x{}", pick - cycle_len) };
            tasks.push((format!("x{e}"), vec![dep]));
        }
        let mut source = String::from("flow = \"graph\"\n");
        for &i in file_order.iter().filter(|&&i| i < tasks.len()) {
            source.push_str(&graph_task(&tasks[i].0, &tasks[i].1));
        }
        let err = parse_checked(&source, "g.toml")?
            .err()
            .ok_or_else(|| TestCaseError::fail(format!("accepted:\n{source}")))?;
        let named = err
            .message
            .strip_prefix("cycle: ")
            .ok_or_else(|| TestCaseError::fail(format!("{err}")))?;
        let named: Vec<&str> = named.split(" -> ").collect();
        prop_assert_eq!(named.len(), cycle_len + 1, "{}", err);
        prop_assert_eq!(named.first(), named.last());
        // A rotation of c0 -> c1 -> ... in that direction.
        let start: usize = named[0][1..].parse().map_err(|_| TestCaseError::fail("name"))?;
        for (k, name) in named.iter().enumerate() {
            prop_assert_eq!(name.to_string(), format!("c{}", (start + k) % cycle_len));
        }
    }
}
