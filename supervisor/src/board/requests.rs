//! The `requests` table: an operator's order about a job (`cancel`, `kill`, `revert`,
//! `resume`, `pause`, `continue`), a read of its output (`logs`; `logs_after` for
//! `logs --follow`) or of its whole status (`status`), written by whichever host
//! the operator asked, for the host that holds the job (issue 11, rule 3).
//!
//! - **Write** ([`request`]): one statement inserts the row (only for a job the mirror shows
//!   on another host; for `cancel` and `kill`, only while it is live) and
//!   `pg_notify('sv_requests', HOST)`; PostgreSQL delivers the notification at the commit, so
//!   the owner never hears of a row it cannot read, and the operator's answer comes after the
//!   commit: the request is durable.
//! - **Read** ([`pending`]): the owner reads its rows with `done_at IS NULL`, on a notification,
//!   after its listener (re)connects, and after every lease renewal: a lost notification
//!   delays a request by at most lease/3, never loses it.
//! - **Done** ([`mark_done`]): once the job's actor answered, `done_at = now()` and the
//!   outcome, with the error code and text of a refusal, and for `logs` the lines (`reply`,
//!   JSON, bounded by the owner: `daemon/handlers/logs.rs`; its requester clears it once read:
//!   [`clear_reply`]); for `status`, the job's status (JSON, within one frame), its row
//!   deleted once read ([`forget`]). A request read twice (a crash between
//!   applying and marking it) is applied twice: a second cancel or kill of the same job does no
//!   harm (the actor refuses it or it is already on the ladder), and a second revert, resume,
//!   pause or continue is refused by the job's state like any repeated order.
//! - **Answer** ([`answer`]): for the kinds the operator waits on ([`Kind::is_answered`]) the
//!   requesting host reads the row again until it is done, and the owner's liveness (by the
//!   database's clock) with it, so that a lost owner ends the wait at once.

use shared::ids::JobId;
use shared::protocol::client::{ErrorCode, Requester};
use shared::protocol::operator::Action;
use tokio_postgres::Client;

/// The channel of request notifications; the payload is the owner's host name.
pub const CHANNEL: &str = "sv_requests";

/// What is asked of the job's owner: one of the operator's orders, or a read of its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Order(Action),
    /// A read of the job's output (`logs` without `--follow`), answered with its lines.
    Logs,
    /// A read of the job's output after a cursor (`logs --follow`), answered with the next
    /// bounded page of lines, the new cursor and whether the job is live ([`LogsPage`]).
    LogsAfter,
    /// A read of the job's whole status (`status`, version 9 clients), answered with the
    /// owner's `JobStatus`.
    Status,
}

impl Kind {
    /// Every kind, in the order of the schema's `CHECK`.
    pub const ALL: [Self; 9] = [
        Self::Order(Action::Cancel),
        Self::Order(Action::Kill),
        Self::Order(Action::Revert),
        Self::Order(Action::Resume),
        Self::Order(Action::Pause),
        Self::Order(Action::Continue),
        Self::Logs,
        Self::LogsAfter,
        Self::Status,
    ];

    /// The name stored in `requests.kind`: the order's command name, `logs`, `logs_after` or
    /// `status`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Order(action) => action.as_str(),
            Self::Logs => "logs",
            Self::LogsAfter => "logs_after",
            Self::Status => "status",
        }
    }

    /// The kind stored as `text`, if this build knows it.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }

    /// Whether the operator waits for the owner's answer: every order but `cancel` and `kill`,
    /// which are answered once durable (the owner carries them out whenever it reads them, and
    /// they may only reach a live job).
    #[must_use]
    pub const fn is_answered(self) -> bool {
        !matches!(self, Self::Order(Action::Cancel | Action::Kill))
    }

    /// Whether carrying it out changes the job (every kind but the reads).
    #[must_use]
    pub const fn changes_job(self) -> bool {
        !matches!(self, Self::Logs | Self::LogsAfter | Self::Status)
    }
}

/// What writing a request found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Written {
    /// Committed for this host, which was notified, as row `seq`; `updated_us` is when the
    /// mirror's row of the job last changed (µs since the epoch, the database's clock).
    Requested {
        host: String,
        seq: i64,
        updated_us: i64,
    },
    /// The mirror shows the job on another host, ended.
    Ended { host: String, state: String },
    /// No other host holds a job with this id.
    Unknown,
    /// Several hosts hold a job with this id (two drew the same 32 random bits).
    Ambiguous { hosts: Vec<String> },
    /// The job was unclaimed: a cancel or kill ended it on the board (`cancelled`; nothing
    /// ran, nothing to revert).
    CancelledUnclaimed,
    /// The job is unclaimed: no host to carry out this order yet.
    Unclaimed,
}

