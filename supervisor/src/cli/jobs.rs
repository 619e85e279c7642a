//! The daemon's client commands: submit, ls, status, cancel, kill, logs, revert, resume, events,
//! shutdown, prune, hosts (`hosts.rs`). Each is one request on the control socket; `--wait` follows the job to its end and
//! exits with the codes of `supervisor run`.

use super::board::{Listed, Seen, StatusHere};
use super::client::{Client, Failure, Outcome};
use super::escape::shown;
use shared::exit;
use shared::protocol::client::{Action, ClientReply, ClientRequest, JobStatus, JobSummary};
use shared::spec::OnHostLoss;
use shared::state::TaskState;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// How often `shutdown` looks whether the daemon is gone.
const WAIT_POLL: Duration = Duration::from_millis(20);

/// How often `--wait` reads the job's status although no event came (a guard against a missed
/// event: the end itself comes by event).
const WAIT_CHECK: Duration = Duration::from_secs(1);

#[derive(clap::Subcommand, Debug)]
pub enum JobCommand {
    /// Validate a job file, store it, print its id (the daemon runs it when a slot is free)
    Submit {
        file: PathBuf,
        /// Follow the job to its end; exit with the codes of `run`
        #[arg(long)]
        wait: bool,
        /// On a job board: run it on host NAME (it claims the job); without it, a job this
        /// host has no free slot for is claimed by any host with one
        #[arg(long, value_name = "NAME")]
        host: Option<String>,
    },
    /// List live jobs (all with --all): id, name, state, task, age; on a job board every
    /// host's, with their host
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        filter: super::operators::ListFilter,
    },
    /// Show jobs and each task: state, times, result, error, pending revert, last order (of
    /// another host's job on a job board: its host, state and task)
    Status {
        #[arg(required = true)]
        jobs: Vec<String>,
        /// One JSON object (an array for several jobs)
        #[arg(long)]
        json: bool,
    },
    /// Soft-cancel a job: interrupt the running task, revert what began
    Cancel {
        job: String,
        /// Overrides the job's cancel_timeout (e.g. 10s)
        #[arg(long, value_name = "DUR", value_parser = parse_duration)]
        timeout: Option<Duration>,
        #[arg(long)]
        wait: bool,
        /// Why (recorded with who asked; shown by status and events)
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// SIGKILL a job now; its reverts are recorded as skipped
    Kill {
        job: String,
        #[arg(long)]
        wait: bool,
        /// Why (recorded with who asked; shown by status and events)
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Print a job's task output
    Logs {
        job: String,
        /// Keep printing until the job ends
        #[arg(long, short)]
        follow: bool,
        /// Only this task's output
        #[arg(long, value_name = "NAME")]
        task: Option<String>,
        /// Only lines written within DUR (e.g. 10m)
        #[arg(long, value_name = "DUR", value_parser = parse_duration)]
        since: Option<Duration>,
    },
    /// Run the pending reverts of a killed, crashed or revert_failed job, last first
    Revert {
        job: String,
        #[arg(long)]
        wait: bool,
        /// Why (recorded with who asked; shown by status and events)
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Continue a killed or crashed job from its first unfinished task
    Resume {
        job: String,
        #[arg(long)]
        wait: bool,
        /// Why (recorded with who asked; shown by status and events)
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Follow every job and task transition as it happens (on a job board, also the other
    /// hosts' job state changes)
    Events {
        #[arg(long)]
        json: bool,
    },
    /// Stop the daemon (returns once it is gone); conductors keep running unless --cancel
    Shutdown {
        /// Soft-cancel every live job first and wait for them
        #[arg(long)]
        cancel: bool,
    },
    /// Delete finished jobs that ended more than DUR ago (rows, output, logs, sockets) and give
    /// the space back; jobs that still owe reverts stay unless --state names their state
    Prune {
        /// e.g. 30d, 12h, 90m
        #[arg(long, value_name = "DUR", value_parser = parse_age)]
        older_than: Duration,
        /// Only jobs in this finished state (repeatable): success, reverted, cancelled,
        /// revert_failed, killed, crashed
        #[arg(long = "state", value_name = "STATE", value_parser = parse_finished_state)]
        states: Vec<shared::state::JobState>,
        /// Also rewrite the whole database (VACUUM): slower, needs free space the size of it
        #[arg(long)]
        vacuum: bool,
        #[arg(long)]
        json: bool,
    },
    /// Freeze every process of a running or reverting job (its deadlines stop counting)
    Pause {
        job: String,
        /// Why (recorded with who asked; shown by status and events)
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Thaw a paused job
    Continue {
        job: String,
        /// Why (recorded with who asked; shown by status and events)
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Wait for jobs to end; exit with the code of `run` for the worst of them
    Wait {
        #[arg(required = true)]
        jobs: Vec<String>,
    },
    /// The hosts of the daemon's job board: name, instance, alive or lost, last renewal age,
    /// live jobs, max jobs, version (exit 11 without a board)
    Hosts {
        /// An array of objects
        #[arg(long)]
        json: bool,
    },
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    shared::duration::parse_duration(text)
}

/// A retention age: a duration, optionally led by whole days (`30d`, `1d12h`).
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits > 0 && text[digits..].starts_with('d') {
        let days: u64 = text[..digits]
            .parse()
            .map_err(|_| format!("bad duration {text:?}: number too large"))?;
        let rest = &text[digits + 1..];
        let rest = if rest.is_empty() {
            Duration::ZERO
        } else {
            parse_duration(rest)?
        };
        return Ok(Duration::from_secs(days.saturating_mul(86400)).saturating_add(rest));
    }
    parse_duration(text)
}

fn parse_finished_state(text: &str) -> Result<shared::state::JobState, String> {
    let state: shared::state::JobState = text.parse().map_err(|e| format!("{e}"))?;
    if state.is_live() {
        return Err(format!(
            "{state} is a live state: only finished jobs can be pruned"
        ));
    }
    Ok(state)
}

pub fn main(command: JobCommand, state_dir: Option<PathBuf>) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("supervisor: {err}");
            return exit::INTERNAL;
        }
    };
    match runtime.block_on(dispatch(command, state_dir)) {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("supervisor: {}", failure.message);
            failure.code
        }
    }
}

async fn dispatch(command: JobCommand, dir: Option<PathBuf>) -> Outcome<i32> {
    match command {
        JobCommand::Submit { file, wait, host } => submit(dir, file, wait, host).await,
        JobCommand::Ls { all, json, filter } => list(dir, all, json, &filter).await,
        JobCommand::Status { jobs, json } => {
            let mut all = Vec::with_capacity(jobs.len());
            for job in &jobs {
                all.push(status_from_host(dir.clone(), job).await?);
            }
            if json {
                let values: Vec<StatusJson<'_>> = all.iter().map(status_json).collect();
                let text = match values.as_slice() {
                    [one] => serde_json::to_string_pretty(one),
                    _ => serde_json::to_string_pretty(&values),
                };
                println!("{}", text.unwrap_or_default());
            } else {
                for seen in &all {
                    match seen {
                        Seen::Here {
                            status,
                            host,
                            late_writes,
                        } => {
                            print_status(status, host.as_deref());
                            super::board::print_late_writes(late_writes);
                        }
                        Seen::Elsewhere {
                            hosted,
                            status: Some(status),
                            from_host: true,
                            late_writes,
                        } => {
                            print_status(status, super::board::claimed_by(&hosted.host));
                            super::board::print_late_writes(late_writes);
                        }
                        Seen::Elsewhere {
                            hosted,
                            status: Some(status),
                            from_host: false,
                            ..
                        } => {
                            print_status(status, Some(&super::board::journal_host_line(hosted)));
                        }
                        Seen::Elsewhere {
                            hosted,
                            status: None,
                            ..
                        } => super::board::print_elsewhere(hosted),
                    }
                }
            }
            Ok(exit::SUCCESS)
        }
        JobCommand::Cancel {
            job,
            timeout,
            wait,
            reason,
        } => {
            let timeout_ms = timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
            let request = super::operators::order(&job, Action::Cancel, reason, timeout_ms);
            simple(dir, request, &job, wait).await
        }
        JobCommand::Kill { job, wait, reason } => {
            let request = super::operators::order(&job, Action::Kill, reason, None);
            simple(dir, request, &job, wait).await
        }
        JobCommand::Revert { job, wait, reason } => {
            let request = super::operators::order(&job, Action::Revert, reason, None);
            let code = simple(dir, request, &job, wait).await?;
            // Every pending revert ran: what `revert` was asked to do is done.
            Ok(if wait && code == exit::TASK_FAILED {
                exit::SUCCESS
            } else {
                code
            })
        }
        JobCommand::Resume { job, wait, reason } => {
            let request = super::operators::order(&job, Action::Resume, reason, None);
            simple(dir, request, &job, wait).await
        }
        JobCommand::Logs {
            job,
            follow,
            task,
            since,
        } => logs(dir, job, task, follow, since).await,
        JobCommand::Events { json } => events(dir, json).await,
        JobCommand::Shutdown { cancel } => shutdown(dir, cancel).await,
        JobCommand::Prune {
            older_than,
            states,
            vacuum,
            json,
        } => prune(dir, older_than, states, vacuum, json).await,
        JobCommand::Pause { job, reason } => {
            let request = super::operators::order(&job, Action::Pause, reason, None);
            simple(dir, request, &job, false).await
        }
        JobCommand::Continue { job, reason } => {
            let request = super::operators::order(&job, Action::Continue, reason, None);
            simple(dir, request, &job, false).await
        }
        JobCommand::Wait { jobs } => super::operators::wait_all(dir, &jobs).await,
        JobCommand::Hosts { json } => super::hosts::show(dir, json).await,
    }
}

async fn prune(
    dir: Option<PathBuf>,
    older_than: Duration,
    states: Vec<shared::state::JobState>,
    vacuum: bool,
    json: bool,
) -> Outcome<i32> {
    let request = ClientRequest::Prune {
        older_than_ms: u64::try_from(older_than.as_millis()).unwrap_or(u64::MAX),
        states,
        vacuum,
    };
    let reply = Client::call(dir, &request).await?;
    let (summary, count) = match reply {
        ClientReply::Pruned(summary) => {
            let count = u64::try_from(summary.jobs.len()).unwrap_or(u64::MAX);
            (summary, count)
        }
        // More than one reply lists: the first ones, and how many.
        ClientReply::PrunedMany { summary, count } => (summary, count),
        other => return Err(unexpected(&other)),
    };
    if json {
        let shown = PrunedJson {
            summary: &summary,
            count,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&shown).unwrap_or_default()
        );
    } else {
        println!(
            "pruned {count} job(s); store {} -> {} bytes",
            summary.store_bytes_before, summary.store_bytes_after
        );
    }
    Ok(exit::SUCCESS)
}

