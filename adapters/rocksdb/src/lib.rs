//! [`RocksLogStore`]: a durable raftkit log store on [RocksDB](https://rocksdb.org).
//!
//! # Durability
//!
//! Every `write` and `purge` is one RocksDB `WriteBatch` written with `sync = true`: the
//! write-ahead log is fsynced before the call returns, so an acknowledged write survives a
//! crash or power loss. A batch is atomic. Writes arriving while a batch is being synced join
//! the next batch, so many concurrent writers share one WAL sync (group commit, see
//! [`RocksLogStore::stats`]; [`RocksLogStore::wal_syncs`] reads RocksDB's own count of WAL
//! syncs, for auditing).
//!
//! A failed write poisons the store: every later write returns
//! [`StorageErrorKind::Poisoned`] until the store is reopened.
//!
//! The WAL is recovered with RocksDB's `TolerateCorruptedTailRecords` mode: a torn last record
//! (a write that was in progress at a crash, hence never acknowledged) is dropped, while
//! corruption anywhere before it makes opening fail instead of silently losing acknowledged
//! writes. (A damaged *last* record cannot be told from a torn one.)
//!
//! # Corruption
//!
//! `paranoid_checks` is on, so RocksDB verifies its files' checksums; every stored record also
//! carries a CRC-32 of its contents. Damage is reported as [`StorageErrorKind::Corruption`],
//! never returned as data.
//!
//! # Layout
//!
//! One RocksDB database (a directory) with two column families:
//!
//! | column family | key | value |
//! |---|---|---|
//! | `entries` | log index, `u64` big endian (so keys sort, and ranges scan, in log order) | sealed entry: `[crc32][codec bytes]` |
//! | `meta` | `format` | format version, `u32` little endian ([`FORMAT_VERSION`]) |
//! |  | `hard_state` | sealed [`HardState`] (term, vote and commit: one atomic record) |
//! |  | `purged` | sealed [`LogId`] of the last purged entry |
//!
//! The format version is checked when the store opens; another version is refused with
//! [`StorageErrorKind::Unsupported`]. Truncating a suffix and purging a prefix are range
//! deletions in the same batch as the rest of the write; after a purge the purged key range is
//! compacted in the background to reclaim its space.
//!
//! Snapshots of the state machine live in the `snapshots` subdirectory of the database's
//! directory (a [`FileSnapshotStore`]: checksummed files published by an atomic, fsynced
//! rename; RocksDB ignores the directory). Installing a snapshot received from a leader
//! replaces the log's prefix in one batch.
//!
//! # Tuning
//!
//! [`RocksOptions`]: `block_cache_bytes` (recent entries read for replication),
//! `write_buffer_bytes` (memtable size: larger batches fewer flushes), `max_batch` (writes per
//! WAL sync). The WAL is always synced per batch; turning that off would break the durability
//! promise, so it is not an option.
//!
//! # Choosing a store
//!
//! RocksDB suits sustained high write rates and large logs: appends go to a sequential WAL and
//! are flushed and compacted in the background. It needs a C++ toolchain and libclang to build
//! (several minutes). redb (`raftkit-redb`) is pure Rust and a single file: the simpler
//! default for embedded use.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use raftkit::store::{CommitBatch, GroupCommitter, LogShape, seal, unseal};
use raftkit::{
    Entry, HardState, LogId, LogIndex, LogState, LogStore, LogWrite, StorageError, StorageErrorKind,
};
use raftkit::{FileSnapshotStore, SnapshotStore};
use rocksdb::statistics::Ticker;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, DBRecoveryMode, Direction, IteratorMode,
    Options, ReadOptions, WriteBatch, WriteOptions,
};

/// The on-disk format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

const CF_ENTRIES: &str = "entries";
const CF_META: &str = "meta";
const KEY_FORMAT: &[u8] = b"format";
const KEY_HARD_STATE: &[u8] = b"hard_state";
const KEY_PURGED: &[u8] = b"purged";

