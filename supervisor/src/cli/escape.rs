//! Text from tasks (output, names, reasons) reaches the operator's terminal: control characters
//! are shown escaped, so that a task printing `\e]0;...` cannot retitle the terminal, move the
//! cursor or hide lines. `--json` output is escaped by the JSON encoder instead.

use std::borrow::Cow;
use std::fmt::Write;

/// `text` with every control character but the tab shown as `\xNN` (or `\u{N}`).
#[must_use]
pub fn shown(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_hostile) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_hostile(c) {
            let code = u32::from(c);
            if code < 0x100 {
                let _ = write!(out, "\\x{code:02x}");
            } else {
                let _ = write!(out, "\\u{{{code:x}}}");
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn is_hostile(c: char) -> bool {
    (c.is_control() && c != '\t') || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn plain_text_is_untouched() {
        assert!(matches!(
            shown("deploy: ok\t42"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn escape_sequences_and_bidi_overrides_are_shown_escaped() {
        assert_eq!(shown("\u{1b}]0;owned\u{7}x"), "\\x1b]0;owned\\x07x");
        assert_eq!(shown("a\rb\nc"), "a\\x0db\\x0ac");
        assert_eq!(shown("\u{9b}2J"), "\\x9b2J");
        assert_eq!(shown("x\u{202e}y"), "x\\u{202e}y");
    }
}
