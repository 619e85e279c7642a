//! The `hosts` table: registration at start, renewals, and the list `supervisor hosts` shows.
//! Every judgement of time here is the database's (`now()`).

use super::BoardError;
use shared::protocol::client::{HostState, HostSummary};
use tokio_postgres::Client;

/// What a daemon registers about itself.
#[derive(Clone, Debug)]
pub struct Registration {
    pub host: String,
    pub instance: String,
    pub lease_ms: i64,
    pub max_jobs: i64,
    pub version: String,
}

/// Takes the host name for this instance: a new row, the row of an instance that stopped
/// cleanly, or the row of an instance whose lease expired (by the database's clock). Refuses
/// while another running instance holds a current lease.
/// One statement decides, so two daemons starting with one name cannot both win.
pub async fn register(client: &Client, me: &Registration) -> Result<(), BoardError> {
    // Rows are never deleted today; the retry only guards a future that prunes hosts between
    // the two statements below.
    for _ in 0..REGISTER_TRIES {
        if try_register(client, me).await? {
            return Ok(());
        }
        if let Some((instance, age_ms, lease_ms)) = holder(client, &me.host).await? {
            return Err(BoardError::HostTaken {
                host: me.host.clone(),
                instance,
                age_ms,
                lease_ms,
            });
        }
    }
    Err(BoardError::HostTaken {
        host: me.host.clone(),
        instance: "(changing)".to_owned(),
        age_ms: 0,
        lease_ms: 0,
    })
}

/// How often [`register`] tries when the holder of the name vanishes under it.
const REGISTER_TRIES: usize = 3;

fn register_error(source: tokio_postgres::Error) -> BoardError {
    BoardError::Query {
        what: "register this host",
        source,
    }
}

/// Whether this instance now holds the name.
async fn try_register(client: &Client, me: &Registration) -> Result<bool, BoardError> {
    let taken = client
        .query_opt(
            "INSERT INTO hosts AS h
                 (name, instance, started_at, renewed_at, lease_ms, max_jobs, live_jobs, version)
             VALUES ($1, $2, now(), now(), $3, $4, 0, $5)
             ON CONFLICT (name) DO UPDATE SET
                 instance = EXCLUDED.instance, started_at = now(), renewed_at = now(),
                 lease_ms = EXCLUDED.lease_ms, max_jobs = EXCLUDED.max_jobs, live_jobs = 0,
                 version = EXCLUDED.version, stopped_at = NULL
             WHERE h.stopped_at IS NOT NULL
                OR h.renewed_at + h.lease_ms * interval '1 millisecond' <= now()
             RETURNING instance",
            &[
                &me.host,
                &me.instance,
                &me.lease_ms,
                &me.max_jobs,
                &me.version,
            ],
        )
        .await
        .map_err(register_error)?;
    Ok(taken.is_some())
}

/// The instance holding `host`, how long ago it renewed (ms, database clock) and its lease.
async fn holder(client: &Client, host: &str) -> Result<Option<(String, i64, i64)>, BoardError> {
    let row = client
        .query_opt(
            "SELECT instance, (extract(epoch FROM now() - renewed_at) * 1000)::bigint, lease_ms
             FROM hosts WHERE name = $1",
            &[&host],
        )
        .await
        .map_err(register_error)?;
    row.map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
        .transpose()
        .map_err(register_error)
}

/// What a renewal found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// `renewed_at` is now the database's `now()`.
    Renewed,
    /// Another instance holds the name: ours expired and was taken over.
    TakenOver,
}

/// Renews this instance's lease and reports its live jobs.
pub async fn renew(
    client: &Client,
    host: &str,
    instance: &str,
    live_jobs: i64,
) -> Result<Renewal, tokio_postgres::Error> {
    let updated = client
        .execute(
            "UPDATE hosts SET renewed_at = now(), live_jobs = $3
             WHERE name = $1 AND instance = $2",
            &[&host, &instance, &live_jobs],
        )
        .await?;
    Ok(if updated == 0 {
        Renewal::TakenOver
    } else {
        Renewal::Renewed
    })
}

/// Marks this instance stopped (a clean `shutdown`): the host name is free for its next start
/// at once, without waiting for the lease to run out. With `renew`, the lease is renewed in
/// the same statement (the conductors left running then get a fence counted from it); whether
/// the row was this instance's.
pub async fn stopped(
    client: &Client,
    host: &str,
    instance: &str,
    renew: bool,
) -> Result<bool, tokio_postgres::Error> {
    let updated = client
        .execute(
            "UPDATE hosts SET stopped_at = now(),
                 renewed_at = CASE WHEN $3 THEN now() ELSE renewed_at END
             WHERE name = $1 AND instance = $2",
            &[&host, &instance, &renew],
        )
        .await?;
    Ok(updated > 0)
}

/// Every host of the board, by name.
pub async fn list(client: &Client) -> Result<Vec<HostSummary>, BoardError> {
    let query = |source| BoardError::Query {
        what: "list the hosts",
        source,
    };
    let rows = client
        .query(
            "SELECT name, instance,
                    now() - renewed_at < lease_ms * interval '1 millisecond',
                    (extract(epoch FROM now() - renewed_at) * 1000)::bigint,
                    lease_ms, live_jobs, max_jobs, version, stopped_at IS NOT NULL
             FROM hosts ORDER BY name",
            &[],
        )
        .await
        .map_err(query)?;
    rows.iter()
        .map(|row| {
            let alive: bool = row.try_get(2)?;
            let stopped: bool = row.try_get(8)?;
            Ok(HostSummary {
                name: row.try_get(0)?,
                instance: row.try_get(1)?,
                state: match (stopped, alive) {
                    (true, _) => HostState::Stopped,
                    (false, true) => HostState::Alive,
                    (false, false) => HostState::Lost,
                },
                renewal_age_ms: row.try_get(3)?,
                lease_ms: row.try_get(4)?,
                live_jobs: row.try_get(5)?,
                max_jobs: row.try_get(6)?,
                version: row.try_get(7)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(query)
}