/// Options of a [`RocksLogStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RocksOptions {
    /// The block cache, in bytes.
    pub block_cache_bytes: usize,
    /// The memtable size, in bytes.
    pub write_buffer_bytes: usize,
    /// The most writes that share one WAL sync.
    pub max_batch: usize,
}

impl Default for RocksOptions {
    fn default() -> Self {
        RocksOptions { block_cache_bytes: 64 << 20, write_buffer_bytes: 64 << 20, max_batch: 1024 }
    }
}

/// Commit counters of a store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Batches written with a WAL sync.
    pub commits: u64,
    /// Writes and purges committed.
    pub ops: u64,
    /// Entries appended.
    pub entries: u64,
}

/// A raftkit log store in a RocksDB database. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct RocksLogStore {
    inner: Arc<Inner>,
}

struct Inner {
    committer: GroupCommitter<Batch>,
    db: Arc<DB>,
    opts: Options,
    state: Arc<Mutex<Committed>>,
    path: PathBuf,
    snapshots: Arc<dyn SnapshotStore>,
}

#[derive(Clone, Debug, Default)]
struct Committed {
    hard_state: HardState,
    shape: LogShape,
}

impl fmt::Debug for RocksLogStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RocksLogStore").field("path", &self.inner.path).finish()
    }
}

fn classify(what: &str, e: rocksdb::Error) -> StorageError {
    let kind = match e.kind() {
        rocksdb::ErrorKind::Corruption => StorageErrorKind::Corruption,
        rocksdb::ErrorKind::InvalidArgument | rocksdb::ErrorKind::NotSupported => {
            StorageErrorKind::Corruption
        }
        _ => StorageErrorKind::Io,
    };
    StorageError::with_source(kind, what.to_string(), e)
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn index_of(key: &[u8]) -> Result<u64, StorageError> {
    <[u8; 8]>::try_from(key).map(u64::from_be_bytes).map_err(|_| {
        StorageError::new(
            StorageErrorKind::Corruption,
            format!("an entry key has {} bytes, not 8", key.len()),
        )
    })
}

fn check_key(index: u64, e: &Entry) -> Result<(), StorageError> {
    if e.index().0 != index {
        return Err(StorageError::new(
            StorageErrorKind::Corruption,
            format!("the record at index {index} holds entry {}", e.log_id),
        ));
    }
    Ok(())
}

impl RocksLogStore {
    /// Opens the store in the directory `path`, creating it if it does not exist (or is empty),
    /// with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<RocksLogStore, StorageError> {
        RocksLogStore::open_with(path, RocksOptions::default())
    }

    /// Opens the store in the directory `path`, creating it if it does not exist or is empty. A
    /// non-empty directory that is not a valid database is an error, never silently replaced
    /// by an empty store (a node that lost its log must not rejoin as new).
    pub fn open_with(
        path: impl AsRef<Path>,
        options: RocksOptions,
    ) -> Result<RocksLogStore, StorageError> {
        let path = path.as_ref().to_path_buf();
        let fresh = match std::fs::read_dir(&path) {
            Ok(mut d) => d.next().is_none(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(StorageError::io(format!("reading {}", path.display()), e)),
        };
        let mut opts = Options::default();
        opts.create_if_missing(fresh);
        opts.create_missing_column_families(fresh);
        opts.set_paranoid_checks(true);
        opts.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
        opts.enable_statistics();
        opts.set_write_buffer_size(options.write_buffer_bytes);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&Cache::new_lru_cache(options.block_cache_bytes));
        opts.set_block_based_table_factory(&table);
        let cfs = [
            ColumnFamilyDescriptor::new(CF_ENTRIES, opts.clone()),
            ColumnFamilyDescriptor::new(CF_META, opts.clone()),
        ];
        let db = DB::open_cf_descriptors(&opts, &path, cfs)
            .map_err(|e| classify(&format!("opening {}", path.display()), e))?;
        let db = Arc::new(db);
        let committed = load_state(&db, fresh)?;
        let state = Arc::new(Mutex::new(committed.clone()));
        let batch = Batch {
            db: db.clone(),
            batch: WriteBatch::default(),
            staged: committed,
            state: state.clone(),
            compact_to: None,
            compactor: Compactor::start(db.clone())
                .map_err(|e| StorageError::io("starting the compaction thread", e))?,
        };
        let committer = GroupCommitter::start("raftkit-rocksdb-commit", batch, options.max_batch)
            .map_err(|e| StorageError::io("starting the commit thread", e))?;
        // Snapshots live in a subdirectory of the database's (RocksDB ignores it).
        let snapshots: Arc<dyn SnapshotStore> =
            Arc::new(FileSnapshotStore::open(path.join("snapshots"))?);
        Ok(RocksLogStore { inner: Arc::new(Inner { committer, db, opts, state, path, snapshots }) })
    }

    /// Commit counters: how many WAL syncs, and how many writes and entries they carried.
    pub fn stats(&self) -> StoreStats {
        let s = self.inner.committer.stats();
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        StoreStats { commits: get(&s.commits), ops: get(&s.ops), entries: get(&s.entries) }
    }

    /// RocksDB's own count of WAL syncs since the store was opened (its `rocksdb.wal.synced`
    /// statistic): at least one per committed batch.
    pub fn wal_syncs(&self) -> u64 {
        self.inner.opts.get_ticker_count(Ticker::WalFileSynced)
    }

    /// Flushes the memtables to SST files (the WAL already makes writes durable; this only
    /// moves them into the sorted files, e.g. before a backup).
    pub fn flush(&self) -> Result<(), StorageError> {
        for name in [CF_ENTRIES, CF_META] {
            self.inner
                .db
                .flush_cf(cf(&self.inner.db, name)?)
                .map_err(|e| classify("flushing", e))?;
        }
        Ok(())
    }

    fn committed(&self) -> MutexGuard<'_, Committed> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a rocksdb::ColumnFamily, StorageError> {
    db.cf_handle(name).ok_or_else(|| {
        StorageError::new(
            StorageErrorKind::Corruption,
            format!("the column family {name} is missing"),
        )
    })
}

