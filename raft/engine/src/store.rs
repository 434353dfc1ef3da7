//! Building blocks for [`LogStore`](crate::LogStore) implementations: the contract's validation
//! rules ([`LogShape`]), group commit on a dedicated thread ([`GroupCommitter`]) and checksummed
//! records ([`seal`], [`unseal`]). The redb and RocksDB stores are built on them; a third-party
//! store can be too.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;

use raftkit_core::codec;
use raftkit_core::{LogId, LogIndex, LogWrite, Term};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::error::{StorageError, StorageErrorKind};

/// Encodes `value` with the codec (version byte first) behind a CRC-32 of the encoding:
/// `[crc32 (4 bytes, little endian)][codec bytes]`.
pub fn seal<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, StorageError> {
    let mut out = vec![0u8; 4];
    codec::encode_into(&mut out, value).map_err(|e| {
        StorageError::with_source(StorageErrorKind::Other, "cannot encode a record", e)
    })?;
    let crc = crc32fast::hash(&out[4..]);
    out[..4].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Checks and decodes a record made by [`seal`]. A wrong checksum, a short record or an
/// undecodable body is a [`StorageErrorKind::Corruption`] error naming `what`. An intact record
/// (its checksum holds) in a codec version this build does not read — written by another version
/// of raftkit — is a [`StorageErrorKind::Unsupported`] error naming `what` and the version.
pub fn unseal<T: DeserializeOwned>(
    record: &[u8],
    what: &dyn std::fmt::Display,
) -> Result<T, StorageError> {
    let corrupt =
        |why: String| StorageError::new(StorageErrorKind::Corruption, format!("{what}: {why}"));
    if record.len() < 5 {
        return Err(corrupt(format!("record of {} bytes is too short", record.len())));
    }
    let (crc, body) = record.split_at(4);
    let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    let actual = crc32fast::hash(body);
    if stored != actual {
        return Err(corrupt(format!(
            "checksum mismatch (stored {stored:08x}, computed {actual:08x})"
        )));
    }
    codec::decode(body).map_err(|e| match e {
        codec::CodecError::Version { .. } => {
            StorageError::new(StorageErrorKind::Unsupported, format!("{what}: {e}"))
        }
        e => corrupt(format!("undecodable record: {e}")),
    })
}

fn invalid(msg: String) -> StorageError {
    StorageError::new(StorageErrorKind::InvalidInput, msg)
}

/// The shape of a log — the last purged id, the last id, and the first id of every run of
/// equal terms — with the rules [`LogStore`](crate::LogStore) requires of `write`, `purge` and
/// `read`. It answers the term of any index without touching storage.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogShape {
    purged: LogId,
    last: LogId,
    /// First id of each run of equal terms after `purged`, ascending.
    runs: Vec<LogId>,
}

impl LogShape {
    /// An empty log after `purged`.
    pub fn empty(purged: LogId) -> LogShape {
        LogShape { purged, last: purged, runs: Vec::new() }
    }

    /// Reconstructs the shape of a stored log from its purged and last ids, asking `term_of` for
    /// the terms of a few entries (O(terms × log entries) lookups, by bisection: terms never
    /// decrease along a log).
    pub fn discover(
        purged: LogId,
        last: LogId,
        mut term_of: impl FnMut(LogIndex) -> Result<Term, StorageError>,
    ) -> Result<LogShape, StorageError> {
        if last.index < purged.index {
            return Err(StorageError::new(
                StorageErrorKind::Corruption,
                format!("last entry {last} is below the purged id {purged}"),
            ));
        }
        let mut shape = LogShape::empty(purged);
        if last.index == purged.index {
            return Ok(shape);
        }
        let first = LogId { term: term_of(purged.index.next())?, index: purged.index.next() };
        let tail = LogId { term: term_of(last.index)?, index: last.index };
        if tail != last {
            return Err(StorageError::new(
                StorageErrorKind::Corruption,
                format!("the last entry should be {last} but is {tail}"),
            ));
        }
        shape.runs.push(first);
        let mut stack = vec![(first, tail)];
        while let Some((lo, hi)) = stack.pop() {
            if lo.term == hi.term {
                continue;
            }
            if lo.term > hi.term {
                return Err(StorageError::new(
                    StorageErrorKind::Corruption,
                    format!("the term decreases between {lo} and {hi}"),
                ));
            }
            if hi.index.0 == lo.index.0 + 1 {
                shape.runs.push(hi);
                continue;
            }
            let mid = LogIndex(lo.index.0 + (hi.index.0 - lo.index.0) / 2);
            let mid = LogId { term: term_of(mid)?, index: mid };
            stack.push((mid, hi));
            stack.push((lo, mid));
        }
        shape.last = last;
        Ok(shape)
    }

