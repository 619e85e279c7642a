//! A custom conductor for the black-box tests of native tasks (`tests/tests/native.rs`). A job
//! names it with `worker = "test-worker"` (found next to `supervisor` in `target/<profile>/`).
//!
//! Every kind takes a `marker` parameter: a file to which each step appends one line, so a test
//! can see what ran and in which order:
//!
//! - execute: `execute <task_name>` (before doing its work);
//! - revert: `revert <task_name> <execute_outcome or none> <result_text>`.
//!
//! Kinds:
//!
//! - `sleep` `{ms, marker}`: logs `sleeping`, then awaits `tokio::time::sleep(ms)`; result
//!   `{"slept_ms": ms}`. A cancel interrupts it at that await.
//! - `spin` `{ms, marker}`: logs `spinning`, then busy-loops for `ms` without awaiting and without
//!   checking the cancel; result `{"spun": true}`. Only a SIGKILL stops it.
//! - `echo` `{value, marker}`: the result is `value` (any JSON).
//! - `fail` `{marker}`: fails with "failed on purpose".
//! - `big` `{bytes, fail, marker}`: logs one line of `bytes` bytes, then returns a result of
//!   `bytes` bytes, or with `fail = true` fails with a reason of `bytes` bytes (what must be cut
//!   at the source so that no report exceeds a frame).
//! - `stuck_revert` `{marker}`: the execute succeeds; the revert records its line, then awaits
//!   forever (only the task's `revert_timeout` ends it).

use conductor_worker::{Registry, Task, TaskContext, TaskError, TaskFuture};
use serde::Deserialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Appends `line` (and a newline) to `marker` in one write.
fn append(marker: &Path, line: &str) -> Result<(), TaskError> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(marker)
        .map_err(|e| TaskError::new(format!("cannot open {}: {e}", marker.display())))?;
    file.write_all(format!("{line}\n").as_bytes())
        .map_err(|e| TaskError::new(format!("cannot write {}: {e}", marker.display())))
}

/// The parameter every kind has.
#[derive(Deserialize)]
struct MarkerParam {
    marker: PathBuf,
}

/// Records the execute's start in the marker; returns the marker.
fn record_execute(ctx: &TaskContext) -> Result<PathBuf, TaskError> {
    let MarkerParam { marker } = ctx.params()?;
    append(&marker, &format!("execute {}", ctx.task_name()))?;
    Ok(marker)
}

/// The revert every kind shares: one line with the execute's outcome and result.
fn record_revert(ctx: &TaskContext) -> Result<(), TaskError> {
    let MarkerParam { marker } = ctx.params()?;
    let outcome = ctx.execute_outcome().map_or("none", |o| o.as_str());
    append(
        &marker,
        &format!("revert {} {outcome} {}", ctx.task_name(), ctx.result_text()),
    )
}

/// `{ms, marker}`.
#[derive(Deserialize)]
struct Millis {
    ms: u64,
}

struct Sleep;

impl Task for Sleep {
    fn execute<'a>(&'a self, ctx: &'a TaskContext) -> TaskFuture<'a, serde_json::Value> {
        Box::pin(async move {
            record_execute(ctx)?;
            let Millis { ms } = ctx.params()?;
            ctx.log("sleeping");
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(serde_json::json!({ "slept_ms": ms }))
        })
    }

    fn revert<'a>(&'a self, ctx: &'a TaskContext) -> TaskFuture<'a, ()> {
        Box::pin(async move { record_revert(ctx) })
    }
}

/// `{ms, check}`: with `check`, the loop looks at the cheap cancel flag.
#[derive(Deserialize)]
struct SpinParams {
    ms: u64,
    #[serde(default)]
    check: bool,
}

struct Spin;

