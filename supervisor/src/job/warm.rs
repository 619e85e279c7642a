//! The warm pool (ARCHITECTURE.md, Warm conductors): `supervisor daemon --warm N` keeps N
//! conductors spawned ahead of any job, each in its own fresh cgroup (cgroup mode) and holding
//! its own listening socket, waiting for a job. A job start takes one ([`WarmPool::take`], a
//! lock and a pop: nothing is spawned on the start's path) and the pool spawns the replacement
//! in the background, a moment later (`REFILL_AFTER`) while a spare is left. A warm conductor
//! is used for exactly one job: taken once, it leaves the pool for good, and the conductor
//! itself refuses any job but the first one it is told.
//!
//! A warm conductor must never outlive its daemon unnoticed:
//! - every one has a record in `STATE_DIR/warm/` (its pid, start time and cgroup) from before
//!   its spawn until its job owns it; a daemon starting on the state dir kills and removes
//!   whatever those records name ([`clear_leftovers`]). A record a job took over is emptied
//!   and kept for the next spawn ([`WarmPool::owned_by_job`]), not removed and created again:
//!   on ext4 without a journal, every new inode is searched for past the inodes freed in the
//!   last seconds, and that search grows with the rate of starts (bench/NOTES.md);
//! - the pool is killed when the daemon stops, with or without `--cancel` ([`WarmPool::close`]);
//! - a conductor that receives no plan exits by itself after its plan timeout (60 s from its
//!   start); the pool replaces each one after [`MAX_AGE`], so that one taken at the last moment
//!   still has half that timeout for its handshake and its plan.

use crate::containment::{Containment, JobCgroup};
use crate::metrics::METRICS;
use crate::process::{ConductorId, Pidfd, WorkerCommand};
use crate::spawn::spawn_listening;
use crate::state_dir::StateDir;
use anyhow::Context;
use std::collections::VecDeque;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long a warm conductor waits in the pool before it is replaced: half the conductor's own
/// plan timeout, counted from its start.
pub const MAX_AGE: Duration = Duration::from_secs(30);

/// How long a replacement waits after a take while the pool still holds a conductor: the start
/// that took one goes first. A conductor's spawn is about a millisecond of CPU (its exec, its
/// loading); made at once, it competed with that start for the host's CPUs and made its first
/// task about 1 ms later on two cores (bench/NOTES.md). A take that leaves the pool empty, a
/// second take meanwhile, or the end of a job's supervision refills at once.
const REFILL_AFTER: Duration = Duration::from_millis(5);

/// The first pause after a failed spawn, doubled after each further failure up to
/// [`RETRY_MAX`]: a pool that cannot spawn (a missing binary, no descriptors) must not spin.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The prefix of every warm cgroup's name, `BASE/warm-PID-START-N` (the daemon's pid and start
/// time, in hex, and a counter); a job keeps that cgroup.
pub const CGROUP_PREFIX: &str = "warm-";

/// One warm conductor, ready for a job.
#[derive(Debug)]
pub struct Warm {
    pub pidfd: Pidfd,
    /// Its listening socket (`STATE_DIR/warm/sN`), renamed to the job's on assignment.
    pub socket: PathBuf,
    /// Its log (`STATE_DIR/warm/sN.log`), renamed to the job's on assignment.
    pub log: PathBuf,
    /// Its cgroup, in cgroup mode: the job's cgroup once assigned.
    pub cgroup: Option<JobCgroup>,
    /// Its record in `STATE_DIR/warm/`, emptied once a job owns it ([`WarmPool::owned_by_job`]).
    pub record: PathBuf,
    born: Instant,
}

impl Warm {
    #[must_use]
    pub const fn id(&self) -> ConductorId {
        self.pidfd.id()
    }

