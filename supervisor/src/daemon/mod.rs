//! The daemon: many jobs, one conductor each, a bounded number at once, the control socket, and
//! re-attachment to the conductors that outlived a previous daemon.
//!
//! - On start it re-attaches to every live job recorded in the store whose conductor is still the
//!   same process (pid and start time); a job whose conductor is gone becomes `crashed`, with its
//!   pending reverts logged.
//! - `pending` jobs start in submission order while fewer than `max_jobs` run.
//! - Stopping the daemon (SIGTERM, SIGINT, `shutdown`) leaves the conductors running; `shutdown
//!   --cancel` soft-cancels every live job first and waits for them within their ladders.
//! - `--warm N` keeps N conductors spawned ahead for the job starts (`job/warm.rs`); they never
//!   outlive the daemon: killed when it stops (any mode), and a daemon starting on the state dir
//!   kills those a dead one left.
//! - `--board URL` puts the daemon on a job board (`crate::board`): it joins (or refuses to
//!   start) before its control socket exists, renews its lease while it runs, and answers
//!   `hosts` from the board. On a board it also publishes its jobs to the board's mirror
//!   (`mirror.rs`), listens for the cancel and kill requests other hosts write for its jobs
//!   and carries them out (`remote.rs`), and answers `ls`, `status`, `cancel` and `kill` for
//!   other hosts' jobs from the board. When its lease is not renewed in time it fences itself
//!   (`fence.rs`): its jobs soft-cancelled, then killed, and no job started or accepted until
//!   a renewal succeeds. It claims the board's unclaimed jobs while it has free slots
//!   (`claims.rs`), and rescues lost hosts' jobs (`rescue.rs`).

mod claims;
mod fd_limit;
mod fence;
mod handlers;
mod metrics_server;
mod mirror;
mod remote;
mod rescue;
mod scheduler;

use crate::board::Board;
use crate::containment::Containment;
use crate::job::{Jobs, JobsConfig, Launcher, Order, WarmPool, warm};
use crate::process::{self, WorkerCommand};
use crate::state_dir::StateDir;
use crate::store::StoreHandle;
use anyhow::{Context, bail};
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, OnceLock};
use tokio::net::UnixListener;

/// How the daemon is configured.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub state_dir: StateDir,
    pub max_jobs: usize,
    /// `--warm N`: conductors kept spawned ahead of the jobs (ARCHITECTURE.md, Warm conductors).
    pub warm: usize,
    pub worker: WorkerCommand,
    /// The base cgroup for job cgroups (`--cgroup-root`); `None`: found automatically.
    pub cgroup_root: Option<std::path::PathBuf>,
    /// `--keep`: prune jobs finished longer ago than this, at start and hourly; `None`: never.
    pub keep: Option<std::time::Duration>,
    /// What operators add: alert hooks, metrics.
    pub operators: OperatorOptions,
    /// `--store`: the store in PostgreSQL; `None`: SQLite in the state dir.
    pub store: Option<crate::store::PostgresStore>,
    /// `--board`: the job board to join; `None`: this daemon is an island.
    pub board: Option<crate::board::BoardConfig>,
}

/// The daemon's options for operators (issue 13): its own alert hooks, and where it serves
/// its metrics.
#[derive(Clone, Debug, Default)]
pub struct OperatorOptions {
    pub hooks: crate::job::DaemonHooks,
    /// `--metrics ADDR` (checked: loopback unless `--metrics-public`).
    pub metrics: Option<std::net::SocketAddr>,
}

