//! The driver's shortcut for stores and networks that finish at once (`LogStore::inline_write`,
//! `Network::inline_send`): it calls them itself when their helper task is idle, and hands a
//! call that did not finish at once to that task. These tests use adapters that opt in but
//! now and then make a call wait, and check that the engine still keeps the adapters' contract
//! (one store call at a time, one send per peer at a time), that both the shortcut and the
//! hand-over are taken, and that the cluster loses nothing.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use raftkit::{
    Config, LogId, LogIndex, LogState, LogStore, LogWrite, Message, Network, NetworkError, NodeId,
    Raft, SnapshotStore, StorageError,
};
use raftkit_mem::{KvCommand, KvOutput, MemKv, MemLogStore, MemNetwork, MemRouter};

/// Counts shared by the checked adapters of one cluster.
#[derive(Default)]
struct Tally {
    /// Calls made while another call to the same store (or the same peer) was in progress.
    overlaps: AtomicU64,
    /// Calls that waited before finishing (so the engine had to hand them over).
    waited: AtomicU64,
    /// Writes that reached a store.
    writes: AtomicU64,
    /// Sends that reached a network.
    sends: AtomicU64,
}

/// Makes every `n`-th call to one adapter wait a scheduler turn, so that it does not finish on
/// its first poll. Remembers the tasks that polled a waiting call again (the helper tasks the
/// engine handed it to; the driver never polls a call twice) and the tasks that started calls
/// after the first wait.
struct Pacer {
    calls: AtomicU64,
    every: u64,
    waited_yet: AtomicBool,
    helpers: Mutex<HashSet<Option<tokio::task::Id>>>,
    started_after_wait: Mutex<Vec<Option<tokio::task::Id>>>,
}

impl Pacer {
    fn new(every: u64) -> Arc<Pacer> {
        Arc::new(Pacer {
            calls: AtomicU64::new(0),
            every,
            waited_yet: AtomicBool::new(false),
            helpers: Mutex::default(),
            started_after_wait: Mutex::default(),
        })
    }

    async fn pace(&self, tally: &Tally) {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        if self.waited_yet.load(Ordering::SeqCst) {
            self.started_after_wait.lock().unwrap().push(tokio::task::try_id());
        }
        if n % self.every == self.every - 1 {
            tokio::task::yield_now().await;
            tally.waited.fetch_add(1, Ordering::Relaxed);
            self.helpers.lock().unwrap().insert(tokio::task::try_id());
            self.waited_yet.store(true, Ordering::SeqCst);
        }
    }

    /// Calls started after a call had waited, by a task that never finished a waiting call:
    /// the driver calling the adapter itself once the helper was idle again.
    fn direct_after_wait(&self) -> usize {
        let helpers = self.helpers.lock().unwrap();
        self.started_after_wait.lock().unwrap().iter().filter(|t| !helpers.contains(t)).count()
    }
}

/// A memory store that opts in to inline writes, makes some writes wait, and counts overlapping
/// calls (the engine promises one write, purge or install at a time).
#[derive(Clone)]
struct CheckedStore {
    inner: MemLogStore,
    busy: Arc<AtomicBool>,
    pacer: Arc<Pacer>,
    tally: Arc<Tally>,
}

impl CheckedStore {
    async fn guarded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        if self.busy.swap(true, Ordering::SeqCst) {
            self.tally.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        self.pacer.pace(&self.tally).await;
        let r = call.await;
        self.busy.store(false, Ordering::SeqCst);
        r
    }
}

#[async_trait]
impl LogStore for CheckedStore {
    async fn load(&self) -> Result<LogState, StorageError> {
        self.inner.load().await
    }
    async fn write(&self, w: LogWrite) -> Result<(), StorageError> {
        self.tally.writes.fetch_add(1, Ordering::Relaxed);
        self.guarded(self.inner.write(w)).await
    }
    async fn read(
        &self,
        first: LogIndex,
        last: LogIndex,
    ) -> Result<Vec<raftkit::Entry>, StorageError> {
        self.inner.read(first, last).await
    }
    async fn purge(&self, up_to: LogId) -> Result<(), StorageError> {
        self.guarded(self.inner.purge(up_to)).await
    }
    async fn install_snapshot(&self, snapshot: LogId) -> Result<(), StorageError> {
        self.guarded(self.inner.install_snapshot(snapshot)).await
    }
    fn inline_write(&self) -> bool {
        true
    }
    fn snapshot_store(&self) -> Arc<dyn SnapshotStore> {
        self.inner.snapshot_store()
    }
}

