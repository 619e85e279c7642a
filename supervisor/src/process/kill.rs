//! Killing everything of a job in session mode: the conductor's session, the task process
//! groups that are provably still the job's, the orphans a dead conductor left us, and every
//! descendant of those. In cgroup mode none of this is needed: `cgroup.kill` reaches them all
//! (ARCHITECTURE.md, Containment).
//!
//! Nothing here signals a remembered number: a pid is signalled through a pidfd opened and
//! checked against the start time seen in the same scan, and a process group only while its
//! leader is still the process recorded when the conductor reported it.

use super::pidfd::Pidfd;
use super::reaper::Children;
use super::stat::{ConductorId, ProcStat, stat};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How many times [`kill_job`] scans for survivors.
const KILL_ROUNDS: usize = 50;
/// The pause between two rounds, for the kernel to deliver the signals.
const ROUND_PAUSE: Duration = Duration::from_millis(2);

/// The process groups a conductor reported for its task steps (`TaskSpawned`), each with its
/// leader's start time: a group counts as the job's only while that very leader leads it.
#[derive(Clone, Debug)]
pub struct TaskGroups {
    conductor: ConductorId,
    leaders: BTreeMap<i32, u64>,
}

impl TaskGroups {
    /// No groups yet, for the conductor `conductor`.
    #[must_use]
    pub const fn new(conductor: ConductorId) -> Self {
        Self {
            conductor,
            leaders: BTreeMap::new(),
        }
    }

    /// Records the group `pgid` if its leader is alive now, leads that group, and is in the
    /// conductor's session while the conductor lives: so a late report (leader gone, pid maybe
    /// reused) or a forged one (another session's group) records nothing. True if recorded.
    pub fn insert(&mut self, pgid: i32) -> bool {
        if pgid <= 1 || !self.conductor.is_alive() {
            return false;
        }
        match stat(pgid) {
            Some(s) if s.is_running() && s.pgrp == pgid && s.session == self.conductor.pid => {
                self.leaders.insert(pgid, s.start_time);
                true
            }
            _ => false,
        }
    }

    /// Forgets the group (its step finished: its leader is reaped and the number may be reused).
    pub fn remove(&mut self, pgid: i32) {
        self.leaders.remove(&pgid);
    }

    /// How many groups are recorded.
    #[must_use]
    pub fn len(&self) -> usize {
        self.leaders.len()
    }

    /// True when no group is recorded.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.leaders.is_empty()
    }

    /// The recorded groups whose leader is, in this scan, still the recorded process.
    pub(super) fn verified(&self, all: &BTreeMap<i32, ProcStat>) -> BTreeSet<i32> {
        self.leaders
            .iter()
            .filter(|&(pgid, start)| {
                all.get(pgid)
                    .is_some_and(|s| s.start_time == *start && s.pgrp == *pgid)
            })
            .map(|(pgid, _)| *pgid)
            .collect()
    }
}

/// SIGKILLs everything of the job until nothing is left; returns how many processes it killed.
/// Session mode only. The tree is taken before the conductor dies, so its descendants are known
/// even after they are re-parented. The `/proc` scans and the pauses between rounds run on a
/// blocking thread, never on the runtime's workers.
pub async fn kill_job(conductor: ConductorId, groups: &TaskGroups) -> usize {
    let groups = groups.clone();
    match tokio::task::spawn_blocking(move || kill_job_blocking(conductor, &groups)).await {
        Ok(count) => count,
        Err(err) => {
            tracing::error!(pid = conductor.pid, error = %err, "the job kill failed");
            0
        }
    }
}

