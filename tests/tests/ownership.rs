//! One owner per job: black-box proofs that the races between the CLI's orders, the scheduler,
//! re-attaching daemons, `supervisor run` and the conductors are closed. Each test names, in its
//! doc comment, the race it proves closed.
//!
//! Build the binaries first: `cargo build --workspace --bins`. Every test has its own
//! [`TestEnv`] (temp dir, state dir, marker) and its own daemon. Nothing sleeps a fixed time but
//! one wait that *is* the scenario (a handshake that must time out), and that one polls the
//! daemon's log to end early.

use nix::sys::signal::Signal;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Barrier, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};
use tests::{
    DEADLINE, GONE_DEADLINE, LONG_DEADLINE, MARK_VAR, Proc, Run, TestEnv, cli_at, is_alive,
    is_terminal, live_processes, ls_all_json_at, send_signal, wait_for,
};

/// The handshake timeout of a (re)connecting supervisor (`supervisor::session`): the scenario of
/// [`conductor_stopped_across_a_daemon_restart_then_succeeds`] must outlast it.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// `supervisor ARGS --state-dir DIR` to its end: (exit code, stdout, stderr).
fn cli(env: &TestEnv, args: &[&str]) -> (i32, String, String) {
    cli_at(env, &env.state_dir(), args, DEADLINE)
}

/// Starts `supervisor ARGS --state-dir DIR` (for the long `--wait` clients).
fn spawn_cli(env: &TestEnv, args: &[&str]) -> Run {
    let state_dir = env.state_dir();
    let mut full = args.to_vec();
    full.extend_from_slice(&["--state-dir", path_str(&state_dir)]);
    env.spawn(&full)
}

fn job_state(status: &Value) -> String {
    status["state"].as_str().unwrap_or_default().to_owned()
}

/// The status's task called `name`.
fn task<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["tasks"]
        .as_array()
        .and_then(|tasks| tasks.iter().find(|t| t["name"] == name))
        .unwrap_or_else(|| panic!("no task {name} in {status:#}"))
}

fn conductor_pid(status: &Value) -> i32 {
    status["conductor_pid"]
        .as_i64()
        .and_then(|p| i32::try_from(p).ok())
        .unwrap_or_else(|| panic!("no conductor_pid: {status:#}"))
}

/// Waits until the job's status satisfies `ok`; returns that status.
fn wait_status(
    env: &TestEnv,
    id: &str,
    deadline: Duration,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(deadline, what, || {
        let status = env.status_json(id);
        if ok(&status) { Ok(status) } else { Err(status) }
    })
}

/// Writes a job file: `name`, `top`, an `[env]` with the test marker, `SVT_DIR` and `MARKER` (the
/// file `m-NAME` of the test dir, for the tasks to append to), then `tasks`.
fn job(env: &TestEnv, name: &str, top: &str, tasks: &str) -> PathBuf {
    let contents = format!(
        "name = \"{name}\"\n{top}\n[env]\n{MARK_VAR} = \"{}\"\nSVT_DIR = \"{}\"\nMARKER = \"{}\"\n\n{tasks}",
        env.marker(),
        env.dir().display(),
        env.path(&format!("m-{name}")).display(),
    );
    env.write(&format!("{name}.toml"), &contents)
}

/// Every live process of the test (owner or job marker, or the state dir on its command line)
/// but those of `keep` (the daemons) and the daemon's warm pool: conductors, tasks, stray
/// supervisors.
fn leftovers(env: &TestEnv, keep: &[i32]) -> Vec<Proc> {
    let state_dir = env.state_dir().display().to_string();
    let mut left: Vec<Proc> = env.owned_processes();
    for process in env.marked_processes().into_iter().chain(
        live_processes()
            .into_iter()
            .filter(|p| p.cmdline.contains(&state_dir)),
    ) {
        if !left.iter().any(|q| q.pid == process.pid) {
            left.push(process);
        }
    }
    // The daemon's warm conductors waiting for a job belong to the daemon.
    let pool = env.warm_pool_pids();
    left.retain(|p| !keep.contains(&p.pid) && !pool.contains(&p.pid));
    left
}

