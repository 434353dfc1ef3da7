//! What an adapter provides so the suites can exercise it: a way to build, reopen and crash its
//! store, or to build endpoints of its network. One harness serves both the per-trait suite and
//! the cluster suite.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use raftkit::{
    HardState, LogId, LogIndex, LogStore, Network, NetworkError, NodeId, StateMachine, Term,
};

/// Builds instances of a log store for the suites, and says how it crashes them.
///
/// A harness must choose a [`CrashModel`]: there is no default, because a crash that is only a
/// clean reopen tests nothing about crash safety. The simplest real one is
/// [`CrashModel::LossyFs`]: the store does its file work through [`SimFs`](crate::fs::SimFs)
/// (it implements [`raftkit::fs::Fs`]), and a crash loses whatever was not synced.
///
/// ```ignore
/// struct MyHarness;
/// #[async_trait::async_trait]
/// impl LogStoreHarness for MyHarness {
///     type Store = MyStore<SimFs>;
///     type Guard = SimFs;
///     fn crash_model(&self) -> CrashModel {
///         CrashModel::LossyFs
///     }
///     async fn build(&self) -> (Self::Store, SimFs) {
///         let fs = SimFs::new(seed);
///         (MyStore::open(fs.clone(), "/store".as_ref()).unwrap(), fs)
///     }
///     async fn reopen(&self, store: Self::Store, fs: &SimFs) -> Self::Store {
///         drop(store);
///         MyStore::open(fs.clone(), "/store".as_ref()).unwrap()
///     }
///     async fn crash(&self, store: Self::Store, fs: &SimFs) -> Self::Store {
///         drop(store);
///         MyStore::open(fs.crash(), "/store".as_ref()).unwrap()
///     }
///     fn sim_fs(&self, fs: &SimFs) -> Option<SimFs> {
///         Some(fs.clone())
///     }
/// }
/// ```
#[async_trait]
pub trait LogStoreHarness: Send + Sync + 'static {
    /// The store under test. Clones must share the same data (the cluster suite keeps one to
    /// inspect the log while the node owns another).
    type Store: LogStore + Clone;
    /// Keeps the store's data alive (a temporary directory, say); dropped after the test.
    type Guard: Send + Sync + 'static;

    /// A new, empty store.
    async fn build(&self) -> (Self::Store, Self::Guard);

    /// Closes `store` cleanly (the suite has dropped every other clone) and opens the same data
    /// again, as after a restart.
    async fn reopen(&self, store: Self::Store, guard: &Self::Guard) -> Self::Store;

    /// How [`crash`](Self::crash) crashes the store. Required: every suite report prints it,
    /// and [`CrashModel::CleanReopenOnly`] gets a loud warning.
    fn crash_model(&self) -> CrashModel;

    /// Simulates a crash or power loss of the store's node (every other clone is dropped) and
    /// opens what survived, as [`crash_model`](Self::crash_model) says. Must keep everything a
    /// completed `write` acknowledged; may lose a write that had not returned. The default is
    /// a clean [`reopen`](Self::reopen), which is right only for
    /// [`CrashModel::CleanReopenOnly`].
    async fn crash(&self, store: Self::Store, guard: &Self::Guard) -> Self::Store {
        self.reopen(store, guard).await
    }

    /// The simulated file system the store runs on, for [`CrashModel::LossyFs`]. With it the
    /// log-store suite also crashes the store in the middle of its writes (at every file
    /// operation of a write, in turn) and injects I/O errors, `ENOSPC` and short writes.
    fn sim_fs(&self, _guard: &Self::Guard) -> Option<crate::fs::SimFs> {
        None
    }

    /// A view of what `store` holds *durably* right now, if the store can tell (the in-memory
    /// reference store can). The cluster suite checks that nothing depending on durable state
    /// is sent before it is durable with this view when given, and otherwise with what the
    /// store has acknowledged (a write that returned `Ok` is durable by the contract), so the
    /// check runs on every store; this exact view also catches what the store acknowledged
    /// too early.
    fn durable(&self, _store: &Self::Store) -> Option<Arc<dyn DurableView>> {
        None
    }

    /// Whether the store does all its work on the tokio runtime without real time or threads
    /// of its own, so that cluster runs can use a paused clock and replay exactly from a seed.
    /// Stores that fsync on their own threads return `false` (the default).
    fn deterministic(&self) -> bool {
        false
    }
}

/// How a [`LogStoreHarness`] crashes its store: what survives, and so what the crash cases of
/// the suites can catch. Printed in every suite report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CrashModel {
    /// Power loss on a simulated file system ([`SimFs`](crate::fs::SimFs), the store does its
    /// file work through [`raftkit::fs::Fs`]): writes not synced are lost, the last unsynced
    /// write to a file may be torn, and directory entries not synced in their directory are
    /// lost. The harness returns the file system from
    /// [`sim_fs`](LogStoreHarness::sim_fs), so the suite can also crash mid-write and inject
    /// I/O faults. The strongest model.
    LossyFs,
    /// The node's process is killed (SIGKILL): what the store handed to the operating system
    /// survives, the page cache included. In-process, [`crash`](LogStoreHarness::crash) drops
    /// the store without closing it; the store also runs [`sigkill_suite!`](crate::sigkill_suite),
    /// which kills a real child process in the middle of its writes. Power loss (unsynced data
    /// lost) is not simulated.
    ProcessKill,
    /// The store keeps its own record of what is durable and a crash drops everything else
    /// (the in-memory reference store does: each write becomes durable after a delay). The
    /// text says what is dropped.
    Simulated(&'static str),
    /// A crash is a clean reopen: nothing about crash safety is tested (a store that
    /// acknowledges writes before they are durable, or writes its hard state in two steps,
    /// passes). Every suite report carries a warning.
    CleanReopenOnly,
}

