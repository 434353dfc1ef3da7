//! Starting a 3-node cluster of any adapter combination, adding nodes to it, and reading its
//! stores' counters.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use raftkit::{Config, LogStore, Network, NodeId, Raft, StateMachine};
use raftkit_mem::{MemKv, MemLogStore, MemNetwork, MemRouter};
use raftkit_quic::{AddressBook, CertAuthority, QuicConfig, QuicNetwork};
use raftkit_redb::RedbLogStore;

/// The state machine of every benchmark cluster but the comparison's: a [`MemKv`] that the
/// engine applies on its driver task (`StateMachine::inline_apply`), as a user who measures an
/// in-memory machine would set it.
pub fn bench_kv() -> MemKv {
    MemKv::new().with_inline_apply(true)
}

/// The members of every benchmark cluster.
pub const MEMBERS: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];

/// Durable-commit counters of a log store, summed over nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreCounters {
    /// Durable commits: fsyncs for redb, WAL-synced batches for RocksDB, `write` calls for the
    /// memory store (which does not fsync).
    pub syncs: u64,
    /// Entries appended, when the store counts them.
    pub entries: Option<u64>,
}

impl std::ops::Add for StoreCounters {
    type Output = StoreCounters;

    fn add(self, o: StoreCounters) -> StoreCounters {
        StoreCounters {
            syncs: self.syncs + o.syncs,
            entries: self.entries.zip(o.entries).map(|(a, b)| a + b),
        }
    }
}

/// A log store the harness can benchmark: cloneable (clones share the data, so the harness
/// keeps one to read counters) and able to report its commits.
pub trait BenchStore: LogStore + Clone {
    /// What its `syncs` counter counts.
    const SYNC_KIND: &'static str;

    /// Opens a fresh store for node `id` under `dir`.
    fn open(dir: &Path, id: NodeId) -> Result<Self>;

    /// The counters so far.
    fn counters(&self) -> StoreCounters;
}

impl BenchStore for MemLogStore {
    const SYNC_KIND: &'static str = "write batches (no fsync)";

    fn open(_dir: &Path, _id: NodeId) -> Result<Self> {
        Ok(MemLogStore::new())
    }

    fn counters(&self) -> StoreCounters {
        StoreCounters { syncs: self.write_count(), entries: None }
    }
}

impl BenchStore for RedbLogStore {
    const SYNC_KIND: &'static str = "redb commits (one fsync each)";

    fn open(dir: &Path, id: NodeId) -> Result<Self> {
        let path = dir.join(format!("node-{}.redb", id.0));
        RedbLogStore::open(&path).with_context(|| format!("opening redb at {}", path.display()))
    }

    fn counters(&self) -> StoreCounters {
        let s = self.stats();
        StoreCounters { syncs: s.commits, entries: Some(s.entries) }
    }
}

#[cfg(feature = "rocksdb")]
impl BenchStore for raftkit_rocksdb::RocksLogStore {
    const SYNC_KIND: &'static str = "RocksDB WAL-synced batches";

    fn open(dir: &Path, id: NodeId) -> Result<Self> {
        let path = dir.join(format!("node-{}.rocksdb", id.0));
        raftkit_rocksdb::RocksLogStore::open(&path)
            .with_context(|| format!("opening RocksDB at {}", path.display()))
    }

    fn counters(&self) -> StoreCounters {
        let s = self.stats();
        StoreCounters { syncs: s.commits, entries: Some(s.entries) }
    }
}

/// A running cluster and clones of its stores.
pub struct Cluster<N: Network, L: BenchStore, S: StateMachine> {
    /// The nodes, in id order (node `i` has id `i + 1`): the three [`MEMBERS`], then any
    /// [adopted](Self::adopt) after joining.
    pub nodes: Vec<Raft<N, L, S>>,
    stores: Vec<L>,
    seed: u64,
}

