//! Where snapshots live: the [`SnapshotStore`] trait, an in-memory implementation
//! ([`MemSnapshotStore`]) and a file-based one ([`FileSnapshotStore`]).
//!
//! A snapshot is written through a [`SnapshotWriter`], which checksums what it receives and
//! publishes the snapshot atomically on [`finish`](SnapshotWriter::finish): until then, readers
//! see the previous snapshot. An unfinished snapshot (an interrupted transfer) can be resumed:
//! [`SnapshotStore::begin`] with the same snapshot continues after the bytes already written.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use raftkit_core::{LogId, Membership, SnapshotMeta, codec};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{StorageError, StorageErrorKind};
use crate::store::{seal, unseal};
use crate::traits::SnapshotSource;

/// What a snapshot being written must turn out to be (known for snapshots received from a
/// leader; unknown for snapshots built locally).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    /// Its size in bytes.
    pub size: u64,
    /// Its CRC-32.
    pub checksum: u32,
}

/// Stores snapshots of the state machine.
#[async_trait]
pub trait SnapshotStore: Send + Sync + 'static {
    /// The latest complete snapshot.
    ///
    /// # Correctness
    /// The snapshot last published by a [`SnapshotWriter::finish`] that returned `Ok`.
    ///
    /// # Durability
    /// Reads only.
    ///
    /// # Cancel safety
    /// Cancel safe.
    ///
    /// # Errors
    /// `Io`, or `Corruption` if the stored metadata fails its checksum.
    async fn latest(&self) -> Result<Option<SnapshotMeta>, StorageError>;

    /// Reads `len` bytes at `offset` of a complete snapshot.
    ///
    /// # Correctness
    /// Returns exactly the bytes written.
    ///
    /// # Durability
    /// Reads only.
    ///
    /// # Cancel safety
    /// Cancel safe.
    ///
    /// # Errors
    /// `OutOfRange` if the snapshot is no longer stored (a newer one replaced it) or the range
    /// is past its end; `Io`.
    async fn read(&self, meta: &SnapshotMeta, offset: u64, len: u64)
    -> Result<Bytes, StorageError>;

    /// Opens a complete snapshot for reading from the start (to restore a state machine).
    ///
    /// # Correctness
    /// The reader yields exactly the snapshot's bytes; a reader of a damaged snapshot fails
    /// with an error at the end instead of completing.
    ///
    /// # Durability
    /// Reads only.
    ///
    /// # Cancel safety
    /// Cancel safe.
    ///
    /// # Errors
    /// `OutOfRange` if the snapshot is no longer stored; `Io`.
    async fn open(&self, meta: &SnapshotMeta) -> Result<Box<dyn Read + Send>, StorageError>;

    /// Starts writing a snapshot ending at `last_log_id`. With `expected` (a snapshot received
    /// from a leader), an unfinished earlier attempt at the same snapshot is continued: the
    /// writer's [`written`](SnapshotWriter::written) tells where.
    ///
    /// # Correctness
    /// Nothing is visible to [`latest`](Self::latest) until the writer finishes.
    ///
    /// # Durability
    /// Not durable until `finish`.
    ///
    /// # Cancel safety
    /// Cancel safe.
    ///
    /// # Errors
    /// `Io`.
    async fn begin(
        &self,
        last_log_id: LogId,
        membership: Membership,
        expected: Option<Expected>,
    ) -> Result<Box<dyn SnapshotWriter>, StorageError>;

    /// Removes the complete snapshot `meta`, so that [`latest`](Self::latest) is the one before
    /// it again. The engine calls it on a snapshot received from a leader that the state machine
    /// refused to restore (its checksum was right, its contents were not usable): the node keeps
    /// its previous state and snapshot instead of a snapshot it can never start from.
    ///
    /// # Correctness
    /// Afterwards `latest` never returns `meta`; the snapshot before it (a store keeps at least
    /// the previous complete snapshot until a newer one is published) is untouched. Removing a
    /// snapshot that is not stored is not an error.
    ///
    /// # Durability
    /// Durable when it returns: a crash afterwards does not bring `meta` back.
    ///
    /// # Cancel safety
    /// Cancel safe (the removal is all or nothing).
    ///
    /// # Errors
    /// `Io`.
    async fn discard(&self, meta: &SnapshotMeta) -> Result<(), StorageError>;
}

