//! Shows a job's progress on the terminal: each task as it starts and ends, its output prefixed
//! by the task name (stdout lines on stdout, stderr lines on stderr).

use super::escape::shown;
use super::progress::{ProgressLine, REDRAW_EVERY};
use shared::protocol::conductor::{JobEvent, Phase, StepOutcome, Stream};
use shared::spec::JobSpec;
use std::io::Write;
use std::time::Instant;
use tokio::sync::mpsc;

/// Prints events until the job's end (or until the channel closes); on a terminal, a progress
/// line (task i of n, elapsed) stays below them.
pub async fn print_events(spec: JobSpec, mut events: mpsc::UnboundedReceiver<JobEvent>) {
    let mut started: Vec<Option<Instant>> = vec![None; spec.tasks.len()];
    let name = |task: u32| task_name(&spec, task);
    let mut progress = ProgressLine::new();
    let mut current: Option<(u32, &'static str)> = None;
    let mut tick = tokio::time::interval(REDRAW_EVERY);
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = tick.tick(), if progress.is_enabled() => {
                draw(&mut progress, current, &spec, &name);
                continue;
            }
        };
        let Some(event) = event else { break };
        progress.clear();
        if let JobEvent::TaskStarting { task, phase, .. } = &event {
            let step = if *phase == Phase::Revert {
                "revert"
            } else {
                "execute"
            };
            current = Some((*task, step));
        }
        if matches!(event, JobEvent::JobFinished { .. }) {
            return;
        }
        print_event(&event, &spec, &mut started);
        draw(&mut progress, current, &spec, &name);
    }
}

/// A task's name as shown on a terminal.
fn task_name(spec: &JobSpec, task: u32) -> String {
    let name = spec
        .tasks
        .get(task as usize)
        .map_or("?", |t| t.name.as_str());
    shown(name).into_owned()
}

/// One line for one event: stdout lines on stdout, stderr lines on stderr.
fn print_event(event: &JobEvent, spec: &JobSpec, started: &mut [Option<Instant>]) {
    let name = |task: &u32| task_name(spec, *task);
    let mut out = std::io::stdout().lock();
    let _ = match event {
        JobEvent::TaskStarting {
            task,
            phase,
            attempt,
        } => {
            if let Some(slot) = started.get_mut(*task as usize) {
                *slot = Some(Instant::now());
            }
            match (phase, attempt) {
                (Phase::Execute, 1) => writeln!(out, "[{}] execute", name(task)),
                (Phase::Execute, n) => writeln!(out, "[{}] execute (attempt {n})", name(task)),
                (Phase::Revert, _) => writeln!(out, "[{}] revert", name(task)),
            }
        }
        JobEvent::Output {
            task, stream, line, ..
        } => match stream {
            Stream::Stdout => writeln!(out, "[{}] {}", name(task), shown(line)),
            Stream::Stderr => {
                writeln!(std::io::stderr().lock(), "[{}] {}", name(task), shown(line))
            }
        },
        JobEvent::TaskFinished {
            task,
            phase,
            outcome,
        } => {
            let took = started
                .get(*task as usize)
                .copied()
                .flatten()
                .map_or(String::new(), |t| {
                    format!(" ({:.2}s)", t.elapsed().as_secs_f64())
                });
            writeln!(out, "[{}] {}{took}", name(task), step_end(*phase, outcome))
        }
        JobEvent::Cancelling { reason } => writeln!(out, "cancelling: {}", shown(reason)),
        JobEvent::Fenced { reason } => writeln!(out, "{}", shown(reason)),
        JobEvent::TaskSpawned { .. } | JobEvent::JobFinished { .. } => Ok(()),
    };
    let _ = out.flush();
}

/// How a step ended, in words.
fn step_end(phase: Phase, outcome: &StepOutcome) -> String {
    match (phase, outcome) {
        (Phase::Execute, StepOutcome::Success { .. }) => "success".to_owned(),
        (Phase::Execute, StepOutcome::Failure { reason, .. }) => {
            format!("failure: {}", shown(reason))
        }
        (Phase::Revert, StepOutcome::Success { .. }) => "reverted".to_owned(),
        (Phase::Revert, StepOutcome::Failure { reason, .. }) => {
            format!("revert failed: {}", shown(reason))
        }
    }
}

/// Redraws the progress line for the step running now.
fn draw(
    progress: &mut ProgressLine,
    current: Option<(u32, &str)>,
    spec: &JobSpec,
    name: &impl Fn(u32) -> String,
) {
    match current {
        Some((task, phase)) => {
            let n = spec.tasks.len();
            let name = name(task);
            progress.draw(Some((task as usize + 1, n, &name)), phase);
        }
        None => progress.draw(None, "starting"),
    }
}
