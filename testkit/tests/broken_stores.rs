//! Guards the per-trait log-store suite against stores that lose what Raft needs: each fixture
//! here is a store with one planted defect, and a named case of `log_store_suite!` must fail on
//! it (while the same store without the defect passes that case). Every defect here used to pass
//! every case of the suite. The fixtures run on the testkit's `SimFs` (`CrashModel::LossyFs`),
//! as a store author's harness would. The defects a crash between writes exposes are failed by
//! the cluster suite too.

#![allow(clippy::print_stderr)] // the seed that caught each defect is printed

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use raftkit::fs::Fs;
use raftkit::{
    Entry, EntryPayload, FileSnapshotStore, HardState, LogId, LogIndex, LogState, LogStore,
    LogWrite, MemSnapshotStore, SnapshotStore, StorageError, codec,
};
use raftkit_mem::harness::MemNetHarness;
use raftkit_testkit::cluster::ClusterSuite;
use raftkit_testkit::fs::SimFs;
use raftkit_testkit::log_store::{self as suite, LogModel, block_on};
use raftkit_testkit::{CrashModel, LogStoreHarness};

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
    /// A new term and its vote are saved in two steps (the term first, with the old vote), so
    /// a crash in between leaves a new term with the old vote.
    TermAndVoteInTwoSteps,
    /// Writes are acknowledged once handed to the file system, before they are synced.
    AcksBeforeDurable,
    /// The state file is overwritten in place (no temporary file and rename), so a crash can
    /// tear it.
    OverwritesInPlace,
    /// An I/O error does not poison the store: later writes are accepted.
    NeverPoisons,
    /// Snapshots are kept in memory only: gone after a restart.
    SnapshotsInMemoryOnly,
}

/// A store that keeps its whole log in one file on a [`SimFs`], replaced atomically by every
/// write (temporary file, fsync, rename, fsync of the directory) — except where the defect
/// says otherwise — with an in-memory copy serving reads.
#[derive(Clone)]
struct ModelStore {
    fs: SimFs,
    mem: Arc<Mutex<(LogModel, bool)>>,
    defect: Defect,
    snapshots: Arc<dyn SnapshotStore>,
}

type Record = (HardState, LogId, Vec<Entry>);

fn err(kind: raftkit::StorageErrorKind) -> StorageError {
    StorageError::new(kind, "refused by the model")
}

fn state_path() -> &'static Path {
    Path::new("/store/state")
}

impl ModelStore {
    /// Opens the store on `fs`, with snapshots in a file store under `snapshots_dir`.
    fn open(fs: SimFs, defect: Defect, snapshots_dir: &Path) -> ModelStore {
        let snapshots: Arc<dyn SnapshotStore> = if defect == Defect::SnapshotsInMemoryOnly {
            Arc::new(MemSnapshotStore::new())
        } else {
            Arc::new(FileSnapshotStore::open(snapshots_dir).expect("snapshot store"))
        };
        ModelStore::open_with(fs, defect, snapshots)
    }

