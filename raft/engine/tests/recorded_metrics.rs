//! Guards the metrics a node records through the `metrics` facade (listed in the crate docs):
//! a test recorder, installed before any node starts, collects them, and a scenario on a paused
//! clock (writes, a follower that falls behind and comes back through a snapshot, a leader whose
//! log store fails) checks that each moved as it should. One test per binary: the recorder is
//! process-wide.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::Cluster;
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use raftkit::{
    Entry, LogId, LogIndex, LogState, LogStore, LogWrite, NodeId, NodeState, Raft, Role,
    SnapshotStore, StorageError,
};
use raftkit_mem::{KvCommand, MemKv, MemLogStore, MemRouter};

/// One registered metric: a counter's count, a gauge's value (as f64 bits) or a histogram's
/// samples.
#[derive(Default)]
struct Slot {
    value: AtomicU64,
    samples: Mutex<Vec<f64>>,
}

impl CounterFn for Slot {
    fn increment(&self, value: u64) {
        self.value.fetch_add(value, Ordering::Relaxed);
    }

    fn absolute(&self, value: u64) {
        self.value.fetch_max(value, Ordering::Relaxed);
    }
}

impl GaugeFn for Slot {
    fn increment(&self, value: f64) {
        let _ = self.value.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some((f64::from_bits(v) + value).to_bits())
        });
    }

    fn decrement(&self, value: f64) {
        GaugeFn::increment(self, -value);
    }

    fn set(&self, value: f64) {
        self.value.store(value.to_bits(), Ordering::Relaxed);
    }
}

impl HistogramFn for Slot {
    fn record(&self, value: f64) {
        self.samples.lock().unwrap().push(value);
    }
}

/// Every metric registered, by `name{label=value,…}`. Registering a key twice gives the same
/// slot, as real recorders do.
static SLOTS: Mutex<BTreeMap<String, Arc<Slot>>> = Mutex::new(BTreeMap::new());

struct TestRecorder;

fn slot(key: &Key) -> Arc<Slot> {
    let labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
    let name = format!("{}{{{}}}", key.name(), labels.join(","));
    SLOTS.lock().unwrap().entry(name).or_default().clone()
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(slot(key))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(slot(key))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(slot(key))
    }
}

fn get(name: &str) -> Arc<Slot> {
    let slots = SLOTS.lock().unwrap();
    match slots.get(name) {
        Some(s) => s.clone(),
        None => panic!("{name} was never registered; registered: {:?}", slots.keys()),
    }
}

fn counter(name: &str) -> u64 {
    get(name).value.load(Ordering::Relaxed)
}

fn gauge(name: &str) -> f64 {
    f64::from_bits(get(name).value.load(Ordering::Relaxed))
}

fn samples(name: &str) -> Vec<f64> {
    get(name).samples.lock().unwrap().clone()
}

