//! The state dir: where the store, the job sockets and the conductors' logs live.
//!
//! ```text
//! STATE_DIR/            0700
//!   state.db            the store (SQLite, WAL: also state.db-wal, state.db-shm)
//!   sock/JOB            each live conductor's listening socket, 0600
//!   logs/JOB.log        each conductor's own log (JSON lines)
//! ```

use anyhow::{Context, bail};
use shared::ids::JobId;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Longest Unix socket path (`sun_path` is 108 bytes, with its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// `--state-dir`, else `$SUPERVISOR_STATE_DIR` (both given as `explicit` by clap), else
    /// `$XDG_STATE_HOME/supervisor`, else `~/.local/state/supervisor`.
    pub fn resolve(explicit: Option<PathBuf>) -> anyhow::Result<Self> {
        let root = match explicit {
            Some(dir) => dir,
            None => match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
                Some(xdg) => PathBuf::from(xdg).join("supervisor"),
                None => {
                    let home = std::env::var_os("HOME")
                        .filter(|v| !v.is_empty())
                        .context("no state dir: set --state-dir, $SUPERVISOR_STATE_DIR or $HOME")?;
                    PathBuf::from(home).join(".local/state/supervisor")
                }
            },
        };
        Ok(Self { root })
    }

    /// Creates the dir and its subdirs `0700` (and tightens an existing one).
    pub fn create(&self) -> anyhow::Result<()> {
        for dir in [
            self.root.clone(),
            self.root.join("sock"),
            self.root.join("logs"),
        ] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .with_context(|| format!("cannot create the state dir {}", dir.display()))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot set the mode of {}", dir.display()))?;
        }
        let probe = self.socket(&JobId::from_random(0));
        if probe.as_os_str().len() > MAX_SOCKET_PATH {
            bail!(
                "state dir path {} is too long for Unix sockets (at most {} bytes for sock/JOB): choose a shorter --state-dir",
                self.root.display(),
                MAX_SOCKET_PATH
            );
        }
        Ok(())
    }

    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The job's conductor socket.
    #[must_use]
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("daemon.lock")
    }

    /// The socket of a job's conductor.
    pub fn socket(&self, id: &JobId) -> PathBuf {
        self.root.join("sock").join(path_component(id))
    }

    /// The conductor's own log.
    #[must_use]
    pub fn conductor_log(&self, id: &JobId) -> PathBuf {
        self.root
            .join("logs")
            .join(format!("{}.log", path_component(id)))
    }
}

/// A job id as a file name. Ids are 8 hex digits wherever they come from (made here, parsed
/// from the CLI, refused at deserialization otherwise), so this is a second line: an id of any
/// other form is a bug, logged at ERROR, and every character outside `[0-9a-f]` becomes `_`, so
/// that it can never name a path outside its directory (`..`, `/`, NUL).
#[must_use]
pub fn path_component(id: &JobId) -> String {
    let text = id.as_str();
    if JobId::parse(text).is_some_and(|parsed| parsed.as_str() == text) {
        return text.to_owned();
    }
    tracing::error!(job_id = ?text, "INVARIANT: a job id that is not 8 hex digits builds a path");
    text.chars()
        .take(shared::ids::JOB_ID_LEN * 4)
        .map(|c| {
            if c.is_ascii_digit() || ('a'..='f').contains(&c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A non-blocking `flock`; true when taken.
#[must_use]
pub fn try_flock(file: &std::fs::File, mode: libc::c_int) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own; no memory is passed.
    unsafe { libc::flock(file.as_raw_fd(), mode | libc::LOCK_NB) == 0 }
}

#[cfg(test)]
mod id_tests {
    use super::*;

    #[test]
    fn a_malformed_job_id_cannot_leave_its_directory() {
        let dir = StateDir {
            root: PathBuf::from("/s"),
        };
        let good = JobId::from_random(0xab);
        assert_eq!(dir.socket(&good), PathBuf::from("/s/sock/000000ab"));
        // A malformed id cannot even be decoded (from a client or the store), so it never
        // reaches a path; `path_component` is the second line of defence.
        assert!(serde_json::from_str::<JobId>("\"../../etc/x\"").is_err());
    }
}