    /// Kills it (and its cgroup) and removes its files.
    pub async fn discard(self) {
        match &self.cgroup {
            Some(cgroup) => {
                cgroup.kill_and_remove().await;
            }
            None => {
                // It has started no task: killing it is killing all of it.
                let _ = self.pidfd.signal(nix::sys::signal::Signal::SIGKILL);
            }
        }
        for path in [&self.socket, &self.log, &self.record] {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The pool; cheap to clone.
#[derive(Clone)]
pub struct WarmPool {
    inner: Arc<Inner>,
}

struct Inner {
    target: usize,
    state_dir: StateDir,
    worker: WorkerCommand,
    containment: Containment,
    next: AtomicU64,
    state: Mutex<State>,
    /// Wakes the refiller: a conductor was taken, or the pool closes.
    wake: Notify,
    refiller: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[derive(Default)]
struct State {
    ready: VecDeque<Warm>,
    closed: bool,
    /// Emptied records of conductors that jobs took over, for the next spawns to reuse.
    spare_records: Vec<PathBuf>,
}

impl WarmPool {
    /// A pool of `target` warm conductors (none spawned before [`WarmPool::start`]).
    #[must_use]
    pub fn new(
        target: usize,
        state_dir: StateDir,
        worker: WorkerCommand,
        containment: Containment,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                target,
                state_dir,
                worker,
                containment,
                next: AtomicU64::new(1),
                state: Mutex::new(State::default()),
                wake: Notify::new(),
                refiller: Mutex::new(None),
            }),
        }
    }

    /// A job's supervision ended: the CPUs it used are free, so a replacement that waits for
    /// the start before it (`REFILL_AFTER`) is spawned now.
    pub fn job_ended(&self) {
        self.inner.wake.notify_one();
    }

    /// How many warm conductors the pool keeps.
    #[must_use]
    pub fn target(&self) -> usize {
        self.inner.target
    }

    /// Starts filling the pool, in the background.
    pub fn start(&self) {
        let inner = self.inner.clone();
        let handle = tokio::spawn(async move { inner.refill().await });
        *lock(&self.inner.refiller) = Some(handle);
    }

    /// A warm conductor, if one is ready: the oldest that still lives and is young enough.
    /// Never waits; the replacement is spawned in the background.
    #[must_use]
    pub fn take(&self) -> Option<Warm> {
        let mut stale = Vec::new();
        let taken = {
            let mut state = lock(&self.inner.state);
            let mut taken = None;
            while let Some(warm) = state.ready.pop_front() {
                if warm.pidfd.has_exited() || warm.born.elapsed() >= MAX_AGE {
                    stale.push(warm);
                } else {
                    taken = Some(warm);
                    break;
                }
            }
            METRICS.warm_pool_size.set(gauge(state.ready.len()));
            taken
        };
        self.inner.wake.notify_one();
        for warm in stale {
            tokio::spawn(warm.discard());
        }
        taken
    }

    /// A job owns the warm conductor of `record` now (the store names it): a restarted daemon
    /// must adopt it, never clear it as a leftover of the pool. The record is emptied (an empty
    /// record names nothing to clear) and kept for a later spawn; past the pool's size in
    /// spares, it is removed.
    pub fn owned_by_job(&self, record: PathBuf) {
        let emptied = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&record);
        if let Err(err) = emptied {
            tracing::warn!(path = %record.display(), error = %err, "cannot empty a warm conductor's record");
            let _ = std::fs::remove_file(&record);
            return;
        }
        let mut state = lock(&self.inner.state);
        if state.closed || state.spare_records.len() >= self.inner.target {
            drop(state);
            if let Err(err) = std::fs::remove_file(&record) {
                tracing::warn!(path = %record.display(), error = %err, "cannot remove a warm conductor's record");
            }
        } else {
            state.spare_records.push(record);
        }
    }

    /// Stops refilling and kills every warm conductor (the daemon stops, with or without
    /// `--cancel`); returns once none is left.
    pub async fn close(&self) {
        let ready: Vec<Warm> = {
            let mut state = lock(&self.inner.state);
            state.closed = true;
            state.ready.drain(..).collect()
        };
        METRICS.warm_pool_size.set(0);
        self.inner.wake.notify_one();
        let count = ready.len();
        for warm in ready {
            warm.discard().await;
        }
        // A spawn under way finishes, sees the pool closed and discards its conductor.
        let refiller = lock(&self.inner.refiller).take();
        if let Some(refiller) = refiller {
            let _ = refiller.await;
        }
        tracing::info!(count, "warm pool closed");
    }
}

