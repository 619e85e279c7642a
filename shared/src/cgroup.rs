//! Text formats of the cgroup v2 interface that both binaries read (pure parsing: the caller
//! reads the files).

/// The cgroup v2 mount point in a `/proc/self/mountinfo` text.
#[must_use]
pub fn unified_mount(mountinfo: &str) -> Option<&str> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        if after.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        before.split_whitespace().nth(4)
    })
}

/// The process's cgroup v2 path in a `/proc/PID/cgroup` text (its `0::` line).
#[must_use]
pub fn own_cgroup(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
}

/// A counter of a flat-keyed file such as `memory.events` (`oom_kill 3`) or `pids.events`.
#[must_use]
pub fn counter(events: &str, key: &str) -> u64 {
    events
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(' ')?;
            (name == key).then(|| value.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernel_formats() {
        let mountinfo = "25 1 0:23 / / rw - ext4 /dev/vda rw\n41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(unified_mount(mountinfo), Some("/sys/fs/cgroup/unified"));
        assert_eq!(unified_mount("25 1 0:23 / / rw - ext4 /dev/vda rw\n"), None);
        assert_eq!(
            own_cgroup("4:memory:/x\n0::/system.slice/sv.service\n"),
            Some("/system.slice/sv.service")
        );
        assert_eq!(
            counter("low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n", "oom_kill"),
            1
        );
        assert_eq!(counter("max 7\n", "max"), 7);
        assert_eq!(counter("", "max"), 0);
    }
}
