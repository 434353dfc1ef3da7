//! Engine behaviours beyond the protocol: configuration validation at start, fatal storage
//! errors, group commit, and isolation of a slow peer.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use raftkit::{
    Entry, Fatal, LogId, LogIndex, LogState, LogStore, LogWrite, Message, Network, NetworkError,
    NodeId, NodeState, Raft, StartError, StorageError, StorageErrorKind, WriteError,
};
use raftkit_mem::{KvCommand, MemKv, MemLogStore, MemNetwork, MemRouter};

fn single(id: u64) -> raftkit::Config {
    common::config(NodeId(id), &[NodeId(id)], 1)
}

#[tokio::test(start_paused = true)]
async fn invalid_configs_are_refused_naming_the_field() {
    let router = MemRouter::new(1);
    type Tweak = Box<dyn Fn(&mut raftkit::Config)>;
    let cases: Vec<(&str, Tweak)> = vec![
        ("election_timeout_min", Box::new(|c| c.election_timeout_min = c.heartbeat_interval)),
        ("`id`", Box::new(|c| c.id = NodeId(0))),
        ("members", Box::new(|c| c.members.push(c.members[0]))),
        ("`id`", Box::new(|c| c.id = NodeId(99))),
        ("max_inflight_messages", Box::new(|c| c.max_inflight_messages = 0)),
        ("max_inflight_bytes", Box::new(|c| c.max_inflight_bytes = 0)),
        ("max_entries_per_message", Box::new(|c| c.max_entries_per_message = 0)),
    ];
    for (field, tweak) in cases {
        let mut cfg = single(1);
        tweak(&mut cfg);
        let err = Raft::start(cfg, router.network(NodeId(1)), MemLogStore::new(), MemKv::new())
            .await
            .err()
            .expect("start must fail");
        assert!(matches!(err, StartError::Config(_)), "{err}");
        assert!(err.to_string().contains(field), "{err} should name {field}");
    }
}

/// A log store that fails every write once `fail` is set.
#[derive(Clone, Default)]
struct FlakyStore {
    inner: MemLogStore,
    fail: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
}

#[async_trait]
impl LogStore for FlakyStore {
    async fn load(&self) -> Result<LogState, StorageError> {
        self.inner.load().await
    }
    async fn write(&self, w: LogWrite) -> Result<(), StorageError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StorageError::io("disk on fire", std::io::Error::other("EIO")));
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
        // Take some (virtual) time, like an fsync, so proposals queue up behind it.
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.inner.write(w).await
    }
    async fn read(&self, first: LogIndex, last: LogIndex) -> Result<Vec<Entry>, StorageError> {
        self.inner.read(first, last).await
    }
    async fn purge(&self, up_to: LogId) -> Result<(), StorageError> {
        self.inner.purge(up_to).await
    }
    async fn install_snapshot(&self, snapshot: LogId) -> Result<(), StorageError> {
        self.inner.install_snapshot(snapshot).await
    }
    fn snapshot_store(&self) -> Arc<dyn raftkit::SnapshotStore> {
        self.inner.snapshot_store()
    }
}

#[tokio::test(start_paused = true)]
async fn a_storage_error_is_fatal_and_reported() {
    let router = MemRouter::new(1);
    let store = FlakyStore::default();
    let node = Raft::start(single(1), router.network(NodeId(1)), store.clone(), MemKv::new())
        .await
        .unwrap();
    node.wait_for(Duration::from_secs(5), |m| m.leader == Some(NodeId(1))).await.unwrap();
    node.client_write(KvCommand::put("a", "1")).await.unwrap();
    store.fail.store(true, Ordering::SeqCst);
    let err = node.client_write(KvCommand::put("b", "2")).await.unwrap_err();
    assert!(matches!(err, WriteError::Fatal(Fatal::LogStore(_))), "{err}");
    let m =
        node.wait_for(Duration::from_secs(1), |m| matches!(m.state, NodeState::Failed(_))).await;
    let m = m.expect("metrics must report the failure");
    // It stepped down: a balancer routing writes by role must not pick it.
    assert_eq!((m.role, m.leader), (raftkit::Role::Follower, None), "{m:?}");
    assert!(m.replication.is_empty(), "{m:?}");
    // The metrics carry the error itself, not its text.
    match m.state {
        NodeState::Failed(Fatal::LogStore(e)) => {
            assert_eq!(e.kind(), StorageErrorKind::Io);
            assert!(e.is_retryable(), "an I/O error may pass");
        }
        other => panic!("expected the fatal storage error in the metrics, got {other:?}"),
    }
    // Every later call reports the same failure.
    let err = node.client_write(KvCommand::put("c", "3")).await.unwrap_err();
    match err {
        WriteError::Fatal(Fatal::LogStore(e)) => assert_eq!(e.kind(), StorageErrorKind::Io),
        other => panic!("expected the fatal storage error, got {other}"),
    }
    assert!(node.shutdown().await.is_err());
}