impl Inner {
    /// Keeps the pool at its target: spawns one conductor at a time, replaces the ones that
    /// are too old or dead, and waits for a take (or the next expiry) in between.
    async fn refill(self: Arc<Self>) {
        let mut retry = None;
        loop {
            let (missing, spare, expired, next_expiry) = {
                let mut state = lock(&self.state);
                if state.closed {
                    return;
                }
                let (fresh, expired): (VecDeque<Warm>, VecDeque<Warm>) = state
                    .ready
                    .drain(..)
                    .partition(|w| !w.pidfd.has_exited() && w.born.elapsed() < MAX_AGE);
                state.ready = fresh;
                METRICS.warm_pool_size.set(gauge(state.ready.len()));
                let next_expiry = state.ready.iter().map(|w| w.born + MAX_AGE).min();
                (
                    self.target.saturating_sub(state.ready.len()),
                    state.ready.len(),
                    expired,
                    next_expiry,
                )
            };
            for warm in expired {
                warm.discard().await;
            }
            if missing > 0 {
                if spare > 0 {
                    tokio::select! {
                        () = tokio::time::sleep(REFILL_AFTER) => {}
                        () = self.wake.notified() => {}
                    }
                    if lock(&self.state).closed {
                        return;
                    }
                }
                match self.spawn_one().await {
                    Ok(warm) => {
                        retry = None;
                        if let Some(unwanted) = self.add(warm) {
                            unwanted.discard().await;
                            return;
                        }
                        continue;
                    }
                    Err(err) => {
                        let pause = retry.map_or(RETRY_FIRST, |p: Duration| (p * 2).min(RETRY_MAX));
                        retry = Some(pause);
                        tracing::warn!(
                            error = format!("{err:#}"),
                            retry_in_ms = pause.as_millis(),
                            "cannot spawn a warm conductor"
                        );
                        tokio::select! {
                            () = tokio::time::sleep(pause) => {}
                            () = self.wake.notified() => {}
                        }
                        continue;
                    }
                }
            }
            let until = next_expiry.unwrap_or_else(|| Instant::now() + MAX_AGE);
            tokio::select! {
                () = tokio::time::sleep_until(until) => {}
                () = self.wake.notified() => {}
            }
        }
    }

    /// Puts a new conductor in the pool; gives it back when the pool closed meanwhile.
    fn add(&self, warm: Warm) -> Option<Warm> {
        let mut state = lock(&self.state);
        if state.closed {
            return Some(warm);
        }
        tracing::debug!(pid = warm.id().pid, "warm conductor ready");
        state.ready.push_back(warm);
        METRICS.warm_pool_size.set(gauge(state.ready.len()));
        None
    }

    /// Spawns one warm conductor: its record first (so that a daemon dying at any later point
    /// leaves something to clear), then its cgroup, its socket and the process. All of it runs
    /// on a blocking thread: a cgroup's `mkdir`, two new inodes and the spawn itself would
    /// otherwise hold the runtime's one thread while the job that took the last conductor
    /// waits to start.
    async fn spawn_one(&self) -> anyhow::Result<Warm> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let dir = warm_dir(&self.state_dir);
        let name = format!("s{n:x}");
        let spare = lock(&self.state).spare_records.pop();
        let files = WarmFiles {
            socket: dir.join(&name),
            log: dir.join(format!("{name}.log")),
            record: spare.unwrap_or_else(|| dir.join(format!("{name}.rec"))),
        };
        let daemon = crate::process::own_supervisor_id();
        let cgroup_name = format!(
            "{CGROUP_PREFIX}{:x}-{:x}-{n:x}",
            daemon.pid, daemon.start_time
        );
        let cgroup_path = self.containment.job_cgroup_named(&cgroup_name);
        let made = {
            let (containment, worker, files) =
                (self.containment.clone(), self.worker.clone(), files.clone());
            tokio::task::spawn_blocking(move || {
                spawn_warm(&containment, &worker, &files, &cgroup_name)
            })
            .await
            .context("the spawn task failed")
            .and_then(|made| made)
        };
        match made {
            Ok((pidfd, cgroup)) => Ok(Warm {
                pidfd,
                socket: files.socket,
                log: files.log,
                cgroup,
                record: files.record,
                born: Instant::now(),
            }),
            Err(err) => {
                // A conductor that was spawned is in its cgroup (killed with it), or, in
                // session mode, was killed by `spawn_warm` itself.
                if let Some(path) = cgroup_path {
                    JobCgroup { path }.kill_and_remove().await;
                }
                for path in [&files.socket, &files.log, &files.record] {
                    let _ = std::fs::remove_file(path);
                }
                Err(err)
            }
        }
    }
}

