//! The worked example of testkit/README.md: a third-party log store that keeps one file per
//! entry, and the one macro call that runs the whole log-store suite on it.
//!
//! Layout of a store directory:
//! - `<index>-<term>.entry`: one encoded entry per file, written to a temporary name, fsynced
//!   and renamed into place;
//! - `meta`: the hard state and the log's shape (`raftkit::store::LogShape`: the purged id,
//!   the last id and the first id of every run of equal terms, so the file name of any index is
//!   known). Every change writes its entry files first and then atomically replaces `meta`
//!   (temporary file, fsync, rename, fsync of the directory). `meta` is the commit point: until
//!   it is replaced, the old `meta` still names only old, intact files, because a conflicting
//!   entry has a different term and so a different file name. Files `meta` does not name are
//!   leftovers, removed after the commit.
//!
//! `LogShape` also carries the validation rules of the `LogStore` contract, so the store only
//! has to do the file work. Snapshots that compact the log are kept next to it, in
//! `snapshots/`, by raftkit's `FileSnapshotStore`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use raftkit::store::LogShape;
use raftkit::{
    Entry, HardState, LogId, LogIndex, LogState, LogStore, LogWrite, StorageError,
    StorageErrorKind, codec,
};
use raftkit::{FileSnapshotStore, SnapshotStore};
use raftkit_testkit::LogStoreHarness;

#[derive(Clone, Debug, Default)]
struct Meta {
    hard_state: HardState,
    shape: LogShape,
}

/// A log store with one file per entry.
#[derive(Clone)]
pub struct FileLogStore {
    dir: PathBuf,
    meta: Arc<Mutex<Meta>>,
    snapshots: Arc<FileSnapshotStore>,
}

fn io(what: &str, e: std::io::Error) -> StorageError {
    StorageError::io(what.to_string(), e)
}

fn corrupt(what: String) -> StorageError {
    StorageError::new(StorageErrorKind::Corruption, what)
}

impl FileLogStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<FileLogStore, StorageError> {
        fs::create_dir_all(dir).map_err(|e| io("create the directory", e))?;
        let meta = match fs::read(dir.join("meta")) {
            Ok(bytes) => {
                let (hard_state, shape) =
                    codec::decode(&bytes).map_err(|e| corrupt(format!("meta: {e}")))?;
                Meta { hard_state, shape }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Meta::default(),
            Err(e) => return Err(io("read meta", e)),
        };
        let snapshots = Arc::new(FileSnapshotStore::open(dir.join("snapshots"))?);
        Ok(FileLogStore { dir: dir.to_path_buf(), meta: Arc::new(Mutex::new(meta)), snapshots })
    }

    fn entry_path(&self, id: LogId) -> PathBuf {
        self.dir.join(format!("{}-{}.entry", id.index.0, id.term.0))
    }

    /// Writes a file atomically: temporary name, fsync, rename.
    fn write_file(&self, path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
        let tmp = path.with_extension("tmp");
        let mut f = fs::File::create(&tmp).map_err(|e| io("create a file", e))?;
        f.write_all(bytes).map_err(|e| io("write a file", e))?;
        f.sync_all().map_err(|e| io("fsync a file", e))?;
        fs::rename(&tmp, path).map_err(|e| io("rename a file", e))
    }