/// Writes one snapshot.
#[async_trait]
pub trait SnapshotWriter: Send {
    /// How many bytes this snapshot holds so far.
    fn written(&self) -> u64;

    /// Appends bytes.
    ///
    /// # Correctness
    /// Bytes are appended in order.
    ///
    /// # Durability
    /// Not durable until `finish`.
    ///
    /// # Cancel safety
    /// Not cancel safe.
    ///
    /// # Errors
    /// `InvalidInput` if the bytes go past the expected size; `Io`.
    async fn write(&mut self, data: &[u8]) -> Result<(), StorageError>;

    /// Checks the snapshot against the expected size and checksum, makes it durable and
    /// publishes it as the latest snapshot, atomically. Older snapshots are removed, except the
    /// one before it (a transfer of it may be in progress).
    ///
    /// # Correctness
    /// After `Ok`, [`SnapshotStore::latest`] returns this snapshot (unless a newer one was
    /// published).
    ///
    /// # Durability
    /// Durable when it returns: a crash never leaves a half-published snapshot.
    ///
    /// # Cancel safety
    /// Not cancel safe.
    ///
    /// # Errors
    /// `Corruption` if the size or checksum is not the expected one (the partial snapshot is
    /// discarded); `Io`.
    async fn finish(self: Box<Self>) -> Result<SnapshotMeta, StorageError>;
}

/// A [`SnapshotSource`] for a state machine whose state is one serializable value: take a copy
/// in [`StateMachine::snapshot`](crate::StateMachine::snapshot) and hand it over; it is encoded
/// here (with the codec) while the machine goes on applying. [`decode_snapshot`] reads it back.
pub struct EncodedSnapshot<T> {
    value: Option<T>,
    bytes: Vec<u8>,
    pos: usize,
}

impl<T: Serialize + Send + 'static> EncodedSnapshot<T> {
    /// A source for `value`.
    pub fn boxed(value: T) -> Box<dyn SnapshotSource> {
        Box::new(EncodedSnapshot { value: Some(value), bytes: Vec::new(), pos: 0 })
    }
}

impl<T: Serialize + Send + 'static> SnapshotSource for EncodedSnapshot<T> {
    fn next_chunk(&mut self, out: &mut Vec<u8>, max: usize) -> Result<bool, StorageError> {
        if let Some(v) = self.value.take() {
            self.bytes = codec::encode(&v).map_err(|e| {
                StorageError::with_source(StorageErrorKind::Other, "encoding a snapshot", e)
            })?;
        }
        let end = (self.pos + max.max(1)).min(self.bytes.len());
        out.extend_from_slice(&self.bytes[self.pos..end]);
        self.pos = end;
        Ok(self.pos < self.bytes.len())
    }
}

/// Reads a whole snapshot made by [`EncodedSnapshot`] and decodes it. A damaged snapshot (the
/// reader fails, or the bytes do not decode) is a [`StorageErrorKind::Corruption`] error.
pub fn decode_snapshot<T: DeserializeOwned>(
    mut data: Box<dyn Read + Send>,
) -> Result<T, StorageError> {
    let mut bytes = Vec::new();
    data.read_to_end(&mut bytes).map_err(|e| {
        StorageError::with_source(StorageErrorKind::Corruption, "reading a snapshot", e)
    })?;
    codec::decode(&bytes).map_err(|e| {
        StorageError::with_source(StorageErrorKind::Corruption, "decoding a snapshot", e)
    })
}

/// Refuses bytes that would take a snapshot past its expected size.
fn check_room(expected: Option<Expected>, written: u64, data: &[u8]) -> Result<(), StorageError> {
    match expected {
        Some(e) if written + data.len() as u64 > e.size => {
            Err(StorageError::new(StorageErrorKind::InvalidInput, "write past the snapshot's size"))
        }
        _ => Ok(()),
    }
}

fn corruption(msg: String) -> StorageError {
    StorageError::new(StorageErrorKind::Corruption, msg)
}

fn gone(meta: &SnapshotMeta) -> StorageError {
    StorageError::new(StorageErrorKind::OutOfRange, format!("{} is no longer stored", meta.name()))
}

fn check_expected(meta: &SnapshotMeta, expected: Option<Expected>) -> Result<(), StorageError> {
    if let Some(e) = expected {
        if e.size != meta.size || e.checksum != meta.checksum {
            return Err(corruption(format!(
                "snapshot at {} has {} bytes with checksum {:08x}, expected {} bytes with checksum {:08x}",
                meta.last_log_id, meta.size, meta.checksum, e.size, e.checksum
            )));
        }
    }
    Ok(())
}