/// `prune --json`: the summary's fields, then `count`, how many jobs were deleted (more than
/// `jobs` lists when they were too many for one reply).
#[derive(serde::Serialize)]
struct PrunedJson<'a> {
    #[serde(flatten)]
    summary: &'a shared::protocol::client::PruneSummary,
    count: u64,
}

async fn submit(
    dir: Option<PathBuf>,
    file: PathBuf,
    wait: bool,
    host: Option<String>,
) -> Outcome<i32> {
    let spec = super::load_spec(&file).map_err(|m| Failure::new(exit::INVALID_INPUT, m))?;
    let source = std::fs::canonicalize(&file)
        .unwrap_or(file)
        .display()
        .to_string();
    // The default travels as a plain `Submit`, which every daemon understands.
    let request = match (spec.on_host_loss, host) {
        (on_host_loss, Some(host)) => ClientRequest::SubmitOnBoard {
            spec: Box::new(spec),
            source,
            on_host_loss,
            host: Some(host),
        },
        (OnHostLoss::Hold, None) => ClientRequest::Submit {
            spec: Box::new(spec),
            source,
        },
        (on_host_loss, None) => ClientRequest::SubmitWithHostLoss {
            spec: Box::new(spec),
            source,
            on_host_loss,
        },
    };
    let reply = Client::call(dir.clone(), &request).await?;
    let ClientReply::Submitted { job } = reply else {
        return Err(unexpected(&reply));
    };
    println!("{job}");
    if wait {
        wait_for_end(dir, job.as_str()).await
    } else {
        Ok(exit::SUCCESS)
    }
}

