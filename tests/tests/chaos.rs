//! Chaos: a seeded driver SIGKILLs the daemon, conductors and task processes at random while a
//! daemon runs several jobs, and sometimes cancels or kills a job through the CLI; after each
//! round every job must settle terminal and the store must agree with what the tasks did (each
//! task appends `exec`/`done` lines to its job's marker file, each revert `revert`/`reverted`).
//!
//! `CHAOS_SEED=N` replays a run (the seed is printed first); `CHAOS_ROUNDS=N` runs more rounds
//! (default [`DEFAULT_ROUNDS`], about a minute on 2 cores). Build the binaries first:
//! `cargo build --workspace --bins`.

use nix::sys::signal::Signal;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tests::{
    DEADLINE, GONE_DEADLINE, JOB_LIVE_STATES, JOB_TERMINAL_STATES, MARK_VAR, OWNER_VAR, Run,
    TestEnv, cli_at, env_of, is_alive, send_signal, sigkill_run, start_daemon_at, wait_for,
};

/// Rounds when `CHAOS_ROUNDS` is not set.
const DEFAULT_ROUNDS: u32 = 24;
/// Jobs per round (each 3 or 4 tasks).
const JOBS_PER_ROUND: usize = 4;
/// How long a round may take to settle (every job terminal) after its last fault.
const SETTLE_DEADLINE: Duration = Duration::from_secs(60);

/// xorshift64*: small, seeded, no crate.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so that 0 and nearby seeds give good states.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Self(if z == 0 { 1 } else { z })
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn index(&mut self, len: usize) -> usize {
        usize::try_from(self.below(u64::try_from(len).expect("len fits in u64")))
            .expect("below(len) fits in usize")
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from + 1))
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// One task of a generated job.
#[derive(Clone, Debug)]
struct TaskPlan {
    name: String,
    retries: u32,
    has_revert: bool,
}

/// One generated job.
#[derive(Clone, Debug)]
struct JobPlan {
    name: String,
    tasks: Vec<TaskPlan>,
}

/// Writes a random job file: each task appends `exec JOB TASK` first thing, sleeps a random short
/// time, appends `done JOB TASK` last; some tasks fail their first attempt (with one retry), some
/// jobs have a last task that always fails (so they revert), most tasks have a revert that
/// appends `revert JOB TASK` first and `reverted JOB TASK` last.
fn write_job(env: &TestEnv, rng: &mut Rng, name: &str) -> (JobPlan, PathBuf) {
    let marker = env.path(&format!("m-{name}"));
    let mut text = format!(
        "name = \"{name}\"\ncancel_timeout = \"6s\"\nterm_grace = \"1s\"\n\n[env]\n{MARK_VAR} = \"{}\"\nMARKER = \"{}\"\n",
        env.marker(),
        marker.display()
    );
    let count = 3 + rng.index(2);
    let always_fails = rng.chance(20);
    let mut tasks = Vec::new();
    for i in 0..count {
        let task = format!("t{i}");
        let sleep = rng.millis(50, 600).as_millis();
        let flaky = rng.chance(15);
        let fails = always_fails && i + 1 == count;
        let has_revert = rng.chance(85);
        let body = if fails {
            "exit 1".to_owned()
        } else if flaky {
            format!(
                "if [ ! -e \"$MARKER.{task}.once\" ]; then : > \"$MARKER.{task}.once\"; exit 1; fi; sleep 0.{sleep:03}"
            )
        } else {
            format!("sleep 0.{sleep:03}")
        };
        let _ = write!(
            text,
            "\n[[task]]\nname = \"{task}\"\nrun = 'echo \"exec {name} {task}\" >> \"$MARKER\"; {body}; echo \"done {name} {task}\" >> \"$MARKER\"'\n"
        );
        if flaky {
            text.push_str("retries = 1\n");
        }
        if has_revert {
            let _ = writeln!(
                text,
                "revert = 'echo \"revert {name} {task}\" >> \"$MARKER\"; sleep 0.05; echo \"reverted {name} {task}\" >> \"$MARKER\"'"
            );
        }
        tasks.push(TaskPlan {
            name: task,
            retries: u32::from(flaky),
            has_revert,
        });
    }
    let path = env.write(&format!("{name}.toml"), &text);
    (
        JobPlan {
            name: name.to_owned(),
            tasks,
        },
        path,
    )
}

