//! The deadlines of one supervision, as pure decisions (tested with paused time): the kill
//! timer of the cancellation ladder, the bound on reverting, the job's own timeout, and the
//! backoff between reconnection attempts (ARCHITECTURE.md, The cancellation ladder).

use crate::process::{ConductorId, TaskGroups};
use shared::protocol::client::Requester;
use shared::spec::JobSpec;
use shared::state::JobState;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// The first pause before reconnecting to a conductor; doubled after each failure.
pub const RECONNECT_FIRST: Duration = Duration::from_millis(100);
/// The longest pause between two reconnection attempts. Attempts never stop while the
/// conductor lives.
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// Added to the sum of the reverts' own bounds, for the conductor's reports to arrive.
const REVERT_SLACK: Duration = Duration::from_secs(1);

/// Exponential backoff for reconnection attempts, capped at [`RECONNECT_MAX`].
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: RECONNECT_FIRST,
        }
    }
}

impl Backoff {
    /// The pause before the next attempt; the one after it is twice as long (capped).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(RECONNECT_MAX);
        delay
    }

    /// After a successful connection.
    pub fn reset(&mut self) {
        self.next = RECONNECT_FIRST;
    }
}

/// Where the job stands on its ladder.
#[derive(Debug)]
pub struct Ladder {
    /// When the whole job is SIGKILLed if its conductor has not ended (a cancel, or reverting),
    /// and why.
    pub kill_deadline: Option<(Instant, &'static str)>,
    /// Why we hard-killed the job, once we did: it ends `killed`.
    pub killed: Option<String>,
    /// Who or what caused the hard kill or the cancel before it: `operator`, `kill timer`,
    /// `job timeout`, `kill_unresponsive`, `signal`, `shutdown`; logged with `revert skipped`.
    pub cause: &'static str,
    /// The operator whose order (a kill, or the cancel whose timer ran out) ended the job.
    pub by: Option<Requester>,
    /// Why the supervision could not go on (a plan that cannot be sent, a store that refuses the
    /// conductor): we killed the job and it ends `crashed`.
    pub crashed: Option<String>,
    /// The end the conductor reported.
    pub finished: Option<JobState>,
    /// The process groups of the steps running now (session mode), with their leaders'
    /// identities; each is forgotten when its step ends, so a recycled group id is never
    /// signalled.
    pub groups: TaskGroups,
    /// Which group each running step leads, by task index.
    pub steps: BTreeMap<u32, i32>,
}

impl Ladder {
    #[must_use]
    pub const fn new(conductor: ConductorId) -> Self {
        Self {
            kill_deadline: None,
            killed: None,
            cause: "conductor died",
            by: None,
            crashed: None,
            finished: None,
            groups: TaskGroups::new(conductor),
            steps: BTreeMap::new(),
        }
    }

    /// A step's process group, as the conductor reported it (refused when its leader is not a
    /// process of this job's session).
    pub fn step_spawned(&mut self, task: u32, pgid: i32) -> bool {
        let taken = self.groups.insert(pgid);
        if taken {
            self.steps.insert(task, pgid);
        }
        taken
    }

    /// A step ended: its group is forgotten.
    pub fn step_finished(&mut self, task: u32) {
        if let Some(pgid) = self.steps.remove(&task) {
            self.groups.remove(pgid);
        }
    }

    /// Arms the kill timer at `deadline`, or keeps an earlier one.
    pub fn arm(&mut self, deadline: Instant, why: &'static str) {
        match self.kill_deadline {
            Some((earlier, _)) if earlier <= deadline => {}
            _ => self.kill_deadline = Some((deadline, why)),
        }
    }

    /// Disarms the kill timer if a revert armed it ([`REVERT_TIMEOUT`]): a resume plan
    /// executes again after its reverts ended, and the execute is bounded by the job's timeout,
    /// not by its reverts'. Any other deadline stays.
    pub fn disarm_revert(&mut self) {
        if matches!(self.kill_deadline, Some((_, why)) if why == REVERT_TIMEOUT) {
            self.kill_deadline = None;
        }
    }

    /// True once the job was hard-killed (or given up on): no further deadline applies.
    #[must_use]
    pub const fn is_over(&self) -> bool {
        self.killed.is_some() || self.crashed.is_some()
    }