    /// Opens the store on `fs`, with `snapshots` as its (durable) snapshot store — except for
    /// `SnapshotsInMemoryOnly`, which starts an empty one every time.
    fn open_with(fs: SimFs, defect: Defect, snapshots: Arc<dyn SnapshotStore>) -> ModelStore {
        fs.create_dir_all(Path::new("/store")).expect("mkdir");
        let mut m = LogModel::default();
        match fs.read(state_path()) {
            Ok(bytes) => {
                let (hard_state, purged, entries): Record = codec::decode(&bytes)
                    .unwrap_or_else(|e| panic!("the store does not reopen: its state file: {e}"));
                m.hard_state = hard_state;
                m.purged = purged;
                m.entries = entries.into_iter().map(|e| (e.log_id.index.0, e)).collect();
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("read the state: {e}"),
        }
        let snapshots: Arc<dyn SnapshotStore> = if defect == Defect::SnapshotsInMemoryOnly {
            Arc::new(MemSnapshotStore::new())
        } else {
            snapshots
        };
        ModelStore { fs, mem: Arc::new(Mutex::new((m, false))), defect, snapshots }
    }

    /// Saves `m` as the durable state.
    fn persist(&self, m: &LogModel) -> std::io::Result<()> {
        let mut hard_state = m.hard_state;
        if self.defect == Defect::ForgetsVoteOnReopen {
            hard_state.vote = None;
        }
        let record: Record = (hard_state, m.purged, m.entries.values().cloned().collect());
        let bytes = codec::encode(&record).expect("encode");
        let tmp = Path::new("/store/state.tmp");
        match self.defect {
            Defect::AcksBeforeDurable => {
                self.fs.write(tmp, &bytes)?;
                self.fs.rename(tmp, state_path())
            }
            Defect::OverwritesInPlace => {
                self.fs.write(state_path(), &bytes)?;
                self.fs.sync(state_path())?;
                self.fs.sync_dir(Path::new("/store"))
            }
            _ => {
                self.fs.write(tmp, &bytes)?;
                self.fs.sync(tmp)?;
                self.fs.rename(tmp, state_path())?;
                self.fs.sync_dir(Path::new("/store"))
            }
        }
    }

    /// Runs a change on the model and persists it.
    fn change(
        &self,
        f: impl FnOnce(&mut LogModel) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let mut g = self.mem.lock().unwrap();
        if g.1 {
            return Err(StorageError::new(raftkit::StorageErrorKind::Poisoned, "poisoned"));
        }
        let before = g.0.clone();
        let mut next = before.clone();
        f(&mut next)?;
        if self.defect == Defect::TermAndVoteInTwoSteps
            && next.hard_state.term != before.hard_state.term
        {
            let mut half = next.clone();
            half.hard_state.vote = before.hard_state.vote;
            if let Err(e) = self.persist(&half) {
                g.1 = self.defect != Defect::NeverPoisons;
                return Err(StorageError::io("persist", e));
            }
        }
        let mut durable = next.clone();
        if self.defect == Defect::CommitOnlyWithTermOrVote
            && (next.hard_state.term, next.hard_state.vote)
                == (before.hard_state.term, before.hard_state.vote)
        {
            durable.hard_state = before.hard_state;
        }
        if let Err(e) = self.persist(&durable) {
            g.1 = self.defect != Defect::NeverPoisons;
            return Err(StorageError::io("persist", e));
        }
        g.0 = next;
        Ok(())
    }
}

#[async_trait]
impl LogStore for ModelStore {
    async fn load(&self) -> Result<LogState, StorageError> {
        let g = self.mem.lock().unwrap();
        Ok(LogState { hard_state: g.0.hard_state, purged: g.0.purged, last: g.0.last() })
    }

    async fn write(&self, write: LogWrite) -> Result<(), StorageError> {
        let mut write = write;
        if self.defect == Defect::KeepsOnly256OfALargeWrite {
            write.entries.truncate(256);
        }
        self.change(|m| m.write(&write).map_err(err))
    }

    async fn read(&self, first: LogIndex, last: LogIndex) -> Result<Vec<Entry>, StorageError> {
        let mut out = self.mem.lock().unwrap().0.read(first, last).map_err(err)?;
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
        self.change(|m| m.purge(up_to).map_err(err))
    }

    async fn install_snapshot(&self, snapshot: LogId) -> Result<(), StorageError> {
        self.change(|m| {
            m.install(snapshot);
            Ok(())
        })
    }

    fn snapshot_store(&self) -> Arc<dyn SnapshotStore> {
        self.snapshots.clone()
    }
}

struct Harness(Defect);

/// A test's disk: the simulated file system (a new handle after each crash) and a real
/// directory for snapshots.
struct Disk {
    fs: Mutex<SimFs>,
    snapshots: tempfile::TempDir,
}

#[async_trait]
impl LogStoreHarness for Harness {
    type Store = ModelStore;
    type Guard = Disk;

    fn crash_model(&self) -> CrashModel {
        CrashModel::LossyFs
    }

    async fn build(&self) -> (ModelStore, Disk) {
        let fs = SimFs::new(7);
        let disk = Disk { fs: Mutex::new(fs.clone()), snapshots: tempfile::tempdir().unwrap() };
        (ModelStore::open(fs, self.0, disk.snapshots.path()), disk)
    }

    async fn reopen(&self, store: ModelStore, disk: &Disk) -> ModelStore {
        drop(store);
        let fs = disk.fs.lock().unwrap().clone();
        ModelStore::open(fs, self.0, disk.snapshots.path())
    }

    async fn crash(&self, store: ModelStore, disk: &Disk) -> ModelStore {
        drop(store);
        let fs = {
            let mut current = disk.fs.lock().unwrap();
            *current = current.crash();
            current.clone()
        };
        ModelStore::open(fs, self.0, disk.snapshots.path())
    }

