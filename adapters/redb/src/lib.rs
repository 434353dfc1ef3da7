//! [`RedbLogStore`]: a durable raftkit log store on [redb](https://docs.rs/redb), the embedded
//! pure-Rust key-value store.
//!
//! # Durability
//!
//! Every `write` and `purge` returns only after redb has committed it with
//! `Durability::Immediate`, which fsyncs before the commit returns: an acknowledged write
//! survives a crash or power loss. Writes are all-or-nothing (one redb transaction each, or
//! one for a group). Writes arriving while a commit is in progress join the next one, so many
//! concurrent writers share one fsync (group commit, see [`RedbLogStore::stats`]).
//!
//! A commit that fails (an I/O error) poisons the store: every later write returns
//! [`StorageErrorKind::Poisoned`] until the store is reopened, so a write is never silently
//! half-lost. redb's own commit protocol (checksummed, double-buffered commit slots) makes a
//! crash mid-commit roll back to the previous commit.
//!
//! # Corruption
//!
//! Every stored record carries a CRC-32 of its contents; a record that fails it is reported as
//! [`StorageErrorKind::Corruption`], never returned as data. A database file that redb cannot
//! open or whose structures fail redb's checks is also reported as corruption; a panic inside
//! redb on damaged data is caught and reported the same way.
//!
//! # Layout
//!
//! One redb database file with two tables:
//!
//! | table | key | value |
//! |---|---|---|
//! | `raftkit_entries` | log index (`u64`, redb orders it numerically, so ranges scan in log order) | sealed entry: `[crc32][codec bytes]` |
//! | `raftkit_meta` | `"format"` | format version, `u32` little endian ([`FORMAT_VERSION`]) |
//! |  | `"hard_state"` | sealed [`HardState`] (term, vote and commit: one atomic record) |
//! |  | `"purged"` | sealed [`LogId`] of the last purged entry |
//!
//! The format version is checked when the store opens; another version is refused with
//! [`StorageErrorKind::Unsupported`].
//!
//! Snapshots of the state machine live next to the database file, in the directory
//! `<file>.snapshots` (a [`FileSnapshotStore`]: checksummed files published by an atomic,
//! fsynced rename). Installing a snapshot received from a leader replaces the log's prefix in
//! one transaction.
//!
//! Truncating a conflicting suffix and purging a prefix are range deletions inside the same
//! transaction as the rest of the write. Purged pages go back to redb's allocator and are
//! reused by later writes; the file does not shrink on its own ([`RedbLogStore::compact`]
//! does that, offline).
//!
//! # Tuning
//!
//! [`RedbOptions::cache_size`] is redb's page cache (default 64 MiB): larger keeps more of the
//! log's recent entries in memory for replication reads. [`RedbOptions::max_batch`] bounds
//! how many writes share one commit.
//!
//! # Choosing a store
//!
//! redb is pure Rust (no C++ toolchain, fast to build), a single file, and copy-on-write with
//! an fsync per commit: a good default for embedded use and moderate write rates. RocksDB
//! (`raftkit-rocksdb`) batches into a write-ahead log and suits sustained high write rates
//! and large logs, at the cost of a long C++ build and more tuning knobs.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use raftkit::store::{CommitBatch, GroupCommitter, LogShape, seal, unseal};
use raftkit::{
    Entry, HardState, LogId, LogIndex, LogState, LogStore, LogWrite, StorageError, StorageErrorKind,
};
use raftkit::{FileSnapshotStore, SnapshotStore};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, StorageBackend,
    TableDefinition, WriteTransaction,
};

/// The on-disk format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

const ENTRIES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("raftkit_entries");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("raftkit_meta");
const KEY_FORMAT: &str = "format";
const KEY_HARD_STATE: &str = "hard_state";
const KEY_PURGED: &str = "purged";

/// Options of a [`RedbLogStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedbOptions {
    /// redb's page cache, in bytes.
    pub cache_size: usize,
    /// The most writes that share one commit.
    pub max_batch: usize,
}

impl Default for RedbOptions {
    fn default() -> Self {
        RedbOptions { cache_size: 64 << 20, max_batch: 1024 }
    }
}

/// Commit counters of a store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Durable commits (one fsync each).
    pub commits: u64,
    /// Writes and purges committed.
    pub ops: u64,
    /// Entries appended.
    pub entries: u64,
}

