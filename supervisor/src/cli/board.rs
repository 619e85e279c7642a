//! What the CLI shows of another host's jobs on a job board: `ls` rows and `--json` items with
//! their host, `status` of a job held elsewhere (from the board's mirror), and `--wait` on
//! one, which polls its status every [`REMOTE_POLL`] (the local daemon's events do not carry
//! other hosts' jobs) and its host's liveness every [`HOST_CHECK`]: a wait on a job whose
//! host lost its lease (or stopped) ends with exit 12 instead of polling a mirror row nobody
//! updates any more. A job not yet claimed by any host (the daemon answers it with an empty
//! host) is shown with host `-` (`null` in JSON), and `--wait` follows it until a host
//! claims it.

use super::client::{Failure, Outcome};
use super::escape::shown;
use shared::exit;
use shared::protocol::client::{HostState, HostedJob, JobStatus, JobSummary, LateWrite};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How often `--wait` reads the status of a job another host holds.
pub const REMOTE_POLL: Duration = Duration::from_millis(50);

/// How often `--wait` on another host's job asks whether that host is still alive (by the
/// database's clock: `hosts`).
pub const HOST_CHECK: Duration = Duration::from_millis(250);

/// Beyond the live hosts' longest lease (each looks for lost hosts' jobs to rescue three times
/// a lease), how long `--wait` gives them to rescue a lost host's job before it gives up (a
/// loaded database or host).
pub const RESCUE_SLACK: Duration = Duration::from_secs(5);

/// A job as `status` found it: held by this daemon (with its host name on a job board), or
/// by another host of its board.
pub enum Seen {
    Here {
        status: Box<JobStatus>,
        host: Option<String>,
        /// A stale owner's refused writes about the job (on a board).
        late_writes: Vec<LateWrite>,
    },
    Elsewhere(Box<HostedJob>),
}

/// `status --json` of a job this daemon holds: its status, then `host` (null without a board),
/// then `late_writes` when a stale owner's writes were refused.
#[derive(serde::Serialize)]
pub struct StatusHere<'a> {
    #[serde(flatten)]
    pub status: &'a JobStatus,
    pub host: Option<&'a str>,
    #[serde(skip_serializing_if = "<[LateWrite]>::is_empty")]
    pub late_writes: &'a [LateWrite],
}

/// Prints the refused writes of a stale owner, if any.
pub fn print_late_writes(late_writes: &[LateWrite]) {
    if late_writes.is_empty() {
        return;
    }
    println!("  late writes (refused: the job had been taken from their host):");
    for late in late_writes {
        println!(
            "    {} (instance {}, epoch {}): {}",
            shown(&late.host),
            shown(&late.instance),
            late.epoch,
            shown(&late.what)
        );
    }
}

/// One `ls --json` item, or `status --json` of another host's job: the job's fields, then
/// `host` (null for a daemon without a board).
#[derive(serde::Serialize)]
pub struct Listed<'a> {
    #[serde(flatten)]
    pub job: &'a JobSummary,
    pub host: Option<&'a str>,
}

/// The host that holds a board job, `None` while it is unclaimed (the daemon sends an empty
/// host for it: `HostedJob::host` has no null on the wire).
#[must_use]
pub fn claimed_by(host: &str) -> Option<&str> {
    (!host.is_empty()).then_some(host)
}

/// Prints `status` of a job another host holds.
pub fn print_elsewhere(hosted: &HostedJob) {
    let job = &hosted.job;
    println!("job {} {}: {}", job.id, shown(&job.name), job.state);
    if claimed_by(&hosted.host).is_none() {
        println!("  host: - (not claimed yet: a host with a free slot takes it)");
        return;
    }
    println!(
        "  host: {} (details are on its host: run `supervisor status {}` there)",
        shown(&hosted.host),
        job.id
    );
    if let Some(task) = &job.task {
        println!("  task: {}", shown(task));
    }
    if job.running > 1 {
        println!("  tasks running: {}", job.running);
    }
}

