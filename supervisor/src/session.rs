//! The supervisor's end of a job socket: connect, handshake (agreeing on the protocol version,
//! see [`shared::protocol`]), authenticate the answer, then frames.
//!
//! Authentication (ARCHITECTURE.md, Security): the job's listening socket is held by its
//! conductor, and any process that ever held a copy of it could accept our connection, so the
//! socket proves nothing (nor does `SO_PEERCRED` on this, the connecting, side: it names whoever
//! called `listen()`). The conductor's hello is therefore read with `recvmsg` and its
//! `SCM_CREDENTIALS`: the kernel checks the pid it carries (only a process with
//! `CAP_SYS_ADMIN` may claim another), and the pid must be the job's recorded conductor with
//! the recorded start time. Anything else is refused at WARN and the connection dropped.

use crate::process::ConductorId;
use anyhow::{Context, bail};
use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg, setsockopt, sockopt,
};
use shared::ids::JobId;
use shared::protocol::codec::{FrameBuffer, FrameError, MAX_FRAME_LEN, decode_body, write_frame};
use shared::protocol::conductor::{
    ConductorHello, FromConductor, JobPlan, SupervisorHello, ToConductor,
};
use shared::protocol::{PROTOCOL_VERSION, negotiate, supported_versions};
use std::io::IoSliceMut;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// How long the conductor has to answer the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A live connection to one conductor.
pub struct ConductorLink {
    pub hello: ConductorHello,
    /// The protocol version of this connection: the lower of the two ends'.
    pub version: u32,
    writer: OwnedWriteHalf,
    /// Frames are read here, in the caller's task, without a task and a channel of their own:
    /// every live job has a link (ARCHITECTURE.md, Bounds). Reads are cancel-safe, so the
    /// supervision can wait for the next frame in a `select!`.
    reader: OwnedReadHalf,
    frames: FrameBuffer,
    /// The connection ended (its end of stream, or an error already returned).
    ended: bool,
}

impl ConductorLink {
    /// Connects to the conductor of `job_id` listening at `socket` and handshakes; the answer
    /// must come from `conductor` (kernel-checked pid, and its start time). A conductor of an
    /// older version answers with its own and (version 1) closes the connection, so this
    /// connects once more announcing that version.
    pub async fn connect(
        socket: &Path,
        job_id: &JobId,
        conductor: ConductorId,
    ) -> anyhow::Result<Self> {
        let link = Self::connect_speaking(socket, job_id, conductor, PROTOCOL_VERSION).await?;
        if link.version == PROTOCOL_VERSION {
            return Ok(link);
        }
        let version = link.version;
        drop(link);
        tracing::info!(
            protocol_version = version,
            "the conductor speaks an older protocol; connecting again in it"
        );
        let link = Self::connect_speaking(socket, job_id, conductor, version).await?;
        if link.version != version {
            bail!(
                "the conductor at {} answered version {} after {version}",
                socket.display(),
                link.version
            );
        }
        Ok(link)
    }

