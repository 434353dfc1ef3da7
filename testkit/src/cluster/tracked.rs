//! [`Tracked`]: the wrapper around every node's log store in a cluster run.
//!
//! It records what the store has *acknowledged*. By the [`LogStore`] contract a `write`,
//! `purge` or `install_snapshot` that returned `Ok` is durable, so the acknowledged state
//! ([`Acknowledged`], a [`DurableView`]) is a durable view of any store: the checker's
//! persist-before-send and durability checks run on every store, not only on those whose
//! harness implements [`LogStoreHarness::durable`](crate::LogStoreHarness::durable). A harness
//! view is still preferred when there is one, as it knows exactly what is on disk.
//!
//! It also injects the nemesis's disk failure ([`Tracked::fail_disk`]): the next write (or purge,
//! or install) returns an [`Io`](StorageErrorKind::Io) error, having reached the store or not,
//! every later one returns [`Poisoned`](StorageErrorKind::Poisoned), and reads may fail too. The
//! checker is told at once ([`Checker::on_store_failed`]) with what the store had acknowledged.
//! The disk is "replaced" by crashing the node and reopening its store through the harness; the
//! restarted node gets a new, healthy wrapper whose record starts from the store's `load`.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use async_trait::async_trait;
use raftkit::{
    Entry, HardState, LogId, LogIndex, LogState, LogStore, LogWrite, NodeId, SnapshotStore,
    StorageError, StorageErrorKind, Term,
};

use super::checker::{Acknowledged, Checker};
use crate::harness::DurableView;
use crate::rng::Rng;

/// The health of a node's simulated disk.
enum Disk {
    Healthy,
    /// The next write fails with `Io`; `reach` says whether it reaches the store first.
    Armed {
        reach: bool,
        read_failures: f64,
        rng: Rng,
    },
    /// Every write fails with `Poisoned`; a read fails with probability `read_failures`.
    Failed {
        read_failures: f64,
        rng: Rng,
    },
}

/// What one incarnation of a node's store has acknowledged, and its disk's health; shared by
/// the clones of a [`Tracked`].
struct Ledger {
    acked: Acknowledged,
    disk: Disk,
}

/// Whom to tell when the disk fails: set once the node's incarnation is known.
struct Watch {
    checker: Arc<Checker>,
    id: NodeId,
    incarnation: u32,
}

struct Shared {
    ledger: Mutex<Ledger>,
    watch: OnceLock<Watch>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a mutating call may do, given the disk's health.
enum Gate {
    Pass,
    /// The call that fails the disk: `Io`, after reaching the store if `reach`.
    Fail {
        reach: bool,
    },
    Poisoned,
}

/// A node's log store, recording what it acknowledged and able to fail like a broken disk.
/// Clones share the record and the disk.
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
        let ledger = Ledger { acked, disk: Disk::Healthy };
        Tracked {
            inner,
            shared: Arc::new(Shared { ledger: Mutex::new(ledger), watch: OnceLock::new() }),
        }
    }

    /// Tells `checker` when the disk fails, as the store of `id` in `incarnation`.
    pub(crate) fn watch(&self, checker: Arc<Checker>, id: NodeId, incarnation: u32) {
        let _ = self.shared.watch.set(Watch { checker, id, incarnation });
    }

    /// What the store has acknowledged, as a durable view that follows it.
    pub(crate) fn view(&self) -> Arc<dyn DurableView> {
        Arc::new(AckedView(self.shared.clone()))
    }

    /// Arms the disk failure: the next mutating call fails. Returns what was drawn, for the
    /// trace.
    pub(crate) fn fail_disk(&self, rng: &mut Rng) -> String {
        let reach = rng.chance(0.5);
        let read_failures = *rng.pick(&[0.0, 0.3, 1.0]);
        let mut l = self.shared.lock();
        if matches!(l.disk, Disk::Healthy) {
            l.disk = Disk::Armed { reach, read_failures, rng: rng.fork() };
        }
        format!(
            "the next write fails{}, then every write; reads fail {:.0}% of the time",
            if reach { " after reaching the store" } else { " before reaching the store" },
            read_failures * 100.0
        )
    }

    /// Whether the disk has failed (a mutating call met it armed).
    pub(crate) fn disk_failed(&self) -> bool {
        matches!(self.shared.lock().disk, Disk::Failed { .. })
    }

    fn gate(&self) -> Gate {
        let mut l = self.shared.lock();
        match std::mem::replace(&mut l.disk, Disk::Healthy) {
            Disk::Healthy => Gate::Pass,
            Disk::Armed { reach, read_failures, rng } => {
                l.disk = Disk::Failed { read_failures, rng };
                let acked = l.acked.clone();
                drop(l);
                if let Some(w) = self.shared.watch.get() {
                    w.checker.on_store_failed(w.id, w.incarnation, acked);
                }
                Gate::Fail { reach }
            }
            failed @ Disk::Failed { .. } => {
                l.disk = failed;
                Gate::Poisoned
            }
        }
    }

    /// Whether a read fails now (only on a failed disk).
    fn read_fails(&self) -> bool {
        match &mut self.shared.lock().disk {
            Disk::Failed { read_failures, rng } => {
                let p = *read_failures;
                rng.chance(p)
            }
            _ => false,
        }
    }

    fn record(&self, f: impl FnOnce(&mut Acknowledged)) {
        f(&mut self.shared.lock().acked);
    }
}