/// Follows a job another host holds to its end, reading its status from the local daemon
/// (which reads the board's mirror) every [`REMOTE_POLL`]; the exit code of `run` for its
/// state. Every [`HOST_CHECK`] it asks whether the job's host is alive: a lost or stopped one
/// ends the wait with [`exit::HOST_LOST`] unless the job was rescued meanwhile (its row names
/// another host, which the wait then follows). A job that moved to this daemon (rescued here
/// from a lost host) is followed as a local one.
pub async fn wait_elsewhere(dir: Option<PathBuf>, job: &str, first: HostedJob) -> Outcome<i32> {
    let mut seen = first;
    let mut announced = false;
    let mut next_check = Instant::now();
    // Since when the job's host is known lost, and how long a rescue may take.
    let mut lost: Option<(String, Instant)> = None;
    loop {
        let host = claimed_by(&seen.host).unwrap_or("-");
        if let Some(code) = exit::for_job_state(seen.job.state) {
            eprintln!(
                "job {} ended on host {host}: {}",
                seen.job.id, seen.job.state
            );
            return Ok(code);
        }
        if !announced && claimed_by(&seen.host).is_some() {
            eprintln!("following job {} on host {host}", seen.job.id);
            announced = true;
        }
        // An unclaimed job has no host to lose: the wait follows it until a host claims it.
        if claimed_by(&seen.host).is_none() {
            lost = None;
        } else if Instant::now() >= next_check {
            match check_host(dir.clone(), &seen).await? {
                None => lost = None,
                Some((failure, rescue_within)) => {
                    let (host, since) =
                        lost.get_or_insert_with(|| (seen.host.clone(), Instant::now()));
                    if *host != seen.host {
                        (*host, *since) = (seen.host.clone(), Instant::now());
                    }
                    if since.elapsed() >= rescue_within {
                        return Err(failure);
                    }
                }
            }
            next_check = Instant::now() + HOST_CHECK;
        }
        tokio::time::sleep(REMOTE_POLL).await;
        match super::jobs::status_any(dir.clone(), job).await? {
            Seen::Elsewhere(hosted) => seen = *hosted,
            Seen::Here { .. } => return Box::pin(super::jobs::wait_for_end(dir, job)).await,
        }
    }
}

/// `None` while the host of `seen` is alive; else the [`exit::HOST_LOST`] failure to end the
/// wait with, and how long the other live hosts may take to rescue the job first (zero when
/// none is alive): a rescued job's row names its new host, which the wait then follows.
async fn check_host(
    dir: Option<PathBuf>,
    seen: &HostedJob,
) -> Outcome<Option<(Failure, Duration)>> {
    let hosts = super::hosts::list(dir).await?;
    let state = hosts.iter().find(|h| h.name == seen.host).map(|h| h.state);
    let what = match state {
        Some(HostState::Alive) => return Ok(None),
        Some(HostState::Lost) => "lost its lease",
        Some(HostState::Stopped) => "stopped",
        None => "is gone from the board",
    };
    let rescue_within = hosts
        .iter()
        .filter(|h| h.state == HostState::Alive && h.name != seen.host)
        .map(|h| Duration::from_millis(u64::try_from(h.lease_ms).unwrap_or(0)) + RESCUE_SLACK)
        .max()
        .unwrap_or(Duration::ZERO);
    let failure = Failure::new(
        exit::HOST_LOST,
        format!(
            "host {} {what}; job {} is held there until it is rescued (last seen {})",
            seen.host, seen.job.id, seen.job.state
        ),
    );
    Ok(Some((failure, rescue_within)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::ids::JobId;
    use shared::state::JobState;

    #[test]
    fn a_listed_job_carries_its_host_after_its_fields() {
        let job = JobSummary {
            id: JobId::from_random(0xab),
            name: "deploy".into(),
            state: JobState::Running,
            task: None,
            created_ms: 5,
            paused_since_ms: None,
            running: 1,
        };
        let text = serde_json::to_string(&Listed {
            job: &job,
            host: Some("a"),
        })
        .expect("serializes");
        assert!(text.starts_with("{\"id\":\"000000ab\""), "{text}");
        assert!(text.ends_with(",\"host\":\"a\"}"), "{text}");
        let local = serde_json::to_string(&Listed {
            job: &job,
            host: None,
        })
        .expect("serializes");
        assert!(local.ends_with(",\"host\":null}"), "{local}");
    }
}
