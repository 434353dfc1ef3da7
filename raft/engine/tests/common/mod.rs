//! A small in-memory cluster for engine tests: `MemRouter` + `MemLogStore` + `MemKv` per node,
//! with helpers to find the leader, write with retries, kill and restart nodes — all through
//! `&self`, so clients can keep writing while a test kills or restarts nodes.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use raftkit::{Config, NodeId, Raft, Role, WriteError};
use raftkit_mem::{KvCommand, KvOutput, KvState, MemKv, MemLogStore, MemNetwork, MemRouter};

pub type Node = Raft<MemNetwork, MemLogStore, MemKv>;

#[derive(Clone)]
pub struct Member {
    pub raft: Option<Node>,
    pub store: MemLogStore,
    pub kv: MemKv,
}

pub struct Cluster {
    pub router: MemRouter,
    pub members: Vec<NodeId>,
    nodes: Mutex<BTreeMap<NodeId, Member>>,
    pub seed: u64,
    configure: fn(&mut Config),
}

pub fn config(id: NodeId, members: &[NodeId], seed: u64) -> Config {
    let mut c = Config::new(id, members.iter().copied());
    c.heartbeat_interval = Duration::from_millis(50);
    c.election_timeout_min = Duration::from_millis(300);
    c.election_timeout_max = Duration::from_millis(600);
    c.seed = seed;
    c
}

impl Cluster {
    pub async fn start(n: u64, seed: u64) -> Cluster {
        Cluster::start_with(n, seed, |_| {}).await
    }

    /// Like `start`, with every node's configuration adjusted by `configure`.
    pub async fn start_with(n: u64, seed: u64, configure: fn(&mut Config)) -> Cluster {
        let router = MemRouter::new(seed);
        let members: Vec<NodeId> = (1..=n).map(NodeId).collect();
        let c = Cluster {
            router,
            members: members.clone(),
            nodes: Mutex::new(BTreeMap::new()),
            seed,
            configure,
        };
        for id in members {
            let m = Member { raft: None, store: MemLogStore::new(), kv: MemKv::new() };
            c.nodes.lock().unwrap().insert(id, m);
            c.boot(id).await;
        }
        c
    }

    async fn boot(&self, id: NodeId) {
        let members = self.members.clone();
        self.boot_with(id, &members).await;
    }

    /// Starts a new, empty node with no configuration: it waits until a leader adds it.
    pub async fn join(&self, id: NodeId) {
        let m = Member { raft: None, store: MemLogStore::new(), kv: MemKv::new() };
        self.nodes.lock().unwrap().insert(id, m);
        self.boot_with(id, &[]).await;
    }

    pub async fn boot_with(&self, id: NodeId, members: &[NodeId]) {
        let mut cfg = config(id, members, self.seed);
        (self.configure)(&mut cfg);
        let m = self.member(id);
        assert!(m.raft.is_none(), "{id} is already running");
        let raft = Raft::start(cfg, self.router.network(id), m.store.clone(), m.kv.clone())
            .await
            .expect("start");
        self.nodes.lock().unwrap().get_mut(&id).unwrap().raft = Some(raft);
    }

    pub fn member(&self, id: NodeId) -> Member {
        self.nodes.lock().unwrap()[&id].clone()
    }

    pub fn node(&self, id: NodeId) -> Option<Node> {
        self.member(id).raft
    }

    pub fn kv(&self, id: NodeId) -> KvState {
        self.member(id).kv.state()
    }

    pub fn live(&self) -> Vec<NodeId> {
        let g = self.nodes.lock().unwrap();
        g.iter().filter(|(_, m)| m.raft.is_some()).map(|(id, _)| *id).collect()
    }