/// Prints the jobs as their pages arrive: a table, or one JSON array (the same text as a
/// pretty-printed array of the whole list).
async fn list(
    dir: Option<PathBuf>,
    all: bool,
    json: bool,
    filter: &super::operators::ListFilter,
) -> Outcome<i32> {
    let all = all || filter.is_set();
    let query = filter.query()?;
    let mut client = Client::connect(dir).await?;
    client.send(&ClientRequest::List { all, query }).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut printed = 0_usize;
    // The table's header waits for the first page: jobs with hosts (a daemon on a job board)
    // get a HOST column.
    let mut header = !json;
    let now = crate::clock::now_ms();
    let mut print = |out: &mut std::io::BufWriter<_>, job: &JobSummary, host: Option<&str>| {
        if json {
            let host = host.and_then(super::board::claimed_by);
            print_json_item(out, &Listed { job, host }, printed == 0);
        } else {
            print_row(out, job, host, now);
        }
        printed += 1;
    };
    loop {
        match client.next().await? {
            Some(ClientReply::Jobs(page)) => {
                if std::mem::take(&mut header) {
                    print_header(&mut out, false);
                }
                for job in &page {
                    print(&mut out, job, None);
                }
                let _ = out.flush();
            }
            Some(ClientReply::HostedJobs(page)) => {
                if std::mem::take(&mut header) {
                    print_header(&mut out, true);
                }
                for hosted in &page {
                    print(&mut out, &hosted.job, Some(&hosted.host));
                }
                let _ = out.flush();
            }
            Some(ClientReply::Done) => {
                if header {
                    print_header(&mut out, false);
                }
                break;
            }
            Some(other) => return Err(unexpected(&other)),
            None => {
                return Err(Failure::new(
                    exit::INTERNAL,
                    "the daemon closed the connection before the end of the list",
                ));
            }
        }
    }
    if json {
        let _ = writeln!(out, "{}", if printed == 0 { "[]" } else { "\n]" });
    }
    let _ = out.flush();
    Ok(exit::SUCCESS)
}

