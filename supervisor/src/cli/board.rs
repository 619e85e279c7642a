//! What the CLI shows of another host's jobs on a job board: `ls` rows and `--json` items with
//! their host, `status` of a job held elsewhere (from the board's mirror), `events` of other
//! hosts' jobs (protocol 7: the daemon relays their changes from the board's notifications), and
//! `--wait` on another host's job, which follows those changes on the local daemon's events
//! and ends as soon as its terminal state arrives, reading its status (from the mirror) every
//! [`REMOTE_BACKSTOP`] and at once after a gap in the stream, so that a lost notification only
//! delays the end; from a daemon older than protocol 7 it polls the status every
//! [`REMOTE_POLL`]. Every [`HOST_CHECK`] it asks whether the job's host is alive: a wait on a
//! job whose host lost its lease (or stopped) ends with exit 12 instead of following a mirror
//! row nobody updates any more. A job not yet claimed by any host (the daemon answers it with
//! an empty host) is shown with host `-` (`null` in JSON), and `--wait` follows it until a host
//! claims it.

use super::client::{Failure, Outcome, Replies};
use super::escape::shown;
use shared::exit;
use shared::ids::JobId;
use shared::protocol::client::{
    ClientReply, Event, HostState, HostedJob, JobStatus, JobSummary, LateWrite,
};
use shared::state::JobState;
use std::borrow::Cow;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The first protocol version whose `events` carry other hosts' job changes.
pub const BOARD_EVENTS: u32 = 7;

/// How often `--wait` reads the status of a job another host holds while the daemon's events
/// carry that job's changes: only a backstop, should a notification be lost.
pub const REMOTE_BACKSTOP: Duration = Duration::from_secs(1);

/// How often `--wait` reads the status of a job another host holds from a daemon whose events
/// do not carry it (older than protocol [`BOARD_EVENTS`]).
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
    Elsewhere {
        hosted: Box<HostedJob>,
        /// Its status, when the daemon knows one: as its host answered it (`from_host`, a
        /// version 9 daemon's answer to `status`), or as the board's journal has it.
        status: Option<Box<JobStatus>>,
        from_host: bool,
        /// A stale owner's refused writes about the job (with a status from its host).
        late_writes: Vec<LateWrite>,
    },
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

/// What `status` of another host's job (or an unclaimed one) shows on its host line, under a
/// status read from the board's journal.
#[must_use]
pub fn journal_host_line(hosted: &HostedJob) -> String {
    match claimed_by(&hosted.host) {
        Some(host) => format!(
            "{host} (from the board's journal: its output, times and history are on {host}: `supervisor logs {}`)",
            hosted.job.id
        ),
        None => "- (not claimed yet: a host with a free slot takes it)".to_owned(),
    }
}

/// `events --json` of another host's job: the event's fields, then `host` (null while the
/// job is unclaimed).
#[derive(serde::Serialize)]
struct HostedEventJson<'a> {
    #[serde(flatten)]
    event: &'a Event,
    host: Option<&'a str>,
}

/// Prints an `events` line of a job `host` holds (`--json`: with its `host`); an unclaimed
/// job's (`host` empty) shows host `-`.
pub fn print_hosted_event(event: &Event, host: &str, json: bool) {
    let host = claimed_by(host);
    if json {
        let item = HostedEventJson { event, host };
        println!("{}", serde_json::to_string(&item).unwrap_or_default());
    } else {
        println!(
            "{} {} job {} on host {}",
            event.at_ms,
            event.job,
            shown(&event.state),
            host.map_or(Cow::Borrowed("-"), shown)
        );
    }
}

/// Follows a job another host holds to its end; the exit code of `run` for its state.
/// `events` is the local daemon's stream when it carries other hosts' changes (protocol
/// [`BOARD_EVENTS`]): the wait ends as soon as the job's terminal state arrives on it, and
/// reads the job's status (the board's mirror) every [`REMOTE_BACKSTOP`] and after a gap;
/// without it, every [`REMOTE_POLL`]. Every [`HOST_CHECK`] it asks whether the job's host is
/// alive: a lost or stopped one ends the wait with [`exit::HOST_LOST`] unless the job was
/// rescued meanwhile (its row names another host, which the wait then follows). A job that
/// moved to this daemon (rescued here from a lost host) is followed as a local one.
pub async fn wait_elsewhere(
    dir: Option<PathBuf>,
    job: &str,
    first: HostedJob,
    mut events: Option<Replies>,
) -> Outcome<i32> {
    let mut seen = first;
    let mut announced = false;
    let mut next_check = Instant::now() + HOST_CHECK;
    let poll = if events.is_some() {
        REMOTE_BACKSTOP
    } else {
        REMOTE_POLL
    };
    let mut next_read = Instant::now() + poll;
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
        match heard(&mut events, &seen.job.id, next_read.min(next_check)).await? {
            Heard::Changed { host, state } => {
                (seen.host, seen.job.state) = (host, state);
                continue;
            }
            Heard::Nothing if Instant::now() < next_read => continue,
            Heard::Nothing | Heard::Gap => {}
        }
        next_read = Instant::now() + poll;
        match super::jobs::status_any(dir.clone(), job).await? {
            Seen::Elsewhere { hosted, .. } => seen = *hosted,
            Seen::Here { .. } => return Box::pin(super::jobs::wait_for_end(dir, job)).await,
        }
    }
}

/// What [`heard`] heard of the job followed.
enum Heard {
    /// Its host wrote a new state.
    Changed { host: String, state: JobState },
    /// Nothing until the time given.
    Nothing,
    /// Its state is to be read now: the stream had a gap (its changes may be among what it
    /// lost), ended, or this daemon's own events name the job (it may have moved here).
    Gap,
}

/// Waits until `until` for a change of job `id` on `events` (without them, only the time
/// passes). A stream that ends is given up (`None`): the status reads go on without it.
async fn heard(events: &mut Option<Replies>, id: &JobId, until: Instant) -> Outcome<Heard> {
    let Some(stream) = events else {
        tokio::time::sleep_until(until.into()).await;
        return Ok(Heard::Nothing);
    };
    loop {
        let Ok(next) = tokio::time::timeout_at(until.into(), stream.next()).await else {
            return Ok(Heard::Nothing);
        };
        match next? {
            Some(ClientReply::HostedEvent { host, event }) if event.job == *id => {
                return Ok(match event.state.parse::<JobState>() {
                    Ok(state) if event.task.is_none() => Heard::Changed { host, state },
                    _ => Heard::Gap,
                });
            }
            Some(ClientReply::Event(event)) if event.job == *id => return Ok(Heard::Gap),
            Some(ClientReply::Done) => return Ok(Heard::Gap),
            Some(ClientReply::Event(_) | ClientReply::HostedEvent { .. }) => {}
            Some(other) => return Err(super::jobs::unexpected(&other)),
            None => {
                *events = None;
                return Ok(Heard::Gap);
            }
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