    fn sim_fs(&self, disk: &Disk) -> Option<SimFs> {
        Some(disk.fs.lock().unwrap().clone())
    }
}

/// Whether `case` fails (panics) on a store with `defect`, and with what message.
fn failure(defect: Defect, case: impl FnOnce(&Harness)) -> Option<String> {
    let h = Harness(defect);
    let p = std::panic::catch_unwind(AssertUnwindSafe(|| case(&h))).err()?;
    Some(
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default(),
    )
}

fn fails(defect: Defect, case: impl FnOnce(&Harness)) -> bool {
    failure(defect, case).is_some()
}

/// `case` fails on `defect`, with a message holding one of `why` (so it fails for the planted
/// defect, not by accident).
fn fails_because(defect: Defect, case: impl FnOnce(&Harness), why: &[&str]) {
    match failure(defect, case) {
        None => panic!("{defect:?} passes the case"),
        Some(msg) => assert!(
            why.iter().any(|w| msg.contains(w)),
            "{defect:?} fails the case, but not for its defect: {msg}"
        ),
    }
}
#[test]
fn the_control_store_passes_the_hard_state_case() {
    assert!(!fails(Defect::None, |h| block_on(suite::hard_state_save_and_load(h))));
}

#[test]
fn a_store_that_forgets_the_vote_on_reopen_fails_hard_state_save_and_load() {
    fails_because(
        Defect::ForgetsVoteOnReopen,
        |h| block_on(suite::hard_state_save_and_load(h)),
        &["after a reopen the store loads"],
    );
}

#[test]
fn a_store_that_keeps_commit_only_with_term_or_vote_fails_hard_state_save_and_load() {
    fails_because(
        Defect::CommitOnlyWithTermOrVote,
        |h| block_on(suite::hard_state_save_and_load(h)),
        &["after a reopen the store loads"],
    );
}

#[test]
fn the_control_store_passes_the_long_read_case() {
    assert!(!fails(Defect::None, |h| block_on(suite::long_reads_at_high_indexes(h))));
}

#[test]
fn a_store_that_skips_an_entry_in_long_reads_fails_long_reads_at_high_indexes() {
    fails_because(
        Defect::SkipsOneInLongReads,
        |h| block_on(suite::long_reads_at_high_indexes(h)),
        &["the store returned 69999 entries"],
    );
}

#[test]
fn a_store_that_damages_entries_above_65535_fails_long_reads_at_high_indexes() {
    fails_because(
        Defect::DamagesEntriesAbove65535,
        |h| block_on(suite::long_reads_at_high_indexes(h)),
        &["the model (what was written)"],
    );
}

#[test]
fn a_store_that_keeps_part_of_a_large_write_fails_long_reads_at_high_indexes() {
    fails_because(
        Defect::KeepsOnly256OfALargeWrite,
        |h| block_on(suite::long_reads_at_high_indexes(h)),
        &["InvalidInput"],
    );
}

#[test]
fn the_control_store_passes_the_crash_and_fault_cases() {
    for (name, fails_it) in [
        (
            "crash_keeps_every_acknowledged_write",
            fails(Defect::None, |h| block_on(suite::crash_keeps_every_acknowledged_write(h))),
        ),
        (
            "crash_mid_write_keeps_all_or_nothing",
            fails(Defect::None, |h| block_on(suite::crash_mid_write_keeps_all_or_nothing(h))),
        ),
        (
            "io_faults_poison_writes_and_reopen_is_valid",
            fails(Defect::None, |h| {
                block_on(suite::io_faults_poison_writes_and_reopen_is_valid(h))
            }),
        ),
        (
            "snapshots_survive_crashes",
            fails(Defect::None, |h| block_on(suite::snapshots_survive_crashes(h))),
        ),
    ] {
        assert!(!fails_it, "the control store fails {name}");
    }
}

#[test]
fn a_store_that_saves_term_and_vote_in_two_steps_fails_crash_mid_write_keeps_all_or_nothing() {
    fails_because(
        Defect::TermAndVoteInTwoSteps,
        |h| block_on(suite::crash_mid_write_keeps_all_or_nothing(h)),
        &["the model allows only"],
    );
}

#[test]
fn a_store_that_acknowledges_before_durable_fails_crash_keeps_every_acknowledged_write() {
    fails_because(
        Defect::AcksBeforeDurable,
        |h| block_on(suite::crash_keeps_every_acknowledged_write(h)),
        &["but the acknowledged writes built", "does not reopen"],
    );
}

#[test]
fn a_store_that_overwrites_its_file_in_place_fails_crash_mid_write_keeps_all_or_nothing() {
    fails_because(
        Defect::OverwritesInPlace,
        |h| block_on(suite::crash_mid_write_keeps_all_or_nothing(h)),
        &["does not reopen", "the model allows only"],
    );
}

#[test]
fn a_store_that_never_poisons_fails_io_faults_poison_writes_and_reopen_is_valid() {
    fails_because(
        Defect::NeverPoisons,
        |h| block_on(suite::io_faults_poison_writes_and_reopen_is_valid(h)),
        &["must be refused with Poisoned"],
    );
}

#[test]
fn a_store_that_keeps_snapshots_in_memory_fails_snapshots_survive_crashes() {
    fails_because(
        Defect::SnapshotsInMemoryOnly,
        |h| block_on(suite::snapshots_survive_crashes(h)),
        &["published snapshots must be durable"],
    );
}

/// The cluster suite's harness for the fixtures: each node's disk is a `SimFs` and a snapshot
/// store that survives crashes (in memory, so that runs stay deterministic).
struct ClusterHarness(Defect);

/// A node's disk in the cluster suite.
struct ClusterDisk {
    fs: Mutex<SimFs>,
    snapshots: Arc<MemSnapshotStore>,
}

impl ClusterDisk {
    fn open(&self, defect: Defect) -> ModelStore {
        let fs = self.fs.lock().unwrap().clone();
        ModelStore::open_with(fs, defect, self.snapshots.clone())
    }
}

#[async_trait]
impl LogStoreHarness for ClusterHarness {
    type Store = ModelStore;
    type Guard = ClusterDisk;