/// A memory network that opts in to inline sends, makes some sends wait, and counts sends to a
/// peer that overlap (the engine promises one send per peer at a time).
struct CheckedNet {
    inner: MemNetwork,
    busy: Mutex<BTreeSet<NodeId>>,
    /// One per peer: the engine hands sends over per peer.
    pacers: BTreeMap<NodeId, Arc<Pacer>>,
    tally: Arc<Tally>,
}

#[async_trait]
impl Network for CheckedNet {
    async fn start(&self, inbox: raftkit::Inbox) -> Result<(), NetworkError> {
        self.inner.start(inbox).await
    }
    async fn send(&self, to: NodeId, messages: Vec<Message>) -> Result<(), NetworkError> {
        self.tally.sends.fetch_add(1, Ordering::Relaxed);
        if !self.busy.lock().unwrap().insert(to) {
            self.tally.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        self.pacers[&to].pace(&self.tally).await;
        let r = self.inner.send(to, messages).await;
        self.busy.lock().unwrap().remove(&to);
        r
    }
    fn inline_send(&self) -> bool {
        true
    }
    async fn shutdown(&self) {
        self.inner.shutdown().await
    }
}

type Node = Raft<CheckedNet, CheckedStore, MemKv>;

struct Checked {
    router: MemRouter,
    members: Vec<NodeId>,
    stores: Vec<CheckedStore>,
    kvs: Vec<MemKv>,
    nodes: Mutex<Vec<Option<Node>>>,
    store_tally: Arc<Tally>,
    net_tally: Arc<Tally>,
    net_pacers: Mutex<Vec<Arc<Pacer>>>,
}

fn checked_config(id: NodeId, members: &[NodeId]) -> Config {
    let mut c = common::config(id, members, 11);
    // Small snapshots, so purges and (for a restarted node) installs go through the writer too.
    c.snapshot_every = 64;
    c.snapshot_keep = 8;
    c
}

impl Checked {
    async fn start() -> Checked {
        let router = MemRouter::new(11);
        let members: Vec<NodeId> = (1..=3).map(NodeId).collect();
        let (store_tally, net_tally) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
        let stores: Vec<CheckedStore> = members
            .iter()
            .map(|_| CheckedStore {
                inner: MemLogStore::new(),
                busy: Arc::default(),
                pacer: Pacer::new(5),
                tally: store_tally.clone(),
            })
            .collect();
        let kvs: Vec<MemKv> = members.iter().map(|_| MemKv::new()).collect();
        let c = Checked {
            router,
            members: members.clone(),
            stores,
            kvs,
            nodes: Mutex::new(members.iter().map(|_| None).collect()),
            store_tally,
            net_tally,
            net_pacers: Mutex::default(),
        };
        for i in 0..members.len() {
            c.boot(i).await;
        }
        c
    }

    async fn boot(&self, i: usize) {
        let id = self.members[i];
        let pacers: BTreeMap<NodeId, Arc<Pacer>> =
            self.members.iter().filter(|m| **m != id).map(|m| (*m, Pacer::new(3))).collect();
        self.net_pacers.lock().unwrap().extend(pacers.values().cloned());
        let net = CheckedNet {
            inner: self.router.network(id),
            busy: Mutex::default(),
            pacers,
            tally: self.net_tally.clone(),
        };
        let raft = Raft::start(
            checked_config(id, &self.members),
            net,
            self.stores[i].clone(),
            self.kvs[i].clone(),
        )
        .await
        .expect("start");
        self.nodes.lock().unwrap()[i] = Some(raft);
    }

