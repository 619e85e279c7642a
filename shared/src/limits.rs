//! A job's `[limits]`: cgroup limits for the whole job (memory, pids, cpu) and rlimits for each
//! task process (nofile, core, cpu_time), and the identity its tasks run as (user, group).

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Validated limits; every field optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// cgroup `memory.max`, bytes, for the whole job.
    pub memory: Option<u64>,
    /// cgroup `pids.max` for the whole job.
    pub pids: Option<u64>,
    /// cgroup `cpu.max`, in thousandths of a CPU (500 = half of one CPU), for the whole job.
    pub cpu_millis: Option<u32>,
    /// `RLIMIT_NOFILE` of each task process.
    pub nofile: Option<u64>,
    /// `RLIMIT_CORE` of each task process, bytes.
    pub core: Option<u64>,
    /// `RLIMIT_CPU` of each task process.
    pub cpu_time: Option<Duration>,
    /// The user the tasks run as (the daemon must be root).
    pub user: Option<String>,
    /// The group the tasks run as (the daemon must be root).
    pub group: Option<String>,
}

impl Limits {
    /// The cgroup limits that are set, by controller name.
    #[must_use]
    pub fn cgroup_controllers(&self) -> Vec<&'static str> {
        let mut needed = Vec::new();
        if self.memory.is_some() {
            needed.push("memory");
        }
        if self.pids.is_some() {
            needed.push("pids");
        }
        if self.cpu_millis.is_some() {
            needed.push("cpu");
        }
        needed
    }

    /// Whether the tasks run under another identity.
    #[must_use]
    pub const fn changes_identity(&self) -> bool {
        self.user.is_some() || self.group.is_some()
    }
}

/// Parses a size: bytes, or with a `K`, `M`, `G` or `T` suffix (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!(
            "bad size {text:?} (write e.g. 512M, 2G or a number of bytes)"
        ));
    }
    let number: u64 = text[..digits]
        .parse()
        .map_err(|_| format!("size {text:?} is too large"))?;
    let shift = match text[digits..].trim() {
        "" | "B" => 0,
        "K" | "k" | "KiB" => 10,
        "M" | "m" | "MiB" => 20,
        "G" | "g" | "GiB" => 30,
        "T" | "t" | "TiB" => 40,
        other => {
            return Err(format!(
                "bad size unit {other:?} in {text:?} (K, M, G or T)"
            ));
        }
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// Parses a CPU share, `"50%"` or a number of CPUs (`"1.5"`), into thousandths of a CPU.
pub fn parse_cpu(text: &str) -> Result<u32, String> {
    let text = text.trim();
    let value = match text.strip_suffix('%') {
        Some(percent) => percent.trim().parse::<f64>().map(|p| p / 100.0),
        None => text.parse::<f64>(),
    }
    .map_err(|_| format!("bad cpu {text:?} (write e.g. \"50%\" or \"1.5\" CPUs)"))?;
    let millis = (value * 1000.0).round();
    if value.is_finite() && (1.0..=4_096_000.0).contains(&millis) {
        // INVARIANT: checked to be within 1..=4_096_000 just above.
        Ok(millis as u32)
    } else {
        Err(format!("cpu {text:?} must be above zero"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_cpus() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        for bad in [
            "",
            "M",
            "12X",
            "1.5G",
            "99999999999999999999",
            "18446744073709551615T",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_cpu("50%"), Ok(500));
        assert_eq!(parse_cpu("1.5"), Ok(1500));
        for bad in ["0", "-1", "abc", "0%", "NaN"] {
            assert!(parse_cpu(bad).is_err(), "{bad:?}");
        }
    }
}