    /// One connection and handshake, announcing protocol `announce`.
    async fn connect_speaking(
        socket: &Path,
        job_id: &JobId,
        conductor: ConductorId,
        announce: u32,
    ) -> anyhow::Result<Self> {
        let mut stream = UnixStream::connect(socket)
            .await
            .with_context(|| format!("cannot connect to the conductor at {}", socket.display()))?;
        // Before our hello: the peer answers only after reading it, and the kernel attaches
        // credentials to what it sends from then on.
        setsockopt(&stream, sockopt::PassCred, &true)
            .context("cannot ask for the conductor's credentials (SO_PASSCRED)")?;
        let hello = SupervisorHello {
            protocol_version: announce,
            job_id: job_id.clone(),
        };
        write_frame(&mut stream, &ToConductor::Hello(hello)).await?;
        let (answer, sender) =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, read_credentialed_frame(&mut stream))
                .await
                .context("the conductor did not answer the handshake in time")?
                .context("handshake with the conductor failed")?;
        let hello = match answer {
            FromConductor::Hello(hello) => hello,
            other => bail!("expected the conductor's hello, got {other:?}"),
        };
        authenticate(socket, &sender, hello.pid, conductor)?;
        let (reader, writer) = stream.into_split();
        let Some(version) = negotiate(hello.protocol_version).map(|v| v.min(announce)) else {
            bail!(
                "protocol version mismatch: the conductor speaks {}, this supervisor {} (is the conductor-worker binary from another build?)",
                hello.protocol_version,
                supported_versions()
            );
        };
        if hello.job_id != *job_id {
            bail!(
                "the conductor at {} runs job {}, not {job_id}",
                socket.display(),
                hello.job_id
            );
        }
        Ok(Self {
            hello,
            version,
            writer,
            reader,
            frames: FrameBuffer::default(),
            ended: false,
        })
    }

    /// Sends one message, encoded in the connection's version.
    pub async fn send(&mut self, message: &ToConductor) -> Result<(), FrameError> {
        tracing::debug!(?message, "to conductor");
        let frame = message.encode(self.version)?;
        self.writer.write_all(&frame).await.map_err(FrameError::Io)
    }

    /// Sends the job's plan to a conductor that holds none. From version 2, each prior result
    /// goes in a frame of its own before `Start`, so that no frame has to carry them all; a
    /// version 1 conductor gets them inline.
    pub async fn send_plan(&mut self, mut plan: JobPlan) -> Result<(), FrameError> {
        if self.version >= 2 {
            for (task, result) in plan.take_prior_results() {
                self.send(&ToConductor::PriorResult { task, result })
                    .await?;
            }
        }
        self.send(&ToConductor::Start(Box::new(plan))).await
    }

    /// The next frame; `None` once the connection ended (cleanly or not: an error is returned
    /// once, then `None`). Cancel-safe: a frame half read when the future is dropped stays in
    /// the buffer for the next call.
    pub async fn next(&mut self) -> Option<Result<FromConductor, FrameError>> {
        loop {
            if self.ended {
                return None;
            }
            match self.frames.take(decode_body::<FromConductor>) {
                Ok(Some(frame)) => return Some(Ok(frame)),
                Ok(None) => {}
                Err(err) => return self.end_with(Err(err)),
            }
            match self.reader.read_buf(self.frames.room()).await {
                Ok(0) => return self.end_with(self.frames.at_end()),
                Ok(_) => {}
                Err(err) => return self.end_with(Err(FrameError::Io(err))),
            }
        }
    }

    /// A frame already received (in the buffer or the socket's), without waiting.
    pub fn try_next(&mut self) -> Option<FromConductor> {
        while !self.ended {
            if let Ok(Some(frame)) = self.frames.take(decode_body::<FromConductor>) {
                return Some(frame);
            }
            match self.reader.try_read_buf(self.frames.room()) {
                Ok(read) if read > 0 => {}
                // Nothing more now, the end, or an error: `next` reports the last two.
                _ => return None,
            }
        }
        None
    }

    /// Marks the connection ended; what `next` returns for its end (`Ok`: a clean end).
    fn end_with(
        &mut self,
        end: Result<(), FrameError>,
    ) -> Option<Result<FromConductor, FrameError>> {
        self.ended = true;
        end.err().map(Err)
    }
}

/// The job actor's unit tests (in a process of their own) answer for a stand-in conductor (a
/// `sleep`) from the test process itself, and set this to be let in. Test builds only.
#[cfg(test)]
pub(crate) static TRUST_OWN_PROCESS_IN_TESTS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Refuses an answer that does not come from the job's conductor: the kernel-checked sender
/// must be `expected`'s pid, and that pid must still be the process started at `expected`'s
/// start time (not a reused pid). Logged at WARN with the pids: it is an attack or a bug.
fn authenticate(
    socket: &Path,
    sender: &UnixCredentials,
    claimed: u32,
    expected: ConductorId,
) -> anyhow::Result<()> {
    let genuine = sender.pid() == expected.pid && ConductorId::of(sender.pid()) == Some(expected);
    #[cfg(test)]
    let genuine = genuine
        || (TRUST_OWN_PROCESS_IN_TESTS.load(std::sync::atomic::Ordering::SeqCst)
            && u32::try_from(sender.pid()).is_ok_and(|pid| pid == std::process::id()));
    if genuine {
        return Ok(());
    }
    tracing::warn!(
        socket = %socket.display(),
        sender_pid = sender.pid(),
        sender_uid = sender.uid(),
        claimed_pid = claimed,
        expected_pid = expected.pid,
        expected_start = expected.start_time,
        "refused a connection: the answer does not come from the job's conductor"
    );
    bail!(
        "refused: the process answering at {} is pid {} (claiming {claimed}), not the job's conductor (pid {})",
        socket.display(),
        sender.pid(),
        expected.pid
    )
}

