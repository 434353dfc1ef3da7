//! The one place raftkit turns values into bytes and back.
//!
//! Every encoded value starts with a version byte ([`VERSION`]), then the value in bincode 2's
//! standard configuration (varint integers, little endian) through serde. Transports frame these
//! bytes; stores keep them as records. Swapping the format means changing this module only.
//!
//! Decoding is for untrusted input: a wrong version, truncated or trailing bytes, an invalid
//! enum tag, or an input longer than [`MAX_DECODE_BYTES`] is an error, never a panic.
//!
//! # Memory
//!
//! Decoding never reserves memory for lengths the input cannot back. bincode reserves a byte
//! buffer or string of the claimed length before reading it, checked only against its configured
//! limit; so [`decode`] sets that limit from the input's own size: at most
//! [`CLAIM_RATIO`] × 4 × the input's length (at least 4 KiB). A 14-byte frame claiming a
//! 1 GiB payload is a [`CodecError::Malformed`] error before anything is reserved. (Sequences are
//! preallocated by serde at most 1 MiB ahead of what was actually read, whatever they claim.)

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::message::Message;

/// The format version written as the first byte of every encoded value.
/// Version 2: memberships carry node information and the joint-leave policy.
pub const VERSION: u8 = 2;

/// The largest input [`decode`] accepts, in bytes. Transports should cap frames lower.
pub const MAX_DECODE_BYTES: usize = 1 << 30;

/// How many bytes bincode may account for per input byte. bincode counts a decoded integer as
/// its in-memory width (8 for a `u64`, 16 for a `u128`) even when its varint takes one byte, so
/// a valid encoding accounts for at most 16 bytes per input byte; containers account for their
/// claimed length. The decode limit is at least this multiple of the input's length.
pub const CLAIM_RATIO: usize = 16;

/// The smallest decode limit: tiny inputs get this much room (a few KiB is nothing to reserve).
const MIN_LIMIT_LOG2: u32 = 12;

