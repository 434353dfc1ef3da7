//! The wire codec (`raftkit_core::codec`): encoding and decoding an AppendEntries carrying 64
//! entries of 256 B, what every transport does per replication message.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_main};
use raftkit_core::codec;
use raftkit_core::{AppendEntries, Entry, LogId, LogIndex, Message, MessageBody, Term};

fn append_entries() -> Message {
    let payload = bytes::Bytes::from(vec![0x5a; 256]);
    Message {
        term: Term(3),
        body: MessageBody::AppendEntries(AppendEntries {
            prev_log_id: LogId::new(3, 1000),
            entries: (1001..1065)
                .map(|i| Entry::normal(LogId::new(3, i), payload.clone()))
                .collect(),
            leader_commit: LogIndex(990),
        }),
    }
}

fn codec_bench(c: &mut Criterion) {
    let msg = append_entries();
    let bytes = codec::encode_message(&msg).expect("encodes");
    let mut g = c.benchmark_group("codec/append_entries_64x256B");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("encode", |b| {
        b.iter(|| codec::encode_message(black_box(&msg)).expect("encodes"))
    });
    g.bench_function("decode", |b| {
        b.iter(|| codec::decode_message(black_box(&bytes)).expect("decodes"))
    });
    g.finish();
}

// `criterion_group!` makes an undocumented `pub fn`; a private module keeps it internal.
mod group {
    criterion::criterion_group!(benches, super::codec_bench);
}
criterion_main!(group::benches);
