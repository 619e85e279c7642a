//! Deterministic tests of the job actor against a fake conductor: tokio's clock is paused (it
//! jumps to the next timer whenever every task waits), and the store runs in place, so the
//! ladder's timers, heartbeats and reconnects are exercised without a real wait.
//!
//! The "conductor" process is a `sleep` in its own session (ignoring SIGUSR1 and SIGTERM), which
//! the supervision watches and kills like a real one; the fake conductor speaks the protocol on
//! the job's socket. The tests run one at a time, in a re-run of the test binary of their own
//! ([`job_actor_tests_in_their_own_process`]): a session-mode kill also takes the supervisor's
//! unregistered children, which other tests' children would be.

use super::{Jobs, JobsConfig, Launcher, Order, OrderError};
use crate::board::lease::LeaseClock;
use crate::containment::Containment;
use crate::process::{self, WorkerCommand};
use crate::state_dir::StateDir;
use crate::store::{Store, StoreHandle};
use shared::ids::JobId;
use shared::protocol::PROTOCOL_VERSION;
use shared::protocol::codec::{read_frame, write_frame};
use shared::protocol::conductor::{
    ConductorHello, FromConductor, JobEvent, Phase, Report, StepOutcome, ToConductor,
};
use shared::spec::JobSpec;
use shared::state::JobState;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// Set (in a re-run of this test binary) to run the actor tests for real.
const OWN_PROCESS: &str = "SUPERVISOR_TEST_JOB_ACTOR";

/// The actor tests run in a process of their own, one at a time.
#[test]
fn job_actor_tests_in_their_own_process() {
    crate::test_support::run_in_own_process("job::tests::actor_", false, OWN_PROCESS);
}

/// Whether this process runs the actor tests (see [`OWN_PROCESS`]).
fn in_own_process() -> bool {
    crate::test_support::in_own_process(OWN_PROCESS)
}

/// Longer than any test: a wait that reaches it is a failure, not a hang.
const NEVER: Duration = Duration::from_secs(6 * 3600);

const SPEC: &str = r#"
cancel_timeout = "5s"
term_grace = "1s"
heartbeat_timeout = "30s"
[[task]]
name = "a"
run = "true"
revert = "true"
[[task]]
name = "b"
run = "true"
revert = "true"
"#;

struct Harness {
    dir: PathBuf,
    jobs: Jobs,
    id: JobId,
    socket: PathBuf,
    conductor: std::process::Child,
    events: tokio::sync::broadcast::Receiver<shared::protocol::client::Event>,
}

impl Harness {
    /// A running job whose recorded conductor is a `sleep` in its own session.
    fn new(spec: &str) -> Self {
        Self::with_lease(spec, None)
    }

    /// [`Harness::new`] for a daemon on a job board whose lease `lease` tells.
    fn with_lease(spec: &str, lease: Option<watch::Receiver<LeaseClock>>) -> Self {
        // The fake conductor answers from this process for the stand-in `sleep`.
        crate::session::TRUST_OWN_PROCESS_IN_TESTS.store(true, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!(
            "actor-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos() ^ u128::from(rand_u32())
        ));
        let state_dir = StateDir::resolve(Some(dir.clone())).expect("state dir");
        state_dir.create().expect("create state dir");
        let store = Store::open(&dir).expect("store");
        let spec = JobSpec::parse(spec, "t.toml", "t").expect("spec");
        let id = store.create_job(&spec, "t.toml", None).expect("create");
        store
            .transition_job(&id, &[JobState::Pending], JobState::Running, None)
            .expect("running");
        // Like a real conductor, it survives the SIGUSR1 nudge that comes with a cancel.
        let conductor = std::process::Command::new("setsid")
            .args(["sh", "-c", "trap '' USR1 TERM; exec sleep 1000"])
            .spawn()
            .expect("spawn the stand-in conductor");
        let pid = i32::try_from(conductor.id()).expect("pid");
        wait_ignoring_usr1(pid);
        let start = wait_start_time(pid);
        let socket = state_dir.socket(&id);
        store
            .set_conductor(&id, pid, start, &socket, process::own_supervisor_id())
            .expect("set conductor");
        let jobs = Jobs::new(JobsConfig {
            store: StoreHandle::in_place(store),
            launcher: Launcher {
                state_dir,
                worker: WorkerCommand {
                    program: "/bin/false".into(),
                    leading_args: Vec::new(),
                },
                containment: Containment::Session {
                    reason: "test".into(),
                },
                warm: None,
            },
            observer: None,
            hooks: crate::job::DaemonHooks::default(),
            lease,
            board: None,
            events_kept: 4096,
        });
        let events = jobs.subscribe();
        Self {
            dir,
            jobs,
            id,
            socket,
            conductor,
            events,
        }
    }

