//! What an adapter provides so the suites can exercise it: a way to build, reopen and crash its
//! store, or to build endpoints of its network. One harness serves both the per-trait suite and
//! the cluster suite.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use raftkit::{
    HardState, LogId, LogIndex, LogStore, Network, NetworkError, NodeId, StateMachine, Term,
};

/// Builds instances of a log store for the suites.
///
/// ```ignore
/// struct MyHarness;
/// #[async_trait::async_trait]
/// impl LogStoreHarness for MyHarness {
///     type Store = MyStore;
///     type Guard = tempfile::TempDir;
///     async fn build(&self) -> (MyStore, TempDir) {
///         let dir = tempfile::tempdir().unwrap();
///         (MyStore::open(dir.path()).unwrap(), dir)
///     }
///     async fn reopen(&self, store: MyStore, dir: &TempDir) -> MyStore {
///         drop(store);
///         MyStore::open(dir.path()).unwrap()
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

    /// Simulates a crash or power loss of the store's node (every other clone is dropped) and
    /// opens what survived. Must keep everything a completed `write` acknowledged; may lose a
    /// write that had not returned. The default is a clean [`reopen`](Self::reopen).
    async fn crash(&self, store: Self::Store, guard: &Self::Guard) -> Self::Store {
        self.reopen(store, guard).await
    }

    /// A view of what `store` holds *durably* right now, if the store can tell (the in-memory
    /// reference store can). With it, the cluster suite checks that nothing depending on
    /// durable state is sent before it is durable.
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
