//! `supervisor validate FILE`: the same checks as `run` and `submit`, and a summary.

use shared::duration::format_duration;
use shared::exit;
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
            for task in &spec.tasks {
                let revert = if task.revert.is_some() {
                    "with revert"
                } else {
                    "no revert"
                };
                println!("  {} ({revert}, {} retries)", task.name, task.retries);
            }
            exit::SUCCESS
        }
        Err(message) => {
            eprintln!("{message}");
            exit::INVALID_INPUT
        }
    }
}