#[tokio::test(start_paused = true)]
async fn concurrent_proposals_share_log_writes() {
    let router = MemRouter::new(1);
    let store = FlakyStore::default();
    let node = Raft::start(single(1), router.network(NodeId(1)), store.clone(), MemKv::new())
        .await
        .unwrap();
    node.wait_for(Duration::from_secs(5), |m| m.leader == Some(NodeId(1))).await.unwrap();
    let before = store.writes.load(Ordering::SeqCst);
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            node.client_write(KvCommand::put(format!("k{i}"), "v")).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let writes = store.writes.load(Ordering::SeqCst) - before;
    assert!(writes < 100, "1000 concurrent proposals took {writes} log writes (no group commit)");
    node.shutdown().await.unwrap();
}

/// A network whose sends to one peer never complete.
struct Stuck {
    inner: MemNetwork,
    stuck: NodeId,
}

#[async_trait]
impl Network for Stuck {
    async fn start(&self, inbox: raftkit::Inbox) -> Result<(), NetworkError> {
        self.inner.start(inbox).await
    }
    async fn send(&self, to: NodeId, messages: Vec<Message>) -> Result<(), NetworkError> {
        if to == self.stuck {
            std::future::pending::<()>().await;
        }
        self.inner.send(to, messages).await
    }
    async fn shutdown(&self) {
        self.inner.shutdown().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_hung_peer_does_not_stall_the_others() {
    let router = MemRouter::new(3);
    let members = [NodeId(1), NodeId(2), NodeId(3)];
    let mut nodes = Vec::new();
    for id in members {
        let mut cfg = common::config(id, &members, 3);
        if id != NodeId(1) {
            // Node 1 should win the first election.
            cfg.election_timeout_min = Duration::from_secs(5);
            cfg.election_timeout_max = Duration::from_secs(6);
        }
        let net = Stuck { inner: router.network(id), stuck: NodeId(3) };
        nodes.push(Raft::start(cfg, net, MemLogStore::new(), MemKv::new()).await.unwrap());
    }
    let leader = &nodes[0];
    leader.wait_for(Duration::from_secs(10), |m| m.role == raftkit::Role::Leader).await.unwrap();
    for i in 0..200 {
        leader.client_write(KvCommand::put(format!("k{i}"), "v")).await.unwrap();
    }
    let m = leader.metrics().borrow().clone();
    assert_eq!(m.replication.get(&NodeId(3)), Some(&LogIndex(0)), "node 3 is unreachable");
    assert!(m.replication[&NodeId(2)].0 >= 201);
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}

/// A leader that cannot reach a follower says so in its metrics (`last_error`, naming the peer
/// and why), without failing: the error is one the node recovers from.
#[tokio::test(start_paused = true)]
async fn metrics_show_the_last_error_the_node_recovered_from() {
    let c = common::Cluster::start(3, 21).await;
    let leader = c.leader().await;
    assert_eq!(c.node(leader).unwrap().metrics().borrow().last_error, None);
    let gone = c.members.iter().copied().find(|id| *id != leader).unwrap();
    c.kill(gone).await;
    c.write(KvCommand::put("k", "v")).await;
    let node = c.node(leader).unwrap();
    let mut last = None;
    for _ in 0..100 {
        last = node.metrics().borrow().last_error.clone();
        if last.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last = last.expect("the leader's metrics name no error after a follower went away");
    assert!(last.contains(&format!("node {gone}")), "{last}");
    assert_eq!(node.metrics().borrow().state, raftkit::NodeState::Running);
    c.shutdown().await;
}
