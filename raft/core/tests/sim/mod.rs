//! A deterministic simulation of N `RaftCore`s on a virtual clock (quinn's `Pair`, generalised
//! to a cluster): a network with latency, partitions, one-way blocks and message filters;
//! storage with write latency that loses unfinished writes on a crash; and an in-memory state
//! machine per node. Safety invariants are checked after every event, so a scenario only has to
//! create the situation; the simulator notices the violation.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use raftkit_core::{
    Action, AppendEntries, Config, Entry, Forwarded, HardState, InitialState, Instant, LogId,
    LogIndex, LogWrite, Message, MessageBody, NodeId, ProposeError, RaftCore, ReadError, ReadId,
    ReadMode, Rng, Role, SnapshotMeta, Term, WriteId, codec,
};

/// A node's durable storage.
#[derive(Clone, Debug, Default)]
pub struct SimStore {
    pub hard_state: HardState,
    pub purged: LogId,
    /// Entries after `purged`: `entries[i]` has index `purged.index + 1 + i`.
    pub entries: Vec<Entry>,
}

impl SimStore {
    fn apply(&mut self, w: &LogWrite) {
        if let Some(hs) = w.hard_state {
            let old = self.hard_state;
            // Durable term and vote only move forward: a vote, once durable, is never changed
            // or cleared within its term (Raft §5.2; pitfalls P7 and P9).
            assert!(hs.term >= old.term, "durable term went backwards: {old:?} -> {hs:?}");
            if hs.term == old.term && old.vote.is_some() {
                assert_eq!(hs.vote, old.vote, "durable vote changed within {}", hs.term);
            }
            assert!(hs.commit >= old.commit, "durable commit went backwards: {old:?} -> {hs:?}");
            self.hard_state = hs;
        }
        if let Some(t) = w.truncate_from {
            assert!(t > self.purged.index, "truncate_from {t} at or below the purged prefix");
            assert!(t <= self.last().index.next(), "truncate_from {t} beyond end");
            self.entries.truncate((t.0 - self.purged.index.0 - 1) as usize);
        }
        for e in &w.entries {
            assert_eq!(e.index(), self.last().index.next(), "gap in append");
            self.entries.push(e.clone());
        }
    }

    pub fn last(&self) -> LogId {
        self.entries.last().map_or(self.purged, |e| e.log_id)
    }

    fn get(&self, index: LogIndex) -> Option<&Entry> {
        if index <= self.purged.index {
            return None;
        }
        self.entries.get((index.0 - self.purged.index.0 - 1) as usize)
    }

    fn purge(&mut self, up_to: LogId) {
        if up_to.index <= self.purged.index {
            return;
        }
        assert_eq!(
            self.get(up_to.index).map(|e| e.log_id),
            Some(up_to),
            "purge to an entry not in the log"
        );
        self.entries.drain(..(up_to.index.0 - self.purged.index.0) as usize);
        self.purged = up_to;
    }

    /// Replaces the log's prefix with a snapshot ending at `s` (keeping a consistent suffix).
    fn install(&mut self, s: LogId) {
        if self.get(s.index).map(|e| e.log_id) == Some(s) {
            self.purge(s);
        } else {
            self.entries.clear();
            self.purged = s;
        }
    }

    pub fn initial_state(&self, snapshot: Option<SnapshotMeta>) -> InitialState {
        let mut runs: Vec<LogId> = Vec::new();
        for e in &self.entries {
            if runs.last().is_none_or(|r| r.term != e.term()) {
                runs.push(e.log_id);
            }
        }
        let applied = snapshot.as_ref().map_or(LogIndex(0), |s| s.last_log_id.index);
        let floor = snapshot.as_ref().map_or(self.purged.index, |s| s.last_log_id.index);
        let memberships = self
            .entries
            .iter()
            .filter(|e| e.index() > floor)
            .filter_map(|e| match &e.payload {
                raftkit_core::EntryPayload::Membership(m) => Some((e.log_id, m.clone())),
                _ => None,
            })
            .collect();
        InitialState {
            hard_state: self.hard_state,
            purged: self.purged,
            term_runs: runs,
            last: self.last(),
            applied,
            snapshot,
            memberships,
        }
    }

    fn read(&self, first: LogIndex, last: LogIndex) -> Option<Vec<Entry>> {
        if first <= self.purged.index || last > self.last().index || first > last {
            return None;
        }
        let base = self.purged.index.0 + 1;
        Some(self.entries[(first.0 - base) as usize..=(last.0 - base) as usize].to_vec())
    }
}

/// What the simulated storage does, in order, at its completion time.
enum SimOp {
    Write(WriteId, LogWrite),
    Purge(LogId),
    /// Install a received snapshot: replace the log's prefix and restore the state machine.
    Install(NodeId, SnapshotMeta, Vec<u8>),
}