#[tokio::test(start_paused = true)]
async fn a_node_records_its_metrics_through_the_facade() {
    metrics::set_global_recorder(TestRecorder).expect("the only recorder of this binary");
    let c = Cluster::start_with(3, 21, |cfg| {
        cfg.snapshot_every = 10;
        cfg.snapshot_keep = 0;
    })
    .await;
    let leader = c.leader().await;
    let followers: Vec<NodeId> = c.members.iter().copied().filter(|id| *id != leader).collect();
    for i in 0..20 {
        c.write(KvCommand::put(format!("k{i}"), "v")).await;
    }
    c.converge().await;

    let (l, term) = (leader.0, c.node(leader).unwrap().metrics().borrow().term);
    assert!(counter(&format!("raftkit_proposals_total{{node={l}}}")) >= 20);
    assert!(counter(&format!("raftkit_elections_total{{node={l}}}")) >= 1);
    assert!(counter(&format!("raftkit_elections_won_total{{node={l}}}")) >= 1);
    assert_eq!(gauge(&format!("raftkit_is_leader{{node={l}}}")), 1.0);
    assert_eq!(gauge(&format!("raftkit_term{{node={l}}}")), term.0 as f64);
    for id in &c.members {
        let n = id.0;
        let applied = c.node(*id).unwrap().metrics().borrow().applied.0;
        // Every entry since the start (the leader's no-op included) was committed and applied.
        assert_eq!(counter(&format!("raftkit_commits_total{{node={n}}}")), applied, "{id}");
        assert_eq!(counter(&format!("raftkit_applied_total{{node={n}}}")), applied, "{id}");
        let sizes = samples(&format!("raftkit_log_write_entries{{node={n}}}"));
        assert!(sizes.iter().sum::<f64>() >= 20.0, "{id} wrote {sizes:?}");
        let latencies = samples(&format!("raftkit_log_write_seconds{{node={n}}}"));
        assert_eq!(latencies.len(), sizes.len(), "{id}: one latency per write");
    }
    for f in &followers {
        let labels = format!("{{node={l},peer={}}}", f.0);
        assert!(counter(&format!("raftkit_sent_messages_total{labels}")) >= 20);
        // At least the 20 commands' payloads went to each follower.
        assert!(counter(&format!("raftkit_sent_bytes_total{labels}")) > 20 * 10);
    }

    // A follower that is down falls behind: the leader reports its lag.
    let behind = followers[0];
    let lag = format!("raftkit_replication_lag{{node={l},peer={}}}", behind.0);
    c.kill(behind).await;
    for i in 20..50 {
        c.write(KvCommand::put(format!("k{i}"), "v")).await;
    }
    assert!(gauge(&lag) >= 30.0, "lag {} after 30 writes the follower missed", gauge(&lag));
    // Back, it catches up through a snapshot (the leader purged what it missed).
    c.restart_keeping_state(behind).await;
    c.converge().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(gauge(&lag), 0.0, "the follower caught up");
    let sent = format!("raftkit_snapshots_sent_total{{node={l},peer={}}}", behind.0);
    assert!(counter(&sent) >= 1);
    assert!(counter(&format!("raftkit_snapshots_received_total{{node={}}}", behind.0)) >= 1);
    assert_eq!(counter(&format!("raftkit_step_downs_total{{node={l}}}")), 0);

    // Cut off, the leader appends a command no follower gets, then steps down: it counts the
    // step-down and no longer reports a lag it does not know.
    c.router.isolate(leader);
    let old = c.node(leader).unwrap();
    let pending = tokio::spawn(async move { old.client_write(KvCommand::put("cut", "off")).await });
    let old = c.node(leader).unwrap();
    let lagging = format!("raftkit_replication_lag{{node={l},peer={}}}", followers[1].0);
    let appended = old
        .wait_for(Duration::from_secs(5), |m| {
            m.replication.values().any(|i| i.0 + 1 == m.last_log.index.0)
        })
        .await;
    assert!(appended.is_some() && gauge(&lagging) >= 1.0, "lag {}", gauge(&lagging));
    let stepped = old.wait_for(Duration::from_secs(30), |m| m.role != raftkit::Role::Leader).await;
    assert!(stepped.is_some(), "the isolated leader did not step down");
    assert_eq!(counter(&format!("raftkit_step_downs_total{{node={l}}}")), 1);
    assert_eq!(gauge(&format!("raftkit_is_leader{{node={l}}}")), 0.0);
    assert_eq!(gauge(&lagging), 0.0, "a deposed leader still reports a lag");
    pending.abort();
    c.shutdown().await;

    // A lone leader whose log store fails stops, and stops counting as a leader.
    let store = FailingStore::default();
    let id = NodeId(9);
    let cfg = common::config(id, &[id], 9);
    let node = Raft::start(cfg, MemRouter::new(9).network(id), store.clone(), MemKv::new())
        .await
        .expect("start");
    node.wait_for(Duration::from_secs(5), |m| m.role == Role::Leader).await.expect("leader");
    assert_eq!(gauge("raftkit_is_leader{node=9}"), 1.0);
    store.fail.store(true, Ordering::SeqCst);
    assert!(node.client_write(KvCommand::put("a", "1")).await.is_err());
    let failed = node.wait_for(Duration::from_secs(5), |m| matches!(m.state, NodeState::Failed(_)));
    assert!(failed.await.is_some(), "the node did not fail");
    assert_eq!(gauge("raftkit_is_leader{node=9}"), 0.0, "a failed node still counts as leader");
    assert_eq!(counter("raftkit_step_downs_total{node=9}"), 1);
}

/// An in-memory log store whose writes fail once `fail` is set.
#[derive(Clone, Default)]
struct FailingStore {
    inner: MemLogStore,
    fail: Arc<AtomicBool>,
}

#[async_trait]
impl LogStore for FailingStore {
    async fn load(&self) -> Result<LogState, StorageError> {
        self.inner.load().await
    }
    async fn write(&self, w: LogWrite) -> Result<(), StorageError> {
        if self.fail.load(Ordering::SeqCst) {
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