/// Waits until no process of the test is left but `keep`.
fn wait_no_leftovers(env: &TestEnv, keep: &[i32], when: &str) {
    wait_for(
        GONE_DEADLINE,
        &format!("no process of the test left {when}"),
        || {
            let left = leftovers(env, keep);
            if left.is_empty() { Ok(()) } else { Err(left) }
        },
    );
}

/// A task loop that waits (at most about 2 minutes) for `$SVT_DIR/GO`, then succeeds.
fn wait_for_go(go: &str) -> String {
    format!(
        r#"i=0; while [ ! -e "$SVT_DIR/{go}" ] && [ $i -lt 2400 ]; do sleep 0.05; i=$((i+1)); done; [ -e "$SVT_DIR/{go}" ]"#
    )
}

// ---------------------------------------------------------------------------------------------
// 1. A plan that cannot be sent
// ---------------------------------------------------------------------------------------------

/// Race closed: a plan too big for one frame (the frame limit is 1 MiB) used to be stored and
/// its conductor spawned before the plan turned out not to fit; the `Start` frame then failed,
/// and the conductor waited for a plan forever, unsupervised, next to a job stuck `running`.
/// Such a file must be refused as invalid input (exit 2, saying why) by `validate`, `run` and
/// `submit` alike, before anything is stored or spawned.
#[test]
fn oversized_plan_is_refused_before_anything_is_stored() {
    let env = TestEnv::new();
    let daemon = env.start_daemon(&[]);
    let filler = "x".repeat(5 * 1024 * 1024);
    let file = job(
        &env,
        "big",
        "",
        &format!("[[task]]\nname = \"big\"\nrun = 'touch \"$SVT_DIR/ran\" # {filler}'\n"),
    );
    let state_dir = env.state_dir();
    let orders: [Vec<&str>; 3] = [
        vec!["validate", path_str(&file)],
        vec!["run", "--state-dir", path_str(&state_dir), path_str(&file)],
        vec![
            "submit",
            path_str(&file),
            "--state-dir",
            path_str(&state_dir),
        ],
    ];
    for args in orders {
        let mut run = env.spawn(&args);
        let code = run.wait_exit(LONG_DEADLINE);
        let err = run.stderr_plain();
        assert_eq!(
            code,
            2,
            "`{}` of a 5 MB job must exit 2\n{}",
            args[0],
            run.report()
        );
        let said = err.to_lowercase();
        assert!(
            [
                "too large",
                "too long",
                "too big",
                "exceed",
                "limit",
                "at most",
                "maximum"
            ]
            .iter()
            .any(|w| said.contains(w)),
            "`{}` must say the job is too large: stderr {err:?}",
            args[0]
        );
        assert!(
            err.len() < 64 * 1024,
            "`{}` echoed the job back ({} bytes of stderr)",
            args[0],
            err.len()
        );
    }
    let all = ls_all_json_at(&env, &state_dir);
    assert!(all.is_empty(), "a refused job was stored: {all:#?}");
    wait_no_leftovers(&env, &[daemon.pid()], "after the refusals");
    assert!(!env.path("ran").exists(), "the oversized job ran");
}

// ---------------------------------------------------------------------------------------------
// 2. Concurrent orders on one job
// ---------------------------------------------------------------------------------------------

/// Three tasks; each step appends `STEP TASK $PPID` to `$MARKER` (the conductor is the task
/// shell's parent), and task c waits for the file `go`.
fn recorded_tasks() -> String {
    let mut tasks = String::new();
    for name in ["a", "b", "c"] {
        let wait = if name == "c" {
            format!("; {}", wait_for_go("go"))
        } else {
            String::new()
        };
        tasks.push_str(&format!(
            "[[task]]\nname = \"{name}\"\nrun = 'echo \"exec {name} $PPID\" >> \"$MARKER\"{wait}'\nrevert = 'echo \"revert {name} $PPID\" >> \"$MARKER\"'\n\n"
        ));
    }
    tasks
}

/// A marker line: (step, task, conductor pid).
fn parse_marker(lines: &[String]) -> Vec<(String, String, i32)> {
    lines
        .iter()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [step, task, ppid] => (
                    (*step).to_owned(),
                    (*task).to_owned(),
                    ppid.parse()
                        .unwrap_or_else(|e| panic!("marker line {line:?}: {e}")),
                ),
                _ => panic!("bad marker line {line:?}"),
            }
        })
        .collect()
}