/// A simple checksum for simulated snapshots (FNV-1a folded to 32 bits).
pub fn checksum(data: &[u8]) -> u32 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    (h ^ (h >> 32)) as u32
}

pub struct SimNode {
    pub id: NodeId,
    pub cfg: Config,
    pub core: Option<RaftCore>,
    pub store: SimStore,
    /// Storage operations, completing in order at the given instants.
    writes: VecDeque<(Instant, SimOp)>,
    /// The in-memory state machine: entries applied, in order (restored from a snapshot's
    /// content after a restart or an install).
    pub applied: Vec<Entry>,
    /// The latest snapshot: its meta and content (the encoded applied entries).
    pub snapshot: Option<(SnapshotMeta, Vec<u8>)>,
    /// A snapshot being received: its meta and the bytes so far.
    pub incoming: Option<(SnapshotMeta, Vec<u8>)>,
    pub max_term_seen: Term,
    commit_seen: LogIndex,
    was_leader_in: Option<Term>,
}

impl SimNode {
    /// A node with an empty store, started at `now`.
    fn fresh(cfg: Config, now: Instant) -> SimNode {
        let core = RaftCore::new(cfg.clone(), InitialState::default(), now).expect("valid config");
        SimNode {
            id: cfg.id,
            cfg,
            core: Some(core),
            store: SimStore::default(),
            writes: VecDeque::new(),
            snapshot: None,
            incoming: None,
            applied: Vec::new(),
            max_term_seen: Term(0),
            commit_seen: LogIndex(0),
            was_leader_in: None,
        }
    }

    pub fn core(&self) -> &RaftCore {
        self.core.as_ref().expect("node is crashed")
    }
}

struct InFlight {
    from: NodeId,
    to: NodeId,
    msg: Message,
}

/// Sees (and may edit) every delivered message; returns false to drop it.
type Filter = Box<dyn FnMut(NodeId, NodeId, &mut Message) -> bool>;

/// A simulated cluster.
pub struct Sim {
    pub now: Instant,
    pub nodes: BTreeMap<NodeId, SimNode>,
    pub rng: Rng,
    net: BTreeMap<(Instant, u64), InFlight>,
    seq: u64,
    pub latency: (Duration, Duration),
    pub write_latency: (Duration, Duration),
    pub drop_rate: f64,
    pub duplicate_rate: f64,
    /// Directed links that drop everything.
    blocked: BTreeSet<(NodeId, NodeId)>,
    /// Returns false for messages to drop.
    filter: Option<Filter>,
    // Invariant bookkeeping.
    leader_of_term: BTreeMap<Term, NodeId>,
    /// (voter, term) -> candidate it granted its vote to.
    grants: BTreeMap<(NodeId, Term), NodeId>,
    pub from_log_sends: u64,
    pub rejections: BTreeMap<NodeId, u64>,
    /// The most AppendEntries with entries ever in flight on one link.
    pub max_inflight_appends: usize,
    pub max_entries_in_message: usize,
    committed: BTreeMap<LogIndex, LogId>,
    applied_entries: BTreeMap<LogIndex, Entry>,
    pub events: u64,
    pub messages_delivered: u64,
    pub snapshots_built: u64,
    pub snapshots_installed: u64,
    /// (to, offset) of every snapshot chunk sent.
    pub chunks_sent: Vec<(NodeId, u64)>,
    /// Reads asked for and not answered: the highest index any node knew committed when the
    /// read was asked for (its read index must not be below it).
    read_floors: BTreeMap<(NodeId, ReadId), LogIndex>,
    next_read: u64,
    /// Every read answered, in order: (node, read, outcome).
    pub read_results: Vec<(NodeId, ReadId, Result<LogIndex, ReadError>)>,
    /// Every answer to forwarded commands, in order: (node, answer).
    pub forwarded: Vec<(NodeId, Forwarded)>,
}

impl Sim {
    /// A cluster of `n` nodes (ids 1..=n) with test-friendly timings.
    pub fn new(n: u64, seed: u64) -> Sim {
        Sim::with_config(n, seed, |_| {})
    }