/// What an operator asks of another host's job.
#[derive(Clone, Debug)]
pub struct Ask {
    pub kind: Kind,
    /// A cancel's `--timeout` (overrides the job's `cancel_timeout`).
    pub timeout_ms: Option<u64>,
    /// Who asked, as this host's kernel told it.
    pub by: Option<Requester>,
    /// `logs --task`.
    pub task: Option<String>,
    /// `logs --since`: from the lines written at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
    /// `logs --follow`: the owner's cursor after the last line the requester has
    /// ([`LogsPage::last`]); `None` for the first read.
    pub after: Option<i64>,
}

/// What the owner answers to [`Kind::LogsAfter`] (JSON in `requests.reply`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogsPage {
    /// The lines after the cursor asked, oldest first (of the task asked), at most
    /// `REMOTE_FOLLOW_MAX_BYTES` of text (`daemon/handlers/logs.rs`).
    pub lines: Vec<shared::protocol::client::LogLine>,
    /// The cursor after the last line read (to ask for the next page with).
    pub last: i64,
    /// Whether the job was live when the page was read (in the same read of the store): a
    /// page read from an ended job, not cut by the bound, is its last one.
    pub live: bool,
    /// Whether the bound cut the page: more lines are stored already.
    pub more: bool,
}

/// Writes a request for job `id` held by a host other than `me`, and notifies that host, in
/// one statement (one transaction).
pub async fn request(
    client: &Client,
    id: &JobId,
    me: &str,
    ask: &Ask,
) -> Result<Written, tokio_postgres::Error> {
    let holders = client
        .query(
            "SELECT host, state, ended, (extract(epoch FROM updated_at) * 1000000)::bigint
             FROM jobs WHERE id = $1 AND host IS DISTINCT FROM $2 ORDER BY host",
            &[&id.as_str(), &me],
        )
        .await?;
    let (host, state, ended, updated_us): (Option<String>, String, bool, i64) =
        match holders.as_slice() {
            [] => return Ok(Written::Unknown),
            [one] => (
                one.try_get(0)?,
                one.try_get(1)?,
                one.try_get(2)?,
                one.try_get(3)?,
            ),
            several => {
                let hosts = several
                    .iter()
                    .map(|row| Ok(row.try_get::<_, Option<String>>(0)?.unwrap_or_default()))
                    .collect::<Result<_, tokio_postgres::Error>>()?;
                return Ok(Written::Ambiguous { hosts });
            }
        };
    let Some(host) = host else {
        return Box::pin(unclaimed(client, id, me, ask, (ended, state))).await;
    };
    if ended && !ask.kind.is_answered() {
        return Ok(Written::Ended { host, state });
    }
    let by_json = ask
        .by
        .as_ref()
        .and_then(|by| serde_json::to_string(by).ok());
    let timeout_ms = ask
        .timeout_ms
        .map(|ms| i64::try_from(ms).unwrap_or(i64::MAX));
    let row = client
        .query_one(
            "WITH r AS (
                 INSERT INTO requests
                     (job_id, host, kind, requested_at, requested_by, by_json, timeout_ms,
                      task, since_ms, after_line)
                 VALUES ($1, $2, $3, now(), $4, $5, $6, $8, $9, $10)
                 RETURNING seq, host
             )
             SELECT seq, pg_notify($7, host)::text FROM r",
            &[
                &id.as_str(),
                &host,
                &ask.kind.as_str(),
                &me,
                &by_json,
                &timeout_ms,
                &CHANNEL,
                &ask.task,
                &ask.since_ms,
                &ask.after,
            ],
        )
        .await?;
    Ok(Written::Requested {
        host,
        seq: row.try_get(0)?,
        updated_us,
    })
}

/// An order of job `id`, which no host has claimed: a cancel or kill ends it on the board in
/// one guarded statement (`journal::cancel_unclaimed`); if a host claimed it meanwhile, the
/// order is written for that host as usual. Any other order waits for a host.
async fn unclaimed(
    client: &Client,
    id: &JobId,
    me: &str,
    ask: &Ask,
    (ended, state): (bool, String),
) -> Result<Written, tokio_postgres::Error> {
    if ended {
        return Ok(Written::Ended {
            host: String::new(),
            state,
        });
    }
    if !matches!(ask.kind, Kind::Order(Action::Cancel | Action::Kill)) {
        return Ok(Written::Unclaimed);
    }
    let reason = format!(
        "{} before any host claimed it (asked on host {me})",
        ask.kind.as_str()
    );
    if super::journal::cancel_unclaimed(client, id, &reason).await? {
        return Ok(Written::CancelledUnclaimed);
    }
    // Claimed (or ended) meanwhile: its row names its host now, which never goes back.
    request(client, id, me, ask).await
}