    /// The last purged id.
    pub fn purged(&self) -> LogId {
        self.purged
    }

    /// The last entry's id (`purged` when empty).
    pub fn last(&self) -> LogId {
        self.last
    }

    /// The term of the entry at `index` (the purged id counts), if in the log.
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == self.purged.index {
            return Some(self.purged.term);
        }
        if index < self.purged.index || index > self.last.index {
            return None;
        }
        let pos = self.runs.partition_point(|r| r.index <= index);
        Some(self.runs[pos - 1].term)
    }

    /// Checks a write against the contract: `truncate_from` in `(purged, last + 1]`, entries
    /// contiguous from it (or from `last + 1`), terms not decreasing.
    pub fn check_write(&self, w: &LogWrite) -> Result<(), StorageError> {
        let mut next = self.last.index.next();
        let mut prev_term = self.last.term;
        if let Some(t) = w.truncate_from {
            if t <= self.purged.index || t > next {
                return Err(invalid(format!(
                    "truncate_from {t} is outside ({}, {next}]",
                    self.purged.index
                )));
            }
            next = t;
            prev_term = self.term_at(t.prev()).unwrap_or_default();
        }
        for e in &w.entries {
            if e.index() != next {
                return Err(invalid(format!("expected entry {next}, got {}: a gap", e.index())));
            }
            if e.term() < prev_term {
                return Err(invalid(format!(
                    "entry {} has a term below its predecessor's",
                    e.log_id
                )));
            }
            prev_term = e.term();
            next = next.next();
        }
        Ok(())
    }

    /// Applies a write that passed [`check_write`](Self::check_write).
    pub fn apply_write(&mut self, w: &LogWrite) {
        if let Some(t) = w.truncate_from {
            if t <= self.last.index {
                let keep = self.runs.partition_point(|r| r.index < t);
                self.runs.truncate(keep);
                let prev = t.prev();
                self.last = LogId { term: self.term_at_runs(prev), index: prev };
            }
        }
        for e in &w.entries {
            if self.runs.last().is_none_or(|r| r.term != e.term()) {
                self.runs.push(e.log_id);
            }
            self.last = e.log_id;
        }
    }

    fn term_at_runs(&self, index: LogIndex) -> Term {
        if index <= self.purged.index {
            return self.purged.term;
        }
        let pos = self.runs.partition_point(|r| r.index <= index);
        self.runs[pos - 1].term
    }

    /// Checks a purge: `Ok(false)` if it is a no-op (at or below the purged id), `Ok(true)` if
    /// it removes entries, an error if `up_to` is not in the log.
    pub fn check_purge(&self, up_to: LogId) -> Result<bool, StorageError> {
        if up_to.index <= self.purged.index {
            return Ok(false);
        }
        match self.term_at(up_to.index) {
            Some(t) if t == up_to.term => Ok(true),
            Some(t) => Err(invalid(format!("purge to {up_to}, but the entry there has term {t}"))),
            None => Err(invalid(format!("purge to {up_to}, past the last entry {}", self.last))),
        }
    }

    /// Applies a purge that [`check_purge`](Self::check_purge) accepted.
    pub fn apply_purge(&mut self, up_to: LogId) {
        if up_to.index <= self.purged.index {
            return;
        }
        let after = up_to.index.next();
        let keep_term = self.term_at(after);
        self.runs.retain(|r| r.index > after);
        if let Some(term) = keep_term {
            self.runs.insert(0, LogId { term, index: after });
        }
        self.purged = up_to;
        if self.last.index < after {
            self.last = up_to;
        }
    }

    /// Replaces the log's prefix with a snapshot ending at `snapshot`: if the log holds that
    /// entry, the entries after it stay (they follow from it); otherwise the log is emptied.
    /// Afterwards the purged id is `snapshot`.
    pub fn apply_install(&mut self, snapshot: LogId) {
        if snapshot.index >= self.purged.index
            && self.term_at(snapshot.index) == Some(snapshot.term)
        {
            self.apply_purge(snapshot);
        } else {
            self.runs.clear();
            self.purged = snapshot;
            self.last = snapshot;
        }
    }

    /// Whether installing `snapshot` keeps the entries after it (see
    /// [`apply_install`](Self::apply_install)).
    pub fn install_keeps_suffix(&self, snapshot: LogId) -> bool {
        snapshot.index >= self.purged.index && self.term_at(snapshot.index) == Some(snapshot.term)
    }

    /// Checks a read of `first ..= last` against the contract's error rules.
    pub fn check_read(&self, first: LogIndex, last: LogIndex) -> Result<(), StorageError> {
        LogShape::check_bounds(self.purged.index, self.last.index, first, last)
    }

    /// Checks a read of `first ..= last` of a log holding `(purged, end]` (indexes), for stores
    /// that know only the bounds of a consistent snapshot.
    pub fn check_bounds(
        purged: LogIndex,
        end: LogIndex,
        first: LogIndex,
        last: LogIndex,
    ) -> Result<(), StorageError> {
        if first > last {
            return Err(invalid(format!("read range {first}..={last} is inverted")));
        }
        if first <= purged {
            return Err(StorageError::new(
                StorageErrorKind::Purged,
                format!("read from {first}, but entries up to {purged} are purged"),
            ));
        }
        if last > end {
            return Err(StorageError::new(
                StorageErrorKind::OutOfRange,
                format!("read to {last}, but the last entry is {end}"),
            ));
        }
        Ok(())
    }
}