fn injected(kind: StorageErrorKind, what: &str) -> StorageError {
    StorageError::new(kind, format!("injected disk failure: {what}"))
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
        match self.gate() {
            Gate::Pass => {}
            Gate::Fail { reach } => {
                if reach {
                    // It may be on the disk now; the node must not count on it either way.
                    let _ = self.inner.write(write).await;
                }
                return Err(injected(StorageErrorKind::Io, "the write did not complete"));
            }
            Gate::Poisoned => {
                return Err(injected(StorageErrorKind::Poisoned, "an earlier write failed"));
            }
        }
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
        if self.read_fails() {
            return Err(injected(StorageErrorKind::Io, "the read failed"));
        }
        self.inner.read(first, last).await
    }

    async fn purge(&self, up_to: LogId) -> Result<(), StorageError> {
        match self.gate() {
            Gate::Pass => {}
            Gate::Fail { reach } => {
                if reach {
                    let _ = self.inner.purge(up_to).await;
                }
                return Err(injected(StorageErrorKind::Io, "the purge did not complete"));
            }
            Gate::Poisoned => {
                return Err(injected(StorageErrorKind::Poisoned, "an earlier write failed"));
            }
        }
        self.inner.purge(up_to).await?;
        self.record(|a| a.shape.apply_purge(up_to));
        Ok(())
    }

    async fn install_snapshot(&self, snapshot: LogId) -> Result<(), StorageError> {
        match self.gate() {
            Gate::Pass => {}
            Gate::Fail { reach } => {
                if reach {
                    let _ = self.inner.install_snapshot(snapshot).await;
                }
                return Err(injected(StorageErrorKind::Io, "the install did not complete"));
            }
            Gate::Poisoned => {
                return Err(injected(StorageErrorKind::Poisoned, "an earlier write failed"));
            }
        }
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
        self.0.lock().acked.hard_state
    }

    fn last(&self) -> LogId {
        self.0.lock().acked.shape.last()
    }

    fn term_at(&self, index: LogIndex) -> Option<Term> {
        self.0.lock().acked.shape.term_at(index)
    }
}

#[cfg(test)]
mod tests {
    use raftkit::MemSnapshotStore;

    use super::*;

    /// A store that acknowledges every call, or fails every one once `fail` is set; it counts
    /// the writes that reach it.
    #[derive(Clone, Default)]
    struct Switch {
        fail: Arc<std::sync::atomic::AtomicBool>,
        writes: Arc<std::sync::atomic::AtomicU64>,
        snapshots: MemSnapshotStore,
    }

    impl Switch {
        fn result(&self) -> Result<(), StorageError> {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StorageError::new(StorageErrorKind::Io, "EIO"));
            }
            Ok(())
        }

        fn writes(&self) -> u64 {
            self.writes.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl LogStore for Switch {
        async fn load(&self) -> Result<LogState, StorageError> {
            Ok(LogState::default())
        }
        async fn write(&self, _: LogWrite) -> Result<(), StorageError> {
            self.writes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
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

    #[tokio::test]
    async fn a_failed_disk_fails_every_write_and_tells_the_checker() {
        let inner = Switch::default();
        let t = Tracked::new(inner.clone(), Acknowledged::default());
        let view = t.view();
        t.write(append(1, 1, 3, None)).await.unwrap();
        let checker = Arc::new(Checker::new(3));
        let inc = checker.start_incarnation(NodeId(1), HardState::default(), Some(t.view()));
        t.watch(checker.clone(), NodeId(1), inc);
        let mut rng = Rng::new(3);
        t.fail_disk(&mut rng);
        assert!(!t.disk_failed(), "armed, not failed: nothing was written yet");
        assert!(!checker.store_failed(NodeId(1)));
        let before = inner.writes();
        let e = t.write(append(1, 4, 4, None)).await.unwrap_err();
        assert_eq!(e.kind(), StorageErrorKind::Io);
        assert!(t.disk_failed() && checker.store_failed(NodeId(1)));
        for _ in 0..3 {
            let e = t.write(append(1, 4, 4, None)).await.unwrap_err();
            assert_eq!(e.kind(), StorageErrorKind::Poisoned);
            let e = t.purge(LogId::new(1, 2)).await.unwrap_err();
            assert_eq!(e.kind(), StorageErrorKind::Poisoned);
            let e = t.install_snapshot(LogId::new(1, 9)).await.unwrap_err();
            assert_eq!(e.kind(), StorageErrorKind::Poisoned);
        }
        // At most the failing write reached the store; nothing after it did.
        assert!(inner.writes() <= before + 1);
        // Nothing that failed was recorded as acknowledged.
        assert_eq!(view.last(), LogId::new(1, 3));
    }
}
