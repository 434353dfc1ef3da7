//! The worked example of testkit/README.md: a third-party log store that keeps one file per
//! entry, and the harness that runs the whole log-store suite on it under power loss.
//!
//! Layout of a store directory:
//! - `<index>-<term>.entry`: one entry per file, sealed with a CRC-32 (`raftkit::store::seal`),
//!   written to a temporary name, fsynced and renamed into place;
//! - `meta`: the hard state and the log's shape (`raftkit::store::LogShape`: the purged id, the
//!   last id and the first id of every run of equal terms, so the file name of any index is
//!   known), sealed too.
//!
//! Every change writes its entry files first, makes their names durable (fsync of the
//! directory), then atomically replaces `meta` (temporary file, fsync, rename, fsync of the
//! directory). `meta` is the commit point: until it is replaced, the old `meta` names only old,
//! intact files, because a conflicting entry has a different term and so a different file name
//! (Raft never writes two different entries with the same index and term). Files `meta` does
//! not name — entries truncated, purged or replaced by a snapshot, and what an interrupted
//! write left behind — are removed after the commit and, for a crash in between, on open.
//!
//! After an I/O error the store is poisoned: it cannot know what reached the disk, so it
//! refuses every later write until it is reopened (which rereads `meta`).
//!
//! The store does its file work through `raftkit::fs::Fs`: `StdFs` in production, and the
//! testkit's `SimFs` in tests, which loses unsynced writes in a crash. It does that work inline,
//! blocking the runtime thread while it waits for the disk; that is fine for a test and for a
//! small node, and a busy one would move it to `tokio::task::spawn_blocking` or a thread of its
//! own (as the redb and RocksDB stores do). Snapshots that compact the log are kept next to it,
//! in `snapshots/` on the real file system, by raftkit's `FileSnapshotStore`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use raftkit::fs::Fs;
use raftkit::store::{LogShape, seal, unseal};
use raftkit::{
    Entry, FileSnapshotStore, HardState, LogId, LogIndex, LogState, LogStore, LogWrite,
    SnapshotStore, StorageError, StorageErrorKind,
};
use raftkit_testkit::fs::SimFs;
use raftkit_testkit::{CrashModel, LogStoreHarness};

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct Meta {
    hard_state: HardState,
    shape: LogShape,
}

struct State {
    meta: Meta,
    /// Set by an I/O error: every later write is refused.
    poisoned: bool,
}

/// A log store with one file per entry, on any [`Fs`].
#[derive(Clone)]
pub struct FileLogStore<F: Fs> {
    fs: F,
    dir: PathBuf,
    state: Arc<Mutex<State>>,
    snapshots: Arc<FileSnapshotStore>,
}

fn io(what: &str, e: std::io::Error) -> StorageError {
    StorageError::io(what.to_string(), e)
}

fn entry_name(id: LogId) -> String {
    format!("{}-{}.entry", id.index.0, id.term.0)
}

