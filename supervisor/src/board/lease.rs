//! Lease arithmetic, kept apart from the database and the clocks so it can be tested alone.
//!
//! Two clocks, two questions:
//! - **Has the lease expired?** Only the database's clock answers that (`now() - renewed_at <
//!   lease`, in SQL): hosts' clocks may disagree, the database's is the one every host reads.
//! - **May this daemon still count on its lease?** Its own monotonic clock answers that,
//!   conservatively: from the *send* time of its last successful renewal (the database stamped
//!   `renewed_at` after that instant, so the lease runs out after `sent + lease` by any clock
//!   that runs at the same rate) minus a [`margin`] for rate differences and for the time
//!   fencing needs. [`LeaseClock::is_lost`] turns true at `sent + lease - margin`, before the
//!   database can judge the lease expired.
//!
//! # Fencing (issue 11, rule 2)
//!
//! From the same send time `t_r`, before `lease - margin`:
//! - `t_r + lease/2` ([`soft_fence_after`], [`LeaseClock::soft_fence_at`]): the lease is no
//!   longer *current*: the daemon soft-cancels its live jobs (their reverts run while time
//!   allows) and starts no job until a renewal succeeds.
//! - `t_r + lease*7/10` ([`hard_fence_after`], [`LeaseClock::hard_fence_at`]): the daemon
//!   hard-kills the jobs still live; it is also the deadline it delegates to its conductors
//!   ([`LeaseClock::conductor_run_for`]), who kill their running steps there by themselves if
//!   the daemon falls silent.

use std::time::{Duration, Instant};

/// The shortest `--lease` accepted: renewals every lease/3 must fit a database round trip and
/// a reconnect with room to spare.
pub const MIN_LEASE: Duration = Duration::from_millis(300);

/// The longest `--lease` accepted (a host's loss goes unnoticed this long).
pub const MAX_LEASE: Duration = Duration::from_secs(3600);

/// The first pause before a reconnect; it doubles up to [`renew_interval`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// How often a lease is renewed: three tries fit in one lease.
#[must_use]
pub fn renew_interval(lease: Duration) -> Duration {
    lease / 3
}

/// How much earlier than the lease this daemon gives its lease up (on its monotonic clock): a
/// fifth of the lease.
#[must_use]
pub fn margin(lease: Duration) -> Duration {
    lease / 5
}

/// How long after the last successful renewal's send time the lease stops being current: the
/// daemon soft-cancels its jobs and starts none (half the lease).
#[must_use]
pub fn soft_fence_after(lease: Duration) -> Duration {
    lease / 2
}

/// How long after the last successful renewal's send time no step of this daemon's jobs may
/// run any more: the daemon hard-kills its jobs, and its conductors kill their steps
/// (seven tenths of the lease: before `lease - margin`).
#[must_use]
pub fn hard_fence_after(lease: Duration) -> Duration {
    lease * 7 / 10
}

/// Checks a `--lease` value.
pub fn check_lease(lease: Duration) -> Result<(), String> {
    if lease < MIN_LEASE || lease > MAX_LEASE {
        return Err(format!(
            "--lease must be between {}ms and {}s (got {}ms)",
            MIN_LEASE.as_millis(),
            MAX_LEASE.as_secs(),
            lease.as_millis()
        ));
    }
    Ok(())
}

/// The next pause before a reconnect after `previous`: doubled, at most `cap`.
#[must_use]
pub fn next_backoff(previous: Duration, cap: Duration) -> Duration {
    previous
        .saturating_mul(2)
        .min(cap)
        .max(FIRST_BACKOFF.min(cap))
}

/// This daemon's view of its own lease, on its monotonic clock.
#[derive(Clone, Copy, Debug)]
pub struct LeaseClock {
    lease: Duration,
    last_sent: Instant,
}

impl LeaseClock {
    /// A lease whose last successful renewal (or registration) was sent at `sent`.
    #[must_use]
    pub const fn new(lease: Duration, sent: Instant) -> Self {
        Self {
            lease,
            last_sent: sent,
        }
    }

    /// Records a successful renewal sent at `sent` (never moves back: replies may be late).
    pub fn renewed(&mut self, sent: Instant) {
        self.last_sent = self.last_sent.max(sent);
    }

    /// When the last successful renewal was sent.
    #[must_use]
    pub const fn last_sent(&self) -> Instant {
        self.last_sent
    }

    /// From when on this daemon must not count on its lease: `last_sent + lease - margin`.
    #[must_use]
    pub fn lost_at(&self) -> Instant {
        self.last_sent + (self.lease - margin(self.lease))
    }

    /// Whether `lease - margin` passed at `now` without a successful renewal.
    #[must_use]
    pub fn is_lost(&self, now: Instant) -> bool {
        now >= self.lost_at()
    }