    /// The commit point: atomically replace `meta`, then make the renames durable.
    fn commit(&self, m: &Meta) -> Result<(), StorageError> {
        let bytes = codec::encode(&(m.hard_state, &m.shape))
            .map_err(|e| corrupt(format!("encode meta: {e}")))?;
        self.write_file(&self.dir.join("meta"), &bytes)?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("fsync the directory", e))
    }

    fn read_entry(&self, meta: &Meta, index: LogIndex) -> Result<Entry, StorageError> {
        let term =
            meta.shape.term_at(index).ok_or_else(|| corrupt(format!("no term for {index}")))?;
        let id = LogId { term, index };
        let bytes = fs::read(self.entry_path(id)).map_err(|e| io("read an entry", e))?;
        let e: Entry = codec::decode(&bytes).map_err(|e| corrupt(format!("entry {index}: {e}")))?;
        if e.log_id != id {
            return Err(corrupt(format!("the file of {id} holds {}", e.log_id)));
        }
        Ok(e)
    }

    /// Removes the files of entries `from..=to` of the old log that the new one does not name.
    fn tidy(&self, old: &Meta, new: &Meta, from: LogIndex, to: LogIndex) {
        let mut i = from;
        while i <= to {
            if let Some(term) = old.shape.term_at(i) {
                if new.shape.term_at(i) != Some(term) {
                    let _ = fs::remove_file(self.entry_path(LogId { term, index: i }));
                }
            }
            i = i.next();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Meta> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl LogStore for FileLogStore {
    async fn load(&self) -> Result<LogState, StorageError> {
        let m = self.lock();
        Ok(LogState { hard_state: m.hard_state, purged: m.shape.purged(), last: m.shape.last() })
    }

    async fn write(&self, w: LogWrite) -> Result<(), StorageError> {
        let mut meta = self.lock();
        meta.shape.check_write(&w)?;
        for e in &w.entries {
            let bytes = codec::encode(e).map_err(|err| corrupt(format!("encode: {err}")))?;
            self.write_file(&self.entry_path(e.log_id), &bytes)?;
        }
        let mut new = meta.clone();
        if let Some(hs) = w.hard_state {
            new.hard_state = hs;
        }
        new.shape.apply_write(&w);
        self.commit(&new)?;
        let from = w.truncate_from.unwrap_or(meta.shape.last().index.next());
        self.tidy(&meta, &new, from, meta.shape.last().index);
        *meta = new;
        Ok(())
    }

    async fn read(&self, first: LogIndex, last: LogIndex) -> Result<Vec<Entry>, StorageError> {
        let meta = self.lock().clone();
        meta.shape.check_read(first, last)?;
        let mut out = Vec::new();
        let mut i = first;
        while i <= last {
            out.push(self.read_entry(&meta, i)?);
            i = i.next();
        }
        Ok(out)
    }

    async fn purge(&self, up_to: LogId) -> Result<(), StorageError> {
        let mut meta = self.lock();
        if !meta.shape.check_purge(up_to)? {
            return Ok(());
        }
        let mut new = meta.clone();
        new.shape.apply_purge(up_to);
        self.commit(&new)?;
        let first = meta.shape.purged().index.next();
        self.tidy(&meta, &new, first, up_to.index);
        *meta = new;
        Ok(())
    }

    async fn install_snapshot(&self, snapshot: LogId) -> Result<(), StorageError> {
        let mut meta = self.lock();
        let mut new = meta.clone();
        new.shape.apply_install(snapshot);
        self.commit(&new)?;
        let (first, last) = (meta.shape.purged().index.next(), meta.shape.last().index);
        self.tidy(&meta, &new, first, last);
        *meta = new;
        Ok(())
    }

    fn snapshot_store(&self) -> Arc<dyn SnapshotStore> {
        self.snapshots.clone()
    }
}

/// How the suite builds and reopens the store: a fresh temporary directory per test.
pub struct FileHarness;

#[async_trait]
impl LogStoreHarness for FileHarness {
    type Store = FileLogStore;
    type Guard = tempfile::TempDir;

    fn crash_model(&self) -> raftkit_testkit::CrashModel {
        raftkit_testkit::CrashModel::CleanReopenOnly
    }

    async fn build(&self) -> (FileLogStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        (FileLogStore::open(dir.path()).expect("open"), dir)
    }

    async fn reopen(&self, store: FileLogStore, dir: &tempfile::TempDir) -> FileLogStore {
        drop(store);
        FileLogStore::open(dir.path()).expect("reopen")
    }
}

raftkit_testkit::log_store_suite!(FileHarness);