/// The kinds of fault the driver injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    /// SIGKILL the daemon, restart it after a random pause.
    KillDaemon,
    /// SIGKILL the daemon, SIGKILL a conductor while no daemon watches, restart the daemon.
    KillDaemonAndConductor,
    /// SIGKILL a conductor under a live daemon.
    KillConductor,
    /// SIGKILL a task process (its process group leader, the shell, if there is one).
    KillTask,
    /// `supervisor cancel JOB`.
    CliCancel,
    /// `supervisor kill JOB`.
    CliKill,
}

/// One round's world: its env, the state dir, the daemon.
struct Round {
    env: TestEnv,
    state_dir: PathBuf,
    daemon: Run,
    daemon_starts: u32,
}

impl Round {
    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        cli_at(&self.env, &self.state_dir, args, DEADLINE)
    }

    fn restart_daemon(&mut self) {
        self.daemon = start_daemon_at(&self.env, &self.state_dir, &["--max-jobs", "3"]);
        self.daemon_starts += 1;
    }

    fn kill_daemon(&mut self) {
        sigkill_run(&mut self.daemon);
    }

    /// Live conductors: (job id, pid) of the jobs whose stored conductor is alive and is ours.
    fn live_conductors(&self, ids: &[String]) -> Vec<(String, i32)> {
        let store = self.env.store();
        let owner = self.env.marker().to_owned();
        ids.iter()
            .filter_map(|id| {
                let job = store.job(id)?;
                let pid = job.conductor_pid?;
                let ours = env_of(pid, OWNER_VAR).is_some_and(|v| v == owner)
                    && env_of(pid, "TASK_NAME").is_none();
                (JOB_LIVE_STATES.contains(&job.state.as_str()) && is_alive(pid) && ours)
                    .then(|| (id.clone(), pid))
            })
            .collect()
    }

    /// Task processes: (job id, pid), group leaders first when there are any.
    fn task_processes(&self) -> Vec<(String, i32)> {
        let procs = self.env.marked_processes();
        let with_job: Vec<(String, i32, bool)> = procs
            .iter()
            .filter_map(|p| {
                env_of(p.pid, "TASK_NAME")?;
                let job = env_of(p.pid, "JOB_ID")?;
                Some((job, p.pid, p.pid == p.pgrp))
            })
            .collect();
        let leaders: Vec<(String, i32)> = with_job
            .iter()
            .filter(|(_, _, leader)| *leader)
            .map(|(j, p, _)| (j.clone(), *p))
            .collect();
        if leaders.is_empty() {
            with_job.into_iter().map(|(j, p, _)| (j, p)).collect()
        } else {
            leaders
        }
    }

    fn states(&self, ids: &[String]) -> Vec<(String, String)> {
        let store = self.env.store();
        ids.iter()
            .map(|id| {
                let state = store
                    .job(id)
                    .map_or_else(|| "MISSING".to_owned(), |j| j.state);
                (id.clone(), state)
            })
            .collect()
    }

    /// Waits (with a deadline) until every job is terminal; panics with the states otherwise.
    fn settle(&mut self, ids: &[String], what: &str) {
        wait_for(SETTLE_DEADLINE, what, || {
            if self.daemon.has_exited() {
                panic!("the daemon died on its own:\n{}", self.daemon.report());
            }
            let states = self.states(ids);
            if states
                .iter()
                .all(|(_, s)| JOB_TERMINAL_STATES.contains(&s.as_str()))
            {
                Ok(())
            } else {
                Err(states)
            }
        });
    }

    fn status(&self, id: &str) -> Value {
        let (code, out, err) = self.cli(&["status", id, "--json"]);
        assert_eq!(code, 0, "status {id}: stdout {out:?} stderr {err:?}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status JSON {out:?}: {e}"))
    }
}

