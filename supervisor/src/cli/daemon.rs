//! `supervisor daemon`: runs in the foreground (systemd style) until SIGTERM, SIGINT or
//! `supervisor shutdown`. Conductors keep running when it stops.

use crate::board::BoardConfig;
use crate::daemon::{self, DaemonConfig};
use crate::process::WorkerCommand;
use crate::state_dir::StateDir;
use crate::store::PostgresStore;
use shared::exit;
use std::path::PathBuf;
use tokio::signal::unix::{SignalKind, signal};

#[derive(clap::Args, Debug)]
pub struct DaemonArgs {
    /// How many jobs run at once; the others wait `pending`, in submission order
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub max_jobs: usize,

    /// The base cgroup (v2) under which each job gets its own [default: a `supervisor` child of
    /// the daemon's own cgroup; sessions and process groups when no cgroup is writable]
    #[arg(long, value_name = "PATH")]
    pub cgroup_root: Option<PathBuf>,

    /// The conductor program [default: conductor-worker next to this binary, else this binary]
    #[arg(long, env = "SUPERVISOR_CONDUCTOR_BIN", value_name = "PATH")]
    pub conductor_bin: Option<PathBuf>,

    /// Conductors kept spawned ahead, each waiting in its own cgroup for a job; a job start
    /// takes one instead of spawning (0: none)
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub warm: usize,

    /// Delete finished jobs (rows, logs, sockets) that ended longer ago than DUR, at start and
    /// then hourly, as `supervisor prune --older-than DUR` does [default: keep everything]
    #[arg(long, value_name = "DUR", value_parser = super::jobs::parse_age)]
    pub keep: Option<std::time::Duration>,
    #[command(flatten)]
    pub operators: super::operators::DaemonOperatorArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub board: BoardArgs,
}

/// Where the daemon keeps its store (README, Durability).
#[derive(clap::Args, Debug)]
pub struct StoreArgs {
    /// Keep the store in this PostgreSQL database, not in SQLite in the state dir: a connection
    /// string (`host=/run/pg dbname=jobs`) or URI. The history then outlives the host's disk;
    /// every write-ahead and end waits for the server's commit [default: SQLite in the state
    /// dir]
    #[arg(
        long = "store",
        env = "SUPERVISOR_STORE",
        value_name = "URL",
        hide_env_values = true
    )]
    pub url: Option<String>,

    /// The schema of the store's tables in that database; one daemon per schema [default:
    /// `supervisor`; on a job board `store_HOST`, so that every host can keep its store in the
    /// board's database]
    #[arg(long, value_name = "NAME", requires = "url")]
    pub store_schema: Option<String>,

    /// Require TLS to the store, its certificate signed by a CA of this PEM file and naming
    /// the URL's host [default: `--board-ca` when the store is in the board's database (the
    /// same URL); otherwise TLS only with `sslmode=require` in the URL, verified against the
    /// system's roots]
    #[arg(
        long,
        env = "SUPERVISOR_STORE_CA",
        value_name = "FILE",
        requires = "url"
    )]
    pub store_ca: Option<PathBuf>,
}

impl StoreArgs {
    /// The store in PostgreSQL, if asked; the error is the message to print (exit 2).
    fn location(
        &self,
        board: Option<&BoardConfig>,
        board_args: &BoardArgs,
    ) -> Result<Option<PostgresStore>, String> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        let ca = match (&self.store_ca, &board_args.board) {
            (Some(ca), _) => Some(ca.as_path()),
            (None, Some(board_url)) if board_url == url => board_args.board_ca.as_deref(),
            (None, _) => None,
        };
        let schema = match (&self.store_schema, board) {
            (Some(schema), _) => schema.clone(),
            (None, Some(board)) => PostgresStore::schema_of_host(&board.host),
            (None, None) => PostgresStore::DEFAULT_SCHEMA.to_owned(),
        };
        let at = PostgresStore::new(url, &schema, ca)?;
        if at.has_password() && flag_on_command_line(std::env::args_os(), "--store") {
            tracing::warn!(
                url = at.shown_url(),
                "the store's password is on the command line, where every user of this host can read it (ps, /proc/PID/cmdline): give the URL in SUPERVISOR_STORE instead, or connect over a Unix socket with peer authentication"
            );
        }
        Ok(Some(at))
    }
}

/// Many hosts on one job board (README, Many hosts): leases, every host's jobs listed and
/// ordered from any host, a lost host's jobs rescued.
#[derive(clap::Args, Debug)]
pub struct BoardArgs {
    /// Join the job board in this PostgreSQL database: a connection string (`host=/run/pg
    /// dbname=board`) or URI (`postgresql://user@host/board`) [default: no board]
    #[arg(
        long,
        env = "SUPERVISOR_BOARD",
        value_name = "URL",
        hide_env_values = true
    )]
    pub board: Option<String>,

    /// This daemon's host name on the board [default: the machine's host name]
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,

    /// How long the board counts this host alive without a renewal (renewed every third of
    /// it)
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = shared::duration::parse_duration)]
    pub lease: std::time::Duration,

    /// Require TLS to the board, its certificate signed by a CA of this PEM file and naming the
    /// URL's host [default: TLS only with `sslmode=require` in the URL, verified against the
    /// system's roots]
    #[arg(long, env = "SUPERVISOR_BOARD_CA", value_name = "FILE")]
    pub board_ca: Option<PathBuf>,
}

