//! The daemon's open files limit, and how many live jobs it allows.
//!
//! Each live job holds two descriptors in the daemon (its conductor's socket and its pidfd), so
//! a soft limit of 1024 would cap the daemon near 500 jobs. At start the daemon raises its soft
//! limit to the hard limit (conductors get the original soft limit back when they are spawned:
//! `spawn::remember_nofile_soft_limit`), computes how many live jobs that allows, says it in
//! the log, and never starts more than that at once: a job started without descriptors to spare
//! would only crash (ARCHITECTURE.md, Bounds).

/// Descriptors each live job holds in the daemon: its conductor's socket and its pidfd.
pub const PER_LIVE_JOB: u64 = 2;

/// Descriptors kept for everything else: the store (database, WAL, shared memory), the control
/// socket and its clients, the runtime's epoll and event fds, logs, hooks, the metrics server,
/// a job's inotify watch while it ends.
pub const RESERVED: u64 = 256;

/// How many live jobs a soft limit of `limit` open files allows.
pub fn live_jobs_allowed(limit: u64) -> usize {
    usize::try_from(limit.saturating_sub(RESERVED) / PER_LIVE_JOB).unwrap_or(usize::MAX)
}

/// Raises the soft limit to the hard one and returns how many live jobs the result allows.
pub fn raise() -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return usize::MAX;
    };
    let mut limit = soft;
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                crate::spawn::remember_nofile_soft_limit(soft);
                limit = hard;
            }
            Err(err) => tracing::warn!(error = %err, "cannot raise the open files limit"),
        }
    }
    let allowed = live_jobs_allowed(limit);
    tracing::info!(
        from = soft,
        to = limit,
        live_jobs_allowed = allowed,
        "open files limit set; it bounds the live jobs (raise the hard limit, e.g. systemd's LimitNOFILE=, for more)"
    );
    allowed
}

/// `--max-jobs`, capped at what the open files limit allows (with a warning when it is).
pub fn cap_max_jobs(max_jobs: usize, allowed: usize) -> usize {
    if max_jobs > allowed {
        tracing::warn!(
            max_jobs,
            live_jobs_allowed = allowed,
            "--max-jobs is more than the open files limit allows; at most live_jobs_allowed jobs run at once"
        );
        allowed.max(1)
    } else {
        max_jobs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowance_keeps_the_reserve_and_two_descriptors_a_job() {
        assert_eq!(live_jobs_allowed(20_000), (20_000 - 256) / 2);
        assert_eq!(live_jobs_allowed(1024), 384);
        assert_eq!(live_jobs_allowed(100), 0);
    }

    #[test]
    fn max_jobs_is_capped_at_the_allowance_and_never_below_one() {
        assert_eq!(cap_max_jobs(16, 9_872), 16);
        assert_eq!(cap_max_jobs(20_000, 9_872), 9_872);
        assert_eq!(cap_max_jobs(16, 0), 1);
    }
}
