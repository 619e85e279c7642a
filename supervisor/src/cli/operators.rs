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