    fn node(&self, i: usize) -> Option<Node> {
        self.nodes.lock().unwrap()[i].clone()
    }

    /// Writes through whichever node accepts it, following redirects.
    async fn write(&self, cmd: KvCommand) -> KvOutput {
        let mut at = 0;
        for _ in 0..400 {
            if let Some(n) = self.node(at) {
                match n.client_write(cmd.clone()).await {
                    Ok(out) => return out,
                    Err(raftkit::WriteError::NotLeader { leader: Some(l) }) => {
                        at = self.members.iter().position(|m| *m == l).unwrap_or(0);
                        continue;
                    }
                    Err(_) => {}
                }
            }
            at = (at + 1) % self.members.len();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("write {cmd:?} did not succeed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_calls_keep_one_call_at_a_time_and_lose_nothing() {
    let c = Arc::new(Checked::start().await);
    let keys = |client: usize| (0..60).map(move |i| format!("c{client}-k{i}"));
    let write_all = |c: Arc<Checked>, client: usize| async move {
        for k in keys(client) {
            c.write(KvCommand::Put { key: k, value: "v".to_string() }).await;
        }
    };
    let clients: Vec<_> = (0..8).map(|i| tokio::spawn(write_all(c.clone(), i))).collect();
    for t in clients {
        t.await.unwrap();
    }
    // Stop a follower, write past a few snapshots, and bring it back: it catches up through a
    // snapshot install, which also goes through its store's writer.
    let leader = c.node(0).unwrap().metrics().borrow().leader.expect("a leader");
    let follower = (0..3).find(|i| c.members[*i] != leader).unwrap();
    let node = c.nodes.lock().unwrap()[follower].take().unwrap();
    node.shutdown().await.unwrap();
    let more: Vec<_> = (8..12).map(|i| tokio::spawn(write_all(c.clone(), i))).collect();
    for t in more {
        t.await.unwrap();
    }
    c.boot(follower).await;
    let other = (0..3).find(|i| *i != follower).unwrap();
    let target = c.node(other).unwrap().metrics().borrow().commit;
    assert!(target.0 > 12 * 60, "every write is committed");
    for i in 0..3 {
        let n = c.node(i).unwrap();
        let ok = n.wait_for(Duration::from_secs(30), |m| m.applied >= target).await;
        assert!(ok.is_some(), "node {} did not catch up to {target}", c.members[i]);
    }
    let installed = c.node(follower).unwrap().metrics().borrow().snapshot;
    assert!(installed.is_some(), "the restarted node should have a snapshot");
    for (i, kv) in c.kvs.iter().enumerate() {
        let state = kv.state();
        for client in 0..12 {
            for k in keys(client) {
                assert!(
                    state.data.contains_key(&k),
                    "node {} lost {k} (restarted: {}; applied {:?}; {} keys; metrics {:?})",
                    c.members[i],
                    i == follower,
                    state.applied,
                    state.data.len(),
                    c.node(i).map(|n| n.metrics().borrow().clone())
                );
            }
        }
    }
    for i in 0..3 {
        if let Some(n) = c.node(i) {
            n.shutdown().await.unwrap();
        }
    }

    let store_pacers: Vec<Arc<Pacer>> = c.stores.iter().map(|s| s.pacer.clone()).collect();
    let net_pacers = c.net_pacers.lock().unwrap().clone();
    for (what, t, pacers) in
        [("store", &c.store_tally, store_pacers), ("network", &c.net_tally, net_pacers)]
    {
        let get = |a: &AtomicU64| a.load(Ordering::SeqCst);
        assert_eq!(get(&t.overlaps), 0, "overlapping {what} calls");
        assert!(get(&t.waited) > 0, "no {what} call waited");
        let direct: usize = pacers.iter().map(|p| p.direct_after_wait()).sum();
        assert!(direct > 0, "the driver never called the {what} itself after a call had waited");
    }
    assert!(c.store_tally.writes.load(Ordering::SeqCst) > 0);
    assert!(c.net_tally.sends.load(Ordering::SeqCst) > 0);
}
