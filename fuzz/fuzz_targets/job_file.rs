//! Arbitrary text through `JobSpec::parse`. Must never panic; an error must be placed inside the
//! input (line from 1 to the line count + 1, column from 1 to that line's length + 1), carry a
//! message, and show as `origin:line:column: message`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::spec::JobSpec;

const ORIGIN: &str = "fuzz.toml";

fuzz_target!(|input: &[u8]| {
    let source = String::from_utf8_lossy(input);
    let Err(err) = JobSpec::parse(&source, ORIGIN, "fuzz") else {
        return;
    };
    let line_count = source.lines().count();
    assert!(err.line >= 1, "{err:?}");
    assert!(err.column >= 1, "{err:?}");
    assert!(err.line <= line_count + 1, "{line_count} lines: {err:?}");
    let line_chars = source
        .split('\n')
        .nth(err.line - 1)
        .map_or(0, |line| line.chars().count());
    assert!(err.column <= line_chars + 1, "{line_chars} chars: {err:?}");
    assert!(!err.message.trim().is_empty(), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("{ORIGIN}:{}:{}: {}", err.line, err.column, err.message)
    );
});
