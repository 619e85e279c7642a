//! The job board: daemons on many hosts sharing one PostgreSQL database (DESIGN.md section 11,
//! issue 11). Hosts are on the board; every host's jobs are *visible* from every other one
//! (the mirror), every operator's order reaches a job's owner from anywhere (requests), each
//! job's journal is on the board under a claim epoch, a lost host's jobs are rescued by
//! another host, and a daemon that cannot renew its lease fences itself (no two hosts ever run
//! steps of one job at once). Jobs run on the host where they were submitted, that rescued
//! them, or that claimed them (a job written unclaimed: `submit --host`, or no free slot on
//! the host asked).
//!
//! # Theory of operation
//!
//! - **Join** ([`Board::join`], at daemon start, before the control socket exists): connect
//!   (an unreachable board is an error that stops the daemon, naming the URL without its
//!   password, [`redact`]), create or migrate the schema under an advisory lock ([`schema`]),
//!   then register this *instance* under its host name ([`hosts::register`]). Each daemon start
//!   is a new instance (128 random bits): a restarted host never looks like the old one. A name
//!   whose lease is still current by the database's clock belongs to a live daemon: the start
//!   is refused. A name whose lease expired, or whose daemon stopped cleanly, is taken over.
//! - **Renew** (`renewer`): every lease/3 on a dedicated connection that carries nothing
//!   else, so a renewal never waits behind another query. Each renewal sets `renewed_at =
//!   now()` and `live_jobs`. The send time of the last successful renewal is kept on the
//!   monotonic clock ([`Board::last_renewal_sent`]); from it, [`lease::LeaseClock`] says when
//!   this daemon must stop counting on its lease (`lease - margin`). A failed renewal logs
//!   `board lease at risk` and reconnects with backoff; passing `lease - margin` without a
//!   success logs `lease lost` once. If another instance took the name meanwhile, the renewer
//!   stops for good (`board lease taken over`).
//! - **Fence** (`daemon/fence.rs`, [`lease`]): every point counts on the monotonic clock from
//!   `t_r`, the send time of the last successful renewal, and falls before `lease - margin`,
//!   itself before the database can judge the lease expired. At `t_r + lease/2` without a
//!   newer renewal the lease is no longer current ([`Board::is_lease_current`]): the daemon
//!   soft-cancels every job holding a conductor through its actor (reason `fenced: board
//!   lease not renewed for Nms`; the reverts run here while time allows), its scheduler starts
//!   nothing, no job is claimed, and `revert`, `resume`, `continue` and a `submit` it would
//!   hold are refused (a plain `submit` is written unclaimed for another host). At `t_r + lease*7/10` it kills the jobs still live (the
//!   kill path: `killed`, the reverts that did not run recorded as skipped for `revert JOB`).
//!   Each phase logs `board fencing` at WARN. A renewal that succeeds lifts the fence (`board
//!   lease regained`); the jobs fenced stay ended. A daemon too frozen to fence itself (a
//!   SIGSTOP, a partition of the whole host) is covered by its conductors: each job's actor
//!   *delegates* the lease ([`Board::lease_watch`]) with `ToConductor::Fence { run_for_ms }`
//!   (protocol 5) after every (re)connection and every renewal, `run_for_ms` being `t_r +
//!   lease*7/10 - now`; a conductor that passes that deadline without a newer fence SIGKILLs
//!   its running steps, starts nothing more (no revert: another host may own the job by then),
//!   reports `JobEvent::Fenced` and keeps it until a daemon acknowledges it; the job ends
//!   `killed`, reason `fenced: supervisor silent`, its reverts skipped. A conductor of
//!   protocol 4 or older cannot be told (the actor logs a WARN that it has no fence).
//! - **Read** ([`Board::hosts`]): `supervisor hosts` asks the local daemon, which queries the
//!   board on a short-lived connection of its own. Alive means `now() - renewed_at < lease`,
//!   judged by the database's clock only.
//! - **Leave** ([`Board::leave`], at a clean `shutdown`): the row is marked `stopped`, so the
//!   same host name can start again at once (a `systemctl restart`). The lease itself is not
//!   shortened: the daemon's conductors may outlive it, and its jobs must not be rescued by
//!   another host before it would have expired.
//!
//! - **Mirror** ([`mirror`], published by `daemon/mirror.rs` on its own connection): each
//!   daemon writes its jobs' summaries (state, current task, running count) to `jobs` from its
//!   job-event broadcast, in the background; after a lag or a reconnect it re-publishes its
//!   live jobs. Other hosts read it for `ls`, `status` and `--wait`. The publisher's
//!   statements (`mirror::publish`, `journal::write_announcing`) and
//!   `journal::cancel_unclaimed` announce the jobs whose state changed in the same statement:
//!   `pg_notify('sv_jobs', ...)` ([`mirror::JOBS_CHANNEL`], a [`mirror::JobChange`] of about
//!   100 bytes); the job actor's write-ahead announces nothing. Every daemon's
//!   listener hears them and hands other hosts' changes to [`Board::remote_jobs`], with
//!   [`mirror::RemoteJobs::Missed`] after each of its (re)connects; the daemon's `events`
//!   relays them to its clients (protocol 7), and a CLI's `--wait` on another host's job
//!   ends on its terminal state from there, reading the mirror every second and after a gap
//!   as well (a lost notification delays the end, never loses it).
//! - **Requests** ([`requests`]): an order (`cancel`, `kill`, `revert`, `resume`, `pause`,
//!   `continue`) of another host's job, or `logs` of it (each page of `logs --follow` a
//!   `logs_after` row with the owner's cursor, deleted once read), is a row of `requests` plus
//!   `pg_notify('sv_requests', HOST)` in one statement. The operator's answer comes after the
//!   commit for `cancel` and `kill`; for the others, once the owner marked the row done (its
//!   refusal's code and text, or the lines of `logs`, written back), read again by the asking
//!   daemon every 50 ms ([`Board::request_answer`]), or at once when the owner's lease
//!   expired. The owner's `listener` (one dedicated `LISTEN` connection,
//!   named `supervisor-listen`, on requests, claims and job changes) wakes its reader ([`Board::requests_due`]) on a notification
//!   and after every (re)connect, and every renewal wakes it too: a lost notification delays
//!   a request by at most lease/3. The reader (`daemon/remote.rs`) applies each through the
//!   job's actor, as a local order, and marks it done with the outcome.
//! - **Journal** ([`journal`], [`Held`]): on a board, a submit writes the job (epoch 1, its
//!   file, spec, `on_host_loss` and tasks) before the local store, under an id unique across
//!   the board. Every later write about it says `WHERE host = me AND epoch = HELD`: the
//!   write-ahead synchronously by the job's actor (`job/journal.rs`, before the conductor's
//!   acknowledgement), the rest by the mirror publisher from the job events. A write that
//!   matches no row is refused: the job is stale here ([`Board::refused`]: logged, recorded in
//!   `late_writes`, never written again; the caller kills it if it runs).
//! - **Rescue** ([`Board::rescue`], driven by `daemon/rescue.rs` every lease/3 on the query
//!   connection): one statement takes the unended journal jobs of hosts whose lease expired by
//!   the database's clock, `FOR UPDATE SKIP LOCKED`, at the next epoch, `crashed` with
//!   `host lost: OLD`; the rescuer imports them and follows their `on_host_loss`. A job that
//!   never began a step (`pending`, every task `pending`) is given back unclaimed instead, in
//!   the same statement (host NULL, `pinned` kept, announced on `sv_claims`), for any host
//!   to claim and run from the start; or ended `cancelled` there, unclaimed, when a cancel
//!   or kill written for the lost host was still pending. The epoch moved on, so the lost host's writes, should
//!   it come back, are refused; a restarted one ends its queued copies of jobs it no longer
//!   holds before it schedules anything ([`Board::taken_elsewhere`]).
//! - **Claims** ([`Board::claim`], driven by `daemon/claims.rs`; [`journal::claim`]): a job
//!   written unclaimed (host NULL, epoch 1, `pinned` the host asked or NULL; announced with
//!   `pg_notify('sv_claims', PINNED or '')` in its INSERT) is taken by ONE statement per
//!   claim: up to this host's free slots of the unclaimed unended jobs pinned to it or to
//!   nobody, oldest first, `FOR UPDATE SKIP LOCKED`, `host = me, epoch = epoch + 1`. The
//!   claimer holds each at its epoch and imports it `pending`. Claims are due
//!   ([`Board::claims_due`]) on a notification for this host or any, after the listener's
//!   (re)connect, after every renewal (a lost notification delays a claim by at most
//!   lease/3), and when a slot may have freed ([`Board::wake_claims`]); never taken while the
//!   lease is not current. A cancel or kill of an unclaimed job ends it on the board in one
//!   statement guarded by `host IS NULL` ([`requests`]). A claim commits before the import:
//!   at start, the claimed, still pending jobs this host holds but its store lacks are
//!   imported ([`Board::held_pending`]); one the store refuses is given back unclaimed
//!   ([`Board::release_claim`]).
//! - **TLS** ([`tls`]): off unless asked (`--board-ca FILE`, or `sslmode=require` in the URL),
//!   and when asked always verified (chain and host name), for every connection alike.
//! - **Connections**, one per role ([`Role`], in `application_name`): renewals, the listener,
//!   the mirror (which also writes the journal), and one shared query connection (`query.rs`)
//!   for operators' reads and requests, the owner's reads of its requests, submits, write-aheads,
//!   rescues and claims; `hosts` and leaving open their own.
//!
//! Failure modes: the database restarting or unreachable for a while (renewals fail, the
//! renewer reconnects; the host shows `lost` meanwhile and `alive` again once a renewal
//! succeeds, with the same instance; past `t_r + lease/2` the daemon fences its jobs, and
//! takes jobs again after the renewal); a daemon killed (its row stays, `lost` after its lease);
//! two daemons started with one host name (the second is refused while the first lives); a
//! host lost (its jobs rescued elsewhere after its lease; its late writes refused).

