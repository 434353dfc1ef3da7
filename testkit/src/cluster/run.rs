//! [`Run`]: one cluster being exercised — its nodes, their stores, the checker and the faults —
//! with the operations the randomized suite and the scenarios share: start, crash (losing what
//! was not durable) and restart nodes, fail and replace their disks, check the stores' logs,
//! wait for a leader and for the nodes to converge.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftkit::{
    Config, Fatal, LogStore, NodeId, NodeState, Raft, RaftMetrics, Role, StorageErrorKind,
    WriteError,
};

use super::checker::{Checker, StoreRead};
use super::faulty::{Faults, FaultyNetwork};
use super::tracked::Tracked;
use super::workload::{Node, NodeTable};
use crate::harness::{LogStoreHarness, NetworkHarness};
use crate::kv::{KvCommand, KvOp, KvOutput, TestKv};
use crate::rng::Rng;

/// A running node of a [`Run`]: on the harness's store, wrapped in a [`Tracked`].
pub(crate) type RunNode<NH, LH> =
    Node<<NH as NetworkHarness>::Network, Tracked<<LH as LogStoreHarness>::Store>>;

/// Which durable view the checker used for a node's store.
pub(crate) const HARNESS_VIEW: &str = "the harness's (LogStoreHarness::durable)";
/// See [`HARNESS_VIEW`].
pub(crate) const TRACKED_VIEW: &str = "tracked (what each store acknowledged)";

/// A node's store, kept across its restarts.
pub(crate) struct Slot<S, G> {
    pub(crate) store: Option<S>,
    /// The running incarnation's wrapper of `store` (`None` while the node is down).
    pub(crate) tracked: Option<Tracked<S>>,
    pub(crate) guard: G,
    pub(crate) down_until: Option<tokio::time::Instant>,
    /// The disk failed (or will at its next write) and is to be replaced at this time.
    pub(crate) replace_disk_at: Option<tokio::time::Instant>,
}

/// One cluster being exercised.
pub(crate) struct Run<NH: NetworkHarness, LH: LogStoreHarness> {
    pub(crate) net: Arc<NH>,
    pub(crate) logs: Arc<LH>,
    pub(crate) ids: Vec<NodeId>,
    pub(crate) configs: BTreeMap<NodeId, Config>,
    pub(crate) checker: Arc<Checker>,
    pub(crate) faults: Arc<Faults>,
    pub(crate) cluster: NH::Cluster,
    pub(crate) table: NodeTable<NH::Network, Tracked<LH::Store>>,
    pub(crate) slots: BTreeMap<NodeId, Slot<LH::Store, LH::Guard>>,
    /// How long a node whose disk failed has to report the failure.
    pub(crate) bound: Duration,
    /// The durable views the checker used (see [`HARNESS_VIEW`]).
    pub(crate) views: Mutex<BTreeSet<&'static str>>,
    /// Whether the run has spare nodes (started waiting to join, `Config::members` empty), so
    /// the nemesis may change the membership.
    pub(crate) spares: bool,
    /// Every node that was ever a member (voter or learner) of a configuration seen.
    pub(crate) was_member: BTreeSet<NodeId>,
    /// Nodes removed from the configuration and stopped for good (no longer in `ids`).
    pub(crate) retired: BTreeSet<NodeId>,
    /// Every node is unpaused after this.
    pub(crate) paused_until: tokio::time::Instant,
    /// Nodes whose clock the nemesis set to run at another rate than real time.
    pub(crate) clock_rates: BTreeMap<NodeId, f64>,
    /// The run's seed: it also picks which nodes have their state machine applied on the
    /// driver ([`StateMachine::inline_apply`](raftkit::StateMachine::inline_apply)), so both of
    /// the engine's apply paths run under faults.
    pub(crate) seed: u64,
}

