//! Operators' orders on the control socket, and who gave them.
//!
//! An order (cancel, kill, revert, resume, pause, continue) carries the operator's free-text
//! reason; the daemon adds who asked from the kernel's word (the peer's uid and pid from
//! `SO_PEERCRED` on the accepted connection, the command line read from `/proc` at once) and
//! when. The result, a [`Requester`], is stored with the transition the order caused and shown
//! by `status` and `events`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What an operator asks of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Cancel,
    Kill,
    Revert,
    Resume,
    Pause,
    Continue,
}

impl Action {
    /// The command's name (`cancel`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Cancel => "cancel",
            Self::Kill => "kill",
            Self::Revert => "revert",
            Self::Resume => "resume",
            Self::Pause => "pause",
            Self::Continue => "continue",
        }
    }

    /// What the order did, as `status` says it (`cancelled by ...`).
    #[must_use]
    pub const fn done(self) -> &'static str {
        match self {
            Self::Cancel => "cancelled",
            Self::Kill => "killed",
            Self::Revert => "revert started",
            Self::Resume => "resumed",
            Self::Pause => "paused",
            Self::Continue => "continued",
        }
    }
}

/// The longest command line kept for a requester; the rest is cut (a command line is the
/// caller's to choose, and it lands in the store and in every `status`).
pub const MAX_COMMAND_LEN: usize = 512;
/// The longest reason kept.
pub const MAX_REASON_LEN: usize = 1024;

/// Who ordered what, when and why: the peer's identity as the kernel gave it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requester {
    pub action: Action,
    pub uid: u32,
    pub pid: i32,
    /// The requesting process's command line (`/proc/PID/cmdline`, arguments joined by
    /// spaces); empty if it could not be read (the process was gone).
    pub command: String,
    pub at_ms: i64,
    /// The operator's `--reason`.
    pub reason: Option<String>,
}

impl Requester {
    /// Bounds what the caller controls: the command line and the reason.
    #[must_use]
    pub fn bounded(mut self) -> Self {
        truncate(&mut self.command, MAX_COMMAND_LEN);
        if let Some(reason) = &mut self.reason {
            truncate(reason, MAX_REASON_LEN);
        }
        self
    }

    /// `uid 0 (pid 4242: supervisor cancel 0a1b2c3d)`, without the action, time or reason.
    #[must_use]
    pub fn who(&self) -> String {
        if self.command.is_empty() {
            format!("uid {} (pid {})", self.uid, self.pid)
        } else {
            format!("uid {} (pid {}: {})", self.uid, self.pid, self.command)
        }
    }
}

impl fmt::Display for Requester {
    /// `cancelled by uid 0 (pid 4242: supervisor cancel 0a1b2c3d) at 2026-01-02T03:04:05Z:
    /// "rollout aborted"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} by {} at {}",
            self.action.done(),
            self.who(),
            format_utc(self.at_ms)
        )?;
        if let Some(reason) = &self.reason {
            write!(f, ": {reason:?}")?;
        }
        Ok(())
    }
}

fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
}

/// Milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (UTC), for people.
#[must_use]
pub fn format_utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
const fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_are_civil() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(
            format_utc(1_767_225_600_000 + 3_723_000),
            "2026-01-01T01:02:03Z"
        );
    }

    #[test]
    fn a_requester_reads_as_status_shows_it() {
        let who = Requester {
            action: Action::Cancel,
            uid: 0,
            pid: 4242,
            command: "supervisor cancel 0a1b2c3d".into(),
            at_ms: 0,
            reason: Some("rollout aborted".into()),
        };
        assert_eq!(
            who.to_string(),
            "cancelled by uid 0 (pid 4242: supervisor cancel 0a1b2c3d) at 1970-01-01T00:00:00Z: \"rollout aborted\""
        );
    }

    #[test]
    fn what_the_caller_controls_is_bounded() {
        let who = Requester {
            action: Action::Kill,
            uid: 1,
            pid: 2,
            command: "é".repeat(MAX_COMMAND_LEN),
            at_ms: 0,
            reason: Some("x".repeat(MAX_REASON_LEN * 2)),
        }
        .bounded();
        assert!(who.command.len() <= MAX_COMMAND_LEN + '…'.len_utf8());
        assert!(who.reason.expect("reason").len() <= MAX_REASON_LEN + '…'.len_utf8());
    }
}
