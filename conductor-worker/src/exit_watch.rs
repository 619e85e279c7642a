//! Waiting for a child to exit without reaping it.
//!
//! A step's process leads its own process group, and everything left in that group is killed
//! when the step ends. The kill must come while the leader is still a zombie: once it is reaped,
//! its pid (which is the group's id) is free, and a `killpg` could reach an unrelated group that
//! took it. So the step waits here for the exit, kills the group, and only then lets tokio reap
//! the leader. Nothing here reaps: tokio owns its children's exit statuses.

use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// How often the fallback (no pidfd) checks the child.
const POLL_EVERY: Duration = Duration::from_millis(10);

/// Resolves once our child `pid` has exited (it stays a zombie until someone reaps it), or at
/// once if it is not (or no longer) a child of ours to wait for.
pub async fn exited(pid: Pid) {
    let registered = pidfd_open(pid).and_then(|fd| {
        // SAFETY: an `OwnedFd` is open, keeps its one descriptor, and closes it only when
        // the `AsyncFd` that owns it drops.
        unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.ok()
    });
    if let Some(pidfd) = registered {
        // A pidfd is readable once the process has exited; an error means it cannot be waited
        // on this way, and the fallback below decides.
        if pidfd.readable().await.is_ok() {
            return;
        }
    }
    while is_running(pid) {
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Whether our child `pid` has not exited yet (peeked with `WNOWAIT`: nothing is reaped).
#[must_use]
pub fn is_running(pid: Pid) -> bool {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG;
    matches!(waitid(Id::Pid(pid), flags), Ok(WaitStatus::StillAlive))
}

/// A pidfd for `pid`, or `None` where the kernel has none (before Linux 5.3).
fn pidfd_open(pid: Pid) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; no memory
    // is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    let fd = i32::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: the kernel just returned this descriptor, open and owned by nobody else.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn the_exit_is_seen_and_the_zombie_left_for_tokio() {
        let mut child = tokio::process::Command::new("/bin/sh")
            .args(["-c", "exit 3"])
            .spawn()
            .expect("sh");
        let pid = Pid::from_raw(i32::try_from(child.id().expect("pid")).expect("pid fits"));
        tokio::time::timeout(Duration::from_secs(10), exited(pid))
            .await
            .expect("exit seen");
        assert!(!is_running(pid));
        // Not reaped: the zombie is still there, and tokio still gets its status.
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        let status = child.wait().await.expect("tokio reaps it");
        assert_eq!(status.code(), Some(3));
    }

    #[tokio::test]
    async fn a_running_child_is_running() {
        let mut child = tokio::process::Command::new("/bin/sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = Pid::from_raw(i32::try_from(child.id().expect("pid")).expect("pid fits"));
        assert!(is_running(pid));
        let started = Instant::now();
        let waited = tokio::time::timeout(Duration::from_millis(50), exited(pid)).await;
        assert!(waited.is_err() && started.elapsed() >= Duration::from_millis(50));
        child.kill().await.expect("kill");
    }
}