impl<NH: NetworkHarness, LH: LogStoreHarness> Run<NH, LH> {
    /// Builds a store per node and starts every node.
    pub(crate) async fn start(
        net: Arc<NH>,
        logs: Arc<LH>,
        configs: BTreeMap<NodeId, Config>,
        seed: u64,
        fault_seed: u64,
        bound: Duration,
    ) -> Self {
        let ids: Vec<NodeId> = configs.keys().copied().collect();
        let was_member: BTreeSet<NodeId> =
            configs.values().flat_map(|c| c.members.iter().copied()).collect();
        let spares = was_member.len() < ids.len();
        let cluster = net.cluster(&ids, seed).await;
        let mut slots = BTreeMap::new();
        for id in &ids {
            let (store, guard) = logs.build().await;
            slots.insert(
                *id,
                Slot {
                    store: Some(store),
                    tracked: None,
                    guard,
                    down_until: None,
                    replace_disk_at: None,
                },
            );
        }
        let mut run = Run {
            net,
            logs,
            checker: Arc::new(Checker::new(was_member.len())),
            faults: Arc::new(Faults::new(fault_seed)),
            cluster,
            table: Arc::new(Mutex::new(BTreeMap::new())),
            slots,
            configs,
            ids: ids.clone(),
            bound,
            views: Mutex::new(BTreeSet::new()),
            spares,
            was_member,
            seed,
            paused_until: tokio::time::Instant::now(),
            clock_rates: BTreeMap::new(),
            retired: BTreeSet::new(),
        };
        for id in &ids {
            run.start_node(*id).await;
        }
        run
    }

    /// Starts `id` on its store (a new incarnation), wrapped in a fresh [`Tracked`] whose record
    /// starts from what the store holds now.
    pub(crate) async fn start_node(&mut self, id: NodeId) {
        let checker = self.checker.clone();
        let store = self.slots[&id].store.clone().expect("the store is open");
        let read = match StoreRead::of(&store).await {
            Ok(read) => read,
            Err(e) => {
                checker.violation(format!("store load: {id} cannot load its store: {e}"));
                return;
            }
        };
        let Some(acked) = read.acknowledged() else {
            let why = read.check().err().unwrap_or_default();
            checker.violation(format!("store read: {id}'s store, at start: {why}"));
            return;
        };
        let loaded = read.state.hard_state;
        drop(read);
        let harness_view = self.logs.durable(&store);
        let tracked = Tracked::new(store, acked);
        let view = match harness_view {
            Some(view) => {
                self.note_view(HARNESS_VIEW);
                view
            }
            None => {
                self.note_view(TRACKED_VIEW);
                tracked.view()
            }
        };
        let inc = checker.start_incarnation(id, loaded, Some(view));
        tracked.watch(checker.clone(), id, inc);
        let endpoint = self.net.endpoint(&self.cluster, id).await;
        let net = FaultyNetwork::new(endpoint, id, self.faults.clone(), checker.clone());
        // About half the nodes apply on the driver, half on the apply task (by seed and id).
        let inline = (self.seed ^ id.0) & 1 == 0;
        let kv = TestKv::new(Some(checker.recorder(id, inc))).with_inline_apply(inline);
        let cfg = self.configs[&id].clone();
        let observer = checker.observer(id, inc);
        match Raft::start_observed(cfg, net, tracked.clone(), kv, observer).await {
            Ok(node) => {
                self.slots.get_mut(&id).expect("slot").tracked = Some(tracked);
                self.table.lock().unwrap_or_else(|p| p.into_inner()).insert(id, node);
            }
            Err(e) => checker.violation(format!("restart: {id} cannot start from its store: {e}")),
        }
    }

    fn note_view(&self, view: &'static str) {
        self.views.lock().unwrap_or_else(|p| p.into_inner()).insert(view);
    }

    /// The durable views the checker used, for the report.
    pub(crate) fn durable_view(&self) -> String {
        let views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        views.iter().copied().collect::<Vec<_>>().join(" and ")
    }