    pub fn with_config(n: u64, seed: u64, tweak: impl Fn(&mut Config)) -> Sim {
        let members: Vec<NodeId> = (1..=n).map(NodeId).collect();
        let mut nodes = BTreeMap::new();
        for id in &members {
            let mut cfg = Config::new(*id, members.clone());
            cfg.heartbeat_interval = Duration::from_millis(20);
            cfg.election_timeout_min = Duration::from_millis(100);
            cfg.election_timeout_max = Duration::from_millis(200);
            cfg.seed = seed;
            tweak(&mut cfg);
            nodes.insert(*id, SimNode::fresh(cfg, Instant::ZERO));
        }
        let mut sim = Sim {
            now: Instant::ZERO,
            nodes,
            rng: Rng::new(seed ^ 0x5EED),
            net: BTreeMap::new(),
            seq: 0,
            latency: (Duration::from_micros(500), Duration::from_millis(3)),
            write_latency: (Duration::from_micros(100), Duration::from_millis(2)),
            drop_rate: 0.0,
            duplicate_rate: 0.0,
            blocked: BTreeSet::new(),
            filter: None,
            leader_of_term: BTreeMap::new(),
            grants: BTreeMap::new(),
            from_log_sends: 0,
            rejections: BTreeMap::new(),
            max_inflight_appends: 0,
            max_entries_in_message: 0,
            committed: BTreeMap::new(),
            applied_entries: BTreeMap::new(),
            events: 0,
            messages_delivered: 0,
            snapshots_built: 0,
            snapshots_installed: 0,
            chunks_sent: Vec::new(),
            read_floors: BTreeMap::new(),
            next_read: 0,
            read_results: Vec::new(),
            forwarded: Vec::new(),
        };
        let ids: Vec<NodeId> = sim.nodes.keys().copied().collect();
        for id in ids {
            sim.drain(id);
        }
        sim
    }

    /// Adds node `id`, started empty with no configuration (waiting to be added by a leader).
    pub fn add_node(&mut self, id: u64) {
        let template = self.nodes.values().next().expect("a node").cfg.clone();
        let mut cfg = template;
        cfg.id = NodeId(id);
        cfg.members = Vec::new();
        self.nodes.insert(NodeId(id), SimNode::fresh(cfg, self.now));
        self.drain(NodeId(id));
    }

    /// Asks `node` for a configuration change.
    pub fn change(
        &mut self,
        node: u64,
        change: raftkit_core::MembershipChange,
    ) -> Result<LogId, ProposeError> {
        let r = self.core_mut(node).propose_membership(change);
        self.drain(NodeId(node));
        r
    }

    /// Asks `node` for a read index. The answer lands in `read_results`; the simulator checks
    /// that it is not below anything committed when the read was asked for (linearizability of
    /// reads).
    pub fn read(&mut self, node: u64, mode: ReadMode) -> Result<ReadId, ReadError> {
        self.next_read += 1;
        let id = ReadId(self.next_read);
        let floor = self.committed.last_key_value().map_or(LogIndex(0), |(i, _)| *i);
        let now = self.now;
        let r = self.core_mut(node).read_index(now, id, mode);
        if r.is_ok() {
            self.read_floors.insert((NodeId(node), id), floor);
        }
        self.drain(NodeId(node));
        r.map(|()| id)
    }

