//! Writes the committed seed inputs (fuzz/seeds/<target>/): well-formed values of every kind,
//! which the fuzzers would take long to build from nothing. Run from the repository root:
//! `cargo run --manifest-path fuzz/Cargo.toml --example make_seeds`.

use std::fs;
use std::path::Path;

use raftkit_core::{
    AppendEntries, AppendResponse, Entry, EntryPayload, HardState, Heartbeat, HeartbeatAck,
    InstallSnapshot, LogId, LogIndex, Membership, Message, MessageBody, NodeId, RequestVote,
    SnapshotMeta, SnapshotResponse, Term, VoteResponse, codec,
};

fn messages() -> Vec<Message> {
    let members = Membership::new([NodeId(1), NodeId(2), NodeId(3)]).expect("valid");
    let meta = SnapshotMeta {
        last_log_id: LogId::new(2, 10),
        membership: members.clone(),
        size: 8,
        checksum: 0xdead_beef,
    };
    let bodies = vec![
        MessageBody::RequestVote(RequestVote {
            pre_vote: true,
            transfer: false,
            last_log_id: LogId::new(2, 9),
        }),
        MessageBody::VoteResponse(VoteResponse { pre_vote: false, granted: true }),
        MessageBody::AppendEntries(AppendEntries {
            prev_log_id: LogId::new(1, 4),
            entries: vec![
                Entry::blank(LogId::new(2, 5)),
                Entry::normal(LogId::new(3, 6), &b"put k v"[..]),
                Entry { log_id: LogId::new(3, 7), payload: EntryPayload::Membership(members) },
            ],
            leader_commit: LogIndex(5),
        }),
        MessageBody::AppendResponse(AppendResponse::Success { match_index: LogIndex(7) }),
        MessageBody::AppendResponse(AppendResponse::Reject {
            rejected: LogIndex(9),
            hint: LogId::new(2, 8),
        }),
        MessageBody::Heartbeat(Heartbeat { commit: LogIndex(7), round: 0 }),
        MessageBody::HeartbeatResponse(HeartbeatAck { round: 3 }),
        MessageBody::InstallSnapshot(InstallSnapshot {
            meta: meta.clone(),
            offset: 4,
            data: (&b"abcd"[..]).into(),
            done: true,
        }),
        MessageBody::SnapshotResponse(SnapshotResponse {
            snapshot: meta.last_log_id,
            next_offset: 4,
            installed: false,
        }),
    ];
    bodies.into_iter().map(|body| Message { term: Term(3), body }).collect()
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("fuzz/seeds").join(target);
    fs::create_dir_all(&dir).expect("create the seed folder");
    fs::write(dir.join(name), bytes).expect("write a seed");
}

fn main() {
    let msgs = messages();
    // decode_message: each message's codec bytes.
    for (i, m) in msgs.iter().enumerate() {
        let name = format!("{i}-{}", m.kind());
        write("decode_message", &name, &codec::encode_message(m).expect("encode"));
    }
    // quic_frames: the limit byte, a stream header, then every message as one frame each.
    let mut stream = vec![0u8];
    stream.extend_from_slice(b"RKQ\x01");
    stream.extend_from_slice(&2u64.to_be_bytes());
    stream.extend_from_slice(&0x0123_4567_89ab_cdefu64.to_be_bytes());
    for m in &msgs {
        let bytes = codec::encode_message(m).expect("encode");
        stream.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        stream.extend_from_slice(&bytes);
    }
    write("quic_frames", "all-kinds", &stream);
    // store_records: kind byte, mode 1 (the target adds the checksum), the codec bytes.
    let MessageBody::AppendEntries(a) = &msgs[2].body else { unreachable!() };
    let MessageBody::InstallSnapshot(s) = &msgs[7].body else { unreachable!() };
    let hs = HardState { term: Term(3), vote: Some(NodeId(2)), commit: LogIndex(7) };
    let records: Vec<(&str, u8, Vec<u8>)> = vec![
        ("entry-blank", 0, codec::encode(&a.entries[0]).expect("encode")),
        ("entry-normal", 0, codec::encode(&a.entries[1]).expect("encode")),
        ("entry-membership", 0, codec::encode(&a.entries[2]).expect("encode")),
        ("hard-state", 1, codec::encode(&hs).expect("encode")),
        ("purged-id", 2, codec::encode(&LogId::new(2, 10)).expect("encode")),
        ("snapshot-meta", 3, codec::encode(&s.meta).expect("encode")),
    ];
    for (name, kind, body) in records {
        let mut input = vec![kind, 1];
        input.extend_from_slice(&body);
        write("store_records", name, &input);
    }
}
