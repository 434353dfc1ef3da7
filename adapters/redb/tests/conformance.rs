//! Runs the testkit on `RedbLogStore`: the log-store suite twice — on a real file (crashes are
//! clean reopens) and on a simulated disk that loses power (`CrashModel::LossyFs`: crashes mid
//! write, I/O faults) — and the cluster suite with the in-memory network and a redb store per
//! node on a simulated disk, so the nemesis's crashes are power losses.

use std::path::PathBuf;
use std::time::Duration;

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use raftkit::fs::Fs;
use raftkit::{FileSnapshotStore, SnapshotStore};
use raftkit_redb::{RedbLogStore, RedbOptions};
use raftkit_testkit::fs::SimFs;
use raftkit_testkit::{CrashModel, LogStoreHarness};
use redb::StorageBackend;

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

    /// On a real file a crash here drops the store without more ado; `crash.rs` kills real
    /// child processes mid-write (`sigkill_suite!`), and [`RedbSimHarness`] runs the suites on a
    /// disk that loses power.
    fn crash_model(&self) -> CrashModel {
        CrashModel::ProcessKill
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

/// The redb database file as a file of a [`SimFs`]: a redb storage backend that loses what
/// was not synced when the simulated power goes out.
#[derive(Debug)]
struct SimFile {
    fs: SimFs,
    path: PathBuf,
}

impl StorageBackend for SimFile {
    fn len(&self) -> io::Result<u64> {
        self.fs.len(&self.path)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.fs.read_at(&self.path, offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.fs.set_len(&self.path, len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.fs.sync(&self.path)
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.fs.write_at(&self.path, offset, data)
    }
}

/// `RedbLogStore` on a simulated disk ([`CrashModel::LossyFs`]): crashes are power losses, and
/// the suite cuts the power and injects I/O faults in the middle of writes.
pub struct RedbSimHarness;

/// A test's disk: the simulated file system (a new handle after each crash) and a real
/// directory for the snapshot store.
pub struct SimDisk {
    fs: Mutex<SimFs>,
    snapshots: tempfile::TempDir,
}

impl SimDisk {
    fn open(&self, fs: SimFs) -> RedbLogStore {
        let path = PathBuf::from("/db/raft.redb");
        if fs.len(&path).is_err() {
            // Create the file and make its name durable, as `RedbLogStore::open` does.
            fs.set_len(&path, 0).expect("create the database file");
            fs.sync_dir(Path::new("/db")).expect("sync the directory");
        }
        let snapshots: Arc<dyn SnapshotStore> =
            Arc::new(FileSnapshotStore::open(self.snapshots.path()).expect("snapshot store"));
        RedbLogStore::with_backend(SimFile { fs, path }, RedbOptions::default(), snapshots)
            .expect("open the database on the simulated disk")
    }
}

#[async_trait]
impl LogStoreHarness for RedbSimHarness {
    type Store = RedbLogStore;
    type Guard = SimDisk;

    fn crash_model(&self) -> CrashModel {
        CrashModel::LossyFs
    }

    async fn build(&self) -> (RedbLogStore, SimDisk) {
        let fs = SimFs::new(3);
        fs.create_dir_all(Path::new("/db")).expect("mkdir");
        let disk = SimDisk { fs: Mutex::new(fs.clone()), snapshots: tempfile::tempdir().unwrap() };
        (disk.open(fs), disk)
    }

    async fn reopen(&self, store: RedbLogStore, disk: &SimDisk) -> RedbLogStore {
        drop(store);
        let fs = disk.fs.lock().unwrap().clone();
        disk.open(fs)
    }

    async fn crash(&self, store: RedbLogStore, disk: &SimDisk) -> RedbLogStore {
        drop(store);
        let fs = {
            let mut current = disk.fs.lock().unwrap();
            *current = current.crash();
            current.clone()
        };
        disk.open(fs)
    }

    fn sim_fs(&self, disk: &SimDisk) -> Option<SimFs> {
        Some(disk.fs.lock().unwrap().clone())
    }
}

mod log_store {
    raftkit_testkit::log_store_suite!(super::RedbHarness);
}

mod log_store_on_a_simulated_disk {
    raftkit_testkit::log_store_suite!(super::RedbSimHarness);
}

mod cluster {
    raftkit_testkit::cluster_suite!(net: raftkit_mem::harness::MemNetHarness, logs: super::RedbSimHarness);
}
