//! A hostile custom conductor for `tests/tests/security.rs` (issue 10, hole 1): a native task
//! that leaks the job's listening socket to a process of its own, which then tries to pass for
//! the conductor. A job names it with `worker = "forge-worker"`.
//!
//! - kind `leak_listener` `{dir, forgeries, victim}`: clears close-on-exec on the conductor's
//!   listening socket (fd 3), starts `forge-worker forge DIR FORGERIES VICTIM` (which inherits
//!   it), sets close-on-exec again, then blocks the conductor's one thread (no `await`) until
//!   the forger wrote `DIR/forged` or a minute passed: meanwhile only the forger accepts.
//! - `forge-worker forge DIR N VICTIM`: writes `DIR/forger-ready`; accepts up to N connections
//!   on fd 3, answers each supervisor's hello as a conductor would (claiming the conductor's
//!   pid, its parent), then sends a forged `TaskSpawned { pid: VICTIM }`, and waits for the
//!   supervisor to drop it; writes the count to `DIR/forged` and exits.

use conductor_worker::{Registry, Task, TaskContext, TaskError, TaskFuture};
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use serde::Deserialize;
use shared::protocol::codec::{decode_body, encode_frame};
use shared::protocol::conductor::{ConductorHello, FromConductor, JobEvent, Report, ToConductor};
use std::io::{Read, Write};
use std::os::fd::{BorrowedFd, FromRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The conductor's listening socket.
const LISTEN_FD: i32 = 3;
/// How long either side waits at most.
const LIMIT: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
struct LeakParams {
    dir: PathBuf,
    forgeries: u32,
    victim: u32,
}

fn set_cloexec(on: bool) -> Result<(), TaskError> {
    // SAFETY: fd 3 is the conductor's listening socket for its whole life.
    let fd = unsafe { BorrowedFd::borrow_raw(LISTEN_FD) };
    let flags = fcntl(fd, FcntlArg::F_GETFD).map_err(|e| TaskError::new(e.to_string()))?;
    let mut flags = FdFlag::from_bits_truncate(flags);
    flags.set(FdFlag::FD_CLOEXEC, on);
    fcntl(fd, FcntlArg::F_SETFD(flags))
        .map(drop)
        .map_err(|e| TaskError::new(e.to_string()))
}

struct LeakListener;

impl Task for LeakListener {
    fn execute<'a>(&'a self, ctx: &'a TaskContext) -> TaskFuture<'a, serde_json::Value> {
        Box::pin(async move {
            let LeakParams {
                dir,
                forgeries,
                victim,
            } = ctx.params()?;
            let exe = std::env::current_exe().map_err(|e| TaskError::new(e.to_string()))?;
            set_cloexec(false)?;
            let spawned = std::process::Command::new(exe)
                .arg("forge")
                .arg(&dir)
                .arg(forgeries.to_string())
                .arg(victim.to_string())
                .stdin(std::process::Stdio::null())
                .spawn();
            set_cloexec(true)?;
            let mut forger = spawned.map_err(|e| TaskError::new(e.to_string()))?;
            // Blocks the conductor's one thread on purpose: it cannot accept meanwhile.
            let until = Instant::now() + LIMIT;
            while !dir.join("forged").exists() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = forger.wait();
            let forged = std::fs::read_to_string(dir.join("forged")).unwrap_or_default();
            Ok(serde_json::json!({ "forged": forged.trim() }))
        })
    }

    fn revert<'a>(&'a self, _ctx: &'a TaskContext) -> TaskFuture<'a, ()> {
        Box::pin(async move { Ok(()) })
    }
}

/// The forger's main: see the module doc.
fn forge(dir: &Path, forgeries: u32, victim: u32) -> std::io::Result<()> {
    // SAFETY: fd 3 was left open across the exec on purpose by `leak_listener`.
    let listener = unsafe { UnixListener::from_raw_fd(LISTEN_FD) };
    std::fs::write(dir.join("forger-ready"), std::process::id().to_string())?;
    let claimed = std::os::unix::process::parent_id();
    let until = Instant::now() + LIMIT;
    let mut forged = 0;
    while forged < forgeries && Instant::now() < until {
        // The descriptor is shared with the conductor, non-blocking: poll (and leave it so).
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = impersonate(stream, claimed, victim);
                forged += 1;
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(err) => return Err(err),
        }
    }
    std::fs::write(dir.join("forged"), forged.to_string())
}

/// One forged session: hello as the conductor, a forged report, then wait for the drop.
fn impersonate(mut stream: UnixStream, claimed: u32, victim: u32) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut header = [0u8; 4];
    stream.read_exact(&mut header)?;
    let mut body = vec![0; u32::from_be_bytes(header) as usize];
    stream.read_exact(&mut body)?;
    let Ok(ToConductor::Hello(theirs)) = decode_body::<ToConductor>(&body) else {
        return Ok(());
    };
    let hello = FromConductor::Hello(ConductorHello {
        protocol_version: theirs.protocol_version,
        job_id: theirs.job_id,
        pid: claimed,
        has_plan: false,
    });
    let report = FromConductor::Report(Report {
        seq: 1,
        event: JobEvent::TaskSpawned {
            task: 0,
            phase: shared::protocol::conductor::Phase::Execute,
            pid: victim,
        },
    });
    for message in [hello, report] {
        let frame = encode_frame(&message).map_err(std::io::Error::other)?;
        stream.write_all(&frame)?;
    }
    // Until the supervisor hangs up (or the timeout).
    let mut sink = [0u8; 256];
    while stream.read(&mut sink).is_ok_and(|n| n > 0) {}
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("forge") {
        let number = |i: usize| args.get(i).and_then(|a| a.parse::<u32>().ok()).unwrap_or(0);
        let dir = PathBuf::from(args.get(2).cloned().unwrap_or_default());
        return match forge(&dir, number(3), number(4)) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("forge-worker forge: {err}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let mut registry = Registry::new();
    registry.register("leak_listener", |_params| Ok(LeakListener));
    conductor_worker::main_with_registry(registry)
}
