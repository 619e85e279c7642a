//! The progress line of `run`, `submit --wait` and `wait` on a terminal: one line on stderr,
//! redrawn in place (`task 2/3 fetch: execute, 4s elapsed`), cleared before any other line is
//! printed and at the end. When stderr is not a terminal there is no progress line: the plain
//! lines alone, as a log wants them.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often the line is redrawn while nothing happens (the elapsed time moves).
pub const REDRAW_EVERY: Duration = Duration::from_millis(500);

/// The line, and whether it is shown at all.
pub struct ProgressLine {
    enabled: bool,
    shown: bool,
    since: Instant,
    last_drawn: Option<Instant>,
}

impl ProgressLine {
    /// A line shown only when stderr is a terminal; the elapsed time counts from now.
    pub fn new() -> Self {
        Self::with_enabled(std::io::stderr().is_terminal())
    }

    pub fn with_enabled(enabled: bool) -> Self {
        Self {
            enabled,
            shown: false,
            since: Instant::now(),
            last_drawn: None,
        }
    }

    pub const fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Draws `task i/n NAME: WHAT, Ns elapsed` (or `WHAT` alone without a task).
    pub fn draw(&mut self, task: Option<(usize, usize, &str)>, what: &str) {
        if !self.enabled {
            return;
        }
        let elapsed = self.since.elapsed().as_secs();
        let text = match task {
            Some((i, n, name)) => format!("task {i}/{n} {name}: {what}, {elapsed}s elapsed"),
            None => format!("{what}, {elapsed}s elapsed"),
        };
        let mut err = std::io::stderr().lock();
        // Carriage return and "erase line": the line is redrawn where it stands.
        let _ = write!(err, "\r\x1b[2K{text}");
        let _ = err.flush();
        self.shown = true;
        self.last_drawn = Some(Instant::now());
    }

    /// Whether a redraw is due (at most every [`REDRAW_EVERY`]).
    pub fn is_due(&self) -> bool {
        self.enabled
            && self
                .last_drawn
                .is_none_or(|at| at.elapsed() >= REDRAW_EVERY)
    }

    /// Erases the line, before another line is printed or at the end.
    pub fn clear(&mut self) {
        if self.shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.shown = false;
        }
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        self.clear();
    }
}
