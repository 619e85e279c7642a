//! Alert hooks: commands run when a job ends (`on_end`) or ends with reverts skipped
//! (`on_revert_skipped`), from the job file's `[hooks]` and the daemon's `--hook-end` and
//! `--hook-revert-skipped`.
//!
//! - Each runs as `/bin/sh -c CMD` in the background: the job's end and the ladder never wait
//!   for it. It gets the job's status as JSON on stdin, `JOB_ID`, `JOB_STATE` and `JOB_REASON`
//!   (and a minimal `PATH`) in a clean environment, and runs in the daemon's own cgroup, never
//!   the job's (which is gone by then).
//! - It is bounded by [`HOOK_TIMEOUT`]: its process group is SIGKILLed after it. Its exit and
//!   its output (at most [`MAX_HOOK_OUTPUT`] bytes of each stream) are logged.
//! - It runs at most once per job, event and origin, even across a daemon restart: the store
//!   records that it starts (fsynced) before it starts, and a hook already recorded is skipped.
//!   A daemon that dies between the record and the start loses that hook (at most once, never
//!   twice).
//! - At most [`MAX_RUNNING_HOOKS`] run at once; the others wait their turn.
//! - `supervisor run` waits for its job's hooks before it exits ([`hooks_settled`]).

use super::registry::Jobs;
use shared::ids::JobId;
use shared::state::JobState;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, Semaphore};

/// How long a hook may run before it is killed.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of each of a hook's output streams is logged.
pub const MAX_HOOK_OUTPUT: usize = 16 * 1024;
/// How many hooks run at once.
pub const MAX_RUNNING_HOOKS: usize = 16;
/// The `PATH` a hook gets.
const HOOK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

static RUNNING: Semaphore = Semaphore::const_new(MAX_RUNNING_HOOKS);
/// Job ends whose hooks are not done yet (looked up, waiting, or running).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static SETTLED: Notify = Notify::const_new();

/// Counts one job end's hooks as in flight until dropped.
struct InFlight;

impl InFlight {
    fn new() -> Self {
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if IN_FLIGHT.fetch_sub(1, Ordering::SeqCst) == 1 {
            SETTLED.notify_waiters();
        }
    }
}

/// Resolves once no hook of this process is pending or running: `supervisor run` waits for its
/// job's hooks (each bounded by [`HOOK_TIMEOUT`]) before it exits, which would kill them.
pub async fn hooks_settled() {
    loop {
        let settled = SETTLED.notified();
        if IN_FLIGHT.load(Ordering::SeqCst) == 0 {
            return;
        }
        settled.await;
    }
}

/// The daemon's own hooks (`--hook-end`, `--hook-revert-skipped`), run for every job.
#[derive(Clone, Debug, Default)]
pub struct DaemonHooks {
    pub on_end: Option<String>,
    pub on_revert_skipped: Option<String>,
}

/// What happened to the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookEvent {
    End,
    RevertSkipped,
}

impl HookEvent {
    const fn as_str(self) -> &'static str {
        match self {
            Self::End => "end",
            Self::RevertSkipped => "revert_skipped",
        }
    }
}

impl Jobs {
    /// A job reached the terminal `state`; `skipped` says whether reverts were skipped. Starts
    /// its hooks in the background and returns at once. `known` are the job's own hooks when
    /// the caller holds its spec (else they are read from the store).
    pub(super) fn job_ended(
        &self,
        id: &JobId,
        state: JobState,
        skipped: bool,
        known: Option<shared::spec::Hooks>,
    ) {
        crate::metrics::METRICS.job_ended(state);
        let daemon = self.inner.hooks.clone();
        let no_daemon_hooks = daemon.on_end.is_none() && daemon.on_revert_skipped.is_none();
        let (jobs, id) = (self.clone(), id.clone());
        let in_flight = InFlight::new();
        tokio::spawn(async move {
            let _in_flight = in_flight;
            let job_hooks = match known {
                Some(hooks) => hooks,
                None => {
                    let job = id.clone();
                    match jobs.store().call(move |s| s.spec(&job)).await {
                        Ok(spec) => spec.hooks,
                        Err(err) => {
                            tracing::warn!(job_id = %id, error = %err, "hooks: cannot read the job's spec");
                            shared::spec::Hooks::default()
                        }
                    }
                }
            };
            if no_daemon_hooks && job_hooks == shared::spec::Hooks::default() {
                return;
            }
            let mut hooks = vec![
                (HookEvent::End, "job", job_hooks.on_end),
                (HookEvent::End, "daemon", daemon.on_end),
            ];
            if skipped {
                hooks.push((HookEvent::RevertSkipped, "job", job_hooks.on_revert_skipped));
                hooks.push((HookEvent::RevertSkipped, "daemon", daemon.on_revert_skipped));
            }
            for (event, origin, command) in hooks {
                if let Some(command) = command {
                    let jobs = jobs.clone();
                    let id = id.clone();
                    let in_flight = InFlight::new();
                    tokio::spawn(async move {
                        let _in_flight = in_flight;
                        run_once(&jobs, &id, state, event, origin, command).await;
                    });
                }
            }
        });
    }
}

