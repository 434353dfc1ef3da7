//! The wire format: stream headers, length-prefixed frames, and the application error codes
//! that close streams and connections. The crate docs describe it for readers of the protocol.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::{RecvStream, VarInt};
use raftkit::{Message, NodeId, codec};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::stats::{Counters, add, sub};

/// The first bytes of every stream: "RKQ" and the wire-format version.
pub(crate) const MAGIC: [u8; 4] = *b"RKQ\x01";
/// Stream header length: magic, sender id, sender incarnation.
pub(crate) const HEADER_LEN: usize = 4 + 8 + 8;
/// Length prefix of a frame.
pub(crate) const PREFIX_LEN: usize = 4;
/// Concurrent unidirectional streams a peer may open: two ordered ones plus large messages.
pub(crate) const MAX_STREAMS: u32 = 64;
/// How much of a frame body is allocated before its bytes arrive, so a peer announcing a large
/// frame cannot make us reserve memory it never sends.
const MAX_PREALLOC: usize = 1 << 20;

/// Application close codes of a connection.
pub(crate) mod close {
    use quinn::VarInt;

    /// The node is shutting down.
    pub(crate) const SHUTDOWN: VarInt = VarInt::from_u32(0);
    /// Another connection between the same two nodes was kept instead.
    pub(crate) const DUPLICATE: VarInt = VarInt::from_u32(1);
    /// The peer's certificate identity was refused (unknown node, or it claimed another id).
    pub(crate) const UNAUTHENTICATED: VarInt = VarInt::from_u32(2);
    /// The peer broke the protocol (bad stream header, no stream after connecting).
    pub(crate) const PROTOCOL: VarInt = VarInt::from_u32(3);
    /// The peer's address changed in the address book; the old connection is dropped.
    pub(crate) const MOVED: VarInt = VarInt::from_u32(4);
    /// The peer was removed from the address book; its connection is dropped.
    pub(crate) const REMOVED: VarInt = VarInt::from_u32(5);
    /// The peer's certificate expired while the connection was open.
    pub(crate) const CERT_EXPIRED: VarInt = VarInt::from_u32(6);
}

/// Application error codes that stop a stream.
pub(crate) mod stop {
    use quinn::VarInt;

    /// A frame over the limit.
    pub(crate) const FRAME_TOO_LARGE: VarInt = VarInt::from_u32(1);
    /// A frame that does not decode (or an empty or truncated one).
    pub(crate) const MALFORMED_FRAME: VarInt = VarInt::from_u32(2);
    /// A stream that does not start with a valid header.
    pub(crate) const BAD_HEADER: VarInt = VarInt::from_u32(3);
    /// A frame whose body did not arrive within the read timeout.
    pub(crate) const TOO_SLOW: VarInt = VarInt::from_u32(4);
    /// A frame that did not fit in the connection's buffer budget.
    pub(crate) const OVER_BUDGET: VarInt = VarInt::from_u32(5);
}

/// What starts every stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    /// The node the sender claims to be; must match its certificate.
    pub(crate) from: NodeId,
    /// A random number drawn when the sender's endpoint started: a new value means the peer
    /// restarted.
    pub(crate) incarnation: u64,
}

impl Header {
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4..12].copy_from_slice(&self.from.0.to_be_bytes());
        out[12..20].copy_from_slice(&self.incarnation.to_be_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Header, FrameError> {
        if bytes[..4] != MAGIC {
            return Err(FrameError::BadHeader(format!(
                "expected magic {MAGIC:02x?}, found {:02x?}",
                &bytes[..4]
            )));
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&bytes[4..12]);
        let mut inc = [0u8; 8];
        inc.copy_from_slice(&bytes[12..20]);
        Ok(Header { from: NodeId(u64::from_be_bytes(id)), incarnation: u64::from_be_bytes(inc) })
    }
}

/// Why a stream's input was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// The stream header is wrong.
    #[error("bad stream header: {0}")]
    BadHeader(String),
    /// A frame announced more bytes than the limit.
    #[error("frame of {len} bytes exceeds the {limit} byte limit")]
    TooLarge { len: usize, limit: usize },
    /// A zero-length frame (not even a version byte).
    #[error("empty frame")]
    Empty,
    /// The stream ended inside a frame or header.
    #[error("stream ended inside a frame ({0})")]
    Truncated(&'static str),
    /// The frame does not decode as a message.
    #[error("malformed frame: {0}")]
    Malformed(codec::CodecError),
    /// The frame's body did not arrive in time.
    #[error("frame of {len} bytes not received within {timeout:?}")]
    TooSlow { len: usize, timeout: Duration },
    /// The connection already buffers as much as it may.
    #[error("frame of {len} bytes exceeds what is left of the connection's {budget} byte budget")]
    OverBudget { len: usize, budget: usize },
    /// The stream or connection failed.
    #[error(transparent)]
    Read(quinn::ReadError),
}

