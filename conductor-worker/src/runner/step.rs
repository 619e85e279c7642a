//! One step of one task (an execute or a revert attempt): run it, forward its notes through its
//! output cap to the link, bound it by its deadline, and stop it when the walk says so.

use super::Runner;
use crate::link::LinkHandle;
use crate::output_cap::OutputCap;
use crate::task::{NOTES_CAPACITY, Note, TaskError};
use shared::protocol::conductor::{JobEvent, MAX_RESULT_LEN, Phase, Stream, truncate_at_boundary};
use std::cell::RefCell;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

impl Runner<'_> {
    /// Runs one step of one task, forwarding its notes; an interruptible execute is dropped at
    /// the stop (a cancel, or a sibling's failure) or at its timeout. Returns the step's result
    /// as stored.
    pub(super) async fn step(
        &self,
        index: usize,
        phase: Phase,
        attempt: u32,
    ) -> Result<String, TaskError> {
        let spec = &self.plan.spec.tasks[index];
        let task = match &self.tasks[index] {
            Ok(task) => task,
            // A command without `revert` has nothing to undo, built or not: a task that could
            // not be built here (its user unknown on this host) fails its execute, not its revert.
            Err(_) if phase == Phase::Revert && !spec.body.has_revert() => return Ok(String::new()),
            Err(problem) => return Err(TaskError::new(problem.clone())),
        };
        let task_index = u32::try_from(index).unwrap_or(u32::MAX);
        let (notes_tx, mut notes) = mpsc::channel(NOTES_CAPACITY);
        let ctx = self.context(index, phase, attempt, notes_tx);
        let mut sink = StepSink {
            task: task_index,
            phase,
            cap: OutputCap::new(self.plan.spec.max_output(spec)),
        };
        // A stop interrupts only an execute; the step's deadline (the execute's `timeout`,
        // the revert's `revert_timeout`) bounds both. Either drops the future of a task that
        // may be dropped; a command task applies them to its process itself.
        let droppable = task.is_interruptible();
        let interruptible = phase == Phase::Execute && droppable;
        let limit = match phase {
            Phase::Execute => spec.timeout,
            Phase::Revert => Some(self.plan.spec.revert_timeout(spec)),
        }
        .filter(|_| droppable);
        let deadline = limit.map(|t| Instant::now() + t);
        let link = &self.link;
        let mut stop = self.stop.subscribe();
        let ended = {
            let mut running = match phase {
                Phase::Execute => task.execute(&ctx),
                Phase::Revert => {
                    Box::pin(async { task.revert(&ctx).await.map(|()| serde_json::Value::Null) })
                }
            };
            loop {
                tokio::select! {
                    ended = &mut running => break ended,
                    Some(note) = notes.recv() => sink.forward(link, note),
                    _ = stop.wait_for(Option::is_some), if interruptible => break Err(TaskError::cancelled()),
                    () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                        break Err(TaskError::timed_out(phase, limit.unwrap_or_default()));
                    }
                }
            }
        };
        let dropped_lines = ctx.dropped_lines();
        drop(ctx);
        sink.finish(link, &mut notes, dropped_lines).await;
        // Cut at the source, as a command's stdout is: what the revert gets is what is stored.
        let bound = |mut text: String| {
            truncate_at_boundary(&mut text, MAX_RESULT_LEN);
            text
        };
        match ended {
            Ok(value) => Ok(bound(match value {
                serde_json::Value::Null => String::new(),
                serde_json::Value::String(text) => text,
                other => other.to_string(),
            })),
            Err(mut error) => {
                error.partial_result = bound(error.partial_result);
                Err(error)
            }
        }
    }
}

/// Where a step's notes go: its lines through its output cap, then to the link.
struct StepSink {
    task: u32,
    phase: Phase,
    cap: OutputCap,
}

impl StepSink {
    /// At the step's end: the notes still queued, a line counting those a native task dropped
    /// (`dropped_lines`), then the held tail of its output, which waits for room in the link
    /// rather than be dropped: it is the end of the step's output.
    async fn finish(
        mut self,
        link: &RefCell<LinkHandle>,
        notes: &mut mpsc::Receiver<Note>,
        dropped_lines: u64,
    ) {
        while let Ok(note) = notes.try_recv() {
            self.forward(link, note);
        }
        if dropped_lines > 0 {
            let line = format!(
                "[... {dropped_lines} lines dropped: the task logged faster than the conductor could take them ...]"
            );
            self.forward(link, Note::Line(Stream::Stderr, line));
        }
        for (stream, line) in self.cap.finish() {
            let event = JobEvent::Output {
                task: self.task,
                phase: self.phase,
                stream,
                line,
            };
            report_when_room(link, event).await;
        }
    }

    fn forward(&mut self, link: &RefCell<LinkHandle>, note: Note) {
        let (task, phase) = (self.task, self.phase);
        match note {
            Note::Line(stream, line) => {
                if let Some((stream, line)) = self.cap.admit(stream, line) {
                    link.borrow_mut().report(JobEvent::Output {
                        task,
                        phase,
                        stream,
                        line,
                    });
                }
            }
            Note::Spawned(pid) => {
                link.borrow_mut()
                    .report(JobEvent::TaskSpawned { task, phase, pid });
            }
        }
    }
}

/// [`LinkHandle::report`] once the output queue has room, without holding the link while it
/// waits (the other steps report meanwhile).
async fn report_when_room(link: &RefCell<LinkHandle>, event: JobEvent) {
    loop {
        // Marked seen before the room is checked: an acknowledgement after the check wakes it.
        let mut acked = link.borrow().acked();
        acked.borrow_and_update();
        {
            let mut handle = link.borrow_mut();
            if handle.output_has_room() {
                handle.report(event);
                return;
            }
        }
        if acked.changed().await.is_err() {
            link.borrow_mut().report(event);
            return;
        }
    }
}