/// A raftkit log store in a redb database. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct RedbLogStore {
    inner: Arc<Inner>,
}

/// A redb database whose drop cannot unwind: redb may panic while closing a database that a
/// damaged file left in a bad state, and a damaged file must not take the process down.
struct Db(Option<Database>);

impl std::ops::Deref for Db {
    type Target = Database;

    fn deref(&self) -> &Database {
        self.0.as_ref().expect("present until drop")
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let db = self.0.take();
        if catch_unwind(AssertUnwindSafe(move || drop(db))).is_err() {
            tracing::error!("redb panicked while closing a damaged database");
        }
    }
}

struct Inner {
    db: Arc<Db>,
    state: Arc<Mutex<Committed>>,
    committer: GroupCommitter<Batch>,
    options: RedbOptions,
    path: Option<PathBuf>,
    snapshots: Arc<dyn SnapshotStore>,
}

/// What is committed: served by `load` without touching the database.
#[derive(Clone, Debug, Default)]
struct Committed {
    hard_state: HardState,
    shape: LogShape,
}

impl fmt::Debug for RedbLogStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbLogStore").field("path", &self.inner.path).finish()
    }
}

fn storage(
    kind: StorageErrorKind,
    what: &str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> StorageError {
    StorageError::with_source(kind, what.to_string(), e)
}

fn io<E: Into<redb::Error>>(what: &str) -> impl FnOnce(E) -> StorageError + '_ {
    move |e| classify(what, e.into())
}

/// redb reports damaged files as `Corrupted` storage errors; everything else is I/O.
fn classify(what: &str, e: redb::Error) -> StorageError {
    let kind = match &e {
        redb::Error::Corrupted(_) | redb::Error::UpgradeRequired(_) => StorageErrorKind::Corruption,
        _ => StorageErrorKind::Io,
    };
    storage(kind, what, e)
}

/// Runs `f`, turning a panic inside redb (which damaged data can cause) into a corruption
/// error instead of unwinding into the engine.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, StorageError>) -> Result<T, StorageError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_default();
            Err(StorageError::new(
                StorageErrorKind::Corruption,
                format!("{what}: redb panicked: {msg}"),
            ))
        }
    }
}

/// Makes the directory entry of `path` durable (fsync of its parent directory).
fn sync_parent(path: &Path) -> Result<(), StorageError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io(format!("fsync {}", parent.display()), e))
}

