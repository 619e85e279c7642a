//! A pidfd: a descriptor that names one process for as long as it is open, so that signals and
//! the exit watch can never reach a stranger that reused the pid.
//!
//! A conductor we spawn gets its pidfd from the spawn itself (`CLONE_PIDFD`, or a `pidfd_open`
//! made before the child can be reaped). A conductor found again after a restart is named by
//! its stored pid and start time: [`Pidfd::open`] opens the pid, then checks the start time of
//! the process it opened. A pid reused before the open fails that check, so the pidfd is refused.

use super::stat::{ConductorId, stat};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;
use tokio::io::unix::AsyncFd;

/// How often [`Pidfd::exited`] polls the pidfd itself when it cannot register it with the
/// runtime (a resource limit): still the pidfd, never a bare pid.
const POLL_FALLBACK: Duration = Duration::from_millis(20);

/// An open pidfd on one conductor, with the identity it was opened for.
pub struct Pidfd {
    /// Registered with the runtime on the first [`Pidfd::exited`]; declared before `fd` so that
    /// it is deregistered before the descriptor closes.
    watch: tokio::sync::OnceCell<Option<AsyncFd<Raw>>>,
    fd: OwnedFd,
    id: ConductorId,
}

/// The pidfd's number, for the runtime's registration (which does not own it).
struct Raw(RawFd);

impl AsRawFd for Raw {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl std::fmt::Debug for Pidfd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pidfd")
            .field("fd", &self.fd.as_raw_fd())
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Pidfd {
    /// Opens a pidfd on the process `id` names. Refused (`ESRCH`) when the pid is free, or
    /// belongs to another process (start time differs) by the time the pidfd is open.
    pub fn open(id: ConductorId) -> std::io::Result<Self> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, id.pid, 0) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let raw = RawFd::try_from(raw).map_err(|_| std::io::Error::other("pidfd out of range"))?;
        // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // Checked after the open: the pidfd holds its process, so if the pid's process now has
        // the expected start time, it is the one the pidfd names.
        match stat(id.pid) {
            Some(s) if s.start_time == id.start_time => Ok(Self::from_owned(fd, id)),
            _ => Err(std::io::Error::from_raw_os_error(libc::ESRCH)),
        }
    }

    /// Wraps a pidfd the kernel gave for `id` at its birth (`CLONE_PIDFD`, or `pidfd_open`
    /// while the child could not be reaped).
    pub(crate) fn from_owned(fd: OwnedFd, id: ConductorId) -> Self {
        Self {
            watch: tokio::sync::OnceCell::new(),
            fd,
            id,
        }
    }

    /// The process this pidfd names.
    #[must_use]
    pub const fn id(&self) -> ConductorId {
        self.id
    }

    /// Sends `sig` to the process (`pidfd_send_signal`); `ESRCH` once it has exited.
    pub fn signal(&self, sig: nix::sys::signal::Signal) -> std::io::Result<()> {
        // SAFETY: pidfd_send_signal on a descriptor we own, with no siginfo and no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                sig as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// True once the process has exited (zombie or reaped); does not wait.
    #[must_use]
    pub fn has_exited(&self) -> bool {
        let mut poll = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd we own, with a zero timeout.
        let n = unsafe { libc::poll(&raw mut poll, 1, 0) };
        n > 0 && poll.revents != 0
    }

    /// Resolves once the process has exited (a pidfd turns readable then). Registers with the
    /// current runtime on first use, so a `Pidfd` can be made on any thread (a spawn runs on a
    /// blocking thread).
    pub async fn exited(&self) {
        let watch = self
            .watch
            .get_or_init(|| async {
                // SAFETY: `Raw` always returns the number of `self.fd`, which stays open for
                // as long as the registration: `watch` is dropped before `fd`.
                unsafe {
                    AsyncFd::register_with_interest(
                        Raw(self.fd.as_raw_fd()),
                        tokio::io::Interest::READABLE,
                    )
                }
                .map_err(|err| err.into_parts().1)
                    .inspect_err(|err| {
                        tracing::warn!(pid = self.id.pid, error = %err, "cannot watch the pidfd; polling it");
                    })
                    .ok()
            })
            .await;
        match watch {
            // Readiness is never cleared: once exited, every later call returns at once.
            Some(watch) => {
                if watch.readable().await.is_ok() {
                    return;
                }
                while !self.has_exited() {
                    tokio::time::sleep(POLL_FALLBACK).await;
                }
            }
            None => {
                while !self.has_exited() {
                    tokio::time::sleep(POLL_FALLBACK).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper() -> (std::process::Child, ConductorId) {
        let child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("spawn sleep");
        let pid = i32::try_from(child.id()).expect("pid");
        let id = ConductorId::of(pid).expect("stat of our child");
        (child, id)
    }

    #[tokio::test]
    async fn exited_resolves_after_the_child_exits() {
        let (mut child, id) = sleeper();
        let pidfd = Pidfd::open(id).expect("open");
        assert_eq!(pidfd.id(), id);
        assert!(!pidfd.has_exited());
        pidfd
            .signal(nix::sys::signal::Signal::SIGKILL)
            .expect("signal");
        tokio::time::timeout(Duration::from_secs(10), pidfd.exited())
            .await
            .expect("the pidfd turns readable once the child is killed");
        assert!(pidfd.has_exited());
        child.wait().expect("reap");
        // Reaped: the pidfd still names the dead process, and signals say so.
        let err = pidfd
            .signal(nix::sys::signal::Signal::SIGKILL)
            .expect_err("no signal to a reaped process");
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
    }

    #[test]
    fn open_refuses_a_wrong_start_time() {
        let (mut child, id) = sleeper();
        let stranger = ConductorId {
            pid: id.pid,
            start_time: id.start_time + 1,
        };
        let err = Pidfd::open(stranger).expect_err("another start time is another process");
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
        let _ = child.kill();
        child.wait().expect("reap");
        // A reaped pid is refused too: free (ESRCH), or reused (another start time).
        assert!(Pidfd::open(id).is_err());
    }

    #[test]
    fn a_pidfd_can_be_made_outside_a_runtime() {
        let (mut child, id) = sleeper();
        let pidfd = Pidfd::open(id).expect("open");
        let _ = child.kill();
        child.wait().expect("reap");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), pidfd.exited())
                .await
                .expect("exited");
        });
    }
}
