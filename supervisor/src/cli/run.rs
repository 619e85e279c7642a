//! `supervisor run FILE`: one job in the foreground, with the same supervision code as the
//! daemon. The first Ctrl-C (or SIGTERM) cancels softly; a second one kills.

use crate::containment::Containment;
use crate::launch::{Launcher, Purpose, check_runnable, record_launch_failure};
use crate::process::{self, WorkerCommand};
use crate::state_dir::StateDir;
use crate::store::{Store, pending_reverts};
use crate::supervise::{Order, Supervision};
use anyhow::Context;
use shared::exit;
use shared::state::JobState;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The job file (TOML)
    pub file: PathBuf,

    /// The conductor program [default: conductor-worker next to this binary, else this binary]
    #[arg(long, env = "SUPERVISOR_CONDUCTOR_BIN", value_name = "PATH")]
    pub conductor_bin: Option<PathBuf>,
}

pub fn main(args: RunArgs, state_dir: Option<PathBuf>) -> i32 {
    let spec = match super::load_spec(&args.file) {
        Ok(spec) => spec,
        Err(message) => {
            eprintln!("{message}");
            return exit::INVALID_INPUT;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("supervisor: cannot start: {err}");
            return exit::INTERNAL;
        }
    };
    match runtime.block_on(run_job(args, state_dir, spec)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("supervisor: {err:#}");
            exit::INTERNAL
        }
    }
}

async fn run_job(
    args: RunArgs,
    state_dir: Option<PathBuf>,
    spec: shared::spec::JobSpec,
) -> anyhow::Result<i32> {
    let state_dir = StateDir::resolve(state_dir)?;
    state_dir.create()?;
    let store = Arc::new(Store::open(state_dir.root()).context("cannot open the store")?);
    process::start_reaper()?;
    let worker = WorkerCommand::locate(args.conductor_bin)?;
    tracing::debug!(?worker, "conductor program");

    let containment = Containment::detect(None);
    tracing::info!(mode = containment.mode(), detail = ?containment, "containment");
    if let Err(problem) = check_runnable(&spec, &containment) {
        eprintln!("{}: {problem}", args.file.display());
        return Ok(exit::INVALID_INPUT);
    }
    let job_id = store.create_job(&spec, &args.file.display().to_string())?;
    println!("job {job_id} {}: {} task(s)", spec.name, spec.tasks.len());
    let started = tokio::time::Instant::now();
    store.transition_job(&job_id, &[JobState::Pending], JobState::Running, None)?;
    let launcher = Launcher {
        containment,
        store: store.clone(),
        state_dir,
        worker,
    };
    let (conductor, link, plan) = match launcher.launch(&job_id, &Purpose::Execute).await {
        Ok(launched) => launched,
        Err(err) => {
            record_launch_failure(&store, &job_id, &err).await;
            eprintln!("supervisor: {err:#}");
            return Ok(exit::KILLED);
        }
    };

    let (orders_tx, orders) = mpsc::channel(4);
    tokio::spawn(forward_interrupts(orders_tx));
    let (events_tx, events) = mpsc::unbounded_channel();
    let printer = tokio::spawn(super::printer::print_events(spec.clone(), events));
    let supervision = Supervision {
        store: store.clone(),
        job_id: job_id.clone(),
        spec,
        started,
        observer: Some(events_tx),
    };
    let state = supervision
        .run(conductor, Some(link), Some(plan), orders)
        .await?;
    drop(supervision);
    let _ = printer.await;

    println!("job {job_id} ended: {state}");
    if matches!(
        state,
        JobState::Killed | JobState::Crashed | JobState::RevertFailed
    ) {
        let pending: Vec<String> = pending_reverts(&store.tasks(&job_id)?)
            .into_iter()
            .map(|t| t.name)
            .collect();
        if !pending.is_empty() {
            println!(
                "reverts pending: {} (run them later with: supervisor revert {job_id})",
                pending.join(", ")
            );
        }
    }
    Ok(exit::for_job_state(state).unwrap_or(exit::INTERNAL))
}

/// First Ctrl-C or SIGTERM: soft cancel. Second: kill.
async fn forward_interrupts(orders: mpsc::Sender<Order>) {
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot handle SIGINT/SIGTERM");
        return;
    };
    let mut count = 0;
    loop {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        count += 1;
        let order = if count == 1 {
            eprintln!(
                "supervisor: {name}: cancelling (reverting what began); press Ctrl-C again to kill"
            );
            Order::Cancel {
                timeout: None,
                reason: format!("{name} received"),
            }
        } else {
            eprintln!("supervisor: {name} again: killing the job");
            Order::Kill {
                reason: format!("{name} received twice"),
            }
        };
        if orders.send(order).await.is_err() {
            return;
        }
    }
}