// ----- in memory ------------------------------------------------------------------------------

/// Snapshots in memory. Clones share them (as [`MemLogStore`](https://docs.rs/raftkit-mem)'s
/// clones share its log), so a node restarted on a clone finds them; nothing survives the
/// process.
#[derive(Clone, Debug, Default)]
pub struct MemSnapshotStore {
    inner: Arc<Mutex<MemInner>>,
}

#[derive(Debug, Default)]
struct MemInner {
    /// Complete snapshots by name: the latest and the one before.
    complete: BTreeMap<LogId, (SnapshotMeta, Bytes)>,
    /// Unfinished snapshots by name.
    partial: BTreeMap<String, Vec<u8>>,
    /// Local builds started, to name their partial snapshots.
    local_builds: u64,
}

impl MemSnapshotStore {
    /// An empty store.
    pub fn new() -> MemSnapshotStore {
        MemSnapshotStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn data(&self, meta: &SnapshotMeta) -> Result<Bytes, StorageError> {
        match self.lock().complete.get(&meta.last_log_id) {
            Some((m, d)) if m == meta => Ok(d.clone()),
            _ => Err(gone(meta)),
        }
    }
}

fn partial_name(last: LogId, expected: Option<Expected>) -> Option<String> {
    expected
        .map(|e| format!("{:020}-{:020}-{:08x}-{}", last.term.0, last.index.0, e.checksum, e.size))
}

/// The snapshot a partial transfer named by [`partial_name`] will be.
fn partial_log_id(name: &str) -> Option<LogId> {
    let mut parts = name.split('-');
    let term = parts.next()?.parse().ok()?;
    let index = parts.next()?.parse().ok()?;
    Some(LogId { term: raftkit_core::Term(term), index: raftkit_core::LogIndex(index) })
}

#[async_trait]
impl SnapshotStore for MemSnapshotStore {
    async fn latest(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        Ok(self.lock().complete.values().next_back().map(|(m, _)| m.clone()))
    }