    /// Waits for a leader that a majority of live nodes follow and that has applied its no-op.
    pub async fn leader(&self) -> NodeId {
        for _ in 0..400 {
            let live: Vec<(NodeId, raftkit::RaftMetrics)> = self
                .live()
                .into_iter()
                .filter_map(|id| self.node(id).map(|n| (id, n.metrics().borrow().clone())))
                .collect();
            for (id, m) in &live {
                if m.role == Role::Leader && m.applied >= m.commit && m.commit.0 > 0 {
                    let followers = live.iter().filter(|(_, o)| o.leader == Some(*id)).count();
                    if followers * 2 > self.members.len() {
                        return *id;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no leader within 20 s");
    }

    /// Writes through whichever node is leader, retrying on `NotLeader` and node failures.
    /// Returns the output of the attempt that succeeded.
    pub async fn write(&self, cmd: KvCommand) -> KvOutput {
        let mut target = None;
        for _ in 0..200 {
            let id = match target {
                Some(id) => id,
                None => self.leader().await,
            };
            let Some(raft) = self.node(id) else {
                target = None;
                continue;
            };
            match raft.client_write(cmd.clone()).await {
                Ok(out) => return out,
                Err(WriteError::NotLeader { leader: Some(l) }) if l != id => target = Some(l),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    target = None;
                }
            }
        }
        panic!("write {cmd:?} did not succeed");
    }

    /// Stops a node (its store keeps what was written).
    pub async fn kill(&self, id: NodeId) {
        let raft = self.nodes.lock().unwrap().get_mut(&id).unwrap().raft.take();
        if let Some(r) = raft {
            r.shutdown().await.expect("clean shutdown");
        }
    }

    /// Kills a node as if its process died: nothing is drained or flushed, and its store loses
    /// whatever was not yet durable.
    pub async fn crash(&self, id: NodeId) {
        let member = {
            let mut g = self.nodes.lock().unwrap();
            let m = g.get_mut(&id).unwrap();
            (m.raft.take(), m.store.clone())
        };
        if let (Some(r), store) = member {
            r.kill().await;
            store.crash();
        }
    }

    /// Restarts a node on its log store with a fresh (empty) state machine.
    pub async fn restart(&self, id: NodeId) {
        self.nodes.lock().unwrap().get_mut(&id).unwrap().kv = MemKv::new();
        self.boot(id).await;
    }

    /// Restarts a node on its log store and its state machine (as a durable state machine).
    pub async fn restart_keeping_state(&self, id: NodeId) {
        self.boot(id).await;
    }

    /// Waits until every live node has applied what the leader committed, then checks that
    /// they applied the same sequence and hold the same data.
    pub async fn converge(&self) {
        let leader = self.leader().await;
        let target = self.node(leader).unwrap().metrics().borrow().commit;
        for id in self.live() {
            let ok = self
                .node(id)
                .unwrap()
                .wait_for(Duration::from_secs(30), |m| m.applied >= target)
                .await;
            assert!(ok.is_some(), "{id} did not apply up to {target}");
        }
        // A new election could still add a no-op: wait until all report the same last entry.
        for _ in 0..200 {
            let applied: Vec<_> = self.live().iter().map(|id| self.kv(*id).applied).collect();
            if applied.windows(2).all(|w| w[0] == w[1]) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let states: Vec<_> = self.live().iter().map(|id| (*id, self.kv(*id))).collect();
        let (first_id, first) = &states[0];
        for (id, s) in &states[1..] {
            assert_eq!(s.applied, first.applied, "{id} and {first_id} did not converge");
            assert_eq!(s.digest, first.digest, "{id} and {first_id} applied different sequences");
            assert_eq!(s.data, first.data, "{id} and {first_id} hold different data");
        }
    }

    /// Asserts every live node holds every key in `keys`.
    pub fn assert_all_present(&self, keys: &[String]) {
        for id in self.live() {
            let state = self.kv(id);
            let missing: Vec<_> =
                keys.iter().filter(|k| !state.data.contains_key(*k)).take(5).collect();
            assert!(missing.is_empty(), "{id} lost acknowledged writes, e.g. {missing:?}");
        }
    }

    pub async fn shutdown(&self) {
        for id in self.live() {
            self.kill(id).await;
        }
    }
}
