//! Guards the rule that a snapshot whose bytes are intact (checksum right) but whose contents the
//! state machine cannot restore never becomes the snapshot a node stands on: the node keeps its
//! previous state and snapshot, says why, keeps running, restarts from its previous state, and
//! catches up once a usable snapshot arrives. (Before, the refused snapshot was made durable
//! first: the node stopped with a fatal error and could never start again.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use raftkit::{
    ApplyEntry, Config, LogId, NodeId, NodeState, Raft, SnapshotMeta, SnapshotSource, StateMachine,
    StorageError, StorageErrorKind, WriteError,
};
use raftkit_mem::{KvCommand, KvOutput, KvQuery, MemKv, MemLogStore, MemNetwork, MemRouter};

/// `MemKv` that refuses every restore while `refuse` is set, as a state machine would refuse a
/// snapshot of an incompatible format. A refused restore leaves the state untouched.
#[derive(Clone)]
struct Picky {
    kv: MemKv,
    refuse: Arc<AtomicBool>,
    refused: Arc<AtomicU64>,
}

#[async_trait]
impl StateMachine for Picky {
    type Command = KvCommand;
    type Output = KvOutput;
    type Query = KvQuery;
    type QueryOutput = KvOutput;

    async fn applied(&mut self) -> Result<Option<LogId>, StorageError> {
        self.kv.applied().await
    }

    async fn apply(
        &mut self,
        entries: Vec<ApplyEntry<KvCommand>>,
    ) -> Result<Vec<KvOutput>, StorageError> {
        self.kv.apply(entries).await
    }

    fn query(&self, query: KvQuery) -> KvOutput {
        self.kv.query(query)
    }

    async fn snapshot(&mut self) -> Result<Box<dyn SnapshotSource>, StorageError> {
        self.kv.snapshot().await
    }

    async fn restore(
        &mut self,
        meta: &SnapshotMeta,
        data: Box<dyn std::io::Read + Send>,
    ) -> Result<(), StorageError> {
        if self.refuse.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(StorageError::new(
                StorageErrorKind::Corruption,
                "snapshot format not understood by this state machine",
            ));
        }
        self.kv.restore(meta, data).await
    }
}

type Node = Raft<MemNetwork, MemLogStore, Picky>;

fn config(id: u64) -> Config {
    let mut c = Config::new(NodeId(id), [NodeId(1), NodeId(2), NodeId(3)]);
    c.heartbeat_interval = Duration::from_millis(50);
    c.election_timeout_min = Duration::from_millis(300);
    c.election_timeout_max = Duration::from_millis(600);
    c.snapshot_every = 20;
    c.snapshot_keep = 0;
    c.seed = 11;
    c
}

async fn start(router: &MemRouter, id: u64, store: &MemLogStore, sm: &Picky) -> Node {
    Raft::start(config(id), router.network(NodeId(id)), store.clone(), sm.clone())
        .await
        .expect("start")
}

async fn write(nodes: &[&Node], cmd: KvCommand) {
    for _ in 0..200 {
        for n in nodes {
            match n.client_write(cmd.clone()).await {
                Ok(_) => return,
                Err(WriteError::NotLeader { .. }) => {}
                Err(e) => panic!("write failed: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no leader took {cmd:?}");
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_the_state_machine_refuses_is_rolled_back_and_the_node_keeps_its_state() {
    let router = MemRouter::new(11);
    let stores: Vec<MemLogStore> = (0..3).map(|_| MemLogStore::new()).collect();
    let sms: Vec<Picky> = (0..3)
        .map(|_| Picky {
            kv: MemKv::new(),
            refuse: Arc::new(AtomicBool::new(false)),
            refused: Arc::new(AtomicU64::new(0)),
        })
        .collect();
    let n1 = start(&router, 1, &stores[0], &sms[0]).await;
    let n2 = start(&router, 2, &stores[1], &sms[1]).await;
    let n3 = start(&router, 3, &stores[2], &sms[2]).await;
    // Node 3 takes part, then is cut off while the others move on and compact their logs.
    for i in 0..10 {
        write(&[&n1, &n2, &n3], KvCommand::put(format!("early{i}"), "v")).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = sms[2].kv.state();
    assert!(before.data.contains_key("early9"), "node 3 did not apply the early writes");
    let old_snapshot = n3.metrics().borrow().snapshot;
    router.isolate(NodeId(3));
    for i in 0..60 {
        write(&[&n1, &n2], KvCommand::put(format!("late{i}"), "v")).await;
    }
    // Node 3 comes back, but its state machine refuses the snapshot it is sent.
    sms[2].refuse.store(true, Ordering::SeqCst);
    router.heal();
    for _ in 0..100 {
        if sms[2].refused.load(Ordering::SeqCst) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sms[2].refused.load(Ordering::SeqCst) >= 1, "node 3 was never sent a snapshot");
    let m = n3.metrics().borrow().clone();
    assert_eq!(m.state, NodeState::Running, "a refused snapshot stopped the node");
    assert_eq!(m.snapshot, old_snapshot, "the refused snapshot became the node's snapshot");
    assert_eq!(sms[2].kv.state().data, before.data, "the node's state changed");

    // It restarts from its previous state (the refused snapshot is not what it stands on).
    n3.shutdown().await.expect("shutdown");
    let n3 = start(&router, 3, &stores[2], &sms[2]).await;
    assert_eq!(n3.metrics().borrow().snapshot, old_snapshot);

    // Once its state machine accepts the snapshot, it catches up.
    sms[2].refuse.store(false, Ordering::SeqCst);
    write(&[&n1, &n2], KvCommand::put("final", "v")).await;
    for _ in 0..200 {
        if sms[2].kv.state().data.contains_key("final") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sms[2].kv.state().data.contains_key("late59"), "node 3 never caught up");
    assert!(sms[2].kv.state().data.contains_key("final"));
    for n in [n1, n2, n3] {
        n.shutdown().await.expect("shutdown");
    }
}

/// A crash between publishing a received snapshot and rolling it back leaves the refused
/// snapshot as the latest one in the store. Startup falls back to the one before it when the log
/// never relied on it, instead of refusing to start forever.
#[tokio::test]
async fn startup_falls_back_from_a_snapshot_the_log_never_relied_on() {
    use raftkit::LogStore;
    let store = MemLogStore::new();
    let sm = Picky {
        kv: MemKv::new(),
        refuse: Arc::new(AtomicBool::new(true)),
        refused: Arc::new(AtomicU64::new(0)),
    };
    // A snapshot at (5, 100) published by a transfer, whose install never reached the log.
    let snaps = store.snapshot_store();
    let mut w = snaps
        .begin(LogId::new(5, 100), raftkit::Membership::new([NodeId(1)]).unwrap(), None)
        .await
        .unwrap();
    w.write(b"not a state this machine can read").await.unwrap();
    let bad = w.finish().await.unwrap();
    assert_eq!(snaps.latest().await.unwrap(), Some(bad.clone()));

    let mut cfg = Config::new(NodeId(1), [NodeId(1)]);
    cfg.seed = 1;
    let router = MemRouter::new(1);
    let node = Raft::start(cfg, router.network(NodeId(1)), store.clone(), sm.clone())
        .await
        .expect("a snapshot the log never relied on must not stop the node from starting");
    assert_eq!(sm.refused.load(Ordering::SeqCst), 1);
    assert_eq!(snaps.latest().await.unwrap(), None, "the unusable snapshot was kept");
    node.shutdown().await.unwrap();
}