    /// The outcome of read `id` on `node`, if it came.
    pub fn read_result(&self, node: u64, id: ReadId) -> Option<Result<LogIndex, ReadError>> {
        self.read_results
            .iter()
            .find(|(n, r, _)| *n == NodeId(node) && *r == id)
            .map(|(_, _, res)| res.clone())
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    pub fn node(&self, id: u64) -> &SimNode {
        &self.nodes[&NodeId(id)]
    }

    pub fn core(&self, id: u64) -> &RaftCore {
        self.node(id).core()
    }

    pub fn core_mut(&mut self, id: u64) -> &mut RaftCore {
        self.nodes.get_mut(&NodeId(id)).unwrap().core.as_mut().expect("node is crashed")
    }

    // ----- driving ----------------------------------------------------------------------------

    /// Processes the next event. Returns false if nothing at all is scheduled.
    pub fn step(&mut self) -> bool {
        let next_msg = self.net.keys().next().map(|k| k.0);
        let next_write =
            self.nodes.values().filter_map(|n| n.writes.front().map(|w| (w.0, n.id))).min();
        let next_timer = self
            .nodes
            .values()
            .filter_map(|n| n.core.as_ref().and_then(|c| c.poll_timeout()).map(|t| (t, n.id)))
            .min();
        let candidates =
            [next_msg.map(|t| (t, 0)), next_write.map(|w| (w.0, 1)), next_timer.map(|t| (t.0, 2))];
        let Some((at, kind)) = candidates.into_iter().flatten().min() else { return false };
        self.now = self.now.max(at);
        self.events += 1;
        match kind {
            0 => {
                let (_, m) = self.net.pop_first().unwrap();
                self.deliver(m);
            }
            1 => {
                let id = next_write.unwrap().1;
                self.complete_write(id);
            }
            _ => {
                let id = next_timer.unwrap().1;
                let now = self.now;
                self.nodes.get_mut(&id).unwrap().core.as_mut().unwrap().handle_timeout(now);
                self.drain(id);
            }
        }
        true
    }

    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next = self.next_event_time();
            match next {
                Some(t) if t <= end => {
                    self.step();
                }
                _ => break,
            }
        }
        self.now = self.now.max(end);
    }

    fn next_event_time(&self) -> Option<Instant> {
        let a = self.net.keys().next().map(|k| k.0);
        let b = self.nodes.values().filter_map(|n| n.writes.front().map(|w| w.0)).min();
        let c = self
            .nodes
            .values()
            .filter_map(|n| n.core.as_ref().and_then(|c| c.poll_timeout()))
            .min();
        [a, b, c].into_iter().flatten().min()
    }

    /// Runs until `pred` holds (checked after every event) or `max` virtual time passes.
    pub fn run_until(&mut self, max: Duration, mut pred: impl FnMut(&Sim) -> bool) -> bool {
        let end = self.now + max;
        while !pred(self) {
            match self.next_event_time() {
                Some(t) if t <= end => {
                    self.step();
                }
                _ => return pred(self),
            }
        }
        true
    }

    /// The leader with the highest term among live nodes, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .values()
            .filter_map(|n| n.core.as_ref())
            .filter(|c| c.role() == Role::Leader)
            .max_by_key(|c| c.term())
            .map(|c| c.id())
    }

    /// Waits (up to 10 s of virtual time) for a leader that a quorum follows, and returns it.
    pub fn wait_leader(&mut self) -> NodeId {
        let ok = self.run_until(Duration::from_secs(10), |s| s.stable_leader().is_some());
        assert!(ok, "no leader elected within 10 s");
        self.stable_leader().unwrap()
    }

    /// A leader whose no-op is committed (it can serve), if any.
    pub fn stable_leader(&self) -> Option<NodeId> {
        let l = self.leader()?;
        let c = self.node(l.0).core();
        (c.term_at(c.commit_index()) == Some(c.term())).then_some(l)
    }

    pub fn propose(&mut self, node: u64, data: &[u8]) -> Result<LogId, ProposeError> {
        let now = self.now;
        let r = self.core_mut(node).propose(now, data.to_vec().into());
        self.drain(NodeId(node));
        r
    }

    /// Proposes several commands in one call ([`RaftCore::propose_batch`]).
    pub fn propose_batch(&mut self, node: u64, data: &[&[u8]]) -> Result<LogId, ProposeError> {
        let now = self.now;
        let commands = data.iter().map(|d| bytes::Bytes::copy_from_slice(d));
        let r = self.core_mut(node).propose_batch(now, commands.collect::<Vec<_>>().into_iter());
        self.drain(NodeId(node));
        r
    }

    /// Proposes on the current leader, returning the entry id.
    pub fn propose_on_leader(&mut self, data: &[u8]) -> LogId {
        let l = self.wait_leader();
        self.propose(l.0, data).expect("leader accepts proposals")
    }

    /// Proposes on whichever node leads now, if one does (for random workloads).
    pub fn propose_on_leader_if_any(&mut self, data: &[u8]) -> Option<LogId> {
        let l = self.leader()?;
        self.propose(l.0, data).ok()
    }

    pub fn campaign(&mut self, node: u64) {
        let now = self.now;
        self.core_mut(node).campaign(now);
        self.drain(NodeId(node));
    }

    /// Waits until every live node has applied `index`.
    pub fn wait_applied(&mut self, index: LogIndex, max: Duration) -> bool {
        self.run_until(max, |s| {
            s.nodes.values().filter(|n| n.core.is_some()).all(|n| n.applied.len() as u64 >= index.0)
        })
    }

    // ----- faults -----------------------------------------------------------------------------

    /// Stops a node: its volatile state and unfinished writes are lost.
    pub fn crash(&mut self, id: u64) {
        let n = self.nodes.get_mut(&NodeId(id)).unwrap();
        n.core = None;
        n.writes.clear();
        n.applied.clear();
        n.incoming = None;
        n.commit_seen = LogIndex(0);
        n.was_leader_in = None;
        self.read_floors.retain(|(n, _), _| *n != NodeId(id));
    }

    /// Asks `node` for `count` reads at once (one flush: they share a round).
    pub fn read_many(&mut self, node: u64, mode: ReadMode, count: usize) -> Vec<ReadId> {
        let floor = self.committed.last_key_value().map_or(LogIndex(0), |(i, _)| *i);
        let now = self.now;
        let mut ids = Vec::new();
        for _ in 0..count {
            self.next_read += 1;
            let id = ReadId(self.next_read);
            if self.core_mut(node).read_index(now, id, mode).is_ok() {
                self.read_floors.insert((NodeId(node), id), floor);
                ids.push(id);
            }
        }
        self.drain(NodeId(node));
        ids
    }

    /// Holds back every message to `to` whose body `kind` matches (replacing any filter), and
    /// returns where the held messages collect (replay them with [`inject`](Self::inject)).
    pub fn hold_to(
        &mut self,
        to: u64,
        kind: fn(&MessageBody) -> bool,
    ) -> std::rc::Rc<std::cell::RefCell<Vec<Message>>> {
        let held: std::rc::Rc<std::cell::RefCell<Vec<Message>>> = Default::default();
        let h = held.clone();
        self.set_filter(move |_, dest, msg| {
            if dest == NodeId(to) && kind(&msg.body) {
                h.borrow_mut().push(msg.clone());
                return false;
            }
            true
        });
        held
    }

    /// Sends `msg` from `from` to `to` through the simulated network (for replaying a message
    /// a filter held back).
    pub fn inject(&mut self, from: u64, to: u64, msg: Message) {
        self.send(NodeId(from), NodeId(to), msg);
    }

    /// Forwards commands from `node` to its leader as batch `batch`.
    pub fn forward(
        &mut self,
        node: u64,
        batch: u64,
        data: &[&[u8]],
    ) -> Result<NodeId, ProposeError> {
        let now = self.now;
        let commands = data.iter().map(|d| bytes::Bytes::copy_from_slice(d)).collect();
        let r = self.core_mut(node).forward(now, batch, commands);
        self.drain(NodeId(node));
        r
    }

    /// Asks `node` to hand leadership over.
    pub fn transfer(
        &mut self,
        node: u64,
        to: Option<u64>,
    ) -> Result<NodeId, raftkit_core::TransferError> {
        let now = self.now;
        let r = self.core_mut(node).transfer_leadership(now, to.map(NodeId));
        self.drain(NodeId(node));
        r
    }

    /// Restarts a crashed node from its durable store.
    pub fn restart(&mut self, id: u64) {
        let now = self.now;
        let n = self.nodes.get_mut(&NodeId(id)).unwrap();
        assert!(n.core.is_none(), "restart of a live node");
        let init = n.store.initial_state(n.snapshot.as_ref().map(|s| s.0.clone()));
        // The state machine is restored from the latest snapshot, then the log replays the rest.
        n.applied = match &n.snapshot {
            Some((_, data)) => codec::decode(data).expect("snapshot content"),
            None => Vec::new(),
        };
        // Volatile term changes may be lost; the durable term is the floor from here on.
        n.max_term_seen = init.hard_state.term;
        let core = RaftCore::new(n.cfg.clone(), init, now).expect("restart from durable state");
        n.core = Some(core);
        self.drain(NodeId(id));
    }

    pub fn block(&mut self, from: u64, to: u64) {
        self.blocked.insert((NodeId(from), NodeId(to)));
    }

    pub fn unblock(&mut self, from: u64, to: u64) {
        self.blocked.remove(&(NodeId(from), NodeId(to)));
    }

    /// Cuts every link between different groups (both directions).
    pub fn partition(&mut self, groups: &[&[u64]]) {
        self.heal();
        for (i, a) in groups.iter().enumerate() {
            for (j, b) in groups.iter().enumerate() {
                if i != j {
                    for x in *a {
                        for y in *b {
                            self.block(*x, *y);
                        }
                    }
                }
            }
        }
    }

    /// Cuts one node off from all others (both directions).
    pub fn isolate(&mut self, id: u64) {
        for other in self.ids() {
            if other.0 != id {
                self.block(id, other.0);
                self.block(other.0, id);
            }
        }
    }

    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    pub fn set_filter(&mut self, f: impl FnMut(NodeId, NodeId, &mut Message) -> bool + 'static) {
        self.filter = Some(Box::new(f));
    }

    pub fn clear_filter(&mut self) {
        self.filter = None;
    }

    // ----- internals --------------------------------------------------------------------------

    fn deliver(&mut self, mut m: InFlight) {
        // Blocks and filters apply at delivery time too, so a partition also stops messages
        // already on the wire.
        if self.blocked.contains(&(m.from, m.to)) {
            return;
        }
        if let Some(f) = self.filter.as_mut() {
            if !f(m.from, m.to, &mut m.msg) {
                return;
            }
        }
        let now = self.now;
        let Some(core) = self.nodes.get_mut(&m.to).unwrap().core.as_mut() else { return };
        self.messages_delivered += 1;
        core.handle_message(now, m.from, m.msg);
        self.drain(m.to);
    }

    fn complete_write(&mut self, id: NodeId) {
        let now = self.now;
        let n = self.nodes.get_mut(&id).unwrap();
        let (_, op) = n.writes.pop_front().unwrap();
        match op {
            SimOp::Write(wid, write) => {
                n.store.apply(&write);
                if let Some(core) = n.core.as_mut() {
                    core.handle_persisted(now, wid);
                }
            }
            SimOp::Purge(up_to) => n.store.purge(up_to),
            SimOp::Install(from, meta, data) => {
                n.store.install(meta.last_log_id);
                let restored: Vec<Entry> = codec::decode(&data).expect("snapshot content");
                assert_eq!(
                    restored.len() as u64,
                    meta.last_log_id.index.0,
                    "snapshot content length"
                );
                n.applied = restored.clone();
                n.snapshot = Some((meta.clone(), data));
                self.snapshots_installed += 1;
                if let Some(core) = n.core.as_mut() {
                    core.handle_snapshot_received(now, from, meta.clone(), meta.size, true);
                }
                // The snapshot's content must agree with everything applied anywhere.
                for e in restored {
                    self.check_applied(id, e);
                }
            }
        }
        self.drain(id);
    }

    /// Queues a storage operation after those already pending.
    fn enqueue(&mut self, id: NodeId, op: SimOp) {
        let now = self.now;
        let lat = self.rng.duration(self.write_latency.0, self.write_latency.1);
        let node = self.nodes.get_mut(&id).unwrap();
        let done = node.writes.back().map_or(now, |w| w.0).max(now + lat);
        node.writes.push_back((done, op));
    }

    fn send(&mut self, from: NodeId, to: NodeId, msg: Message) {
        if let MessageBody::VoteResponse(v) = &msg.body {
            // Learners (and nodes outside their configuration) never vote, pre-votes included.
            let core = self.nodes[&from].core.as_ref().expect("a live node sends");
            assert!(
                !v.granted || core.membership().is_voter(from),
                "{from} granted a vote in {} without being a voter of {:?}",
                msg.term,
                core.membership()
            );
        }
        match &msg.body {
            MessageBody::VoteResponse(v) if v.granted && !v.pre_vote => {
                if let Some(prev) = self.grants.insert((from, msg.term), to) {
                    assert_eq!(prev, to, "{from} voted for {prev} and {to} in {}", msg.term);
                }
            }
            MessageBody::AppendResponse(raftkit_core::AppendResponse::Reject { .. }) => {
                *self.rejections.entry(from).or_default() += 1;
            }
            MessageBody::AppendEntries(a) if !a.entries.is_empty() => {
                self.max_entries_in_message = self.max_entries_in_message.max(a.entries.len());
                let on_link = self
                    .net
                    .values()
                    .filter(|m| {
                        m.from == from
                            && m.to == to
                            && matches!(&m.msg.body, MessageBody::AppendEntries(x) if !x.entries.is_empty())
                    })
                    .count()
                    + 1;
                self.max_inflight_appends = self.max_inflight_appends.max(on_link);
            }
            _ => {}
        }
        if self.blocked.contains(&(from, to)) || self.rng.chance(self.drop_rate) {
            return;
        }
        let copies = if self.rng.chance(self.duplicate_rate) { 2 } else { 1 };
        for _ in 0..copies {
            let delay = self.rng.duration(self.latency.0, self.latency.1);
            self.seq += 1;
            self.net.insert((self.now + delay, self.seq), InFlight { from, to, msg: msg.clone() });
        }
    }

    /// Carries out every action a node has, then checks invariants.
    fn drain(&mut self, id: NodeId) {
        loop {
            let now = self.now;
            let node = self.nodes.get_mut(&id).unwrap();
            let Some(core) = node.core.as_mut() else { return };
            let Some(action) = core.poll_action() else { break };
            match action {
                Action::Persist(req) => {
                    if core.role() == Role::Leader {
                        assert!(
                            req.write.truncate_from.is_none(),
                            "leader append-only violated: leader {id} truncates {:?}",
                            req.write.truncate_from
                        );
                    }
                    self.enqueue(id, SimOp::Write(req.id, req.write));
                }
                Action::PurgeLog(up_to) => self.enqueue(id, SimOp::Purge(up_to)),
                Action::BuildSnapshot => {
                    let data = codec::encode(&node.applied).expect("encode");
                    let last = node.applied.last().map_or(LogId::ZERO, |e| e.log_id);
                    let meta = SnapshotMeta {
                        last_log_id: last,
                        // The configuration in force at the snapshot's end, not the latest.
                        membership: core.membership_at(last.index).clone(),
                        size: data.len() as u64,
                        checksum: checksum(&data),
                    };
                    node.snapshot = Some((meta.clone(), data));
                    self.snapshots_built += 1;
                    node.core.as_mut().unwrap().handle_snapshot_built(now, meta);
                }
                Action::SendSnapshot(req) => {
                    let chunk = match &node.snapshot {
                        Some((meta, data)) if *meta == req.meta => {
                            let (a, b) = (req.offset as usize, (req.offset + req.len) as usize);
                            Some(data[a..b].to_vec())
                        }
                        _ => None,
                    };
                    match chunk {
                        Some(data) => {
                            self.chunks_sent.push((req.to, req.offset));
                            let done = req.offset + req.len == req.meta.size;
                            let msg = Message {
                                term: req.term,
                                body: MessageBody::InstallSnapshot(raftkit_core::InstallSnapshot {
                                    meta: req.meta,
                                    offset: req.offset,
                                    data: data.into(),
                                    done,
                                }),
                            };
                            self.send(id, req.to, msg);
                        }
                        None => node.core.as_mut().unwrap().handle_snapshot_send_failed(req.to),
                    }
                }
                Action::ReceiveSnapshot(r) => {
                    let c = r.chunk;
                    // Continue the transfer of this snapshot, or start it over.
                    let same = node.incoming.as_ref().is_some_and(|(m, _)| *m == c.meta);
                    if !same {
                        node.incoming = Some((c.meta.clone(), Vec::new()));
                    }
                    let (meta, buf) = node.incoming.as_mut().unwrap();
                    let meta = meta.clone();
                    if c.offset == buf.len() as u64 {
                        buf.extend_from_slice(&c.data);
                    }
                    let received = buf.len() as u64;
                    if c.done && received == meta.size {
                        let data = std::mem::take(buf);
                        node.incoming = None;
                        assert_eq!(checksum(&data), meta.checksum, "snapshot checksum");
                        self.enqueue(id, SimOp::Install(r.from, meta, data));
                    } else {
                        node.core
                            .as_mut()
                            .unwrap()
                            .handle_snapshot_received(now, r.from, meta, received, false);
                    }
                }
                Action::Send(out) => self.send(id, out.to, out.message),
                Action::ReadIndex(r) => {
                    let floor = self.read_floors.remove(&(id, r.id));
                    let floor = floor.unwrap_or_else(|| {
                        panic!("{id} answered read {:?} twice or unasked", r.id)
                    });
                    if let Ok(index) = r.result {
                        assert!(
                            index >= floor,
                            "stale read on {id}: read index {index}, but {floor} was committed when the read was asked for"
                        );
                    }
                    self.read_results.push((id, r.id, r.result));
                }
                Action::Forwarded(f) => self.forwarded.push((id, f)),
                Action::SendFromLog(req) => {
                    self.from_log_sends += 1;
                    let node = self.nodes.get_mut(&id).unwrap();
                    let store = &node.store;
                    let entries = store.read(req.prev_log_id.index.next(), req.last.index);
                    match entries {
                        Some(entries) if entries.last().map(|e| e.log_id) == Some(req.last) => {
                            let msg = Message {
                                term: req.term,
                                body: MessageBody::AppendEntries(AppendEntries {
                                    prev_log_id: req.prev_log_id,
                                    entries,
                                    leader_commit: req.leader_commit,
                                }),
                            };
                            self.send(id, req.to, msg);
                        }
                        _ => {}
                    }
                }
                Action::Apply(req) => {
                    let entries = match req.entries {
                        Some(e) => e,
                        None => node
                            .store
                            .read(req.first, req.last.index)
                            .expect("apply range is durable"),
                    };
                    assert_eq!(entries.first().map(|e| e.index()), Some(req.first));
                    assert_eq!(entries.last().map(|e| e.log_id), Some(req.last));
                    for e in &entries {
                        assert_eq!(
                            e.index().0 as usize,
                            node.applied.len() + 1,
                            "{id} applied out of order"
                        );
                        node.applied.push(e.clone());
                    }
                    let last = req.last.index;
                    node.core.as_mut().unwrap().handle_applied(last);
                    for e in entries {
                        self.check_applied(id, e);
                    }
                }
            }
        }
        self.check_node(id);
    }

    // ----- invariants -------------------------------------------------------------------------

    /// Lease safety: while a leader's lease holds, no leader of a later term exists (all
    /// nodes share the simulator's clock, so the drift bound is slack here).
    fn check_lease(&self, id: NodeId) {
        let Some(core) = self.nodes[&id].core.as_ref() else { return };
        if core.lease_valid(self.now) {
            if let Some((t, other)) = self.leader_of_term.range(core.term().next()..).next() {
                panic!(
                    "lease violated: {id} holds a lease in {} at {:?} while {other} leads {t}",
                    core.term(),
                    self.now
                );
            }
        }
    }

    /// State-machine safety: every node applies the same entry at each index.
    fn check_applied(&mut self, id: NodeId, e: Entry) {
        match self.applied_entries.get(&e.index()) {
            Some(prev) => assert_eq!(
                prev,
                &e,
                "state machine safety violated: {id} applied a different entry at {}",
                e.index()
            ),
            None => {
                self.applied_entries.insert(e.index(), e);
            }
        }
    }

    /// Election safety, leader completeness, commit agreement and monotonic term/commit.
    fn check_node(&mut self, id: NodeId) {
        self.check_lease(id);
        let node = self.nodes.get_mut(&id).unwrap();
        let Some(core) = node.core.as_ref() else { return };
        assert!(core.term() >= node.max_term_seen, "{id} term went backwards");
        node.max_term_seen = core.term();
        assert!(
            core.durable_hard_state().term <= core.term(),
            "{id} durable term ahead of current"
        );
        // Commit agreement: whatever any node considers committed is the same everywhere.
        let commit = core.commit_index();
        assert!(commit >= node.commit_seen, "{id} commit index went backwards");
        // Below the purged prefix the entries live on in the snapshot; they were checked when
        // they were applied.
        let mut i = node.commit_seen.next().max(core.purged_log_id().index.next());
        while i <= commit {
            let log_id = core.log_id_at(i).expect("committed entry is in the log");
            match self.committed.get(&i) {
                Some(prev) => assert_eq!(
                    *prev, log_id,
                    "two different entries committed at {i}: {prev} and {log_id} (on {id})"
                ),
                None => {
                    self.committed.insert(i, log_id);
                }
            }
            i = i.next();
        }
        node.commit_seen = commit;
        if core.role() == Role::Leader {
            // At most one configuration entry of a leader's log is uncommitted.
            let uncommitted =
                core.membership_history().iter().filter(|(lid, _)| lid.index > commit).count();
            assert!(uncommitted <= 1, "leader {id} has {uncommitted} uncommitted configurations");
        }
        if core.role() == Role::Leader && node.was_leader_in != Some(core.term()) {
            let term = core.term();
            node.was_leader_in = Some(term);
            // A node that is not a voter of its own configuration never becomes leader.
            assert!(
                core.membership().is_voter(id),
                "{id} became leader of {term} without being a voter of {:?}",
                core.membership()
            );
            // Election safety.
            if let Some(other) = self.leader_of_term.insert(term, id) {
                assert_eq!(other, id, "two leaders in {term}: {other} and {id}");
            }
            // Leader completeness: a new leader has every committed entry.
            for (index, log_id) in self.committed.range(core.purged_log_id().index..) {
                assert_eq!(
                    core.log_id_at(*index),
                    Some(*log_id),
                    "leader completeness violated: {id} (leader of {term}) lacks committed {log_id}"
                );
            }
        }
    }

    /// Log matching over the durable logs: if two logs have the same id at an index, they are
    /// identical up to it.
    pub fn check_log_matching(&self) {
        let stores: Vec<(&NodeId, &SimStore)> =
            self.nodes.iter().map(|(k, n)| (k, &n.store)).collect();
        for (i, (a_id, a)) in stores.iter().enumerate() {
            for (b_id, b) in &stores[i + 1..] {
                // Compare over the indexes both still hold.
                let lo = a.purged.index.max(b.purged.index).next();
                let hi = a.last().index.min(b.last().index);
                let mut k = hi;
                while k >= lo && a.get(k).map(|e| e.log_id) != b.get(k).map(|e| e.log_id) {
                    k = k.prev();
                }
                let mut j = lo;
                while j <= k && k >= lo {
                    assert_eq!(
                        a.get(j),
                        b.get(j),
                        "log matching violated between {a_id} and {b_id}: same entry at {k}, differ at {j}"
                    );
                    j = j.next();
                }
            }
        }
    }

    /// After healing: every live node has the same log and applied the same entries.
    pub fn assert_converged(&mut self, max: Duration) {
        let ok = self.run_until(max, |s| {
            let live: Vec<&SimNode> = s.nodes.values().filter(|n| n.core.is_some()).collect();
            let first = live[0].core();
            live.iter().all(|n| {
                let c = n.core();
                c.last_log_id() == first.last_log_id()
                    && c.commit_index() == first.last_log_id().index
                    && n.applied.len() as u64 == first.last_log_id().index.0
            })
        });
        let summary: Vec<String> = self
            .nodes
            .values()
            .filter_map(|n| {
                n.core.as_ref().map(|c| {
                    format!(
                        "{}: {} {} last={} commit={} applied={}",
                        n.id,
                        c.role(),
                        c.term(),
                        c.last_log_id(),
                        c.commit_index(),
                        n.applied.len()
                    )
                })
            })
            .collect();
        assert!(ok, "cluster did not converge: {summary:#?}");
        self.check_log_matching();
    }
}
