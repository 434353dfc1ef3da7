//! Directed scenarios for reads outside the log, each a fixed script on a real cluster whose
//! client history is checked for linearizability:
//!
//! - [`ClusterSuite::run_lease_drift`]: lease reads under clock drift. The leader's clock runs
//!   slow and the followers' fast, the leader is cut off, the followers elect a new leader that
//!   takes a write, and a client keeps asking the old leader for lease reads. Within the
//!   configured `clock_drift_bound` the old lease ends before a new leader can be elected, so
//!   the history stays linearizable; beyond it, the old leader answers with the old value after
//!   the new one was acknowledged, and the check must say so (it is not vacuous).
//! - [`ClusterSuite::run_new_leader_read`]: a leader elected (by a transfer) while its commit
//!   index lags a write an earlier leader acknowledged, whose no-op cannot commit: it must not
//!   serve a read before it does.
//! - [`ClusterSuite::run_late_round_answers`]: answers to a leader's earlier heartbeat rounds
//!   arrive late, after the leader was deposed and a read was asked of it: they must not
//!   confirm that read.

use std::collections::BTreeMap;
use std::time::Duration;

use raftkit::{Config, NodeId, ReadPolicy, Role};

use super::nemesis::cut_between;
use super::run::Run;
use super::{ClusterSuite, RunReport};
use crate::harness::{LogStoreHarness, NetworkHarness};
use crate::kv::{KvCommand, KvOp, KvOutput, KvQuery};
use crate::linearizability::Operation;

/// How far the clocks drift in [`ClusterSuite::run_lease_drift`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drift {
    /// Leader at `1 - 0.45 f`, followers at `1 + 0.45 f` times real time, where
    /// `f = clock_drift_bound / election_timeout_min`: the two drift apart by less than the
    /// bound over an election timeout.
    Within,
    /// The leader's clock at 0.3 times real time: far beyond the bound.
    Beyond,
}

/// The scenario's timing: a wide drift bound, so the clocks may drift a lot within it, and a
/// narrow election timeout range, so the followers elect as early as they may.
fn lease_config(id: NodeId, ids: &[NodeId], seed: u64) -> Config {
    let mut c = Config::new(id, ids.iter().copied());
    c.seed = seed;
    c.heartbeat_interval = Duration::from_millis(50);
    c.election_timeout_min = Duration::from_millis(500);
    c.election_timeout_max = Duration::from_millis(550);
    c.clock_drift_bound = Duration::from_millis(200);
    c.pre_vote = true;
    c.check_quorum = true;
    c
}

impl<NH: NetworkHarness, LH: LogStoreHarness> ClusterSuite<NH, LH> {
    /// Runs the lease-drift scenario once (3 nodes) with `seed`. The suite's `configure` hook
    /// applies after the scenario's own timing (the mutant tests arm a mutant through it).
    pub fn run_lease_drift(&self, drift: Drift, seed: u64) -> RunReport {
        self.run_directed_read(
            &format!("lease under clock drift ({drift:?})"),
            seed,
            |_| {},
            |run, deadline| {
                Box::pin(async move {
                    let c = &run.configs[&run.ids[0]];
                    let f =
                        c.clock_drift_bound.as_secs_f64() / c.election_timeout_min.as_secs_f64();
                    lease_script(run, drift, f, deadline).await
                })
            },
        )
    }

    /// Runs the new-leader-read scenario once (3 nodes) with `seed`.
    pub fn run_new_leader_read(&self, seed: u64) -> RunReport {
        self.run_directed_read(
            "read on a new leader before its no-op commits",
            seed,
            |_| {},
            |run, deadline| Box::pin(new_leader_script(run, deadline)),
        )
    }

    /// Runs the late-round-answers scenario once (3 nodes, CheckQuorum off so the deposed
    /// leader does not step down by itself) with `seed`.
    pub fn run_late_round_answers(&self, seed: u64) -> RunReport {
        self.run_directed_read(
            "late answers to earlier rounds",
            seed,
            |c| c.check_quorum = false,
            |run, deadline| Box::pin(late_answers_script(run, deadline)),
        )
    }