impl RedbLogStore {
    /// Opens the store in the file at `path`, creating it if needed, with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<RedbLogStore, StorageError> {
        RedbLogStore::open_with(path, RedbOptions::default())
    }

    /// Opens the store in the file at `path`, creating it if it does not exist. An existing
    /// file that is not a valid database — empty, truncated, damaged — is an error, never
    /// silently replaced by an empty store (a node that lost its log must not rejoin as new).
    pub fn open_with(
        path: impl AsRef<Path>,
        options: RedbOptions,
    ) -> Result<RedbLogStore, StorageError> {
        let path = path.as_ref().to_path_buf();
        let exists = path
            .try_exists()
            .map_err(|e| StorageError::io(format!("checking {}", path.display()), e))?;
        let db = guarded("opening the database", || {
            let mut b = Database::builder();
            b.set_cache_size(options.cache_size);
            let what = format!("opening {}", path.display());
            if exists {
                b.open(&path).map_err(|e| classify(&what, e.into()))
            } else {
                b.create(&path).map_err(|e| classify(&what, e.into()))
            }
        })?;
        if !exists {
            // redb syncs the file's contents, not the directory entry naming it: without this a
            // power loss could take the whole new database with it.
            sync_parent(&path)?;
        }
        let mut dir = path.clone().into_os_string();
        dir.push(".snapshots");
        let snapshots: Arc<dyn SnapshotStore> =
            Arc::new(FileSnapshotStore::open(PathBuf::from(dir))?);
        RedbLogStore::from_db(db, options, Some(path), snapshots)
    }

    /// Opens the store on a custom redb [`StorageBackend`] (an in-memory one, or one that
    /// injects faults in tests).
    pub fn with_backend(
        backend: impl StorageBackend,
        options: RedbOptions,
        snapshots: Arc<dyn SnapshotStore>,
    ) -> Result<RedbLogStore, StorageError> {
        let db = guarded("opening the database", || {
            let mut b = Database::builder();
            b.set_cache_size(options.cache_size);
            b.create_with_backend(backend).map_err(|e| classify("opening the database", e.into()))
        })?;
        RedbLogStore::from_db(db, options, None, snapshots)
    }

    fn from_db(
        db: Database,
        options: RedbOptions,
        path: Option<PathBuf>,
        snapshots: Arc<dyn SnapshotStore>,
    ) -> Result<RedbLogStore, StorageError> {
        let db = Arc::new(Db(Some(db)));
        let committed = guarded("loading the log", || load_state(&db))?;
        let state = Arc::new(Mutex::new(committed.clone()));
        let batch = Batch {
            db: db.clone(),
            txn: None,
            staged: committed,
            broken: None,
            state: state.clone(),
        };
        let committer = GroupCommitter::start("raftkit-redb-commit", batch, options.max_batch)
            .map_err(|e| StorageError::io("starting the commit thread", e))?;
        let inner = Inner { db, state, committer, options, path, snapshots };
        Ok(RedbLogStore { inner: Arc::new(inner) })
    }

    /// Commit counters: how many fsyncs, and how many writes and entries they carried.
    pub fn stats(&self) -> StoreStats {
        let s = self.inner.committer.stats();
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        StoreStats { commits: get(&s.commits), ops: get(&s.ops), entries: get(&s.entries) }
    }

    /// Compacts the database file, returning purged space to the file system. Needs exclusive
    /// access: every clone of this store must be dropped except the one passed in.
    pub fn compact(self) -> Result<RedbLogStore, StorageError> {
        let inner = Arc::try_unwrap(self.inner).map_err(|_| {
            StorageError::new(
                StorageErrorKind::InvalidInput,
                "compact needs the only handle to the store",
            )
        })?;
        let Inner { db, state: _, committer, options, path, snapshots } = inner;
        drop(committer);
        let mut db = Arc::try_unwrap(db).map_err(|_| {
            StorageError::new(StorageErrorKind::InvalidInput, "a read is still using the database")
        })?;
        let mut db = db.0.take().expect("present until drop");
        guarded("compacting", || {
            db.compact().map(|_| ()).map_err(|e| storage(StorageErrorKind::Io, "compacting", e))
        })?;
        RedbLogStore::from_db(db, options, path, snapshots)
    }

    fn committed(&self) -> MutexGuard<'_, Committed> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Reads the format, hard state, purged id and last entry, and rebuilds the log's shape.
fn load_state(db: &Database) -> Result<Committed, StorageError> {
    // Make sure both tables and the format marker exist.
    let txn = db.begin_write().map_err(|e| classify("beginning a write", e.into()))?;
    {
        let mut meta = txn.open_table(META).map_err(io("opening the meta table"))?;
        let format =
            meta.get(KEY_FORMAT).map_err(io("reading the format"))?.map(|v| v.value().to_vec());
        match format {
            None => {
                let entries = txn.open_table(ENTRIES).map_err(io("opening the entries table"))?;
                if entries.len().map_err(io("counting entries"))? > 0 {
                    return Err(StorageError::new(
                        StorageErrorKind::Corruption,
                        "the database has entries but no format marker",
                    ));
                }
                meta.insert(KEY_FORMAT, FORMAT_VERSION.to_le_bytes().as_slice())
                    .map_err(io("writing the format"))?;
            }
            Some(v) => {
                let found =
                    <[u8; 4]>::try_from(v.as_slice()).map(u32::from_le_bytes).map_err(|_| {
                        StorageError::new(
                            StorageErrorKind::Corruption,
                            "the format marker is damaged",
                        )
                    })?;
                if found != FORMAT_VERSION {
                    return Err(StorageError::new(
                        StorageErrorKind::Unsupported,
                        format!("store format {found}, this build reads format {FORMAT_VERSION}"),
                    ));
                }
            }
        }
    }
    txn.commit().map_err(|e| classify("committing the format marker", e.into()))?;

    let txn = db.begin_read().map_err(|e| classify("beginning a read", e.into()))?;
    let meta = txn.open_table(META).map_err(io("opening the meta table"))?;
    let entries = txn.open_table(ENTRIES).map_err(io("opening the entries table"))?;
    let hard_state: HardState =
        match meta.get(KEY_HARD_STATE).map_err(io("reading the hard state"))? {
            Some(v) => unseal(v.value(), &"the hard state")?,
            None => HardState::default(),
        };
    let purged: LogId = match meta.get(KEY_PURGED).map_err(io("reading the purged id"))? {
        Some(v) => unseal(v.value(), &"the purged id")?,
        None => LogId::ZERO,
    };
    let last = match entries.last().map_err(io("reading the last entry"))? {
        Some((k, v)) => {
            let e: Entry = unseal(v.value(), &format_args!("entry {}", k.value()))?;
            check_key(k.value(), &e)?;
            e.log_id
        }
        None => purged,
    };
    if let Some((k, _)) = entries.first().map_err(io("reading the first entry"))? {
        if k.value() != purged.index.0 + 1 {
            return Err(StorageError::new(
                StorageErrorKind::Corruption,
                format!("the first entry is {} but the purged id is {purged}", k.value()),
            ));
        }
    }
    let shape = LogShape::discover(purged, last, |i| {
        let v = entries.get(i.0).map_err(io("reading an entry"))?.ok_or_else(|| {
            StorageError::new(StorageErrorKind::Corruption, format!("entry {i} is missing"))
        })?;
        let e: Entry = unseal(v.value(), &format_args!("entry {i}"))?;
        check_key(i.0, &e)?;
        Ok(e.term())
    })?;
    Ok(Committed { hard_state, shape })
}

