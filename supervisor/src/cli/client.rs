//! The CLI's end of the control socket.

use crate::daemon::control_socket;
use crate::state_dir::StateDir;
use shared::exit;
use shared::protocol::PROTOCOL_VERSION;
use shared::protocol::client::{ClientReply, ClientRequest, ErrorCode};
use shared::protocol::codec::{FrameResult, read_frame, spawn_frame_reader, write_frame};
use std::path::PathBuf;
use tokio::net::UnixStream;

/// A failed command: the message to print and the exit code.
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

pub type Outcome<T> = Result<T, Failure>;

/// A connection to the daemon that carries one request.
pub struct Client {
    stream: UnixStream,
    /// The protocol version both ends speak (the daemon's answer to the hello).
    version: u32,
}

impl Client {
    /// Connects and handshakes; "daemon not running" is its own exit code, with how to start it.
    pub async fn connect(state_dir: Option<PathBuf>) -> Outcome<Self> {
        let dir = StateDir::resolve(state_dir)
            .map_err(|e| Failure::new(exit::INVALID_INPUT, format!("{e:#}")))?;
        let path = control_socket(&dir);
        let mut stream = UnixStream::connect(&path).await.map_err(|err| {
            Failure::new(
                exit::DAEMON_NOT_RUNNING,
                format!(
                    "the daemon is not running ({}: {err}); start it with: supervisor daemon --state-dir {}",
                    path.display(),
                    dir.root().display()
                ),
            )
        })?;
        let internal = |e: shared::protocol::codec::FrameError| {
            Failure::new(exit::INTERNAL, format!("daemon connection: {e}"))
        };
        // A daemon that refuses us (another uid) answers and closes before reading our hello:
        // the write may then fail, but its answer is still there to read and to show.
        let hello = ClientRequest::Hello {
            protocol_version: PROTOCOL_VERSION,
        };
        let sent = write_frame(&mut stream, &hello).await;
        match (read_frame::<ClientReply, _>(&mut stream).await, sent) {
            (Ok(Some(ClientReply::Error { code, message })), _) => Err(failure(code, message)),
            (_, Err(err)) | (Err(err), Ok(())) => Err(internal(err)),
            (Ok(Some(ClientReply::Hello { protocol_version })), Ok(())) => Ok(Self {
                stream,
                version: protocol_version,
            }),
            (Ok(other), Ok(())) => Err(Failure::new(
                exit::INTERNAL,
                format!("unexpected answer from the daemon: {other:?}"),
            )),
        }
    }

    /// The protocol version both ends speak.
    pub const fn version(&self) -> u32 {
        self.version
    }

    pub async fn send(&mut self, request: &ClientRequest) -> Outcome<()> {
        write_frame(&mut self.stream, request)
            .await
            .map_err(|e| Failure::new(exit::INTERNAL, format!("daemon connection: {e}")))
    }

    /// The next reply; an error reply becomes a [`Failure`]; `None` when the daemon closed.
    pub async fn next(&mut self) -> Outcome<Option<ClientReply>> {
        match read_frame::<ClientReply, _>(&mut self.stream).await {
            Ok(Some(ClientReply::Error { code, message })) => Err(failure(code, message)),
            Ok(reply) => Ok(reply),
            Err(e) => Err(Failure::new(
                exit::INTERNAL,
                format!("daemon connection: {e}"),
            )),
        }
    }

    /// The replies from here on, read by a task of their own: unlike [`Client::next`],
    /// receiving one is cancel-safe (a timeout around it loses no frame).
    pub fn into_replies(self) -> Replies {
        let (frames, reader) = spawn_frame_reader::<ClientReply, _>(self.stream, 16);
        Replies { frames, reader }
    }

    /// Sends one request and returns its one reply.
    pub async fn call(state_dir: Option<PathBuf>, request: &ClientRequest) -> Outcome<ClientReply> {
        let mut client = Self::connect(state_dir).await?;
        client.send(request).await?;
        client
            .next()
            .await?
            .ok_or_else(|| Failure::new(exit::INTERNAL, "the daemon closed the connection"))
    }
}

/// A stream of replies (see [`Client::into_replies`]); the reading task ends with it.
pub struct Replies {
    frames: tokio::sync::mpsc::Receiver<FrameResult<ClientReply>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Replies {
    /// The next reply, as [`Client::next`] gives it; cancel-safe.
    pub async fn next(&mut self) -> Outcome<Option<ClientReply>> {
        match self.frames.recv().await {
            None | Some(Ok(None)) => Ok(None),
            Some(Ok(Some(ClientReply::Error { code, message }))) => Err(failure(code, message)),
            Some(Ok(Some(reply))) => Ok(Some(reply)),
            Some(Err(e)) => Err(Failure::new(
                exit::INTERNAL,
                format!("daemon connection: {e}"),
            )),
        }
    }
}

impl Drop for Replies {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn failure(code: ErrorCode, message: String) -> Failure {
    let exit_code = match code {
        ErrorCode::InvalidRequest => exit::INVALID_INPUT,
        ErrorCode::UnknownJob => exit::NO_SUCH_JOB,
        ErrorCode::WrongState | ErrorCode::Unavailable => exit::REFUSED,
        ErrorCode::Internal => exit::INTERNAL,
        ErrorCode::PermissionDenied => exit::PERMISSION_DENIED,
        ErrorCode::NoBoard => exit::NO_BOARD,
        ErrorCode::HostLost => exit::HOST_LOST,
    };
    Failure::new(exit_code, message)
}