/// Records the hook's start, then runs it, unless it was recorded before.
async fn run_once(
    jobs: &Jobs,
    id: &JobId,
    state: JobState,
    event: HookEvent,
    origin: &'static str,
    command: String,
) {
    let Ok(_slot) = RUNNING.acquire().await else {
        return;
    };
    let job = id.clone();
    let first = jobs
        .store()
        .call(move |s| s.begin_hook(&job, event.as_str(), origin))
        .await;
    match first {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!(job_id = %id, event = event.as_str(), origin, "hook already ran for this event; not run again");
            return;
        }
        Err(err) => {
            tracing::error!(job_id = %id, error = %err, "hooks: cannot record the hook; not run");
            return;
        }
    }
    let job = id.clone();
    let status = jobs.store().call(move |s| s.status(&job)).await;
    let (json, reason) = match status {
        Ok(status) => (
            serde_json::to_string(&status).unwrap_or_default(),
            status.reason.unwrap_or_default(),
        ),
        Err(_) => (String::new(), String::new()),
    };
    let env = [
        ("JOB_ID", id.to_string()),
        ("JOB_STATE", state.as_str().to_owned()),
        ("JOB_REASON", reason),
        ("JOB_EVENT", event.as_str().to_owned()),
    ];
    run_hook(id, event, origin, &command, &env, json).await;
}

/// Runs one hook to its end or its timeout, and logs how it went.
async fn run_hook(
    id: &JobId,
    event: HookEvent,
    origin: &str,
    command: &str,
    env: &[(&str, String)],
    stdin: String,
) {
    let mut child = match tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .env_clear()
        .env("PATH", HOOK_PATH)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(err) => {
            tracing::warn!(job_id = %id, event = event.as_str(), origin, error = %err, "hook could not start");
            return;
        }
    };
    let pid = child.id().and_then(|p| i32::try_from(p).ok());
    let input = child.stdin.take();
    let (out, err) = (child.stdout.take(), child.stderr.take());
    let feed = async move {
        if let Some(mut input) = input {
            // A hook that does not read its stdin closes the pipe: that is its business.
            let _ = input.write_all(stdin.as_bytes()).await;
        }
    };
    let ran = tokio::time::timeout(HOOK_TIMEOUT, async {
        let ((), out, err, status) = tokio::join!(feed, bounded(out), bounded(err), child.wait());
        (out, err, status)
    })
    .await;
    match ran {
        Ok((stdout, stderr, Ok(status))) if status.success() => {
            tracing::info!(job_id = %id, event = event.as_str(), origin, exit = 0, stdout, stderr, "hook ran");
        }
        Ok((stdout, stderr, status)) => {
            let exit = status
                .map(|s| format!("{s}"))
                .unwrap_or_else(|e| e.to_string());
            tracing::warn!(job_id = %id, event = event.as_str(), origin, exit, stdout, stderr, "hook failed");
        }
        Err(_) => {
            if let Some(pid) = pid {
                // Its whole process group: a hook's children do not outlive its bound.
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.kill().await;
            let timeout_ms = u64::try_from(HOOK_TIMEOUT.as_millis()).unwrap_or(u64::MAX);
            tracing::warn!(job_id = %id, event = event.as_str(), origin, timeout_ms, "hook timed out; killed");
        }
    }
}

/// Reads a stream to its end, keeping at most [`MAX_HOOK_OUTPUT`] bytes (the rest is drained,
/// so the hook never blocks on a full pipe).
async fn bounded(stream: Option<impl AsyncRead + Unpin>) -> String {
    let Some(mut stream) = stream else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = MAX_HOOK_OUTPUT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    String::from_utf8_lossy(&kept).trim_end().to_owned()
}