/// A node started in join mode (no members: it waits for a leader to add it) that is not yet
/// in its [`Cluster`]'s node list; see [`Cluster::start_joiner`] and [`Cluster::adopt`].
pub struct Joiner<N: Network, L: BenchStore, S: StateMachine> {
    /// The node.
    pub node: Raft<N, L, S>,
    store: L,
}

impl<N: Network, L: BenchStore, S: StateMachine> Cluster<N, L, S> {
    /// Starts one node per network endpoint (ids 1, 2, 3), each with a fresh store under
    /// `dir` and a state machine from `sm`, with `Config::new` defaults and `seed`.
    pub async fn start(
        nets: Vec<N>,
        dir: &Path,
        seed: u64,
        sm: impl Fn() -> S,
    ) -> Result<Cluster<N, L, S>> {
        let mut nodes = Vec::new();
        let mut stores = Vec::new();
        for (net, id) in nets.into_iter().zip(MEMBERS) {
            let store = L::open(dir, id)?;
            let mut config = Config::new(id, MEMBERS);
            config.seed = seed;
            let node = Raft::start(config, net, store.clone(), sm())
                .await
                .with_context(|| format!("starting node {id}"))?;
            nodes.push(node);
            stores.push(store);
        }
        Ok(Cluster { nodes, stores, seed })
    }

    /// The id the next node to join gets: one past the last node's.
    pub fn next_id(&self) -> NodeId {
        NodeId(self.nodes.len() as u64 + 1)
    }

    /// Starts node [`next_id`](Self::next_id) in join mode (a `Config` with no members), with a
    /// fresh store under `dir`, on network endpoint `net`. It takes no part in the cluster
    /// until a leader adds it (`add_learner`). Takes `&self`, so it can run while clients
    /// write; [`adopt`](Self::adopt) it afterwards so the cluster reads its counters and stops
    /// it.
    pub async fn start_joiner(&self, net: N, dir: &Path, sm: S) -> Result<Joiner<N, L, S>> {
        let id = self.next_id();
        let store = L::open(dir, id)?;
        let mut config = Config::new(id, []);
        config.seed = self.seed;
        let node = Raft::start(config, net, store.clone(), sm)
            .await
            .with_context(|| format!("starting node {id} in join mode"))?;
        Ok(Joiner { node, store })
    }

    /// Takes a node started by [`start_joiner`](Self::start_joiner) into the node list.
    ///
    /// # Errors
    /// If it does not have the next id (another node was adopted since it started).
    pub fn adopt(&mut self, joiner: Joiner<N, L, S>) -> Result<()> {
        let (id, next) = (joiner.node.id(), self.next_id());
        if id != next {
            bail!("node {id} cannot join as node {next}: the ids must stay in order");
        }
        self.nodes.push(joiner.node);
        self.stores.push(joiner.store);
        Ok(())
    }