/// A store's side of [`GroupCommitter`]: stage operations into one pending batch, then make the
/// batch durable at once.
pub trait CommitBatch: Send + 'static {
    /// An operation (a write, a purge, …).
    type Op: Send + 'static;

    /// Validates `op` against the state including everything staged so far and stages it. A
    /// refusal ([`StorageErrorKind::InvalidInput`]) stages nothing of `op` and leaves the others
    /// unaffected; any other error poisons the committer: nothing staged in that round is
    /// committed and every later operation is refused.
    fn stage(&mut self, op: &Self::Op) -> Result<(), StorageError>;

    /// Makes everything staged durable, atomically, with one sync. On error the committer
    /// refuses every later operation (the store must be reopened).
    fn commit(&mut self) -> Result<(), StorageError>;
}

/// Counters of a [`GroupCommitter`], for benchmarks and tests.
#[derive(Debug, Default)]
pub struct CommitStats {
    /// Durable commits (each one sync).
    pub commits: AtomicU64,
    /// Operations committed.
    pub ops: AtomicU64,
    /// Entries committed (as reported by the caller of [`GroupCommitter::submit`]).
    pub entries: AtomicU64,
}

struct Job<O> {
    op: O,
    entries: u64,
    reply: oneshot::Sender<Result<(), StorageError>>,
}