mod held;
pub mod hosts;
pub mod journal;
pub mod lease;
mod listener;
pub mod mirror;
mod query;
mod renewer;
pub mod requests;
pub mod schema;

use crate::pg::{redact, tls};
pub use held::Held;
use lease::LeaseClock;
use shared::protocol::client::HostSummary;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, broadcast, watch};
use tokio_postgres::Client;

/// How long connecting to the board may take (at start, and for each `hosts` request).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a `hosts` query may take.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// How many changes of other hosts' jobs [`Board::remote_jobs`] keeps for a slow receiver
/// before it lags (and reads again what it follows).
const REMOTE_JOBS_BACKLOG: usize = 1024;

/// What went wrong with the board.
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    #[error("invalid board URL {url}: {source}")]
    InvalidUrl {
        url: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("cannot connect to the board at {url}")]
    Connect {
        url: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("the board at {url} did not answer within {}s", .timeout.as_secs())]
    Timeout { url: String, timeout: Duration },
    #[error("cannot {what} on the board")]
    Query {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "host name {host:?} is held by a live daemon (instance {instance}, renewed {age_ms}ms ago, lease {lease_ms}ms): \
         choose another --host, or stop that daemon and wait for its lease to expire"
    )]
    HostTaken {
        host: String,
        instance: String,
        age_ms: i64,
        lease_ms: i64,
    },
    #[error(
        "the board's schema is version {found}, newer than this supervisor's ({ours}): upgrade it"
    )]
    SchemaTooNew { found: i32, ours: i32 },
    #[error(
        "the board's schema is version {found}, older than this supervisor's ({ours}), and daemons still run on it: {hosts}; \
         migrating it under them would break them: stop every daemon of the board, then start the new build on each"
    )]
    UpgradeUnderLiveHosts {
        found: i32,
        ours: i32,
        hosts: String,
    },
    /// TLS to the board cannot be set up as asked (`--board-ca`, `sslmode=require`).
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot {what}")]
    Local {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// How this daemon joins the board (`--board`, `--host`, `--lease`).
#[derive(Clone)]
pub struct BoardConfig {
    /// The URL as it may be shown: without its password.
    shown_url: String,
    pg: tokio_postgres::Config,
    /// The TLS connector of every connection ([`tls`]: off unless asked).
    tls: tls::Connector,
    /// The `application_name` each connection's role is appended to (`supervisor-listen`):
    /// the URL's own, else `supervisor`.
    app_name: String,
    /// The host name (`--host`, else the machine's).
    pub host: String,
    /// `--lease`.
    pub lease: Duration,
}

impl std::fmt::Debug for BoardConfig {
    /// Without the password (the parsed config holds it).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoardConfig")
            .field("url", &self.shown_url)
            .field("host", &self.host)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl BoardConfig {
    /// Parses `url` (a PostgreSQL connection string or URI); `host` defaults to the machine's
    /// host name; `ca` is `--board-ca` ([`tls`]).
    pub fn new(
        url: &str,
        host: Option<String>,
        lease: Duration,
        ca: Option<&Path>,
    ) -> Result<Self, BoardError> {
        let shown_url = redact::redact(url);
        let mut pg: tokio_postgres::Config =
            url.parse().map_err(|source| BoardError::InvalidUrl {
                url: shown_url.clone(),
                source,
            })?;
        pg.connect_timeout(CONNECT_TIMEOUT);
        let tls = tls::settle(&mut pg, ca)?;
        let app_name = pg.get_application_name().unwrap_or("supervisor").to_owned();
        let host = match host {
            Some(host) => host,
            None => machine_host_name()?,
        };
        Ok(Self {
            shown_url,
            pg,
            tls,
            app_name,
            host,
            lease,
        })
    }

    /// The URL without its password.
    #[must_use]
    pub fn shown_url(&self) -> &str {
        &self.shown_url
    }

    /// Whether the URL carries a password.
    #[must_use]
    pub fn has_password(&self) -> bool {
        self.pg.get_password().is_some()
    }
}

/// The machine's host name, as the kernel has it.
fn machine_host_name() -> Result<String, BoardError> {
    let text = std::fs::read_to_string("/proc/sys/kernel/hostname").map_err(|source| {
        BoardError::Local {
            what: "read the host name (give --host)",
            source,
        }
    })?;
    Ok(text.trim().to_owned())
}

/// A fresh instance id: 128 bits from the kernel's random source, in hex.
fn new_instance_id() -> Result<String, BoardError> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .map_err(|source| BoardError::Local {
            what: "read /dev/urandom for the instance id",
            source,
        })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A connection to the board: the client, and the task that drives its socket.
#[derive(Debug)]
pub struct Connection {
    client: Client,
    driver: tokio::task::JoinHandle<()>,
}

impl Connection {
    /// The client to query with.
    #[must_use]
    pub const fn client(&self) -> &Client {
        &self.client
    }

    /// Whether the server or the network ended it.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Gives the connection up at once. Dropping it closes it politely, which can wait as long
    /// as the network does when the peer is gone; this stops its driver too.
    pub fn abandon(self) {
        self.driver.abort();
    }
}

/// What a connection to the board is for; each is its own connection, named
/// `APP-ROLE` in `pg_stat_activity.application_name` (`supervisor-listen`), so that an operator
/// (or a test) can tell them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Lease renewals only (`renewer`).
    Renew,
    /// `LISTEN` for requests only (`listener`).
    Listen,
    /// This daemon's jobs published to the mirror (`daemon/mirror.rs`).
    Mirror,
    /// Operators' reads and requests, the owner's reads of its requests, and the journal's
    /// submits, write-aheads, late writes and rescues (`query.rs`).
    Query,
    /// One short-lived request (`hosts`, leaving the board).
    Once,
}

impl Role {
    const fn suffix(self) -> &'static str {
        match self {
            Self::Renew => "renew",
            Self::Listen => "listen",
            Self::Mirror => "mirror",
            Self::Query => "query",
            Self::Once => "once",
        }
    }
}

