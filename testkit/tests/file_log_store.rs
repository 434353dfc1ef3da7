//! The worked example of testkit/README.md: a third-party log store that keeps one file per
//! entry, and the one macro call that runs the whole log-store suite on it.
//!
//! Layout of a store directory:
//! - `<index>-<term>.entry`: one encoded entry per file, written to a temporary name, fsynced
//!   and renamed into place;
//! - `meta`: the hard state, the last purged id, the last entry id and the first id of every
//!   run of equal terms (so the file name of any index is known). Every change writes its entry
//!   files first and then atomically replaces `meta` (temporary file, fsync, rename, fsync of
//!   the directory). `meta` is the commit point: until it is replaced, the old `meta` still
//!   names only old, intact files, because a conflicting entry has a different term and so a
//!   different file name. Files `meta` does not name are leftovers, removed after the commit.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use raftkit::{
    Entry, HardState, LogId, LogIndex, LogState, LogStore, LogWrite, StorageError,
    StorageErrorKind, Term, codec,
};
use raftkit_testkit::LogStoreHarness;

#[derive(Clone, Debug, Default)]
struct Meta {
    state: LogState,
    /// The first id of each run of equal terms after `state.purged`.
    runs: Vec<LogId>,
}

impl Meta {
    fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index <= self.state.purged.index || index > self.state.last.index {
            return None;
        }
        let pos = self.runs.partition_point(|r| r.index <= index);
        Some(self.runs[pos - 1].term)
    }
}

/// A log store with one file per entry.
#[derive(Clone)]
pub struct FileLogStore {
    dir: PathBuf,
    meta: Arc<Mutex<Meta>>,
}

fn io(what: &str, e: std::io::Error) -> StorageError {
    StorageError::io(what.to_string(), e)
}

fn corrupt(what: String) -> StorageError {
    StorageError::new(StorageErrorKind::Corruption, what)
}

fn invalid(what: String) -> StorageError {
    StorageError::new(StorageErrorKind::InvalidInput, what)
}

impl FileLogStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<FileLogStore, StorageError> {
        fs::create_dir_all(dir).map_err(|e| io("create the directory", e))?;
        let meta = match fs::read(dir.join("meta")) {
            Ok(bytes) => {
                let (hard_state, purged, last, runs): (HardState, LogId, LogId, Vec<LogId>) =
                    codec::decode(&bytes).map_err(|e| corrupt(format!("meta: {e}")))?;
                Meta { state: LogState { hard_state, purged, last }, runs }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Meta::default(),
            Err(e) => return Err(io("read meta", e)),
        };
        Ok(FileLogStore { dir: dir.to_path_buf(), meta: Arc::new(Mutex::new(meta)) })
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
        let s = &m.state;
        let bytes = codec::encode(&(s.hard_state, s.purged, s.last, &m.runs))
            .map_err(|e| corrupt(format!("encode meta: {e}")))?;
        self.write_file(&self.dir.join("meta"), &bytes)?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("fsync the directory", e))
    }

    fn read_entry(&self, meta: &Meta, index: LogIndex) -> Result<Entry, StorageError> {
        let term = meta.term_at(index).ok_or_else(|| corrupt(format!("no term for {index}")))?;
        let bytes =
            fs::read(self.entry_path(LogId { term, index })).map_err(|e| io("read an entry", e))?;
        let e: Entry = codec::decode(&bytes).map_err(|e| corrupt(format!("entry {index}: {e}")))?;
        if e.log_id != (LogId { term, index }) {
            return Err(corrupt(format!("the file of {index} holds {}", e.log_id)));
        }
        Ok(e)
    }

    /// Removes the files of entries `from..=to` of the old log that the new one does not name.
    fn tidy(&self, old: &Meta, new: &Meta, from: LogIndex, to: LogIndex) {
        let mut i = from;
        while i <= to {
            if let Some(term) = old.term_at(i) {
                if new.term_at(i) != Some(term) {
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
        Ok(self.lock().state)
    }

    async fn write(&self, w: LogWrite) -> Result<(), StorageError> {
        let mut meta = self.lock();
        let (purged, last) = (meta.state.purged, meta.state.last);
        let mut next = last.index.next();
        if let Some(t) = w.truncate_from {
            if t <= purged.index || t > next {
                return Err(invalid(format!("truncate_from {t} outside the log")));
            }
            next = t;
        }
        for (i, e) in w.entries.iter().enumerate() {
            if e.index() != next.plus(i as u64) {
                return Err(invalid(format!("entry {} leaves a gap", e.index())));
            }
        }
        for e in &w.entries {
            let bytes = codec::encode(e).map_err(|err| corrupt(format!("encode: {err}")))?;
            self.write_file(&self.entry_path(e.log_id), &bytes)?;
        }
        let mut new = meta.clone();
        if let Some(hs) = w.hard_state {
            new.state.hard_state = hs;
        }
        // Cut the runs at `next`, then extend them with the new entries.
        new.runs.retain(|r| r.index < next);
        new.state.last = match new.runs.last() {
            Some(r) => LogId { term: r.term, index: next.prev() },
            None => purged,
        };
        for e in &w.entries {
            if new.runs.last().is_none_or(|r| r.term != e.term()) {
                new.runs.push(e.log_id);
            }
            new.state.last = e.log_id;
        }
        self.commit(&new)?;
        self.tidy(&meta, &new, next, last.index);
        *meta = new;
        Ok(())
    }

    async fn read(&self, first: LogIndex, last: LogIndex) -> Result<Vec<Entry>, StorageError> {
        let meta = self.lock().clone();
        if first > last {
            return Err(invalid(format!("inverted range {first}..={last}")));
        }
        if first <= meta.state.purged.index {
            return Err(StorageError::new(StorageErrorKind::Purged, format!("{first} is purged")));
        }
        if last > meta.state.last.index {
            let msg = format!("{last} is past the end");
            return Err(StorageError::new(StorageErrorKind::OutOfRange, msg));
        }
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
        if up_to.index <= meta.state.purged.index {
            return Ok(());
        }
        if meta.term_at(up_to.index) != Some(up_to.term) {
            return Err(invalid(format!("purge to {up_to}, which is not in the log")));
        }
        let mut new = meta.clone();
        new.state.purged = up_to;
        // Keep the run that covers the entry after `up_to`, starting right after it.
        let after = up_to.index.next();
        let keep_term = meta.term_at(after);
        new.runs.retain(|r| r.index > after);
        if let Some(term) = keep_term {
            new.runs.insert(0, LogId { term, index: after });
        }
        self.commit(&new)?;
        let first = meta.state.purged.index.next();
        self.tidy(&meta, &new, first, up_to.index);
        *meta = new;
        Ok(())
    }
}

/// How the suite builds and reopens the store: a fresh temporary directory per test.
pub struct FileHarness;

#[async_trait]
impl LogStoreHarness for FileHarness {
    type Store = FileLogStore;
    type Guard = tempfile::TempDir;

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