impl<F: Fs> FileLogStore<F> {
    /// Opens (or creates) the store in `dir` of `fs`, with its snapshots in `snapshots_dir` of
    /// the real file system.
    pub fn open(fs: F, dir: &Path, snapshots_dir: &Path) -> Result<FileLogStore<F>, StorageError> {
        fs.create_dir_all(dir).map_err(|e| io("create the directory", e))?;
        let meta = match fs.read(&dir.join("meta")) {
            Ok(bytes) => {
                let (hard_state, shape) = unseal(&bytes, &"meta")?;
                Meta { hard_state, shape }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Meta::default(),
            Err(e) => return Err(io("read meta", e)),
        };
        let snapshots = Arc::new(FileSnapshotStore::open(snapshots_dir)?);
        let store = FileLogStore {
            fs,
            dir: dir.to_path_buf(),
            state: Arc::new(Mutex::new(State { meta, poisoned: false })),
            snapshots,
        };
        store.remove_leftovers()?;
        Ok(store)
    }

    /// Removes every file `meta` does not name: temporary files and entries of writes that
    /// were interrupted, or removed from the log before a crash could tidy them.
    fn remove_leftovers(&self) -> Result<(), StorageError> {
        let meta = self.lock().meta.clone();
        for name in self.fs.list(&self.dir).map_err(|e| io("list the directory", e))? {
            let keep = name == "meta"
                || name
                    .strip_suffix(".entry")
                    .and_then(|n| n.split_once('-'))
                    .and_then(|(i, t)| Some(LogId::new(t.parse().ok()?, i.parse().ok()?)))
                    .is_some_and(|id| holds(&meta, id));
            if !keep {
                self.fs
                    .remove(&self.dir.join(&name))
                    .map_err(|e| io("remove a leftover file", e))?;
            }
        }
        Ok(())
    }

    /// Writes a file atomically: temporary name, fsync, rename. The rename is durable once the
    /// directory is synced.
    fn write_file(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        let (tmp, path) = (self.dir.join(format!("{name}.tmp")), self.dir.join(name));
        self.fs.write(&tmp, bytes)?;
        self.fs.sync(&tmp)?;
        self.fs.rename(&tmp, &path)
    }

    /// Writes the entries' files and makes their names durable, then commits `new` as `meta`.
    fn commit(&self, entries: &[Entry], new: &Meta) -> Result<(), StorageError> {
        for e in entries {
            self.write_file(&entry_name(e.log_id), &seal(e)?)
                .map_err(|err| io("write an entry", err))?;
        }
        if !entries.is_empty() {
            self.fs.sync_dir(&self.dir).map_err(|e| io("fsync the directory", e))?;
        }
        let bytes = seal(&(new.hard_state, &new.shape))?;
        self.write_file("meta", &bytes).map_err(|e| io("write meta", e))?;
        self.fs.sync_dir(&self.dir).map_err(|e| io("fsync the directory", e))
    }

    /// Runs one change: refuses it if poisoned, poisons on an I/O error, then removes the files
    /// of entries `old` held and `new` does not (best effort: `open` removes what is left).
    fn change(
        &self,
        entries: &[Entry],
        make: impl FnOnce(&Meta) -> Result<Option<Meta>, StorageError>,
    ) -> Result<(), StorageError> {
        let mut st = self.lock();
        if st.poisoned {
            return Err(StorageError::new(
                StorageErrorKind::Poisoned,
                "an earlier write failed; reopen the store",
            ));
        }
        let Some(new) = make(&st.meta)? else { return Ok(()) };
        if let Err(e) = self.commit(entries, &new) {
            st.poisoned = true;
            return Err(e);
        }
        let old = std::mem::replace(&mut st.meta, new);
        let mut i = old.shape.purged().index.next();
        while i <= old.shape.last().index {
            if let Some(term) = old.shape.term_at(i) {
                let id = LogId { term, index: i };
                if !holds(&st.meta, id) {
                    let _ = self.fs.remove(&self.dir.join(entry_name(id)));
                }
            }
            i = i.next();
        }
        Ok(())
    }

    fn read_entry(&self, meta: &Meta, index: LogIndex) -> Result<Entry, StorageError> {
        let corrupt = |what: String| StorageError::new(StorageErrorKind::Corruption, what);
        let term =
            meta.shape.term_at(index).ok_or_else(|| corrupt(format!("no term for {index}")))?;
        let id = LogId { term, index };
        let bytes =
            self.fs.read(&self.dir.join(entry_name(id))).map_err(|e| io("read an entry", e))?;
        let e: Entry = unseal(&bytes, &format_args!("entry {id}"))?;
        if e.log_id != id {
            return Err(corrupt(format!("the file of {id} holds {}", e.log_id)));
        }
        Ok(e)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether the log described by `meta` holds entry `id` (the purged id is not an entry).
fn holds(meta: &Meta, id: LogId) -> bool {
    id.index > meta.shape.purged().index && meta.shape.term_at(id.index) == Some(id.term)
}

#[async_trait]
impl<F: Fs> LogStore for FileLogStore<F> {
    async fn load(&self) -> Result<LogState, StorageError> {
        let m = &self.lock().meta;
        Ok(LogState { hard_state: m.hard_state, purged: m.shape.purged(), last: m.shape.last() })
    }

    async fn write(&self, w: LogWrite) -> Result<(), StorageError> {
        self.change(&w.entries, |meta| {
            meta.shape.check_write(&w)?;
            let mut new = meta.clone();
            if let Some(hs) = w.hard_state {
                new.hard_state = hs;
            }
            new.shape.apply_write(&w);
            Ok(Some(new))
        })
    }

    async fn read(&self, first: LogIndex, last: LogIndex) -> Result<Vec<Entry>, StorageError> {
        let meta = self.lock().meta.clone();
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
        self.change(&[], |meta| {
            if !meta.shape.check_purge(up_to)? {
                return Ok(None);
            }
            let mut new = meta.clone();
            new.shape.apply_purge(up_to);
            Ok(Some(new))
        })
    }

    async fn install_snapshot(&self, snapshot: LogId) -> Result<(), StorageError> {
        self.change(&[], |meta| {
            let mut new = meta.clone();
            new.shape.apply_install(snapshot);
            Ok(Some(new))
        })
    }

    fn snapshot_store(&self) -> Arc<dyn SnapshotStore> {
        self.snapshots.clone()
    }
}

/// How the suite builds, reopens and crashes the store: on a fresh `SimFs` per test, so a
/// crash is a power loss (`CrashModel::LossyFs`).
pub struct FileHarness;

/// A test's disk: the simulated file system (a new handle after each crash) and a real
/// directory for the snapshots.
pub struct Disk {
    fs: Mutex<SimFs>,
    snapshots: tempfile::TempDir,
}

impl Disk {
    fn open(&self, fs: SimFs) -> FileLogStore<SimFs> {
        FileLogStore::open(fs, Path::new("/store"), self.snapshots.path()).expect("open")
    }
}

#[async_trait]
impl LogStoreHarness for FileHarness {
    type Store = FileLogStore<SimFs>;
    type Guard = Disk;

    fn crash_model(&self) -> CrashModel {
        CrashModel::LossyFs
    }

    async fn build(&self) -> (FileLogStore<SimFs>, Disk) {
        let fs = SimFs::new(1);
        let disk = Disk { fs: Mutex::new(fs.clone()), snapshots: tempfile::tempdir().unwrap() };
        (disk.open(fs), disk)
    }

    async fn reopen(&self, store: FileLogStore<SimFs>, disk: &Disk) -> FileLogStore<SimFs> {
        drop(store);
        let fs = disk.fs.lock().unwrap().clone();
        disk.open(fs)
    }

    async fn crash(&self, store: FileLogStore<SimFs>, disk: &Disk) -> FileLogStore<SimFs> {
        drop(store);
        let fs = {
            let mut current = disk.fs.lock().unwrap();
            *current = current.crash();
            current.clone()
        };
        disk.open(fs)
    }

    fn sim_fs(&self, disk: &Disk) -> Option<SimFs> {
        Some(disk.fs.lock().unwrap().clone())
    }
}

raftkit_testkit::log_store_suite!(FileHarness);