    fn crash_model(&self) -> CrashModel {
        CrashModel::LossyFs
    }

    async fn build(&self) -> (ModelStore, ClusterDisk) {
        let disk = ClusterDisk {
            fs: Mutex::new(SimFs::new(7)),
            snapshots: Arc::new(MemSnapshotStore::new()),
        };
        (disk.open(self.0), disk)
    }

    async fn reopen(&self, store: ModelStore, disk: &ClusterDisk) -> ModelStore {
        drop(store);
        disk.open(self.0)
    }

    async fn crash(&self, store: ModelStore, disk: &ClusterDisk) -> ModelStore {
        drop(store);
        {
            let mut current = disk.fs.lock().unwrap();
            *current = current.crash();
        }
        disk.open(self.0)
    }

    fn sim_fs(&self, disk: &ClusterDisk) -> Option<SimFs> {
        Some(disk.fs.lock().unwrap().clone())
    }

    fn deterministic(&self) -> bool {
        true
    }
}

/// Cluster seeds each defect gets (the first failing one ends the search).
const CLUSTER_SEEDS: std::ops::RangeInclusive<u64> = 1..=6;

/// Runs the cluster suite (3 nodes, crashes among its faults) on stores with `defect`, seed by
/// seed; returns the first failing seed's violations.
fn cluster_failure(defect: Defect) -> Option<(u64, Vec<String>)> {
    let suite = ClusterSuite::new(MemNetHarness, ClusterHarness(defect))
        .named(format!("{defect:?}"))
        .with(|o| o.fault_time = std::time::Duration::from_secs(8));
    CLUSTER_SEEDS.map(|seed| suite.run(seed)).find(|r| !r.passed()).map(|r| (r.seed, r.violations))
}

/// The cluster suite fails `defect` within [`CLUSTER_SEEDS`], and one of its violations holds
/// one of `why`.
fn cluster_fails_because(defect: Defect, why: &[&str]) {
    match cluster_failure(defect) {
        None => panic!("{defect:?} passes the cluster suite on seeds {CLUSTER_SEEDS:?}"),
        Some((seed, violations)) => {
            eprintln!("{defect:?}: caught on seed {seed}: {}", violations[0]);
            assert!(
                violations.iter().any(|v| why.iter().any(|w| v.contains(w))),
                "{defect:?} fails the cluster suite (seed {seed}), but not for its defect: \
                 {violations:#?}"
            );
        }
    }
}

#[test]
fn the_control_store_passes_the_cluster_suite() {
    if let Some((seed, violations)) = cluster_failure(Defect::None) {
        panic!("the control store fails the cluster suite on seed {seed}: {violations:#?}");
    }
}

#[test]
fn the_cluster_suite_fails_a_store_that_acknowledges_before_durable() {
    cluster_fails_because(Defect::AcksBeforeDurable, &["durable", "acknowledged"]);
}

#[test]
fn the_cluster_suite_fails_a_store_that_keeps_commit_only_with_term_or_vote() {
    cluster_fails_because(Defect::CommitOnlyWithTermOrVote, &["commit", "durable"]);
}

#[test]
fn the_cluster_suite_fails_a_store_that_keeps_snapshots_in_memory() {
    cluster_fails_because(Defect::SnapshotsInMemoryOnly, &["snapshot", "durable", "store"]);
}

#[test]
fn the_cluster_suite_fails_a_store_that_forgets_the_vote_on_reopen() {
    cluster_fails_because(Defect::ForgetsVoteOnReopen, &["vote", "durable", "term"]);
}