    /// How the job ends when its conductor is gone without reporting an end.
    #[must_use]
    pub fn hard_end(&self) -> (JobState, String) {
        match (&self.crashed, &self.killed) {
            (Some(reason), _) => (JobState::Crashed, reason.clone()),
            (None, Some(reason)) => (JobState::Killed, reason.clone()),
            (None, None) => (JobState::Crashed, "the conductor died".to_owned()),
        }
    }
}

/// Why the kill timer armed while reverting passed.
pub const REVERT_TIMEOUT: &str = "revert timeout expired";

/// The kill deadline once a job enters `reverting` (whatever the reason): every attempt of every
/// revert may take its own `revert_timeout` plus the term grace in which the conductor stops it,
/// and each retry waits its `revert_retry_delay` first; past their sum, the conductor itself is
/// stuck and the whole job is killed.
#[must_use]
pub fn revert_deadline(spec: &JobSpec, now: Instant) -> Instant {
    let per_task: Duration = spec
        .tasks
        .iter()
        .map(|task| {
            let attempts = task.revert_retries.saturating_add(1);
            (spec.revert_timeout(task) + spec.term_grace).saturating_mul(attempts)
                + task.revert_retry_delay.saturating_mul(task.revert_retries)
        })
        .sum();
    now + per_task + REVERT_SLACK
}

/// The job's whole-run deadline, from when it started (`started_ago` before now).
#[must_use]
pub fn job_deadline(spec: &JobSpec, now: Instant, started_ago: Duration) -> Option<Instant> {
    spec.timeout
        .map(|timeout| now + timeout.saturating_sub(started_ago))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut backoff = Backoff::default();
        let delays: Vec<_> = (0..8).map(|_| backoff.next_delay()).collect();
        assert_eq!(delays[0], RECONNECT_FIRST);
        assert_eq!(delays[1], RECONNECT_FIRST * 2);
        assert!(delays.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*delays.last().expect("delays"), RECONNECT_MAX);
        backoff.reset();
        assert_eq!(backoff.next_delay(), RECONNECT_FIRST);
    }

    #[test]
    fn the_earliest_kill_deadline_wins() {
        let now = Instant::now();
        let mut ladder = Ladder::new(ConductorId {
            pid: 1,
            start_time: 1,
        });
        ladder.arm(now + Duration::from_secs(10), "revert");
        ladder.arm(now + Duration::from_secs(20), "cancel");
        assert_eq!(
            ladder.kill_deadline,
            Some((now + Duration::from_secs(10), "revert"))
        );
        ladder.arm(now + Duration::from_secs(5), "cancel");
        assert_eq!(
            ladder.kill_deadline,
            Some((now + Duration::from_secs(5), "cancel"))
        );
    }

    #[test]
    fn a_crash_outranks_a_kill() {
        let mut ladder = Ladder::new(ConductorId {
            pid: 1,
            start_time: 1,
        });
        assert_eq!(ladder.hard_end().0, JobState::Crashed);
        ladder.killed = Some("kill requested".into());
        assert_eq!(ladder.hard_end().0, JobState::Killed);
        ladder.crashed = Some("cannot send the plan".into());
        assert_eq!(ladder.hard_end().0, JobState::Crashed);
    }

    #[test]
    fn reverting_is_bounded_by_every_revert_and_its_grace() {
        let spec = JobSpec::parse(
            "cancel_timeout = \"10s\"\nterm_grace = \"1s\"\n[[task]]\nname = \"a\"\nrun = \"true\"\nrevert = \"true\"\n[[task]]\nname = \"b\"\nrun = \"true\"\n",
            "t.toml",
            "t",
        )
        .expect("spec");
        let now = Instant::now();
        assert_eq!(
            revert_deadline(&spec, now),
            now + Duration::from_secs(22) + REVERT_SLACK
        );
    }

    /// A resume plan's execute after its reverts drops the revert's kill timer, and only it.
    #[test]
    fn only_a_revert_deadline_is_disarmed() {
        let mut ladder = Ladder::new(ConductorId {
            pid: 1,
            start_time: 1,
        });
        let now = Instant::now();
        ladder.arm(now + Duration::from_secs(5), REVERT_TIMEOUT);
        ladder.disarm_revert();
        assert!(ladder.kill_deadline.is_none());
        ladder.arm(now + Duration::from_secs(5), "cancel timeout expired");
        ladder.disarm_revert();
        assert_eq!(
            ladder.kill_deadline.map(|(_, why)| why),
            Some("cancel timeout expired")
        );
    }

    #[test]
    fn job_deadline_counts_from_the_start() {
        let spec = JobSpec::parse(
            "timeout = \"10s\"\n[[task]]\nname = \"a\"\nrun = \"true\"\n",
            "t.toml",
            "t",
        )
        .expect("spec");
        let now = Instant::now();
        assert_eq!(
            job_deadline(&spec, now, Duration::from_secs(4)),
            Some(now + Duration::from_secs(6))
        );
        assert_eq!(job_deadline(&spec, now, Duration::from_secs(40)), Some(now));
    }
}
