//! Logging: `tracing` to stderr, as text or JSON lines. `-v` raises the level; `SUPERVISOR_LOG`
//! (else `RUST_LOG`) overrides it with a full filter.

use tracing_subscriber::EnvFilter;

/// How log lines look on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the subscriber. `quiet_default` is the level without `-v` (`warn` for one-shot
/// commands, `info` for the daemon).
pub fn init(verbose: u8, quiet_default: &str, format: LogFormat) {
    let level = match verbose {
        0 => quiet_default,
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = std::env::var("SUPERVISOR_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A full disk under a redirected stderr must not turn a log line into a panic.
        .log_internal_errors(false)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
