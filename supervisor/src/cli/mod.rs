//! The command line: argument parsing, and the mapping of outcomes to documented exit codes
//! (only here; the library returns values).

mod board;
mod client;
mod daemon;
mod escape;
mod hosts;
mod job_file;
mod jobs;
mod operators;
mod printer;
mod progress;
mod run;
mod validate;

use clap::{Parser, Subcommand};
use shared::exit;
use std::path::PathBuf;

const EXIT_CODES: &str = "\
Exit codes (run):
  0  the job succeeded
  1  a task failed; every revert ran
  2  invalid input (bad file or flags): nothing ran
  3  cancelled; every revert ran
  4  killed or crashed: some reverts were skipped
  5  a revert failed
  10 another error (state dir, store, spawn)
Exit codes (other commands; --wait exits with the codes of run):
  0  done
  2  invalid input
  6  no such job
  7  the daemon is not running
  8  refused: the job's state does not allow it, or the daemon takes no new work
  9  permission denied: the daemon serves its own uid and root only
  10 another error
  11 hosts: the daemon has no job board (--board)";

/// Runs jobs of tasks, each job in its own single-threaded conductor process. A cancel is soft
/// (the running task is interrupted and every task that began is reverted, last first); a kill
/// (SIGKILL) is the last resort, and the reverts it skipped are recorded.
#[derive(Parser, Debug)]
#[command(name = "supervisor", version, about, long_about = None, after_help = EXIT_CODES)]
pub struct Cli {
    /// Where the store, sockets and logs live [default: $XDG_STATE_HOME/supervisor, else
    /// ~/.local/state/supervisor]
    #[arg(long, global = true, env = "SUPERVISOR_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// More logging on stderr (-v info, -vv debug); SUPERVISOR_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Log format on stderr: text for people, json (one object per line) for machines
    #[arg(long, global = true, value_enum, default_value_t = crate::logging::LogFormat::Text)]
    pub log_format: crate::logging::LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a job in the foreground: Ctrl-C cancels (reverts), a second Ctrl-C kills
    #[command(after_help = EXIT_CODES)]
    Run(run::RunArgs),
    /// Check a job file and print what it would run; nothing runs
    Validate(validate::ValidateArgs),
    /// Run the daemon in the foreground (systemd style); ready once the control socket accepts
    Daemon(Box<daemon::DaemonArgs>),
    #[command(flatten)]
    Job(jobs::JobCommand),
    /// Print a shell completion script (e.g. `supervisor completions bash > /etc/bash_completion.d/supervisor`)
    Completions { shell: clap_complete::Shell },
}

/// Parses the command line, runs the command, returns the process exit code.
#[must_use]
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                exit::INVALID_INPUT
            } else {
                exit::SUCCESS
            };
        }
    };
    let quiet_default = if matches!(cli.command, Command::Daemon(_)) {
        "info"
    } else {
        "warn"
    };
    crate::logging::init(cli.verbose, quiet_default, cli.log_format);
    match cli.command {
        Command::Run(args) => run::main(args, cli.state_dir),
        Command::Validate(args) => validate::main(&args),
        Command::Daemon(args) => daemon::main(*args, cli.state_dir),
        Command::Job(command) => jobs::main(command, cli.state_dir),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "supervisor",
                &mut std::io::stdout(),
            );
            exit::SUCCESS
        }
    }
}

/// Reads and validates a job file, checking its native kinds against its worker; the error is
/// already the message to print (exit 2). The spec comes back as it is stored: `worker` and
/// every task's `cwd` are absolute paths (relative ones are relative to the job file), and it
/// passed [`JobSpec::check`](shared::spec::JobSpec::check), the check the daemon repeats on
/// every submitted spec.
pub fn load_spec(file: &std::path::Path) -> Result<shared::spec::JobSpec, String> {
    let source = job_file::read_job_file(file)?;
    let default_name = file
        .file_stem()
        .map_or_else(|| "job".to_owned(), |s| s.to_string_lossy().into_owned());
    let list_kinds = |worker: &str| {
        let program =
            crate::process::WorkerCommand::resolve(worker, file).map_err(|e| format!("{e:#}"))?;
        crate::process::list_kinds(&program).map_err(|e| format!("{e:#}"))
    };
    let mut spec = shared::spec::JobSpec::parse_checked(
        &source,
        &file.display().to_string(),
        &default_name,
        &list_kinds,
    )
    .map_err(|err| err.to_string())?;
    if let Some(worker) = &spec.worker {
        let program = crate::process::WorkerCommand::resolve(worker, file)
            .map_err(|e| format!("{}: {e:#}", file.display()))?;
        spec.worker = Some(program.display().to_string());
    }
    if spec.tasks.iter().any(|task| task.cwd.is_some()) {
        let dir = job_file::job_file_dir(file)?;
        spec.resolve_cwds(&dir);
    }
    spec.check()
        .map_err(|problem| format!("{}: {problem}", file.display()))?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job file whose plan cannot fit in a frame is refused before anything runs or is
    /// stored, with exit 2 and a message that names the file and the size.
    #[test]
    fn validate_refuses_a_huge_job_file_with_exit_2() {
        let dir = job_file::tests::TempDir::new();
        let file = dir.0.join("huge.toml");
        let run = "x".repeat(5 * 1024 * 1024);
        std::fs::write(&file, format!("[[task]]\nname = \"a\"\nrun = \"{run}\"\n")).expect("write");
        let args = validate::ValidateArgs { file: file.clone() };
        assert_eq!(validate::main(&args), exit::INVALID_INPUT);
        let problem = load_spec(&file).expect_err("refused");
        assert!(
            problem.starts_with(&file.display().to_string()),
            "{problem}"
        );
        assert!(problem.contains("too large"), "{problem}");
    }

    #[test]
    fn a_loaded_spec_holds_absolute_cwds() {
        let dir = job_file::tests::TempDir::new();
        let file = dir.0.join("job.toml");
        std::fs::write(
            &file,
            "[[task]]\nname = \"a\"\nrun = \"true\"\ncwd = \"sub\"\n",
        )
        .expect("write");
        let spec = load_spec(&file).expect("valid");
        let want = std::fs::canonicalize(&dir.0).expect("dir").join("sub");
        assert_eq!(
            spec.tasks[0].cwd.as_deref(),
            Some(want.to_str().expect("utf-8"))
        );
    }
}