    /// Waits until a leader has committed an entry of its term and every member of its
    /// configuration follows it; returns the leader's position in `nodes`.
    pub async fn wait_leader(&self, timeout: Duration) -> Result<usize> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let metrics: Vec<_> = self.nodes.iter().map(|n| n.metrics().borrow().clone()).collect();
            let stable = metrics.iter().position(|lm| {
                lm.role == raftkit::Role::Leader
                    && lm.applied.0 > 0
                    && metrics
                        .iter()
                        .filter(|m| lm.membership.contains(m.id))
                        .all(|m| m.leader == Some(lm.id))
            });
            if let Some(pos) = stable {
                return Ok(pos);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("no stable leader within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The stores' counters summed over the nodes, with entries taken from the nodes' last log
    /// index where the store does not count them.
    pub fn counters(&self) -> StoreCounters {
        let sum = self
            .stores
            .iter()
            .map(BenchStore::counters)
            .fold(StoreCounters { syncs: 0, entries: Some(0) }, |a, b| a + b);
        match sum.entries {
            Some(_) => sum,
            None => StoreCounters {
                syncs: sum.syncs,
                entries: Some(
                    self.nodes.iter().map(|n| n.metrics().borrow().last_log.index.0).sum(),
                ),
            },
        }
    }

    /// The highest current term among the nodes (it rises with every election).
    pub fn max_term(&self) -> u64 {
        self.nodes.iter().map(|n| n.metrics().borrow().term.0).max().unwrap_or(0)
    }

    /// Stops every node.
    pub async fn shutdown(self) -> Result<()> {
        for n in &self.nodes {
            n.shutdown().await.with_context(|| format!("stopping node {}", n.id()))?;
        }
        Ok(())
    }
}

/// Where a cluster's network endpoints come from: the three members' at the start, and one for
/// each node that joins later, all able to reach one another.
pub trait Fabric {
    /// The network adapter.
    type Net: Network;

    /// The endpoint of node `id`.
    fn endpoint(&self, id: NodeId) -> Result<Self::Net>;

    /// The node information a membership change carries for `net`: what other nodes dial
    /// (empty for the in-memory network, which needs none).
    fn node_info(&self, net: &Self::Net) -> String;

    /// The endpoints of the three [`MEMBERS`].
    fn members(&self) -> Result<Vec<Self::Net>> {
        MEMBERS.iter().map(|id| self.endpoint(*id)).collect()
    }
}

/// In-memory endpoints on one [`MemRouter`].
pub struct MemFabric {
    router: MemRouter,
}

impl MemFabric {
    /// A fresh router; `seed` drives its (unused) fault decisions.
    pub fn new(seed: u64) -> MemFabric {
        MemFabric { router: MemRouter::new(seed) }
    }
}

impl Fabric for MemFabric {
    type Net = MemNetwork;

    fn endpoint(&self, id: NodeId) -> Result<MemNetwork> {
        Ok(self.router.network(id))
    }

    fn node_info(&self, _net: &MemNetwork) -> String {
        String::new()
    }
}

/// QUIC endpoints on 127.0.0.1 (ports picked by the OS), with certificates from one CA and one
/// shared address book (every endpoint is in it as soon as it is bound, so the others accept
/// its connections).
pub struct QuicFabric {
    ca: CertAuthority,
    book: AddressBook,
}

impl QuicFabric {
    /// A fresh CA and an empty address book.
    pub fn new() -> Result<QuicFabric> {
        Ok(QuicFabric {
            ca: CertAuthority::generate().context("generating a CA")?,
            book: AddressBook::new(),
        })
    }
}

impl Fabric for QuicFabric {
    type Net = QuicNetwork;

    /// Binds node `id`'s endpoint and records its address. Must run inside the Tokio runtime.
    fn endpoint(&self, id: NodeId) -> Result<QuicNetwork> {
        let certs =
            self.ca.node_certs(id).with_context(|| format!("issuing a certificate for {id}"))?;
        let listen = "127.0.0.1:0".parse().context("loopback address")?;
        let net =
            QuicNetwork::bind(QuicConfig::new(id, listen, certs).with_addresses(self.book.clone()))
                .with_context(|| format!("binding the QUIC endpoint of {id}"))?;
        self.book.insert(id, net.local_addr());
        Ok(net)
    }

    fn node_info(&self, net: &QuicNetwork) -> String {
        net.local_addr().to_string()
    }
}

/// Three in-memory network endpoints on one router.
pub fn mem_networks(seed: u64) -> Vec<MemNetwork> {
    let router = MemRouter::new(seed);
    MEMBERS.iter().map(|id| router.network(*id)).collect()
}

/// Three QUIC endpoints on 127.0.0.1 (ports picked by the OS), with a fresh CA and one shared
/// address book. Must run inside the Tokio runtime.
pub fn quic_networks() -> Result<Vec<QuicNetwork>> {
    QuicFabric::new()?.members()
}