/// Runs the daemon until `shutdown` resolves or a client asks it to stop.
pub async fn run(
    config: DaemonConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    config.state_dir.create()?;
    let live_jobs_allowed = fd_limit::raise();
    // Held for the daemon's whole life: one daemon per state dir, and `shutdown` waits on it.
    // Taken before the store is opened: a second daemon on the dir is told so, whatever its
    // store.
    let _lock = lock_state_dir(&config.state_dir)?;
    let store = match &config.store {
        None => StoreHandle::open(config.state_dir.root()),
        Some(at) => {
            tracing::info!(
                url = at.shown_url(),
                schema = at.schema,
                "store: in PostgreSQL"
            );
            StoreHandle::open_postgres(at.clone())
        }
    }
    .context("cannot open the store")?;
    process::start_reaper()?;
    let max_jobs = fd_limit::cap_max_jobs(config.max_jobs.max(1), live_jobs_allowed);
    // On the board before anyone can reach the daemon: a refused host name stops it here.
    // Renewals start at once (the start below can outlast a short lease); they count the live
    // jobs once the registry exists.
    let registry: Arc<OnceLock<Jobs>> = Arc::default();
    let (board, mut renewals) = match &config.board {
        Some(board) => {
            let (board, renewer) = Board::join(board.clone(), max_jobs).await?;
            let jobs = Arc::clone(&registry);
            let live_jobs = move || jobs.get().map_or(0, Jobs::supervising);
            (Some(board), Some(renewer.start(Arc::new(live_jobs))))
        }
        None => (None, None),
    };
    let listener = bind_control(&config.state_dir).await?;
    let containment = Containment::detect(config.cgroup_root.clone());
    let containment = match &board {
        Some(board) => containment.on_board_as(&board.config().host),
        None => containment,
    };
    match &containment {
        Containment::Cgroup {
            base, controllers, ..
        } => tracing::info!(
            mode = "cgroup",
            base = %base.display(),
            controllers = controllers.iter().cloned().collect::<Vec<_>>().join(","),
            "containment: one cgroup per job"
        ),
        Containment::Session { reason } => tracing::info!(
            mode = "session",
            reason,
            "containment: sessions and process groups"
        ),
    }
    let warm = start_warm_pool(&config, &containment).await?;
    let jobs = Jobs::new(JobsConfig {
        store,
        launcher: Launcher {
            state_dir: config.state_dir.clone(),
            worker: config.worker.clone(),
            containment,
            warm: warm.clone(),
        },
        observer: None,
        hooks: config.operators.hooks.clone(),
        lease: board.as_ref().map(Board::lease_watch),
        board: board.clone(),
        events_kept: EVENTS_KEPT,
    });
    if let Some(addr) = config.operators.metrics {
        let metrics = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        tracing::info!(addr = %metrics.local_addr().unwrap_or(addr), "metrics served at /metrics");
        tokio::spawn(metrics_server::serve(metrics, jobs.clone()));
    }
    // Set once, here: the renewals count its live jobs from now on.
    let _ = registry.set(jobs.clone());
    // Before anything is scheduled, claimed or published: queued jobs taken while this host
    // was away are ended here, never run.
    if let Some(board) = &board {
        rescue::end_taken(&jobs, board).await;
    }
    let board_tasks = board.as_ref().map(|board| BoardTasks {
        _listener: board.start_listener(),
        mirror: tokio::spawn(mirror::run(jobs.clone(), board.clone())),
        requests: tokio::spawn(remote::run(jobs.clone(), board.clone())),
        fence: tokio::spawn(fence::run(jobs.clone(), board.clone())),
        rescue: tokio::spawn(rescue::run(jobs.clone(), board.clone())),
        claims: tokio::spawn(claims::run(jobs.clone(), board.clone())),
    });
    reattach_all(&jobs).await;
    tokio::spawn(scheduler::run(jobs.clone(), max_jobs, board.clone()));
    if let Some(keep) = config.keep {
        tokio::spawn(handlers::prune::keep(jobs.clone(), board.clone(), keep));
    }
    tracing::info!(state_dir = %config.state_dir.root().display(), max_jobs, "daemon ready");

    tokio::pin!(shutdown);
    let cancel_on_exit = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let jobs = jobs.clone();
                    let board = board.clone();
                    tokio::spawn(async move { handlers::serve_client(jobs, board, stream).await });
                }
                Err(err) => {
                    // A persistent error (EMFILE) must not spin the loop.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            () = &mut shutdown => break false,
            cancel = jobs.shutdown_requested() => break cancel,
        }
    };
    drop(listener);
    let _ = std::fs::remove_file(control_socket(&config.state_dir));
    // First: no job may take a warm conductor that is being killed.
    if let Some(pool) = &warm {
        pool.close().await;
    }
    // Leaving its conductors running (no `--cancel`), the daemon leaves the board first: its
    // lease renewed there, the detach gives each conductor a fence from that renewal.
    if !cancel_on_exit {
        jobs.begin_stopping();
        leave(board.as_ref(), &mut renewals).await;
    }
    jobs.stop(cancel_on_exit).await;
    drop(board_tasks);
    leave(board.as_ref(), &mut renewals).await;
    tracing::info!("daemon stopped");
    Ok(())
}