impl BoardConfig {
    /// The connection settings for `role`.
    fn pg_for(&self, role: Role) -> tokio_postgres::Config {
        let mut pg = self.pg.clone();
        pg.application_name(format!("{}-{}", self.app_name, role.suffix()));
        pg
    }

    /// Connects with the settings of `role`: the caller bounds the time.
    async fn connect_as(
        &self,
        role: Role,
    ) -> Result<
        (
            Client,
            tokio_postgres::Connection<tokio_postgres::Socket, TlsStream>,
        ),
        tokio_postgres::Error,
    > {
        self.pg_for(role).connect(self.tls.clone()).await
    }
}

/// The stream of a board connection (raw when TLS is off: [`tls`]).
type TlsStream =
    <tls::Connector as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Stream;

/// Opens a connection for `role` (bounded by [`CONNECT_TIMEOUT`]); its driver runs as a task
/// of its own until the client is dropped, the server goes away, or [`Connection::abandon`].
pub async fn connect(config: &BoardConfig, role: Role) -> Result<Connection, BoardError> {
    let url = config.shown_url.clone();
    let connecting = config.connect_as(role);
    let (client, connection) = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(source)) => return Err(BoardError::Connect { url, source }),
        Err(_) => {
            return Err(BoardError::Timeout {
                url,
                timeout: CONNECT_TIMEOUT,
            });
        }
    };
    let driver = tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "board connection ended");
        }
    });
    Ok(Connection { client, driver })
}