/// The table's header; with `hosts`, a HOST column after the id.
fn print_header(out: &mut impl Write, hosts: bool) {
    let host = if hosts {
        format!("{:<12}  ", "HOST")
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "{:<8}  {host}{:<20}  {:<13}  {:<20}  AGE",
        "ID", "NAME", "STATE", "TASK"
    );
}

/// One element of `ls --json`'s array, indented as `to_string_pretty` of the array does.
fn print_json_item(out: &mut impl Write, job: &Listed<'_>, first: bool) {
    let text = serde_json::to_string_pretty(job).unwrap_or_default();
    let _ = write!(out, "{}", if first { "[\n" } else { ",\n" });
    for (i, line) in text.lines().enumerate() {
        let sep = if i == 0 { "" } else { "\n" };
        let _ = write!(out, "{sep}  {line}");
    }
}

fn print_row(out: &mut impl Write, job: &JobSummary, host: Option<&str>, now: i64) {
    let age = Duration::from_millis(u64::try_from(now - job.created_ms).unwrap_or(0));
    let host = host.map_or_else(String::new, |host| {
        format!(
            "{:<12}  ",
            if host.is_empty() {
                "-".into()
            } else {
                shown(host)
            }
        )
    });
    let _ = writeln!(
        out,
        "{:<8}  {host}{:<20}  {:<13}  {:<20}  {}",
        job.id,
        shown(&job.name),
        super::operators::shown_state(job.state, job.paused_since_ms),
        if job.running > 1 {
            format!("{} tasks running", job.running)
        } else {
            shown(job.task.as_deref().unwrap_or("-")).to_string()
        },
        shared::duration::format_duration(Duration::from_secs(age.as_secs()))
    );
}

async fn logs(
    dir: Option<PathBuf>,
    job: String,
    task: Option<String>,
    follow: bool,
    since: Option<Duration>,
) -> Outcome<i32> {
    let mut client = Client::connect(dir).await?;
    client
        .send(&super::operators::logs_request(job, task, follow, since))
        .await?;
    while let Some(reply) = client.next().await? {
        match reply {
            ClientReply::Log(line) => {
                let phase = if line.phase == "revert" {
                    " (revert)"
                } else {
                    ""
                };
                println!("[{}{phase}] {}", shown(&line.task), shown(&line.line));
            }
            ClientReply::Done => break,
            other => return Err(unexpected(&other)),
        }
    }
    Ok(exit::SUCCESS)
}