/// Fires 20 orders (`revert`, `resume`, `kill`, interleaved) at `id` from 20 threads released
/// together; returns (order, exit code, stderr) of each.
fn fire_orders(env: &TestEnv, id: &str) -> Vec<(&'static str, i32, String)> {
    const KINDS: [&str; 3] = ["revert", "resume", "kill"];
    let barrier = Barrier::new(20);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let kind = KINDS[i % KINDS.len()];
                    barrier.wait();
                    let (code, _, err) = cli(env, &[kind, id]);
                    (kind, code, err)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("an order thread panicked"))
            .collect()
    })
}

/// Race closed: the daemon checked a job's state in one transaction and changed it in another,
/// so concurrent `revert`/`resume` orders on a killed job could both pass and launch two
/// conductors (which then shared one report sequence, so steps ran twice or were acknowledged
/// unrun). With one owner per job: the orders are serialized; an order the state does not allow
/// gets exit 8, never 0 with nothing done; accepted orders alternate (revert/resume, then kill,
/// ...); each accepted revert/resume starts exactly one conductor; conductors never overlap;
/// no step runs twice under one conductor. In the usual case (no kill wins), exactly one of the
/// reverts/resumes wins, and a winning revert runs c, b, a exactly once, under one conductor.
#[test]
fn concurrent_revert_resume_kill_run_one_conductor() {
    let env = TestEnv::new();
    let daemon = env.start_daemon(&[]);
    let id = env.submit(&job(&env, "orders", "", &recorded_tasks()));
    let running = wait_status(&env, &id, DEADLINE, "task c running", |s| {
        task(s, "c")["state"] == "running"
    });
    let first = conductor_pid(&running);
    wait_for(DEADLINE, "the exec lines of a, b, c", || {
        let lines = parse_marker(&env.lines("m-orders"));
        if lines.len() == 3 { Ok(()) } else { Err(lines) }
    });
    let execs = parse_marker(&env.lines("m-orders"));
    assert!(
        execs.iter().all(|(_, _, ppid)| *ppid == first),
        "$PPID of a task is not its conductor ({first}): {execs:?}"
    );

    let mut kill = spawn_cli(&env, &["kill", &id, "--wait"]);
    assert_eq!(kill.wait_exit(LONG_DEADLINE), 4, "{}", kill.report());
    let killed = env.status_json(&id);
    assert_eq!(job_state(&killed), "killed", "{killed:#}");
    // A resume must be able to finish: c's loop ends at once from now on.
    env.write("go", "");

    let orders = fire_orders(&env, &id);
    let end = wait_for(LONG_DEADLINE, "the job terminal with no conductor", || {
        let st = env.status_json(&id);
        let left = leftovers(&env, &[daemon.pid()]);
        if is_terminal(&job_state(&st)) && left.is_empty() {
            Ok(st)
        } else {
            Err((job_state(&st), left))
        }
    });
    let final_state = job_state(&end);
    assert_eq!(
        job_state(&env.status_json(&id)),
        final_state,
        "the job left its terminal state with no conductor running"
    );
    check_orders(&env, &orders, &final_state, first, &end);
}