    async fn read(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, StorageError> {
        let d = self.data(meta)?;
        let end = offset.checked_add(len).filter(|e| *e <= d.len() as u64).ok_or_else(|| {
            StorageError::new(
                StorageErrorKind::OutOfRange,
                format!("{offset}+{len} is past the end of {}", meta.name()),
            )
        })?;
        Ok(d.slice(offset as usize..end as usize))
    }

    async fn open(&self, meta: &SnapshotMeta) -> Result<Box<dyn Read + Send>, StorageError> {
        let d = self.data(meta)?;
        Ok(Box::new(std::io::Cursor::new(d)))
    }

    async fn discard(&self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        let mut g = self.lock();
        if g.complete.get(&meta.last_log_id).is_some_and(|(m, _)| m == meta) {
            g.complete.remove(&meta.last_log_id);
        }
        Ok(())
    }

    async fn begin(
        &self,
        last_log_id: LogId,
        membership: Membership,
        expected: Option<Expected>,
    ) -> Result<Box<dyn SnapshotWriter>, StorageError> {
        // A received snapshot's bytes live in the shared partial map from the first write, so
        // an interrupted transfer resumes; a local build gets a name of its own.
        let name = partial_name(last_log_id, expected).unwrap_or_else(|| {
            let mut g = self.lock();
            g.local_builds += 1;
            format!("local-{}", g.local_builds)
        });
        let written = {
            let mut g = self.lock();
            if expected.is_none() {
                g.partial.remove(&name);
            }
            let buf = g.partial.entry(name.clone()).or_default();
            if expected.is_some_and(|e| buf.len() as u64 > e.size) {
                buf.clear(); // not a prefix of this snapshot: start over
            }
            buf.len() as u64
        };
        Ok(Box::new(MemWriter {
            store: self.clone(),
            last_log_id,
            membership,
            expected,
            name,
            written,
        }))
    }
}

impl Drop for MemWriter {
    fn drop(&mut self) {
        // A local build that was abandoned is never resumed.
        if self.expected.is_none() {
            self.store.lock().partial.remove(&self.name);
        }
    }
}

struct MemWriter {
    store: MemSnapshotStore,
    last_log_id: LogId,
    membership: Membership,
    expected: Option<Expected>,
    /// The key of this snapshot's bytes in the store's partial map.
    name: String,
    written: u64,
}

#[async_trait]
impl SnapshotWriter for MemWriter {
    fn written(&self) -> u64 {
        self.written
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), StorageError> {
        check_room(self.expected, self.written, data)?;
        let mut g = self.store.lock();
        let buf = g.partial.entry(self.name.clone()).or_default();
        if buf.len() as u64 != self.written {
            // Another writer of the same snapshot got in between (a restarted transfer).
            return Err(StorageError::new(
                StorageErrorKind::InvalidInput,
                "the partial snapshot changed under this writer",
            ));
        }
        buf.extend_from_slice(data);
        self.written += data.len() as u64;
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<SnapshotMeta, StorageError> {
        let mut g = self.store.lock();
        let buf = g.partial.remove(&self.name).unwrap_or_default();
        let meta = SnapshotMeta {
            last_log_id: self.last_log_id,
            membership: self.membership.clone(),
            size: buf.len() as u64,
            checksum: crc32fast::hash(&buf),
        };
        check_expected(&meta, self.expected)?;
        g.complete.insert(meta.last_log_id, (meta.clone(), Bytes::from(buf)));
        while g.complete.len() > 2 {
            g.complete.pop_first();
        }
        // Partial transfers of snapshots this one supersedes will never be finished.
        let last = meta.last_log_id;
        g.partial.retain(|n, _| {
            n.starts_with("local-") || partial_log_id(n).is_some_and(|id| id > last)
        });
        Ok(meta)
    }
}

// ----- files -----------------------------------------------------------------------------------

/// Snapshots as files in a directory.
///
/// # Layout
///
/// - `<name>.snap`: a complete snapshot's bytes;
/// - `<name>.meta`: its [`SnapshotMeta`], sealed with a CRC-32;
/// - `<name>.partial`: an unfinished snapshot (named after the snapshot it will be).
///
/// `finish` fsyncs the data, writes and fsyncs the metadata under a temporary name, renames
/// both into place (metadata last: it is what makes a snapshot visible) and fsyncs the
/// directory, so a crash leaves either the old latest snapshot or the new one. Reading a
/// snapshot checks its checksum; a damaged one is reported as corruption.
///
/// The file work of the async methods (writes, fsyncs, renames, reads) runs on Tokio's
/// blocking pool, so publishing a large snapshot never stalls the runtime's workers. The
/// reader returned by [`open`](SnapshotStore::open) is a plain blocking reader, read by the
/// state machine's `restore`.
///
/// Stores of one process on the same directory take turns at changing its files, so a node
/// killed in-process and restarted on the directory does not clean up a snapshot that the
/// killed node's blocking-pool work is still publishing.
#[derive(Clone, Debug)]
pub struct FileSnapshotStore {
    dir: PathBuf,
    /// Held by every change to the directory's files (see [`dir_lock`]).
    lock: Arc<Mutex<()>>,
}

/// The lock that serializes changes to the files of snapshot directory `dir` made by every
/// [`FileSnapshotStore`] of this process. A node killed in-process (`Raft::kill`) cannot stop
/// file work already running on the blocking pool: without it, the store a restarted node opens
/// on the same directory could clean up a data file as never published between the old
/// store's rename of that file and its metadata write, leaving metadata without data.
fn dir_lock(dir: &Path) -> Arc<Mutex<()>> {
    static LOCKS: std::sync::OnceLock<Mutex<BTreeMap<PathBuf, Arc<Mutex<()>>>>> =
        std::sync::OnceLock::new();
    let key = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut locks = LOCKS.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    locks.entry(key).or_default().clone()
}

/// Takes a directory lock, whatever a panic elsewhere left in it (it guards no data).
fn hold(lock: &Mutex<()>) -> MutexGuard<'_, ()> {
    lock.lock().unwrap_or_else(|p| p.into_inner())
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> StorageError {
    move |e| StorageError::io(what, e)
}

/// Runs file work (reads, writes, fsyncs, renames) on Tokio's blocking pool, so a large
/// snapshot's fsync never holds up the runtime's workers (and the driver's heartbeats).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        StorageError::new(StorageErrorKind::Other, format!("a snapshot file task failed: {e}"))
    })?
}

