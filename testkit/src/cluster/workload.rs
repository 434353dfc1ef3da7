//! Clients that drive the key-value machine with unique written values and record every
//! invocation and completion (ok, failed, or unknown) for the linearizability check.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftkit::{LogStore, Network, NodeId, Raft, WriteError};

use super::faulty::FaultyNetwork;
use crate::kv::{KvCommand, KvOp, TestKv};
use crate::linearizability::Operation;
use crate::rng::Rng;

/// The handle type of a node in the cluster suite.
pub type Node<N, L> = Raft<FaultyNetwork<N>, L, TestKv>;

/// The running nodes, shared between the runner, the nemesis and the clients.
pub type NodeTable<N, L> = Arc<Mutex<BTreeMap<NodeId, Node<N, L>>>>;

/// Outcome counts of a workload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCounts {
    /// Operations that completed with an answer.
    pub ok: usize,
    /// Operations that definitely did not happen (not the leader, or overwritten).
    pub failed: usize,
    /// Operations whose outcome is unknown (timeout, node stopped).
    pub unknown: usize,
}

/// What the clients share.
pub struct Workload {
    /// The recorded history (definite failures are left out: they did not happen).
    pub history: Mutex<Vec<Operation>>,
    /// Outcome counts.
    pub counts: Mutex<OpCounts>,
    /// Set to stop the clients.
    pub stop: AtomicBool,
    epoch: tokio::time::Instant,
}

impl Workload {
    /// A workload whose times are measured from now.
    pub fn new() -> Workload {
        Workload {
            history: Mutex::new(Vec::new()),
            counts: Mutex::new(OpCounts::default()),
            stop: AtomicBool::new(false),
            epoch: tokio::time::Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        tokio::time::Instant::now().saturating_duration_since(self.epoch).as_nanos() as u64
    }

    fn count(&self, f: impl FnOnce(&mut OpCounts)) {
        f(&mut self.counts.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

impl Default for Workload {
    fn default() -> Self {
        Workload::new()
    }
}

/// Settings of one client.
#[derive(Clone, Copy, Debug)]
pub struct ClientSettings {
    /// The client's id.
    pub id: u64,
    /// How many keys the workload spreads over.
    pub keys: u64,
    /// How long to wait for an answer before recording the outcome as unknown.
    pub op_timeout: Duration,
    /// Pause between operations, at most.
    pub think: Duration,
}

/// Runs one client until the workload is stopped.
pub async fn client<N: Network, L: LogStore + Clone>(
    settings: ClientSettings,
    nodes: NodeTable<N, L>,
    workload: Arc<Workload>,
    mut rng: Rng,
) {
    let mut hint: Option<NodeId> = None;
    let mut written = 0u64;
    let mut last_seen: BTreeMap<String, Option<String>> = BTreeMap::new();
    while !workload.stop.load(Ordering::Relaxed) {
        let key = format!("k{}", rng.below(settings.keys));
        let op = match rng.below(20) {
            0..=9 => {
                written += 1;
                KvOp::Put(format!("c{}-{written}", settings.id))
            }
            10..=16 => KvOp::Get,
            _ => {
                written += 1;
                let expected = last_seen.get(&key).cloned().flatten();
                KvOp::Cas { expected, new: format!("c{}-{written}", settings.id) }
            }
        };
        let node = {
            let table = nodes.lock().unwrap_or_else(|p| p.into_inner());
            let ids: Vec<NodeId> = table.keys().copied().collect();
            let target = hint
                .filter(|h| table.contains_key(h))
                .or_else(|| (!ids.is_empty()).then(|| *rng.pick(&ids)));
            target.and_then(|t| table.get(&t).cloned().map(|n| (t, n)))
        };
        let Some((target, node)) = node else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let cmd = KvCommand { key: key.clone(), op: op.clone() };
        let invoked = workload.now();
        let result = tokio::time::timeout(settings.op_timeout, node.client_write(cmd)).await;
        let completed = workload.now();
        let record = |output: Option<crate::kv::KvOutput>, done: Option<u64>| {
            workload.history.lock().unwrap_or_else(|p| p.into_inner()).push(Operation {
                client: settings.id,
                key: key.clone(),
                input: op.to_input(),
                output: output.map(|o| o.to_output()),
                invoked,
                completed: done,
            });
        };
        match result {
            Ok(Ok(out)) => {
                match &out {
                    crate::kv::KvOutput::Get { value } => {
                        last_seen.insert(key.clone(), value.clone());
                    }
                    crate::kv::KvOutput::Cas { current, .. } => {
                        last_seen.insert(key.clone(), current.clone());
                    }
                    crate::kv::KvOutput::Put { .. } => {}
                }
                record(Some(out), Some(completed));
                workload.count(|c| c.ok += 1);
                hint = Some(target);
            }
            Ok(Err(WriteError::NotLeader { leader })) => {
                // Definitely not appended: leave it out of the history.
                workload.count(|c| c.failed += 1);
                hint = leader.filter(|l| *l != target);
                if hint.is_none() {
                    tokio::time::sleep(Duration::from_millis(10 + rng.below(40))).await;
                }
            }
            Ok(Err(WriteError::Overwritten { .. })) => {
                // Definitely never applied.
                workload.count(|c| c.failed += 1);
                hint = None;
            }
            Ok(Err(_)) | Err(_) => {
                // Shutdown, failure or timeout: it may or may not have happened.
                record(None, None);
                workload.count(|c| c.unknown += 1);
                hint = None;
            }
        }
        let think = rng.duration(Duration::ZERO, settings.think.max(Duration::from_millis(1)));
        tokio::time::sleep(think).await;
    }
}
