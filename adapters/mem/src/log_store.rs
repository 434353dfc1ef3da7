//! [`MemLogStore`]: the reference log store.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use raftkit::{
    Entry, HardState, LogId, LogIndex, LogState, LogStore, LogWrite, StorageError, StorageErrorKind,
};

/// A log store in memory: correct, simple, and the reference the durable stores are tested
/// against.
///
/// "Durable" here means "survives the node": clones share the same data, so a test can stop a
/// node and start a new one on a clone of its store, as after a process restart. Nothing
/// survives the process.
#[derive(Clone, Debug, Default)]
pub struct MemLogStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    hard_state: HardState,
    purged: LogId,
    /// Entries after `purged`, contiguous.
    entries: VecDeque<Entry>,
    /// Counters for tests and benchmarks.
    writes: u64,
}

impl Inner {
    fn last(&self) -> LogId {
        self.entries.back().map_or(self.purged, |e| e.log_id)
    }

    fn offset(&self, index: LogIndex) -> usize {
        (index.0 - self.purged.index.0 - 1) as usize
    }
}

fn invalid(msg: String) -> StorageError {
    StorageError::new(StorageErrorKind::InvalidInput, msg)
}

impl MemLogStore {
    /// An empty store.
    pub fn new() -> MemLogStore {
        MemLogStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the data half-updated (every update below
        // validates first and then mutates without panicking), so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many `write` calls have completed (each one is an "fsync" of a real store).
    pub fn write_count(&self) -> u64 {
        self.lock().writes
    }

    /// A copy of every entry in the store, for tests.
    pub fn entries(&self) -> Vec<Entry> {
        self.lock().entries.iter().cloned().collect()
    }
}

#[async_trait]
impl LogStore for MemLogStore {
    async fn load(&self) -> Result<LogState, StorageError> {
        let g = self.lock();
        Ok(LogState { hard_state: g.hard_state, purged: g.purged, last: g.last() })
    }

    async fn write(&self, write: LogWrite) -> Result<(), StorageError> {
        let mut g = self.lock();
        // Validate everything first so the write is all-or-nothing.
        let last = g.last();
        let mut expected = last.index.next();
        if let Some(t) = write.truncate_from {
            if t <= g.purged.index || t > last.index.next() {
                return Err(invalid(format!(
                    "truncate_from {t} outside ({}, {}]",
                    g.purged.index,
                    last.index.next()
                )));
            }
            expected = t;
        }
        for e in &write.entries {
            if e.index() != expected {
                return Err(invalid(format!(
                    "append expected index {expected}, got {}",
                    e.index()
                )));
            }
            expected = expected.next();
        }
        if let Some(t) = write.truncate_from {
            let keep = g.offset(t);
            g.entries.truncate(keep);
        }
        g.entries.extend(write.entries);
        if let Some(hs) = write.hard_state {
            g.hard_state = hs;
        }
        g.writes += 1;
        Ok(())
    }

    async fn read(&self, first: LogIndex, last: LogIndex) -> Result<Vec<Entry>, StorageError> {
        let g = self.lock();
        if first > last {
            return Err(invalid(format!("read range {first}..={last} is inverted")));
        }
        if first <= g.purged.index {
            return Err(StorageError::new(
                StorageErrorKind::Purged,
                format!("read from {first} but entries up to {} are purged", g.purged.index),
            ));
        }
        if last > g.last().index {
            return Err(StorageError::new(
                StorageErrorKind::OutOfRange,
                format!("read to {last} but the last entry is {}", g.last().index),
            ));
        }
        let (a, b) = (g.offset(first), g.offset(last));
        Ok(g.entries.range(a..=b).cloned().collect())
    }

    async fn purge(&self, up_to: LogId) -> Result<(), StorageError> {
        let mut g = self.lock();
        if up_to.index <= g.purged.index {
            return Ok(());
        }
        if up_to.index > g.last().index {
            return Err(invalid(format!("purge to {up_to} past the last entry {}", g.last())));
        }
        let at = g.offset(up_to.index);
        if g.entries[at].log_id != up_to {
            return Err(invalid(format!(
                "purge to {up_to} but the log holds {} there",
                g.entries[at].log_id
            )));
        }
        g.entries.drain(..=at);
        g.purged = up_to;
        Ok(())
    }
}
