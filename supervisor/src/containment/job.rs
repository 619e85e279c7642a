//! One job's cgroup: its limits, `cgroup.kill`, and waiting until it is empty.
//!
//! The wait watches `cgroup.events` with inotify (the kernel notifies a modification whenever
//! `populated` changes) through the runtime's reactor: no polling, and no blocking of a worker.

use anyhow::{Context, bail};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use shared::limits::Limits;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

/// How long to wait for a killed cgroup to become empty.
pub const EMPTY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often to read `cgroup.events` when inotify is unavailable (out of inotify instances).
pub(super) const FALLBACK_POLL: Duration = Duration::from_millis(10);
/// The kernel's minimum interval between two notifications of one cgroup file.
const NOTIFY_MIN_INTERVAL: Duration = Duration::from_millis(20);
/// The first pause between the quick reads of `cgroup.events` (doubled each time).
const QUICK_LOOK_FIRST: Duration = Duration::from_micros(250);

/// One job's cgroup.
#[derive(Clone, Debug)]
pub struct JobCgroup {
    pub path: PathBuf,
}

impl JobCgroup {
    /// Sets the job's `memory`, `pids` and `cpu` limits.
    pub(super) fn apply(&self, limits: &Limits) -> anyhow::Result<()> {
        let write = |file: &str, value: String| {
            std::fs::write(self.path.join(file), &value)
                .with_context(|| format!("cannot set {file} = {value} on {}", self.path.display()))
        };
        if let Some(memory) = limits.memory {
            write("memory.max", memory.to_string())?;
            // No swap to hide in: the limit is the limit.
            let _ = std::fs::write(self.path.join("memory.swap.max"), "0");
        }
        if let Some(pids) = limits.pids {
            write("pids.max", pids.to_string())?;
        }
        if let Some(millis) = limits.cpu_millis {
            const PERIOD_US: u64 = 100_000;
            write(
                "cpu.max",
                format!("{} {PERIOD_US}", u64::from(millis) * PERIOD_US / 1000),
            )?;
        }
        Ok(())
    }

    /// An existing cgroup of this name: refused while populated (a conductor of this job may
    /// still run in it), else removed and created again, so that no earlier limit survives.
    pub(super) fn replace_leftover(&self) -> anyhow::Result<()> {
        if self.is_populated() {
            bail!(
                "the job's cgroup {} still holds processes (an earlier conductor of this job, or \
                 its tasks, still run): kill them first",
                self.path.display()
            );
        }
        // rmdir fails (EBUSY) if a process joined since: then it is refused all the same.
        std::fs::remove_dir(&self.path)
            .and_then(|()| std::fs::create_dir(&self.path))
            .with_context(|| {
                format!(
                    "cannot replace the leftover cgroup {} of an earlier conductor",
                    self.path.display()
                )
            })
    }

    /// True if `cgroup` (an absolute path, as [`super::cgroup_of`] gives) is this cgroup or
    /// one beneath it.
    #[must_use]
    pub fn contains(&self, cgroup: &std::path::Path) -> bool {
        cgroup.starts_with(&self.path)
    }

    /// True while any process is in it.
    #[must_use]
    pub fn is_populated(&self) -> bool {
        std::fs::read_to_string(self.path.join("cgroup.events"))
            .map(|events| events.lines().any(|l| l.trim() == "populated 1"))
            .unwrap_or(false)
    }

    /// SIGKILLs everything in it (`cgroup.kill`).
    pub fn kill(&self) {
        if let Err(err) = std::fs::write(self.path.join("cgroup.kill"), "1") {
            if err.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(cgroup = %self.path.display(), error = %err, "cgroup.kill failed");
            }
        }
    }

    /// Waits until no process is in it (`populated 0`, or the cgroup is gone), at most
    /// `timeout`; true if it is empty.
    ///
    /// Most waits are over at once (a conductor that ended has emptied its cgroup) or within a
    /// few milliseconds (the kernel delivering a `cgroup.kill`): a few quick reads over the
    /// first 20 ms (`NOTIFY_MIN_INTERVAL`) see those. Only a longer wait sets up an inotify watch on
    /// `cgroup.events`: it costs a blocking close of several milliseconds (the kernel waits for
    /// a grace period), done on a blocking thread; and the kernel sends at most one
    /// notification per file every 20 ms (CGROUP_FILE_NOTIFY_MIN_INTV), so a watch alone would
    /// make a short job's end late.
    pub async fn wait_empty(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let quick_until = (Instant::now() + NOTIFY_MIN_INTERVAL).min(deadline);
        let mut pause = QUICK_LOOK_FIRST;
        while Instant::now() < quick_until {
            if !self.is_populated() {
                return true;
            }
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
        // Watching before the next read: a change between the read and the wait is not lost.
        let watch = EventsWatch::new(&self.path.join("cgroup.events"))
            .inspect_err(|err| {
                if err.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(cgroup = %self.path.display(), error = %err, "cannot watch cgroup.events; polling it");
                }
            })
            .ok();
        let empty = loop {
            if !self.is_populated() {
                break true;
            }
            let changed = async {
                match &watch {
                    Some(watch) => watch.changed().await,
                    None => tokio::time::sleep(FALLBACK_POLL).await,
                }
            };
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                break !self.is_populated();
            }
        };
        if let Some(watch) = watch {
            tokio::task::spawn_blocking(move || drop(watch));
        }
        empty
    }

    /// Kills everything in it, waits until it is empty, and removes it. False when it did not
    /// empty in time (it is then left for the next attempt).
    pub async fn kill_and_remove(&self) -> bool {
        if !self.path.exists() {
            return true;
        }
        self.kill();
        if !self.wait_empty(EMPTY_TIMEOUT).await {
            tracing::error!(cgroup = %self.path.display(), "the job's cgroup did not empty after cgroup.kill");
            return false;
        }
        // An empty cgroup's rmdir is quick (tens of microseconds), even with a zombie in it.
        if let Err(err) = std::fs::remove_dir(&self.path) {
            tracing::warn!(cgroup = %self.path.display(), error = %err, "cannot remove the job's cgroup");
        }
        true
    }
}

/// An inotify watch on one `cgroup.events` file, registered with the runtime.
pub(super) struct EventsWatch {
    fd: AsyncFd<InotifyFd>,
}

/// The inotify instance, with the raw number the reactor needs.
struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl EventsWatch {
    pub(super) fn new(events: &std::path::Path) -> std::io::Result<Self> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        inotify.add_watch(events, AddWatchFlags::IN_MODIFY)?;
        Ok(Self {
            // SAFETY: `InotifyFd` owns the descriptor and always returns its number.
            fd: unsafe {
                AsyncFd::register_with_interest(InotifyFd(inotify), tokio::io::Interest::READABLE)
            }
            .map_err(|err| err.into_parts().1)?,
        })
    }

    /// Resolves once the file has changed (or the watch ended) since the last call.
    pub(super) async fn changed(&self) {
        loop {
            let Ok(mut ready) = self.fd.readable().await else {
                // The reactor refused: wait as the fallback does rather than spin.
                tokio::time::sleep(FALLBACK_POLL).await;
                return;
            };
            match ready.try_io(|fd| fd.get_ref().0.read_events().map_err(std::io::Error::from)) {
                Ok(_) => return,
                Err(_would_block) => {}
            }
        }
    }
}