async fn events(dir: Option<PathBuf>, json: bool) -> Outcome<i32> {
    let mut client = Client::connect(dir).await?;
    client.send(&ClientRequest::Events).await?;
    while let Some(reply) = client.next().await? {
        if reply == ClientReply::Done {
            // The subscription is in place (version 3), or the stream had a gap (version 7):
            // nothing to print.
            continue;
        }
        let (event, host) = match reply {
            ClientReply::Event(event) => (event, None),
            ClientReply::HostedEvent { host, event } => (event, Some(host)),
            other => return Err(unexpected(&other)),
        };
        if let Some(host) = host {
            super::board::print_hosted_event(&event, &host, json);
            continue;
        }
        if json {
            println!("{}", serde_json::to_string(&event).unwrap_or_default());
            continue;
        }
        match &event.task {
            Some(task) => println!(
                "{} {} task {} {}",
                event.at_ms,
                event.job,
                shown(task),
                event.state
            ),
            None => println!("{} {} job {}", event.at_ms, event.job, event.state),
        }
    }
    Ok(exit::SUCCESS)
}

/// Returns once the daemon process is gone (its lock is free): with `--cancel`, its jobs have
/// settled; without, they go on in their conductors.
async fn shutdown(dir: Option<PathBuf>, cancel: bool) -> Outcome<i32> {
    let reply = Client::call(dir.clone(), &ClientRequest::Shutdown { cancel }).await?;
    let ClientReply::Done = reply else {
        return Err(unexpected(&reply));
    };
    if cancel {
        eprintln!("supervisor: cancelling every live job; waiting for the daemon to stop");
    }
    let state_dir = crate::state_dir::StateDir::resolve(dir)
        .map_err(|e| Failure::new(exit::INVALID_INPUT, format!("{e:#}")))?;
    if let Ok(lock) = std::fs::File::open(state_dir.lock_file()) {
        while !crate::state_dir::try_flock(&lock, libc::LOCK_SH) {
            tokio::time::sleep(WAIT_POLL).await;
        }
    }
    Ok(exit::SUCCESS)
}

async fn simple(
    dir: Option<PathBuf>,
    request: ClientRequest,
    job: &str,
    wait: bool,
) -> Outcome<i32> {
    let reply = Client::call(dir.clone(), &request).await?;
    match reply {
        ClientReply::Done => {}
        // Another host's job: a cancel or kill is durable on the board (carried out when its
        // host reads it); any other order was carried out by its host already.
        ClientReply::Requested { host } => match &request {
            ClientRequest::Operate {
                action: action @ (Action::Cancel | Action::Kill),
                ..
            } => println!("{} requested on host {host}", action.as_str()),
            ClientRequest::Operate { action, .. } => {
                println!("{} accepted by host {host}", action.as_str());
            }
            _ => println!("order requested on host {host}"),
        },
        other => return Err(unexpected(&other)),
    }
    if wait {
        wait_for_end(dir, job).await
    } else {
        Ok(exit::SUCCESS)
    }
}

/// `status` of a job this daemon holds (another host's is refused as unexpected).
async fn status(dir: Option<PathBuf>, job: &str) -> Outcome<JobStatus> {
    match status_any(dir, job).await? {
        Seen::Here { status, .. } => Ok(*status),
        Seen::Elsewhere { hosted, .. } => Err(Failure::new(
            exit::INTERNAL,
            format!("job {} moved to host {}", hosted.job.id, hosted.host),
        )),
    }
}

/// `status` of a job this daemon holds, or (on a job board) another host holds, as the board
/// has it: the cheap read of the `--wait` loops.
pub(super) async fn status_any(dir: Option<PathBuf>, job: &str) -> Outcome<Seen> {
    let request = ClientRequest::Status {
        job: job.to_owned(),
    };
    seen(Client::call(dir, &request).await?)
}

/// `status JOB` as the operator reads it: another host's job is asked of its host (a version 9
/// daemon), which answers with its whole status; an older daemon is asked `Status`.
async fn status_from_host(dir: Option<PathBuf>, job: &str) -> Outcome<Seen> {
    let mut client = Client::connect(dir).await?;
    let job = job.to_owned();
    let request = if client.version() >= STATUS_FROM_HOST {
        ClientRequest::StatusFromHost { job }
    } else {
        ClientRequest::Status { job }
    };
    client.send(&request).await?;
    seen(client.next().await?.ok_or_else(closed)?)
}

/// The first protocol version whose daemons take `StatusFromHost`.
const STATUS_FROM_HOST: u32 = 9;

