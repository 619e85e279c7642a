//! A custom conductor with two native task kinds, mirroring the TaskFlow write-up's download
//! job: `download` (simulated, no network: it writes the file chunk by chunk, reports progress,
//! and is interrupted at once by a cancel) and `unpack`. Each revert removes what its execute
//! made, using the execute's result. See `examples/download.toml`.

use conductor_worker::{Registry, Task, TaskContext, TaskError, TaskFuture};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// `[task.params]` of a download.
#[derive(Deserialize)]
struct DownloadParams {
    url: String,
    dest: PathBuf,
    size_kb: u32,
    /// Simulated transfer time per 64 KiB chunk.
    chunk_ms: u64,
}

/// What a download leaves, for its revert.
#[derive(Serialize, Deserialize)]
struct Downloaded {
    path: PathBuf,
    bytes: u64,
}

struct Download;

impl Task for Download {
    fn execute<'a>(&'a self, ctx: &'a TaskContext) -> TaskFuture<'a, serde_json::Value> {
        Box::pin(async move {
            let params: DownloadParams = ctx.params()?;
            if let Some(dir) = params.dest.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| TaskError::new(format!("cannot create {}: {e}", dir.display())))?;
            }
            let mut file = std::fs::File::create(&params.dest).map_err(|e| {
                TaskError::new(format!("cannot create {}: {e}", params.dest.display()))
            })?;
            let chunks = params.size_kb.div_ceil(64).max(1);
            ctx.log(format!(
                "downloading {} to {}",
                params.url,
                params.dest.display()
            ));
            let mut bytes = 0u64;
            for chunk in 1..=chunks {
                // An await point: a cancel drops this future right here.
                tokio::time::sleep(Duration::from_millis(params.chunk_ms)).await;
                let data = vec![b'x'; 64 * 1024];
                file.write_all(&data)
                    .map_err(|e| TaskError::new(format!("write failed: {e}")))?;
                bytes += data.len() as u64;
                ctx.log(format!("{}%", chunk * 100 / chunks));
            }
            Ok(serde_json::to_value(Downloaded {
                path: params.dest,
                bytes,
            })
            .unwrap_or_default())
        })
    }

    fn revert<'a>(&'a self, ctx: &'a TaskContext) -> TaskFuture<'a, ()> {
        Box::pin(async move {
            // After a cancel mid-download there is no result: the params say where it was going.
            let path = match ctx.result::<Downloaded>() {
                Some(done) => done.path,
                None => ctx.params::<DownloadParams>()?.dest,
            };
            match std::fs::remove_file(&path) {
                Ok(()) => ctx.log(format!("removed {}", path.display())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => ctx.log("nothing to remove"),
                Err(e) => {
                    return Err(TaskError::new(format!(
                        "cannot remove {}: {e}",
                        path.display()
                    )));
                }
            }
            Ok(())
        })
    }
}

/// `[task.params]` of an unpack.
#[derive(Deserialize)]
struct UnpackParams {
    archive: PathBuf,
    into: PathBuf,
}

struct Unpack;

impl Task for Unpack {
    fn execute<'a>(&'a self, ctx: &'a TaskContext) -> TaskFuture<'a, serde_json::Value> {
        Box::pin(async move {
            let params: UnpackParams = ctx.params()?;
            let size = std::fs::metadata(&params.archive)
                .map_err(|e| {
                    TaskError::new(format!("no archive at {}: {e}", params.archive.display()))
                })?
                .len();
            std::fs::create_dir_all(&params.into).map_err(|e| {
                TaskError::new(format!("cannot create {}: {e}", params.into.display()))
            })?;
            let mut files = Vec::new();
            for name in ["bin", "lib", "VERSION"] {
                if ctx.is_cancelled() {
                    return Err(TaskError::cancelled());
                }
                let path = params.into.join(name);
                std::fs::write(&path, format!("unpacked from {} bytes\n", size))
                    .map_err(|e| TaskError::new(format!("cannot write {}: {e}", path.display())))?;
                files.push(path);
            }
            ctx.log(format!(
                "unpacked {} files into {}",
                files.len(),
                params.into.display()
            ));
            Ok(serde_json::json!({ "dir": params.into }))
        })
    }

    fn revert<'a>(&'a self, ctx: &'a TaskContext) -> TaskFuture<'a, ()> {
        Box::pin(async move {
            let dir: PathBuf = ctx.params::<UnpackParams>()?.into;
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => ctx.log(format!("removed {}", dir.display())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => ctx.log("nothing to remove"),
                Err(e) => {
                    return Err(TaskError::new(format!(
                        "cannot remove {}: {e}",
                        dir.display()
                    )));
                }
            }
            Ok(())
        })
    }
}

fn main() -> std::process::ExitCode {
    let mut registry = Registry::new();
    registry
        .register("download", |_params| Ok(Download))
        .register("unpack", |_params| Ok(Unpack));
    conductor_worker::main_with_registry(registry)
}
