//! Frames: a `u32` big-endian length, then that many bytes of postcard. The one module that knows
//! the encoding, so it can be swapped.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Hard limit on a frame's body; a larger frame closes the connection.
pub const MAX_FRAME_LEN: usize = 1024 * 1024;

/// What can go wrong with a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {MAX_FRAME_LEN} bytes")]
    TooLarge { len: usize },
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("malformed frame: {0}")]
    Malformed(#[source] postcard::Error),
    #[error("i/o error on the socket: {0}")]
    Io(#[source] std::io::Error),
    #[error("{what} cannot be sent in protocol version {version}")]
    NotInVersion { what: &'static str, version: u32 },
}

/// Encodes one message as a whole frame (header included).
pub fn encode_frame<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let mut frame = postcard::to_extend(message, vec![0; 4]).map_err(FrameError::Malformed)?;
    let len = frame.len() - 4;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len });
    }
    let header = u32::try_from(len)
        .map_err(|_| FrameError::TooLarge { len })?
        .to_be_bytes();
    frame[..4].copy_from_slice(&header);
    Ok(frame)
}

/// The length of a message's frame body, without the limit: to check ahead that a message
/// fits, or by how much it does not.
pub fn encoded_len<T: Serialize>(message: &T) -> Result<usize, FrameError> {
    postcard::experimental::serialized_size(message).map_err(FrameError::Malformed)
}

/// Decodes a frame's body (without its header).
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    postcard::from_bytes(body).map_err(FrameError::Malformed)
}

/// Reads one frame. `Ok(None)` on a clean end of stream between frames.
pub async fn read_frame<T, R>(reader: &mut R) -> Result<Option<T>, FrameError>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    read_frame_with(reader, decode_body).await
}

/// A decoder of frame bodies, for messages whose layout depends on the negotiated version.
pub type Decoder<T> = fn(&[u8]) -> Result<T, FrameError>;

/// Reads one frame and decodes its body with `decode`. `Ok(None)` on a clean end of stream
/// between frames.
pub async fn read_frame_with<T, R>(
    reader: &mut R,
    decode: Decoder<T>,
) -> Result<Option<T>, FrameError>
where
    R: AsyncRead + Unpin,
{
    let mut header = [0u8; 4];
    let mut filled = 0;
    while filled < header.len() {
        let n = reader
            .read(&mut header[filled..])
            .await
            .map_err(FrameError::Io)?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        filled += n;
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len });
    }
    let mut body = vec![0u8; len];
    reader
        .read_exact(&mut body)
        .await
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
            _ => FrameError::Io(err),
        })?;
    decode(&body).map(Some)
}

/// Writes one message as a frame.
pub async fn write_frame<T, W>(writer: &mut W, message: &T) -> Result<(), FrameError>
where
    T: Serialize,
    W: AsyncWrite + Unpin,
{
    let frame = encode_frame(message)?;
    writer.write_all(&frame).await.map_err(FrameError::Io)
}

/// The bytes of a stream not yet cut into frames: the state of a cancel-safe frame reader that
/// needs no task of its own. Read into [`room`](Self::room) with a cancel-safe read (tokio's
/// `read_buf`: nothing is lost when a `select!` drops it), then [`take`](Self::take) frames.
/// It holds what one frame needs and gives a large buffer back after a large frame, so an idle
/// reader costs a few hundred bytes.
#[derive(Debug, Default)]
pub struct FrameBuffer {
    bytes: Vec<u8>,
}

/// What a [`FrameBuffer`] keeps allocated between frames.
const KEPT_CAPACITY: usize = 4096;

impl FrameBuffer {
    /// The vector to read into, with room reserved for the rest of the next frame (its header
    /// first, then its body as the header announces it, never more than [`MAX_FRAME_LEN`]).
    pub fn room(&mut self) -> &mut Vec<u8> {
        let wanted = match self.announced() {
            Some(len) if len <= MAX_FRAME_LEN => 4 + len,
            _ => 4,
        };
        let missing = wanted.saturating_sub(self.bytes.len()).max(1);
        self.bytes.reserve(missing);
        &mut self.bytes
    }

