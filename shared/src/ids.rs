//! Identifier newtypes.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A job's short id: 8 lowercase hex digits, printed by `submit` and typed by operators.
///
/// It names paths (the job's socket, log and cgroup), so it is checked wherever it comes from:
/// a deserialized id that is not 8 hex digits is refused ([`JobId::try_from`]), and so can never
/// build a path like `../x`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

/// A text that is not a job id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad job id {0:?}: a job id is 8 hexadecimal digits")]
pub struct BadJobId(pub String);

impl TryFrom<String> for JobId {
    type Error = BadJobId;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::parse(&text).ok_or(BadJobId(text))
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> Self {
        id.0
    }
}

/// The length of a [`JobId`] in characters.
pub const JOB_ID_LEN: usize = 8;

impl JobId {
    /// Builds the id from 32 random bits.
    #[must_use]
    pub fn from_random(bits: u32) -> Self {
        Self(format!("{bits:08x}"))
    }

    /// Parses an id typed by a user; `None` unless it is exactly 8 hex digits.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        let ok = text.len() == JOB_ID_LEN && text.bytes().all(|b| b.is_ascii_hexdigit());
        ok.then(|| Self(text.to_ascii_lowercase()))
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_only_eight_hex_digits() {
        assert_eq!(
            JobId::parse("00ABcdef").map(|id| id.to_string()),
            Some("00abcdef".into())
        );
        assert!(JobId::parse("1234567").is_none());
        assert!(JobId::parse("123456789").is_none());
        assert!(JobId::parse("1234567g").is_none());
        assert_eq!(JobId::from_random(0xbeef).as_str(), "0000beef");
    }

    #[test]
    fn deserialization_refuses_anything_but_eight_hex_digits() {
        let id: JobId = serde_json::from_str("\"00abcdef\"").expect("an id");
        assert_eq!(id.as_str(), "00abcdef");
        assert_eq!(serde_json::to_string(&id).expect("json"), "\"00abcdef\"");
        for bad in [
            "\"../../x\"",
            "\"1234567\"",
            "\"abcdefg0\"",
            "\"\"",
            "\"0000/000\"",
        ] {
            let err = serde_json::from_str::<JobId>(bad).expect_err(bad);
            assert!(err.to_string().contains("bad job id"), "{bad}: {err}");
        }
        // The wire codec refuses it as well.
        let frame = postcard::to_allocvec(&"../../etc").expect("encode");
        assert!(postcard::from_bytes::<JobId>(&frame).is_err());
    }
}
