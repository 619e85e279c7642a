//! Self-fencing of a daemon on a job board (issue 11, rule 2: no two hosts ever run steps of
//! one job at once): when its lease is not renewed, the daemon stops its own jobs before
//! another host could judge the lease expired and take them over.
//!
//! Everything counts on the monotonic clock from the send time `t_r` of the last successful
//! renewal (`Board::lease_clock`, `board/lease.rs`):
//! - at `t_r + lease/2` without a newer renewal (**soft**): every job holding a conductor is
//!   soft-cancelled through its actor, exactly as a local `cancel` (reason `fenced: board
//!   lease not renewed for Nms`), so its reverts run here while time allows; and until a
//!   renewal succeeds no job starts or is claimed (the scheduler, the claims, and `submit`
//!   of a job held here, `revert`, `resume` and `continue`, ask `Board::is_lease_current`;
//!   a plain `submit` is written unclaimed for another host);
//! - at `t_r + lease*7/10` (**hard**): the jobs still live are killed (the kill path: `killed`,
//!   the reverts that did not run recorded as skipped, `revert skipped` at WARN, for `revert
//!   JOB` later).
//!
//! Each phase logs `board fencing` at WARN. A renewal that succeeds again lifts the fence: the
//! scheduler is woken; the jobs already fenced stay ended. The conductors hold a deadline of
//! their own at the hard fence (`ToConductor::Fence`, sent by each job's actor), for a daemon
//! too frozen to get here.

use crate::board::Board;
use crate::board::lease::LeaseClock;
use crate::job::{Jobs, Order};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// How far the daemon has fenced itself since its last successful renewal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// The lease is current: nothing done.
    Held,
    /// Jobs soft-cancelled, none started.
    Soft,
    /// Jobs killed.
    Hard,
}

impl Phase {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Soft => "soft",
            Self::Hard => "hard",
        }
    }
}

/// What to do next, decided from the phase reached, the lease and the time (pure).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Enter this phase now.
    Fence(Phase),
    /// A renewal made the lease current again: jobs may start.
    Lift,
    /// Nothing until this instant (or a renewal); `None`: until a renewal.
    Wait(Option<Instant>),
}

fn next_step(phase: Phase, clock: &LeaseClock, now: Instant) -> Step {
    if phase != Phase::Held && clock.is_current(now) {
        return Step::Lift;
    }
    let (next, at) = match phase {
        Phase::Held => (Phase::Soft, clock.soft_fence_at()),
        Phase::Soft => (Phase::Hard, clock.hard_fence_at()),
        Phase::Hard => return Step::Wait(None),
    };
    if now >= at {
        Step::Fence(next)
    } else {
        Step::Wait(Some(at))
    }
}

/// Fences this daemon whenever its lease is not renewed in time, for the daemon's life.
pub async fn run(jobs: Jobs, board: Board) {
    let mut lease = board.lease_watch();
    let mut phase = Phase::Held;
    loop {
        let clock = *lease.borrow_and_update();
        let now = Instant::now();
        match next_step(phase, &clock, now) {
            Step::Fence(next) => {
                phase = next;
                fence(&jobs, &board, phase, now.duration_since(clock.last_sent())).await;
            }
            Step::Lift => {
                phase = Phase::Held;
                tracing::info!(host = %board.config().host, "board fencing lifted; starting jobs again");
                jobs.wake();
            }
            Step::Wait(until) => {
                let sleep = async {
                    match until {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = sleep => {}
                    changed = lease.changed() => if changed.is_err() {
                        return;
                    },
                }
            }
        }
    }
}

/// Soft-cancels (or kills, `Phase::Hard`) every job holding a conductor, all at once, each
/// through its actor.
async fn fence(jobs: &Jobs, board: &Board, phase: Phase, elapsed: Duration) {
    let ids = jobs.supervised_jobs();
    let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    tracing::warn!(
        host = %board.config().host,
        phase = phase.as_str(),
        count = ids.len(),
        elapsed_ms,
        "board fencing"
    );
    let reason = format!("fenced: board lease not renewed for {elapsed_ms}ms");
    let mut asks = JoinSet::new();
    for id in ids {
        let order = match phase {
            Phase::Soft => Order::Cancel {
                timeout: None,
                reason: reason.clone(),
                by: None,
            },
            Phase::Hard | Phase::Held => Order::Kill {
                reason: reason.clone(),
                by: None,
            },
        };
        let jobs = jobs.clone();
        asks.spawn(async move {
            let answer = jobs.ask(&id, order).await;
            (id, answer)
        });
    }
    while let Some(joined) = asks.join_next().await {
        if let Ok((id, Err(err))) = joined {
            // Ended meanwhile, or already being killed: nothing left to fence.
            tracing::debug!(job_id = %id, error = %err, "not fenced");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(1);

    fn ms(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn soft_at_half_the_lease_hard_at_seven_tenths_lifted_by_a_renewal() {
        let start = Instant::now();
        let mut clock = LeaseClock::new(LEASE, start);
        assert_eq!(
            next_step(Phase::Held, &clock, ms(start, 100)),
            Step::Wait(Some(ms(start, 500)))
        );
        assert_eq!(
            next_step(Phase::Held, &clock, ms(start, 500)),
            Step::Fence(Phase::Soft)
        );
        assert_eq!(
            next_step(Phase::Soft, &clock, ms(start, 600)),
            Step::Wait(Some(ms(start, 700)))
        );
        assert_eq!(
            next_step(Phase::Soft, &clock, ms(start, 700)),
            Step::Fence(Phase::Hard)
        );
        assert_eq!(
            next_step(Phase::Hard, &clock, ms(start, 5000)),
            Step::Wait(None)
        );
        // A daemon frozen past both points goes through both, in order.
        assert_eq!(
            next_step(Phase::Held, &clock, ms(start, 9000)),
            Step::Fence(Phase::Soft)
        );
        assert_eq!(
            next_step(Phase::Soft, &clock, ms(start, 9000)),
            Step::Fence(Phase::Hard)
        );
        // A renewal sent at 5.1 s: current again, jobs start; the next soft point counts
        // from it.
        clock.renewed(ms(start, 5100));
        assert_eq!(next_step(Phase::Hard, &clock, ms(start, 5200)), Step::Lift);
        assert_eq!(next_step(Phase::Soft, &clock, ms(start, 5200)), Step::Lift);
        assert_eq!(
            next_step(Phase::Held, &clock, ms(start, 5200)),
            Step::Wait(Some(ms(start, 5600)))
        );
    }
}
