//! Testkit harnesses for the in-memory adapters, so any adapter's tests can pair its own store
//! or network with the in-memory other half (the cluster suite needs both).
//!
//! ```ignore
//! use raftkit_mem::harness::{MemNetHarness, MemStoreHarness};
//! raftkit_testkit::cluster_suite!(net: MemNetHarness, logs: MyStoreHarness, replay);
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use raftkit::{HardState, LogId, LogIndex, NetworkError, NodeId, StateMachine, Term};
use raftkit_testkit::{
    CrashModel, DurableView, LogStoreHarness, NetworkHarness, StateMachineHarness,
};

use crate::{KvCommand, MemKv, MemLogStore, MemNetwork, MemRouter};

/// Endpoints on a fresh [`MemRouter`] per cluster, with every message going through the wire
/// codec (so the suites exercise encoding and the frame limit too).
#[derive(Clone, Copy, Debug, Default)]
pub struct MemNetHarness;

#[async_trait]
impl NetworkHarness for MemNetHarness {
    type Network = MemNetwork;
    type Cluster = MemRouter;

    async fn cluster(&self, _nodes: &[NodeId], seed: u64) -> MemRouter {
        let router = MemRouter::new(seed);
        router.set_through_codec(true);
        router
    }

    async fn endpoint(&self, router: &MemRouter, node: NodeId) -> MemNetwork {
        router.network(node)
    }

    async fn send_raw(
        &self,
        router: &MemRouter,
        from: NodeId,
        to: NodeId,
        frame: Vec<u8>,
    ) -> Result<(), NetworkError> {
        router.deliver_raw(from, to, &frame)
    }

    fn max_frame_bytes(&self) -> usize {
        crate::network::DEFAULT_MAX_FRAME
    }

    fn deterministic(&self) -> bool {
        true
    }

    fn unreachable_bound(&self) -> Duration {
        Duration::from_millis(10)
    }
}

/// [`MemLogStore`]s whose writes take `sync_delay` of (tokio) time to become durable, so a
/// crash in the cluster suite can catch a write half-way and lose it.
#[derive(Clone, Copy, Debug)]
pub struct MemStoreHarness {
    /// How long each write takes to become durable.
    pub sync_delay: Duration,
}

impl Default for MemStoreHarness {
    fn default() -> Self {
        MemStoreHarness { sync_delay: Duration::from_millis(2) }
    }
}

struct Durable(MemLogStore);

impl DurableView for Durable {
    fn hard_state(&self) -> HardState {
        self.0.durable().hard_state
    }

    fn last(&self) -> LogId {
        self.0.durable().last
    }

    fn term_at(&self, index: LogIndex) -> Option<Term> {
        self.0.durable_term_at(index)
    }
}

#[async_trait]
impl LogStoreHarness for MemStoreHarness {
    type Store = MemLogStore;
    type Guard = ();

    fn crash_model(&self) -> CrashModel {
        CrashModel::Simulated("each write becomes durable after sync_delay; a crash drops the rest")
    }

    async fn build(&self) -> (MemLogStore, ()) {
        (MemLogStore::with_sync_delay(self.sync_delay), ())
    }

    async fn reopen(&self, store: MemLogStore, _: &()) -> MemLogStore {
        // A clean close has nothing in flight: all of it is durable.
        store
    }

    async fn crash(&self, store: MemLogStore, _: &()) -> MemLogStore {
        store.crash();
        store
    }

    fn durable(&self, store: &MemLogStore) -> Option<Arc<dyn DurableView>> {
        Some(Arc::new(Durable(store.clone())))
    }

    fn deterministic(&self) -> bool {
        true
    }
}

/// [`MemKv`] for the state-machine suite. Reopening keeps the shared state, as a durable
/// state machine would (the applied index and the data change under one lock).
#[derive(Clone, Copy, Debug, Default)]
pub struct MemKvHarness;

#[async_trait]
impl StateMachineHarness for MemKvHarness {
    type Machine = MemKv;
    type Guard = ();

    async fn build(&self) -> (MemKv, ()) {
        (MemKv::new(), ())
    }

    async fn reopen(&self, machine: MemKv, _: &()) -> MemKv {
        machine.clone()
    }

    fn command(&self, seed: u64) -> <MemKv as StateMachine>::Command {
        let key = format!("k{}", seed % 17);
        match seed % 5 {
            0 | 1 => KvCommand::put(key, format!("v{seed}")),
            2 => KvCommand::get(key),
            3 => KvCommand::delete(key),
            _ => KvCommand::cas(
                key,
                Some(format!("v{}", seed.wrapping_sub(5))),
                Some(format!("w{seed}")),
            ),
        }
    }

    async fn digest(&self, machine: &mut MemKv) -> u64 {
        let s = machine.state();
        // The apply digest covers the sequence; include the data and applied id too.
        let mut h = raftkit_testkit::Fnv::default();
        std::hash::Hash::hash(
            &(s.digest, &s.data, s.applied.map(|a| (a.term.0, a.index.0))),
            &mut h,
        );
        std::hash::Hasher::finish(&h)
    }
}