impl BoardArgs {
    /// The board to join, if any; the error is the message to print (exit 2).
    fn config(&self) -> Result<Option<BoardConfig>, String> {
        let Some(url) = &self.board else {
            return Ok(None);
        };
        crate::board::lease::check_lease(self.lease)?;
        if self.host.as_deref().is_some_and(str::is_empty) {
            return Err("--host must not be empty".to_owned());
        }
        let config = BoardConfig::new(url, self.host.clone(), self.lease, self.board_ca.as_deref())
            .map_err(|err| format!("{:#}", anyhow::Error::from(err)))?;
        if config.has_password() && flag_on_command_line(std::env::args_os(), "--board") {
            tracing::warn!(
                url = config.shown_url(),
                "the board's password is on the command line, where every user of this host can read it (ps, /proc/PID/cmdline): give the URL in SUPERVISOR_BOARD instead, or connect over a Unix socket with peer authentication"
            );
        }
        Ok(Some(config))
    }
}

/// Whether `args` (the process's) give `flag` itself, not its environment variable.
fn flag_on_command_line(mut args: impl Iterator<Item = std::ffi::OsString>, flag: &str) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let with_value = format!("{flag}=");
    args.any(|arg| {
        arg.as_bytes() == flag.as_bytes() || arg.as_bytes().starts_with(with_value.as_bytes())
    })
}

pub fn main(args: DaemonArgs, state_dir: Option<PathBuf>) -> i32 {
    let operators = match args.operators.options() {
        Ok(operators) => operators,
        Err(err) => {
            eprintln!("supervisor daemon: {err:#}");
            return exit::INVALID_INPUT;
        }
    };
    let board = match args.board.config() {
        Ok(board) => board,
        Err(err) => {
            eprintln!("supervisor daemon: {err}");
            return exit::INVALID_INPUT;
        }
    };
    let store = match args.store.location(board.as_ref(), &args.board) {
        Ok(store) => store,
        Err(err) => {
            eprintln!("supervisor daemon: {err}");
            return exit::INVALID_INPUT;
        }
    };
    let result = (|| {
        let state_dir = StateDir::resolve(state_dir)?;
        let worker = WorkerCommand::locate(args.conductor_bin)?;
        // One runtime thread for every actor and handler: each step of a job is a hop between
        // it, the store's thread and the conductor, and a second worker only added wake-ups
        // (ARCHITECTURE.md, Processes). Blocking threads run spawns, session-mode kills and the
        // slow close of an inotify watch: on a host of a few cores, 64 keep a burst of
        // thousands of starts moving without a thread (and its stack) per job (Bounds).
        let runtime = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(64)
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let config = DaemonConfig {
                state_dir,
                max_jobs: args.max_jobs,
                warm: args.warm,
                worker,
                cgroup_root: args.cgroup_root,
                keep: args.keep,
                operators,
                store,
                board,
            };
            let mut terminate = signal(SignalKind::terminate())?;
            let mut interrupt = signal(SignalKind::interrupt())?;
            let stop = async move {
                tokio::select! {
                    _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "stopping"),
                    _ = interrupt.recv() => tracing::info!(signal = "SIGINT", "stopping"),
                }
            };
            daemon::run(config, stop).await
        })
    })();
    match result {
        Ok(()) => exit::SUCCESS,
        Err(err) => {
            eprintln!("supervisor daemon: {err:#}");
            exit::INTERNAL
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn args(board: Option<&str>, host: Option<&str>, lease_ms: u64) -> BoardArgs {
        BoardArgs {
            board: board.map(str::to_owned),
            host: host.map(str::to_owned),
            lease: Duration::from_millis(lease_ms),
            board_ca: None,
        }
    }

    #[test]
    fn a_board_url_on_the_command_line_is_told_apart_from_the_environment() {
        let given = |list: &[&str], flag| {
            flag_on_command_line(list.iter().map(std::ffi::OsString::from), flag)
        };
        assert!(given(
            &["supervisor", "daemon", "--board", "host=db"],
            "--board"
        ));
        assert!(given(
            &["supervisor", "daemon", "--board=host=db"],
            "--board"
        ));
        assert!(!given(
            &["supervisor", "daemon", "--board-ca", "ca.pem"],
            "--board"
        ));
        assert!(!given(&["supervisor", "daemon", "--host", "a"], "--board"));
        assert!(given(
            &["supervisor", "daemon", "--store=host=db"],
            "--store"
        ));
        assert!(!given(
            &["supervisor", "daemon", "--store-schema", "a"],
            "--store"
        ));
    }

    #[test]
    fn no_board_changes_nothing_and_a_board_takes_its_flags() {
        assert!(args(None, Some("a"), 10).config().expect("valid").is_none());
        let config = args(Some("host=/tmp/pg dbname=board"), Some("a"), 1000)
            .config()
            .expect("valid")
            .expect("a board");
        assert_eq!(config.host, "a");
        assert_eq!(config.lease, Duration::from_secs(1));
        assert_eq!(config.shown_url(), "host=/tmp/pg dbname=board");
    }

    #[test]
    fn bad_board_flags_are_refused_without_showing_the_password() {
        let url = Some("host=/tmp/pg password=s3cret dbname=board");
        let short = args(url, Some("a"), 100).config().expect_err("too short");
        assert!(short.contains("--lease"), "{short}");
        let empty = args(url, Some(""), 1000).config().expect_err("empty host");
        assert!(empty.contains("--host"), "{empty}");
        let bad = args(
            Some("postgresql://me:s3cret@h:notaport/db"),
            Some("a"),
            1000,
        )
        .config()
        .expect_err("bad port");
        assert!(bad.contains("invalid board URL"), "{bad}");
        assert!(!bad.contains("s3cret"), "{bad}");
        let debug = format!("{:?}", args(url, Some("a"), 1000).config().expect("valid"));
        assert!(!debug.contains("s3cret"), "{debug}");
    }
}
