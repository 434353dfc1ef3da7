//! Log-store micro-benchmarks for RocksDB: append (1, 64, 1024 entries per WAL-synced write)
//! and range read. Needs `--features rocksdb`.

use criterion::{Criterion, criterion_main};
use raftkit_rocksdb::RocksLogStore;

#[path = "common/mod.rs"]
mod common;

fn rocksdb(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut n = 0;
    common::bench_store(c, "rocksdb", || {
        n += 1;
        RocksLogStore::open(dir.path().join(format!("log-{n}"))).expect("open RocksDB")
    });
}

// `criterion_group!` makes an undocumented `pub fn`; a private module keeps it internal.
mod group {
    criterion::criterion_group!(benches, super::rocksdb);
}
criterion_main!(group::benches);
