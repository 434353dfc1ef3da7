//! Runs the testkit on `RocksLogStore`: the log-store suite (with reopen after close), and the
//! cluster suite with the in-memory network and a RocksDB store per node.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use raftkit_rocksdb::RocksLogStore;
use raftkit_testkit::LogStoreHarness;

/// A RocksDB store in a fresh temporary directory.
pub struct RocksHarness;

fn dir_of(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("db")
}

#[async_trait]
impl LogStoreHarness for RocksHarness {
    type Store = RocksLogStore;
    type Guard = tempfile::TempDir;

    fn crash_model(&self) -> raftkit_testkit::CrashModel {
        raftkit_testkit::CrashModel::ProcessKill
    }

    async fn build(&self) -> (RocksLogStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        (RocksLogStore::open(dir_of(&dir)).expect("open"), dir)
    }

    async fn reopen(&self, store: RocksLogStore, dir: &tempfile::TempDir) -> RocksLogStore {
        drop(store);
        // The last handle may still be closing on another thread (a read, the commit thread,
        // a background compaction): retry while RocksDB's lock file is held.
        for _ in 0..500 {
            match RocksLogStore::open(dir_of(dir)) {
                Ok(s) => return s,
                Err(e) if e.to_string().contains("lock") => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("reopen: {e}"),
            }
        }
        panic!("the database stayed locked")
    }
}

mod log_store {
    raftkit_testkit::log_store_suite!(super::RocksHarness);
}

mod cluster {
    raftkit_testkit::cluster_suite!(net: raftkit_mem::harness::MemNetHarness, logs: super::RocksHarness);
}
