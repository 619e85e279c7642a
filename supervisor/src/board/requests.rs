//! The `requests` table: a `cancel` or `kill` of a job, written by whichever host the operator
//! asked, for the host that holds the job (issue 11, rule 3).
//!
//! - **Write** ([`request`]): one statement inserts the row (only for a job the mirror shows
//!   live on another host) and `pg_notify('sv_requests', HOST)`; PostgreSQL delivers the
//!   notification at the commit, so the owner never hears of a row it cannot read, and the
//!   operator's answer comes after the commit: the request is durable.
//! - **Read** ([`pending`]): the owner reads its rows with `done_at IS NULL`, on a notification,
//!   after its listener (re)connects, and after every lease renewal: a lost notification
//!   delays a request by at most lease/3, never loses it.
//! - **Done** ([`mark_done`]): once the job's actor answered, `done_at = now()` and the
//!   outcome. A request read twice (a crash between applying and marking it) is applied twice:
//!   a second cancel or kill of the same job does no harm (the actor refuses it or it is
//!   already on the ladder).

use shared::ids::JobId;
use shared::protocol::client::Requester;
use tokio_postgres::Client;

/// The channel of request notifications; the payload is the owner's host name.
pub const CHANNEL: &str = "sv_requests";

/// What is asked of the job's owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Cancel,
    Kill,
}

impl Kind {
    /// The name stored in `requests.kind`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Cancel => "cancel",
            Self::Kill => "kill",
        }
    }

    /// The kind stored as `text`, if this build knows it.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "cancel" => Some(Self::Cancel),
            "kill" => Some(Self::Kill),
            _ => None,
        }
    }
}

/// What writing a request found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Written {
    /// Committed for this host, which was notified.
    Requested { host: String },
    /// The mirror shows the job on another host, ended.
    Ended { host: String, state: String },
    /// No other host holds a job with this id.
    Unknown,
    /// Several hosts hold a job with this id (two drew the same 32 random bits).
    Ambiguous { hosts: Vec<String> },
}

/// What an operator asks of another host's job.
#[derive(Clone, Debug)]
pub struct Ask {
    pub kind: Kind,
    /// A cancel's `--timeout` (overrides the job's `cancel_timeout`).
    pub timeout_ms: Option<u64>,
    /// Who asked, as this host's kernel told it.
    pub by: Option<Requester>,
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
            "SELECT host, state, ended FROM jobs WHERE id = $1 AND host <> $2 ORDER BY host",
            &[&id.as_str(), &me],
        )
        .await?;
    let (host, state, ended): (String, String, bool) = match holders.as_slice() {
        [] => return Ok(Written::Unknown),
        [one] => (one.try_get(0)?, one.try_get(1)?, one.try_get(2)?),
        several => {
            let hosts = several
                .iter()
                .map(|row| row.try_get(0))
                .collect::<Result<_, _>>()?;
            return Ok(Written::Ambiguous { hosts });
        }
    };
    if ended {
        return Ok(Written::Ended { host, state });
    }
    let by_json = ask
        .by
        .as_ref()
        .and_then(|by| serde_json::to_string(by).ok());
    let timeout_ms = ask
        .timeout_ms
        .map(|ms| i64::try_from(ms).unwrap_or(i64::MAX));
    client
        .execute(
            "WITH r AS (
                 INSERT INTO requests
                     (job_id, host, kind, requested_at, requested_by, by_json, timeout_ms)
                 VALUES ($1, $2, $3, now(), $4, $5, $6)
                 RETURNING host
             )
             SELECT pg_notify($7, host) FROM r",
            &[
                &id.as_str(),
                &host,
                &ask.kind.as_str(),
                &me,
                &by_json,
                &timeout_ms,
                &CHANNEL,
            ],
        )
        .await?;
    Ok(Written::Requested { host })
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
}

/// `host`'s requests not yet done, oldest first.
pub async fn pending(client: &Client, host: &str) -> Result<Vec<Pending>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT seq, job_id, kind, requested_by, by_json, timeout_ms FROM requests
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
            })
        })
        .collect()
}

/// Marks request `seq` done with its `outcome` (once: a second mark changes nothing).
pub async fn mark_done(
    client: &Client,
    seq: i64,
    outcome: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE requests SET done_at = now(), outcome = $2 WHERE seq = $1 AND done_at IS NULL",
            &[&seq, &outcome],
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_stored_names() {
        for kind in [Kind::Cancel, Kind::Kill] {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(Kind::parse("revert"), None);
    }
}