/// This daemon's place on the board; cheap to clone.
#[derive(Clone, Debug)]
pub struct Board {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: BoardConfig,
    instance: String,
    /// The lease as of the last successful renewal; its receivers (the fencing, the job
    /// actors delegating it to their conductors) wake at each renewal.
    lease: watch::Sender<LeaseClock>,
    /// Set after every renewal and every (re)connect of the listener, and on each request
    /// notification for this host: the owner's requests are due to be read.
    requests_due: Notify,
    /// Set after every renewal and every (re)connect of the listener, on each claims
    /// notification for this host or any host, and when a slot may have freed here
    /// ([`Board::wake_claims`]): unclaimed jobs are due to be claimed.
    claims_due: Notify,
    /// The changes of other hosts' jobs the listener heard of, and its reconnects.
    remote_jobs: broadcast::Sender<mirror::RemoteJobs>,
    /// `--max-jobs`, as reported at join: the slots claims fill.
    max_jobs: usize,
    /// The shared connection of [`Role::Query`], opened on first use and again after it fails.
    query: Mutex<Option<Arc<Connection>>>,
    /// The jobs of the journal this daemon holds, with their epochs, and those it lost
    /// ([`held::Held`]).
    held: Mutex<std::collections::HashMap<shared::ids::JobId, held::Held>>,
}

