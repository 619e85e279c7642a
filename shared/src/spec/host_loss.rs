//! The job file's `on_host_loss` (DESIGN.md section 11, issue 11): what the job board does with
//! a job whose host is lost (its lease expired by the database's clock).
//!
//! It travels beside the spec, not in its wire encoding: [`JobSpec`](super::JobSpec) skips it
//! in serde (its layout, which conductors and older CLIs share, stays as it is), the CLI sends
//! a job that sets it with `ClientRequest::SubmitWithHostLoss`, and the board keeps it in its
//! journal (`jobs.on_host_loss`), where a rescuer reads it.

use super::SpecError;
use serde::{Deserialize, Serialize};
use std::ops::Range;
use toml::Spanned;

/// What another host does with the job when its host is lost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnHostLoss {
    /// It stays `crashed` (reason `host lost: NAME`) with its pending reverts listed; the
    /// operator decides (`revert` or `resume`, from any host).
    #[default]
    Hold,
    /// The rescuer runs its pending reverts at once, last first.
    Revert,
    /// The rescuer reverts the task that was running when the host was lost (unless it has no
    /// revert), then runs the job again from its first unfinished task.
    Resume,
}

impl OnHostLoss {
    /// The name, as the job file and the board write it.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Hold => "hold",
            Self::Revert => "revert",
            Self::Resume => "resume",
        }
    }

    /// The policy named `name`, or `None`.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Hold, Self::Revert, Self::Resume]
            .into_iter()
            .find(|policy| policy.as_str() == name)
    }
}

pub(super) fn parse_on_host_loss(
    raw: Option<Spanned<String>>,
    at: &impl Fn(Range<usize>, String) -> SpecError,
) -> Result<OnHostLoss, SpecError> {
    let Some(value) = raw else {
        return Ok(OnHostLoss::Hold);
    };
    OnHostLoss::from_name(value.get_ref()).ok_or_else(|| {
        at(
            value.span(),
            format!(
                "`on_host_loss` must be \"hold\", \"revert\" or \"resume\", not {:?}",
                value.get_ref()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::JobSpec;

    fn parse(top: &str) -> Result<JobSpec, SpecError> {
        let src = format!("{top}\n[[task]]\nname = \"a\"\nrun = \"true\"\n");
        JobSpec::parse(&src, "h.toml", "h")
    }

    #[test]
    fn each_policy_parses_and_hold_is_the_default() {
        assert_eq!(parse("").expect("valid").on_host_loss, OnHostLoss::Hold);
        for policy in [OnHostLoss::Hold, OnHostLoss::Revert, OnHostLoss::Resume] {
            let spec = parse(&format!("on_host_loss = \"{}\"", policy.as_str())).expect("valid");
            assert_eq!(spec.on_host_loss, policy);
            assert_eq!(OnHostLoss::from_name(policy.as_str()), Some(policy));
        }
    }

    #[test]
    fn an_unknown_policy_is_refused_at_its_place() {
        let err = parse("name = \"x\"\non_host_loss = \"retry\"").expect_err("refused");
        assert_eq!((err.line, err.column), (2, 16), "{err}");
        assert!(err.message.contains("on_host_loss"), "{err}");
        assert_eq!(OnHostLoss::from_name("Hold"), None);
    }

    #[test]
    fn it_is_not_in_the_spec_s_encoding() {
        let spec = parse("on_host_loss = \"resume\"").expect("valid");
        let json = serde_json::to_string(&spec).expect("encodes");
        assert!(!json.contains("on_host_loss"), "{json}");
        let back: JobSpec = serde_json::from_str(&json).expect("decodes");
        assert_eq!(back.on_host_loss, OnHostLoss::Hold);
    }
}
