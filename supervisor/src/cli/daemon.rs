//! `supervisor daemon`: runs in the foreground (systemd style) until SIGTERM, SIGINT or
//! `supervisor shutdown`. Conductors keep running when it stops.

use crate::daemon::{self, DaemonConfig};
use crate::process::WorkerCommand;
use crate::state_dir::StateDir;
use shared::exit;
use std::path::PathBuf;
use tokio::signal::unix::{SignalKind, signal};

#[derive(clap::Args, Debug)]
pub struct DaemonArgs {
    /// How many jobs run at once; the others wait `pending`, in submission order
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub max_jobs: usize,

    /// The base cgroup (v2) under which each job gets its own [default: a `supervisor` child of
    /// the daemon's own cgroup; sessions and process groups when no cgroup is writable]
    #[arg(long, value_name = "PATH")]
    pub cgroup_root: Option<PathBuf>,

    /// The conductor program [default: conductor-worker next to this binary, else this binary]
    #[arg(long, env = "SUPERVISOR_CONDUCTOR_BIN", value_name = "PATH")]
    pub conductor_bin: Option<PathBuf>,

    /// Conductors kept spawned ahead, each waiting in its own cgroup for a job; a job start
    /// takes one instead of spawning (0: none)
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub warm: usize,

    /// Delete finished jobs (rows, logs, sockets) that ended longer ago than DUR, at start and
    /// then hourly, as `supervisor prune --older-than DUR` does [default: keep everything]
    #[arg(long, value_name = "DUR", value_parser = super::jobs::parse_age)]
    pub keep: Option<std::time::Duration>,
    #[command(flatten)]
    pub operators: super::operators::DaemonOperatorArgs,
}

pub fn main(args: DaemonArgs, state_dir: Option<PathBuf>) -> i32 {
    let operators = match args.operators.options() {
        Ok(operators) => operators,
        Err(err) => {
            eprintln!("supervisor daemon: {err:#}");
            return exit::INVALID_INPUT;
        }
    };
    let result = (|| {
        let state_dir = StateDir::resolve(state_dir)?;
        let worker = WorkerCommand::locate(args.conductor_bin)?;
        // Blocking threads run spawns, session-mode kills and the slow close of an inotify
        // watch: on a host of a few cores, 64 keep a burst of thousands of starts moving without
        // a thread (and its stack) per job (ARCHITECTURE.md, Bounds).
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .max_blocking_threads(64)
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let config = DaemonConfig {
                state_dir,
                max_jobs: args.max_jobs,
                warm: args.warm,
                worker,
                cgroup_root: args.cgroup_root,
                keep: args.keep,
                operators,
            };
            let mut terminate = signal(SignalKind::terminate())?;
            let mut interrupt = signal(SignalKind::interrupt())?;
            let stop = async move {
                tokio::select! {
                    _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "stopping"),
                    _ = interrupt.recv() => tracing::info!(signal = "SIGINT", "stopping"),
                }
            };
            daemon::run(config, stop).await
        })
    })();
    match result {
        Ok(()) => exit::SUCCESS,
        Err(err) => {
            eprintln!("supervisor daemon: {err:#}");
            exit::INTERNAL
        }
    }
}