/// The assertions of [`concurrent_revert_resume_kill_run_one_conductor`] once the job settled.
fn check_orders(
    env: &TestEnv,
    orders: &[(&str, i32, String)],
    final_state: &str,
    first: i32,
    end: &Value,
) {
    let bad: Vec<_> = orders
        .iter()
        .filter(|(_, c, _)| *c != 0 && *c != 8)
        .collect();
    assert!(
        bad.is_empty(),
        "orders must succeed (0) or be refused by state (8): {bad:#?}"
    );
    let won = |kind: &str| {
        orders
            .iter()
            .filter(|(k, c, _)| *k == kind && *c == 0)
            .count()
    };
    let (reverts, resumes, kills) = (won("revert"), won("resume"), won("kill"));
    let starts = reverts + resumes;
    let summary = format!(
        "won: {reverts} revert(s), {resumes} resume(s), {kills} kill(s); end {final_state}\norders {orders:#?}\nmarker {:#?}\nstatus {end:#}",
        env.lines("m-orders")
    );
    eprintln!(
        "orders: won {reverts} revert(s), {resumes} resume(s), {kills} kill(s); end {final_state}"
    );
    let after: Vec<(String, String, i32)> = parse_marker(&env.lines("m-orders"))
        .into_iter()
        .filter(|(_, _, ppid)| *ppid != first)
        .collect();
    let seen = check_conductors(&after, starts, &summary);
    // From `killed`, accepted orders alternate: start (revert or resume), kill, start, ...
    // The last kill may meet the job's own end: the conductor reported it (success, say) while
    // the kill was on its way, and the reported end stands; then as many starts as kills.
    let met_the_end = final_state != "killed" && kills > 0 && starts == kills;
    let expected_starts = kills + usize::from(final_state != "killed" && !met_the_end);
    assert_eq!(
        starts, expected_starts,
        "orders did not alternate\n{summary}"
    );
    if kills > 0 {
        return;
    }
    assert_eq!(starts, 1, "exactly one revert/resume must win\n{summary}");
    let ppid = *seen.first().unwrap_or(&0);
    let steps: Vec<(&str, &str)> = after
        .iter()
        .map(|(s, t, _)| (s.as_str(), t.as_str()))
        .collect();
    if reverts == 1 {
        assert_eq!(final_state, "reverted", "{summary}");
        assert_eq!(
            steps,
            [("revert", "c"), ("revert", "b"), ("revert", "a")],
            "every revert must run exactly once, last first\n{summary}"
        );
    } else {
        assert_eq!(final_state, "success", "{summary}");
        assert_eq!(steps, [("exec", "c")], "{summary}");
    }
    assert!(
        after.iter().all(|(_, _, p)| *p == ppid),
        "more than one conductor ran\n{summary}"
    );
}

/// The conductors behind the steps run after the kill (`after`), in order of appearance; asserts
/// that no two interleaved, none ran a step twice, and there are no more than `starts`.
fn check_conductors(after: &[(String, String, i32)], starts: usize, summary: &str) -> Vec<i32> {
    let mut seen: Vec<i32> = Vec::new();
    for (_, _, ppid) in after {
        if seen.last() != Some(ppid) {
            assert!(
                !seen.contains(ppid),
                "two conductors interleaved their steps\n{summary}"
            );
            seen.push(*ppid);
        }
    }
    let mut steps: BTreeMap<i32, BTreeSet<(&str, &str)>> = BTreeMap::new();
    for (step, task, ppid) in after {
        assert!(
            steps.entry(*ppid).or_default().insert((step, task)),
            "conductor {ppid} ran `{step} {task}` twice\n{summary}"
        );
    }
    assert!(
        seen.len() <= starts,
        "{} conductors ran for {starts} accepted revert/resume order(s)\n{summary}",
        seen.len()
    );
    seen
}

// ---------------------------------------------------------------------------------------------
// 3. Kills racing the scheduler
// ---------------------------------------------------------------------------------------------

/// How many jobs [`kill_racing_the_scheduler_on_200_queued_jobs`] submits.
const QUEUED_JOBS: usize = 200;

/// Submits [`QUEUED_JOBS`] copies of `file` from 2 threads while 4 threads kill each one as soon
/// as its id is known; returns the ids and each kill's (id, exit code, stderr).
fn submit_and_kill(env: &TestEnv, file: &Path) -> (Vec<String>, Vec<(String, i32, String)>) {
    let (to_killers, ids) = mpsc::channel::<String>();
    let ids = Mutex::new(ids);
    std::thread::scope(|scope| {
        let submitters: Vec<_> = (0..2)
            .map(|_| {
                let to_killers = to_killers.clone();
                scope.spawn(move || {
                    let mut mine = Vec::new();
                    for _ in 0..QUEUED_JOBS / 2 {
                        let id = env.submit(file);
                        let _ = to_killers.send(id.clone());
                        mine.push(id);
                    }
                    mine
                })
            })
            .collect();
        drop(to_killers);
        let killers: Vec<_> = (0..4)
            .map(|_| {
                let ids = &ids;
                scope.spawn(move || {
                    let mut kills = Vec::new();
                    loop {
                        let next = ids.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        let Ok(id) = next else { return kills };
                        let (code, _, err) = cli(env, &["kill", &id]);
                        kills.push((id, code, err));
                    }
                })
            })
            .collect();
        let submitted = submitters
            .into_iter()
            .flat_map(|h| h.join().expect("a submit thread panicked"))
            .collect();
        let kills = killers
            .into_iter()
            .flat_map(|h| h.join().expect("a kill thread panicked"))
            .collect();
        (submitted, kills)
    })
}

