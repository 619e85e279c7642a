//! The job file's keys for operators (issue 13): compensation retries of a task's revert, and
//! the job's alert hooks. Parsed with the rest of the file; checked again on every received
//! spec like the rest.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The most extra attempts a revert may have.
pub const MAX_REVERT_RETRIES: u32 = 100;
/// The pause between two attempts of a revert when the file names none.
pub const DEFAULT_REVERT_RETRY_DELAY: Duration = Duration::from_secs(1);
/// The longest pause between two attempts of a revert.
pub const MAX_REVERT_RETRY_DELAY: Duration = Duration::from_secs(3600);
/// The longest hook command.
pub const MAX_HOOK_LEN: usize = 4096;

/// `[hooks]`: commands (run by `/bin/sh -c`) the daemon runs when the job ends, or when it
/// ends with reverts skipped; each gets the job's status as JSON on stdin.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hooks {
    pub on_end: Option<String>,
    pub on_revert_skipped: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHooks {
    pub on_end: Option<toml::Spanned<String>>,
    pub on_revert_skipped: Option<toml::Spanned<String>>,
}

impl Hooks {
    /// Why a hook is not acceptable, or `None`.
    #[must_use]
    pub fn problem(&self) -> Option<String> {
        [
            (&self.on_end, "on_end"),
            (&self.on_revert_skipped, "on_revert_skipped"),
        ]
        .into_iter()
        .find_map(|(hook, field)| hook_problem(hook.as_deref()?, field))
    }
}

/// Why the hook command `command` (of `[hooks] field`) is not acceptable, or `None`.
#[must_use]
pub fn hook_problem(command: &str, field: &str) -> Option<String> {
    if command.trim().is_empty() {
        Some(format!("hooks.{field} must not be empty"))
    } else if command.len() > MAX_HOOK_LEN {
        Some(format!(
            "hooks.{field} must be at most {MAX_HOOK_LEN} bytes long"
        ))
    } else if command.contains('\0') {
        Some(format!("hooks.{field} must not hold a NUL byte"))
    } else {
        None
    }
}

/// Why a task's revert retry settings are not acceptable, or `None`.
#[must_use]
pub fn revert_retry_problem(retries: u32, delay: Duration) -> Option<String> {
    if retries > MAX_REVERT_RETRIES {
        Some(format!(
            "`revert_retries` must be at most {MAX_REVERT_RETRIES}"
        ))
    } else if delay > MAX_REVERT_RETRY_DELAY {
        Some(format!(
            "`revert_retry_delay` must be at most {}",
            crate::duration::format_duration(MAX_REVERT_RETRY_DELAY)
        ))
    } else {
        None
    }
}
