//! What operators reach for beyond the basic commands: orders with a reason, and how `status`
//! shows who asked and whether the job is paused.

use super::escape::shown;
use shared::protocol::client::{Action, ClientRequest, JobStatus};
use std::time::Duration;

/// The request for an operator's order; the daemon adds who asked.
pub fn order(
    job: &str,
    action: Action,
    reason: Option<String>,
    timeout_ms: Option<u64>,
) -> ClientRequest {
    ClientRequest::Operate {
        job: job.to_owned(),
        action,
        reason,
        timeout_ms,
    }
}

/// The `logs` request: with `--since`, from the lines written within that duration.
pub fn logs_request(
    job: String,
    task: Option<String>,
    follow: bool,
    since: Option<Duration>,
) -> ClientRequest {
    match since {
        Some(since) => ClientRequest::LogsSince {
            job,
            task,
            follow,
            since_ms: crate::clock::now_ms()
                .saturating_sub(i64::try_from(since.as_millis()).unwrap_or(i64::MAX)),
        },
        None => ClientRequest::Logs { job, task, follow },
    }
}

/// `status` lines for the last order (who, when, why) and a pause.
pub fn print_operator_lines(status: &JobStatus) {
    if let Some(since) = status.paused_since_ms {
        let paused =
            Duration::from_millis(u64::try_from(crate::clock::now_ms() - since).unwrap_or(0));
        println!(
            "  PAUSED: frozen for {} (supervisor continue {} thaws it)",
            shared::duration::format_duration(Duration::from_secs(paused.as_secs())),
            status.id
        );
    }
    if let Some(order) = &status.last_order {
        println!("  {}", shown(&order.to_string()));
    }
}

/// A job's state for `ls`: `running PAUSED` while it is frozen.
pub fn shown_state(state: shared::state::JobState, paused_since_ms: Option<i64>) -> String {
    if paused_since_ms.is_some() {
        format!("{} PAUSED", state.as_str())
    } else {
        state.as_str().to_owned()
    }
}

/// `supervisor wait JOB...`: each job to its end, in turn; the exit code of `run` for the worst
/// end (the highest code: a revert that failed outranks a kill, a kill a cancel, and so on).
pub async fn wait_all(
    dir: Option<std::path::PathBuf>,
    jobs: &[String],
) -> super::client::Outcome<i32> {
    let mut worst = shared::exit::SUCCESS;
    for job in jobs {
        worst = worst.max(super::jobs::wait_for_end(dir.clone(), job).await?);
    }
    Ok(worst)
}

/// The daemon's flags for operators.
#[derive(clap::Args, Debug)]
pub struct DaemonOperatorArgs {
    /// Run CMD (by /bin/sh -c) when any job ends: the job's status as JSON on stdin, JOB_ID,
    /// JOB_STATE, JOB_REASON in the environment; killed after 30 s; never run twice per job
    #[arg(long, value_name = "CMD")]
    pub hook_end: Option<String>,

    /// Run CMD when a job ends with reverts skipped (killed or crashed), like --hook-end
    #[arg(long, value_name = "CMD")]
    pub hook_revert_skipped: Option<String>,

    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464); loopback only
    /// unless --metrics-public
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,

    /// Allow --metrics on an address that is not loopback
    #[arg(long, requires = "metrics")]
    pub metrics_public: bool,
}

impl DaemonOperatorArgs {
    /// The daemon's options, checked.
    pub fn options(self) -> anyhow::Result<crate::daemon::OperatorOptions> {
        for (hook, field) in [
            (&self.hook_end, "end"),
            (&self.hook_revert_skipped, "revert_skipped"),
        ] {
            if let Some(problem) = hook
                .as_deref()
                .and_then(|h| shared::spec::hook_problem(h, field))
            {
                anyhow::bail!("--hook-{}: {problem}", field.replace('_', "-"));
            }
        }
        if let Some(addr) = self.metrics {
            if !addr.ip().is_loopback() && !self.metrics_public {
                anyhow::bail!(
                    "--metrics {addr} is not a loopback address: anyone who reaches it reads the host's job figures; add --metrics-public to mean it"
                );
            }
        }
        Ok(crate::daemon::OperatorOptions {
            hooks: crate::job::DaemonHooks {
                on_end: self.hook_end,
                on_revert_skipped: self.hook_revert_skipped,
            },
            metrics: self.metrics,
        })
    }
}

/// The progress line of a job followed by polling its status (`submit --wait`, `wait`): the
/// step running now (task i of n), or the job's state.
pub fn draw_status(progress: &mut super::progress::ProgressLine, status: &JobStatus) {
    use shared::state::TaskState;
    let n = status.tasks.len();
    let running = status
        .tasks
        .iter()
        .enumerate()
        .rev()
        .find(|(_, t)| matches!(t.state, TaskState::Running | TaskState::Reverting));
    let what = |state: &str| {
        if status.paused_since_ms.is_some() {
            format!("{state} (paused)")
        } else {
            state.to_owned()
        }
    };
    match running {
        Some((i, task)) => progress.draw(
            Some((i + 1, n, &shown(&task.name))),
            &what(task.state.as_str()),
        ),
        None => progress.draw(None, &format!("job {}", what(status.state.as_str()))),
    }
}

/// `ls` filters; any of them lists every job, not only the live ones.
#[derive(clap::Args, Debug, Default)]
pub struct ListFilter {
    /// Only jobs in these states (repeat, or separate with commas: --state killed,crashed)
    #[arg(long, value_name = "STATE", value_delimiter = ',')]
    pub state: Vec<String>,

    /// Only jobs whose name matches GLOB (`*` any text, `?` one character)
    #[arg(long, value_name = "GLOB")]
    pub name: Option<String>,

    /// Only jobs submitted within DUR (e.g. 1h)
    #[arg(long, value_name = "DUR", value_parser = shared::duration::parse_duration)]
    pub since: Option<Duration>,

    /// At most N jobs: the most recent
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
}

impl ListFilter {
    /// Whether any filter is given.
    pub fn is_set(&self) -> bool {
        !self.state.is_empty()
            || self.name.is_some()
            || self.since.is_some()
            || self.limit.is_some()
    }

    /// The query the daemon applies while it pages through the store; an unknown state is
    /// invalid input.
    pub fn query(&self) -> super::client::Outcome<shared::protocol::client::ListQuery> {
        let states = self
            .state
            .iter()
            .map(|s| {
                s.trim().parse::<shared::state::JobState>().map_err(|_| {
                    super::client::Failure::new(
                        shared::exit::INVALID_INPUT,
                        format!("--state {s:?}: not a job state"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let since_ms = self.since.map(|since| {
            crate::clock::now_ms() - i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        });
        Ok(shared::protocol::client::ListQuery {
            states,
            name: self.name.clone(),
            since_ms,
            limit: self.limit.map(|n| u64::try_from(n).unwrap_or(u64::MAX)),
        })
    }
}
