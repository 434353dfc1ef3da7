//! [`MemLogStore`]: the reference log store, with a model of what a crash loses.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use raftkit::store::LogShape;
use raftkit::{
    Entry, HardState, LogId, LogIndex, LogState, LogStore, LogWrite, StorageError,
    StorageErrorKind, Term,
};
use raftkit::{MemSnapshotStore, SnapshotStore};

/// A log store in memory: correct, simple, and the reference the durable stores are tested
/// against.
///
/// It models durability explicitly. Every write first lands in a *volatile* copy (what reads
/// see, like a page cache) and becomes *durable* once its "fsync" completes — immediately by
/// default, or after [`with_sync_delay`](Self::with_sync_delay). `write` returns only after
/// that. [`crash`](Self::crash) throws away everything not yet durable, as power loss would; a
/// write abandoned mid-sync (its future dropped, as when the node is killed) never becomes
/// durable.
///
/// Clones share the same data, so a test can stop a node and start a new one on a clone of its
/// store, as after a process restart. Nothing survives the process itself. One writer at a time
/// (the engine's log writer) is assumed; reads may run concurrently with it.
#[derive(Clone, Debug, Default)]
pub struct MemLogStore {
    inner: Arc<Mutex<Inner>>,
    /// Snapshots, shared by clones like the log (and, like it, gone with the process).
    snapshots: MemSnapshotStore,
}

#[derive(Debug, Default)]
struct Inner {
    volatile: LogData,
    /// What a crash keeps; `None` when syncs are instant, as every write is then durable the
    /// moment it lands and the two copies would always be equal (one copy saves a clone of
    /// every entry).
    durable: Option<LogData>,
    sync_delay: Duration,
    /// Bumped by every crash, so a write that straddles one cannot make itself durable.
    epoch: u64,
    writes: u64,
}

#[derive(Clone, Debug, Default)]
struct LogData {
    hard_state: HardState,
    /// Purged id, last id and term runs, with the contract's validation rules.
    shape: LogShape,
    /// Entries after the purged id, contiguous.
    entries: VecDeque<Entry>,
}

impl LogData {
    fn last(&self) -> LogId {
        self.shape.last()
    }

    fn offset(&self, index: LogIndex) -> usize {
        (index.0 - self.shape.purged().index.0 - 1) as usize
    }

    fn term_at(&self, index: LogIndex) -> Option<Term> {
        self.shape.term_at(index)
    }

    fn validate(&self, write: &LogWrite) -> Result<(), StorageError> {
        self.shape.check_write(write)
    }

    /// Applies a validated write.
    fn apply(&mut self, write: &LogWrite) {
        self.apply_shape(write);
        self.entries.extend(write.entries.iter().cloned());
    }

    /// Applies a validated write, taking its entries.
    fn apply_owned(&mut self, mut write: LogWrite) {
        self.apply_shape(&write);
        self.entries.extend(write.entries.drain(..));
    }

    /// Everything of a write but adding its entries.
    fn apply_shape(&mut self, write: &LogWrite) {
        if let Some(t) = write.truncate_from {
            let keep = self.offset(t);
            self.entries.truncate(keep);
        }
        if let Some(hs) = write.hard_state {
            self.hard_state = hs;
        }
        self.shape.apply_write(write);
    }

    fn install(&mut self, s: LogId) {
        if self.shape.install_keeps_suffix(s) {
            let n = (s.index.0 - self.shape.purged().index.0) as usize;
            self.entries.drain(..n.min(self.entries.len()));
        } else {
            self.entries.clear();
        }
        self.shape.apply_install(s);
    }

    fn purge(&mut self, up_to: LogId) -> Result<(), StorageError> {
        if self.shape.check_purge(up_to)? {
            let at = self.offset(up_to.index);
            self.entries.drain(..=at);
            self.shape.apply_purge(up_to);
        }
        Ok(())
    }

    fn read(&self, first: LogIndex, last: LogIndex) -> Result<Vec<Entry>, StorageError> {
        self.shape.check_read(first, last)?;
        let (a, b) = (self.offset(first), self.offset(last));
        Ok(self.entries.range(a..=b).cloned().collect())
    }
}

/// What a [`MemLogStore`] holds durably: what would survive a crash now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurableSummary {
    /// The durable hard state.
    pub hard_state: HardState,
    /// The durable last purged id.
    pub purged: LogId,
    /// The durable last entry.
    pub last: LogId,
}

impl MemLogStore {
    /// An empty store whose writes are durable as soon as they are applied.
    pub fn new() -> MemLogStore {
        MemLogStore::default()
    }

