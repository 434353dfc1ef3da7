//! Guards the per-trait log-store suite against stores that lose what Raft needs: each fixture
//! here is a store with one planted defect, and a named case of `log_store_suite!` must fail on
//! it (while the same store without the defect passes that case). Every defect here used to pass
//! every case of the suite.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use raftkit::{
    Entry, EntryPayload, HardState, LogId, LogIndex, LogState, LogStore, LogWrite,
    MemSnapshotStore, SnapshotStore, StorageError,
};
use raftkit_testkit::LogStoreHarness;
use raftkit_testkit::log_store::{self as suite, LogModel, block_on};

/// A planted defect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Defect {
    /// None: the control.
    None,
    /// The vote is not part of the durable record: lost on reopen.
    ForgetsVoteOnReopen,
    /// The hard state is made durable only when term or vote change, so a write that changes
    /// only the commit index is lost on reopen.
    CommitOnlyWithTermOrVote,
    /// A read of more than 4,000 entries skips one.
    SkipsOneInLongReads,
    /// Entries above index 65,535 come back with a byte changed.
    DamagesEntriesAbove65535,
    /// A write of more than 256 entries keeps only the first 256.
    KeepsOnly256OfALargeWrite,
}

/// A store kept in memory with a separate "disk": every write is applied to both (durable at
/// once), except what the defect drops from the disk; a reopen reloads from the disk.
#[derive(Clone)]
struct ModelStore {
    inner: Arc<Mutex<(LogModel, LogModel)>>,
    defect: Defect,
    snapshots: Arc<MemSnapshotStore>,
}

impl ModelStore {
    fn new(defect: Defect) -> ModelStore {
        ModelStore { inner: Arc::default(), defect, snapshots: Arc::new(MemSnapshotStore::new()) }
    }

    fn reopened(&self) -> ModelStore {
        let mut g = self.inner.lock().unwrap();
        g.0 = g.1.clone();
        drop(g);
        self.clone()
    }
}

fn err(kind: raftkit::StorageErrorKind) -> StorageError {
    StorageError::new(kind, "refused by the model")
}

#[async_trait]
impl LogStore for ModelStore {
    async fn load(&self) -> Result<LogState, StorageError> {
        let g = self.inner.lock().unwrap();
        Ok(LogState { hard_state: g.0.hard_state, purged: g.0.purged, last: g.0.last() })
    }

    async fn write(&self, write: LogWrite) -> Result<(), StorageError> {
        let mut g = self.inner.lock().unwrap();
        let before: HardState = g.1.hard_state;
        let mut write = write;
        if self.defect == Defect::KeepsOnly256OfALargeWrite {
            write.entries.truncate(256);
        }
        g.0.write(&write).map_err(err)?;
        g.1.write(&write).map_err(err)?;
        if let Some(hs) = write.hard_state {
            match self.defect {
                Defect::ForgetsVoteOnReopen => g.1.hard_state.vote = None,
                Defect::CommitOnlyWithTermOrVote
                    if (hs.term, hs.vote) == (before.term, before.vote) =>
                {
                    g.1.hard_state = before;
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn read(&self, first: LogIndex, last: LogIndex) -> Result<Vec<Entry>, StorageError> {
        let mut out = self.inner.lock().unwrap().0.read(first, last).map_err(err)?;
        match self.defect {
            Defect::SkipsOneInLongReads if out.len() > 4_000 => {
                out.remove(out.len() / 2);
            }
            Defect::DamagesEntriesAbove65535 => {
                for e in out.iter_mut().filter(|e| e.log_id.index.0 > 65_535) {
                    if let EntryPayload::Normal(data) = &e.payload {
                        let mut bytes = data.to_vec();
                        bytes[0] ^= 0x20;
                        e.payload = EntryPayload::Normal(bytes.into());
                    }
                }
            }
            _ => {}
        }
        Ok(out)
    }

    async fn purge(&self, up_to: LogId) -> Result<(), StorageError> {
        let mut g = self.inner.lock().unwrap();
        g.0.purge(up_to).map_err(err)?;
        g.1.purge(up_to).map_err(err)
    }

    async fn install_snapshot(&self, snapshot: LogId) -> Result<(), StorageError> {
        let mut g = self.inner.lock().unwrap();
        g.0.install(snapshot);
        g.1.install(snapshot);
        Ok(())
    }

    fn snapshot_store(&self) -> Arc<dyn SnapshotStore> {
        self.snapshots.clone()
    }
}

struct Harness(Defect);

#[async_trait]
impl LogStoreHarness for Harness {
    type Store = ModelStore;
    type Guard = ();

    fn crash_model(&self) -> raftkit_testkit::CrashModel {
        raftkit_testkit::CrashModel::CleanReopenOnly
    }

    async fn build(&self) -> (ModelStore, ()) {
        (ModelStore::new(self.0), ())
    }

    async fn reopen(&self, store: ModelStore, _: &()) -> ModelStore {
        store.reopened()
    }
}

/// Whether `case` fails (panics) on a store with `defect`.
fn fails(defect: Defect, case: impl FnOnce(&Harness)) -> bool {
    let h = Harness(defect);
    std::panic::catch_unwind(AssertUnwindSafe(|| case(&h))).is_err()
}

#[test]
fn the_control_store_passes_the_hard_state_case() {
    assert!(!fails(Defect::None, |h| block_on(suite::hard_state_save_and_load(h))));
}

#[test]
fn a_store_that_forgets_the_vote_on_reopen_fails_hard_state_save_and_load() {
    assert!(fails(Defect::ForgetsVoteOnReopen, |h| block_on(suite::hard_state_save_and_load(h))));
}

#[test]
fn a_store_that_keeps_commit_only_with_term_or_vote_fails_hard_state_save_and_load() {
    assert!(fails(Defect::CommitOnlyWithTermOrVote, |h| block_on(
        suite::hard_state_save_and_load(h)
    )));
}

#[test]
fn the_control_store_passes_the_long_read_case() {
    assert!(!fails(Defect::None, |h| block_on(suite::long_reads_at_high_indexes(h))));
}

#[test]
fn a_store_that_skips_an_entry_in_long_reads_fails_long_reads_at_high_indexes() {
    assert!(fails(Defect::SkipsOneInLongReads, |h| block_on(suite::long_reads_at_high_indexes(h))));
}

#[test]
fn a_store_that_damages_entries_above_65535_fails_long_reads_at_high_indexes() {
    assert!(fails(Defect::DamagesEntriesAbove65535, |h| {
        block_on(suite::long_reads_at_high_indexes(h))
    }));
}

#[test]
fn a_store_that_keeps_part_of_a_large_write_fails_long_reads_at_high_indexes() {
    assert!(fails(Defect::KeepsOnly256OfALargeWrite, |h| {
        block_on(suite::long_reads_at_high_indexes(h))
    }));
}