fn fsync_dir(dir: &Path) -> Result<(), StorageError> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(format!("fsync {}", dir.display())))
}

impl FileSnapshotStore {
    /// Opens (creating if needed) the snapshot directory `dir`, and cleans up after a crash:
    /// temporary files of an interrupted `finish`, snapshots being built locally (a build is
    /// never resumed), data files that were never published, and partial transfers of
    /// snapshots no newer than the latest complete one are removed. Partial transfers of newer
    /// snapshots stay, so the transfer can resume.
    ///
    /// # Errors
    /// `Io`; `Corruption` if the metadata of a complete snapshot is damaged or names a data
    /// file that is missing or of the wrong size (the log was purged up to that snapshot, so
    /// it cannot be ignored).
    pub fn open(dir: impl AsRef<Path>) -> Result<FileSnapshotStore, StorageError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        let store = FileSnapshotStore { lock: dir_lock(&dir), dir };
        let lock = store.lock.clone();
        let _held = hold(&lock);
        let complete = store.complete()?;
        for meta in &complete {
            let snap = store.path(&meta.name(), "snap");
            match fs::metadata(&snap) {
                Ok(m) if m.len() == meta.size => {}
                Ok(m) => {
                    return Err(corruption(format!(
                        "{} holds {} bytes, its metadata says {}",
                        snap.display(),
                        m.len(),
                        meta.size
                    )));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(corruption(format!(
                        "snapshot {} has metadata but no data file",
                        meta.name()
                    )));
                }
                Err(e) => return Err(StorageError::io(format!("stat {}", snap.display()), e)),
            }
        }
        let published: std::collections::BTreeSet<String> =
            complete.iter().map(|m| m.name()).collect();
        let latest = complete.last().map(|m| m.last_log_id);
        let mut removed = false;
        for e in fs::read_dir(&store.dir).map_err(io(format!("list {}", store.dir.display())))? {
            let p = e.map_err(io(format!("list {}", store.dir.display())))?.path();
            let (Some(stem), Some(ext)) =
                (p.file_stem().and_then(|s| s.to_str()), p.extension().and_then(|s| s.to_str()))
            else {
                continue;
            };
            let stale = match ext {
                "tmp" => true,
                "snap" => !published.contains(stem),
                "partial" if stem.starts_with("local-") => true,
                // A partial transfer is named `<term>-<index>-<checksum>-<size>`.
                "partial" => match (latest, partial_log_id(stem)) {
                    (Some(latest), Some(id)) => id <= latest,
                    (None, Some(_)) => false,
                    (_, None) => true,
                },
                _ => false,
            };
            if stale {
                tracing::info!(file = %p.display(), "removing a leftover snapshot file");
                fs::remove_file(&p).map_err(io(format!("remove {}", p.display())))?;
                removed = true;
            }
        }
        if removed {
            fsync_dir(&store.dir)?;
        }
        Ok(store)
    }

    fn path(&self, name: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{name}.{ext}"))
    }

    /// Every complete snapshot's metadata, oldest first.
    fn complete(&self) -> Result<Vec<SnapshotMeta>, StorageError> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir).map_err(io(format!("list {}", self.dir.display())))? {
            let p = e.map_err(io(format!("list {}", self.dir.display())))?.path();
            if p.extension().is_some_and(|x| x == "meta") {
                let bytes = fs::read(&p).map_err(io(format!("read {}", p.display())))?;
                let meta: SnapshotMeta = unseal(&bytes, &p.display())?;
                out.push(meta);
            }
        }
        out.sort_by_key(|m| m.last_log_id);
        Ok(out)
    }

    fn snap_file(&self, meta: &SnapshotMeta) -> Result<fs::File, StorageError> {
        match fs::File::open(self.path(&meta.name(), "snap")) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(gone(meta)),
            Err(e) => Err(StorageError::io(format!("open {}", meta.name()), e)),
        }
    }
}

#[async_trait]
impl SnapshotStore for FileSnapshotStore {
    async fn latest(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        let store = self.clone();
        blocking(move || Ok(store.complete()?.pop())).await
    }