/// Runs a store's writes on a dedicated thread. Every operation submitted while a commit is in
/// progress joins the next one: many concurrent writers, one fsync (group commit). Operations
/// are staged in submission order; each is all-or-nothing; a failed commit poisons the
/// committer, which then refuses everything with [`StorageErrorKind::Poisoned`].
pub struct GroupCommitter<B: CommitBatch> {
    tx: Option<mpsc::Sender<Job<B::Op>>>,
    thread: Option<thread::JoinHandle<()>>,
    stats: Arc<CommitStats>,
    poisoned: Arc<AtomicBool>,
}

impl<B: CommitBatch> GroupCommitter<B> {
    /// Starts the commit thread. `max_batch` bounds how many operations share one commit.
    pub fn start(name: &str, mut batch: B, max_batch: usize) -> std::io::Result<GroupCommitter<B>> {
        let (tx, rx) = mpsc::channel::<Job<B::Op>>();
        let stats = Arc::new(CommitStats::default());
        let poisoned = Arc::new(AtomicBool::new(false));
        let (s, p) = (stats.clone(), poisoned.clone());
        let thread = thread::Builder::new().name(name.to_string()).spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut jobs = vec![first];
                while jobs.len() < max_batch.max(1) {
                    match rx.try_recv() {
                        Ok(j) => jobs.push(j),
                        Err(_) => break,
                    }
                }
                if p.load(Ordering::Acquire) {
                    for j in jobs {
                        let _ = j.reply.send(Err(poisoned_error()));
                    }
                    continue;
                }
                let mut staged = Vec::with_capacity(jobs.len());
                let mut failure = None;
                for j in jobs {
                    if failure.is_some() {
                        let _ = j.reply.send(Err(poisoned_error()));
                        continue;
                    }
                    match batch.stage(&j.op) {
                        Ok(()) => staged.push(j),
                        Err(e) => {
                            // A refusal under the contract (invalid input) changes nothing; any
                            // other failure (I/O, corruption) may have left part of the
                            // operation staged, so nothing staged with it may commit.
                            if e.kind() != StorageErrorKind::InvalidInput {
                                failure = Some(e.clone());
                            }
                            let _ = j.reply.send(Err(e));
                        }
                    }
                }
                if let Some(e) = failure {
                    p.store(true, Ordering::Release);
                    for j in staged {
                        let _ = j.reply.send(Err(e.clone()));
                    }
                    continue;
                }
                if staged.is_empty() {
                    continue;
                }
                let result = batch.commit();
                if result.is_ok() {
                    s.commits.fetch_add(1, Ordering::Relaxed);
                    s.ops.fetch_add(staged.len() as u64, Ordering::Relaxed);
                    let n: u64 = staged.iter().map(|j| j.entries).sum();
                    s.entries.fetch_add(n, Ordering::Relaxed);
                } else {
                    p.store(true, Ordering::Release);
                }
                for j in staged {
                    let _ = j.reply.send(result.clone());
                }
            }
        })?;
        Ok(GroupCommitter { tx: Some(tx), thread: Some(thread), stats, poisoned })
    }

    /// Submits an operation and waits until it is durable (or refused). `entries` is counted
    /// in [`stats`](Self::stats).
    pub async fn submit(&self, op: B::Op, entries: u64) -> Result<(), StorageError> {
        let (reply, rx) = oneshot::channel();
        let tx = self.tx.as_ref().ok_or_else(closed)?;
        tx.send(Job { op, entries, reply }).map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    /// The commit counters.
    pub fn stats(&self) -> &CommitStats {
        &self.stats
    }

    /// Whether an earlier commit failed.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }
}