impl FrameError {
    /// The stop code for refused input, or `None` if the stream simply failed.
    pub(crate) fn stop_code(&self) -> Option<VarInt> {
        match self {
            FrameError::BadHeader(_) => Some(stop::BAD_HEADER),
            FrameError::TooLarge { .. } => Some(stop::FRAME_TOO_LARGE),
            FrameError::Empty | FrameError::Truncated(_) | FrameError::Malformed(_) => {
                Some(stop::MALFORMED_FRAME)
            }
            FrameError::TooSlow { .. } => Some(stop::TOO_SLOW),
            FrameError::OverBudget { .. } => Some(stop::OVER_BUDGET),
            FrameError::Read(_) => None,
        }
    }
}

/// Encodes a message as one frame: a 32-bit big-endian length, then the codec's bytes
/// (version byte first).
pub(crate) fn encode_frame(msg: &Message) -> Result<Bytes, codec::CodecError> {
    let mut buf = Vec::with_capacity(64);
    buf.extend_from_slice(&[0; PREFIX_LEN]);
    codec::encode_into(&mut buf, msg)?;
    let len = buf.len() - PREFIX_LEN;
    let len32 = u32::try_from(len)
        .map_err(|_| codec::CodecError::Encode(format!("a {len} byte message cannot be framed")))?;
    buf[..PREFIX_LEN].copy_from_slice(&len32.to_be_bytes());
    Ok(Bytes::from(buf))
}

/// Frames arbitrary bytes (for `QuicNetwork::send_raw_frame`).
#[cfg(any(test, feature = "test-util"))]
pub(crate) fn frame_raw(bytes: &[u8]) -> Option<Bytes> {
    let len = u32::try_from(bytes.len()).ok()?;
    let mut buf = Vec::with_capacity(PREFIX_LEN + bytes.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(bytes);
    Some(Bytes::from(buf))
}

/// Checks a length prefix against the limit.
pub(crate) fn check_len(prefix: [u8; PREFIX_LEN], limit: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    Ok(len)
}

/// Reads a stream header.
pub(crate) async fn read_header(recv: &mut RecvStream) -> Result<Header, FrameError> {
    let mut buf = [0u8; HEADER_LEN];
    match recv.read_exact(&mut buf).await {
        Ok(()) => Header::decode(&buf),
        Err(quinn::ReadExactError::FinishedEarly(_)) => Err(FrameError::Truncated("header")),
        Err(quinn::ReadExactError::ReadError(e)) => Err(FrameError::Read(e)),
    }
}

/// The bytes a connection may have buffered in frames being read. Every frame reserves its
/// whole length before its body is read, so a peer that announces frames and sends them slowly
/// (on up to [`MAX_STREAMS`] streams) holds at most this much.
pub(crate) struct Budget {
    permits: Arc<Semaphore>,
    total: usize,
    stats: Arc<Counters>,
}

/// Bytes reserved in a [`Budget`] until dropped.
pub(crate) struct Reserved {
    _permit: OwnedSemaphorePermit,
    len: u64,
    stats: Arc<Counters>,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        sub(&self.stats.bytes_buffered, self.len);
    }
}

impl Budget {
    /// `total` must be at most [`Semaphore::MAX_PERMITS`] (checked by `QuicConfig::validate`).
    pub(crate) fn new(total: usize, stats: Arc<Counters>) -> Budget {
        Budget { permits: Arc::new(Semaphore::new(total)), total, stats }
    }

    /// Reserves `len` bytes now, or refuses: waiting would let a slow frame hold up the
    /// connection's other streams.
    fn reserve(&self, len: usize) -> Result<Reserved, FrameError> {
        let over = || FrameError::OverBudget { len, budget: self.total };
        let n = u32::try_from(len).map_err(|_| over())?;
        let permit = self.permits.clone().try_acquire_many_owned(n).map_err(|_| over())?;
        add(&self.stats.bytes_buffered, len as u64);
        Ok(Reserved { _permit: permit, len: len as u64, stats: self.stats.clone() })
    }
}