/// A warm conductor's files in `STATE_DIR/warm/`.
#[derive(Clone)]
struct WarmFiles {
    socket: PathBuf,
    log: PathBuf,
    record: PathBuf,
}

/// The blocking part of a warm conductor's spawn: its record (before anything else exists),
/// its cgroup, its listening socket, the process, and its record again with its identity.
fn spawn_warm(
    containment: &Containment,
    worker: &WorkerCommand,
    files: &WarmFiles,
    cgroup_name: &str,
) -> anyhow::Result<(Pidfd, Option<JobCgroup>)> {
    let cgroup_path = containment.job_cgroup_named(cgroup_name);
    write_record(&files.record, None, cgroup_path.as_deref())?;
    let cgroup = containment.create_warm(cgroup_name)?;
    let spawned = spawn_listening(
        &worker.program,
        &worker.warm_args(),
        &files.socket,
        &files.log,
        cgroup.as_ref().map(|c| c.path.as_path()),
    )?;
    if let Err(err) = write_record(
        &files.record,
        Some(spawned.pidfd.id()),
        cgroup.as_ref().map(|c| c.path.as_path()),
    ) {
        // It has started no task: killing it is killing all of it (its cgroup goes after).
        let _ = spawned.pidfd.signal(nix::sys::signal::Signal::SIGKILL);
        return Err(err);
    }
    Ok((spawned.pidfd, cgroup))
}

/// Where the warm conductors' sockets, logs and records are: `STATE_DIR/warm/`.
#[must_use]
pub fn warm_dir(state_dir: &StateDir) -> PathBuf {
    state_dir.root().join("warm")
}

/// Writes a warm conductor's record: `PID START_TIME` (0 0 before the spawn) and its cgroup.
fn write_record(path: &Path, id: Option<ConductorId>, cgroup: Option<&Path>) -> anyhow::Result<()> {
    let (pid, start) = id.map_or((0, 0), |id| (id.pid, id.start_time));
    let cgroup = cgroup.map(|p| p.display().to_string()).unwrap_or_default();
    std::fs::write(path, format!("{pid} {start}\n{cgroup}\n"))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A record as written by [`write_record`].
fn parse_record(text: &str) -> (Option<ConductorId>, Option<PathBuf>) {
    let mut lines = text.lines();
    let id = lines.next().and_then(|line| {
        let (pid, start) = line.split_once(' ')?;
        let id = ConductorId {
            pid: pid.parse().ok()?,
            start_time: start.parse().ok()?,
        };
        (id.pid > 0).then_some(id)
    });
    let cgroup = lines
        .next()
        .map(PathBuf::from)
        // Only ever a warm cgroup: a damaged record cannot name anything else to kill.
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(CGROUP_PREFIX))
        });
    (id, cgroup)
}

