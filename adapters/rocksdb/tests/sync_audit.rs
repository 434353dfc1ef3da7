//! Power loss keeps only what was synced. RocksDB is not pluggable enough here to simulate
//! losing the page cache, so this test audits instead: RocksDB's own statistic of WAL syncs
//! (`rocksdb.wal.synced`) must count at least one sync for every batch the store acknowledged,
//! under concurrent writers (which group commit folds into shared batches) — and the
//! acknowledged data must all be there after reopening.

use raftkit::{LogId, LogIndex, LogStore, LogWrite};
use raftkit_rocksdb::{RocksLogStore, RocksOptions};
use raftkit_testkit::log_store::entries;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_batch_was_synced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    // Small batches, so there are many commits to audit.
    let mut options = RocksOptions::default();
    options.max_batch = 16;
    let store = RocksLogStore::open_with(&path, options).unwrap();
    let base_syncs = store.wal_syncs();
    // 800 contiguous writes, all in flight at once: join_all polls them in order, so they
    // reach the store's commit thread in order, and it folds whatever queues up into batches.
    let mut writes = Vec::new();
    let mut first = 1u64;
    for _ in 0..800 {
        let count = 1 + first % 7;
        let w = LogWrite { entries: entries(1, first..=first + count - 1), ..LogWrite::default() };
        writes.push(store.write(w));
        first += count;
    }
    for r in futures::future::join_all(writes).await {
        r.expect("write");
    }
    let stats = store.stats();
    let syncs = store.wal_syncs() - base_syncs;
    assert_eq!(stats.ops, 800, "every write was committed");
    assert!(stats.commits >= 50, "group commit is bounded by max_batch: {} commits", stats.commits);
    assert!(
        syncs >= stats.commits,
        "RocksDB synced its WAL {syncs} times for {} acknowledged batches",
        stats.commits
    );
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "{} writes ({} entries) in {} batches, {syncs} WAL syncs: {:.1} writes per sync",
            stats.ops,
            stats.entries,
            stats.commits,
            stats.ops as f64 / stats.commits.max(1) as f64
        );
    }
    let last = store.load().await.unwrap().last;
    drop(store);
    let reopened = RocksLogStore::open(&path).unwrap();
    assert_eq!(reopened.load().await.unwrap().last, last);
    let all = reopened.read(LogIndex(1), last.index).await.unwrap();
    assert_eq!(all, entries(1, 1..=last.index.0));
    assert_eq!(last.term, LogId::new(1, 0).term);
}