fn check_key(key: u64, e: &Entry) -> Result<(), StorageError> {
    if e.index().0 != key {
        return Err(StorageError::new(
            StorageErrorKind::Corruption,
            format!("the record at index {key} holds entry {}", e.log_id),
        ));
    }
    Ok(())
}

/// One operation of the commit thread.
enum Op {
    Write(LogWrite),
    Purge(LogId),
    Install(LogId),
}

/// The commit thread's side: one redb write transaction per group of operations.
struct Batch {
    db: Arc<Db>,
    txn: Option<WriteTransaction>,
    /// The state including everything staged in `txn`.
    staged: Committed,
    /// An I/O error met while staging: the transaction is unusable and its commit must fail.
    broken: Option<StorageError>,
    state: Arc<Mutex<Committed>>,
}

impl Batch {
    fn stage_op(&mut self, op: &Op) -> Result<(), StorageError> {
        if self.txn.is_none() {
            let mut txn =
                self.db.begin_write().map_err(|e| classify("beginning a write", e.into()))?;
            txn.set_durability(Durability::Immediate)
                .map_err(|e| storage(StorageErrorKind::Io, "setting durability", e))?;
            self.txn = Some(txn);
        }
        let txn = self.txn.as_ref().expect("just set");
        match op {
            Op::Write(w) => {
                self.staged.shape.check_write(w)?;
                let mut entries =
                    txn.open_table(ENTRIES).map_err(io("opening the entries table"))?;
                if let Some(t) = w.truncate_from {
                    entries.retain_in(t.0.., |_, _| false).map_err(io("truncating"))?;
                }
                for e in &w.entries {
                    let record = seal(e)?;
                    entries.insert(e.index().0, record.as_slice()).map_err(io("appending"))?;
                }
                if let Some(hs) = w.hard_state {
                    let record = seal(&hs)?;
                    let mut meta = txn.open_table(META).map_err(io("opening the meta table"))?;
                    meta.insert(KEY_HARD_STATE, record.as_slice())
                        .map_err(io("saving the hard state"))?;
                    self.staged.hard_state = hs;
                }
                self.staged.shape.apply_write(w);
            }
            Op::Purge(up_to) => {
                if !self.staged.shape.check_purge(*up_to)? {
                    return Ok(());
                }
                let mut entries =
                    txn.open_table(ENTRIES).map_err(io("opening the entries table"))?;
                entries.retain_in(..=up_to.index.0, |_, _| false).map_err(io("purging"))?;
                let record = seal(up_to)?;
                let mut meta = txn.open_table(META).map_err(io("opening the meta table"))?;
                meta.insert(KEY_PURGED, record.as_slice()).map_err(io("saving the purged id"))?;
                self.staged.shape.apply_purge(*up_to);
            }
            Op::Install(s) => {
                let record = seal(s)?;
                let mut entries =
                    txn.open_table(ENTRIES).map_err(io("opening the entries table"))?;
                if self.staged.shape.install_keeps_suffix(*s) {
                    entries.retain_in(..=s.index.0, |_, _| false).map_err(io("installing"))?;
                } else {
                    entries.retain(|_, _| false).map_err(io("installing"))?;
                }
                let mut meta = txn.open_table(META).map_err(io("opening the meta table"))?;
                meta.insert(KEY_PURGED, record.as_slice()).map_err(io("saving the purged id"))?;
                self.staged.shape.apply_install(*s);
            }
        }
        Ok(())
    }
}