    fn listen(&self) -> UnixListener {
        UnixListener::bind(&self.socket).expect("bind the job socket")
    }

    /// Adopts the job and accepts the supervisor's first connection.
    async fn attach(&self) -> FakeConductor {
        self.attach_speaking(PROTOCOL_VERSION).await
    }

    /// [`Harness::attach`], the fake conductor answering protocol `version`.
    async fn attach_speaking(&self, version: u32) -> FakeConductor {
        let listener = self.listen();
        self.adopt().await;
        FakeConductor::accept_speaking(listener, self, version).await
    }

    async fn adopt(&self) {
        self.jobs.ask(&self.id, Order::Adopt).await.expect("adopt");
    }

    /// Waits (in paused time) until the job's state is published as `state`.
    async fn wait_state(&mut self, state: JobState) {
        let deadline = Instant::now() + NEVER;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("job never became {state}"))
                .expect("events");
            if event.job == self.id && event.task.is_none() && event.state == state.as_str() {
                return;
            }
        }
    }

    async fn job(&self) -> crate::store::JobRow {
        let id = self.id.clone();
        self.jobs
            .store()
            .call(move |s| s.job(&id))
            .await
            .expect("job")
    }

    /// The names of the job's pending reverts.
    async fn pending_reverts(&self) -> Vec<String> {
        let id = self.id.clone();
        let tasks = self
            .jobs
            .store()
            .call(move |s| s.tasks(&id))
            .await
            .expect("tasks");
        crate::store::pending_reverts(&tasks)
            .into_iter()
            .map(|t| t.name)
            .collect()
    }

    /// The stand-in conductor exits, as a real one does after its end is acknowledged.
    fn conductor_exits(&mut self) {
        let _ = self.conductor.kill();
        let _ = self.conductor.wait();
    }

    fn conductor_is_gone(&mut self) -> bool {
        matches!(self.conductor.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.conductor.kill();
        let _ = self.conductor.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_u32() -> u32 {
    let mut bytes = [0u8; 4];
    // SAFETY: getrandom writes at most 4 bytes into the buffer we own.
    unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), 4, 0) };
    u32::from_ne_bytes(bytes)
}

/// The start time of a process that was just spawned (its `/proc` entry may lag an instant).
fn wait_start_time(pid: i32) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(start) = process::start_time(pid) {
            return start;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no /proc entry for {pid}"
        );
        std::thread::yield_now();
    }
}