    fn run_directed_read(
        &self,
        name: &str,
        seed: u64,
        tweak: fn(&mut Config),
        script: impl for<'a> FnOnce(
            &'a mut Run<NH, LH>,
            tokio::time::Instant,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Vec<Operation>> + 'a>,
        >,
    ) -> RunReport {
        let rt = self.runtime();
        rt.block_on(async {
            let ids: Vec<NodeId> = (1..=3).map(NodeId).collect();
            let configs = ids
                .iter()
                .map(|id| {
                    let mut c = lease_config(*id, &ids, seed);
                    tweak(&mut c);
                    if let Some(f) = &self.opts.configure {
                        f(&mut c);
                    }
                    (*id, c)
                })
                .collect::<BTreeMap<_, _>>();
            let mut run = Run::start(
                self.net.clone(),
                self.logs.clone(),
                configs,
                seed,
                seed,
                self.opts.liveness_bound,
            )
            .await;
            run.checker.note(format!("{name} (seed {seed})"));
            let deadline = tokio::time::Instant::now() + self.opts.liveness_bound * 4;
            let history = script(&mut run, deadline).await;
            run.faults.set_drop_filter(None);
            run.faults.heal();
            run.check_history(&history);
            run.finish_directed(seed, 3, self.logs.crash_model()).await
        })
    }
}

/// A client's record of one operation on `key`, timed from `epoch`.
struct Recorder {
    epoch: tokio::time::Instant,
    key: String,
    history: Vec<Operation>,
    next_client: u64,
}

impl Recorder {
    fn new(key: &str) -> Recorder {
        Recorder {
            epoch: tokio::time::Instant::now(),
            key: key.to_string(),
            history: Vec::new(),
            next_client: 0,
        }
    }

