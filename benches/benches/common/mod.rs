//! Log-store micro-benchmarks shared by `log_store.rs` and `log_store_rocksdb.rs`: appends of
//! 1, 64 and 1024 entries of 256 B per `write` (one durable commit each), and range reads of 64
//! and 1024 entries from a 20,000-entry log.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput, measurement::WallTime};
use raftkit::{Entry, LogId, LogIndex, LogStore, LogWrite};

/// `n` entries of term 1 from index `first`, sharing one payload.
fn entries(first: u64, n: usize, payload: &Bytes) -> Vec<Entry> {
    (first..first + n as u64).map(|i| Entry::normal(LogId::new(1, i), payload.clone())).collect()
}

fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    g
}

/// Benchmarks appends and range reads on stores made by `open` (a fresh one per case).
pub fn bench_store<L: LogStore>(c: &mut Criterion, name: &str, mut open: impl FnMut() -> L) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let payload = Bytes::from(vec![0x5a; 256]);

    let mut g = group(c, &format!("log_store/{name}/append"));
    for batch in [1usize, 64, 1024] {
        let store = open();
        let mut next = 1u64;
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            b.iter(|| {
                let write =
                    LogWrite { entries: entries(next, batch, &payload), ..LogWrite::default() };
                next += batch as u64;
                rt.block_on(store.write(write)).expect("append");
            });
        });
    }
    g.finish();

    let store = open();
    let total = 20_000u64;
    for first in (1..=total).step_by(1000) {
        let write = LogWrite { entries: entries(first, 1000, &payload), ..LogWrite::default() };
        rt.block_on(store.write(write)).expect("fill the log");
    }
    let mut g = group(c, &format!("log_store/{name}/read"));
    for len in [64u64, 1024] {
        g.throughput(Throughput::Elements(len));
        g.bench_with_input(BenchmarkId::from_parameter(len), &len, |b, &len| {
            let mut first = 1u64;
            b.iter(|| {
                let got = rt
                    .block_on(store.read(LogIndex(first), LogIndex(first + len - 1)))
                    .expect("read");
                first = (first + 7919) % (total - len) + 1;
                black_box(got)
            });
        });
    }
    g.finish();
}