/// Race closed: `kill` of a queued job was checked and stored in one place while the scheduler
/// launched it in another, so a job could be stored `killed` while its conductor ran its task
/// (or be recorded as crashed while being launched). With one owner per job, for 200 jobs killed
/// while a `--max-jobs 2` scheduler starts them: every kill answers 0 or 8; every job ends
/// `success` or `killed`; the store agrees with what ran (a task that wrote its marker is
/// recorded as begun, a `success` job's task ran exactly once, no task runs twice); and nothing
/// of the jobs is left running.
#[test]
fn kill_racing_the_scheduler_on_200_queued_jobs() {
    let env = TestEnv::new();
    let daemon = env.start_daemon(&["--max-jobs", "2"]);
    let file = job(
        &env,
        "queued",
        "",
        "[[task]]\nname = \"t\"\nrun = 'echo \"$JOB_ID\" >> \"$MARKER\"; sleep 0.1'\n",
    );
    let (ids, kills) = submit_and_kill(&env, &file);
    assert_eq!(ids.len(), QUEUED_JOBS);
    let bad: Vec<_> = kills
        .iter()
        .filter(|(_, c, _)| *c != 0 && *c != 8)
        .collect();
    assert!(bad.is_empty(), "kills must answer 0 or 8: {bad:#?}");

    let states: BTreeMap<String, String> =
        wait_for(Duration::from_secs(180), "every job terminal", || {
            let all = ls_all_json_at(&env, &env.state_dir());
            let states: BTreeMap<String, String> = all
                .iter()
                .map(|j| {
                    (
                        j["id"].as_str().unwrap_or_default().to_owned(),
                        j["state"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            let live = states.values().filter(|s| !is_terminal(s)).count();
            if states.len() == QUEUED_JOBS && live == 0 {
                Ok(states)
            } else {
                Err(format!("{} jobs listed, {live} live", states.len()))
            }
        });
    wait_no_leftovers(&env, &[daemon.pid()], "once every job is terminal");

    let marker = env.lines("m-queued");
    let refused = kills.iter().filter(|(_, c, _)| *c == 8).count();
    let killed = states.values().filter(|s| *s == "killed").count();
    eprintln!(
        "kill race: {killed} of {QUEUED_JOBS} jobs killed, {} marker lines, {refused} kills refused",
        marker.len()
    );
    let store = env.store();
    let mut wrong = Vec::new();
    for id in &ids {
        let state = states.get(id).cloned().unwrap_or_default();
        let ran = marker.iter().filter(|l| *l == id).count();
        let task = store.tasks(id).pop().expect("the job has its task");
        let began = task.state != "pending";
        let agrees = match state.as_str() {
            "success" => ran == 1 && task.state == "success",
            "killed" => {
                ran <= 1
                    && (began || ran == 0)
                    && ["pending", "failure", "success"].contains(&task.state.as_str())
            }
            _ => false,
        };
        if !agrees {
            wrong.push(format!(
                "{id}: job {state}, task {} (attempts {}), marker lines {ran}",
                task.state, task.attempts
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "the store disagrees with what ran for {} job(s):\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    let after: BTreeMap<String, String> = ids
        .iter()
        .map(|id| (id.clone(), store.job_state(id)))
        .collect();
    assert_eq!(after, states, "jobs changed state after they were terminal");
}

// ---------------------------------------------------------------------------------------------
// 4. A re-attach whose first connect fails
// ---------------------------------------------------------------------------------------------

/// Race closed: a daemon re-attaching to a conductor that could not answer the handshake in time
/// (SIGSTOPped, or its one thread busy) never tried again, so once the conductor woke up it
/// waited at its next write-ahead point forever. The new owner must keep trying: after SIGCONT,
/// the job goes on and succeeds.
#[test]
fn conductor_stopped_across_a_daemon_restart_then_succeeds() {
    let env = TestEnv::new();
    let mut daemon = env.start_daemon(&[]);
    let tasks = format!(
        "[[task]]\nname = \"first\"\nrun = '{}'\n\n[[task]]\nname = \"second\"\nrun = 'true'\n",
        wait_for_go("go")
    );
    let id = env.submit(&job(&env, "stopped", "", &tasks));
    let st = wait_status(&env, &id, DEADLINE, "task first running", |s| {
        task(s, "first")["state"] == "running"
    });
    let conductor = conductor_pid(&st);
    send_signal(conductor, Signal::SIGSTOP);
    // Whatever happens next, never leave a stopped conductor behind.
    let _resume = ContOnDrop(conductor);

    let (code, out, err) = cli(&env, &["shutdown"]);
    assert_eq!(code, 0, "shutdown: {out:?} {err:?}");
    wait_for(DEADLINE, "the daemon to exit after shutdown", || {
        if daemon.has_exited() {
            Ok(())
        } else {
            Err("still running")
        }
    });
    assert!(is_alive(conductor), "shutdown killed the conductor");

    let restarted = Instant::now();
    let daemon = env.start_daemon(&[]);
    // The scenario: the new daemon's first connect must fail (handshake timeout). Ends when the
    // daemon logs it, else after twice the handshake timeout.
    wait_for(DEADLINE, "the new daemon's first connect to fail", || {
        let log = daemon.stderr_plain();
        let logged = log
            .lines()
            .any(|l| l.contains("cannot reach the conductor") && l.contains(&id));
        if logged || restarted.elapsed() >= 2 * HANDSHAKE_TIMEOUT {
            Ok(())
        } else {
            Err(restarted.elapsed())
        }
    });
    send_signal(conductor, Signal::SIGCONT);
    env.write("go", "");
    let st = wait_status(&env, &id, LONG_DEADLINE, "the job to end", |s| {
        is_terminal(&job_state(s))
    });
    assert_eq!(job_state(&st), "success", "{st:#}\n{}", daemon.report());
    assert_eq!(task(&st, "second")["state"], "success", "{st:#}");
}

/// Sends SIGCONT to a pid when dropped (a stopped process would outlive a failing test).
struct ContOnDrop(i32);

impl Drop for ContOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), Signal::SIGCONT);
    }
}

// ---------------------------------------------------------------------------------------------
// 5. A revert that hangs outside a cancel
// ---------------------------------------------------------------------------------------------

/// `supervisor run` of a job whose task b fails while task a's revert hangs; `top` and `a_extra`
/// set the bound. The run must end within [`DEADLINE`] with 5 or 4, a's revert pending, and no
/// `sleep 1000` left.
fn hanging_revert_ends(name: &str, top: &str, a_extra: &str) {
    let env = TestEnv::new();
    let file = job(
        &env,
        name,
        top,
        &format!(
            "[[task]]\nname = \"a\"\nrun = \"true\"\nrevert = \"sleep 1000\"\n{a_extra}\n\n[[task]]\nname = \"b\"\nrun = \"false\"\n"
        ),
    );
    let mut run = env.spawn_run(&file);
    let code = run.wait_exit(DEADLINE);
    assert!(
        code == 5 || code == 4,
        "{name}: a hanging revert must end revert_failed (5) or killed (4), got {code}\n{}",
        run.report()
    );
    let id = run.job_id();
    wait_for(GONE_DEADLINE, "no `sleep 1000` left", || {
        let left: Vec<Proc> = env
            .marked_processes()
            .into_iter()
            .filter(|p| p.cmdline.contains("sleep 1000"))
            .collect();
        if left.is_empty() { Ok(()) } else { Err(left) }
    });
    env.assert_no_job_process_left();

    let _daemon = env.start_daemon(&[]);
    let st = env.status_json(&id);
    assert!(is_terminal(&job_state(&st)), "{name}: {st:#}");
    assert_eq!(
        task(&st, "a")["revert_pending"],
        true,
        "{name}: a's revert did not complete: it must be listed pending\n{st:#}"
    );
    assert_eq!(task(&st, "b")["revert_pending"], false, "{name}: {st:#}");
}

/// Race closed: nothing bounded a revert that runs after a task *failure* (the kill ladder was
/// armed only by a cancel), so a hanging revert kept the job `reverting` forever while its
/// heartbeats kept it "responsive". It must end at the task's `revert_timeout` (1 s here), with
/// that revert pending.
#[test]
fn hanging_revert_after_a_failure_ends_at_revert_timeout() {
    hanging_revert_ends("revert-timeout", "", "revert_timeout = \"1s\"");
}

/// The same race as [`hanging_revert_after_a_failure_ends_at_revert_timeout`], without a
/// `revert_timeout`: its default is the job's `cancel_timeout` (2 s here).
#[test]
fn hanging_revert_without_revert_timeout_ends_at_cancel_timeout() {
    hanging_revert_ends("cancel-timeout", "cancel_timeout = \"2s\"", "");
}

// ---------------------------------------------------------------------------------------------
// 6. Two writers on one store
// ---------------------------------------------------------------------------------------------

/// Race closed: the store's read-then-write transactions were DEFERRED, so with two writer
/// processes (a `supervisor run` beside the daemon) the upgrade to a write lock failed at once
/// with SQLITE_BUSY_SNAPSHOT, which no busy timeout covers: spurious "cannot store the job"
/// (exit 8) or internal errors (exit 10). 20 `run` and 20 `submit --wait` side by side on one
/// state dir must all succeed.
#[test]
fn run_and_daemon_write_one_store_at_once() {
    let env = TestEnv::new();
    let _daemon = env.start_daemon(&[]);
    let file = job(&env, "pair", "", "[[task]]\nname = \"t\"\nrun = \"true\"\n");
    let state_dir = env.state_dir();
    let mut clients: Vec<(&str, Run)> = (0..40)
        .map(|i| {
            if i % 2 == 0 {
                let args = ["run", "--state-dir", path_str(&state_dir), path_str(&file)];
                ("run", env.spawn(&args))
            } else {
                (
                    "submit --wait",
                    spawn_cli(&env, &["submit", path_str(&file), "--wait"]),
                )
            }
        })
        .collect();
    let failed: Vec<String> = clients
        .iter_mut()
        .filter_map(|(kind, client)| {
            let code = client.wait_exit(Duration::from_secs(120));
            (code != 0).then(|| format!("{kind}: exit {code}\n{}", client.stderr_plain()))
        })
        .collect();
    // Their output is in `failed`: no 40 reports on a failure.
    drop(clients);
    assert!(
        failed.is_empty(),
        "{} of 40 clients failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
    let all = ls_all_json_at(&env, &state_dir);
    assert_eq!(all.len(), 40, "{all:#?}");
    assert!(all.iter().all(|j| j["state"] == "success"), "{all:#?}");
}

// ---------------------------------------------------------------------------------------------
// 7. What a task inherits
// ---------------------------------------------------------------------------------------------

/// A task that lists its shell's open descriptors, one a line. `ls` runs as the shell's child
/// (the `; true` keeps the shell from exec'ing it), so neither the directory `ls` reads nor a
/// pipe of the shell's appears in the list: only what the task inherited.
const LIST_FDS: &str = r#"[[task]]
name = "fds"
run = 'ls /proc/$$/fd; true'
"#;

/// Hole closed: the job's listening socket (fd 3 of the conductor) leaked into every task, which
/// could then accept the supervisor's next connection and impersonate its conductor. A task
/// sees only 0, 1 and 2, under `supervisor run` and under the daemon.
#[test]
fn task_sees_only_descriptors_0_1_2() {
    let env = TestEnv::new();
    let file = job(&env, "fds", "", LIST_FDS);
    let mut run = env.spawn_run(&file);
    assert_eq!(run.wait_exit(DEADLINE), 0, "{}", run.report());
    let seen: Vec<String> = run
        .stdout_lines()
        .into_iter()
        .filter(|l| l.starts_with("[fds] ") && l[6..].bytes().all(|b| b.is_ascii_digit()))
        .collect();
    assert_eq!(
        seen,
        ["[fds] 0", "[fds] 1", "[fds] 2"],
        "under `run`, the task saw other descriptors\n{}",
        run.report()
    );

    let _daemon = env.start_daemon(&[]);
    let id = env.submit_wait(&file, LONG_DEADLINE);
    let (code, out, err) = cli(&env, &["logs", &id]);
    assert_eq!(code, 0, "logs: {err}");
    let lines: Vec<&str> = out.lines().map(str::trim_end).collect();
    assert_eq!(
        lines,
        ["[fds] 0", "[fds] 1", "[fds] 2"],
        "under the daemon, the task saw other descriptors"
    );
}