/// A request waiting for its owner.
#[derive(Clone, Debug)]
pub struct Pending {
    /// The row's key.
    pub seq: i64,
    /// The job, if the id is one (a row this build cannot read is marked done as such).
    pub job: Option<JobId>,
    /// The kind, if this build knows it.
    pub kind: Option<Kind>,
    /// The host the operator asked.
    pub requested_by: String,
    /// Who asked, if the asking host could tell.
    pub by: Option<Requester>,
    /// A cancel's `--timeout`.
    pub timeout: Option<std::time::Duration>,
    /// `logs --task`.
    pub task: Option<String>,
    /// `logs --since` (ms since the epoch).
    pub since_ms: Option<i64>,
    /// `logs --follow`: the cursor to read after.
    pub after: Option<i64>,
}

/// `host`'s requests not yet done, oldest first.
pub async fn pending(client: &Client, host: &str) -> Result<Vec<Pending>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT seq, job_id, kind, requested_by, by_json, timeout_ms, task, since_ms,
                    after_line
             FROM requests
             WHERE host = $1 AND done_at IS NULL ORDER BY seq",
            &[&host],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let job: String = row.try_get(1)?;
            let kind: String = row.try_get(2)?;
            let by: Option<String> = row.try_get(4)?;
            let timeout_ms: Option<i64> = row.try_get(5)?;
            Ok(Pending {
                seq: row.try_get(0)?,
                job: JobId::parse(&job),
                kind: Kind::parse(&kind),
                requested_by: row.try_get(3)?,
                by: by.and_then(|text| serde_json::from_str(&text).ok()),
                timeout: timeout_ms
                    .and_then(|ms| u64::try_from(ms).ok())
                    .map(std::time::Duration::from_millis),
                task: row.try_get(6)?,
                since_ms: row.try_get(7)?,
                after: row.try_get(8)?,
            })
        })
        .collect()
}

/// What the owner answers to a request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// For the log and `requests.outcome`: `done`, or `refused: ...`.
    pub text: String,
    /// The refusal's code and text, when the owner refused it.
    pub refusal: Option<(ErrorCode, String)>,
    /// What `logs` answers (its lines, as JSON).
    pub reply: Option<String>,
}

/// Marks request `seq` done with its `outcome` (once: a second mark changes nothing).
pub async fn mark_done(
    client: &Client,
    seq: i64,
    outcome: &Outcome,
) -> Result<(), tokio_postgres::Error> {
    let code = outcome.refusal.as_ref().map(|(code, _)| code_name(*code));
    let error = outcome.refusal.as_ref().map(|(_, text)| text.as_str());
    client
        .execute(
            "UPDATE requests SET done_at = now(), outcome = $2, error_code = $3, error = $4,
                 reply = $5
             WHERE seq = $1 AND done_at IS NULL",
            &[&seq, &outcome.text, &code, &error, &outcome.reply],
        )
        .await?;
    Ok(())
}

/// Where a request stands, as its requester reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Not done yet; whether its owner's lease is current (by the database's clock), and
    /// whether it stopped cleanly.
    Pending { alive: bool, stopped: bool },
    /// Carried out; `moved`: the mirror's row of the job changed after the given time;
    /// `reply`: what the owner answered (`logs`).
    Done { moved: bool, reply: Option<String> },
    /// Refused by the owner, with its error (the code is `Internal` when this build does not
    /// know the stored one).
    Refused(ErrorCode, String),
}

