//! The conductor: one process, one thread, one job.
//!
//! # Theory of operation
//!
//! The supervisor binds the job's socket, then spawns this process in a new session with the
//! listening socket as file descriptor 3 ([`Config::listen_fd`]). Everything here runs on one
//! tokio `current_thread` runtime: the process never has a second thread.
//!
//! - [`link`] owns the socket. It accepts one supervisor connection at a time (same uid or root),
//!   handshakes, receives the [`JobPlan`](shared::protocol::conductor::JobPlan), and sends the
//!   numbered reports; it keeps every unacknowledged report and sends them again to the next
//!   supervisor that connects, so a supervisor restart loses nothing.
//! - [`runner`] walks the plan: execute the tasks in order (with retries), and on failure or
//!   cancel revert every task whose execute began, last first. Before each step it reports the
//!   step and waits for the acknowledgement (write-ahead).
//! - [`task`] is what every task is to the engine: the [`Task`] trait (async `execute` and
//!   `revert`) and the [`TaskContext`] (params, cancel signal, progress lines, the execute's
//!   result in revert). [`command`] implements it for `run`/`revert` commands: each step a
//!   process in its own process group, with the task timeout and, on cancel, SIGTERM then
//!   SIGKILL after the term grace. Native kinds come from a [`Registry`] that a custom conductor
//!   binary passes to [`main_with_registry`].
//! - [`reaper`] makes this process a child subreaper and reaps the orphans it inherits (a task's
//!   background children), without touching the children tokio owns.
//!
//! A soft cancel is the supervisor's `Cancel` message, or SIGTERM/SIGINT sent to this process.
//! A conductor that loses its supervisor keeps going until its next write-ahead point, waits
//! there for a supervisor to connect again, and exits only once its last report is acknowledged.
//! One that never receives its plan gives up after [`PLAN_TIMEOUT`]. A supervisor on a job
//! board also gives it a *fence* (`ToConductor::Fence`, renewed with each of its lease
//! renewals): past it without a newer one, the conductor kills its running steps, starts
//! nothing more, reports `JobEvent::Fenced` and exits once that is acknowledged
//! ([`runner`]; ARCHITECTURE.md, The job board).
//!
//! Nothing the conductor inherited beyond stdin, stdout and stderr reaches a task: [`fds`] makes
//! every such descriptor close-on-exec at start, the listening socket first.

pub mod command;
pub mod exit_watch;
pub mod fds;
pub mod limits;
pub mod link;
pub mod output_cap;
pub mod reaper;
pub mod registry;
pub mod runner;
pub mod signals;
pub mod task;
pub mod task_env;

pub use registry::{Registry, main_with_registry};
pub use task::{Task, TaskContext, TaskError, TaskFuture};

use anyhow::Context;
use shared::ids::JobId;
use std::io::Write;
use std::os::fd::RawFd;
use std::time::Duration;

/// The README's examples, compiled as doc tests (its "Writing tasks in Rust" section).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// How the supervisor starts a conductor.
#[derive(Clone, Debug)]
pub struct Config {
    /// The inherited listening socket.
    pub listen_fd: RawFd,
    /// The job this conductor is for, checked in the handshake; `None` for a warm conductor
    /// (`--warm`), spawned ahead of any job: it takes the job id of the first supervisor hello
    /// it gets, and is that job's for the rest of its life (ARCHITECTURE.md, Warm conductors).
    pub job_id: Option<JobId>,
    /// The daemon that spawned a warm conductor (`--daemon PID`): it must be this process's
    /// parent, else it died before this process looked, and nobody will ever assign it.
    pub daemon_pid: Option<i32>,
    /// How long to wait, from the start, for the job's plan before giving up
    /// ([`PLAN_TIMEOUT`] unless a test says otherwise).
    pub plan_timeout: Duration,
}

/// The file descriptor the supervisor puts the listening socket on.
pub const DEFAULT_LISTEN_FD: RawFd = 3;

/// How long a conductor waits for its plan, from its start. A supervisor that spawned it sends
/// the plan at once; one that cannot (it died, or failed between the spawn and the handshake)
/// would otherwise leave the conductor waiting forever, unsupervised.
pub const PLAN_TIMEOUT: Duration = Duration::from_secs(60);

/// A bad command line (the conductor is started by the supervisor, not by hand).
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    #[error("{0} needs a value")]
    MissingValue(&'static str),
    #[error("--listen-fd takes a number, not {0:?}")]
    BadListenFd(String),
    #[error("--daemon takes a pid, not {0:?}")]
    BadDaemonPid(String),
    #[error("bad job id {0:?}")]
    BadJobId(String),
    #[error(
        "unknown argument {0:?} (usage: conductor-worker (--job-id ID | --warm) [--listen-fd N]; it is started by the supervisor)"
    )]
    Unknown(String),
    #[error("--job-id or --warm is required (the conductor is started by the supervisor)")]
    MissingJobId,
    #[error("--job-id and --warm exclude each other")]
    JobIdAndWarm,
}