    async fn read(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, StorageError> {
        if offset.checked_add(len).is_none_or(|e| e > meta.size) {
            return Err(StorageError::new(
                StorageErrorKind::OutOfRange,
                format!("{offset}+{len} is past the end of {}", meta.name()),
            ));
        }
        let (store, meta) = (self.clone(), meta.clone());
        blocking(move || {
            let mut f = store.snap_file(&meta)?;
            use std::io::Seek;
            f.seek(std::io::SeekFrom::Start(offset))
                .map_err(io(format!("seek {}", meta.name())))?;
            let mut buf = vec![0u8; len as usize];
            f.read_exact(&mut buf).map_err(io(format!("read {}", meta.name())))?;
            Ok(buf.into())
        })
        .await
    }

    async fn open(&self, meta: &SnapshotMeta) -> Result<Box<dyn Read + Send>, StorageError> {
        let f = self.snap_file(meta)?;
        Ok(Box::new(CheckedReader {
            inner: std::io::BufReader::new(f),
            hasher: crc32fast::Hasher::new(),
            remaining: meta.size,
            expected: meta.checksum,
            name: meta.name(),
            verified: false,
        }))
    }

    async fn begin(
        &self,
        last_log_id: LogId,
        membership: Membership,
        expected: Option<Expected>,
    ) -> Result<Box<dyn SnapshotWriter>, StorageError> {
        let store = self.clone();
        let writer = blocking(move || store.begin_blocking(last_log_id, membership, expected));
        Ok(Box::new(writer.await?))
    }

    async fn discard(&self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        let (store, name) = (self.clone(), meta.name());
        blocking(move || {
            let _held = hold(&store.lock);
            // The metadata first: once it is gone (durably), the snapshot is not listed, and a
            // leftover data file is removed as garbage when the store is next opened.
            for ext in ["meta", "snap"] {
                let p = store.path(&name, ext);
                match fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StorageError::io(format!("remove {}", p.display()), e)),
                }
                fsync_dir(&store.dir)?;
            }
            Ok(())
        })
        .await
    }
}

impl FileSnapshotStore {
    fn begin_blocking(
        &self,
        last_log_id: LogId,
        membership: Membership,
        expected: Option<Expected>,
    ) -> Result<FileWriter, StorageError> {
        // A local snapshot gets a unique temporary name; a received one a name derived from
        // what it will be, so an interrupted transfer finds its partial file again.
        let name = partial_name(last_log_id, expected).unwrap_or_else(|| {
            format!(
                "local-{:020}-{:020}-{}",
                last_log_id.term.0,
                last_log_id.index.0,
                std::process::id()
            )
        });
        let path = self.path(&name, "partial");
        let _held = hold(&self.lock);
        let mut hasher = crc32fast::Hasher::new();
        let mut written = 0u64;
        let too_long = match (expected, fs::metadata(&path)) {
            (Some(e), Ok(m)) => m.len() > e.size,
            _ => false,
        };
        if too_long {
            // Not a prefix of this snapshot (damaged): start the transfer over.
            tracing::warn!(file = %path.display(), "partial snapshot longer than the snapshot; discarding it");
            fs::remove_file(&path).map_err(io(format!("remove {}", path.display())))?;
        }
        if expected.is_some() {
            if let Ok(mut f) = fs::File::open(&path) {
                // Resume: hash what is already there.
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let n = f.read(&mut buf).map_err(io(format!("read {}", path.display())))?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    written += n as u64;
                }
            }
        } else {
            let _ = fs::remove_file(&path);
        }
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(format!("open {}", path.display())))?;
        Ok(FileWriter {
            store: self.clone(),
            path,
            file: Arc::new(file),
            hasher,
            written,
            last_log_id,
            membership,
            expected,
        })
    }
}

struct FileWriter {
    store: FileSnapshotStore,
    path: PathBuf,
    /// Shared with the blocking task doing each write (`&File` is `Write`).
    file: Arc<fs::File>,
    hasher: crc32fast::Hasher,
    written: u64,
    last_log_id: LogId,
    membership: Membership,
    expected: Option<Expected>,
}