impl CommitBatch for Batch {
    type Op = Op;

    fn stage(&mut self, op: &Op) -> Result<(), StorageError> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        let result = guarded("staging a write", || self.stage_op(op));
        if let Err(e) = &result {
            if !matches!(e.kind(), StorageErrorKind::InvalidInput) {
                // The transaction may hold part of this operation: it must not commit.
                self.broken = Some(e.clone());
            }
        }
        result
    }

    fn commit(&mut self) -> Result<(), StorageError> {
        let txn = self.txn.take();
        if let Some(e) = self.broken.take() {
            drop(txn);
            return Err(e);
        }
        let Some(txn) = txn else { return Ok(()) };
        guarded("committing", || txn.commit().map_err(|e| classify("committing", e.into())))?;
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = self.staged.clone();
        Ok(())
    }
}

#[async_trait]
impl LogStore for RedbLogStore {
    async fn load(&self) -> Result<LogState, StorageError> {
        let c = self.committed();
        Ok(LogState { hard_state: c.hard_state, purged: c.shape.purged(), last: c.shape.last() })
    }

    async fn write(&self, write: LogWrite) -> Result<(), StorageError> {
        let n = write.entries.len() as u64;
        self.inner.committer.submit(Op::Write(write), n).await
    }

    async fn read(&self, first: LogIndex, last: LogIndex) -> Result<Vec<Entry>, StorageError> {
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || guarded("reading", || read_range(&db, first, last)))
            .await
            .map_err(|e| storage(StorageErrorKind::Other, "the read task failed", e))?
    }

    async fn purge(&self, up_to: LogId) -> Result<(), StorageError> {
        self.inner.committer.submit(Op::Purge(up_to), 0).await
    }

    async fn install_snapshot(&self, snapshot: LogId) -> Result<(), StorageError> {
        self.inner.committer.submit(Op::Install(snapshot), 0).await
    }

    fn snapshot_store(&self) -> Arc<dyn SnapshotStore> {
        self.inner.snapshots.clone()
    }
}

/// Reads `first ..= last` in one read transaction, checking the range against that
/// transaction's own view (so a concurrent truncation or purge cannot make it inconsistent).
fn read_range(db: &Database, first: LogIndex, last: LogIndex) -> Result<Vec<Entry>, StorageError> {
    let txn = db.begin_read().map_err(|e| classify("beginning a read", e.into()))?;
    let meta = txn.open_table(META).map_err(io("opening the meta table"))?;
    let entries = txn.open_table(ENTRIES).map_err(io("opening the entries table"))?;
    let purged: LogId = match meta.get(KEY_PURGED).map_err(io("reading the purged id"))? {
        Some(v) => unseal(v.value(), &"the purged id")?,
        None => LogId::ZERO,
    };
    let last_index = match entries.last().map_err(io("reading the last entry"))? {
        Some((k, _)) => LogIndex(k.value()),
        None => purged.index,
    };
    LogShape::check_bounds(purged.index, last_index, first, last)?;
    let mut out = Vec::with_capacity((last.0 - first.0 + 1) as usize);
    let mut expected = first.0;
    for item in entries.range(first.0..=last.0).map_err(io("reading entries"))? {
        let (k, v) = item.map_err(io("reading an entry"))?;
        if k.value() != expected {
            return Err(StorageError::new(
                StorageErrorKind::Corruption,
                format!("entry {expected} is missing (found {} next)", k.value()),
            ));
        }
        let e: Entry = unseal(v.value(), &format_args!("entry {expected}"))?;
        check_key(expected, &e)?;
        out.push(e);
        expected += 1;
    }
    if expected != last.0 + 1 {
        return Err(StorageError::new(
            StorageErrorKind::Corruption,
            format!("entries {expected}..={last} are missing"),
        ));
    }
    Ok(out)
}