    /// The next whole frame's message, if the buffer holds one; an oversized header or a body
    /// that does not decode is an error (the connection is then to be dropped).
    pub fn take<T>(&mut self, decode: Decoder<T>) -> Result<Option<T>, FrameError> {
        let Some(len) = self.announced() else {
            return Ok(None);
        };
        if len > MAX_FRAME_LEN {
            return Err(FrameError::TooLarge { len });
        }
        if self.bytes.len() < 4 + len {
            return Ok(None);
        }
        let message = decode(&self.bytes[4..4 + len]);
        self.bytes.drain(..4 + len);
        if self.bytes.capacity() > KEPT_CAPACITY && self.bytes.len() <= KEPT_CAPACITY {
            self.bytes.shrink_to(KEPT_CAPACITY);
        }
        message.map(Some)
    }

    /// What the end of the stream means here: clean between frames, truncated inside one.
    pub fn at_end(&self) -> Result<(), FrameError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated)
        }
    }

    /// The body length the next header announces, once the header is whole.
    fn announced(&self) -> Option<usize> {
        let header: [u8; 4] = self.bytes.get(..4)?.try_into().ok()?;
        Some(usize::try_from(u32::from_be_bytes(header)).unwrap_or(usize::MAX))
    }
}

/// What a [`spawn_frame_reader`] delivers: a frame, the clean end (`Ok(None)`), or an error.
pub type FrameResult<T> = Result<Option<T>, FrameError>;

/// Reads frames in a task of their own and hands them over a channel: reading a frame is not
/// cancel-safe, so a `select!` loop must receive whole frames instead. The channel ends after
/// the end of the stream or the first error; abort the task to stop reading early.
pub fn spawn_frame_reader<T, R>(
    reader: R,
    capacity: usize,
) -> (
    tokio::sync::mpsc::Receiver<FrameResult<T>>,
    tokio::task::JoinHandle<()>,
)
where
    T: DeserializeOwned + Send + 'static,
    R: AsyncRead + Unpin + Send + 'static,
{
    spawn_frame_reader_with(reader, capacity, decode_body::<T>)
}

