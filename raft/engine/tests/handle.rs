//! `RaftHandle<S>`: the handle typed on the state machine alone. It guards that application
//! code can write, read metrics, snapshot and shut down through it without naming the network
//! or the log store, and that it keeps the node alive on its own (it holds the driver's
//! channels, not a reference to the `Raft`).

mod common;

use std::time::Duration;

use raftkit::{NodeId, NodeState, Raft, RaftHandle, WriteError};
use raftkit_mem::{KvCommand, KvOutput, MemKv, MemLogStore, MemRouter};

/// Application code: only the state machine's type is named.
async fn put(node: &RaftHandle<MemKv>, key: &str, value: &str) -> Result<KvOutput, WriteError> {
    node.client_write(KvCommand::Put { key: key.into(), value: value.into() }).await
}

async fn start_single() -> RaftHandle<MemKv> {
    let router = MemRouter::new(1);
    let config = common::config(NodeId(1), &[NodeId(1)], 1);
    let raft = Raft::start(config, router.network(NodeId(1)), MemLogStore::new(), MemKv::new())
        .await
        .expect("start");
    let handle = raft.handle();
    // Only the handle remains: the node must keep running on it.
    drop(raft);
    handle
}

#[tokio::test(start_paused = true)]
async fn a_handle_alone_drives_the_node() {
    let node = start_single().await;
    assert_eq!(node.id(), NodeId(1));
    let m = node.wait_for(Duration::from_secs(10), |m| m.leader == Some(NodeId(1))).await;
    assert!(m.is_some(), "no leader: {:?}", node.metrics().borrow());

    assert_eq!(put(&node, "k", "v1").await.expect("write"), KvOutput::Prev(None));
    // A clone is the same node.
    let other = node.clone();
    assert_eq!(put(&other, "k", "v2").await.expect("write"), KvOutput::Prev(Some("v1".into())));
    let applied = node.metrics().borrow().applied;
    assert!(applied.0 >= 3, "the no-op and both writes are applied: {applied}");
    // The metrics serialize (for a status endpoint) and read back the same.
    let metrics = node.metrics().borrow().clone();
    let json = serde_json::to_string(&metrics).unwrap();
    assert_eq!(serde_json::from_str::<raftkit::RaftMetrics>(&json).unwrap(), metrics, "{json}");

    assert!(matches!(node.trigger_snapshot().await, Ok(true)));
    let snap = node.wait_for(Duration::from_secs(10), |m| m.snapshot.is_some()).await;
    assert!(snap.is_some(), "the snapshot never showed in the metrics");

    node.shutdown().await.expect("clean shutdown");
    assert_eq!(node.metrics().borrow().state, NodeState::Shutdown);
    assert!(matches!(put(&other, "k", "v3").await, Err(WriteError::Shutdown)));
}

#[tokio::test(start_paused = true)]
async fn killing_through_a_handle_stops_the_node_at_once() {
    let node = start_single().await;
    node.wait_for(Duration::from_secs(10), |m| m.leader == Some(NodeId(1))).await;
    node.kill().await;
    assert!(matches!(put(&node, "k", "v").await, Err(WriteError::Shutdown)));
}
