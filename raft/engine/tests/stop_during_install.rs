//! A node that stops while it is installing a snapshot from the leader still stops: its log
//! store fails (or it is shut down) while the state machine restores the snapshot, and the
//! snapshot receiver then asks the driver — which no longer handles anything — to install the
//! snapshot in the log. The node must end up failed (or shut down), not wait for that answer
//! forever with its metrics showing it running.

mod common;

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use raftkit::{
    ApplyEntry, Entry, LogId, LogIndex, LogState, LogStore, LogWrite, NodeId, NodeState, Raft,
    SnapshotMeta, SnapshotSource, SnapshotStore, StateMachine, StorageError,
};
use raftkit_mem::{KvCommand, KvOutput, KvQuery, MemKv, MemLogStore, MemRouter};
use tokio::sync::oneshot;

/// A `MemKv` whose restore tells the test it started, then waits for the test's go-ahead.
struct GatedKv {
    inner: MemKv,
    started: Option<oneshot::Sender<()>>,
    go: Option<oneshot::Receiver<()>>,
}

#[async_trait]
impl StateMachine for GatedKv {
    type Command = KvCommand;
    type Output = KvOutput;
    type Query = KvQuery;
    type QueryOutput = KvOutput;

    async fn applied(&mut self) -> Result<Option<LogId>, StorageError> {
        self.inner.applied().await
    }

    async fn apply(
        &mut self,
        entries: Vec<ApplyEntry<KvCommand>>,
    ) -> Result<Vec<KvOutput>, StorageError> {
        self.inner.apply(entries).await
    }

    fn query(&self, query: KvQuery) -> KvOutput {
        self.inner.query(query)
    }

    async fn snapshot(&mut self) -> Result<Box<dyn SnapshotSource>, StorageError> {
        self.inner.snapshot().await
    }

    async fn restore(
        &mut self,
        meta: &SnapshotMeta,
        data: Box<dyn Read + Send>,
    ) -> Result<(), StorageError> {
        if let Some(started) = self.started.take() {
            let _ = started.send(());
        }
        if let Some(go) = self.go.take() {
            let _ = go.await;
        }
        self.inner.restore(meta, data).await
    }
}

/// An in-memory log store whose writes fail once `fail` is set.
#[derive(Clone, Default)]
struct FailingStore {
    inner: MemLogStore,
    fail: Arc<AtomicBool>,
    failed: Arc<AtomicU64>,
}

#[async_trait]
impl LogStore for FailingStore {
    async fn load(&self) -> Result<LogState, StorageError> {
        self.inner.load().await
    }
    async fn write(&self, w: LogWrite) -> Result<(), StorageError> {
        if self.fail.load(Ordering::SeqCst) {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Err(StorageError::io("disk on fire", std::io::Error::other("EIO")));
        }
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
    fn snapshot_store(&self) -> Arc<dyn SnapshotStore> {
        self.inner.snapshot_store()
    }
}

const IDS: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];

fn config(id: NodeId) -> raftkit::Config {
    let mut c = common::config(id, &IDS, 5);
    c.snapshot_every = 10;
    c.snapshot_keep = 0;
    // An isolated node campaigns at once (and so writes its new term and vote).
    c.pre_vote = false;
    c.check_quorum = false;
    c
}

/// Two nodes commit and compact 30 entries; the third starts empty, must catch up from a
/// snapshot, and is held in the middle of restoring it. Returns the router, the leader side,
/// the third node, its store and the restore's go-ahead.
async fn third_node_restoring() -> (
    MemRouter,
    Vec<Raft<raftkit_mem::MemNetwork, MemLogStore, MemKv>>,
    Raft<raftkit_mem::MemNetwork, FailingStore, GatedKv>,
    FailingStore,
    oneshot::Sender<()>,
) {
    let router = MemRouter::new(5);
    let mut pair = Vec::new();
    for id in &IDS[..2] {
        let node = Raft::start(config(*id), router.network(*id), MemLogStore::new(), MemKv::new())
            .await
            .expect("start");
        pair.push(node);
    }
    for i in 0..30 {
        let cmd = KvCommand::put(format!("k{i}"), "v");
        loop {
            let leader = pair.iter().find(|n| n.metrics().borrow().leader == Some(n.id()));
            if let Some(l) = leader {
                if l.client_write(cmd.clone()).await.is_ok() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for n in &pair {
        n.wait_for(Duration::from_secs(30), |m| m.purged.index.0 > 0).await.expect("compacted");
    }
    let (started_tx, started_rx) = oneshot::channel();
    let (go_tx, go_rx) = oneshot::channel();
    let kv = GatedKv { inner: MemKv::new(), started: Some(started_tx), go: Some(go_rx) };
    let store = FailingStore::default();
    let third = Raft::start(config(IDS[2]), router.network(IDS[2]), store.clone(), kv)
        .await
        .expect("start");
    started_rx.await.expect("the third node restores a snapshot");
    (router, pair, third, store, go_tx)
}

#[tokio::test(start_paused = true)]
async fn a_store_failure_during_a_snapshot_install_stops_the_node() {
    let (router, pair, third, store, go) = third_node_restoring().await;
    // Its disk fails, and cut off it campaigns: the write of its new term fails. (The restore
    // runs on the blocking pool, which holds the paused clock: move it by hand.)
    store.fail.store(true, Ordering::SeqCst);
    router.isolate(IDS[2]);
    while store.failed.load(Ordering::SeqCst) == 0 {
        tokio::time::advance(Duration::from_millis(50)).await;
    }
    // Now the restore finishes, and the receiver asks for the log's install.
    let _ = go.send(());
    let m = third.wait_for(Duration::from_secs(60), |m| m.state != NodeState::Running).await;
    let m = m.expect("the node never stopped: it waits for a driver that is gone");
    assert!(matches!(m.state, NodeState::Failed(raftkit::Fatal::LogStore(_))), "{:?}", m.state);
    for n in pair {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_during_a_snapshot_install_completes() {
    let (_router, pair, third, _store, go) = third_node_restoring().await;
    let shutdown = tokio::spawn(async move { third.shutdown().await });
    // Let the driver get into its shutdown, then let the restore finish.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let _ = go.send(());
    let done = tokio::time::timeout(Duration::from_secs(60), shutdown).await;
    let result = done.expect("the shutdown never completed").expect("the shutdown task");
    assert!(result.is_ok(), "{result:?}");
    for n in pair {
        n.shutdown().await.unwrap();
    }
}
