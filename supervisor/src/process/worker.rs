//! Which program runs as a job's conductor, and what a worker binary provides.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How the supervisor starts the conductor program.
#[derive(Clone, Debug)]
pub struct WorkerCommand {
    pub program: PathBuf,
    /// Arguments before the conductor's own (the hidden `conductor` subcommand when the
    /// supervisor binary serves as its own worker).
    pub leading_args: Vec<String>,
}

impl WorkerCommand {
    /// `explicit` (flag or `$SUPERVISOR_CONDUCTOR_BIN`), else the `conductor-worker` binary next
    /// to this one, else (with the `embedded-conductor` feature) this binary itself in conductor
    /// mode: no PATH setup is ever needed.
    pub fn locate(explicit: Option<PathBuf>) -> anyhow::Result<Self> {
        if let Some(program) = explicit {
            if !program.is_file() {
                bail!("conductor binary {} does not exist", program.display());
            }
            return Ok(Self {
                program,
                leading_args: Vec::new(),
            });
        }
        let me = std::env::current_exe().context("cannot find the supervisor's own binary")?;
        let sibling = me.with_file_name("conductor-worker");
        if sibling.is_file() {
            return Ok(Self {
                program: sibling,
                leading_args: Vec::new(),
            });
        }
        Self::embedded(me, &sibling)
    }

    /// This binary as its own conductor (the hidden `conductor` subcommand).
    #[cfg(feature = "embedded-conductor")]
    #[allow(clippy::unnecessary_wraps)]
    fn embedded(me: PathBuf, _sibling: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            program: me,
            leading_args: vec!["conductor".into()],
        })
    }

    /// Built without the conductor: there is no fallback.
    #[cfg(not(feature = "embedded-conductor"))]
    fn embedded(_me: PathBuf, sibling: &Path) -> anyhow::Result<Self> {
        bail!(
            "no conductor binary: {} does not exist, and this supervisor was built without the \
             `embedded-conductor` feature (pass --conductor-bin or SUPERVISOR_CONDUCTOR_BIN)",
            sibling.display()
        )
    }

    /// The arguments of a conductor for `job_id` that finds its listening socket at fd 3.
    #[must_use]
    pub fn conductor_args(&self, job_id: &str) -> Vec<String> {
        let own = ["--job-id", job_id, "--listen-fd", "3"];
        self.leading_args
            .iter()
            .cloned()
            .chain(own.into_iter().map(str::to_owned))
            .collect()
    }

    /// The arguments of a warm conductor (spawned ahead of its job, which its first supervisor
    /// hello names) that finds its listening socket at fd 3. It is told this daemon's pid: it
    /// exits when that is no longer its parent before a job is assigned.
    #[must_use]
    pub fn warm_args(&self) -> Vec<String> {
        let daemon = std::process::id().to_string();
        let own = ["--warm", "--daemon", &daemon, "--listen-fd", "3"];
        self.leading_args
            .iter()
            .cloned()
            .chain(own.into_iter().map(str::to_owned))
            .collect()
    }

    /// Where a job file's `worker` is: a bare name next to this binary, a path relative to the
    /// job file.
    pub fn resolve(worker: &str, job_file: &Path) -> anyhow::Result<PathBuf> {
        let path = if worker.contains('/') {
            let base = job_file
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            base.join(worker)
        } else {
            std::env::current_exe()
                .context("cannot find the supervisor's own binary")?
                .with_file_name(worker)
        };
        let path = std::fs::canonicalize(&path).with_context(|| {
            format!(
                "worker {worker:?} not found at {} (build it first?)",
                path.display()
            )
        })?;
        Ok(path)
    }
}

/// How long a worker has to answer `--list-kinds`.
const LIST_KINDS_TIMEOUT: Duration = Duration::from_secs(10);

/// The native kinds a worker binary provides (`WORKER --list-kinds`, one per line). Blocking:
/// it waits for the worker. It reaps its own child, so it must not run in a process whose
/// reaper reaps every child (the daemon): the CLI runs it before any reaper starts.
pub fn list_kinds(program: &Path) -> anyhow::Result<Vec<String>> {
    let mut child = Command::new(program)
        .arg("--list-kinds")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run worker {}", program.display()))?;
    let started = std::time::Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if started.elapsed() > LIST_KINDS_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "worker {} did not answer --list-kinds in time",
                program.display()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "worker {} --list-kinds failed: {}",
            program.display(),
            output.status
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}