#[async_trait]
impl SnapshotWriter for FileWriter {
    fn written(&self) -> u64 {
        self.written
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), StorageError> {
        check_room(self.expected, self.written, data)?;
        let (file, path, owned) = (self.file.clone(), self.path.clone(), data.to_vec());
        blocking(move || {
            (&*file).write_all(&owned).map_err(io(format!("write {}", path.display())))
        })
        .await?;
        self.hasher.update(data);
        self.written += data.len() as u64;
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<SnapshotMeta, StorageError> {
        let writer = *self;
        blocking(move || writer.finish_blocking()).await
    }
}

impl FileWriter {
    fn finish_blocking(self) -> Result<SnapshotMeta, StorageError> {
        let FileWriter { store, path, file, hasher, written, last_log_id, membership, expected } =
            self;
        let meta =
            SnapshotMeta { last_log_id, membership, size: written, checksum: hasher.finalize() };
        let _held = hold(&store.lock);
        if let Err(e) = check_expected(&meta, expected) {
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        file.sync_all().map_err(io(format!("fsync {}", path.display())))?;
        drop(file);
        let name = meta.name();
        let snap = store.path(&name, "snap");
        fs::rename(&path, &snap).map_err(io(format!("rename {}", path.display())))?;
        // The data file's new name must be durable before the metadata that points at it can
        // appear; otherwise a crash could publish metadata for a missing file.
        fsync_dir(&store.dir)?;
        let tmp = store.path(&name, "meta.tmp");
        let mut f = fs::File::create(&tmp).map_err(io(format!("create {}", tmp.display())))?;
        f.write_all(&seal(&meta)?).map_err(io(format!("write {}", tmp.display())))?;
        f.sync_all().map_err(io(format!("fsync {}", tmp.display())))?;
        drop(f);
        fs::rename(&tmp, store.path(&name, "meta"))
            .map_err(io(format!("rename {}", tmp.display())))?;
        fsync_dir(&store.dir)?;
        // Keep this snapshot and the one before it.
        let all = store.complete()?;
        if all.len() > 2 {
            for old in &all[..all.len() - 2] {
                let n = old.name();
                let _ = fs::remove_file(store.path(&n, "meta"));
                let _ = fs::remove_file(store.path(&n, "snap"));
            }
        }
        // Partial transfers of snapshots this one supersedes will never be finished.
        if let Ok(entries) = fs::read_dir(&store.dir) {
            for p in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
                let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
                if p.extension().is_some_and(|x| x == "partial")
                    && partial_log_id(stem).is_some_and(|id| id <= meta.last_log_id)
                {
                    let _ = fs::remove_file(&p);
                }
            }
        }
        Ok(meta)
    }
}

/// Reads a snapshot file and fails at the end if its checksum does not match.
struct CheckedReader<R> {
    inner: R,
    hasher: crc32fast::Hasher,
    remaining: u64,
    expected: u32,
    name: String,
    verified: bool,
}

impl<R: Read> Read for CheckedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.remaining == 0 {
            if !self.verified {
                let actual = std::mem::take(&mut self.hasher).finalize();
                if actual != self.expected {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "{}: checksum mismatch (stored {:08x}, read {actual:08x})",
                            self.name, self.expected
                        ),
                    ));
                }
                self.verified = true;
            }
            return Ok(0);
        }
        let max = buf.len().min(self.remaining as usize);
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{} is shorter than its recorded size", self.name),
            ));
        }
        self.hasher.update(&buf[..n]);
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store opened on a directory (a node restarted in-process) waits for the file work of
    /// another store on it (the killed node's publish, still running on the blocking pool)
    /// instead of cleaning up its half-published snapshot.
    #[test]
    fn opening_waits_for_a_publish_in_progress_on_the_same_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = FileSnapshotStore::open(dir.path()).unwrap();
        let meta = SnapshotMeta {
            last_log_id: LogId { term: raftkit_core::Term(1), index: raftkit_core::LogIndex(9) },
            membership: Membership::new([raftkit_core::NodeId(1)]).unwrap(),
            size: 3,
            checksum: crc32fast::hash(b"abc"),
        };
        let name = meta.name();
        // The old store, half-way through publishing: the data file has its final name, the
        // metadata is still to come.
        let held = hold(&first.lock);
        fs::write(first.path(&name, "snap"), b"abc").unwrap();
        let dir_path = dir.path().to_path_buf();
        let reopen = std::thread::spawn(move || FileSnapshotStore::open(dir_path).map(|_| ()));
        std::thread::sleep(std::time::Duration::from_millis(100));
        fs::write(first.path(&name, "meta"), seal(&meta).unwrap()).unwrap();
        drop(held);
        reopen.join().unwrap().expect("the reopened store");
        assert!(first.path(&name, "snap").exists(), "the published data file was removed");
        let second = FileSnapshotStore::open(dir.path()).unwrap();
        assert_eq!(second.complete().unwrap(), vec![meta]);
    }
}
