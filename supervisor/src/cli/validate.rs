//! `supervisor validate FILE`: the same checks as `run` and `submit`, and a summary; a graph is
//! printed by levels (what starts together when every task takes as long).

use shared::duration::format_duration;
use shared::exit;
use shared::spec::{Flow, Graph, JobSpec, TaskBody};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ValidateArgs {
    /// The job file (TOML)
    pub file: PathBuf,
}

pub fn main(args: &ValidateArgs) -> i32 {
    match super::load_spec(&args.file) {
        Ok(spec) => {
            println!(
                "{}: valid job {:?}: {} task(s), cancel_timeout {}, term_grace {}",
                args.file.display(),
                spec.name,
                spec.tasks.len(),
                format_duration(spec.cancel_timeout),
                format_duration(spec.term_grace)
            );
            if let Some(worker) = &spec.worker {
                println!("  worker: {worker}");
            }
            for task in &spec.tasks {
                let what = match &task.body {
                    TaskBody::Command {
                        revert: Some(_), ..
                    } => "command, with revert".to_owned(),
                    TaskBody::Command { revert: None, .. } => "command, no revert".to_owned(),
                    TaskBody::Native { kind, .. } => format!("native kind {kind:?}"),
                };
                let revert_timeout = if task.body.has_revert() {
                    format!(
                        ", revert_timeout {}",
                        format_duration(spec.revert_timeout(task))
                    )
                } else {
                    String::new()
                };
                let pacing = if task.retries > 0 && !task.retry_delay.is_zero() {
                    format!(
                        " after {}, backoff {}",
                        format_duration(task.retry_delay),
                        task.retry_backoff
                    )
                } else {
                    String::new()
                };
                println!(
                    "  {} ({what}, {} retries{pacing}{revert_timeout})",
                    task.name, task.retries
                );
            }
            if spec.flow == Flow::Graph {
                print_levels(&spec);
            }
            exit::SUCCESS
        }
        Err(message) => {
            eprintln!("{message}");
            exit::INVALID_INPUT
        }
    }
}

/// `flow = "graph"`: its settings, then each level with its tasks and what each runs after.
fn print_levels(spec: &JobSpec) {
    println!(
        "  flow: graph, max_parallel {}, on_failure {}",
        spec.max_parallel,
        spec.on_failure.as_str()
    );
    let graph = Graph::of(spec);
    for (level, tasks) in graph.levels().iter().enumerate() {
        let shown: Vec<String> = tasks
            .iter()
            .map(|&t| {
                let name = &spec.tasks[t].name;
                let after: Vec<&str> = graph
                    .deps(t)
                    .iter()
                    .map(|&d| spec.tasks[d].name.as_str())
                    .collect();
                if after.is_empty() {
                    name.clone()
                } else {
                    format!("{name} (after {})", after.join(", "))
                }
            })
            .collect();
        println!("  level {level}: {}", shown.join(", "));
    }
}