/// Stops the renewals and leaves the board (`Board::leave`), once: nothing without a board,
/// or after the first call.
async fn leave(board: Option<&Board>, renewals: &mut Option<crate::board::TaskGuard>) {
    if let (Some(board), Some(renewer)) = (board, renewals.take()) {
        drop(renewer);
        board.leave().await;
    }
}

/// The daemon's background tasks on the board, stopped when dropped.
struct BoardTasks {
    _listener: crate::board::TaskGuard,
    mirror: tokio::task::JoinHandle<()>,
    requests: tokio::task::JoinHandle<()>,
    fence: tokio::task::JoinHandle<()>,
    rescue: tokio::task::JoinHandle<()>,
    claims: tokio::task::JoinHandle<()>,
}

impl Drop for BoardTasks {
    fn drop(&mut self) {
        self.mirror.abort();
        self.requests.abort();
        self.fence.abort();
        self.rescue.abort();
        self.claims.abort();
    }
}

/// Clears the warm conductors a previous daemon left, then starts the pool (`--warm N`, none
/// for 0). The pool fills in the background: the daemon is ready before it is.
async fn start_warm_pool(
    config: &DaemonConfig,
    containment: &Containment,
) -> anyhow::Result<Option<WarmPool>> {
    warm::clear_leftovers(&config.state_dir, containment).await?;
    tracing::info!(size = config.warm, "warm pool");
    if config.warm == 0 {
        return Ok(None);
    }
    let pool = WarmPool::new(
        config.warm,
        config.state_dir.clone(),
        config.worker.clone(),
        containment.clone(),
    );
    pool.start();
    Ok(Some(pool))
}

/// How many state events an `events` or `--wait` client may fall behind by: room for a burst
/// of a few thousand jobs' changes between two of its reads.
const EVENTS_KEPT: usize = 4096;

/// The pause after a failed accept (out of descriptors, say) before the next one.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// Hands every job whose conductor may still run to its actor: it re-attaches, records the
/// crash of a conductor that is gone, or leaves the job to the live `supervisor run` that owns
/// it. In the background, so that a store refusing writes cannot keep the daemon down.
async fn reattach_all(jobs: &Jobs) {
    let rows = match jobs.store().call(|s| s.attached_jobs()).await {
        Ok(rows) => rows,
        Err(err) => {
            tracing::error!(error = %err, "cannot read the live jobs");
            return;
        }
    };
    for row in rows {
        let jobs = jobs.clone();
        tokio::spawn(async move {
            if let Err(err) = jobs.ask(&row.id, Order::Adopt).await {
                tracing::error!(job_id = %row.id, error = %err, "cannot take up the job");
            }
        });
    }
}

/// The control socket's path.
#[must_use]
pub fn control_socket(state_dir: &StateDir) -> std::path::PathBuf {
    state_dir.root().join("control.sock")
}

/// Takes the state dir's daemon lock, or says that another daemon holds it.
fn lock_state_dir(state_dir: &StateDir) -> anyhow::Result<std::fs::File> {
    let path = state_dir.lock_file();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    if !crate::state_dir::try_flock(&file, libc::LOCK_EX) {
        bail!(
            "a daemon already serves {} (stop it with `supervisor shutdown`)",
            state_dir.root().display()
        );
    }
    Ok(file)
}

async fn bind_control(state_dir: &StateDir) -> anyhow::Result<UnixListener> {
    let path = control_socket(state_dir);
    if path.exists() {
        if tokio::net::UnixStream::connect(&path).await.is_ok() {
            bail!(
                "a daemon already serves {} (stop it with `supervisor shutdown`)",
                state_dir.root().display()
            );
        }
        std::fs::remove_file(&path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(&path).with_context(|| format!("cannot bind {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    Ok(listener)
}