/// [`spawn_frame_reader`] with a decoder of its own (see [`read_frame_with`]).
pub fn spawn_frame_reader_with<T, R>(
    mut reader: R,
    capacity: usize,
    decode: Decoder<T>,
) -> (
    tokio::sync::mpsc::Receiver<FrameResult<T>>,
    tokio::task::JoinHandle<()>,
)
where
    T: Send + 'static,
    R: AsyncRead + Unpin + Send + 'static,
{
    let (tx, frames) = tokio::sync::mpsc::channel(capacity);
    let task = tokio::spawn(async move {
        loop {
            let frame = read_frame_with(&mut reader, decode).await;
            let end = !matches!(frame, Ok(Some(_)));
            if tx.send(frame).await.is_err() || end {
                return;
            }
        }
    });
    (frames, task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::conductor::{FromConductor, JobEvent, Phase, Report, Stream};

    fn sample() -> FromConductor {
        FromConductor::Report(Report {
            seq: 7,
            event: JobEvent::Output {
                task: 2,
                phase: Phase::Execute,
                stream: Stream::Stdout,
                line: "hello".into(),
            },
        })
    }

    #[tokio::test]
    async fn round_trip_through_a_stream() {
        let mut bytes = encode_frame(&sample()).expect("encode");
        bytes.extend(encode_frame(&sample()).expect("encode"));
        let mut reader = &bytes[..];
        for _ in 0..2 {
            let got: Option<FromConductor> = read_frame(&mut reader).await.expect("decode");
            assert_eq!(got, Some(sample()));
        }
        let end: Option<FromConductor> = read_frame(&mut reader).await.expect("clean end");
        assert_eq!(end, None);
    }

    #[tokio::test]
    async fn truncation_anywhere_is_an_error_not_a_message() {
        let bytes = encode_frame(&sample()).expect("encode");
        for cut in 1..bytes.len() {
            let mut reader = &bytes[..cut];
            let got: Result<Option<FromConductor>, _> = read_frame(&mut reader).await;
            assert!(
                matches!(got, Err(FrameError::Truncated)),
                "cut at {cut}: {got:?}"
            );
        }
    }

    #[tokio::test]
    async fn oversized_header_is_refused_before_reading_the_body() {
        let header = u32::try_from(MAX_FRAME_LEN + 1)
            .expect("fits")
            .to_be_bytes();
        let mut reader = &header[..];
        let got: Result<Option<FromConductor>, _> = read_frame(&mut reader).await;
        assert!(matches!(got, Err(FrameError::TooLarge { .. })), "{got:?}");
    }

    #[tokio::test]
    async fn garbage_is_malformed() {
        let mut bytes = 3u32.to_be_bytes().to_vec();
        bytes.extend([0xff, 0xff, 0xff]);
        let mut reader = &bytes[..];
        let got: Result<Option<FromConductor>, _> = read_frame(&mut reader).await;
        assert!(matches!(got, Err(FrameError::Malformed(_))), "{got:?}");
    }

    /// Feeds `bytes` to a [`FrameBuffer`] `step` bytes at a time, taking frames as they
    /// become whole.
    fn cut_into_frames(bytes: &[u8], step: usize) -> Result<Vec<FromConductor>, FrameError> {
        let mut buffer = FrameBuffer::default();
        let mut frames = Vec::new();
        for chunk in bytes.chunks(step) {
            buffer.room().extend_from_slice(chunk);
            while let Some(frame) = buffer.take(decode_body::<FromConductor>)? {
                frames.push(frame);
            }
        }
        buffer.at_end()?;
        Ok(frames)
    }

    #[test]
    fn a_frame_buffer_cuts_frames_whatever_the_reads() {
        let mut bytes = encode_frame(&sample()).expect("encode");
        bytes.extend(encode_frame(&FromConductor::Heartbeat).expect("encode"));
        bytes.extend(encode_frame(&sample()).expect("encode"));
        for step in 1..=bytes.len() {
            let frames = cut_into_frames(&bytes, step).expect("frames");
            assert_eq!(
                frames,
                vec![sample(), FromConductor::Heartbeat, sample()],
                "step {step}"
            );
        }
    }

    #[test]
    fn a_frame_buffer_ending_inside_a_frame_is_truncated() {
        let bytes = encode_frame(&sample()).expect("encode");
        for cut in 1..bytes.len() {
            let got = cut_into_frames(&bytes[..cut], 3);
            assert!(matches!(got, Err(FrameError::Truncated)), "cut at {cut}");
        }
    }

    #[test]
    fn a_frame_buffer_refuses_an_oversized_header_and_gives_back_a_large_buffer() {
        let mut buffer = FrameBuffer::default();
        let header = u32::try_from(MAX_FRAME_LEN + 1)
            .expect("fits")
            .to_be_bytes();
        buffer.room().extend_from_slice(&header);
        let got = buffer.take(decode_body::<FromConductor>);
        assert!(matches!(got, Err(FrameError::TooLarge { .. })), "{got:?}");

        let mut buffer = FrameBuffer::default();
        let big = output_of("x".repeat(100_000));
        buffer.room().extend(encode_frame(&big).expect("encode"));
        assert_eq!(
            buffer.take(decode_body::<FromConductor>).expect("frame"),
            Some(big)
        );
        assert!(buffer.room().capacity() <= KEPT_CAPACITY);
    }

    /// A report of one line of output.
    fn output_of(line: String) -> FromConductor {
        FromConductor::Report(Report {
            seq: 1,
            event: JobEvent::Output {
                task: 0,
                phase: Phase::Execute,
                stream: Stream::Stdout,
                line,
            },
        })
    }

    #[test]
    fn oversized_message_is_refused_on_encode() {
        let big = output_of("x".repeat(MAX_FRAME_LEN + 1));
        assert!(matches!(
            encode_frame(&big),
            Err(FrameError::TooLarge { .. })
        ));
    }
}
