//! Reading a job file safely, and making its relative paths absolute, for `validate`, `run` and
//! `submit` alike. A job file is named by the operator, but it can still be a directory, a FIFO
//! that nobody writes, a device or something huge: each of these is a clear refusal (exit 2)
//! within a second, never a hang or an exhausted memory.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Largest job file read: far more than any real job, and small enough that its plan fits in a
/// frame (a plan larger than that is refused anyway, see `JobSpec::check`).
pub const MAX_JOB_FILE_LEN: u64 = 1024 * 1024;

/// Reads `file` as the text of a job file: a regular file of at most [`MAX_JOB_FILE_LEN`]
/// bytes, in UTF-8. The error is the message to print, naming the file.
pub fn read_job_file(file: &Path) -> Result<String, String> {
    let shown = file.display();
    // O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer; O_NOCTTY: a
    // terminal never becomes ours. The type is checked on the opened descriptor (fstat), so
    // it is the type of what is read.
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(file)
        .map_err(|err| format!("{shown}: cannot read: {err}"))?;
    let meta = opened
        .metadata()
        .map_err(|err| format!("{shown}: cannot read: {err}"))?;
    let kind = meta.file_type();
    let not_regular = if kind.is_dir() {
        Some("a directory")
    } else if kind.is_fifo() {
        Some("a FIFO")
    } else if kind.is_socket() {
        Some("a socket")
    } else if kind.is_char_device() || kind.is_block_device() {
        Some("a device")
    } else {
        None
    };
    if let Some(what) = not_regular {
        return Err(format!(
            "{shown}: is {what}, not a job file (a regular file)"
        ));
    }
    if meta.len() > MAX_JOB_FILE_LEN {
        return Err(too_large(file, meta.len()));
    }
    read_bounded(opened, file)
}

fn too_large(file: &Path, len: u64) -> String {
    format!(
        "{}: {len} bytes is too large for a job file (at most {MAX_JOB_FILE_LEN} bytes)",
        file.display()
    )
}

/// Reads at most one byte more than the limit, so that a file that grew after the check is
/// still refused rather than read without end.
fn read_bounded(opened: File, file: &Path) -> Result<String, String> {
    let mut source = Vec::new();
    opened
        .take(MAX_JOB_FILE_LEN + 1)
        .read_to_end(&mut source)
        .map_err(|err| format!("{}: cannot read: {err}", file.display()))?;
    let len = u64::try_from(source.len()).unwrap_or(u64::MAX);
    if len > MAX_JOB_FILE_LEN {
        return Err(too_large(file, len));
    }
    String::from_utf8(source).map_err(|err| {
        format!(
            "{}: not UTF-8 text (first bad byte at offset {})",
            file.display(),
            err.utf8_error().valid_up_to()
        )
    })
}

/// The directory that relative paths in `file` are relative to, made absolute.
pub fn job_file_dir(file: &Path) -> Result<PathBuf, String> {
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::canonicalize(dir).map_err(|err| format!("{}: {err}", dir.display()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, Instant};

    /// A directory of our own; removed on drop.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new() -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "sv-jobfile-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).expect("temp dir");
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_regular_file_is_read() {
        let dir = TempDir::new();
        let file = dir.0.join("job.toml");
        std::fs::write(&file, "[[task]]\n").expect("write");
        assert_eq!(read_job_file(&file), Ok("[[task]]\n".to_owned()));
    }

    #[test]
    fn what_is_not_a_small_regular_file_is_refused_at_once() {
        let dir = TempDir::new();
        let fifo = dir.0.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let big = dir.0.join("big.toml");
        let file = File::create(&big).expect("create");
        file.set_len(MAX_JOB_FILE_LEN + 1).expect("grow");
        let binary = dir.0.join("bin.toml");
        std::fs::write(&binary, b"name = \"\xff\"").expect("write");
        let cases: [(&Path, &str); 6] = [
            (&dir.0, "a directory"),
            (&fifo, "a FIFO"),
            (Path::new("/dev/null"), "a device"),
            (&big, "too large"),
            (&binary, "not UTF-8"),
            (&dir.0.join("missing.toml"), "cannot read"),
        ];
        for (path, needle) in cases {
            let started = Instant::now();
            let problem = read_job_file(path).expect_err(needle);
            assert!(started.elapsed() < Duration::from_secs(1), "{needle}");
            assert!(problem.contains(needle), "{needle}: {problem}");
            assert!(
                problem.starts_with(&path.display().to_string()),
                "{problem}"
            );
        }
    }

    #[test]
    fn relative_cwds_are_made_absolute_against_the_job_file() {
        let mut spec = shared::spec::JobSpec::parse(
            "[[task]]\nname = \"a\"\nrun = \"true\"\ncwd = \"work/dir\"\n[[task]]\nname = \"b\"\nrun = \"true\"\ncwd = \"/abs\"\n[[task]]\nname = \"c\"\nrun = \"true\"\n",
            "j.toml",
            "j",
        )
        .expect("valid");
        spec.resolve_cwds(Path::new("/srv/jobs"));
        let cwds: Vec<Option<&str>> = spec.tasks.iter().map(|t| t.cwd.as_deref()).collect();
        assert_eq!(cwds, [Some("/srv/jobs/work/dir"), Some("/abs"), None]);
    }
}