/// Waits until the stand-in conductor ignores SIGUSR1 (its shell ran `trap`).
fn wait_ignoring_usr1(pid: i32) {
    let usr1_bit = 1u64 << (libc::SIGUSR1 - 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let ignored = status
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .unwrap_or(0);
        if ignored & usr1_bit != 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stand-in never trapped SIGUSR1"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The conductor's end of one connection.
struct FakeConductor {
    stream: UnixStream,
    seq: u64,
    /// Kept open: the supervision may connect again.
    _listener: UnixListener,
}

impl FakeConductor {
    /// Accepts the supervisor's connection and answers its hello.
    async fn accept(listener: UnixListener, h: &Harness) -> Self {
        Self::accept_speaking(listener, h, PROTOCOL_VERSION).await
    }

    /// [`FakeConductor::accept`], answering protocol `version`. An older version's answer
    /// makes the supervisor connect again announcing it: the second connection is the one
    /// kept.
    async fn accept_speaking(listener: UnixListener, h: &Harness, version: u32) -> Self {
        let first = Self::answer_hello(listener, h, version).await;
        if version == PROTOCOL_VERSION {
            return first;
        }
        Self::answer_hello(first._listener, h, version).await
    }

    /// Accepts one connection and answers its hello in `version`.
    async fn answer_hello(listener: UnixListener, h: &Harness, version: u32) -> Self {
        let (mut stream, _) = tokio::time::timeout(NEVER, listener.accept())
            .await
            .expect("the supervisor never connected")
            .expect("accept");
        match read_frame::<ToConductor, _>(&mut stream).await {
            Ok(Some(ToConductor::Hello(hello))) => assert_eq!(hello.job_id, h.id),
            other => panic!("expected a hello, got {other:?}"),
        }
        let hello = ConductorHello {
            protocol_version: version,
            job_id: h.id.clone(),
            pid: h.conductor.id(),
            has_plan: true,
        };
        write_frame(&mut stream, &FromConductor::Hello(hello))
            .await
            .expect("hello");
        Self {
            stream,
            seq: 0,
            _listener: listener,
        }
    }

    /// Sends the next numbered report.
    async fn report(&mut self, event: JobEvent) -> u64 {
        self.seq += 1;
        let report = Report {
            seq: self.seq,
            event,
        };
        write_frame(&mut self.stream, &FromConductor::Report(report))
            .await
            .expect("report");
        self.seq
    }

    /// The next message from the supervisor.
    async fn next(&mut self) -> ToConductor {
        tokio::time::timeout(NEVER, read_frame::<ToConductor, _>(&mut self.stream))
            .await
            .expect("the supervisor said nothing")
            .expect("read")
            .expect("the supervisor closed the connection")
    }

    /// Sends a write-ahead report and waits for its acknowledgement.
    async fn write_ahead(&mut self, event: JobEvent) {
        let seq = self.report(event).await;
        match self.next().await {
            ToConductor::Ack { seq: acked } => assert!(acked >= seq, "ack {acked} < {seq}"),
            other => panic!("expected an ack, got {other:?}"),
        }
    }
}

fn starting(task: u32, phase: Phase) -> JobEvent {
    JobEvent::TaskStarting {
        task,
        phase,
        attempt: 1,
    }
}

fn finished(task: u32, phase: Phase, ok: bool) -> JobEvent {
    let outcome = if ok {
        StepOutcome::Success {
            result: String::new(),
        }
    } else {
        StepOutcome::Failure {
            reason: "cancelled".into(),
            cancelled: true,
            result: String::new(),
        }
    };
    JobEvent::TaskFinished {
        task,
        phase,
        outcome,
    }
}

#[tokio::test(start_paused = true)]
async fn actor_a_cancel_reaches_the_conductor_and_its_reverted_end_is_recorded() {
    if !in_own_process() {
        return;
    }
    let mut h = Harness::new(SPEC);
    let mut fake = h.attach().await;
    fake.write_ahead(starting(0, Phase::Execute)).await;
    h.jobs
        .ask(
            &h.id,
            Order::Cancel {
                timeout: None,
                reason: "test".into(),
                by: None,
            },
        )
        .await
        .expect("cancel");
    match fake.next().await {
        ToConductor::Cancel { reason } => assert_eq!(reason, "test"),
        other => panic!("expected the cancel, got {other:?}"),
    }
    assert_eq!(h.job().await.state, JobState::Cancelling);
    fake.report(finished(0, Phase::Execute, false)).await;
    fake.write_ahead(starting(0, Phase::Revert)).await;
    fake.report(finished(0, Phase::Revert, true)).await;
    fake.write_ahead(JobEvent::JobFinished {
        state: JobState::Cancelled,
    })
    .await;
    h.conductor_exits();
    h.wait_state(JobState::Cancelled).await;
    assert_eq!(h.job().await.state, JobState::Cancelled);
}

/// How long the conductor may run steps, from a fence it received.
fn fence_ms(message: ToConductor) -> u64 {
    match message {
        ToConductor::Fence { run_for_ms } => run_for_ms,
        other => panic!("expected a fence, got {other:?}"),
    }
}

/// Issue 11, rule 2: on a board the actor delegates its daemon's lease to the conductor (at
/// the connection and at each renewal: until `t_r + lease*7/10`), and a conductor that
/// reports it fenced itself ends the job `killed`, its reverts skipped, with its reason.
#[tokio::test(start_paused = true)]
async fn actor_the_lease_is_delegated_and_a_fenced_conductor_ends_the_job_killed() {
    if !in_own_process() {
        return;
    }
    let lease = Duration::from_secs(10);
    let renewals = watch::channel(LeaseClock::new(lease, std::time::Instant::now())).0;
    let mut h = Harness::with_lease(SPEC, Some(renewals.subscribe()));
    let mut fake = h.attach().await;
    // The monotonic clock runs for real here (tokio's is paused): a little less than 7s.
    let first = fence_ms(fake.next().await);
    assert!((6000..=7000).contains(&first), "{first}");
    fake.write_ahead(starting(0, Phase::Execute)).await;
    // A renewal sent later: a fence that reaches further.
    let sent = std::time::Instant::now() + Duration::from_secs(2);
    renewals.send_modify(|clock| clock.renewed(sent));
    let second = fence_ms(fake.next().await);
    assert!(second > first, "{second} after {first}");
    fake.write_ahead(JobEvent::Fenced {
        reason: "fenced: supervisor silent".into(),
    })
    .await;
    h.conductor_exits();
    h.wait_state(JobState::Killed).await;
    let job = h.job().await;
    assert_eq!(job.reason.as_deref(), Some("fenced: supervisor silent"));
    assert_eq!(h.pending_reverts().await, ["a"]);
}

/// A version 4 conductor cannot hold a fence: it is never sent one (the actor logs a WARN),
/// and everything else goes on as before.
#[tokio::test(start_paused = true)]
async fn actor_a_version_4_conductor_gets_no_fence() {
    if !in_own_process() {
        return;
    }
    let lease = Duration::from_secs(10);
    let renewals = watch::channel(LeaseClock::new(lease, std::time::Instant::now())).0;
    let h = Harness::with_lease(SPEC, Some(renewals.subscribe()));
    let mut fake = h.attach_speaking(4).await;
    renewals.send_modify(|clock| clock.renewed(std::time::Instant::now()));
    // The next frames are the acknowledgements, not fences.
    fake.write_ahead(starting(0, Phase::Execute)).await;
    fake.report(finished(0, Phase::Execute, true)).await;
    fake.write_ahead(starting(1, Phase::Execute)).await;
}

#[tokio::test(start_paused = true)]
async fn actor_the_kill_timer_fires_at_cancel_timeout_when_the_conductor_ignores_the_cancel() {
    if !in_own_process() {
        return;
    }
    let mut h = Harness::new(SPEC);
    let mut fake = h.attach().await;
    fake.write_ahead(starting(0, Phase::Execute)).await;
    let asked = Instant::now();
    let cancel = Order::Cancel {
        timeout: None,
        reason: "test".into(),
        by: None,
    };
    h.jobs.ask(&h.id, cancel).await.expect("cancel");
    h.wait_state(JobState::Killed).await;
    assert!(
        asked.elapsed() >= Duration::from_secs(5),
        "killed before cancel_timeout"
    );
    assert!(h.conductor_is_gone(), "the conductor outlived the kill");
    let job = h.job().await;
    assert_eq!(job.reason.as_deref(), Some("cancel timeout expired"));
    assert_eq!(h.pending_reverts().await, ["a"]);
}

#[tokio::test(start_paused = true)]
async fn actor_a_kill_order_ends_the_job_at_once_and_a_second_one_is_refused() {
    if !in_own_process() {
        return;
    }
    let mut h = Harness::new(SPEC);
    let mut fake = h.attach().await;
    fake.write_ahead(starting(0, Phase::Execute)).await;
    let asked = Instant::now();
    let kill = || Order::Kill {
        reason: "kill requested".into(),
        by: None,
    };
    h.jobs.ask(&h.id, kill()).await.expect("kill");
    h.wait_state(JobState::Killed).await;
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "the kill waited for a timer"
    );
    assert!(h.conductor_is_gone(), "the conductor outlived the kill");
    match h.jobs.ask(&h.id, kill()).await {
        Err(OrderError::WrongState(message)) => assert!(message.contains("killed"), "{message}"),
        other => panic!("a second kill must be refused, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn actor_start_revert_and_resume_are_refused_while_a_conductor_lives() {
    if !in_own_process() {
        return;
    }
    let h = Harness::new(SPEC);
    let _fake = h.attach().await;
    let reason = || "test".to_owned();
    for order in [
        Order::Start,
        Order::Revert {
            reason: reason(),
            by: None,
        },
        Order::Resume {
            reason: reason(),
            by: None,
            revert_interrupted: true,
        },
    ] {
        match h.jobs.ask(&h.id, order.clone()).await {
            Err(OrderError::WrongState(_)) => {}
            other => panic!("{order:?} during a supervision must be refused, got {other:?}"),
        }
    }
    assert_eq!(h.job().await.state, JobState::Running);
}

#[tokio::test(start_paused = true)]
async fn actor_a_conductor_unreachable_at_reattach_is_retried_with_backoff_until_it_answers() {
    if !in_own_process() {
        return;
    }
    let h = Harness::new(SPEC);
    // No socket yet: every connection attempt fails.
    h.adopt().await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let listener = h.listen();
    let bound = Instant::now();
    let _fake = FakeConductor::accept(listener, &h).await;
    assert!(
        bound.elapsed() <= super::ladder::RECONNECT_MAX,
        "reconnected {:?} after the conductor became reachable",
        bound.elapsed()
    );
    assert_eq!(h.job().await.state, JobState::Running);
}

#[tokio::test(start_paused = true)]
async fn actor_a_silent_conductor_is_marked_unresponsive_then_responsive_again() {
    if !in_own_process() {
        return;
    }
    let h = Harness::new(SPEC);
    let mut fake = h.attach().await;
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert!(
        h.job().await.unresponsive_ms.is_some(),
        "silence not noticed"
    );
    write_frame(&mut fake.stream, &FromConductor::Heartbeat)
        .await
        .expect("heartbeat");
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.job().await.unresponsive_ms.is_some() {
        assert!(Instant::now() < deadline, "heartbeat not noticed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn actor_a_conductor_that_dies_without_an_end_leaves_the_job_crashed() {
    if !in_own_process() {
        return;
    }
    let mut h = Harness::new(SPEC);
    let mut fake = h.attach().await;
    fake.write_ahead(starting(0, Phase::Execute)).await;
    h.conductor_exits();
    h.wait_state(JobState::Crashed).await;
    assert_eq!(h.job().await.state, JobState::Crashed);
}

#[tokio::test(start_paused = true)]
async fn actor_a_failure_revert_is_bounded_by_the_kill_timer() {
    if !in_own_process() {
        return;
    }
    let h = Harness::new(SPEC);
    let mut fake = h.attach().await;
    fake.write_ahead(starting(0, Phase::Execute)).await;
    fake.report(finished(0, Phase::Execute, true)).await;
    let began = Instant::now();
    // The revert hangs (and the conductor keeps its heartbeats going).
    fake.write_ahead(starting(0, Phase::Revert)).await;
    let mut events = h.jobs.subscribe();
    loop {
        tokio::select! {
            event = events.recv() => {
                let event = event.expect("events");
                if event.job == h.id && event.task.is_none() && event.state == "killed" {
                    break;
                }
            }
            () = tokio::time::sleep(Duration::from_secs(10)) => {
                write_frame(&mut fake.stream, &FromConductor::Heartbeat).await.expect("heartbeat");
            }
        }
        assert!(began.elapsed() < NEVER, "never killed");
    }
    // Two tasks, each 5 s of revert timeout plus 1 s of grace, plus the slack.
    assert!(
        began.elapsed() >= Duration::from_secs(12),
        "killed too early: {:?}",
        began.elapsed()
    );
    assert_eq!(
        h.job().await.reason.as_deref(),
        Some("revert timeout expired")
    );
}

#[tokio::test(start_paused = true)]
async fn actor_a_cancel_timeout_not_longer_than_term_grace_is_refused() {
    if !in_own_process() {
        return;
    }
    let h = Harness::new(SPEC);
    let _fake = h.attach().await;
    let cancel = Order::Cancel {
        timeout: Some(Duration::from_millis(500)),
        reason: "test".into(),
        by: None,
    };
    match h.jobs.ask(&h.id, cancel).await {
        Err(OrderError::Invalid(message)) => assert!(message.contains("term_grace"), "{message}"),
        other => panic!("a cancel timeout under term_grace must be refused, got {other:?}"),
    }
    assert_eq!(h.job().await.state, JobState::Running);
}

/// Issue 13: a paused job is never marked unresponsive (its conductor is frozen on purpose),
/// and its heartbeat watch counts again from `continue`.
#[tokio::test(start_paused = true)]
async fn actor_a_paused_job_is_never_marked_unresponsive() {
    if !in_own_process() {
        return;
    }
    let h = Harness::new(SPEC);
    let _fake = h.attach().await;
    h.jobs
        .ask(&h.id, Order::Pause { by: None })
        .await
        .expect("pause");
    assert!(h.job().await.paused_ms.is_some());
    match h.jobs.ask(&h.id, Order::Pause { by: None }).await {
        Err(OrderError::WrongState(message)) => assert!(message.contains("paused"), "{message}"),
        other => panic!("a second pause must be refused, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_secs(300)).await;
    let job = h.job().await;
    assert!(
        job.unresponsive_ms.is_none(),
        "a paused job was marked unresponsive"
    );
    assert_eq!(job.state, JobState::Running);
    h.jobs
        .ask(&h.id, Order::Continue { by: None })
        .await
        .expect("continue");
    assert!(h.job().await.paused_ms.is_none());
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        h.job().await.unresponsive_ms.is_none(),
        "the heartbeat watch did not restart at continue"
    );
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert!(
        h.job().await.unresponsive_ms.is_some(),
        "silence after continue not noticed"
    );
}

/// On a job board, a paused conductor is given the longest fence before it freezes (frozen,
/// it runs nothing, and it would find a short fence passed the instant it thaws), no fence at
/// the renewals while frozen, and a fresh one before it thaws.
#[tokio::test(start_paused = true)]
async fn actor_a_paused_conductor_holds_the_longest_fence_and_gets_a_fresh_one_to_thaw() {
    if !in_own_process() {
        return;
    }
    let lease = Duration::from_secs(10);
    let renewals = watch::channel(LeaseClock::new(lease, std::time::Instant::now())).0;
    let h = Harness::with_lease(SPEC, Some(renewals.subscribe()));
    let mut fake = h.attach().await;
    fence_ms(fake.next().await);
    fake.write_ahead(starting(0, Phase::Execute)).await;
    h.jobs
        .ask(&h.id, Order::Pause { by: None })
        .await
        .expect("pause");
    assert_eq!(
        fence_ms(fake.next().await),
        shared::protocol::conductor::MAX_FENCE_MS
    );
    renewals.send_modify(|clock| clock.renewed(std::time::Instant::now()));
    // (Paused time: the actor takes the renewal up meanwhile, no real wait.)
    tokio::time::sleep(Duration::from_secs(1)).await;
    h.jobs
        .ask(&h.id, Order::Continue { by: None })
        .await
        .expect("continue");
    // Nothing at the renewal while frozen: the next frame is the fresh fence.
    let fresh = fence_ms(fake.next().await);
    assert!((6000..=7000).contains(&fresh), "{fresh}");
}

/// Reports nobody waits for are held a little and then applied and acknowledged; a write-ahead
/// takes them along at once (one store call for a short step).
#[tokio::test(start_paused = true)]
async fn actor_reports_nobody_waits_for_are_held_then_applied_or_taken_along() {
    if !in_own_process() {
        return;
    }
    let h = Harness::new(SPEC);
    let mut fake = h.attach().await;
    fake.write_ahead(starting(0, Phase::Execute)).await;
    let sent = tokio::time::Instant::now();
    let seq = fake.report(finished(0, Phase::Execute, true)).await;
    match fake.next().await {
        ToConductor::Ack { seq: acked } => assert_eq!(acked, seq),
        other => panic!("expected an ack, got {other:?}"),
    }
    assert!(
        sent.elapsed() >= super::supervise::HOLD_REPORTS,
        "acknowledged without the hold"
    );
    let id = h.id.clone();
    let tasks = h.jobs.store().call(move |s| s.tasks(&id)).await;
    assert_eq!(
        tasks.expect("tasks")[0].state,
        shared::state::TaskState::Success
    );

    let h2 = Harness::new(SPEC);
    let mut fake = h2.attach().await;
    fake.write_ahead(starting(0, Phase::Execute)).await;
    fake.report(finished(0, Phase::Execute, true)).await;
    let sent = tokio::time::Instant::now();
    fake.write_ahead(starting(1, Phase::Execute)).await;
    assert!(
        sent.elapsed() < super::supervise::HOLD_REPORTS,
        "a write-ahead waited for the hold"
    );
    let id = h2.id.clone();
    let tasks = h2.jobs.store().call(move |s| s.tasks(&id)).await;
    let states: Vec<_> = tasks.expect("tasks").iter().map(|t| t.state).collect();
    assert_eq!(
        states,
        [
            shared::state::TaskState::Success,
            shared::state::TaskState::Running
        ]
    );
}
