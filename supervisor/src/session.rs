//! The supervisor's end of a job socket: connect, check the peer, handshake, then frames.

use anyhow::{Context, bail};
use shared::ids::JobId;
use shared::protocol::PROTOCOL_VERSION;
use shared::protocol::codec::{
    FrameError, FrameResult, read_frame, spawn_frame_reader, write_frame,
};
use shared::protocol::conductor::{ConductorHello, FromConductor, SupervisorHello, ToConductor};
use std::path::Path;
use std::time::Duration;
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long the conductor has to answer the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A live connection to one conductor.
pub struct ConductorLink {
    pub hello: ConductorHello,
    writer: OwnedWriteHalf,
    frames: mpsc::Receiver<FrameResult<FromConductor>>,
    reader: JoinHandle<()>,
}

impl ConductorLink {
    /// Connects to the conductor of `job_id` listening at `socket` and handshakes.
    pub async fn connect(socket: &Path, job_id: &JobId) -> anyhow::Result<Self> {
        let stream = UnixStream::connect(socket)
            .await
            .with_context(|| format!("cannot connect to the conductor at {}", socket.display()))?;
        let creds = stream
            .peer_cred()
            .context("cannot read the conductor's credentials")?;
        let ours = nix::unistd::geteuid().as_raw();
        if creds.uid() != ours && creds.uid() != 0 {
            bail!(
                "the process behind {} runs as uid {}, not {ours} or root",
                socket.display(),
                creds.uid()
            );
        }
        let (mut reader, mut writer) = stream.into_split();
        let hello = SupervisorHello {
            protocol_version: PROTOCOL_VERSION,
            job_id: job_id.clone(),
        };
        write_frame(&mut writer, &ToConductor::Hello(hello)).await?;
        let answer = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            read_frame::<FromConductor, _>(&mut reader),
        )
        .await
        .context("the conductor did not answer the handshake in time")?
        .context("handshake with the conductor failed")?;
        let hello = match answer {
            Some(FromConductor::Hello(hello)) => hello,
            Some(other) => bail!("expected the conductor's hello, got {other:?}"),
            None => bail!("the conductor closed the connection during the handshake"),
        };
        if hello.protocol_version != PROTOCOL_VERSION {
            bail!(
                "protocol version mismatch: the conductor speaks {}, this supervisor {PROTOCOL_VERSION} (is the conductor-worker binary from another build?)",
                hello.protocol_version
            );
        }
        if hello.job_id != *job_id {
            bail!(
                "the conductor at {} runs job {}, not {job_id}",
                socket.display(),
                hello.job_id
            );
        }
        let (frames, reader) = spawn_frame_reader::<FromConductor, _>(reader, 256);
        Ok(Self {
            hello,
            writer,
            frames,
            reader,
        })
    }

    pub async fn send(&mut self, message: &ToConductor) -> Result<(), FrameError> {
        tracing::debug!(?message, "to conductor");
        write_frame(&mut self.writer, message).await
    }

    /// The next frame; `None` once the connection ended (cleanly or not).
    pub async fn next(&mut self) -> Option<Result<FromConductor, FrameError>> {
        match self.frames.recv().await? {
            Ok(Some(frame)) => Some(Ok(frame)),
            Ok(None) => None,
            Err(err) => Some(Err(err)),
        }
    }

    /// A frame already received, without waiting.
    pub fn try_next(&mut self) -> Option<FromConductor> {
        match self.frames.try_recv() {
            Ok(Ok(Some(frame))) => Some(frame),
            _ => None,
        }
    }
}

impl Drop for ConductorLink {
    fn drop(&mut self) {
        self.reader.abort();
    }
}
