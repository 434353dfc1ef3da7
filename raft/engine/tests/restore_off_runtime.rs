//! `StateMachine::restore` reads its snapshot through a synchronous `Read` (a file, typically),
//! so the engine runs it where blocking is allowed, not on a runtime worker. On a
//! current-thread runtime a restore run inline would stop every other task for its whole
//! length: here the snapshot's reader waits for a signal that another task sends, which only
//! arrives if the runtime thread is free while the restore reads. Inline, the signal never
//! comes, the reader gives up after a deadlock guard, and the restore fails.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use raftkit::{
    ApplyEntry, Config, LogId, NodeId, Raft, SnapshotMeta, SnapshotSource, StateMachine,
    StorageError,
};
use raftkit_mem::{KvCommand, KvOutput, KvQuery, MemKv, MemLogStore, MemRouter};

/// How long the reader waits for the other task before declaring the runtime held. Only a
/// deadlock guard: with the fix the signal comes at once.
const DEADLOCK_GUARD: Duration = Duration::from_secs(10);

/// A `MemKv` whose restore reads through [`Rendezvous`].
struct GatedKv {
    inner: MemKv,
    started: Option<tokio::sync::oneshot::Sender<()>>,
    go: Option<std::sync::mpsc::Receiver<()>>,
    held: Arc<AtomicBool>,
    ran: Arc<AtomicBool>,
}

/// Before the first byte: tells the test the restore has started, then blocks this thread until
/// the test's other task answers.
struct Rendezvous {
    data: Box<dyn Read + Send>,
    started: Option<tokio::sync::oneshot::Sender<()>>,
    go: Option<std::sync::mpsc::Receiver<()>>,
    held: Arc<AtomicBool>,
    ran: Arc<AtomicBool>,
}

impl Read for Rendezvous {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let (Some(started), Some(go)) = (self.started.take(), self.go.take()) {
            let _ = started.send(());
            if go.recv_timeout(DEADLOCK_GUARD).is_err() {
                self.held.store(true, Ordering::SeqCst);
                return Err(std::io::Error::other("the runtime thread was held by the restore"));
            }
            self.ran.store(true, Ordering::SeqCst);
        }
        self.data.read(buf)
    }
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
        let gated = Rendezvous {
            data,
            started: self.started.take(),
            go: self.go.take(),
            held: self.held.clone(),
            ran: self.ran.clone(),
        };
        self.inner.restore(meta, Box::new(gated)).await
    }
}

fn config() -> Config {
    let mut c = Config::new(NodeId(1), [NodeId(1)]);
    c.snapshot_keep = 0;
    c
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_restore_at_startup_does_not_hold_the_runtime_thread() {
    let router = MemRouter::new(1);
    let log = MemLogStore::new();
    let kv = MemKv::new();
    let raft = Raft::start(config(), router.network(NodeId(1)), log.clone(), kv).await.unwrap();
    raft.wait_for(Duration::from_secs(10), |m| m.leader == Some(NodeId(1))).await.unwrap();
    raft.client_write(KvCommand::put("k", "v")).await.unwrap();
    assert!(raft.trigger_snapshot().await.unwrap());
    raft.wait_for(Duration::from_secs(10), |m| m.snapshot.is_some()).await.unwrap();
    raft.shutdown().await.unwrap();
    drop(raft);

    // Restart on the same log with an empty state machine: the engine restores the snapshot.
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel();
    let (held, ran) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let inner = MemKv::new();
    let gated = GatedKv {
        inner: inner.clone(),
        started: Some(started_tx),
        go: Some(go_rx),
        held: held.clone(),
        ran: ran.clone(),
    };
    let answer = tokio::spawn(async move {
        if started_rx.await.is_ok() {
            let _ = go_tx.send(());
        }
    });
    let raft = Raft::start(config(), router.network(NodeId(1)), log, gated).await;
    assert!(!held.load(Ordering::SeqCst), "the restore held the only runtime thread");
    let raft = raft.expect("the restart restores the snapshot");
    assert!(ran.load(Ordering::SeqCst), "the engine did not restore the snapshot");
    assert_eq!(inner.get_local("k").as_deref(), Some("v"), "the snapshot was not restored");
    raft.shutdown().await.unwrap();
    answer.await.unwrap();
}
