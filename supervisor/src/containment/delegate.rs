//! Where job cgroups go when no `--cgroup-root` is given (ARCHITECTURE.md, Containment).
//!
//! Under systemd with `Delegate=yes` the daemon starts in its own delegated cgroup
//! (`.../supervisor.service`), alone. The no-internal-process rule forbids enabling controllers
//! for children of a cgroup that holds processes, so job cgroups created beneath the daemon's
//! own could never get `memory`, `pids` or `cpu`. So a daemon that is alone in its cgroup moves
//! itself into a leaf, `daemon`, enables the controllers it needs on its cgroup's
//! `cgroup.subtree_control`, and puts the job cgroups beside that leaf:
//!
//! ```text
//! supervisor.service/          <- base: subtree_control "+memory +pids +cpu"
//!   daemon/                    <- the daemon
//!   job-3f9a12c4/              <- one job
//! ```
//!
//! A daemon that shares its cgroup with other processes (started from a shell, or the root
//! cgroup) must not move them or itself: it keeps the `supervisor` child of its cgroup, with
//! whatever controllers that allows.

use std::path::{Path, PathBuf};

/// The leaf the daemon moves into.
pub const DAEMON_LEAF: &str = "daemon";

/// Where this daemon's job cgroups go, and whether it moves first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Alone in a delegated cgroup: move into `base/daemon`, jobs in `base`.
    Beside { base: PathBuf },
    /// Already in `base/daemon` (moved earlier): jobs in `base`, nothing to move.
    InLeaf { base: PathBuf },
    /// Sharing its cgroup (or at the root): jobs in `own/supervisor`.
    Child { base: PathBuf },
}

impl Placement {
    /// Decides from the cgroup tree: `own` is the daemon's cgroup (absolute path under the
    /// mount), `at_root` whether that is the hierarchy's root, `pid` the daemon's pid.
    #[must_use]
    pub fn decide(own: &Path, at_root: bool, pid: u32) -> Self {
        let child = Self::Child {
            base: own.join("supervisor"),
        };
        if at_root {
            return child;
        }
        if own.file_name().is_some_and(|name| name == DAEMON_LEAF) {
            if let Some(parent) = own.parent() {
                if procs(parent).is_some_and(|p| p.is_empty()) {
                    return Self::InLeaf {
                        base: parent.to_path_buf(),
                    };
                }
            }
        }
        match procs(own) {
            Some(procs) if procs == [pid] => Self::Beside {
                base: own.to_path_buf(),
            },
            _ => child,
        }
    }

    /// The base under which job cgroups go.
    #[must_use]
    pub fn base(&self) -> &Path {
        match self {
            Self::Beside { base } | Self::InLeaf { base } | Self::Child { base } => base,
        }
    }

    /// Carries out a [`Placement::Beside`]: creates the leaf, moves this process (all its
    /// threads) into it, and enables on the base the controllers among `wanted` that its
    /// `cgroup.controllers` offers. Returns the controllers enabled; an error leaves the
    /// daemon where it was.
    pub fn settle(&self, pid: u32, wanted: &[&str]) -> std::io::Result<Vec<String>> {
        let Self::Beside { base } = self else {
            return Ok(Vec::new());
        };
        let leaf = base.join(DAEMON_LEAF);
        match std::fs::create_dir(&leaf) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(err),
        }
        std::fs::write(leaf.join("cgroup.procs"), pid.to_string())?;
        Ok(enable_controllers(base, wanted))
    }
}

/// Enables each of `wanted` that `base/cgroup.controllers` offers in `base`'s
/// `cgroup.subtree_control`; returns those the kernel accepted.
pub fn enable_controllers(base: &Path, wanted: &[&str]) -> Vec<String> {
    let available = std::fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
    let mut enabled = Vec::new();
    for controller in wanted {
        if available.split_whitespace().any(|c| c == *controller)
            && std::fs::write(
                base.join("cgroup.subtree_control"),
                format!("+{controller}"),
            )
            .is_ok()
        {
            enabled.push((*controller).to_owned());
        }
    }
    enabled
}

/// The pids in `cgroup`'s `cgroup.procs`; `None` if it cannot be read.
fn procs(cgroup: &Path) -> Option<Vec<u32>> {
    let text = std::fs::read_to_string(cgroup.join("cgroup.procs")).ok()?;
    Some(
        text.split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake cgroup tree in a temp dir: directories with `cgroup.procs` files.
    struct Tree(PathBuf);

    impl Tree {
        fn new(name: &str) -> Self {
            let root = std::env::temp_dir().join(format!("cg-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root).expect("temp dir");
            Self(root)
        }

        fn cgroup(&self, rel: &str, procs: &[u32]) -> PathBuf {
            let path = self.0.join(rel);
            std::fs::create_dir_all(&path).expect("mkdir");
            let text: String = procs.iter().map(|p| format!("{p}\n")).collect();
            std::fs::write(path.join("cgroup.procs"), text).expect("procs");
            path
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn alone_in_a_delegated_cgroup_moves_into_a_leaf_and_jobs_go_beside_it() {
        let tree = Tree::new("alone");
        let own = tree.cgroup("system.slice/supervisor.service", &[42]);
        assert_eq!(
            Placement::decide(&own, false, 42),
            Placement::Beside { base: own.clone() }
        );
    }

    #[test]
    fn sharing_the_cgroup_or_at_the_root_keeps_a_supervisor_child() {
        let tree = Tree::new("shared");
        let own = tree.cgroup("user.slice/session-1.scope", &[7, 42]);
        assert_eq!(
            Placement::decide(&own, false, 42),
            Placement::Child {
                base: own.join("supervisor")
            }
        );
        let root = tree.cgroup("", &[42]);
        assert_eq!(
            Placement::decide(&root, true, 42),
            Placement::Child {
                base: root.join("supervisor")
            }
        );
        // Unreadable: no move.
        let gone = tree.0.join("nowhere");
        assert!(matches!(
            Placement::decide(&gone, false, 42),
            Placement::Child { .. }
        ));
    }

    #[test]
    fn already_in_the_leaf_of_an_empty_parent_keeps_jobs_beside_it() {
        let tree = Tree::new("leaf");
        let base = tree.cgroup("supervisor.service", &[]);
        let leaf = tree.cgroup("supervisor.service/daemon", &[42]);
        assert_eq!(
            Placement::decide(&leaf, false, 42),
            Placement::InLeaf { base: base.clone() }
        );
        // A `daemon` cgroup whose parent holds processes is just a cgroup named so: the
        // general rule applies to it.
        tree.cgroup("supervisor.service", &[9]);
        assert_eq!(
            Placement::decide(&leaf, false, 42),
            Placement::Beside { base: leaf.clone() }
        );
    }

    #[test]
    fn settle_moves_the_pid_into_the_leaf_and_enables_what_is_offered() {
        let tree = Tree::new("settle");
        let base = tree.cgroup("svc", &[42]);
        std::fs::write(base.join("cgroup.controllers"), "cpu pids io\n").expect("controllers");
        std::fs::write(base.join("cgroup.subtree_control"), "").expect("subtree");
        let placement = Placement::decide(&base, false, 42);
        let enabled = placement
            .settle(42, &["memory", "pids", "cpu"])
            .expect("settle");
        assert_eq!(enabled, ["pids", "cpu"]);
        let moved = std::fs::read_to_string(base.join("daemon/cgroup.procs")).expect("leaf");
        assert_eq!(moved.trim(), "42");
    }
}
