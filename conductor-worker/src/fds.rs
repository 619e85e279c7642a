//! Descriptor hygiene: nothing the conductor inherited reaches a task. The supervisor hands over
//! the job's listening socket as fd 3 without close-on-exec (it must survive the exec into the
//! conductor); left so, every task, and every daemon a task starts, would hold the job's socket
//! and could accept the supervisor's next connection (ARCHITECTURE.md, Containment).

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use std::os::fd::{BorrowedFd, RawFd};

/// Sets `FD_CLOEXEC` on `fd`.
pub fn set_close_on_exec(fd: RawFd) -> nix::Result<()> {
    if fd < 0 {
        return Err(nix::Error::EBADF);
    }
    // SAFETY: only for the duration of two fcntl calls; a closed fd makes them fail with EBADF,
    // which is returned, and nothing else is done with it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let flags = FdFlag::from_bits_truncate(fcntl(borrowed, FcntlArg::F_GETFD)?);
    fcntl(borrowed, FcntlArg::F_SETFD(flags | FdFlag::FD_CLOEXEC)).map(drop)
}

/// The descriptors open in this process above stderr, as listed in `/proc/self/fd` (the
/// listing's own descriptor included; it is close-on-exec and closed again already).
fn open_above_stderr() -> std::io::Result<Vec<RawFd>> {
    let mut fds = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let name = entry?.file_name();
        if let Some(fd) = name.to_str().and_then(|n| n.parse::<RawFd>().ok()) {
            if fd > 2 {
                fds.push(fd);
            }
        }
    }
    Ok(fds)
}

/// Sets `FD_CLOEXEC` on every descriptor above 0, 1 and 2; returns how many it changed. Called
/// once at start, before the runtime opens descriptors of its own (which are close-on-exec
/// anyway).
pub fn close_inherited_on_exec() -> std::io::Result<usize> {
    let mut changed = 0;
    for fd in open_above_stderr()? {
        match is_close_on_exec(fd) {
            Ok(false) => {
                set_close_on_exec(fd).map_err(std::io::Error::from)?;
                changed += 1;
            }
            // Closed since the listing (the listing's own descriptor): nothing to do.
            Ok(true) | Err(nix::Error::EBADF) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(changed)
}

/// Whether `fd` has `FD_CLOEXEC`.
pub fn is_close_on_exec(fd: RawFd) -> nix::Result<bool> {
    if fd < 0 {
        return Err(nix::Error::EBADF);
    }
    // SAFETY: as in `set_close_on_exec`.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let flags = FdFlag::from_bits_truncate(fcntl(borrowed, FcntlArg::F_GETFD)?);
    Ok(flags.contains(FdFlag::FD_CLOEXEC))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn an_inherited_descriptor_becomes_close_on_exec() {
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("pair");
        // As the supervisor leaves fd 3: inheritable.
        // SAFETY: `a` is open and ours for the whole test.
        let fd = unsafe { BorrowedFd::borrow_raw(a.as_raw_fd()) };
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty())).expect("clear");
        assert_eq!(is_close_on_exec(a.as_raw_fd()), Ok(false));
        let changed = close_inherited_on_exec().expect("walk");
        assert!(changed >= 1);
        assert_eq!(is_close_on_exec(a.as_raw_fd()), Ok(true));
        assert_eq!(is_close_on_exec(b.as_raw_fd()), Ok(true));
        assert_eq!(set_close_on_exec(-1), Err(nix::Error::EBADF));
    }

    #[test]
    fn a_child_sees_none_of_them() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
        // SAFETY: `a` is open and ours for the whole test.
        let fd = unsafe { BorrowedFd::borrow_raw(a.as_raw_fd()) };
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty())).expect("clear");
        close_inherited_on_exec().expect("walk");
        let listing = std::process::Command::new("/bin/sh")
            .args(["-c", "ls /proc/$$/fd"])
            .output()
            .expect("sh");
        let fds: Vec<String> = String::from_utf8_lossy(&listing.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        assert!(!fds.contains(&a.as_raw_fd().to_string()), "{fds:?}");
    }
}
