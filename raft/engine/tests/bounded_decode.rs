//! Guards the rule that decoding untrusted bytes never reserves memory the input cannot back:
//! a tiny frame or record whose length prefix claims a huge payload is an error, not a 1 GiB
//! allocation. Every test runs under an allocator capped a few MiB above what the process holds,
//! so an allocation of the claimed size aborts the test binary (a failure) instead of passing.

use std::alloc::System;
use std::sync::Mutex;

use bytes::Bytes;
use cap::Cap;
use raftkit::codec::{self, CodecError};
use raftkit::core::{AppendEntries, Entry, LogId, LogIndex, Message, MessageBody, Term};

#[global_allocator]
static ALLOC: Cap<System> = Cap::new(System, usize::MAX);

/// Tests of this binary share the allocator's limit, so they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `f` with at most `headroom` bytes allocatable beyond what is allocated now.
fn with_headroom<R>(headroom: usize, f: impl FnOnce() -> R) -> R {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    ALLOC.set_limit(ALLOC.allocated() + headroom).expect("limit above current use");
    let out = f();
    ALLOC.set_limit(usize::MAX).expect("unlimited");
    out
}

const MIB: usize = 1 << 20;
/// What the attacker's frames claim: just under the old 1 GiB decode limit.
const CLAIM: u32 = (1 << 30) - 4096;

const MARK: &[u8] = b"MARKR";

/// Replaces the varint length prefix (`5`) of the payload `MARK` in `bytes` with a 5-byte varint
/// claiming `claim` bytes, leaving the 5 real payload bytes behind it.
fn inflate(bytes: &[u8], claim: u32) -> Vec<u8> {
    let mut needle = vec![MARK.len() as u8];
    needle.extend_from_slice(MARK);
    let at = bytes.windows(needle.len()).position(|w| w == needle).expect("marker present");
    let mut out = bytes[..at].to_vec();
    out.push(0xFC); // bincode varint: a u32 follows
    out.extend_from_slice(&claim.to_le_bytes());
    out.extend_from_slice(&bytes[at + 1..]);
    out
}

fn append_with_marker() -> Message {
    Message {
        term: Term(3),
        body: MessageBody::AppendEntries(AppendEntries {
            prev_log_id: LogId::new(2, 9),
            entries: vec![Entry::normal(LogId::new(3, 10), Bytes::from_static(MARK))],
            leader_commit: LogIndex(9),
        }),
    }
}

#[test]
fn a_small_frame_claiming_a_huge_entry_is_refused_without_reserving_it() {
    let frame = inflate(&codec::encode_message(&append_with_marker()).unwrap(), CLAIM);
    assert!(frame.len() < 64, "the attack frame is tiny ({} bytes)", frame.len());
    let result = with_headroom(16 * MIB, || codec::decode_message(&frame));
    assert!(matches!(result, Err(CodecError::Malformed(_))), "got {result:?}");
}

#[test]
fn claims_of_every_size_beyond_the_input_are_refused_within_bounded_memory() {
    let frame = codec::encode_message(&append_with_marker()).unwrap();
    for shift in 8..30 {
        let attack = inflate(&frame, 1 << shift);
        let result = with_headroom(16 * MIB, || codec::decode_message(&attack));
        assert!(result.is_err(), "a claim of 2^{shift} bytes decoded: {result:?}");
    }
}

#[test]
fn a_snapshot_chunk_claiming_a_huge_body_is_refused() {
    let msg = Message {
        term: Term(3),
        body: MessageBody::InstallSnapshot(raftkit::core::InstallSnapshot {
            meta: raftkit::SnapshotMeta {
                last_log_id: LogId::new(2, 50),
                membership: raftkit::Membership::new([raftkit::NodeId(1)]).unwrap(),
                size: 5,
                checksum: 0,
            },
            offset: 0,
            data: Bytes::from_static(MARK),
            done: false,
        }),
    };
    let frame = inflate(&codec::encode_message(&msg).unwrap(), CLAIM);
    let result = with_headroom(16 * MIB, || codec::decode_message(&frame));
    assert!(result.is_err(), "got {result:?}");
}

#[test]
fn a_stored_record_claiming_a_huge_entry_is_corruption_not_an_allocation() {
    // A record with a valid checksum (a bug or an attacker writing the file), as the redb and
    // RocksDB stores read them.
    let entry = Entry::normal(LogId::new(3, 10), Bytes::from_static(MARK));
    let sealed = raftkit::store::seal(&entry).unwrap();
    let body = inflate(&sealed[4..], CLAIM);
    let mut record = crc32fast::hash(&body).to_le_bytes().to_vec();
    record.extend_from_slice(&body);
    let result = with_headroom(16 * MIB, || raftkit::store::unseal::<Entry>(&record, &"entry 10"));
    let err = result.expect_err("must not decode");
    assert_eq!(err.kind(), raftkit::StorageErrorKind::Corruption, "{err}");
}

#[test]
fn a_snapshot_file_claiming_a_huge_string_is_corruption() {
    // A state machine's snapshot, as `decode_snapshot` reads it back from a snapshot file.
    let value: (u64, String) = (7, String::from_utf8(MARK.to_vec()).unwrap());
    let bytes = inflate(&codec::encode(&value).unwrap(), CLAIM);
    let result = with_headroom(16 * MIB, || {
        raftkit::decode_snapshot::<(u64, String)>(Box::new(std::io::Cursor::new(bytes)))
    });
    assert!(result.is_err());
}

#[test]
fn honest_values_still_decode_at_every_size() {
    // The limit follows the input's size; values dense in small integers (8 bytes accounted per
    // 1-byte varint) and large payloads must still decode.
    let dense: Vec<u64> = (0..100_000).map(|i| i % 100).collect();
    assert_eq!(codec::decode::<Vec<u64>>(&codec::encode(&dense).unwrap()).unwrap(), dense);
    let wide: Vec<u128> = (0..10_000).map(|i| i % 100).collect();
    assert_eq!(codec::decode::<Vec<u128>>(&codec::encode(&wide).unwrap()).unwrap(), wide);
    let entries: Vec<Entry> = (1..=20_000).map(|i| Entry::blank(LogId::new(1, i))).collect();
    let msg = Message {
        term: Term(1),
        body: MessageBody::AppendEntries(AppendEntries {
            prev_log_id: LogId::ZERO,
            entries,
            leader_commit: LogIndex(0),
        }),
    };
    assert_eq!(codec::decode_message(&codec::encode_message(&msg).unwrap()).unwrap(), msg);
    for len in [0usize, 1, 4095, 4096, 70_000, 3 * MIB] {
        let big = Entry::normal(LogId::new(1, 1), vec![0xAB; len]);
        assert_eq!(codec::decode::<Entry>(&codec::encode(&big).unwrap()).unwrap(), big);
    }
}