/// Reads one frame whose first bytes carry the sender's `SCM_CREDENTIALS` (which the kernel
/// attaches once `SO_PASSCRED` is set); every chunk of the header must come from one sender.
async fn read_credentialed_frame(
    stream: &mut UnixStream,
) -> anyhow::Result<(FromConductor, UnixCredentials)> {
    let mut header = [0u8; 4];
    let mut got = 0;
    let mut sender: Option<UnixCredentials> = None;
    while got < header.len() {
        stream.readable().await?;
        let fd = stream.as_raw_fd();
        let chunk = stream.try_io(Interest::READABLE, || {
            recv_with_credentials(fd, &mut header[got..]).map_err(std::io::Error::from)
        });
        let (read, creds) = match chunk {
            Ok(chunk) => chunk,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err).context("cannot read the conductor's hello"),
        };
        if read == 0 {
            bail!("the conductor closed the connection during the handshake");
        }
        let Some(creds) = creds else {
            bail!("the conductor's hello carried no credentials");
        };
        if sender.is_some_and(|first| first != creds) {
            bail!("the conductor's hello came from two processes");
        }
        sender = Some(creds);
        got += read;
    }
    let sender = sender.context("INVARIANT: a header was read, with its credentials")?;
    let len = usize::try_from(u32::from_be_bytes(header)).unwrap_or(usize::MAX);
    if len > MAX_FRAME_LEN {
        bail!(FrameError::TooLarge { len });
    }
    let mut body = vec![0; len];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|_| FrameError::Truncated)?;
    Ok((decode_body(&body)?, sender))
}