/// The job a status reply shows, and where.
fn seen(reply: ClientReply) -> Outcome<Seen> {
    match reply {
        ClientReply::Status(status) => Ok(Seen::Here {
            status,
            host: None,
            late_writes: Vec::new(),
        }),
        ClientReply::HostStatus { host, status } => Ok(Seen::Here {
            status,
            host: Some(host),
            late_writes: Vec::new(),
        }),
        ClientReply::JournalStatus {
            host,
            status,
            late_writes,
        } => Ok(Seen::Here {
            status,
            host: Some(host),
            late_writes,
        }),
        ClientReply::HostedStatus(hosted) => Ok(Seen::Elsewhere {
            hosted,
            status: None,
            from_host: false,
            late_writes: Vec::new(),
        }),
        ClientReply::BoardStatus { hosted, status } => Ok(Seen::Elsewhere {
            hosted,
            status: Some(status),
            from_host: false,
            late_writes: Vec::new(),
        }),
        ClientReply::OwnerStatus {
            hosted,
            status,
            late_writes,
        } => Ok(Seen::Elsewhere {
            hosted,
            status: Some(status),
            from_host: true,
            late_writes,
        }),
        other => Err(unexpected(&other)),
    }
}

/// `status --json` of one job: its whole status with `host` (another host's job: as the board's
/// journal has it), or another host's job's summary with `host` (from a daemon older than
/// protocol 8, or a job only mirrored).
#[derive(serde::Serialize)]
#[serde(untagged)]
enum StatusJson<'a> {
    Here(StatusHere<'a>),
    Elsewhere(Listed<'a>),
}

fn status_json(seen: &Seen) -> StatusJson<'_> {
    match seen {
        Seen::Here {
            status,
            host,
            late_writes,
        } => StatusJson::Here(StatusHere {
            status,
            host: host.as_deref(),
            late_writes,
        }),
        Seen::Elsewhere {
            hosted,
            status: Some(status),
            late_writes,
            ..
        } => StatusJson::Here(StatusHere {
            status,
            host: super::board::claimed_by(&hosted.host),
            late_writes,
        }),
        Seen::Elsewhere {
            hosted,
            status: None,
            ..
        } => StatusJson::Elsewhere(Listed {
            job: &hosted.job,
            host: super::board::claimed_by(&hosted.host),
        }),
    }
}

/// Follows the job to its end; the exit code of `run` for its state. It subscribes to the
/// daemon's events first, then reads the status once (the job may be over already), then waits
/// for the job's terminal event, whose state is the end: it returns as soon as the daemon
/// publishes the end. A slow status read (every [`WAIT_CHECK`], or each redraw of the
/// progress line) guards against a missed event (a lagging subscriber), and a gap the daemon
/// announces (a `Done` in the stream, version 7) reads it at once. Another host's job is
/// followed by [`wait_elsewhere`](super::board::wait_elsewhere), on the same events.
pub(super) async fn wait_for_end(dir: Option<PathBuf>, job: &str) -> Outcome<i32> {
    let mut progress = super::progress::ProgressLine::new();
    let mut events = Client::connect(dir.clone()).await?;
    events.send(&ClientRequest::Events).await?;
    match events.next().await? {
        Some(ClientReply::Done) => {}
        Some(other) => return Err(unexpected(&other)),
        None => return Err(closed()),
    }
    let carries_board = events.version() >= super::board::BOARD_EVENTS;
    let mut events = events.into_replies();
    let mut status = match status_any(dir.clone(), job).await? {
        Seen::Here { status, .. } => *status,
        Seen::Elsewhere { hosted, .. } => {
            let events = carries_board.then_some(events);
            return super::board::wait_elsewhere(dir, job, *hosted, events).await;
        }
    };
    let check = if progress.is_enabled() {
        super::progress::REDRAW_EVERY
    } else {
        WAIT_CHECK
    };
    loop {
        if let Some(code) = exit::for_job_state(status.state) {
            progress.clear();
            eprintln!("job {} ended: {}", status.id, status.state);
            return Ok(code);
        }
        if progress.is_due() {
            super::operators::draw_status(&mut progress, &status);
        }
        let event = match tokio::time::timeout(check, events.next()).await {
            Ok(Ok(Some(ClientReply::Event(event)))) => event,
            // Another host's job: not this one.
            Ok(Ok(Some(ClientReply::HostedEvent { .. }))) => continue,
            // A gap in the stream (version 7): the job's end may be among what it lost.
            Ok(Ok(Some(ClientReply::Done))) => {
                status = self::status(dir.clone(), job).await?;
                continue;
            }
            Ok(Ok(Some(other))) => return Err(unexpected(&other)),
            Ok(Ok(None)) => return Err(closed()),
            Ok(Err(failure)) => return Err(failure),
            Err(_) => {
                status = self::status(dir.clone(), job).await?;
                continue;
            }
        };
        if event.job != status.id {
            continue;
        }
        // The terminal event says all the exit needs: no status read after the end.
        let ended = event
            .state
            .parse::<shared::state::JobState>()
            .ok()
            .filter(|state| event.task.is_none() && exit::for_job_state(*state).is_some());
        if let Some(state) = ended {
            status.state = state;
        } else if progress.is_enabled() {
            status = self::status(dir.clone(), job).await?;
        }
    }
}

