//! Freezing a job's cgroup (`cgroup.freeze`), for `supervisor pause`: the kernel stops every
//! process in it, which none can notice or undo, and reports `frozen 1` in `cgroup.events` once
//! all are stopped. The wait watches that file with inotify, like the wait for an empty cgroup.

use super::job::{EventsWatch, FALLBACK_POLL, JobCgroup};
use anyhow::{Context, bail};
use std::time::Duration;
use tokio::time::Instant;

/// How long a freeze may take before it is given up (and the cgroup thawed again): a process
/// in an uninterruptible sleep (a stuck NFS read) delays it.
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

impl JobCgroup {
    /// Freezes (`frozen`) or thaws the cgroup and waits until `cgroup.events` says so, at most
    /// `timeout`. A freeze that does not complete in time is undone and refused.
    pub async fn set_frozen(&self, frozen: bool, timeout: Duration) -> anyhow::Result<()> {
        let events = self.path.join("cgroup.events");
        // Watching before the write: a change between the write and the wait is not lost.
        let watch = EventsWatch::new(&events).ok();
        let value = if frozen { "1" } else { "0" };
        std::fs::write(self.path.join("cgroup.freeze"), value)
            .with_context(|| format!("cannot write cgroup.freeze in {}", self.path.display()))?;
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_frozen() == Some(frozen) {
                return Ok(());
            }
            let changed = async {
                match &watch {
                    Some(watch) => watch.changed().await,
                    None => tokio::time::sleep(FALLBACK_POLL).await,
                }
            };
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                if self.is_frozen() == Some(frozen) {
                    return Ok(());
                }
                if frozen {
                    let _ = std::fs::write(self.path.join("cgroup.freeze"), "0");
                }
                bail!(
                    "{} did not report frozen {value} within {}",
                    self.path.display(),
                    shared::duration::format_duration(timeout)
                );
            }
        }
    }

    /// `frozen` of `cgroup.events`; `None` when unreadable.
    #[must_use]
    pub fn is_frozen(&self) -> Option<bool> {
        let events = std::fs::read_to_string(self.path.join("cgroup.events")).ok()?;
        events.lines().find_map(|line| match line.trim() {
            "frozen 1" => Some(true),
            "frozen 0" => Some(false),
            _ => None,
        })
    }
}