fn read_meta<T: serde::de::DeserializeOwned>(
    db: &DB,
    key: &[u8],
) -> Result<Option<T>, StorageError> {
    let meta = cf(db, CF_META)?;
    match db.get_pinned_cf(meta, key).map_err(|e| classify("reading metadata", e))? {
        Some(v) => Ok(Some(unseal(&v, &String::from_utf8_lossy(key))?)),
        None => Ok(None),
    }
}

/// Checks the format marker (writing it in a fresh database), then reads the hard state,
/// purged id and last entry and rebuilds the log's shape.
fn load_state(db: &DB, fresh: bool) -> Result<Committed, StorageError> {
    let meta = cf(db, CF_META)?;
    let entries = cf(db, CF_ENTRIES)?;
    match db.get_pinned_cf(meta, KEY_FORMAT).map_err(|e| classify("reading the format", e))? {
        None if fresh => {
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            let mut b = WriteBatch::default();
            b.put_cf(meta, KEY_FORMAT, FORMAT_VERSION.to_le_bytes());
            db.write_opt(b, &wo).map_err(|e| classify("writing the format", e))?;
        }
        None => {
            return Err(StorageError::new(
                StorageErrorKind::Corruption,
                "the database has no format marker",
            ));
        }
        Some(v) => {
            let found = <[u8; 4]>::try_from(v.as_ref()).map(u32::from_le_bytes).map_err(|_| {
                StorageError::new(StorageErrorKind::Corruption, "the format marker is damaged")
            })?;
            if found != FORMAT_VERSION {
                return Err(StorageError::new(
                    StorageErrorKind::Unsupported,
                    format!("store format {found}, this build reads format {FORMAT_VERSION}"),
                ));
            }
        }
    }
    let hard_state = read_meta::<HardState>(db, KEY_HARD_STATE)?.unwrap_or_default();
    let purged = read_meta::<LogId>(db, KEY_PURGED)?.unwrap_or(LogId::ZERO);
    let mut first = db.iterator_cf(entries, IteratorMode::Start);
    if let Some(item) = first.next() {
        let (k, _) = item.map_err(|e| classify("reading the first entry", e))?;
        let i = index_of(&k)?;
        if i != purged.index.0 + 1 {
            return Err(StorageError::new(
                StorageErrorKind::Corruption,
                format!("the first entry is {i} but the purged id is {purged}"),
            ));
        }
    }
    let last = match db.iterator_cf(entries, IteratorMode::End).next() {
        Some(item) => {
            let (k, v) = item.map_err(|e| classify("reading the last entry", e))?;
            let i = index_of(&k)?;
            let e: Entry = unseal(&v, &format_args!("entry {i}"))?;
            check_key(i, &e)?;
            e.log_id
        }
        None => purged,
    };
    let shape = LogShape::discover(purged, last, |i| {
        let v = db
            .get_pinned_cf(entries, key(i.0))
            .map_err(|e| classify("reading an entry", e))?
            .ok_or_else(|| {
            StorageError::new(StorageErrorKind::Corruption, format!("entry {i} is missing"))
        })?;
        let e: Entry = unseal(&v, &format_args!("entry {i}"))?;
        check_key(i.0, &e)?;
        Ok(e.term())
    })?;
    Ok(Committed { hard_state, shape })
}

