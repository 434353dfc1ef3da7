//! [`Tracked`]: the wrapper around every node's log store in a cluster run.
//!
//! It records what the store has *acknowledged*. By the [`LogStore`] contract a `write`,
//! `purge` or `install_snapshot` that returned `Ok` is durable, so the acknowledged state
//! ([`Acknowledged`], a [`DurableView`]) is a durable view of any store: the checker's
//! persist-before-send and durability checks run on every store, not only on those whose
//! harness implements [`LogStoreHarness::durable`](crate::LogStoreHarness::durable). A harness
//! view is still preferred when there is one, as it knows exactly what is on disk.
//!
//! A restarted node gets a new wrapper whose record starts from the store's `load`.

use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use raftkit::{
    Entry, HardState, LogId, LogIndex, LogState, LogStore, LogWrite, SnapshotStore, StorageError,
    Term,
};

use super::checker::Acknowledged;
use crate::harness::DurableView;

/// What one incarnation of a node's store has acknowledged; shared by the clones of a
/// [`Tracked`].
struct Shared {
    acked: Mutex<Acknowledged>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Acknowledged> {
        self.acked.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A node's log store, recording what it acknowledged. Clones share the record.
pub(crate) struct Tracked<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: Clone> Clone for Tracked<S> {
    fn clone(&self) -> Self {
        Tracked { inner: self.inner.clone(), shared: self.shared.clone() }
    }
}

impl<S: LogStore> Tracked<S> {
    /// Wraps `inner`, which holds (durably: it was just opened) `acked`.
    pub(crate) fn new(inner: S, acked: Acknowledged) -> Tracked<S> {
        Tracked { inner, shared: Arc::new(Shared { acked: Mutex::new(acked) }) }
    }

    /// What the store has acknowledged, as a durable view that follows it.
    pub(crate) fn view(&self) -> Arc<dyn DurableView> {
        Arc::new(AckedView(self.shared.clone()))
    }

    fn record(&self, f: impl FnOnce(&mut Acknowledged)) {
        f(&mut self.shared.lock());
    }
}

/// The ids of a write's entries, without their payloads: all the record needs.
fn shape_of(w: &LogWrite) -> LogWrite {
    LogWrite {
        hard_state: w.hard_state,
        truncate_from: w.truncate_from,
        entries: w.entries.iter().map(|e| Entry::blank(e.log_id)).collect(),
    }
}

#[async_trait]
impl<S: LogStore> LogStore for Tracked<S> {
    async fn load(&self) -> Result<LogState, StorageError> {
        self.inner.load().await
    }

    async fn write(&self, write: LogWrite) -> Result<(), StorageError> {
        let shape = shape_of(&write);
        self.inner.write(write).await?;
        self.record(|a| {
            if let Some(hs) = shape.hard_state {
                a.hard_state = hs;
            }
            a.shape.apply_write(&shape);
        });
        Ok(())
    }

    async fn read(&self, first: LogIndex, last: LogIndex) -> Result<Vec<Entry>, StorageError> {
        self.inner.read(first, last).await
    }

    async fn purge(&self, up_to: LogId) -> Result<(), StorageError> {
        self.inner.purge(up_to).await?;
        self.record(|a| a.shape.apply_purge(up_to));
        Ok(())
    }

    async fn install_snapshot(&self, snapshot: LogId) -> Result<(), StorageError> {
        self.inner.install_snapshot(snapshot).await?;
        self.record(|a| a.shape.apply_install(snapshot));
        Ok(())
    }

    fn inline_write(&self) -> bool {
        self.inner.inline_write()
    }

    fn snapshot_store(&self) -> Arc<dyn SnapshotStore> {
        self.inner.snapshot_store()
    }
}

/// [`Acknowledged`] as it stands, as a durable view.
struct AckedView(Arc<Shared>);

impl DurableView for AckedView {
    fn hard_state(&self) -> HardState {
        self.0.lock().hard_state
    }

    fn last(&self) -> LogId {
        self.0.lock().shape.last()
    }

    fn term_at(&self, index: LogIndex) -> Option<Term> {
        self.0.lock().shape.term_at(index)
    }
}

#[cfg(test)]
mod tests {
    use raftkit::{MemSnapshotStore, NodeId, StorageErrorKind};

    use super::*;

    /// A store that acknowledges every call, or fails every one once `fail` is set.
    #[derive(Clone, Default)]
    struct Switch {
        fail: Arc<std::sync::atomic::AtomicBool>,
        snapshots: MemSnapshotStore,
    }

    impl Switch {
        fn result(&self) -> Result<(), StorageError> {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StorageError::new(StorageErrorKind::Io, "EIO"));
            }
            Ok(())
        }
    }

    #[async_trait]
    impl LogStore for Switch {
        async fn load(&self) -> Result<LogState, StorageError> {
            Ok(LogState::default())
        }
        async fn write(&self, _: LogWrite) -> Result<(), StorageError> {
            self.result()
        }
        async fn read(&self, _: LogIndex, _: LogIndex) -> Result<Vec<Entry>, StorageError> {
            Ok(Vec::new())
        }
        async fn purge(&self, _: LogId) -> Result<(), StorageError> {
            self.result()
        }
        async fn install_snapshot(&self, _: LogId) -> Result<(), StorageError> {
            self.result()
        }
        fn inline_write(&self) -> bool {
            true
        }
        fn snapshot_store(&self) -> Arc<dyn SnapshotStore> {
            Arc::new(self.snapshots.clone())
        }
    }

    fn append(term: u64, from: u64, to: u64, hs: Option<HardState>) -> LogWrite {
        LogWrite {
            hard_state: hs,
            entries: (from..=to).map(|i| Entry::normal(LogId::new(term, i), "x")).collect(),
            ..LogWrite::default()
        }
    }

    #[tokio::test]
    async fn records_what_the_store_acknowledged() {
        let inner = Switch::default();
        let t = Tracked::new(inner.clone(), Acknowledged::default());
        assert!(t.inline_write(), "forwarded");
        let view = t.view();
        let hs = HardState { term: Term(2), vote: Some(NodeId(1)), commit: LogIndex(1) };
        t.write(append(1, 1, 3, None)).await.unwrap();
        t.write(append(2, 4, 5, Some(hs))).await.unwrap();
        assert_eq!((view.hard_state(), view.last()), (hs, LogId::new(2, 5)));
        let terms = (view.term_at(LogIndex(3)), view.term_at(LogIndex(4)));
        assert_eq!(terms, (Some(Term(1)), Some(Term(2))));
        t.purge(LogId::new(1, 2)).await.unwrap();
        assert_eq!(view.term_at(LogIndex(1)), None);
        t.install_snapshot(LogId::new(3, 9)).await.unwrap();
        assert_eq!(view.last(), LogId::new(3, 9));
        // A call that failed is not acknowledged.
        inner.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        let other = HardState { term: Term(4), ..hs };
        assert!(t.write(append(4, 10, 12, Some(other))).await.is_err());
        assert!(t.purge(LogId::new(3, 9)).await.is_err());
        assert_eq!((view.hard_state(), view.last()), (hs, LogId::new(3, 9)));
    }
}
