//! Human durations as written in job files and on the command line: `250ms`, `5s`, `2m`, `1h`,
//! or several joined (`1m30s`).

use std::time::Duration;

/// Parses a human duration. The error says what is wrong, for a message that also names the place.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration (write e.g. \"250ms\", \"5s\", \"2m\", \"1h\")".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "bad duration {text:?}: expected a number at {rest:?}"
            ));
        }
        let (number, after) = rest.split_at(digits);
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at(unit_len);
        let value: u64 = number
            .parse()
            .map_err(|_| format!("bad duration {text:?}: number too large"))?;
        let part = match unit {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" => Duration::from_secs(value.saturating_mul(60)),
            "h" => Duration::from_secs(value.saturating_mul(3600)),
            "" => {
                return Err(format!(
                    "bad duration {text:?}: missing unit (ms, s, m or h)"
                ));
            }
            other => {
                return Err(format!(
                    "bad duration {text:?}: unknown unit {other:?} (ms, s, m or h)"
                ));
            }
        };
        total = total.saturating_add(part);
        rest = after;
    }
    Ok(total)
}

/// Formats a duration the way [`parse_duration`] reads it (whole milliseconds).
#[must_use]
pub fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms % 3_600_000 == 0 && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit_and_compounds() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration(" 0s "), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "5",
            "s",
            "5x",
            "-5s",
            "5 s",
            "1.5s",
            "99999999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn format_round_trips() {
        for ms in [0, 1, 250, 1000, 90_000, 120_000, 3_600_000] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }
}
