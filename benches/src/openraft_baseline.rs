//! The openraft baseline (feature `openraft`): the comparison's setup built on
//! [openraft](https://docs.rs/openraft) 0.9 from its public API, so both frameworks are
//! measured by the same load generator, in the same process and the same run.
//!
//! The setup mirrors raftkit's side (`mem+mem` with [`NoopSm`](crate::noop::NoopSm)):
//!
//! - 3 nodes in this process, ids 1, 2, 3, started on the harness's Tokio runtime (openraft
//!   spawns its tasks there, as raftkit does);
//! - [`MemLog`]: an in-memory log store (a `BTreeMap` under a mutex) that reports every append
//!   flushed at once, as raftkit's `MemLogStore` does;
//! - [`Router`]: an in-process network that passes each request by value to the target node's
//!   [`openraft::Raft`] handle with a direct call (`append_entries`, `vote`,
//!   `install_snapshot`) and returns its answer;
//! - [`EmptySm`]: a state machine whose commands are `()` and which only remembers the last
//!   applied id and membership;
//! - clients: the harness's closed-loop clients ([`crate::load`]), calling `client_write` on
//!   the node they believe leads and following `ForwardToLeader`.
//!
//! openraft's [`Config`](openraft::Config) takes raftkit's `Config::new` timings and limits
//! where the two have the same knob (heartbeat 50 ms, election timeout 300–600 ms, at most 4096
//! entries per append, a snapshot every 100,000 entries keeping 1,000); everything else is
//! openraft's default.
//!
//! Written from openraft's API documentation; it shares no code with openraft's own benchmark.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use openraft::error::{
    ClientWriteError, InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, LogState, RaftLogReader, RaftSnapshotBuilder,
    ServerState, Snapshot, SnapshotMeta, SnapshotPolicy, StorageError, StoredMembership, Vote,
};

use crate::cluster::StoreCounters;
use crate::load::{Outcome, Probe, Writer};

/// The openraft version this baseline is built with (read from `Cargo.lock` by the build
/// script).
pub const OPENRAFT_VERSION: &str = env!("RAFTKIT_BENCH_OPENRAFT_VERSION");

openraft::declare_raft_types!(
    /// The baseline's type configuration: empty commands and answers, `u64` node ids, openraft's
    /// own entry, node, snapshot-data and responder types.
    pub Tc:
        D = (),
        R = (),
        NodeId = u64,
        Node = BasicNode,
        Entry = Entry<Tc>,
        SnapshotData = Cursor<Vec<u8>>,
);

/// The node ids of the baseline cluster, in position order (position `i` is id `i + 1`), as in
/// raftkit's [`MEMBERS`](crate::cluster::MEMBERS).
pub const IDS: [u64; 3] = [1, 2, 3];

/// One openraft node.
pub type Node = openraft::Raft<Tc>;

// ----- log store ---------------------------------------------------------------------------

#[derive(Debug, Default)]
struct LogData {
    vote: Option<Vote<u64>>,
    committed: Option<LogId<u64>>,
    last_purged: Option<LogId<u64>>,
    entries: BTreeMap<u64, Entry<Tc>>,
    /// `append` calls (each would be one durable write of a real store).
    appends: u64,
    /// Entries appended.
    appended: u64,
}

/// An in-memory openraft log store; clones share the data (the harness keeps one to read
/// its counters, the node's reader is another).
#[derive(Clone, Debug, Default)]
pub struct MemLog {
    inner: Arc<Mutex<LogData>>,
}

impl MemLog {
    fn lock(&self) -> MutexGuard<'_, LogData> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `append` calls and entries appended so far.
    pub fn counters(&self) -> StoreCounters {
        let g = self.lock();
        StoreCounters { syncs: g.appends, entries: Some(g.appended) }
    }
}