impl<B: CommitBatch> Drop for GroupCommitter<B> {
    fn drop(&mut self) {
        // Closing the channel ends the thread after the commit in progress.
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn closed() -> StorageError {
    StorageError::new(StorageErrorKind::Closed, "the store's commit thread has stopped")
}

fn poisoned_error() -> StorageError {
    StorageError::new(
        StorageErrorKind::Poisoned,
        "an earlier write failed; the store refuses writes until it is reopened",
    )
}

#[cfg(test)]
mod tests {
    use raftkit_core::Entry;

    use super::*;

    fn es(term: u64, range: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
        range.map(|i| Entry::blank(LogId::new(term, i))).collect()
    }

    #[test]
    fn shape_follows_writes_and_purges() {
        let mut s = LogShape::default();
        let w = LogWrite { entries: es(1, 1..=5), ..Default::default() };
        s.check_write(&w).unwrap();
        s.apply_write(&w);
        let w = LogWrite {
            truncate_from: Some(LogIndex(4)),
            entries: es(3, 4..=6),
            ..Default::default()
        };
        s.check_write(&w).unwrap();
        s.apply_write(&w);
        assert_eq!(s.last(), LogId::new(3, 6));
        assert_eq!(s.term_at(LogIndex(3)), Some(Term(1)));
        assert_eq!(s.term_at(LogIndex(4)), Some(Term(3)));
        assert!(s.check_write(&LogWrite { entries: es(3, 8..=8), ..Default::default() }).is_err());
        assert!(s.check_write(&LogWrite { entries: es(2, 7..=7), ..Default::default() }).is_err());
        assert!(s.check_purge(LogId::new(1, 3)).unwrap());
        assert!(s.check_purge(LogId::new(2, 3)).is_err());
        s.apply_purge(LogId::new(1, 3));
        assert_eq!(s.term_at(LogIndex(3)), Some(Term(1)));
        assert_eq!(s.term_at(LogIndex(2)), None);
        assert_eq!(
            s.check_read(LogIndex(3), LogIndex(4)).unwrap_err().kind(),
            StorageErrorKind::Purged
        );
        s.apply_purge(LogId::new(3, 6));
        assert_eq!((s.purged(), s.last()), (LogId::new(3, 6), LogId::new(3, 6)));
    }

    #[test]
    fn sealed_records_detect_any_flipped_bit() {
        let e = Entry::normal(LogId::new(3, 9), &b"payload"[..]);
        let rec = seal(&e).unwrap();
        assert_eq!(unseal::<Entry>(&rec, &"e").unwrap(), e);
        for i in 0..rec.len() {
            for bit in 0..8 {
                let mut bad = rec.clone();
                bad[i] ^= 1 << bit;
                let err = unseal::<Entry>(&bad, &"e").unwrap_err();
                assert_eq!(err.kind(), StorageErrorKind::Corruption, "byte {i} bit {bit}");
            }
        }
        assert_eq!(
            unseal::<Entry>(&rec[..3], &"e").unwrap_err().kind(),
            StorageErrorKind::Corruption
        );
    }

    #[test]
    fn an_intact_record_in_an_unknown_codec_version_is_unsupported() {
        let mut rec = seal(&LogId::new(3, 9)).unwrap();
        rec[4] = codec::VERSION + 1;
        let crc = crc32fast::hash(&rec[4..]);
        rec[..4].copy_from_slice(&crc.to_le_bytes());
        let err = unseal::<LogId>(&rec, &"the purged id").unwrap_err();
        assert_eq!(err.kind(), StorageErrorKind::Unsupported, "{err}");
        let version = format!("version {}", codec::VERSION + 1);
        assert!(err.to_string().contains(&version), "the error names the version: {err}");
        assert!(err.to_string().contains("the purged id"), "and the record: {err}");
    }

    #[test]
    fn discover_finds_every_run() {
        let terms = [1u64, 1, 2, 2, 2, 5, 7, 7, 7, 7, 9];
        let last = LogId::new(9, 11);
        let mut lookups = 0;
        let shape = LogShape::discover(LogId::ZERO, last, |i| {
            lookups += 1;
            Ok(Term(terms[(i.0 - 1) as usize]))
        })
        .unwrap();
        for (i, t) in terms.iter().enumerate() {
            assert_eq!(shape.term_at(LogIndex(i as u64 + 1)), Some(Term(*t)));
        }
        assert!(lookups < terms.len() * 2);
    }
}