/// [`kill_job`], on the calling thread.
fn kill_job_blocking(conductor: ConductorId, groups: &TaskGroups) -> usize {
    let mut known = BTreeMap::new();
    let mut killed = BTreeSet::new();
    for _ in 0..KILL_ROUNDS {
        let all = all_processes();
        let verified = groups.verified(&all);
        known = job_processes(conductor, &verified, &known, &all);
        if known.is_empty() {
            break;
        }
        for (&pid, &start_time) in &known {
            let id = ConductorId { pid, start_time };
            // Through a pidfd checked against the start time: never a stranger.
            if let Ok(pidfd) = Pidfd::open(id) {
                let _ = pidfd.signal(Signal::SIGKILL);
                killed.insert(id);
            }
        }
        // Also members forked since the scan; the leader was verified in it.
        for &pgid in &verified {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
        std::thread::sleep(ROUND_PAUSE);
    }
    killed.len()
}

/// Every live process on this host, with its stat.
pub(super) fn all_processes() -> BTreeMap<i32, ProcStat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return BTreeMap::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .filter(|(_, s)| s.is_running())
        .collect()
}

/// Every live process of the job in the scan `all`, with its start time: the conductor, its
/// session, the verified task groups, the orphans the supervisor adopted from a dead conductor,
/// and every descendant of those (a task that left its group or session still has a parent in
/// the job). `known` (found earlier) count as long as they live with the same start time,
/// whatever their parent is now.
pub(super) fn job_processes(
    conductor: ConductorId,
    groups: &BTreeSet<i32>,
    known: &BTreeMap<i32, u64>,
    all: &BTreeMap<i32, ProcStat>,
) -> BTreeMap<i32, u64> {
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    // Locked after the scan: a conductor seen in it was spawned before, and its spawn (which
    // holds the lock from fork to registration) has registered it by the time the lock is ours.
    let children = Children::lock();
    // A live process with the conductor's pid but another start time is a stranger that got
    // the pid after the conductor died: then neither the pid nor its session are the job's.
    let recycled = all
        .get(&conductor.pid)
        .is_some_and(|s| s.start_time != conductor.start_time);
    let is_job = |pid: i32, s: &ProcStat| {
        (!recycled && (pid == conductor.pid || s.session == conductor.pid))
            || groups.contains(&s.pgrp)
            || known.get(&pid) == Some(&s.start_time)
            || (s.ppid == me && !children.is_conductor(pid))
    };
    let mut found: BTreeMap<i32, u64> = all
        .iter()
        .filter(|&(&pid, s)| is_job(pid, s))
        .map(|(&pid, s)| (pid, s.start_time))
        .collect();
    drop(children);
    loop {
        let before = found.len();
        for (&pid, s) in all {
            if found.contains_key(&s.ppid) {
                found.insert(pid, s.start_time);
            }
        }
        if found.len() == before {
            return found;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    fn me() -> ConductorId {
        super::super::stat::own_id().expect("own stat")
    }

    #[test]
    fn a_gone_leader_is_never_recorded() {
        let mut child = std::process::Command::new("true")
            .process_group(0)
            .spawn()
            .expect("spawn");
        let pid = i32::try_from(child.id()).expect("pid");
        child.wait().expect("reap");
        // The test process as the "conductor": its child's group would count while it lives.
        let mut groups = TaskGroups::new(me());
        assert!(!groups.insert(pid), "a reaped leader must not be recorded");
        assert!(groups.is_empty());
    }

    #[test]
    fn a_group_outside_the_conductors_session_is_not_recorded() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .process_group(0)
            .spawn()
            .expect("spawn");
        let pid = i32::try_from(child.id()).expect("pid");
        let own = me();
        let mut groups = TaskGroups::new(own);
        let in_session = stat(pid).is_some_and(|s| s.session == own.pid);
        // The test process leads its session only when run that way; either answer must match.
        assert_eq!(groups.insert(pid), in_session);
        groups.remove(pid);
        assert!(groups.is_empty());
        let _ = child.kill();
        child.wait().expect("reap");
    }

    #[test]
    fn a_group_is_verified_only_with_its_recorded_leader() {
        let mut groups = TaskGroups::new(me());
        groups.leaders.insert(4242, 7);
        let mut all = BTreeMap::new();
        let leader = |start_time| ProcStat {
            state: 'S',
            ppid: 1,
            pgrp: 4242,
            session: 4242,
            start_time,
        };
        all.insert(4242, leader(7));
        assert_eq!(groups.verified(&all), BTreeSet::from([4242]));
        all.insert(4242, leader(8));
        assert!(
            groups.verified(&all).is_empty(),
            "a reused pgid is a stranger"
        );
        all.clear();
        assert!(groups.verified(&all).is_empty(), "no leader, no group");
    }

    /// Set (in a re-run of this test binary) to run [`kill_job_helper`] for real.
    const KILL_HELPER: &str = "SUPERVISOR_TEST_KILL_HELPER";
    /// How long the helper waits for anything.
    const DEADLINE: Duration = Duration::from_secs(20);

    /// Polls `probe` until it gives a value, at most [`DEADLINE`].
    fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            if let Some(value) = probe() {
                return value;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The pid the shell printed after `task ` on `log`.
    fn task_pid(log: &std::path::Path) -> Option<i32> {
        let text = std::fs::read_to_string(log).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("task ")?.trim().parse().ok())
    }

    /// A conductor (a shell in its own session) with a task in its own process group, and a
    /// stranger group outside the session: `kill_job` kills the conductor and the task, and
    /// never the stranger, even when the stranger's pgid is recorded with a wrong start time.
    /// Runs only in its own process: `kill_job` also kills children of this process that are
    /// not conductors (orphans), which other tests' children would be.
    #[tokio::test]
    async fn kill_job_helper() {
        if std::env::var_os(KILL_HELPER).is_none() {
            return;
        }
        let dir = std::env::temp_dir().join(format!("kj-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let listener =
            std::os::unix::net::UnixListener::bind(dir.join("s")).expect("bind the socket");
        let log = dir.join("log");
        // bash, not sh: its job control puts a background job in its own group without a tty.
        let script = "set -m; sleep 60 & echo task $! >&2; wait".to_owned();
        let config = crate::spawn::SpawnConfig::new(
            std::path::Path::new("/bin/bash"),
            &["-c".to_owned(), script],
            std::os::fd::AsFd::as_fd(&listener),
            &log,
            None,
        )
        .expect("config");
        let conductor = crate::spawn::spawn_conductor(&config).expect("spawn");
        let task = wait_for("the task's pid", || task_pid(&log));
        // The stranger: its own session and group, re-parented away from us.
        let out = std::process::Command::new("sh")
            .args(["-c", "setsid sleep 63 >/dev/null 2>&1 & echo $!"])
            .output()
            .expect("start the stranger");
        let stranger: i32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("pid");
        let stranger = wait_for("the stranger's own group", || {
            ConductorId::of(stranger).filter(|_| stat(stranger).is_some_and(|s| s.pgrp == stranger))
        });
        let mut groups = TaskGroups::new(conductor.id);
        assert!(
            groups.insert(task),
            "the task leads its group in the conductor's session"
        );
        assert!(
            !groups.insert(stranger.pid),
            "another session's group is refused"
        );
        groups.leaders.insert(stranger.pid, stranger.start_time + 1);
        let task_id = ConductorId::of(task).expect("task stat");
        let killed = kill_job(conductor.id, &groups).await;
        assert!(killed >= 2, "conductor and task killed: {killed}");
        tokio::time::timeout(DEADLINE, conductor.pidfd.exited())
            .await
            .expect("conductor gone");
        wait_for("the task's end", || (!task_id.is_alive()).then_some(()));
        assert!(stranger.is_alive(), "the stranger survives");
        if let Ok(pidfd) = Pidfd::open(stranger) {
            let _ = pidfd.signal(Signal::SIGKILL);
        }
        let _ = nix::sys::wait::waitpid(Pid::from_raw(conductor.id.pid), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn kill_job_kills_the_job_and_never_a_stranger() {
        crate::test_support::run_in_own_process(
            "process::kill::tests::kill_job_helper",
            true,
            KILL_HELPER,
        );
    }
}