    fn at(&self) -> u64 {
        tokio::time::Instant::now().saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// Records an operation by a client of its own (each is one call).
    fn push(&mut self, op: KvOp, invoked: u64, out: Option<KvOutput>) {
        self.next_client += 1;
        let completed = out.as_ref().map(|_| self.at());
        self.history.push(Operation {
            client: self.next_client,
            key: self.key.clone(),
            input: op.to_input(),
            output: out.map(|o| o.to_output()),
            invoked,
            completed,
        });
    }

    fn put(&self, value: &str) -> KvCommand {
        KvCommand { key: self.key.clone(), op: KvOp::Put(value.into()) }
    }

    /// Writes the old value through a leader; returns that leader (`None`, with a violation, if
    /// no leader took the write).
    async fn first_write<NH: NetworkHarness, LH: LogStoreHarness>(
        &mut self,
        run: &Run<NH, LH>,
        deadline: tokio::time::Instant,
    ) -> Option<(NodeId, super::run::RunNode<NH, LH>)> {
        let invoked = self.at();
        let out = run.write(&self.put("old"), deadline).await;
        self.push(KvOp::Put("old".into()), invoked, out.clone());
        let leader = out.and_then(|_| run.leader());
        if leader.is_none() {
            run.checker.violation("liveness: no leader accepted the first write");
        }
        leader
    }

    /// Asks `node` for linearizable reads every few milliseconds (each given up after `patience`)
    /// until `until`, recording those answered.
    async fn read_until<N: raftkit::Network, L: raftkit::LogStore>(
        &mut self,
        node: &raftkit::Raft<N, L, crate::kv::TestKv>,
        policy: ReadPolicy,
        patience: Duration,
        until: tokio::time::Instant,
    ) {
        while tokio::time::Instant::now() < until {
            let invoked = self.at();
            let read = node.client_read(KvQuery::get(self.key.clone()), policy);
            if let Ok(Ok(out)) = tokio::time::timeout(patience, read).await {
                self.push(KvOp::Get, invoked, Some(out));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A leader elected while its commit index lags an acknowledged write, whose no-op cannot
/// commit (its appends are dropped): reads asked of it must wait, never answer the old value.
async fn new_leader_script<NH: NetworkHarness, LH: LogStoreHarness>(
    run: &mut Run<NH, LH>,
    deadline: tokio::time::Instant,
) -> Vec<Operation> {
    let mut rec = Recorder::new("noop");
    let Some((old, old_node)) = rec.first_write(run, deadline).await else {
        return rec.history;
    };
    let target = *run.ids.iter().find(|n| **n != old).expect("three nodes");
    let next = old_node.metrics().borrow().last_log.index.next();
    // The target receives the next entry but never hears that it is committed; once it leads,
    // its own appends (the no-op first) are dropped, so nothing of its term commits.
    run.faults.set_drop_filter(Some(std::sync::Arc::new(move |from, to, m: &raftkit::Message| {
        let carries_commit = match &m.body {
            raftkit::MessageBody::Heartbeat(h) => h.commit >= next,
            raftkit::MessageBody::AppendEntries(a) => a.leader_commit >= next,
            _ => false,
        };
        (from == old && to == target && carries_commit)
            || (from == target && matches!(m.body, raftkit::MessageBody::AppendEntries(_)))
    })));
    let invoked = rec.at();
    let w = tokio::time::timeout(Duration::from_secs(2), old_node.client_write(rec.put("new")));
    let out = w.await.ok().and_then(Result::ok);
    rec.push(KvOp::Put("new".into()), invoked, out.clone());
    if out.is_none() {
        run.checker.violation("liveness: the leader did not acknowledge the second write");
        return rec.history;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let moved =
        tokio::time::timeout(Duration::from_secs(3), old_node.transfer_leadership(Some(target)))
            .await;
    run.checker.note(format!("transfer from {old} to {target}: {moved:?}"));
    let Some(new_node) = run.node(target) else { return rec.history };
    if new_node.metrics().borrow().role != Role::Leader {
        run.checker.note("the target did not become leader; nothing to check");
        return rec.history;
    }
    let until = tokio::time::Instant::now() + Duration::from_millis(600);
    rec.read_until(&new_node, ReadPolicy::Linearizable, Duration::from_millis(40), until).await;
    rec.history
}

/// Answers to a leader's earlier heartbeat rounds arrive long after it was deposed and after a
/// read was asked of it: they must not confirm the read.
async fn late_answers_script<NH: NetworkHarness, LH: LogStoreHarness>(
    run: &mut Run<NH, LH>,
    deadline: tokio::time::Instant,
) -> Vec<Operation> {
    let mut rec = Recorder::new("rounds");
    let Some((old, old_node)) = rec.first_write(run, deadline).await else {
        return rec.history;
    };
    let followers: Vec<NodeId> = run.ids.iter().copied().filter(|n| *n != old).collect();
    // Everything the followers send the leader from now on takes 1.5 s; a moment later the
    // leader's messages stop reaching them. Answers to the heartbeats in between are late.
    let late = Duration::from_millis(1500);
    for f in &followers {
        run.faults.slow_link(*f, old, late);
    }
    let t0 = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(120)).await;
    for f in &followers {
        run.faults.block(old, *f);
    }
    run.checker
        .note(format!("answers to {old} delayed by {late:?}; {old} cut off from {followers:?}"));
    // The followers elect a new leader, which takes the new value.
    let mut written = false;
    while !written && tokio::time::Instant::now() < t0 + late - Duration::from_millis(200) {
        let leader = followers
            .iter()
            .copied()
            .find(|id| run.node(*id).is_some_and(|n| n.metrics().borrow().role == Role::Leader));
        if let Some(l) = leader.and_then(|l| run.node(l)) {
            let invoked = rec.at();
            let w =
                tokio::time::timeout(Duration::from_millis(300), l.client_write(rec.put("new")));
            match w.await {
                Ok(Ok(out)) => {
                    rec.push(KvOp::Put("new".into()), invoked, Some(out));
                    written = true;
                }
                _ => rec.push(KvOp::Put("new".into()), invoked, None),
            }
        } else {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    if !written {
        run.checker.note("no new leader took the write before the late answers; nothing to check");
        return rec.history;
    }
    // Reads asked of the deposed leader while the late answers arrive.
    let until = t0 + late + Duration::from_millis(300);
    rec.read_until(&old_node, ReadPolicy::Linearizable, Duration::from_millis(30), until).await;
    rec.history
}

/// The script; returns the clients' history of the key it writes and reads.
async fn lease_script<NH: NetworkHarness, LH: LogStoreHarness>(
    run: &mut Run<NH, LH>,
    drift: Drift,
    f: f64,
    deadline: tokio::time::Instant,
) -> Vec<Operation> {
    let epoch = tokio::time::Instant::now();
    let at = || tokio::time::Instant::now().saturating_duration_since(epoch).as_nanos() as u64;
    let mut history = Vec::new();
    let key = "lease".to_string();
    let put = |value: &str| KvCommand { key: key.clone(), op: KvOp::Put(value.into()) };

    // The old value, through the first leader.
    let invoked = at();
    let Some(out) = run.write(&put("old"), deadline).await else {
        run.checker.violation("liveness: no leader accepted the first write");
        return history;
    };
    history.push(Operation {
        client: 1,
        key: key.clone(),
        input: KvOp::Put("old".into()).to_input(),
        output: Some(out.to_output()),
        invoked,
        completed: Some(at()),
    });
    let Some((old, old_node)) = run.leader() else { return history };
    let followers: Vec<NodeId> = run.ids.iter().copied().filter(|n| *n != old).collect();
    let (leader_rate, follower_rate) = match drift {
        Drift::Within => (1.0 - 0.45 * f, 1.0 + 0.45 * f),
        Drift::Beyond => (0.3, 1.0),
    };
    old_node.set_clock_rate(leader_rate).await;
    for id in &followers {
        if let Some(n) = run.node(*id) {
            n.set_clock_rate(follower_rate).await;
        }
    }
    run.checker.note(format!(
        "clocks: leader {old} at {leader_rate:.3}x, followers {followers:?} at {follower_rate:.3}x"
    ));
    // Let a few heartbeat rounds be confirmed under the drifting clocks, with a lease read.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = old_node.client_read(KvQuery::get(key.clone()), ReadPolicy::Lease).await;

    run.faults.set_blocked(cut_between(&[old], &followers));
    run.checker.note(format!("cut {old} off from {followers:?}"));

    // The followers elect a new leader and write the new value; meanwhile, and after, a
    // client keeps asking the old leader for lease reads.
    let mut new_written = false;
    let mut client = 2;
    while tokio::time::Instant::now() < deadline {
        if !new_written {
            let new_leader = followers.iter().copied().find(|id| {
                run.node(*id).is_some_and(|n| n.metrics().borrow().role == Role::Leader)
            });
            if let Some(l) = new_leader.and_then(|l| run.node(l)) {
                let invoked = at();
                let write = l.client_write(put("new"));
                match tokio::time::timeout(Duration::from_secs(2), write).await {
                    Ok(Ok(out)) => {
                        history.push(Operation {
                            client: 1,
                            key: key.clone(),
                            input: KvOp::Put("new".into()).to_input(),
                            output: Some(out.to_output()),
                            invoked,
                            completed: Some(at()),
                        });
                        new_written = true;
                        run.checker.note("the new leader acknowledged the new value");
                    }
                    // Outcome unknown: recorded as such.
                    _ => history.push(Operation {
                        client: 1,
                        key: key.clone(),
                        input: KvOp::Put("new".into()).to_input(),
                        output: None,
                        invoked,
                        completed: None,
                    }),
                }
            }
        }
        if old_node.metrics().borrow().role != Role::Leader && new_written {
            break;
        }
        let invoked = at();
        let read = old_node.client_read(KvQuery::get(key.clone()), ReadPolicy::Lease);
        if let Ok(Ok(out)) = tokio::time::timeout(Duration::from_millis(20), read).await {
            if matches!(out, KvOutput::Get { .. }) {
                client += 1;
                history.push(Operation {
                    client,
                    key: key.clone(),
                    input: KvOp::Get.to_input(),
                    output: Some(out.to_output()),
                    invoked,
                    completed: Some(at()),
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if !new_written {
        run.checker.violation("liveness: the followers never elected a leader that took a write");
    }
    run.faults.heal();
    for id in &run.ids.clone() {
        if let Some(n) = run.node(*id) {
            n.set_clock_rate(1.0).await;
        }
    }
    history
}
