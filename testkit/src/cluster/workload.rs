//! Clients that drive the key-value machine with unique written values and record every
//! invocation and completion (ok, failed, or unknown) for the linearizability check.
//!
//! Writes go to the node the client last succeeded with (or a random one, a fifth of the time
//! and after failures): writes on followers are forwarded to the leader. Reads go through the
//! log (a `Get` command) or through `client_read` with every policy: `Linearizable` and `Lease`
//! on the leader, `Follower` on any node, and `Stale` on any node. Every read but a stale one
//! is recorded and checked; a stale read may legitimately be old, so its answer is left out of
//! the history (it still runs, so the path is exercised). A read that fails changed nothing,
//! so failed and timed-out reads are left out too.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftkit::{LogStore, Network, NodeId, Raft, ReadError, ReadPolicy, WriteError};

use super::faulty::FaultyNetwork;
use crate::kv::{KvCommand, KvOp, KvQuery, TestKv};
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
    /// Reads answered without the log, by policy: linearizable, lease, follower, stale.
    pub reads: [usize; 4],
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
        // Reads: through the log a fifth of the time, otherwise through a read policy.
        let policy = (op == KvOp::Get).then(|| match rng.below(20) {
            0..=3 => None,
            4..=8 => Some(ReadPolicy::Linearizable),
            9..=12 => Some(ReadPolicy::Lease),
            13..=17 => Some(ReadPolicy::Follower),
            _ => Some(ReadPolicy::Stale),
        });
        let policy = policy.flatten();
        let anywhere = matches!(policy, Some(ReadPolicy::Follower | ReadPolicy::Stale))
            || (policy.is_none() && rng.chance(0.2));
        let node = {
            let table = nodes.lock().unwrap_or_else(|p| p.into_inner());
            let ids: Vec<NodeId> = table.keys().copied().collect();
            let target = hint
                .filter(|h| table.contains_key(h) && !anywhere)
                .or_else(|| (!ids.is_empty()).then(|| *rng.pick(&ids)));
            target.and_then(|t| table.get(&t).cloned().map(|n| (t, n)))
        };
        let Some((target, node)) = node else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        if let Some(policy) = policy {
            let invoked = workload.now();
            let query = KvQuery::get(key.clone());
            let result = tokio::time::timeout(settings.op_timeout, node.client_read(query, policy));
            let result = result.await;
            let completed = workload.now();
            match result {
                Ok(Ok(out)) => {
                    if let crate::kv::KvOutput::Get { value } = &out {
                        last_seen.insert(key.clone(), value.clone());
                    }
                    let slot = match policy {
                        ReadPolicy::Linearizable => 0,
                        ReadPolicy::Lease => 1,
                        ReadPolicy::Follower => 2,
                        _ => 3,
                    };
                    workload.count(|c| {
                        c.ok += 1;
                        c.reads[slot] += 1;
                    });
                    // A stale read may be old by design: not part of the checked history.
                    if policy != ReadPolicy::Stale {
                        workload.history.lock().unwrap_or_else(|p| p.into_inner()).push(
                            Operation {
                                client: settings.id,
                                key: key.clone(),
                                input: op.to_input(),
                                output: Some(out.to_output()),
                                invoked,
                                completed: Some(completed),
                            },
                        );
                    }
                    if !matches!(policy, ReadPolicy::Follower | ReadPolicy::Stale) {
                        hint = Some(target);
                    }
                }
                Ok(Err(e)) => {
                    // A read changes nothing: a failed one is simply not part of the history.
                    workload.count(|c| c.failed += 1);
                    hint = match e {
                        ReadError::NotLeader { leader } => leader.filter(|l| *l != target),
                        _ => None,
                    };
                    if hint.is_none() {
                        tokio::time::sleep(Duration::from_millis(10 + rng.below(40))).await;
                    }
                }
                Err(_) => {
                    workload.count(|c| c.failed += 1);
                    hint = None;
                }
            }
            let think = rng.duration(Duration::ZERO, settings.think.max(Duration::from_millis(1)));
            tokio::time::sleep(think).await;
            continue;
        }
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
            Ok(Err(WriteError::Overwritten { .. } | WriteError::TransferInProgress { .. })) => {
                // Definitely never applied.
                workload.count(|c| c.failed += 1);
                hint = None;
                tokio::time::sleep(Duration::from_millis(5 + rng.below(20))).await;
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