/// Parses the conductor's command line (`--job-id ID [--listen-fd N]`, or `--warm [--daemon PID]
/// [--listen-fd N]` for a conductor spawned ahead of its job by the daemon PID).
pub fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Config, ArgsError> {
    let mut listen_fd = DEFAULT_LISTEN_FD;
    let mut job_id = None;
    let mut warm = false;
    let mut daemon_pid = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--warm" => warm = true,
            "--daemon" => {
                let text = args.next().ok_or(ArgsError::MissingValue("--daemon"))?;
                daemon_pid = Some(text.parse().map_err(|_| ArgsError::BadDaemonPid(text))?);
            }
            "--listen-fd" => {
                let text = args.next().ok_or(ArgsError::MissingValue("--listen-fd"))?;
                listen_fd = text.parse().map_err(|_| ArgsError::BadListenFd(text))?;
            }
            "--job-id" => {
                let text = args.next().ok_or(ArgsError::MissingValue("--job-id"))?;
                job_id = Some(JobId::parse(&text).ok_or(ArgsError::BadJobId(text))?);
            }
            other => return Err(ArgsError::Unknown(other.to_owned())),
        }
    }
    let job_id = match (job_id, warm) {
        (Some(_), true) => return Err(ArgsError::JobIdAndWarm),
        (None, false) => return Err(ArgsError::MissingJobId),
        (job_id, _) => job_id,
    };
    Ok(Config {
        listen_fd,
        job_id,
        daemon_pid,
        plan_timeout: PLAN_TIMEOUT,
    })
}

/// Runs the default conductor (command tasks only); the exit code is 0 when the job's end was
/// acknowledged.
pub fn main_with_args(args: impl Iterator<Item = String>) -> std::process::ExitCode {
    main_with(Registry::new(), args)
}

/// Runs a conductor with these native kinds on a single-threaded runtime. `--list-kinds` prints
/// the kinds instead.
pub(crate) fn main_with(
    registry: Registry,
    args: impl Iterator<Item = String>,
) -> std::process::ExitCode {
    let args: Vec<String> = args.collect();
    if args.iter().any(|a| a == "--list-kinds") {
        for kind in registry.kinds() {
            println!("{kind}");
        }
        return std::process::ExitCode::SUCCESS;
    }
    init_logging();
    let result = parse_args(args.into_iter())
        .map_err(anyhow::Error::from)
        .and_then(|config| {
            // Before the runtime: what is open now was inherited.
            let changed = fds::close_inherited_on_exec()
                .context("cannot make the inherited descriptors close-on-exec")?;
            tracing::debug!(count = changed, "inherited descriptors made close-on-exec");
            signals::install().context("cannot install the cancel signal handlers")?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot build the runtime")?;
            let warm = config.job_id.is_none();
            // The daemon that spawned a warm conductor; it may have died already (this
            // process then has another parent), which `daemon_gone_while_warm` sees.
            let parent = config
                .daemon_pid
                .map_or_else(nix::unistd::getppid, nix::unistd::Pid::from_raw);
            runtime.block_on(async {
                let served = async { runner::serve(config, &registry).await.map(Some) };
                if !warm {
                    return served.await;
                }
                tokio::select! {
                    served = served => served,
                    () = link::daemon_gone_while_warm(parent) => Ok(None),
                }
            })
        });
    match result {
        Ok(Some(state)) => {
            tracing::info!(state = %state, "conductor finished");
            std::process::ExitCode::SUCCESS
        }
        Ok(None) => {
            tracing::info!("the daemon that spawned this warm conductor is gone; exiting");
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "conductor failed");
            // Never a panic on a full disk or a closed stderr.
            let _ = writeln!(std::io::stderr(), "conductor-worker: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// JSON lines to stderr (the supervisor points stderr at the job's `conductor.log`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SUPERVISOR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Its own complaints would go to the same (full, closed) stderr, and panic there.
        .log_internal_errors(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Config, ArgsError> {
        parse_args(list.iter().map(|a| (*a).to_owned()))
    }

    #[test]
    fn a_warm_conductor_has_no_job_until_told() {
        let warm = args(&["--warm", "--daemon", "42", "--listen-fd", "3"]).expect("valid");
        assert_eq!(warm.job_id, None);
        assert_eq!(warm.daemon_pid, Some(42));
        assert_eq!(warm.listen_fd, 3);
        let cold = args(&["--job-id", "0000abcd"]).expect("valid");
        assert_eq!(
            cold.job_id.map(|j| j.as_str().to_owned()).as_deref(),
            Some("0000abcd")
        );
        assert!(matches!(args(&[]), Err(ArgsError::MissingJobId)));
        assert!(matches!(
            args(&["--warm", "--job-id", "0000abcd"]),
            Err(ArgsError::JobIdAndWarm)
        ));
    }
}