/// At start-up: kills whatever warm conductors a previous daemon on this state dir left (its
/// records name them by pid and start time, and by cgroup), removes their cgroups and every
/// file of `STATE_DIR/warm/`, and makes the dir afresh (0700); then removes the empty warm
/// cgroups of dead daemons of any state dir (`sweep_dead_daemons_cgroups`). Returns how many
/// it killed.
pub async fn clear_leftovers(
    state_dir: &StateDir,
    containment: &Containment,
) -> anyhow::Result<usize> {
    let dir = warm_dir(state_dir);
    let mut killed = 0;
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "rec") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                if clear_one(&text).await {
                    killed += 1;
                }
            }
            let _ = std::fs::remove_file(&path);
        }
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot set the mode of {}", dir.display()))?;
    if killed > 0 {
        tracing::info!(
            count = killed,
            "killed the warm conductors a previous daemon left"
        );
    }
    if let Containment::Cgroup { base, .. } = containment {
        let removed = sweep_dead_daemons_cgroups(base);
        if removed > 0 {
            tracing::info!(
                count = removed,
                "removed the empty warm cgroups of dead daemons"
            );
        }
    }
    Ok(killed)
}

/// Removes every empty `BASE/warm-PID-START-N` whose daemon (PID with START) is gone: a warm
/// conductor whose daemon died exits by itself, but its cgroup stays, and the dead daemon's
/// state dir may never see a daemon again (daemons of other state dirs share BASE). A cgroup
/// with a process in it (a job's, or a live pool's) cannot be removed (`rmdir` fails with
/// EBUSY), and a live daemon's are skipped, so that none is removed between its creation and
/// its conductor's birth.
fn sweep_dead_daemons_cgroups(base: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(base) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|entry| {
            let name = entry.file_name();
            let Some(daemon) = name.to_str().and_then(daemon_of_cgroup) else {
                return false;
            };
            !daemon.is_alive() && std::fs::remove_dir(entry.path()).is_ok()
        })
        .count()
}

/// The daemon a warm cgroup's name (`warm-PID-START-N`) names.
fn daemon_of_cgroup(name: &str) -> Option<ConductorId> {
    let mut parts = name.strip_prefix(CGROUP_PREFIX)?.split('-');
    let pid = i32::from_str_radix(parts.next()?, 16).ok()?;
    let start_time = u64::from_str_radix(parts.next()?, 16).ok()?;
    parts.next()?;
    Some(ConductorId { pid, start_time })
}

/// Kills what one record names; true when a process was still there.
async fn clear_one(record: &str) -> bool {
    let (id, cgroup) = parse_record(record);
    let mut found = false;
    if let Some(id) = id {
        if let Ok(pidfd) = Pidfd::open(id) {
            found = true;
            let _ = pidfd.signal(nix::sys::signal::Signal::SIGKILL);
        }
    }
    if let Some(path) = cgroup {
        let cgroup = JobCgroup { path };
        found |= cgroup.is_populated();
        cgroup.kill_and_remove().await;
    }
    found
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_names_a_process_and_only_a_warm_cgroup() {
        let (id, cgroup) = parse_record("42 777\n/sys/fs/cgroup/x/warm-1f-2\n");
        assert_eq!(
            id,
            Some(ConductorId {
                pid: 42,
                start_time: 777
            })
        );
        assert_eq!(cgroup, Some(PathBuf::from("/sys/fs/cgroup/x/warm-1f-2")));
        // Before the spawn: no process yet.
        assert_eq!(parse_record("0 0\n\n").0, None);
        // A damaged record cannot name a job's cgroup, nor anything else.
        assert_eq!(parse_record("1 2\n/sys/fs/cgroup/x/job-0000abcd\n").1, None);
        assert_eq!(parse_record("garbage").0, None);
    }

    #[test]
    fn a_warm_cgroup_names_its_daemon() {
        assert_eq!(
            daemon_of_cgroup("warm-1f-a0-3"),
            Some(ConductorId {
                pid: 0x1f,
                start_time: 0xa0
            })
        );
        assert_eq!(daemon_of_cgroup("warm-1f-3"), None);
        assert_eq!(daemon_of_cgroup("job-0000abcd"), None);
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let dir = std::env::temp_dir().join(format!("warm-rec-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("s1.rec");
        let id = ConductorId {
            pid: 7,
            start_time: 9,
        };
        let cgroup = Path::new("/c/warm-a-1");
        write_record(&path, Some(id), Some(cgroup)).expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(parse_record(&text), (Some(id), Some(cgroup.to_owned())));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
