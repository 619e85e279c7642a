//! The output cap of one step (`max_output`): a task that prints without end must not grow the
//! supervisor's store without end. The step's first lines pass at once (the head); once the
//! head is spent, lines are held back in a window of the last ones (the tail), the oldest
//! dropped and counted as new ones come. At the step's end the held lines follow one line saying
//! how much was dropped, so the job's log shows the start, the gap and the end.

use shared::protocol::conductor::Stream;
use std::collections::VecDeque;

/// The most of a step's output held back for its tail: past the head, lines are shown only at
/// the step's end, so the window stays small and the head takes the rest of the cap.
pub const MAX_TAIL: u64 = 1 << 20;

/// The head and tail of one step's output, within its cap.
#[derive(Debug)]
pub struct OutputCap {
    max: u64,
    /// Bytes the head may still pass.
    head_left: u64,
    tail: VecDeque<(Stream, String)>,
    tail_bytes: u64,
    tail_max: u64,
    dropped_lines: u64,
    dropped_bytes: u64,
}

/// What a line costs against the cap: its bytes and its newline.
fn cost(line: &str) -> u64 {
    u64::try_from(line.len())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

impl OutputCap {
    /// A cap of `max` bytes: the tail is half of it, at most [`MAX_TAIL`]; the head the rest.
    #[must_use]
    pub fn new(max: u64) -> Self {
        let tail_max = (max / 2).min(MAX_TAIL);
        Self {
            max,
            head_left: max - tail_max,
            tail: VecDeque::new(),
            tail_bytes: 0,
            tail_max,
            dropped_lines: 0,
            dropped_bytes: 0,
        }
    }

    /// The line, if it is to be sent now (within the head); otherwise it is held for the tail
    /// (and the oldest held lines dropped to make room).
    pub fn admit(&mut self, stream: Stream, line: String) -> Option<(Stream, String)> {
        let line_cost = cost(&line);
        if self.tail.is_empty() && line_cost <= self.head_left {
            self.head_left -= line_cost;
            return Some((stream, line));
        }
        // From now on everything goes through the tail, so that no line overtakes a held one.
        self.head_left = 0;
        self.tail.push_back((stream, line));
        self.tail_bytes += line_cost;
        while self.tail_bytes > self.tail_max {
            let Some((_, oldest)) = self.tail.pop_front() else {
                break;
            };
            let oldest_cost = cost(&oldest);
            self.tail_bytes = self.tail_bytes.saturating_sub(oldest_cost);
            self.dropped_lines += 1;
            self.dropped_bytes += oldest_cost;
        }
        None
    }

    /// How many bytes were dropped so far.
    #[must_use]
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped_bytes
    }

    /// At the step's end: the line saying what was dropped (if anything was), then the tail.
    #[must_use]
    pub fn finish(self) -> Vec<(Stream, String)> {
        let mut lines = Vec::with_capacity(self.tail.len() + 1);
        if self.dropped_bytes > 0 {
            lines.push((
                Stream::Stderr,
                dropped_line(self.dropped_bytes, self.dropped_lines, self.max),
            ));
        }
        lines.extend(self.tail);
        lines
    }
}

/// The line that stands for the dropped middle of a step's output.
#[must_use]
pub fn dropped_line(bytes: u64, lines: u64, max: u64) -> String {
    format!(
        "[... {bytes} bytes of output dropped ({lines} lines): the step printed more than its max_output of {max} bytes; its first and last lines are kept ...]"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(cap: &mut OutputCap, count: usize, width: usize) -> Vec<String> {
        let mut sent = Vec::new();
        for i in 0..count {
            let line = format!("{i:0width$}");
            if let Some((_, line)) = cap.admit(Stream::Stdout, line) {
                sent.push(line);
            }
        }
        sent
    }

    #[test]
    fn output_within_the_cap_passes_whole_and_in_order() {
        let mut cap = OutputCap::new(10_000);
        let mut seen = feed(&mut cap, 90, 99);
        assert_eq!(cap.dropped_bytes(), 0);
        seen.extend(cap.finish().into_iter().map(|(_, line)| line));
        let expected: Vec<String> = (0..90).map(|i| format!("{i:099}")).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_flood_keeps_the_head_and_the_tail_and_says_what_was_dropped() {
        let max = 10_000;
        let mut cap = OutputCap::new(max);
        let head = feed(&mut cap, 10_000, 99);
        let head_bytes: u64 = head.iter().map(|l| cost(l)).sum();
        assert!(head_bytes <= max - max / 2, "{head_bytes}");
        assert_eq!(
            head.first().map(String::as_str),
            Some(&*format!("{:099}", 0))
        );
        let end = cap.finish();
        let (stream, marker) = &end[0];
        assert_eq!(*stream, Stream::Stderr);
        assert!(marker.contains("bytes of output dropped"), "{marker}");
        let tail: Vec<&str> = end[1..].iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(tail.last().copied(), Some(&*format!("{:099}", 9_999)));
        let kept: u64 = head_bytes + tail.iter().map(|l| cost(l)).sum::<u64>();
        assert!(kept <= max, "{kept}");
        let dropped: u64 = marker
            .trim_start_matches("[... ")
            .split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("a count");
        assert_eq!(kept + dropped, 10_000 * 100);
    }

    #[test]
    fn the_tail_is_at_most_max_tail() {
        let cap = OutputCap::new(64 << 20);
        assert_eq!(cap.tail_max, MAX_TAIL);
        assert_eq!(cap.head_left, (64 << 20) - MAX_TAIL);
    }
}