/// Request `seq` as it stands, with whether the mirror's row of its job changed after
/// `updated_us` (µs since the epoch). A row that is gone (deleted by hand) reads as refused.
pub async fn answer(
    client: &Client,
    seq: i64,
    updated_us: i64,
) -> Result<Answer, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT r.done_at IS NOT NULL, r.error_code, r.error, r.outcome,
                    COALESCE(h.stopped_at IS NULL
                        AND now() - h.renewed_at < h.lease_ms * interval '1 millisecond', false),
                    COALESCE(h.stopped_at IS NOT NULL, false),
                    COALESCE((extract(epoch FROM j.updated_at) * 1000000)::bigint > $2, false),
                    r.reply
             FROM requests r
             LEFT JOIN hosts h ON h.name = r.host
             LEFT JOIN jobs j ON j.host = r.host AND j.id = r.job_id
             WHERE r.seq = $1",
            &[&seq, &updated_us],
        )
        .await?;
    let Some(row) = row else {
        return Ok(Answer::Refused(
            ErrorCode::Internal,
            format!("request {seq} is gone from the board"),
        ));
    };
    let done: bool = row.try_get(0)?;
    if !done {
        return Ok(Answer::Pending {
            alive: row.try_get(4)?,
            stopped: row.try_get(5)?,
        });
    }
    let code: Option<String> = row.try_get(1)?;
    let error: Option<String> = row.try_get(2)?;
    let outcome: Option<String> = row.try_get(3)?;
    let refusal = match (code, error, outcome) {
        (Some(code), error, outcome) => Some((
            parse_code(&code).unwrap_or(ErrorCode::Internal),
            error.or(outcome).unwrap_or_default(),
        )),
        (None, _, Some(outcome)) if outcome != DONE => Some(older_owners_refusal(&outcome)),
        (None, _, _) => None,
    };
    match refusal {
        Some((code, text)) => Ok(Answer::Refused(code, text)),
        None => Ok(Answer::Done {
            moved: row.try_get(6)?,
            reply: row.try_get(7)?,
        }),
    }
}

/// The outcome of a request carried out.
pub const DONE: &str = "done";

/// A refusal written by an owner older than `error_code` (during a rolling upgrade): its
/// outcome is `unreadable` (a kind it does not know) or `refused: TEXT`.
fn older_owners_refusal(outcome: &str) -> (ErrorCode, String) {
    match outcome.strip_prefix("refused: ") {
        Some(text) => (ErrorCode::WrongState, text.to_owned()),
        None => (
            ErrorCode::InvalidRequest,
            format!(
                "the job's host cannot carry this out ({outcome}): its supervisor is older than this one"
            ),
        ),
    }
}

/// Forgets what the owner answered to request `seq` (read by its requester: the lines of
/// `logs` need not stay on the board).
pub async fn clear_reply(client: &Client, seq: i64) -> Result<(), tokio_postgres::Error> {
    client
        .execute("UPDATE requests SET reply = NULL WHERE seq = $1", &[&seq])
        .await?;
    Ok(())
}

/// Deletes request `seq` (done, and its answer read: a `logs --follow` asks every
/// quarter second, and leaves no row behind).
pub async fn forget(client: &Client, seq: i64) -> Result<(), tokio_postgres::Error> {
    client
        .execute("DELETE FROM requests WHERE seq = $1", &[&seq])
        .await?;
    Ok(())
}

/// The name an error code is stored under in `requests.error_code`.
#[must_use]
pub const fn code_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::InvalidRequest => "invalid_request",
        ErrorCode::UnknownJob => "unknown_job",
        ErrorCode::WrongState => "wrong_state",
        ErrorCode::Unavailable => "unavailable",
        ErrorCode::Internal => "internal",
        ErrorCode::PermissionDenied => "permission_denied",
        ErrorCode::NoBoard => "no_board",
        ErrorCode::HostLost => "host_lost",
    }
}

/// The error code stored as `text`, if this build knows it.
#[must_use]
pub fn parse_code(text: &str) -> Option<ErrorCode> {
    ErrorCode::ALL
        .into_iter()
        .find(|code| code_name(*code) == text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_stored_names() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(Kind::parse("reboot"), None);
        assert!(!Kind::Order(Action::Cancel).is_answered());
        assert!(!Kind::Order(Action::Kill).is_answered());
        assert!(Kind::Order(Action::Revert).is_answered());
        assert!(Kind::Order(Action::Pause).is_answered());
        assert!(Kind::Logs.is_answered() && !Kind::Logs.changes_job());
        assert!(Kind::LogsAfter.is_answered() && !Kind::LogsAfter.changes_job());
        assert!(Kind::Status.is_answered() && !Kind::Status.changes_job());
    }

    #[test]
    fn an_older_owners_outcomes_read_as_refusals() {
        let (code, text) = older_owners_refusal("refused: job 1 is running");
        assert_eq!(
            (code, text.as_str()),
            (ErrorCode::WrongState, "job 1 is running")
        );
        let (code, text) = older_owners_refusal("unreadable");
        assert_eq!(code, ErrorCode::InvalidRequest);
        assert!(text.contains("older"), "{text}");
    }

    #[test]
    fn error_codes_round_trip_through_their_stored_names() {
        for code in ErrorCode::ALL {
            assert_eq!(parse_code(code_name(code)), Some(code));
        }
        assert_eq!(parse_code("WrongState"), None);
    }
}