/// One operation of the commit thread.
enum Op {
    Write(LogWrite),
    Purge(LogId),
    Install(LogId),
}

/// The commit thread's side: one `WriteBatch`, written with a WAL sync.
struct Batch {
    db: Arc<DB>,
    batch: WriteBatch,
    staged: Committed,
    state: Arc<Mutex<Committed>>,
    /// A purge staged in this batch: compact the purged range after the commit.
    compact_to: Option<u64>,
    compactor: Compactor,
}

/// One background thread per store that compacts purged ranges, so space is reclaimed without
/// holding up writes. Requests that queue up while it works are merged (the highest wins).
/// Dropping it waits for the compaction in progress, so the database is closed when the store
/// is.
struct Compactor {
    tx: Option<std::sync::mpsc::Sender<u64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Compactor {
    fn start(db: Arc<DB>) -> std::io::Result<Compactor> {
        let (tx, rx) = std::sync::mpsc::channel::<u64>();
        let thread = std::thread::Builder::new().name("raftkit-rocksdb-compact".into()).spawn(
            move || {
                while let Ok(mut to) = rx.recv() {
                    while let Ok(more) = rx.try_recv() {
                        to = to.max(more);
                    }
                    if let Some(entries) = db.cf_handle(CF_ENTRIES) {
                        db.compact_range_cf(entries, None::<&[u8]>, Some(key(to)));
                    }
                }
            },
        )?;
        Ok(Compactor { tx: Some(tx), thread: Some(thread) })
    }

    /// Asks for the range of entries before `to` to be compacted.
    fn request(&self, to: u64) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(to);
        }
    }
}

impl Drop for Compactor {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl CommitBatch for Batch {
    type Op = Op;