impl RaftLogReader<Tc> for MemLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<Tc>>, StorageError<u64>> {
        Ok(self.lock().entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<Tc> for MemLog {
    type LogReader = MemLog;

    async fn get_log_state(&mut self) -> Result<LogState<Tc>, StorageError<u64>> {
        let g = self.lock();
        let last = g.entries.values().next_back().map(|e| e.log_id).or(g.last_purged);
        Ok(LogState { last_purged_log_id: g.last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> MemLog {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        self.lock().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        Ok(self.lock().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        self.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<Tc>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<Tc>> + Send,
        I::IntoIter: Send,
    {
        {
            let mut g = self.lock();
            let mut n = 0;
            for e in entries {
                g.entries.insert(e.log_id.index, e);
                n += 1;
            }
            g.appends += 1;
            g.appended += n;
        }
        // In memory, so "flushed" as soon as it is stored, as raftkit's MemLogStore is.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let mut g = self.lock();
        g.entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let mut g = self.lock();
        let rest = g.entries.split_off(&(log_id.index + 1));
        g.entries = rest;
        g.last_purged = Some(log_id);
        Ok(())
    }
}

// ----- state machine -----------------------------------------------------------------------

#[derive(Clone, Debug, Default)]
struct SmState {
    applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
}

/// A state machine for empty commands: it remembers the last applied id and membership, and
/// keeps its latest snapshot (metadata only; the data is empty), whether built here or
/// received from the leader: openraft asks for it (`get_current_snapshot`) to send it to a
/// follower that needs purged entries.
#[derive(Debug, Default)]
pub struct EmptySm {
    state: SmState,
    snapshot: Arc<Mutex<Option<SnapshotMeta<u64, BasicNode>>>>,
    snapshots_built: u64,
}

/// Builds a snapshot of an [`EmptySm`]'s state as it was when the builder was made, and makes
/// it the state machine's current snapshot.
#[derive(Debug)]
pub struct EmptySnapshotBuilder {
    state: SmState,
    id: u64,
    current: Arc<Mutex<Option<SnapshotMeta<u64, BasicNode>>>>,
}

impl RaftSnapshotBuilder<Tc> for EmptySnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<Tc>, StorageError<u64>> {
        let meta = SnapshotMeta {
            last_log_id: self.state.applied,
            last_membership: self.state.membership.clone(),
            snapshot_id: format!("{}-{}", self.state.applied.map_or(0, |l| l.index), self.id),
        };
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(meta.clone());
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(Vec::new())) })
    }
}

impl RaftStateMachine<Tc> for EmptySm {
    type SnapshotBuilder = EmptySnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), StorageError<u64>> {
        Ok((self.state.applied, self.state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<Tc>> + Send,
        I::IntoIter: Send,
    {
        // One answer per entry, whatever it carries (openraft's contract).
        let mut out = Vec::new();
        for e in entries {
            if let EntryPayload::Membership(m) = e.payload {
                self.state.membership = StoredMembership::new(Some(e.log_id), m);
            }
            self.state.applied = Some(e.log_id);
            out.push(());
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> EmptySnapshotBuilder {
        self.snapshots_built += 1;
        EmptySnapshotBuilder {
            state: self.state.clone(),
            id: self.snapshots_built,
            current: self.snapshot.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        _snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        self.state =
            SmState { applied: meta.last_log_id, membership: meta.last_membership.clone() };
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = Some(meta.clone());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<Tc>>, StorageError<u64>> {
        let current = self.snapshot.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(current.map(|meta| Snapshot { meta, snapshot: Box::new(Cursor::new(Vec::new())) }))
    }
}

// ----- network -----------------------------------------------------------------------------

/// The in-process network: every node's handle, by id. A request to a node is a direct call
/// on its handle; the request moves into the call and the answer comes back by value.
#[derive(Clone, Default)]
pub struct Router {
    nodes: Arc<RwLock<BTreeMap<u64, Node>>>,
}

impl Router {
    fn get(&self, id: u64) -> Result<Node, Unreachable> {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        nodes.get(&id).cloned().ok_or_else(|| {
            Unreachable::new(&std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                format!("node {id} is not running"),
            ))
        })
    }
}

/// One node's connection to `target` through the [`Router`].
pub struct Connection {
    target: u64,
    router: Router,
}

impl RaftNetworkFactory<Tc> for Router {
    type Network = Connection;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Connection {
        Connection { target, router: self.clone() }
    }
}

impl RaftNetwork<Tc> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Tc>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let node = self.router.get(self.target)?;
        node.append_entries(rpc).await.map_err(|e| RemoteError::new(self.target, e).into())
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<Tc>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        let node = self.router.get(self.target)?;
        node.install_snapshot(rpc).await.map_err(|e| RemoteError::new(self.target, e).into())
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let node = self.router.get(self.target)?;
        node.vote(rpc).await.map_err(|e| RemoteError::new(self.target, e).into())
    }
}

// ----- the cluster -------------------------------------------------------------------------

/// openraft's configuration for the baseline: raftkit's `Config::new` values where openraft
/// has the same knob, openraft's defaults elsewhere.
pub fn config() -> Result<openraft::Config> {
    let rk = raftkit::Config::new(raftkit::NodeId(1), [raftkit::NodeId(1)]);
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let c = openraft::Config {
        cluster_name: "raftkit-bench-baseline".into(),
        heartbeat_interval: ms(rk.heartbeat_interval),
        election_timeout_min: ms(rk.election_timeout_min),
        election_timeout_max: ms(rk.election_timeout_max),
        max_payload_entries: rk.max_entries_per_message as u64,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(rk.snapshot_every),
        max_in_snapshot_log_to_keep: rk.snapshot_keep,
        ..openraft::Config::default()
    };
    c.validate().context("openraft rejects the baseline's configuration")
}

/// A running 3-node openraft cluster and clones of its log stores.
pub struct Cluster {
    /// The nodes, in id order.
    pub nodes: Vec<Node>,
    logs: Vec<MemLog>,
    router: Router,
}

impl Cluster {
    /// Starts three nodes on the current Tokio runtime and initializes the cluster from
    /// node 1 (which then campaigns).
    pub async fn start() -> Result<Cluster> {
        Cluster::start_with(config()?).await
    }

    /// [`start`](Self::start) with another configuration (tests use a short snapshot period).
    pub async fn start_with(config: openraft::Config) -> Result<Cluster> {
        let config = Arc::new(config);
        let router = Router::default();
        let mut nodes = Vec::new();
        let mut logs = Vec::new();
        for id in IDS {
            let log = MemLog::default();
            let node =
                Node::new(id, config.clone(), router.clone(), log.clone(), EmptySm::default())
                    .await
                    .with_context(|| format!("starting openraft node {id}"))?;
            router.nodes.write().unwrap_or_else(|p| p.into_inner()).insert(id, node.clone());
            nodes.push(node);
            logs.push(log);
        }
        let members: BTreeSet<u64> = IDS.into_iter().collect();
        nodes[0].initialize(members).await.context("initializing the openraft cluster")?;
        Ok(Cluster { nodes, logs, router })
    }

    /// Waits until every node follows the same leader and that leader has applied an entry of
    /// its term; returns the leader's position in `nodes`.
    pub async fn wait_leader(&self, timeout: Duration) -> Result<usize> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let metrics: Vec<_> = self.nodes.iter().map(|n| n.metrics().borrow().clone()).collect();
            if let Some(l) = metrics[0].current_leader {
                let agreed = metrics.iter().all(|m| m.current_leader == Some(l));
                if let Some(pos) = IDS.iter().position(|id| *id == l) {
                    let lm = &metrics[pos];
                    let applied_own_term =
                        lm.last_applied.is_some_and(|a| a.leader_id.term == lm.current_term);
                    if agreed && lm.state == ServerState::Leader && applied_own_term {
                        return Ok(pos);
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("openraft: no stable leader within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The clients' side: the nodes.
    pub fn writer(&self) -> OpenraftWriter {
        OpenraftWriter { nodes: self.nodes.clone() }
    }

    /// Stops every node.
    pub async fn shutdown(self) -> Result<()> {
        self.router.nodes.write().unwrap_or_else(|p| p.into_inner()).clear();
        for (n, id) in self.nodes.iter().zip(IDS) {
            n.shutdown().await.map_err(|e| anyhow::anyhow!("stopping openraft node {id}: {e}"))?;
        }
        Ok(())
    }
}

impl Probe for Cluster {
    fn counters(&self) -> StoreCounters {
        self.logs
            .iter()
            .map(MemLog::counters)
            .fold(StoreCounters { syncs: 0, entries: Some(0) }, |a, b| a + b)
    }

    fn max_term(&self) -> u64 {
        self.nodes.iter().map(|n| n.metrics().borrow().current_term).max().unwrap_or(0)
    }
}

/// The clients' side of the openraft baseline: `client_write(())` on a node.
pub struct OpenraftWriter {
    nodes: Vec<Node>,
}

impl Writer for OpenraftWriter {
    fn nodes(&self) -> usize {
        self.nodes.len()
    }

    async fn write(&self, node: usize, _client: usize) -> Outcome {
        match self.nodes[node].client_write(()).await {
            Ok(_) => Outcome::Ok,
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Outcome::Redirect(f.leader_id.and_then(|l| IDS.iter().position(|id| *id == l)))
            }
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The baseline elects a leader, commits writes through it, and redirects from a follower.
    #[test]
    fn baseline_cluster_commits_and_redirects() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let c = Cluster::start().await.unwrap();
            let leader = c.wait_leader(Duration::from_secs(15)).await.unwrap();
            let w = c.writer();
            for i in 0..10 {
                assert_eq!(w.write(leader, i).await, Outcome::Ok);
            }
            let follower = (leader + 1) % 3;
            assert_eq!(w.write(follower, 0).await, Outcome::Redirect(Some(leader)));
            assert!(c.counters().entries.unwrap() >= 30, "{:?}", c.counters());
            c.shutdown().await.unwrap();
        });
    }

    /// Past several snapshots and log purges, with followers that must catch up from them, the
    /// cluster keeps committing (the state machine hands out the snapshot it built).
    #[test]
    fn baseline_cluster_commits_across_snapshots() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut cfg = config().unwrap();
            cfg.snapshot_policy = SnapshotPolicy::LogsSinceLast(100);
            cfg.max_in_snapshot_log_to_keep = 0;
            let c = Cluster::start_with(cfg.validate().unwrap()).await.unwrap();
            let leader = c.wait_leader(Duration::from_secs(15)).await.unwrap();
            let w = Arc::new(c.writer());
            let tasks: Vec<_> = (0..8)
                .map(|i| {
                    let w = w.clone();
                    tokio::spawn(async move {
                        for _ in 0..100 {
                            assert_eq!(w.write(leader, i).await, Outcome::Ok);
                        }
                    })
                })
                .collect();
            for t in tasks {
                tokio::time::timeout(Duration::from_secs(30), t).await.unwrap().unwrap();
            }
            let m = c.nodes[leader].metrics().borrow().clone();
            assert!(m.snapshot.is_some() && m.purged.is_some(), "{m:?}");
            c.shutdown().await.unwrap();
        });
    }
}