impl Task for Spin {
    fn execute<'a>(&'a self, ctx: &'a TaskContext) -> TaskFuture<'a, serde_json::Value> {
        Box::pin(async move {
            record_execute(ctx)?;
            let SpinParams { ms, check } = ctx.params()?;
            ctx.log("spinning");
            // The loop below never gives the (single) thread back, so the line above would stay
            // in the engine until the loop ends. A few yields (no timer: a cancel cannot land in
            // them in practice) let the engine forward it and the link task write it out: the
            // engine polls this future again after at most one note per turn, and a yielded
            // turn runs the queued link task first.
            for _ in 0..8 {
                tokio::task::yield_now().await;
            }
            let until = Instant::now() + Duration::from_millis(ms);
            let mut turns = 0u64;
            while Instant::now() < until {
                turns = std::hint::black_box(turns.wrapping_add(1));
                if check && ctx.is_cancelled() {
                    return Err(TaskError::cancelled());
                }
            }
            Ok(serde_json::json!({ "spun": true }))
        })
    }

    fn revert<'a>(&'a self, ctx: &'a TaskContext) -> TaskFuture<'a, ()> {
        Box::pin(async move { record_revert(ctx) })
    }
}

/// `{value, marker}`.
#[derive(Deserialize)]
struct EchoParams {
    value: serde_json::Value,
}

struct Echo;

impl Task for Echo {
    fn execute<'a>(&'a self, ctx: &'a TaskContext) -> TaskFuture<'a, serde_json::Value> {
        Box::pin(async move {
            record_execute(ctx)?;
            let EchoParams { value } = ctx.params()?;
            Ok(value)
        })
    }

    fn revert<'a>(&'a self, ctx: &'a TaskContext) -> TaskFuture<'a, ()> {
        Box::pin(async move { record_revert(ctx) })
    }
}

struct Fail;

impl Task for Fail {
    fn execute<'a>(&'a self, ctx: &'a TaskContext) -> TaskFuture<'a, serde_json::Value> {
        Box::pin(async move {
            record_execute(ctx)?;
            Err(TaskError::new("failed on purpose"))
        })
    }

    fn revert<'a>(&'a self, ctx: &'a TaskContext) -> TaskFuture<'a, ()> {
        Box::pin(async move { record_revert(ctx) })
    }
}

/// `{bytes, fail, marker}`.
#[derive(Deserialize)]
struct BigParams {
    bytes: usize,
    #[serde(default)]
    fail: bool,
}

struct Big;

impl Task for Big {
    fn execute<'a>(&'a self, ctx: &'a TaskContext) -> TaskFuture<'a, serde_json::Value> {
        Box::pin(async move {
            record_execute(ctx)?;
            let BigParams { bytes, fail } = ctx.params()?;
            ctx.log("l".repeat(bytes));
            if fail {
                return Err(TaskError::new("f".repeat(bytes)));
            }
            Ok(serde_json::Value::String("r".repeat(bytes)))
        })
    }

    fn revert<'a>(&'a self, ctx: &'a TaskContext) -> TaskFuture<'a, ()> {
        Box::pin(async move { record_revert(ctx) })
    }
}

struct StuckRevert;

impl Task for StuckRevert {
    fn execute<'a>(&'a self, ctx: &'a TaskContext) -> TaskFuture<'a, serde_json::Value> {
        Box::pin(async move {
            record_execute(ctx)?;
            Ok(serde_json::Value::Null)
        })
    }

    fn revert<'a>(&'a self, ctx: &'a TaskContext) -> TaskFuture<'a, ()> {
        Box::pin(async move {
            record_revert(ctx)?;
            std::future::pending::<()>().await;
            Ok(())
        })
    }
}

fn main() -> std::process::ExitCode {
    let mut registry = Registry::new();
    registry
        .register("sleep", |_params| Ok(Sleep))
        .register("spin", |_params| Ok(Spin))
        .register("echo", |_params| Ok(Echo))
        .register("fail", |_params| Ok(Fail))
        .register("big", |_params| Ok(Big))
        .register("stuck_revert", |_params| Ok(StuckRevert));
    conductor_worker::main_with_registry(registry)
}
