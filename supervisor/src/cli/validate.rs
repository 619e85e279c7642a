//! `supervisor validate FILE`: the same checks as `run` and `submit`, and a summary.

use shared::duration::format_duration;
use shared::exit;
use shared::spec::TaskBody;
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
                println!(
                    "  {} ({what}, {} retries{revert_timeout})",
                    task.name, task.retries
                );
            }
            exit::SUCCESS
        }
        Err(message) => {
            eprintln!("{message}");
            exit::INVALID_INPUT
        }
    }
}