/// What a round adds to the summary.
#[derive(Default)]
struct Figures {
    faults: BTreeMap<String, u32>,
    end_states: BTreeMap<String, u32>,
    jobs: u32,
    reverts_run: u32,
    resumes_run: u32,
    attempts_without_exec: u32,
    daemon_restarts: u32,
}

impl Figures {
    fn fault_total(&self) -> u32 {
        self.faults.values().sum()
    }

    fn add(&mut self, other: &Self) {
        for (k, v) in &other.faults {
            *self.faults.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.end_states {
            *self.end_states.entry(k.clone()).or_default() += v;
        }
        self.jobs += other.jobs;
        self.reverts_run += other.reverts_run;
        self.resumes_run += other.resumes_run;
        self.attempts_without_exec += other.attempts_without_exec;
        self.daemon_restarts += other.daemon_restarts;
    }
}

/// Lines of a marker file that are `KIND JOB TASK`, counted per task.
fn count_lines(lines: &[String], kind: &str, job: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for line in lines {
        let mut parts = line.split(' ');
        if parts.next() == Some(kind) && parts.next() == Some(job) {
            if let Some(task) = parts.next() {
                *counts.entry(task.to_owned()).or_default() += 1;
            }
        }
    }
    counts
}

fn run_round(round: u32, rng: &mut Rng) -> Figures {
    let env = TestEnv::new();
    let state_dir = env.state_dir();
    let daemon = start_daemon_at(&env, &state_dir, &["--max-jobs", "3"]);
    let mut r = Round {
        env,
        state_dir,
        daemon,
        daemon_starts: 1,
    };
    let mut figures = Figures::default();

    // Submit the jobs.
    let mut plans: Vec<(String, JobPlan)> = Vec::new();
    for j in 0..JOBS_PER_ROUND {
        let (plan, path) = write_job(&r.env, rng, &format!("j{j}"));
        let (code, out, err) = r.cli(&["submit", path.to_str().expect("UTF-8 paths")]);
        assert_eq!(
            code, 0,
            "submit {}: stdout {out:?} stderr {err:?}",
            plan.name
        );
        plans.push((out.trim().to_owned(), plan));
    }
    let ids: Vec<String> = plans.iter().map(|(id, _)| id.clone()).collect();
    let name_of: HashMap<String, String> = plans
        .iter()
        .map(|(id, p)| (id.clone(), p.name.clone()))
        .collect();
    // Jobs a fault was aimed at (a cancel may also stop a task between its write-ahead and its
    // first line): for them a recorded attempt without an `exec` line is allowed.
    let mut targeted: HashSet<String> = HashSet::new();

    // The driver.
    let planned = 1 + rng.below(5);
    let mut injected = 0;
    let mut log = Vec::new();
    let started = Instant::now();
    while injected < planned && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(rng.millis(30, 700));
        let states = r.states(&ids);
        if states
            .iter()
            .all(|(_, s)| JOB_TERMINAL_STATES.contains(&s.as_str()))
        {
            break;
        }
        let fault = match rng.below(100) {
            0..15 => Fault::KillDaemon,
            15..25 => Fault::KillDaemonAndConductor,
            25..45 => Fault::KillConductor,
            45..75 => Fault::KillTask,
            75..90 => Fault::CliCancel,
            _ => Fault::CliKill,
        };
        let done = match fault {
            Fault::KillDaemon => {
                r.kill_daemon();
                std::thread::sleep(rng.millis(0, 800));
                r.restart_daemon();
                log.push("daemon".to_owned());
                true
            }
            Fault::KillDaemonAndConductor => {
                let conductors = r.live_conductors(&ids);
                if conductors.is_empty() {
                    false
                } else {
                    r.kill_daemon();
                    // Re-read: the conductor may have ended meanwhile (then it is not ours).
                    let conductors = r.live_conductors(&ids);
                    if !conductors.is_empty() {
                        let (id, pid) = conductors[rng.index(conductors.len())].clone();
                        send_signal(pid, Signal::SIGKILL);
                        targeted.insert(id.clone());
                        log.push(format!("daemon+conductor({})", name_of[&id]));
                    } else {
                        log.push("daemon".to_owned());
                    }
                    std::thread::sleep(rng.millis(0, 500));
                    r.restart_daemon();
                    true
                }
            }
            Fault::KillConductor => {
                let conductors = r.live_conductors(&ids);
                if conductors.is_empty() {
                    false
                } else {
                    let (id, pid) = conductors[rng.index(conductors.len())].clone();
                    send_signal(pid, Signal::SIGKILL);
                    targeted.insert(id.clone());
                    log.push(format!("conductor({})", name_of[&id]));
                    true
                }
            }
            Fault::KillTask => {
                let tasks = r.task_processes();
                if tasks.is_empty() {
                    false
                } else {
                    let (id, pid) = tasks[rng.index(tasks.len())].clone();
                    // It may have exited meanwhile: then nothing was injected.
                    let sent =
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL)
                            .is_ok();
                    targeted.insert(id.clone());
                    let name = name_of.get(&id).cloned().unwrap_or_else(|| id.clone());
                    log.push(format!("task({name})"));
                    sent
                }
            }
            Fault::CliCancel | Fault::CliKill => {
                let live: Vec<&String> = states
                    .iter()
                    .filter(|(_, s)| JOB_LIVE_STATES.contains(&s.as_str()))
                    .map(|(id, _)| id)
                    .collect();
                if live.is_empty() {
                    false
                } else {
                    let id = live[rng.index(live.len())].clone();
                    let verb = if fault == Fault::CliCancel {
                        "cancel"
                    } else {
                        "kill"
                    };
                    let (code, out, err) = r.cli(&[verb, &id]);
                    // 8: it ended meanwhile.
                    assert!(
                        code == 0 || code == 8,
                        "{verb} {id}: exit {code}, stdout {out:?} stderr {err:?}"
                    );
                    targeted.insert(id.clone());
                    log.push(format!("{verb}({})", name_of[&id]));
                    true
                }
            }
        };
        if done {
            injected += 1;
            *figures.faults.entry(format!("{fault:?}")).or_default() += 1;
        }
    }

    // Settle, then recover some killed/crashed jobs with revert or resume.
    r.settle(&ids, "every job of the round to be terminal");
    let mut resumes: HashMap<String, u32> = HashMap::new();
    let mut recovered = Vec::new();
    for id in &ids {
        let state = r.env.store().job_state(id);
        if state != "killed" && state != "crashed" {
            continue;
        }
        let status = r.status(id);
        let any_pending = status["tasks"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["revert_pending"] == Value::Bool(true)));
        match rng.below(3) {
            1 if any_pending => {
                let (code, out, err) = r.cli(&["revert", id]);
                assert_eq!(code, 0, "revert {id}: stdout {out:?} stderr {err:?}");
                figures.reverts_run += 1;
                recovered.push(format!("revert({})", name_of[id]));
            }
            2 => {
                let (code, out, err) = r.cli(&["resume", id]);
                if code == 8 && err.contains("already began reverting") && any_pending {
                    // A job that began reverting can only be reverted.
                    let (code, out, err) = r.cli(&["revert", id]);
                    assert_eq!(code, 0, "revert {id}: stdout {out:?} stderr {err:?}");
                    figures.reverts_run += 1;
                    recovered.push(format!("resume-refused+revert({})", name_of[id]));
                } else {
                    assert_eq!(code, 0, "resume {id}: stdout {out:?} stderr {err:?}");
                    *resumes.entry(id.clone()).or_default() += 1;
                    figures.resumes_run += 1;
                    recovered.push(format!("resume({})", name_of[id]));
                }
            }
            _ => {}
        }
    }
    if !recovered.is_empty() {
        r.settle(&ids, "every recovered job to be terminal");
    }

    // Invariants.
    let mut failures = Vec::new();
    let listed: Vec<Value> = {
        let (code, out, err) = r.cli(&["ls", "--all", "--json"]);
        assert_eq!(code, 0, "ls --all: {out:?} {err:?}");
        serde_json::from_str::<Value>(&out)
            .unwrap_or_else(|e| panic!("ls JSON {out:?}: {e}"))
            .as_array()
            .cloned()
            .expect("ls --json is an array")
    };
    let store = r.env.store();
    for (id, plan) in &plans {
        let name = &plan.name;
        let Some(job) = store.job(id) else {
            failures.push(format!("{name} ({id}) is lost: not in the store"));
            continue;
        };
        if !listed.iter().any(|j| j["id"] == Value::String(id.clone())) {
            failures.push(format!("{name} ({id}) is not listed by ls --all"));
        }
        let state = job.state.clone();
        if !JOB_TERMINAL_STATES.contains(&state.as_str()) {
            failures.push(format!("{name} ({id}) is {state} after settling"));
        }
        *figures.end_states.entry(state.clone()).or_default() += 1;
        let status = r.status(id);
        if status["state"] != Value::String(state.clone()) {
            failures.push(format!(
                "{name}: status says {} but the store {state}",
                status["state"]
            ));
        }
        let rows = store.tasks(id);
        let json_tasks = status["tasks"].as_array().cloned().unwrap_or_default();
        let lines = r.env.lines(&format!("m-{name}"));
        let execs = count_lines(&lines, "exec", name);
        let dones = count_lines(&lines, "done", name);
        let reverts = count_lines(&lines, "revert", name);
        let reverteds = count_lines(&lines, "reverted", name);
        let job_resumes = resumes.get(id).copied().unwrap_or(0);
        if rows.len() != plan.tasks.len() {
            failures.push(format!(
                "{name}: {} task rows for {} tasks",
                rows.len(),
                plan.tasks.len()
            ));
            continue;
        }
        for (row, task) in rows.iter().zip(&plan.tasks) {
            let t = &task.name;
            let exec = execs.get(t).copied().unwrap_or(0);
            let done = dones.get(t).copied().unwrap_or(0);
            let revert = reverts.get(t).copied().unwrap_or(0);
            let reverted = reverteds.get(t).copied().unwrap_or(0);
            let attempts = usize::try_from(row.attempts).expect("attempts fit");
            let json = json_tasks
                .iter()
                .find(|j| j["name"] == Value::String(t.clone()));
            let pending_flag = json.is_some_and(|j| j["revert_pending"] == Value::Bool(true));
            let ctx = format!(
                "{name}/{t} ({id}): store {} attempts {attempts}, job {state}; marker exec {exec} done {done} revert {revert} reverted {reverted}",
                row.state
            );
            if row.has_revert != task.has_revert {
                failures.push(format!("{ctx}: has_revert {} in the store", row.has_revert));
            }
            if row.state == "pending" && exec > 0 {
                failures.push(format!("{ctx}: ran but the store says pending"));
            }
            if row.state == "success" && (exec == 0 || done == 0) {
                failures.push(format!(
                    "{ctx}: the store says success without exec+done lines"
                ));
            }
            if row.state == "running" || row.state == "reverting" {
                failures.push(format!("{ctx}: a step still in flight in a terminal job"));
            }
            if row.state == "reverted" && task.has_revert && (revert == 0 || reverted == 0) {
                failures.push(format!("{ctx}: reverted in the store, no revert ran"));
            }
            if revert > 0 && row.state == "pending" {
                failures.push(format!("{ctx}: a revert ran for a task that never began"));
            }
            if exec > attempts {
                failures.push(format!(
                    "{ctx}: more exec lines than recorded attempts (ran without write-ahead, or a report applied twice?)"
                ));
            }
            if exec < attempts {
                figures.attempts_without_exec += 1;
                if !targeted.contains(id) {
                    failures.push(format!(
                        "{ctx}: attempts without an exec line in a job no fault was aimed at (a report applied twice?)"
                    ));
                }
            }
            let runs = 1 + usize::try_from(job_resumes).expect("fits");
            let bound = (1 + usize::try_from(task.retries).expect("fits")) * runs;
            if exec > bound || attempts > bound {
                failures.push(format!(
                    "{ctx}: ran more than (1 + retries {}) * (1 + resumes {job_resumes}) = {bound} times",
                    task.retries
                ));
            }
            let began = exec > 0 || row.state != "pending";
            // `revert_pending` is accounted for jobs whose reverts may have been skipped.
            let accounting = matches!(state.as_str(), "killed" | "crashed" | "revert_failed");
            let expect_pending = accounting && task.has_revert && began && row.state != "reverted";
            if matches!(state.as_str(), "cancelled" | "reverted")
                && task.has_revert
                && began
                && row.state != "reverted"
            {
                failures.push(format!(
                    "{ctx}: began, has a revert, but the {state} job did not revert it"
                ));
            }
            if json.is_none() {
                failures.push(format!("{ctx}: missing from status --json"));
            } else if pending_flag != expect_pending {
                failures.push(format!(
                    "{ctx}: revert_pending {pending_flag}, expected {expect_pending}"
                ));
            }
        }
        let pending_any = json_tasks
            .iter()
            .any(|j| j["revert_pending"] == Value::Bool(true));
        match state.as_str() {
            "success" if rows.iter().any(|t| t.state != "success") => {
                failures.push(format!("{name} ({id}): success with tasks {rows:?}"));
            }
            "cancelled" | "reverted" if pending_any => {
                failures.push(format!(
                    "{name} ({id}): {state} with pending reverts: {json_tasks:?}"
                ));
            }
            _ => {}
        }
    }
    // Nothing of a finished job remains: no task process, no conductor.
    wait_for(GONE_DEADLINE, "no process of the finished jobs", || {
        let mut left: Vec<String> = r
            .env
            .marked_processes()
            .into_iter()
            .map(|p| format!("task process {p:?}"))
            .collect();
        for id in &ids {
            if let Some(pid) = store.job(id).and_then(|j| j.conductor_pid) {
                let ours = env_of(pid, OWNER_VAR).is_some_and(|v| v == r.env.marker());
                if ours && is_alive(pid) && pid != r.daemon.pid() {
                    left.push(format!("conductor {pid} of {id}"));
                }
            }
        }
        if left.is_empty() { Ok(()) } else { Err(left) }
    });
    figures.jobs = u32::try_from(plans.len()).expect("fits");
    figures.daemon_restarts = r.daemon_starts - 1;

    let ends: Vec<String> = plans
        .iter()
        .map(|(id, p)| {
            format!(
                "{}={}",
                p.name,
                store.job(id).map_or_else(|| "?".to_owned(), |j| j.state)
            )
        })
        .collect();
    eprintln!(
        "round {round}: {} jobs, faults [{}], recovery [{}], ends [{}], {} attempts without exec line",
        plans.len(),
        log.join(" "),
        recovered.join(" "),
        ends.join(" "),
        figures.attempts_without_exec
    );
    if !failures.is_empty() {
        let mut dump = String::new();
        for (_, plan) in &plans {
            let _ = writeln!(
                dump,
                "--- m-{} ---\n{}",
                plan.name,
                r.env.read(&format!("m-{}", plan.name))
            );
        }
        panic!(
            "round {round}: {} invariant(s) broken:\n{}\n{dump}\ndaemon stderr (last start):\n{}",
            failures.len(),
            failures.join("\n"),
            r.daemon.stderr_plain()
        );
    }
    sigkill_run(&mut r.daemon);
    figures
}

#[test]
fn chaos_kills_never_lose_or_duplicate_work() {
    let seed = env_u64("CHAOS_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let rounds = env_u64("CHAOS_ROUNDS")
        .and_then(|r| u32::try_from(r).ok())
        .unwrap_or(DEFAULT_ROUNDS);
    eprintln!("chaos: seed {seed} (replay with CHAOS_SEED={seed}), {rounds} rounds");
    let started = Instant::now();
    let mut total = Figures::default();
    for round in 0..rounds {
        let mut rng = Rng::new(seed ^ u64::from(round).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let figures = run_round(round, &mut rng);
        total.add(&figures);
    }
    eprintln!(
        "chaos: faults by kind {:?}; end states {:?}; {} daemon restarts, {} reverts, {} resumes run; {} attempts without an exec line; {:.1}s",
        total.faults,
        total.end_states,
        total.daemon_restarts,
        total.reverts_run,
        total.resumes_run,
        total.attempts_without_exec,
        started.elapsed().as_secs_f64()
    );
    eprintln!(
        "chaos: {rounds} rounds, {} faults injected, {} jobs, nothing lost (seed {seed})",
        total.fault_total(),
        total.jobs
    );
}