fn encode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Decodes `body` with a bincode limit chosen from the input's own length: the smallest power
/// of four at or above `CLAIM_RATIO × body.len()` (and 4 KiB). bincode's limit is a const
/// generic, so the ladder is spelled out; each rung is one instantiation.
fn decode_bounded<T: DeserializeOwned>(body: &[u8]) -> Result<(T, usize), CodecError> {
    let need = body.len().saturating_mul(CLAIM_RATIO).max(1 << MIN_LIMIT_LOG2);
    macro_rules! ladder {
        ($($log2:literal),*) => {
            $(
                if need <= 1usize << $log2 {
                    let cfg = bincode::config::standard().with_limit::<{ 1usize << $log2 }>();
                    return bincode::serde::decode_from_slice::<T, _>(body, cfg)
                        .map_err(|e| CodecError::Malformed(e.to_string()));
                }
            )*
        };
    }
    // 4 KiB .. 16 GiB: `MAX_DECODE_BYTES` × `CLAIM_RATIO` is the top rung.
    ladder!(12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    #[cfg(target_pointer_width = "64")]
    ladder!(32, 34);
    Err(CodecError::TooLarge { len: body.len(), max: MAX_DECODE_BYTES })
}

/// Why bytes could not be decoded (or a value encoded).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The input is empty: not even a version byte.
    #[error("empty input: no version byte")]
    Empty,
    /// The version byte is not one this build understands.
    #[error("unsupported format version {found} (this build reads version {expected})")]
    Version {
        /// The version byte found.
        found: u8,
        /// The version this build reads.
        expected: u8,
    },
    /// The bytes do not decode to the expected type.
    #[error("malformed input: {0}")]
    Malformed(String),
    /// The value decoded but bytes were left over.
    #[error("{0} unexpected trailing bytes")]
    Trailing(usize),
    /// The value could not be encoded.
    #[error("cannot encode: {0}")]
    Encode(String),
    /// The input is longer than [`MAX_DECODE_BYTES`].
    #[error("input of {len} bytes is over the {max} byte decode limit")]
    TooLarge {
        /// The input's length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Encodes a value, version byte first.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(64);
    encode_into(&mut out, value)?;
    Ok(out)
}

/// The longest encoding [`encode_bytes`] keeps inline, in one allocation with its reference
/// count.
pub const INLINE_BYTES: usize = 56;

/// An encoding short enough to live inside the allocation `Bytes::from_owner` makes anyway.
struct Inline {
    len: u8,
    buf: [u8; INLINE_BYTES],
}

impl AsRef<[u8]> for Inline {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

/// [`encode`] into [`Bytes`], in as few allocations as the size allows: an encoding of up to
/// [`INLINE_BYTES`] bytes takes one allocation, holding the bytes and their reference count,
/// where a `Vec` turned into `Bytes` takes two (its buffer, then a shared count once it is
/// cloned or its capacity is not its length). Larger values go through [`encode`]. The bytes
/// are the same either way.
///
/// # Errors
/// As [`encode`].
pub fn encode_bytes<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, CodecError> {
    let mut inline = Inline { len: 0, buf: [0; INLINE_BYTES] };
    inline.buf[0] = VERSION;
    match bincode::serde::encode_into_slice(value, &mut inline.buf[1..], encode_config()) {
        Ok(n) => {
            // `n + 1 <= INLINE_BYTES`, which fits a `u8`.
            inline.len = u8::try_from(n + 1).unwrap_or(u8::MAX);
            Ok(Bytes::from_owner(inline))
        }
        Err(bincode::error::EncodeError::UnexpectedEnd) => Ok(Bytes::from(encode(value)?)),
        Err(e) => Err(CodecError::Encode(e.to_string())),
    }
}

/// Appends the encoding of a value, version byte first, to `out`.
pub fn encode_into<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), CodecError> {
    out.push(VERSION);
    bincode::serde::encode_into_std_write(value, out, encode_config())
        .map(|_| ())
        .map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes a value produced by [`encode`]. All of `bytes` must be consumed.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != VERSION {
        return Err(CodecError::Version { found: version, expected: VERSION });
    }
    if bytes.len() > MAX_DECODE_BYTES {
        return Err(CodecError::TooLarge { len: bytes.len(), max: MAX_DECODE_BYTES });
    }
    let (value, read) = decode_bounded::<T>(body)?;
    if read != body.len() {
        return Err(CodecError::Trailing(body.len() - read));
    }
    Ok(value)
}

/// Encodes a Raft message.
pub fn encode_message(msg: &Message) -> Result<Vec<u8>, CodecError> {
    encode(msg)
}

/// Decodes a Raft message. The result is structurally decoded only; the core still validates
/// its content ([`Message::validate`]).
pub fn decode_message(bytes: &[u8]) -> Result<Message, CodecError> {
    decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `encode_bytes` writes what `encode` writes, inline or not, right at the boundary too.
    #[test]
    fn encode_bytes_matches_encode() {
        for len in [0, 1, INLINE_BYTES - 3, INLINE_BYTES - 2, INLINE_BYTES - 1, INLINE_BYTES, 4096]
        {
            let value = "x".repeat(len);
            let bytes = encode_bytes(&value).unwrap();
            assert_eq!(&bytes[..], &encode(&value).unwrap()[..], "{len} bytes");
            assert_eq!(decode::<String>(&bytes).unwrap(), value);
            let copy = bytes.clone();
            drop(bytes);
            assert_eq!(decode::<String>(&copy).unwrap(), value);
        }
        assert_eq!(&encode_bytes(&()).unwrap()[..], &[VERSION]);
    }
    use crate::message::{AppendEntries, MessageBody};
    use crate::types::{Entry, LogId, LogIndex, Term};

    fn sample() -> Message {
        Message {
            term: Term(7),
            body: MessageBody::AppendEntries(AppendEntries {
                prev_log_id: LogId::new(6, 41),
                entries: vec![
                    Entry::normal(LogId::new(7, 42), &b"hello"[..]),
                    Entry::blank(LogId::new(7, 43)),
                ],
                leader_commit: LogIndex(40),
            }),
        }
    }

    #[test]
    fn round_trip() {
        let bytes = encode_message(&sample()).unwrap();
        assert_eq!(bytes[0], VERSION);
        assert_eq!(decode_message(&bytes).unwrap(), sample());
    }

    #[test]
    fn bad_inputs_are_errors() {
        let bytes = encode_message(&sample()).unwrap();
        assert_eq!(decode_message(&[]), Err(CodecError::Empty));
        let mut wrong = bytes.clone();
        wrong[0] = 99;
        assert_eq!(
            decode_message(&wrong),
            Err(CodecError::Version { found: 99, expected: VERSION })
        );
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(decode_message(&trailing), Err(CodecError::Trailing(1)));
        // Every truncation fails cleanly.
        for len in 1..bytes.len() {
            assert!(decode_message(&bytes[..len]).is_err(), "prefix of {len} bytes decoded");
        }
        // A huge claimed length must not allocate or panic.
        let mut huge = vec![VERSION, 7, 2];
        huge.extend([0xFD, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]);
        assert!(decode_message(&huge).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A deterministic sweep of byte soup, including mutations of a valid message.
        let valid = encode_message(&sample()).unwrap();
        let mut state = 0x1234_5678_u64;
        for round in 0..20_000 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let mut bytes = valid.clone();
            if round % 2 == 0 {
                let pos = (state >> 33) as usize % bytes.len();
                bytes[pos] = (state >> 17) as u8;
            } else {
                let len = (state >> 40) as usize % 64;
                bytes = (0..len).map(|i| (state >> (i % 56)) as u8).collect();
                if !bytes.is_empty() {
                    bytes[0] = VERSION;
                }
            }
            let _ = decode_message(&bytes);
        }
    }
}