/// One `recvmsg` into `buf`: the bytes read and the credentials that came with them.
fn recv_with_credentials(
    fd: std::os::fd::RawFd,
    buf: &mut [u8],
) -> nix::Result<(usize, Option<UnixCredentials>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(UnixCredentials);
    let message = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let creds = message.cmsgs()?.find_map(|cmsg| match cmsg {
        ControlMessageOwned::ScmCredentials(creds) => Some(creds),
        _ => None,
    });
    Ok((message.bytes, creds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::protocol::codec::decode_body;
    use shared::protocol::conductor::{PlanAction, PriorTask};
    use shared::spec::JobSpec;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixListener;

    /// A socket path of our own, short enough for `sun_path`; its directory goes on drop.
    struct SocketDir(std::path::PathBuf);

    impl SocketDir {
        fn new() -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "sv-sess-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).expect("temp dir");
            Self(dir)
        }

        fn socket(&self) -> std::path::PathBuf {
            self.0.join("s")
        }
    }

    impl Drop for SocketDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn job() -> JobId {
        JobId::from_random(0xabcd)
    }

    fn plan() -> JobPlan {
        let spec = JobSpec::parse(
            "[[task]]\nname = \"a\"\nrun = \"true\"\n[[task]]\nname = \"b\"\nrun = \"true\"\n",
            "j.toml",
            "j",
        )
        .expect("valid");
        let done = PriorTask {
            result: "r".repeat(1000),
            ..PriorTask::fresh()
        };
        JobPlan {
            job_id: job(),
            spec,
            action: PlanAction::Revert { order: vec![1, 0] },
            prior: vec![done.clone(), done],
        }
    }

    /// Reads one raw frame body.
    async fn body(stream: &mut UnixStream) -> Vec<u8> {
        let len = stream.read_u32().await.expect("header");
        let mut body = vec![0; usize::try_from(len).expect("fits")];
        stream.read_exact(&mut body).await.expect("body");
        body
    }

    /// Accepts one connection, answers the hello with `answer`; returns the stream and the
    /// version the supervisor announced.
    async fn accept_hello(listener: &UnixListener, answer: u32) -> (UnixStream, u32) {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let announced = match decode_body::<ToConductor>(&body(&mut stream).await) {
            Ok(ToConductor::Hello(hello)) => hello.protocol_version,
            other => panic!("expected a hello, got {other:?}"),
        };
        let hello = ConductorHello {
            protocol_version: answer,
            job_id: job(),
            pid: 1,
            has_plan: false,
        };
        write_frame(&mut stream, &FromConductor::Hello(hello))
            .await
            .expect("answer");
        (stream, announced)
    }

    /// This process: the fake conductors below are tasks of the test itself.
    fn me() -> ConductorId {
        crate::process::own_id().expect("own stat")
    }

    #[tokio::test]
    async fn an_answer_from_another_process_than_the_conductor_is_refused() {
        let dir = SocketDir::new();
        let listener = UnixListener::bind(dir.socket()).expect("bind");
        let conductor =
            tokio::spawn(async move { accept_hello(&listener, PROTOCOL_VERSION).await });
        let mut expected = me();
        expected.pid += 1;
        let err = ConductorLink::connect(&dir.socket(), &job(), expected)
            .await
            .err()
            .expect("refused");
        assert!(
            format!("{err:#}").contains("not the job's conductor"),
            "{err:#}"
        );
        drop(conductor.await);
        // The same pid with another start time (a reused pid) is refused too.
        let listener = UnixListener::bind(dir.socket().with_extension("2")).expect("bind");
        let conductor =
            tokio::spawn(async move { accept_hello(&listener, PROTOCOL_VERSION).await });
        let mut expected = me();
        expected.start_time += 1;
        let err = ConductorLink::connect(&dir.socket().with_extension("2"), &job(), expected)
            .await
            .err()
            .expect("refused");
        assert!(
            format!("{err:#}").contains("not the job's conductor"),
            "{err:#}"
        );
        drop(conductor.await);
    }

    #[tokio::test]
    async fn version_2_sends_each_prior_result_in_its_own_frame_before_the_plan() {
        let dir = SocketDir::new();
        let listener = UnixListener::bind(dir.socket()).expect("bind");
        let conductor = tokio::spawn(async move {
            let (mut stream, announced) = accept_hello(&listener, PROTOCOL_VERSION).await;
            let mut frames = Vec::new();
            for _ in 0..3 {
                frames.push(decode_body::<ToConductor>(&body(&mut stream).await).expect("v2"));
            }
            (announced, frames)
        });
        let mut link = ConductorLink::connect(&dir.socket(), &job(), me())
            .await
            .expect("connect");
        assert_eq!(link.version, PROTOCOL_VERSION);
        link.send_plan(plan()).await.expect("send");
        let (announced, frames) = conductor.await.expect("fake conductor");
        assert_eq!(announced, PROTOCOL_VERSION);
        let mut rebuilt = None;
        let mut results = Vec::new();
        for frame in frames {
            match frame {
                ToConductor::PriorResult { task, result } => results.push((task, result)),
                ToConductor::Start(plan) if rebuilt.is_none() => rebuilt = Some(*plan),
                other => panic!("unexpected {other:?}"),
            }
        }
        let mut rebuilt = rebuilt.expect("a plan, last");
        assert!(rebuilt.prior.iter().all(|p| p.result.is_empty()));
        for (task, result) in results {
            assert!(rebuilt.put_prior_result(task, result));
        }
        assert_eq!(rebuilt, plan());
    }

    #[tokio::test]
    async fn a_version_1_conductor_is_reached_again_in_version_1_and_gets_the_plan_inline() {
        let dir = SocketDir::new();
        let listener = UnixListener::bind(dir.socket()).expect("bind");
        let conductor = tokio::spawn(async move {
            // As version 1 does: answer with its own version, and close on a mismatch.
            let (first, announced_first) = accept_hello(&listener, 1).await;
            drop(first);
            let (mut stream, announced) = accept_hello(&listener, 1).await;
            let start = ToConductor::decode_v1(&body(&mut stream).await).expect("v1");
            (announced_first, announced, start)
        });
        let mut link = ConductorLink::connect(&dir.socket(), &job(), me())
            .await
            .expect("connect");
        assert_eq!(link.version, 1);
        link.send_plan(plan()).await.expect("send");
        let (first, second, start) = conductor.await.expect("fake conductor");
        assert_eq!((first, second), (PROTOCOL_VERSION, 1));
        assert_eq!(start, ToConductor::Start(Box::new(plan())));
    }

    #[tokio::test]
    async fn a_conductor_older_than_supported_is_refused() {
        let dir = SocketDir::new();
        let listener = UnixListener::bind(dir.socket()).expect("bind");
        let conductor = tokio::spawn(async move { accept_hello(&listener, 0).await });
        let err = ConductorLink::connect(&dir.socket(), &job(), me())
            .await
            .err()
            .expect("refused");
        assert!(format!("{err:#}").contains("mismatch"), "{err:#}");
        drop(conductor.await);
    }
}