    fn stage(&mut self, op: &Op) -> Result<(), StorageError> {
        let entries = cf(&self.db, CF_ENTRIES)?;
        let meta = cf(&self.db, CF_META)?;
        match op {
            Op::Write(w) => {
                self.staged.shape.check_write(w)?;
                // Encode everything before touching the batch, so a refusal stages nothing.
                let records = w
                    .entries
                    .iter()
                    .map(|e| seal(e).map(|r| (e.index().0, r)))
                    .collect::<Result<Vec<_>, _>>()?;
                let hs = w.hard_state.map(|h| seal(&h)).transpose()?;
                if let Some(t) = w.truncate_from {
                    self.batch.delete_range_cf(entries, key(t.0), key(u64::MAX));
                }
                for (i, r) in records {
                    self.batch.put_cf(entries, key(i), r);
                }
                if let (Some(h), Some(record)) = (w.hard_state, hs) {
                    self.batch.put_cf(meta, KEY_HARD_STATE, record);
                    self.staged.hard_state = h;
                }
                self.staged.shape.apply_write(w);
            }
            Op::Purge(up_to) => {
                if !self.staged.shape.check_purge(*up_to)? {
                    return Ok(());
                }
                let record = seal(up_to)?;
                self.batch.delete_range_cf(entries, key(0), key(up_to.index.0 + 1));
                self.batch.put_cf(meta, KEY_PURGED, record);
                self.staged.shape.apply_purge(*up_to);
                self.compact_to = Some(up_to.index.0 + 1);
            }
            Op::Install(s) => {
                let record = seal(s)?;
                let keep = self.staged.shape.install_keeps_suffix(*s);
                let end = if keep { s.index.0 + 1 } else { u64::MAX };
                self.batch.delete_range_cf(entries, key(0), key(end));
                self.batch.put_cf(meta, KEY_PURGED, record);
                self.staged.shape.apply_install(*s);
                self.compact_to = Some(end);
            }
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StorageError> {
        let batch = std::mem::take(&mut self.batch);
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo).map_err(|e| classify("committing", e))?;
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = self.staged.clone();
        if let Some(to) = self.compact_to.take() {
            // Reclaim the purged range's space without holding up later writes.
            self.compactor.request(to);
        }
        Ok(())
    }
}

#[async_trait]
impl LogStore for RocksLogStore {
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
        tokio::task::spawn_blocking(move || read_range(&db, first, last)).await.map_err(|e| {
            StorageError::with_source(StorageErrorKind::Other, "the read task failed", e)
        })?
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

/// Reads `first ..= last` from one snapshot, checking the range against that snapshot's own
/// bounds (so a concurrent truncation or purge cannot make it inconsistent).
fn read_range(db: &DB, first: LogIndex, last: LogIndex) -> Result<Vec<Entry>, StorageError> {
    let entries = cf(db, CF_ENTRIES)?;
    let meta = cf(db, CF_META)?;
    let snap = db.snapshot();
    let purged: LogId =
        match snap.get_cf(meta, KEY_PURGED).map_err(|e| classify("reading the purged id", e))? {
            Some(v) => unseal(&v, &"the purged id")?,
            None => LogId::ZERO,
        };
    let mut ro = ReadOptions::default();
    ro.set_snapshot(&snap);
    let end = match db.iterator_cf_opt(entries, ro, IteratorMode::End).next() {
        Some(item) => {
            LogIndex(index_of(&item.map_err(|e| classify("reading the last entry", e))?.0)?)
        }
        None => purged.index,
    };
    LogShape::check_bounds(purged.index, end, first, last)?;
    let mut ro = ReadOptions::default();
    ro.set_snapshot(&snap);
    ro.set_iterate_upper_bound(key(last.0 + 1));
    let mut out = Vec::with_capacity((last.0 - first.0 + 1) as usize);
    let mut expected = first.0;
    let start = key(first.0);
    for item in db.iterator_cf_opt(entries, ro, IteratorMode::From(&start, Direction::Forward)) {
        let (k, v) = item.map_err(|e| classify("reading entries", e))?;
        let i = index_of(&k)?;
        if i != expected {
            return Err(StorageError::new(
                StorageErrorKind::Corruption,
                format!("entry {expected} is missing (found {i} next)"),
            ));
        }
        let e: Entry = unseal(&v, &format_args!("entry {i}"))?;
        check_key(i, &e)?;
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