impl CrashModel {
    /// Whether a crash loses anything at all (false only for
    /// [`CleanReopenOnly`](Self::CleanReopenOnly)).
    pub fn is_real(&self) -> bool {
        !matches!(self, CrashModel::CleanReopenOnly)
    }

    /// The warning a suite prints for this model, if any.
    pub fn warning(&self) -> Option<&'static str> {
        match self {
            CrashModel::CleanReopenOnly => Some(
                "WARNING: this harness's crash model is CleanReopenOnly: crashes are clean \
                 reopens, so nothing here tests crash safety (writes acknowledged before they \
                 are durable, hard states written in two steps and torn writes all pass). Run \
                 the store on raftkit_testkit::fs::SimFs (CrashModel::LossyFs) or add \
                 sigkill_suite! (CrashModel::ProcessKill).",
            ),
            CrashModel::ProcessKill => Some(
                "note: crash model ProcessKill: in-process crashes only drop the store; \
                 mid-write kills are tested by sigkill_suite!, power loss not at all.",
            ),
            _ => None,
        }
    }
}

impl std::fmt::Display for CrashModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CrashModel::LossyFs => {
                f.write_str("LossyFs (power loss on SimFs: unsynced writes lost or torn)")
            }
            CrashModel::ProcessKill => f.write_str("ProcessKill (SIGKILL; page cache survives)"),
            CrashModel::Simulated(what) => write!(f, "Simulated ({what})"),
            CrashModel::CleanReopenOnly => f.write_str("CleanReopenOnly (no crash is simulated)"),
        }
    }
}

/// What a store would still hold after a crash right now.
pub trait DurableView: Send + Sync + 'static {
    /// The durable hard state.
    fn hard_state(&self) -> HardState;
    /// The durable last entry.
    fn last(&self) -> LogId;
    /// The term of the durable entry at `index`.
    fn term_at(&self, index: LogIndex) -> Option<Term>;
}

/// Builds endpoints of a network for the suites.
#[async_trait]
pub trait NetworkHarness: Send + Sync + 'static {
    /// The network under test.
    type Network: Network;
    /// Shared state of one cluster (a router, certificates, an address book…).
    type Cluster: Send + Sync + 'static;

    /// Prepares a cluster of `nodes`. `seed` drives any randomness the transport has.
    async fn cluster(&self, nodes: &[NodeId], seed: u64) -> Self::Cluster;

    /// The endpoint of `node`. Called again for a node whose previous endpoint was shut down
    /// (a restart).
    async fn endpoint(&self, cluster: &Self::Cluster, node: NodeId) -> Self::Network;

    /// Sends `frame` as-is (no encoding) from `from` to `to`, as a buggy or hostile peer would:
    /// the suite checks that malformed and oversized frames are refused without harm.
    async fn send_raw(
        &self,
        cluster: &Self::Cluster,
        from: NodeId,
        to: NodeId,
        frame: Vec<u8>,
    ) -> Result<(), NetworkError>;

    /// The largest frame the transport accepts.
    fn max_frame_bytes(&self) -> usize;

    /// Whether messages of one kind from one endpoint to one peer arrive in the order sent
    /// (the ordering case sends heartbeats). Transports that keep order only within a class of
    /// messages, as QUIC's per-class streams do, answer `true`; the core itself tolerates
    /// reordering, so this only decides what the suite checks.
    fn ordered(&self) -> bool {
        true
    }

    /// Whether the transport is in-process and free of real IO and real time, so that cluster
    /// runs on it can use a paused clock and replay exactly from a seed.
    fn deterministic(&self) -> bool {
        false
    }

    /// How long a send to an unreachable peer may take before it fails.
    fn unreachable_bound(&self) -> Duration {
        Duration::from_secs(5)
    }
}

/// Builds instances of a state machine for the state-machine suite.
#[async_trait]
pub trait StateMachineHarness: Send + Sync + 'static {
    /// The state machine under test.
    type Machine: StateMachine;
    /// Keeps its data alive.
    type Guard: Send + Sync + 'static;

    /// A new, empty machine.
    async fn build(&self) -> (Self::Machine, Self::Guard);

    /// Closes `machine` and opens the same data again. In-memory machines return a fresh,
    /// empty instance (their data does not survive), which the suite checks reports nothing
    /// applied.
    async fn reopen(&self, machine: Self::Machine, guard: &Self::Guard) -> Self::Machine;

    /// A command derived from `seed`; the suite draws many, so vary them (keys, kinds).
    fn command(&self, seed: u64) -> <Self::Machine as StateMachine>::Command;

    /// A digest of the machine's whole state (data and applied index).
    async fn digest(&self, machine: &mut Self::Machine) -> u64;
}
