//! Reading `/proc/PID/stat`, and the identity it gives: a pid with its start time names one
//! process even after the pid is reused.

/// Fields of `/proc/PID/stat` we use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    pub start_time: u64,
}

impl ProcStat {
    /// True unless the process has exited (a zombie waiting to be reaped, or dead).
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.state != 'Z' && self.state != 'X'
    }
}

/// Parses `/proc/PID/stat` text (the command name may hold spaces and parentheses).
#[must_use]
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        session: fields.get(3)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// A process's stat, or `None` when it is gone.
#[must_use]
pub fn stat(pid: i32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// A process's start time (clock ticks since boot): with the pid, it names one process.
#[must_use]
pub fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|s| s.start_time)
}

/// True when `pid` is alive (not a zombie) and is still the process that started at `start`.
#[must_use]
pub fn is_same_process(pid: i32, start: u64) -> bool {
    stat(pid).is_some_and(|s| s.start_time == start && s.is_running())
}

/// A conductor process: its pid and its start time, which together name it even after the pid
/// is reused. This is the one type that names a conductor; the store keeps its two fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConductorId {
    pub pid: i32,
    pub start_time: u64,
}

impl ConductorId {
    /// The identity of whatever process has `pid` now, if any.
    #[must_use]
    pub fn of(pid: i32) -> Option<Self> {
        Some(Self {
            pid,
            start_time: start_time(pid)?,
        })
    }

    /// True while this very process runs (neither exited nor replaced by a reused pid).
    #[must_use]
    pub fn is_alive(&self) -> bool {
        is_same_process(self.pid, self.start_time)
    }
}

/// This process's own identity (pid and start time).
#[must_use]
pub fn own_id() -> Option<ConductorId> {
    ConductorId::of(i32::try_from(std::process::id()).ok()?)
}

/// This process's identity as a job's supervisor, as the store records it: the same pair that
/// names a conductor names the `supervisor run` or daemon that owns a job.
#[must_use]
pub fn own_supervisor_id() -> crate::store::SupervisorId {
    // Read once: it never changes, and every launch records it.
    static OWN: std::sync::OnceLock<crate::store::SupervisorId> = std::sync::OnceLock::new();
    *OWN.get_or_init(|| {
        let pid = std::process::id();
        let start_time = own_id().map_or(0, |id| id.start_time);
        crate::store::SupervisorId { pid, start_time }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parses_names_with_spaces_and_parens() {
        let text = "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 98765 0 0";
        let s = parse_stat(text).expect("parse");
        assert_eq!(
            (s.state, s.ppid, s.pgrp, s.session, s.start_time),
            ('S', 1, 1234, 1234, 98765)
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn our_own_process_is_recognised() {
        let me = own_id().expect("own stat");
        assert!(me.is_alive());
        assert!(!is_same_process(me.pid, me.start_time + 1));
    }
}
