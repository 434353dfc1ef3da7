//! Runs the testkit on `RedbLogStore`: the log-store suite (with reopen after close), and the
//! cluster suite with the in-memory network and a redb store per node (crashes reopen the
//! database file).

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use raftkit_redb::RedbLogStore;
use raftkit_testkit::LogStoreHarness;

/// A redb store in a fresh temporary directory.
pub struct RedbHarness;

fn file(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("raft.redb")
}

async fn reopen(dir: &tempfile::TempDir) -> RedbLogStore {
    // The last handle may still be closing on another thread (a read, the commit thread):
    // retry while redb reports the file as open.
    for _ in 0..200 {
        match RedbLogStore::open(file(dir)) {
            Ok(s) => return s,
            Err(e) if e.to_string().contains("already open") => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("reopen: {e}"),
        }
    }
    panic!("the database stayed open")
}

#[async_trait]
impl LogStoreHarness for RedbHarness {
    type Store = RedbLogStore;
    type Guard = tempfile::TempDir;

    fn crash_model(&self) -> raftkit_testkit::CrashModel {
        raftkit_testkit::CrashModel::ProcessKill
    }

    async fn build(&self) -> (RedbLogStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        (RedbLogStore::open(file(&dir)).expect("open"), dir)
    }

    async fn reopen(&self, store: RedbLogStore, dir: &tempfile::TempDir) -> RedbLogStore {
        drop(store);
        reopen(dir).await
    }
}

mod log_store {
    raftkit_testkit::log_store_suite!(super::RedbHarness);
}

mod cluster {
    raftkit_testkit::cluster_suite!(net: raftkit_mem::harness::MemNetHarness, logs: super::RedbHarness);
}