fn closed() -> Failure {
    Failure::new(
        exit::INTERNAL,
        "the daemon closed the connection before the job ended",
    )
}

fn print_status(status: &JobStatus, host: Option<&str>) {
    println!(
        "job {} {}: {}",
        status.id,
        shown(&status.name),
        status.state
    );
    if let Some(host) = host {
        println!("  host: {}", shown(host));
    }
    if let Some(reason) = &status.reason {
        println!("  reason: {}", shown(reason));
    }
    println!("  file: {}", shown(&status.source));
    if let Some(pid) = status.conductor_pid {
        println!("  conductor pid: {pid}");
    }
    if let Some(mode) = &status.containment {
        println!("  containment: {mode}");
    }
    if let Some(since) = status.unresponsive_since_ms {
        let silent =
            Duration::from_millis(u64::try_from(crate::clock::now_ms() - since).unwrap_or(0));
        println!(
            "  UNRESPONSIVE: the conductor has not answered for {}",
            shared::duration::format_duration(Duration::from_secs(silent.as_secs()))
        );
    }
    super::operators::print_operator_lines(status);
    let running: Vec<String> = status
        .tasks
        .iter()
        .filter(|t| matches!(t.state, TaskState::Running | TaskState::Reverting))
        .map(|t| shown(&t.name).to_string())
        .collect();
    if !running.is_empty() {
        println!("  running: {}", running.join(", "));
    }
    for task in &status.tasks {
        let pending = if task.revert_pending {
            "  REVERT PENDING"
        } else {
            ""
        };
        let after = if task.after.is_empty() {
            String::new()
        } else {
            let names: Vec<String> = task.after.iter().map(|a| shown(a).to_string()).collect();
            format!("  after {}", names.join(", "))
        };
        println!(
            "  {:<20} {:<14} attempts {}{after}{pending}",
            shown(&task.name),
            task.state.as_str(),
            task.attempts
        );
        if !task.result.is_empty() {
            println!(
                "    result: {}",
                shown(task.result.lines().next().unwrap_or_default())
            );
        }
        if let Some(error) = &task.error {
            println!("    error: {}", shown(error));
        }
    }
    let pending: Vec<&str> = status
        .tasks
        .iter()
        .rev()
        .filter(|t| t.revert_pending)
        .map(|t| t.name.as_str())
        .collect();
    if !pending.is_empty() {
        println!(
            "  reverts pending: {} (run them with: supervisor revert {})",
            pending.join(", "),
            status.id
        );
    }
}

pub(super) fn unexpected(reply: &ClientReply) -> Failure {
    Failure::new(
        exit::INTERNAL,
        format!("unexpected answer from the daemon: {reply:?}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_ages_take_days_then_the_usual_units() {
        assert_eq!(parse_age("30d"), Ok(Duration::from_secs(30 * 86400)));
        assert_eq!(
            parse_age("1d12h"),
            Ok(Duration::from_secs(86400 + 12 * 3600))
        );
        assert_eq!(parse_age("90m"), Ok(Duration::from_secs(90 * 60)));
        assert_eq!(parse_age("0s"), Ok(Duration::ZERO));
        assert!(parse_age("d").is_err());
        assert!(parse_age("3x").is_err());
        assert!(parse_finished_state("running").is_err());
        assert_eq!(
            parse_finished_state("killed"),
            Ok(shared::state::JobState::Killed)
        );
    }
}
