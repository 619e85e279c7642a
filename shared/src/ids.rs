//! Identifier newtypes.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A job's short id: 8 lowercase hex digits, printed by `submit` and typed by operators.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(String);

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
}