    /// An empty store whose writes take `delay` (of tokio time) to become durable, so that a
    /// crash can catch a write half-way and lose it.
    pub fn with_sync_delay(delay: Duration) -> MemLogStore {
        let s = MemLogStore::default();
        let mut g = s.lock();
        g.sync_delay = delay;
        if !delay.is_zero() {
            g.durable = Some(LogData::default());
        }
        drop(g);
        s
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update validates first and then mutates without panicking, so a poisoned lock
        // still guards consistent data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Simulates power loss: everything not yet durable is gone.
    pub fn crash(&self) {
        let mut g = self.lock();
        if let Some(durable) = g.durable.clone() {
            g.volatile = durable;
        }
        g.epoch += 1;
    }

    /// What would survive a crash right now.
    pub fn durable(&self) -> DurableSummary {
        let g = self.lock();
        let d = g.durable.as_ref().unwrap_or(&g.volatile);
        DurableSummary { hard_state: d.hard_state, purged: d.shape.purged(), last: d.last() }
    }

    /// The term of the durable entry at `index`, if there is one.
    pub fn durable_term_at(&self, index: LogIndex) -> Option<Term> {
        let g = self.lock();
        g.durable.as_ref().unwrap_or(&g.volatile).term_at(index)
    }

    /// How many `write` calls have completed (each one an "fsync" of a real store).
    pub fn write_count(&self) -> u64 {
        self.lock().writes
    }

    /// A copy of every entry in the store (as reads see it), for tests.
    pub fn entries(&self) -> Vec<Entry> {
        self.lock().volatile.entries.iter().cloned().collect()
    }
}

#[async_trait]
impl LogStore for MemLogStore {
    async fn load(&self) -> Result<LogState, StorageError> {
        let g = self.lock();
        let v = &g.volatile;
        Ok(LogState { hard_state: v.hard_state, purged: v.shape.purged(), last: v.last() })
    }

    async fn write(&self, write: LogWrite) -> Result<(), StorageError> {
        let (delay, epoch) = {
            let mut g = self.lock();
            g.volatile.validate(&write)?;
            if g.durable.is_none() {
                // Instant sync: the one copy is the durable one.
                g.volatile.apply_owned(write);
                g.writes += 1;
                return Ok(());
            }
            g.volatile.apply(&write);
            (g.sync_delay, g.epoch)
        };
        // The "fsync". If this future is dropped here, the write never becomes durable.
        tokio::time::sleep(delay).await;
        let mut g = self.lock();
        if g.epoch != epoch {
            return Err(StorageError::new(
                StorageErrorKind::Io,
                "the store crashed during the write",
            ));
        }
        if let Some(d) = g.durable.as_mut() {
            d.apply(&write);
        }
        g.writes += 1;
        Ok(())
    }

    async fn read(&self, first: LogIndex, last: LogIndex) -> Result<Vec<Entry>, StorageError> {
        self.lock().volatile.read(first, last)
    }

    async fn install_snapshot(&self, snapshot: LogId) -> Result<(), StorageError> {
        let (delay, epoch) = {
            let mut g = self.lock();
            g.volatile.install(snapshot);
            if g.durable.is_none() {
                return Ok(());
            }
            (g.sync_delay, g.epoch)
        };
        tokio::time::sleep(delay).await;
        let mut g = self.lock();
        if g.epoch != epoch {
            return Err(StorageError::new(
                StorageErrorKind::Io,
                "the store crashed during the install",
            ));
        }
        if let Some(d) = g.durable.as_mut() {
            d.install(snapshot);
        }
        Ok(())
    }

    /// A write is a few vector operations under a lock (or starts a simulated sync).
    fn inline_write(&self) -> bool {
        true
    }

    fn snapshot_store(&self) -> Arc<dyn SnapshotStore> {
        Arc::new(self.snapshots.clone())
    }

    async fn purge(&self, up_to: LogId) -> Result<(), StorageError> {
        let mut g = self.lock();
        g.volatile.purge(up_to)?;
        // Purging durable data is safe at any time (purged entries are covered by a snapshot),
        // and the durable copy may lag, so purge what it has.
        if let Some(d) = g.durable.as_mut() {
            let durable_up_to = up_to.index.min(d.last().index);
            if let Some(term) = d.term_at(durable_up_to) {
                let _ = d.purge(LogId { term, index: durable_up_to });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(term: u64, range: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
        range.map(|i| Entry::blank(LogId::new(term, i))).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_crash_loses_only_what_was_not_durable() {
        let s = MemLogStore::with_sync_delay(Duration::from_millis(5));
        s.write(LogWrite { entries: entries(1, 1..=3), ..Default::default() }).await.unwrap();
        assert_eq!(s.durable().last, LogId::new(1, 3));
        // A write abandoned during its sync: visible to reads, but not durable.
        let w = {
            let s = s.clone();
            tokio::spawn(async move {
                s.write(LogWrite { entries: entries(1, 4..=6), ..Default::default() }).await
            })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(s.load().await.unwrap().last, LogId::new(1, 6));
        assert_eq!(s.durable().last, LogId::new(1, 3));
        w.abort();
        let _ = w.await;
        s.crash();
        assert_eq!(s.load().await.unwrap().last, LogId::new(1, 3));
        assert!(s.read(LogIndex(4), LogIndex(4)).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_straddling_a_crash_fails_and_stays_lost() {
        let s = MemLogStore::with_sync_delay(Duration::from_millis(5));
        let w = {
            let s = s.clone();
            tokio::spawn(async move {
                s.write(LogWrite { entries: entries(1, 1..=2), ..Default::default() }).await
            })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        s.crash();
        let err = w.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), StorageErrorKind::Io);
        assert_eq!(s.durable().last, LogId::ZERO);
        assert_eq!(s.load().await.unwrap().last, LogId::ZERO);
    }
}