/// Reads the next frame's bytes (the codec part) and their reservation in `budget`, or `None`
/// at a clean end of stream. Never reads past the limit: an oversized frame is refused on its
/// length prefix, and so is one that does not fit in the budget. The body must arrive within
/// `timeout` of its prefix (waiting for a prefix has no deadline: ordered streams are idle
/// between messages).
pub(crate) async fn read_frame(
    recv: &mut RecvStream,
    limit: usize,
    budget: &Budget,
    timeout: Duration,
) -> Result<Option<(Vec<u8>, Reserved)>, FrameError> {
    let mut prefix = [0u8; PREFIX_LEN];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => {
            return Err(FrameError::Truncated("length prefix"));
        }
        Err(quinn::ReadExactError::ReadError(e)) => return Err(FrameError::Read(e)),
    }
    let len = check_len(prefix, limit)?;
    let reserved = budget.reserve(len)?;
    let read_body = async {
        let mut body = Vec::with_capacity(len.min(MAX_PREALLOC));
        while body.len() < len {
            match recv.read_chunk(len - body.len(), true).await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk.bytes),
                Ok(None) => return Err(FrameError::Truncated("frame body")),
                Err(e) => return Err(FrameError::Read(e)),
            }
        }
        Ok(body)
    };
    match tokio::time::timeout(timeout, read_body).await {
        Ok(body) => Ok(Some((body?, reserved))),
        Err(_) => Err(FrameError::TooSlow { len, timeout }),
    }
}

/// Decodes a frame's bytes.
pub(crate) fn decode_frame(body: &[u8]) -> Result<Message, FrameError> {
    codec::decode_message(body).map_err(FrameError::Malformed)
}

#[cfg(test)]
mod tests {
    use raftkit::{Heartbeat, LogIndex, MessageBody, Term};

    use super::*;

    #[test]
    fn header_round_trips_and_checks_magic() {
        let h = Header { from: NodeId(7), incarnation: 0xdead_beef_0123_4567 };
        let bytes = h.encode();
        assert_eq!(&bytes[..4], b"RKQ\x01");
        assert_eq!(Header::decode(&bytes).unwrap(), h);
        let mut bad = bytes;
        bad[3] = 2;
        assert!(matches!(Header::decode(&bad), Err(FrameError::BadHeader(_))));
    }

    #[test]
    fn frames_carry_a_length_prefix_and_the_codec_bytes() {
        let msg = Message {
            term: Term(3),
            body: MessageBody::Heartbeat(Heartbeat { commit: LogIndex(9), round: 0 }),
        };
        let frame = encode_frame(&msg).unwrap();
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4);
        assert_eq!(frame[4], codec::VERSION, "the codec's version byte starts every frame");
        assert_eq!(decode_frame(&frame[4..]).unwrap(), msg);
        assert_eq!(frame_raw(&frame[4..]).unwrap(), frame);
    }

    #[test]
    fn length_prefixes_are_checked_against_the_limit() {
        assert_eq!(check_len(10u32.to_be_bytes(), 10).unwrap(), 10);
        assert!(matches!(
            check_len(11u32.to_be_bytes(), 10),
            Err(FrameError::TooLarge { len: 11, limit: 10 })
        ));
        assert!(matches!(check_len(u32::MAX.to_be_bytes(), 10), Err(FrameError::TooLarge { .. })));
        assert!(matches!(check_len([0; 4], 10), Err(FrameError::Empty)));
        for e in [
            FrameError::Empty,
            FrameError::TooLarge { len: 2, limit: 1 },
            FrameError::TooSlow { len: 2, timeout: Duration::from_secs(1) },
            FrameError::OverBudget { len: 2, budget: 1 },
        ] {
            assert!(e.stop_code().is_some());
        }
    }

    #[test]
    fn a_budget_refuses_what_does_not_fit_and_frees_on_drop() {
        let stats = Arc::new(Counters::default());
        let budget = Budget::new(10, stats.clone());
        let a = budget.reserve(6).unwrap();
        assert_eq!(stats.snapshot().bytes_buffered, 6);
        assert!(matches!(budget.reserve(5), Err(FrameError::OverBudget { len: 5, budget: 10 })));
        let b = budget.reserve(4).unwrap();
        drop(a);
        assert_eq!(stats.snapshot().bytes_buffered, 4);
        budget.reserve(6).unwrap();
        drop(b);
        assert_eq!(stats.snapshot().bytes_buffered, 0);
    }

    #[test]
    fn garbage_frames_are_errors() {
        assert!(matches!(decode_frame(&[]), Err(FrameError::Malformed(_))));
        assert!(matches!(decode_frame(&[99, 1, 2]), Err(FrameError::Malformed(_))));
        let mut soup = vec![codec::VERSION];
        soup.extend((0..64u8).map(|i| i.wrapping_mul(37) | 0x80));
        assert!(matches!(decode_frame(&soup), Err(FrameError::Malformed(_))));
    }
}