    /// Restarts a crashed node.
    pub(crate) async fn restart_node(&mut self, id: NodeId) {
        self.slots.get_mut(&id).expect("slot").down_until = None;
        // A restarted node's clock runs at real time again.
        self.clock_rates.remove(&id);
        self.checker.note(format!("restart {id}"));
        self.start_node(id).await;
    }

    /// Arms a disk failure on `id`: its store's next write fails, and every later one. The
    /// disk is replaced at `replace_at` ([`due_for_disk_replacement`](Self::due_for_disk_replacement)).
    pub(crate) fn fail_disk(
        &mut self,
        id: NodeId,
        rng: &mut Rng,
        replace_at: tokio::time::Instant,
    ) {
        let slot = self.slots.get_mut(&id).expect("slot");
        let Some(tracked) = &slot.tracked else { return };
        let what = tracked.fail_disk(rng);
        slot.replace_disk_at = Some(replace_at);
        self.checker.note(format!("nemesis: disk failure on {id}: {what}"));
    }

    /// Nodes whose failed disk is due for replacement.
    pub(crate) fn due_for_disk_replacement(&self) -> Vec<NodeId> {
        let now = tokio::time::Instant::now();
        self.slots
            .iter()
            .filter(|(_, s)| s.replace_disk_at.is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Nodes with a failed (or failing) disk.
    pub(crate) fn failing_disks(&self) -> Vec<NodeId> {
        self.slots.iter().filter(|(_, s)| s.replace_disk_at.is_some()).map(|(id, _)| *id).collect()
    }

    /// Replaces the failed disk of `id`: the node is crashed (after checking that it stopped
    /// serving, if the failure was met) and restarted on its store as the harness reopens it
    /// after a crash, with a healthy disk.
    pub(crate) async fn replace_disk(&mut self, id: NodeId) {
        let failed = self.slots[&id].tracked.as_ref().is_some_and(|t| t.disk_failed());
        self.checker.note(format!(
            "nemesis: replace the disk of {id}{}",
            if failed { "" } else { " (no write had reached it: it had not failed yet)" }
        ));
        self.crash_node(id, None).await;
        self.restart_node(id).await;
    }

    /// After the disk of `id` failed, the node must stop serving: within the bound its metrics
    /// show it failed with the storage error (no longer leading), and a client write is refused
    /// with that error. Records a violation otherwise.
    async fn check_stopped(&self, id: NodeId, node: &RunNode<NH, LH>) {
        let m = node.wait_for(self.bound, |m| m.state != NodeState::Running).await;
        let m = m.unwrap_or_else(|| node.metrics().borrow().clone());
        let storage_kind = |f: &Fatal| match f {
            Fatal::LogStore(e) => Some(e.kind()),
            _ => None,
        };
        match &m.state {
            NodeState::Failed(f)
                if matches!(
                    storage_kind(f),
                    Some(StorageErrorKind::Io | StorageErrorKind::Poisoned)
                ) =>
            {
                self.checker.note(format!("{id} stopped: {f}"));
            }
            other => self.checker.violation(format!(
                "failed store: {id} did not stop with its storage error within {:?} after its \
                 store failed (state {other:?}, {} in {}, applied {})",
                self.bound, m.role, m.term, m.applied
            )),
        }
        if m.role == Role::Leader || m.leader == Some(id) {
            self.checker.violation(format!(
                "failed store: {id} still shows itself as leader ({} in {}) after it stopped",
                m.role, m.term
            ));
        }
        let cmd = KvCommand { key: "disk-check".into(), op: KvOp::Get };
        match tokio::time::timeout(self.bound, node.client_write(cmd)).await {
            Ok(Err(WriteError::Fatal(Fatal::LogStore(_)))) => {}
            other => self.checker.violation(format!(
                "failed store: {id} did not refuse a client write with its storage error after \
                 its store failed: {other:?}"
            )),
        }
    }

    /// Crashes `id` as power loss would: the process dies at once and its store keeps only
    /// what was durable. It stays down until `down` has passed (the nemesis restarts it then)
    /// or, with `None`, until restarted by hand. A node whose disk failed is first checked to
    /// have stopped serving; the crash also replaces its disk.
    pub(crate) async fn crash_node(&mut self, id: NodeId, down: Option<Duration>) {
        let node = self.table.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        let failed = self.slots[&id].tracked.as_ref().is_some_and(|t| t.disk_failed());
        if let Some(node) = node {
            if failed {
                self.check_stopped(id, &node).await;
            }
            node.kill().await;
        }
        let slot = self.slots.get_mut(&id).expect("slot");
        slot.tracked = None;
        slot.replace_disk_at = None;
        let store = slot.store.take().expect("the store is open");
        slot.store = Some(self.logs.crash(store, &slot.guard).await);
        slot.down_until =
            Some(tokio::time::Instant::now() + down.unwrap_or(Duration::from_secs(1 << 30)));
        self.checker.note(format!("crash {id}"));
    }

    /// Stops `id` for good: it was removed from the configuration (a crash, never followed by
    /// a restart; its store stays for the checkpoints).
    pub(crate) async fn retire(&mut self, id: NodeId) {
        if !self.retired.insert(id) {
            return;
        }
        self.checker.note(format!("nemesis: {id} was removed from the cluster: stop it for good"));
        self.crash_node(id, None).await;
        let slot = self.slots.get_mut(&id).expect("slot");
        slot.down_until = None;
        self.ids.retain(|n| *n != id);
    }

    /// Stops for good every node that was a member but is not one of `committed` (a
    /// committed configuration).
    pub(crate) async fn retire_removed(&mut self, committed: &raftkit::Membership) {
        let gone: Vec<NodeId> = self
            .ids
            .iter()
            .copied()
            .filter(|id| self.was_member.contains(id) && !committed.contains(*id))
            .collect();
        for id in gone {
            self.retire(id).await;
        }
    }

    /// Nodes that are down, whose downtime is over.
    pub(crate) fn due_for_restart(&self) -> Vec<NodeId> {
        let now = tokio::time::Instant::now();
        self.slots
            .iter()
            .filter(|(_, s)| s.down_until.is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Nodes that are down.
    pub(crate) fn down(&self) -> Vec<NodeId> {
        self.slots.iter().filter(|(_, s)| s.down_until.is_some()).map(|(id, _)| *id).collect()
    }

    /// The running nodes.
    pub(crate) fn live(&self) -> Vec<(NodeId, RunNode<NH, LH>)> {
        live_nodes(&self.table)
    }

    /// The running node `id`.
    pub(crate) fn node(&self, id: NodeId) -> Option<RunNode<NH, LH>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).get(&id).cloned()
    }

    /// Reads every store's log (past any injected fault: the checker inspects the store
    /// itself) and checks them.
    pub(crate) async fn checkpoint(&self) {
        let base = self.checker.begin_checkpoint();
        let mut reads = BTreeMap::new();
        for (id, slot) in &self.slots {
            let Some(store) = &slot.store else { continue };
            match StoreRead::of(store).await {
                Ok(read) => {
                    reads.insert(*id, read);
                }
                Err(e) => self.checker.violation(format!("store load: {id}'s store: {e}")),
            }
        }
        self.checker.checkpoint(&base, &reads);
    }

    /// A leader that a majority of the cluster follows, if any.
    pub(crate) fn leader(&self) -> Option<(NodeId, RunNode<NH, LH>)> {
        let ns = self.live();
        let ms = metrics(&ns);
        // A quorum of the leader's configuration (a majority of all nodes when the membership
        // never changed) follows it.
        let lid = ms.iter().find(|(id, m)| {
            m.role == Role::Leader
                && m.membership
                    .has_quorum(|n| ms.iter().any(|(o, om)| *o == n && om.leader == Some(*id)))
        })?;
        ns.into_iter().find(|(id, _)| *id == lid.0)
    }

    /// Writes `cmd` through a leader, retrying until `deadline`. Returns its output, or `None` if no
    /// attempt succeeded in time.
    pub(crate) async fn write(
        &self,
        cmd: &KvCommand,
        deadline: tokio::time::Instant,
    ) -> Option<KvOutput> {
        while tokio::time::Instant::now() < deadline {
            if let Some((_, node)) = self.leader() {
                // Any failure (not the leader after all, a timeout): look again and retry.
                let write = node.client_write(cmd.clone());
                if let Ok(Ok(out)) = tokio::time::timeout(Duration::from_secs(2), write).await {
                    return Some(out);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Writes `count` keys with values of `value_len` bytes through the leader, `parallel` at a
    /// time. Returns how many were acknowledged.
    pub(crate) async fn write_many(
        &self,
        prefix: &str,
        count: usize,
        value_len: usize,
        parallel: usize,
        deadline: tokio::time::Instant,
    ) -> usize {
        let mut acked = 0usize;
        let mut next = 0;
        while next < count && tokio::time::Instant::now() < deadline {
            let Some((_, node)) = self.leader() else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let batch: Vec<_> = (next..(next + parallel).min(count))
                .map(|i| {
                    let node = node.clone();
                    let value = format!("{i:0width$}", width = value_len.max(1));
                    let cmd = KvCommand { key: format!("{prefix}-{i}"), op: KvOp::Put(value) };
                    tokio::spawn(async move { node.client_write(cmd).await.is_ok() })
                })
                .collect();
            let len = batch.len();
            let mut all_ok = true;
            for t in batch {
                all_ok &= t.await.unwrap_or(false);
            }
            if all_ok {
                acked += len;
                next += len;
            } else {
                // A leadership change: the batch is retried (a key written twice is harmless).
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        acked
    }

    /// After faults stop: a leader within the bound that accepts a write. Returns whether it
    /// happened (a violation is recorded otherwise).
    pub(crate) async fn elect_and_write(&self, seed: u64, deadline: tokio::time::Instant) -> bool {
        let cmd = KvCommand { key: "final".into(), op: KvOp::Put(format!("seed-{seed}")) };
        match self.write(&cmd, deadline).await {
            Some(_) => {
                self.checker.note("liveness: a leader committed the final write");
                true
            }
            None => {
                self.checker.violation("liveness: no leader accepted a write after faults stopped");
                false
            }
        }
    }

    /// The configuration of a leader that a quorum follows, once it is committed and not
    /// joint (waiting for that until `deadline`).
    pub(crate) async fn final_membership(
        &self,
        deadline: tokio::time::Instant,
    ) -> Option<raftkit::Membership> {
        while tokio::time::Instant::now() < deadline {
            if let Some((_, node)) = self.leader() {
                let m = node.metrics().borrow().clone();
                if m.membership_committed && !m.membership.is_joint() {
                    return Some(m.membership);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Every node reaches the same last entry, commits and applies it, before `deadline`.
    pub(crate) async fn converge(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let ms = metrics(&self.live());
            // The members of the leader's configuration (every node if the membership never
            // changed); nodes never added, or removed, are left out.
            let members: BTreeSet<NodeId> = ms
                .iter()
                .find(|(_, m)| m.role == Role::Leader)
                .map_or_else(|| self.ids.iter().copied().collect(), |(_, m)| m.membership.nodes());
            let ms: Vec<(NodeId, RaftMetrics)> =
                ms.into_iter().filter(|(id, _)| members.contains(id)).collect();
            let last = ms.first().map(|(_, m)| m.last_log);
            let done = ms.len() == members.len()
                && ms.iter().all(|(_, m)| {
                    Some(m.last_log) == last
                        && m.commit == m.last_log.index
                        && m.applied == m.last_log.index
                });
            if done {
                self.checker.note("liveness: all nodes converged");
                return true;
            }
            if tokio::time::Instant::now() > deadline {
                let states: Vec<String> = ms
                    .iter()
                    .map(|(id, m)| {
                        format!(
                            "{id}: {} {} commit={} applied={} last={} stable={} purged={} snapshot={:?} matches={:?}",
                            m.role, m.term, m.commit, m.applied, m.last_log, m.stable, m.purged, m.snapshot, m.replication
                        )
                    })
                    .collect();
                self.checker.violation(format!("liveness: nodes did not converge: {states:?}"));
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Each node's final state and log, for reports.
    pub(crate) async fn dump(&self) -> (String, u64) {
        let mut dump = String::new();
        let mut max_term = 0;
        for (id, m) in metrics(&self.live()) {
            max_term = max_term.max(m.term.0);
            let _ = writeln!(
                dump,
                "  {id}: {} {} leader={:?} commit={} applied={} last={} purged={} snapshot={:?}",
                m.role, m.term, m.leader, m.commit, m.applied, m.last_log, m.purged, m.snapshot
            );
        }
        for (id, slot) in &self.slots {
            if let Some(store) = &slot.store {
                match StoreRead::of(store).await.map(|r| r.check()) {
                    Ok(Ok(log)) => {
                        let _ = writeln!(dump, "  {id} log: {}", log.summary());
                    }
                    Ok(Err(why)) => {
                        let _ = writeln!(dump, "  {id} log: unreadable: {why}");
                    }
                    Err(e) => {
                        let _ = writeln!(dump, "  {id} log: cannot load: {e}");
                    }
                }
            }
        }
        (dump, max_term)
    }

    /// Stops every node at once.
    /// Checks the clients' history for linearizability and records the verdict: a note when it
    /// is linearizable, a violation otherwise. An undecided history fails the run too, but says
    /// so: a check that gave up must not pass silently, and must not be mistaken for a found
    /// violation either.
    pub(crate) fn check_history(&self, history: &[crate::linearizability::Operation]) {
        use crate::linearizability::{self, Verdict};
        match linearizability::check(history) {
            Ok(Verdict::Linearizable) => self
                .checker
                .note(format!("history of {} operations is linearizable", history.len())),
            Ok(Verdict::Unknown { key }) => self.checker.violation(format!(
                "linearizability: key {key:?} could not be decided within the checker's step \
                 budget ({} operations in the history): inconclusive, not a proven violation",
                history.len()
            )),
            Ok(v) => self.checker.violation(format!(
                "linearizability: the client history is not linearizable:\n{v}"
            )),
            Err(e) => self
                .checker
                .violation(format!("linearizability: the client history is malformed: {e:?}")),
        }
    }

    /// Ends a directed scenario: a last checkpoint, the nodes' final state, every node stopped,
    /// and the report of what the checker found.
    pub(crate) async fn finish_directed(
        &self,
        seed: u64,
        nodes: usize,
        crash_model: crate::CrashModel,
    ) -> super::RunReport {
        self.checkpoint().await;
        let (dump, max_term) = self.dump().await;
        self.kill_all().await;
        super::RunReport {
            seed,
            nodes,
            applied: self.checker.applied_count(),
            max_term,
            violations: self.checker.violations(),
            trace: self.checker.trace(),
            dump,
            crash_model: Some(crash_model),
            durable_view: self.durable_view(),
            ..super::RunReport::default()
        }
    }

    pub(crate) async fn kill_all(&self) {
        for (_, node) in self.live() {
            node.kill().await;
        }
    }
}

/// The nodes in a table.
pub(crate) fn live_nodes<N: raftkit::Network, L: LogStore + Clone>(
    table: &NodeTable<N, L>,
) -> Vec<(NodeId, Node<N, L>)> {
    table.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (*k, v.clone())).collect()
}

/// Their metrics.
pub(crate) fn metrics<N: raftkit::Network, L: LogStore + Clone>(
    nodes: &[(NodeId, Node<N, L>)],
) -> Vec<(NodeId, RaftMetrics)> {
    nodes.iter().map(|(id, n)| (*id, n.metrics().borrow().clone())).collect()
}
