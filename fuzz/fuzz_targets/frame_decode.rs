//! Arbitrary bytes through the frame codec, for every message type: `decode_body` on the raw
//! input, and `read_frame` over it (handed out in chunks, so that headers arrive in pieces)
//! until a clean end or an error. Must never panic, and must agree with a plain model of the
//! format: `u32` big-endian length, `TooLarge` above `MAX_FRAME_LEN`, `Truncated` on a short
//! header or body, otherwise exactly what `decode_body` says of the body. Whatever decodes must
//! encode again and decode to the same value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use shared::protocol::client::{ClientReply, ClientRequest};
use shared::protocol::codec::{FrameError, MAX_FRAME_LEN, decode_body, encode_frame, read_frame};
use shared::protocol::conductor::{FromConductor, ToConductor};
use std::fmt::Debug;
use std::future::Future;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, ReadBuf};

/// Polls a future that cannot wait (in-memory I/O) to completion.
fn now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(value) => value,
        Poll::Pending => panic!("in-memory I/O never waits"),
    }
}

/// Hands out its bytes at most `chunk` at a time.
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.chunk.min(buf.remaining()).min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        buf.put_slice(head);
        self.data = tail;
        Poll::Ready(Ok(()))
    }
}

fn re_encodes<T>(message: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let frame = encode_frame(message).expect("a decoded message encodes again");
    let again: T = decode_body(&frame[4..]).expect("a re-encoded message decodes");
    assert_eq!(&again, message);
}

fn check<T>(data: &[u8], chunk: usize)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    if let Ok(message) = decode_body::<T>(data) {
        re_encodes(&message);
    }

    let mut reader = Chunked { data, chunk };
    let mut rest = data;
    loop {
        let got = now(read_frame::<T, _>(&mut reader));
        // The model: what the next frame of `rest` must give.
        if rest.is_empty() {
            assert!(matches!(got, Ok(None)), "clean end expected: {got:?}");
            return;
        }
        let Some((header, after)) = rest.split_first_chunk::<4>() else {
            assert!(matches!(got, Err(FrameError::Truncated)), "{got:?}");
            return;
        };
        let len = u32::from_be_bytes(*header) as usize;
        if len > MAX_FRAME_LEN {
            assert!(
                matches!(got, Err(FrameError::TooLarge { len: l }) if l == len),
                "{got:?}"
            );
            return;
        }
        let Some((body, after)) = after.split_at_checked(len) else {
            assert!(matches!(got, Err(FrameError::Truncated)), "{got:?}");
            return;
        };
        match (decode_body::<T>(body), got) {
            (Ok(expected), Ok(Some(message))) => {
                assert_eq!(message, expected);
                re_encodes(&message);
            }
            (Err(FrameError::Malformed(_)), Err(FrameError::Malformed(_))) => return,
            (expected, got) => panic!("model says {expected:?}, read_frame says {got:?}"),
        }
        assert_eq!(reader.data.len(), after.len(), "read exactly one frame");
        rest = after;
    }
}

fuzz_target!(|input: &[u8]| {
    // The first byte sets how the reader splits the rest: 0 means all at once.
    let Some((&first, data)) = input.split_first() else {
        return;
    };
    let chunk = if first == 0 {
        usize::MAX
    } else {
        usize::from(first % 16)
    }
    .max(1);
    check::<ToConductor>(data, chunk);
    check::<FromConductor>(data, chunk);
    check::<ClientRequest>(data, chunk);
    check::<ClientReply>(data, chunk);
});