/// The joined board's renewal connection, waiting for [`Renewer::start`].
pub struct Renewer {
    board: Board,
    connection: Connection,
}

/// Stops a background task of the board (the renewals, the listener) when dropped (the
/// daemon's end).
pub struct TaskGuard(tokio::task::JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How many jobs hold a conductor now (reported at each renewal).
pub type LiveJobs = Arc<dyn Fn() -> usize + Send + Sync>;

impl Board {
    /// Connects, migrates the schema and registers a new instance under the host name (see the
    /// module's theory of operation). `max_jobs` is reported as is.
    pub async fn join(config: BoardConfig, max_jobs: usize) -> Result<(Self, Renewer), BoardError> {
        let instance = new_instance_id()?;
        let mut connection = connect(&config, Role::Renew).await?;
        let timeout = |_| BoardError::Timeout {
            url: config.shown_url.clone(),
            timeout: CONNECT_TIMEOUT,
        };
        let found = tokio::time::timeout(CONNECT_TIMEOUT, schema::migrate(&mut connection.client))
            .await
            .map_err(timeout)??;
        let me = hosts::Registration {
            host: config.host.clone(),
            instance: instance.clone(),
            lease_ms: millis(config.lease),
            max_jobs: i64::try_from(max_jobs).unwrap_or(i64::MAX),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let sent = Instant::now();
        tokio::time::timeout(CONNECT_TIMEOUT, hosts::register(connection.client(), &me))
            .await
            .map_err(timeout)??;
        let held = tokio::time::timeout(
            CONNECT_TIMEOUT,
            journal::held(connection.client(), &config.host),
        )
        .await
        .map_err(timeout)?
        .map_err(|source| BoardError::Query {
            what: "read this host's jobs",
            source,
        })?;
        tracing::info!(
            board = %config.shown_url,
            host = %config.host,
            instance = %instance,
            lease_ms = me.lease_ms,
            schema_was = found,
            "joined the board"
        );
        let board = Self {
            inner: Arc::new(Inner {
                lease: watch::channel(LeaseClock::new(config.lease, sent)).0,
                config,
                instance,
                requests_due: Notify::new(),
                claims_due: Notify::new(),
                remote_jobs: broadcast::channel(REMOTE_JOBS_BACKLOG).0,
                max_jobs,
                query: Mutex::new(None),
                held: Mutex::new(
                    held.into_iter()
                        .map(|(id, epoch)| (id, held::Held::Epoch(epoch)))
                        .collect(),
                ),
            }),
        };
        let renewer = Renewer {
            board: board.clone(),
            connection,
        };
        Ok((board, renewer))
    }

    /// Every host of the board, by name (on a connection of its own: never the renewals').
    pub async fn hosts(&self) -> Result<Vec<HostSummary>, BoardError> {
        let connection = connect(&self.inner.config, Role::Once).await?;
        match tokio::time::timeout(QUERY_TIMEOUT, hosts::list(connection.client())).await {
            Ok(listed) => listed,
            Err(_) => {
                connection.abandon();
                Err(BoardError::Timeout {
                    url: self.inner.config.shown_url.clone(),
                    timeout: QUERY_TIMEOUT,
                })
            }
        }
    }

    /// Marks this instance stopped, at a clean shutdown; a failure is only logged (the lease
    /// then runs out as after a crash). While the lease is current, it is renewed in the same
    /// statement, and its send time recorded as the last renewal's: the conductors this
    /// daemon leaves running get their last fence from it (`job/supervise.rs`, at the
    /// detach), so that a restart has the whole `lease*7/10` to reconnect to them.
    pub async fn leave(&self) {
        let (host, instance) = (&self.inner.config.host, &self.inner.instance);
        let renew = self.is_lease_current();
        let left = async {
            let connection = connect(&self.inner.config, Role::Once).await?;
            let sent = Instant::now();
            let marked = tokio::time::timeout(
                QUERY_TIMEOUT,
                hosts::stopped(connection.client(), host, instance, renew),
            )
            .await;
            match marked {
                Ok(result) => result
                    .map(|ours| (ours, sent))
                    .map_err(|source| BoardError::Query {
                        what: "mark this host stopped",
                        source,
                    }),
                Err(_) => {
                    connection.abandon();
                    Err(BoardError::Timeout {
                        url: self.inner.config.shown_url.clone(),
                        timeout: QUERY_TIMEOUT,
                    })
                }
            }
        };
        match left.await {
            Ok((true, sent)) => {
                if renew {
                    self.record_renewal(sent);
                }
                tracing::info!(host = %host, instance = %instance, renewed = renew, "left the board");
            }
            Ok((false, _)) => {
                tracing::warn!(host = %host, instance = %instance, "cannot mark this host stopped: another instance holds the name");
            }
            Err(err) => {
                tracing::warn!(host = %host, error = %err, "cannot mark this host stopped; its lease runs out instead")
            }
        }
    }

    /// This daemon start's instance id.
    #[must_use]
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// The board's configuration.
    #[must_use]
    pub fn config(&self) -> &BoardConfig {
        &self.inner.config
    }

    /// When (monotonic clock) the last successful renewal was sent: fencing counts from here
    /// ([`lease`]).
    #[must_use]
    pub fn last_renewal_sent(&self) -> Instant {
        self.lease_clock().last_sent()
    }

    /// The lease as of the last successful renewal.
    #[must_use]
    pub fn lease_clock(&self) -> LeaseClock {
        *self.inner.lease.borrow()
    }

    /// Whether this daemon's lease is current now (before `t_r + lease/2`): while it is not,
    /// no job starts and `submit` is refused.
    #[must_use]
    pub fn is_lease_current(&self) -> bool {
        self.lease_clock().is_current(Instant::now())
    }

    /// Whether this daemon may still count on its lease (before `lease - margin` from the send
    /// time of its last successful renewal, on the monotonic clock): no other host can rescue
    /// its jobs meanwhile.
    #[must_use]
    pub fn holds_lease(&self) -> bool {
        !self.lease_clock().is_lost(Instant::now())
    }

    /// The lease, marked changed at every successful renewal.
    #[must_use]
    pub fn lease_watch(&self) -> watch::Receiver<LeaseClock> {
        self.inner.lease.subscribe()
    }

    fn record_renewal(&self, sent: Instant) {
        self.inner.lease.send_modify(|clock| clock.renewed(sent));
        self.inner.requests_due.notify_one();
        self.inner.claims_due.notify_one();
    }

    /// Starts the listener: one dedicated connection that `LISTEN`s for this host's requests
    /// (never the renewals' nor the queries'), reconnecting with backoff; stops when the guard
    /// is dropped.
    #[must_use]
    pub fn start_listener(&self) -> TaskGuard {
        TaskGuard(tokio::spawn(listener::run(self.clone())))
    }

    /// Resolves when unclaimed jobs are due to be claimed: after a renewal, after the
    /// listener (re)connected, on a claims notification, or after [`Board::wake_claims`]
    /// (one wake-up may stand for several).
    pub async fn claims_due(&self) {
        self.inner.claims_due.notified().await;
    }

    /// Asks for a claim soon (a slot may have freed here).
    pub fn wake_claims(&self) {
        self.inner.claims_due.notify_one();
    }

    /// `--max-jobs`: how many jobs this daemon runs at once.
    #[must_use]
    pub fn max_jobs(&self) -> usize {
        self.inner.max_jobs
    }

    /// The changes of other hosts' jobs from here on, as their hosts write them to the
    /// mirror ([`mirror::JOBS_CHANNEL`]), and [`mirror::RemoteJobs::Missed`] after every
    /// (re)connect of the listener. A hint, as every notification: whoever follows a job reads
    /// it again after `Missed` or a lag, and now and then anyway.
    #[must_use]
    pub fn remote_jobs(&self) -> broadcast::Receiver<mirror::RemoteJobs> {
        self.inner.remote_jobs.subscribe()
    }

    /// Resolves when this host's requests are due to be read: after a renewal, after the
    /// listener (re)connected, or on a notification (one wake-up may stand for several).
    pub async fn requests_due(&self) {
        self.inner.requests_due.notified().await;
    }
}

impl Renewer {
    /// Starts renewing every lease/3, reporting `live_jobs()`, until the guard is dropped.
    #[must_use]
    pub fn start(self, live_jobs: LiveJobs) -> TaskGuard {
        TaskGuard(tokio::spawn(renewer::run(
            self.board,
            Some(self.connection),
            live_jobs,
        )))
    }
}

/// A duration in whole milliseconds, as the board stores it.
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
