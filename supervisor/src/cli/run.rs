//! `supervisor run FILE`: one job in the foreground, with the same supervision code as the
//! daemon. The first Ctrl-C (or SIGTERM) cancels softly; a second one kills.

use crate::containment::Containment;
use crate::job::{Jobs, JobsConfig, Launcher, Order, check_runnable};
use crate::process::{self, WorkerCommand};
use crate::state_dir::StateDir;
use crate::store::{StoreHandle, pending_reverts};
use anyhow::Context;
use shared::exit;
use shared::ids::JobId;
use shared::state::JobState;
use std::path::PathBuf;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{broadcast, mpsc};

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
    let store = StoreHandle::open(state_dir.root()).context("cannot open the store")?;
    process::start_reaper()?;
    let worker = WorkerCommand::locate(args.conductor_bin)?;
    tracing::debug!(?worker, "conductor program");

    let containment = Containment::detect(None);
    tracing::info!(mode = containment.mode(), detail = ?containment, "containment");
    if let Err(problem) = check_runnable(&spec, &containment) {
        eprintln!("{}: {problem}", args.file.display());
        return Ok(exit::INVALID_INPUT);
    }
    let (job_id, name, count) = {
        let source = args.file.display().to_string();
        let (name, count) = (spec.name.clone(), spec.tasks.len());
        let spec = spec.clone();
        let owner = process::own_supervisor_id();
        let id = store
            .call(move |s| s.create_job(&spec, &source, Some(owner)))
            .await?;
        (id, name, count)
    };
    println!("job {job_id} {name}: {count} task(s)");
    let (events_tx, events) = mpsc::unbounded_channel();
    let jobs = Jobs::new(JobsConfig {
        store: store.clone(),
        launcher: Launcher {
            state_dir,
            worker,
            containment,
            // One job: nothing to spawn ahead.
            warm: None,
        },
        observer: Some(events_tx),
        hooks: crate::job::DaemonHooks::default(),
        // No board: nothing to delegate.
        lease: None,
        board: None,
        // One job, followed here as it goes: a lag skips its older events, never its end.
        events_kept: 64,
    });
    let mut states = jobs.subscribe();
    let printer = tokio::spawn(super::printer::print_events(spec, events));
    jobs.ask(&job_id, Order::Start).await?;
    tokio::spawn(forward_interrupts(jobs.clone(), job_id.clone()));
    let state = loop {
        match states.recv().await {
            Ok(event) if event.job == job_id && event.task.is_none() => {
                match event.state.parse::<JobState>() {
                    Ok(state) if !state.is_live() => break state,
                    _ => {}
                }
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => anyhow::bail!("the job's actor is gone"),
        }
    };
    // Every event of the job is in the printer's channel by now; it stops at the job's end.
    let _ = tokio::time::timeout(PRINTER_DRAIN, printer).await;
    // The job's hooks would die with this process: they have their own bound.
    let hooks_bound = crate::job::HOOK_TIMEOUT + std::time::Duration::from_secs(1);
    let _ = tokio::time::timeout(hooks_bound, crate::job::hooks_settled()).await;

    println!("job {job_id} ended: {state}");
    if state == JobState::Crashed {
        let id = job_id.clone();
        if let Ok(Some(reason)) = store.call(move |s| Ok(s.job(&id)?.reason)).await {
            eprintln!("supervisor: {reason}");
        }
    }
    print_pending_reverts(&store, &job_id, state).await?;
    Ok(exit::for_job_state(state).unwrap_or(exit::INTERNAL))
}

/// After a hard end or a failed revert: the reverts still to run, and how to run them.
async fn print_pending_reverts(
    store: &StoreHandle,
    job_id: &JobId,
    state: JobState,
) -> anyhow::Result<()> {
    if !matches!(
        state,
        JobState::Killed | JobState::Crashed | JobState::RevertFailed
    ) {
        return Ok(());
    }
    let id = job_id.clone();
    let pending: Vec<String> = pending_reverts(&store.call(move |s| s.tasks(&id)).await?)
        .into_iter()
        .map(|t| t.name)
        .collect();
    if !pending.is_empty() {
        println!(
            "reverts pending: {} (run them later with: supervisor revert {job_id})",
            pending.join(", ")
        );
    }
    Ok(())
}

/// How long to wait for the last lines of output to be printed after the job's end.
const PRINTER_DRAIN: std::time::Duration = std::time::Duration::from_secs(1);

/// First Ctrl-C or SIGTERM: soft cancel. Second: kill.
async fn forward_interrupts(jobs: Jobs, job_id: JobId) {
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
                by: None,
            }
        } else {
            eprintln!("supervisor: {name} again: killing the job");
            Order::Kill {
                reason: format!("{name} received twice"),
                by: None,
            }
        };
        if let Err(err) = jobs.ask(&job_id, order).await {
            tracing::debug!(error = %err, "order not carried out");
        }
    }
}