    /// The lease this clock counts.
    #[must_use]
    pub const fn lease(&self) -> Duration {
        self.lease
    }

    /// `last_sent + lease/2`: from then on the lease is not current (soft fence).
    #[must_use]
    pub fn soft_fence_at(&self) -> Instant {
        self.last_sent + soft_fence_after(self.lease)
    }

    /// `last_sent + lease*7/10`: from then on no step may run (hard fence).
    #[must_use]
    pub fn hard_fence_at(&self) -> Instant {
        self.last_sent + hard_fence_after(self.lease)
    }

    /// Whether this daemon may start jobs at `now`: before the soft fence.
    #[must_use]
    pub fn is_current(&self, now: Instant) -> bool {
        now < self.soft_fence_at()
    }

    /// How long a conductor told at `now` may still run steps: until the hard fence (zero
    /// once it passed).
    #[must_use]
    pub fn conductor_run_for(&self, now: Instant) -> Duration {
        self.hard_fence_at().saturating_duration_since(now)
    }

    /// When the next renewal is due.
    #[must_use]
    pub fn next_renewal(&self) -> Instant {
        self.last_sent + renew_interval(self.lease)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(1);

    #[test]
    fn renewals_come_three_times_a_lease_and_the_margin_is_a_fifth() {
        assert_eq!(renew_interval(LEASE), Duration::from_nanos(333_333_333));
        assert_eq!(margin(LEASE), Duration::from_millis(200));
        assert_eq!(margin(Duration::from_secs(10)), Duration::from_secs(2));
        // Two missed renewals still leave the lease held; the third is too late.
        assert!(renew_interval(LEASE) * 2 < LEASE - margin(LEASE));
        assert!(renew_interval(LEASE) * 3 > LEASE - margin(LEASE));
    }

    #[test]
    fn the_lease_is_lost_at_lease_minus_margin_after_the_last_send() {
        let start = Instant::now();
        let mut clock = LeaseClock::new(LEASE, start);
        assert_eq!(clock.next_renewal(), start + renew_interval(LEASE));
        assert!(!clock.is_lost(start + Duration::from_millis(799)));
        assert!(clock.is_lost(start + Duration::from_millis(800)));
        clock.renewed(start + Duration::from_millis(500));
        assert!(!clock.is_lost(start + Duration::from_millis(1299)));
        assert!(clock.is_lost(start + Duration::from_millis(1300)));
    }

    #[test]
    fn fencing_is_soft_at_half_the_lease_and_hard_at_seven_tenths_before_it_is_lost() {
        let start = Instant::now();
        let clock = LeaseClock::new(LEASE, start);
        assert_eq!(soft_fence_after(LEASE), Duration::from_millis(500));
        assert_eq!(hard_fence_after(LEASE), Duration::from_millis(700));
        assert_eq!(
            hard_fence_after(Duration::from_secs(10)),
            Duration::from_secs(7)
        );
        assert_eq!(clock.soft_fence_at(), start + Duration::from_millis(500));
        assert_eq!(clock.hard_fence_at(), start + Duration::from_millis(700));
        // Each phase before the next, and the hard one before the daemon counts its lease
        // lost (lease - margin), itself before the database can judge it expired.
        assert!(renew_interval(LEASE) < soft_fence_after(LEASE));
        assert!(hard_fence_after(LEASE) < LEASE - margin(LEASE));
        assert!(clock.is_current(start + Duration::from_millis(499)));
        assert!(!clock.is_current(start + Duration::from_millis(500)));
        assert_eq!(
            clock.conductor_run_for(start + Duration::from_millis(200)),
            Duration::from_millis(500)
        );
        assert_eq!(
            clock.conductor_run_for(start + Duration::from_millis(900)),
            Duration::ZERO
        );
    }

    #[test]
    fn a_late_reply_never_moves_the_last_send_back() {
        let start = Instant::now();
        let mut clock = LeaseClock::new(LEASE, start + Duration::from_millis(400));
        clock.renewed(start);
        assert_eq!(clock.last_sent(), start + Duration::from_millis(400));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let cap = Duration::from_millis(333);
        assert_eq!(next_backoff(FIRST_BACKOFF, cap), Duration::from_millis(100));
        assert_eq!(next_backoff(Duration::from_millis(200), cap), cap);
        assert_eq!(next_backoff(cap, cap), cap);
        assert_eq!(next_backoff(Duration::ZERO, cap), FIRST_BACKOFF);
    }

    #[test]
    fn leases_outside_the_bounds_are_refused() {
        assert!(check_lease(Duration::from_millis(299)).is_err());
        assert!(check_lease(MIN_LEASE).is_ok());
        assert!(check_lease(Duration::from_secs(10)).is_ok());
        assert!(check_lease(MAX_LEASE + Duration::from_secs(1)).is_err());
    }
}
