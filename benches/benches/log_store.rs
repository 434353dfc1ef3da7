//! Log-store micro-benchmarks for the memory store and redb: append (1, 64, 1024 entries per
//! durable write) and range read. RocksDB has its own file (`log_store_rocksdb.rs`, needs the
//! `rocksdb` feature).

use criterion::{Criterion, criterion_main};
use raftkit_mem::MemLogStore;
use raftkit_redb::RedbLogStore;

#[path = "common/mod.rs"]
mod common;

fn mem(c: &mut Criterion) {
    common::bench_store(c, "mem", MemLogStore::new);
}

fn redb(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut n = 0;
    common::bench_store(c, "redb", || {
        n += 1;
        RedbLogStore::open(dir.path().join(format!("log-{n}.redb"))).expect("open redb")
    });
}

// `criterion_group!` makes an undocumented `pub fn`; a private module keeps it internal.
mod group {
    criterion::criterion_group!(benches, super::mem, super::redb);
}
criterion_main!(group::benches);
