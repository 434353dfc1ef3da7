//! Three `RaftCore`s driven by the fuzz input, with Raft's safety invariants checked after every
//! step.
//!
//! The input is a byte-driven program (read with `arbitrary::Unstructured`): the first bytes
//! pick the mode, the PRNG seed and the configuration knobs (entry cache, message and window
//! sizes, snapshot policy, PreVote, CheckQuorum); then each step is one operation — deliver,
//! drop or duplicate a message in flight (any one: the network reorders freely), complete a
//! node's next storage operation, fire a node's timer, let time pass, propose, campaign,
//! trigger a snapshot, report a peer unreachable, crash a node (losing unfinished writes and
//! its volatile state) or restart it from its durable store, or run a few steps of a fair
//! schedule so that long runs stay cheap to reach.
//!
//! **Honest mode** checks, after every step: at most one leader per term; one vote per voter
//! per term; a leader never truncates its log; committed entries are the same on every node
//! and never change (commit agreement, leader completeness); every node applies the same entry
//! at each index, in order (state-machine safety); log matching over the durable logs; per
//! node, the term never goes backwards, nor the durable term, vote (within a term) and commit,
//! nor the commit index within a run; the core's writes follow the storage contract.
//!
//! **Hostile mode** also lets the input rewrite messages in flight (terms and indexes out of
//! range, wrong ids, cut or reordered entries) and forge messages from arbitrary bytes through
//! the codec, sent as a member, a stranger or the node itself. A hostile member can break
//! Raft's guarantees (Raft trusts its leader), so only what must hold whatever peers send is
//! checked: no panic, the storage contract, and each node's own monotonic term, durable state
//! and commit index.
#![no_main]

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use raftkit_core::{
    Action, AppendEntries, AppendResponse, Config, Entry, HardState, InitialState, InstallSnapshot,
    Instant, LogId, LogIndex, LogWrite, MAX_INDEX, MAX_TERM, Message, MessageBody, NodeId,
    RaftCore, ReadId, ReadMode, Role, SnapshotMeta, Term, WriteId, codec,
};

const NODES: u64 = 3;
/// Messages kept in flight at most (more are dropped, as a full queue would).
const MAX_NET: usize = 256;
/// Operations per input at most, so one input cannot run for long.
const MAX_OPS: usize = 4096;

/// A node's durable storage (the simulation tests' store).
#[derive(Default)]
struct Store {
    hard_state: HardState,
    purged: LogId,
    /// `entries[i]` has index `purged.index + 1 + i`.
    entries: Vec<Entry>,
}

impl Store {
    fn last(&self) -> LogId {
        self.entries.last().map_or(self.purged, |e| e.log_id)
    }

    fn get(&self, index: LogIndex) -> Option<&Entry> {
        let offset = index.0.checked_sub(self.purged.index.0 + 1)?;
        self.entries.get(usize::try_from(offset).ok()?)
    }

    /// Applies a write, checking the storage contract and that durable state only moves forward.
    fn apply(&mut self, id: NodeId, w: &LogWrite) {
        if let Some(hs) = w.hard_state {
            let old = self.hard_state;
            assert!(hs.term >= old.term, "{id}: durable term went backwards: {old:?} -> {hs:?}");
            if hs.term == old.term && old.vote.is_some() {
                assert_eq!(hs.vote, old.vote, "{id}: durable vote changed within {}", hs.term);
            }
            assert!(
                hs.commit >= old.commit,
                "{id}: durable commit went backwards: {old:?} -> {hs:?}"
            );
            self.hard_state = hs;
        }
        if let Some(t) = w.truncate_from {
            assert!(t > self.purged.index, "{id}: truncate_from {t} at or below the purged prefix");
            assert!(t <= self.last().index.next(), "{id}: truncate_from {t} beyond the end");
            self.entries.truncate((t.0 - self.purged.index.0 - 1) as usize);
        }
        let mut prev_term = self.last().term;
        for e in &w.entries {
            assert_eq!(e.index(), self.last().index.next(), "{id}: gap in an append");
            assert!(e.term() >= prev_term, "{id}: appended term decreases at {}", e.log_id);
            prev_term = e.term();
            self.entries.push(e.clone());
        }
    }

    fn purge(&mut self, id: NodeId, up_to: LogId) {
        if up_to.index <= self.purged.index {
            return;
        }
        assert_eq!(self.get(up_to.index).map(|e| e.log_id), Some(up_to), "{id}: bad purge");
        self.entries.drain(..(up_to.index.0 - self.purged.index.0) as usize);
        self.purged = up_to;
    }

    fn install(&mut self, s: LogId) {
        if s.index > self.purged.index && self.get(s.index).map(|e| e.log_id) == Some(s) {
            self.entries.drain(..(s.index.0 - self.purged.index.0) as usize);
            self.purged = s;
        } else if s.index > self.purged.index {
            self.entries.clear();
            self.purged = s;
        }
    }

    fn read(&self, first: LogIndex, last: LogIndex) -> Option<Vec<Entry>> {
        if first <= self.purged.index || last > self.last().index || first > last {
            return None;
        }
        (first.0..=last.0).map(|i| self.get(LogIndex(i)).cloned()).collect()
    }

    fn initial_state(&self, snapshot: Option<SnapshotMeta>) -> InitialState {
        let mut term_runs: Vec<LogId> = Vec::new();
        for e in &self.entries {
            if term_runs.last().is_none_or(|r| r.term != e.term()) {
                term_runs.push(e.log_id);
            }
        }
        let applied = snapshot.as_ref().map_or(LogIndex(0), |s| s.last_log_id.index);
        // The configuration entries after the snapshot, as the engine finds them at startup.
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
            term_runs,
            last: self.last(),
            applied,
            snapshot,
            memberships,
        }
    }
}

/// A storage operation, completed in order when the input says so.
enum StoreOp {
    Write(WriteId, LogWrite),
    Purge(LogId),
    Install(NodeId, SnapshotMeta, Vec<u8>),
}

struct Node {
    id: NodeId,
    cfg: Config,
    core: Option<RaftCore>,
    store: Store,
    pending: VecDeque<StoreOp>,
    /// The state machine: the entries applied, in order (after a hostile snapshot whose content
    /// is not a list of entries, what was applied after it).
    applied: Vec<Entry>,
    /// The last entry the state machine has (applied, or restored from a snapshot).
    applied_last: LogId,
    /// The latest snapshot: meta and content (the encoded applied entries).
    snapshot: Option<(SnapshotMeta, Vec<u8>)>,
    /// A snapshot being received.
    incoming: Option<(SnapshotMeta, Vec<u8>)>,
    max_term: Term,
    /// The vote last seen in `max_term`.
    vote_seen: Option<NodeId>,
    commit_seen: LogIndex,
    leader_in: Option<Term>,
}

struct Cluster {
    hostile: bool,
    now: Instant,
    nodes: Vec<Node>,
    /// (from, to, message), in any order.
    net: Vec<(NodeId, NodeId, Message)>,
    leader_of_term: BTreeMap<Term, NodeId>,
    grants: BTreeMap<(NodeId, Term), NodeId>,
    committed: BTreeMap<LogIndex, LogId>,
    applied_at: BTreeMap<LogIndex, Entry>,
    /// Reads asked for and not answered, by (node, read id): the highest index committed
    /// anywhere when the read was asked (its read index must not be below it).
    read_floors: BTreeMap<(usize, u64), LogIndex>,
    next_read: u64,
}

fn checksum(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// A state machine restored from snapshot content: the entries it lists. A hostile leader's
/// snapshot may hold anything; the state machine then starts empty after it.
fn restore(data: &[u8], hostile: bool) -> Vec<Entry> {
    match codec::decode(data) {
        Ok(entries) => entries,
        Err(e) => {
            assert!(hostile, "honest snapshot content does not decode: {e}");
            Vec::new()
        }
    }
}

impl Cluster {
    fn new(u: &mut Unstructured<'_>) -> Result<Cluster> {
        let hostile = u.ratio(1, 3)?;
        let seed = u.arbitrary::<u64>()?;
        let members: Vec<NodeId> = (1..=NODES).map(NodeId).collect();
        let mut base = Config::new(NodeId(1), members.clone());
        base.heartbeat_interval = Duration::from_millis(20);
        base.election_timeout_min = Duration::from_millis(100);
        base.election_timeout_max = Duration::from_millis(200);
        base.seed = seed;
        base.pre_vote = u.arbitrary()?;
        base.check_quorum = u.arbitrary()?;
        base.entry_cache_bytes = u.int_in_range(0..=1024)?;
        base.max_entries_per_message = u.int_in_range(1..=8)?;
        base.max_bytes_per_message = u.int_in_range(1..=256)?;
        base.max_inflight_messages = u.int_in_range(1..=4)?;
        base.max_inflight_bytes = u.int_in_range(1..=1024)?;
        base.max_apply_batch = u.int_in_range(1..=8)?;
        base.snapshot_every = if u.arbitrary()? { u.int_in_range(1..=12)? } else { 0 };
        base.snapshot_log_bytes = 0;
        base.snapshot_keep = u.int_in_range(0..=4)?;
        base.snapshot_chunk_bytes = u.int_in_range(1..=64)?;
        #[cfg(feature = "mutants")]
        {
            // A broken core on every node, to show that the checks catch it.
            base.mutant = std::env::var("RAFTKIT_MUTANT").ok().map(|name| {
                let all = raftkit_core::Mutant::ALL;
                *all.iter()
                    .find(|m| format!("{m:?}") == name)
                    .expect("RAFTKIT_MUTANT names a mutant")
            });
        }
        let nodes = members
            .iter()
            .map(|&id| {
                let mut cfg = base.clone();
                cfg.id = id;
                let core = RaftCore::new(cfg.clone(), InitialState::default(), Instant::ZERO)
                    .expect("valid config");
                Node {
                    id,
                    cfg,
                    core: Some(core),
                    store: Store::default(),
                    pending: VecDeque::new(),
                    applied: Vec::new(),
                    applied_last: LogId::ZERO,
                    snapshot: None,
                    incoming: None,
                    max_term: Term(0),
                    vote_seen: None,
                    commit_seen: LogIndex(0),
                    leader_in: None,
                }
            })
            .collect();
        let mut c = Cluster {
            hostile,
            now: Instant::ZERO,
            nodes,
            net: Vec::new(),
            leader_of_term: BTreeMap::new(),
            grants: BTreeMap::new(),
            committed: BTreeMap::new(),
            read_floors: BTreeMap::new(),
            next_read: 0,
            applied_at: BTreeMap::new(),
        };
        for i in 0..c.nodes.len() {
            c.drain(i);
        }
        Ok(c)
    }

    fn pick_node(&self, u: &mut Unstructured<'_>) -> Result<usize> {
        u.choose_index(self.nodes.len())
    }

    /// One operation chosen by the input.
    fn op(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        let kind = u.arbitrary::<u8>()? % if self.hostile { 16 } else { 14 };
        match kind {
            // Deliveries are the most common operation.
            0..=2 if !self.net.is_empty() => {
                let i = u.choose_index(self.net.len())?;
                let (from, to, msg) = self.net.swap_remove(i);
                self.deliver(from, to, msg);
            }
            3 if !self.net.is_empty() => {
                let i = u.choose_index(self.net.len())?;
                self.net.swap_remove(i);
            }
            4 if !self.net.is_empty() => {
                let i = u.choose_index(self.net.len())?;
                let (from, to, msg) = self.net[i].clone();
                self.deliver(from, to, msg);
            }
            5 | 6 => {
                let n = self.pick_node(u)?;
                self.complete(n);
            }
            7 => {
                let n = self.pick_node(u)?;
                self.fire_timer(n);
            }
            8 => {
                let ms = u.int_in_range(1..=250)?;
                self.now = self.now + Duration::from_millis(ms);
            }
            9 => {
                let n = self.pick_node(u)?;
                let count = u.int_in_range(1..=3)?;
                let mut cmds = Vec::new();
                for _ in 0..count {
                    let len = u.int_in_range(0..=24)?;
                    cmds.push(bytes::Bytes::copy_from_slice(u.bytes(len)?));
                }
                let now = self.now;
                if let Some(core) = self.nodes[n].core.as_mut() {
                    let _ = core.propose_batch(now, cmds.into_iter());
                }
                self.drain(n);
            }
            10 => {
                let n = self.pick_node(u)?;
                let now = self.now;
                let which = u.arbitrary::<u8>()? % 7;
                let peer = NodeId(u.int_in_range(1..=NODES)?);
                let floor = self.committed.last_key_value().map_or(LogIndex(0), |(i, _)| *i);
                self.next_read += 1;
                let read = self.next_read;
                if let Some(core) = self.nodes[n].core.as_mut() {
                    match which {
                        0 => core.campaign(now),
                        1 => {
                            core.trigger_snapshot();
                        }
                        2 => core.handle_unreachable(peer),
                        3 => core.handle_snapshot_send_failed(peer),
                        // Reads by ReadIndex, on the leader or through it. (Not leases: they
                        // assume messages are delayed less than an election timeout, which
                        // this schedule does not respect.)
                        4 => {
                            let mode = if u.arbitrary::<bool>()? {
                                ReadMode::ReadIndex
                            } else {
                                ReadMode::Follower
                            };
                            if core.read_index(now, ReadId(read), mode).is_ok() {
                                self.read_floors.insert((n, read), floor);
                            }
                        }
                        5 => {
                            let to = if u.arbitrary::<bool>()? { Some(peer) } else { None };
                            let _ = core.transfer_leadership(now, to);
                        }
                        _ => {
                            let len = u.int_in_range(0..=16)?;
                            let cmd = bytes::Bytes::copy_from_slice(u.bytes(len)?);
                            let _ = core.forward(now, read, vec![cmd]);
                        }
                    }
                }
                self.drain(n);
            }
            11 => {
                let n = self.pick_node(u)?;
                if self.nodes[n].core.is_some() {
                    self.crash(n);
                } else {
                    self.restart(n);
                }
            }
            12 | 13 => {
                let steps = u.int_in_range(1..=64)?;
                for _ in 0..steps {
                    self.fair_step();
                }
            }
            14 if !self.net.is_empty() => {
                let i = u.choose_index(self.net.len())?;
                let (from, to, mut msg) = self.net.swap_remove(i);
                mutate(u, &mut msg)?;
                self.deliver(from, to, msg);
            }
            15 => {
                let len = u.int_in_range(0..=96)?;
                let bytes = u.bytes(len)?;
                let from = NodeId(u.int_in_range(1..=NODES + 1)?);
                let to = NodeId(u.int_in_range(1..=NODES)?);
                if let Ok(msg) = codec::decode_message(bytes) {
                    self.deliver(from, to, msg);
                }
            }
            _ => self.fair_step(),
        }
        for i in 0..self.nodes.len() {
            self.check_node(i);
        }
        if !self.hostile {
            self.check_log_matching();
        }
        Ok(())
    }

    /// A fair schedule: storage first, then the oldest message, then the earliest timer.
    fn fair_step(&mut self) {
        if let Some(n) = self.nodes.iter().position(|n| !n.pending.is_empty()) {
            self.complete(n);
        } else if !self.net.is_empty() {
            let (from, to, msg) = self.net.remove(0);
            self.deliver(from, to, msg);
        } else if let Some(n) = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].core.as_ref().and_then(|c| c.poll_timeout()).is_some())
            .min_by_key(|&i| self.nodes[i].core.as_ref().and_then(|c| c.poll_timeout()))
        {
            self.fire_timer(n);
        }
    }

    fn fire_timer(&mut self, n: usize) {
        let Some(core) = self.nodes[n].core.as_mut() else { return };
        if let Some(t) = core.poll_timeout() {
            self.now = self.now.max(t);
        }
        core.handle_timeout(self.now);
        self.drain(n);
    }

    fn deliver(&mut self, from: NodeId, to: NodeId, msg: Message) {
        let n = (to.0 - 1) as usize;
        let now = self.now;
        let Some(core) = self.nodes[n].core.as_mut() else { return };
        core.handle_message(now, from, msg);
        self.drain(n);
    }

    fn send(&mut self, from: NodeId, to: NodeId, msg: Message) {
        if !self.hostile {
            if let MessageBody::VoteResponse(v) = &msg.body {
                if v.granted && !v.pre_vote {
                    if let Some(prev) = self.grants.insert((from, msg.term), to) {
                        assert_eq!(prev, to, "{from} voted for {prev} and {to} in {}", msg.term);
                    }
                }
            }
        }
        if self.net.len() < MAX_NET && (1..=NODES).contains(&to.0) {
            self.net.push((from, to, msg));
        }
    }

    fn crash(&mut self, n: usize) {
        self.read_floors.retain(|(m, _), _| *m != n);
        let node = &mut self.nodes[n];
        node.core = None;
        node.pending.clear();
        node.applied.clear();
        node.applied_last = LogId::ZERO;
        node.incoming = None;
        node.commit_seen = LogIndex(0);
        node.leader_in = None;
    }

    fn restart(&mut self, n: usize) {
        let now = self.now;
        let node = &mut self.nodes[n];
        let init = node.store.initial_state(node.snapshot.as_ref().map(|s| s.0.clone()));
        node.applied = match &node.snapshot {
            Some((_, data)) => restore(data, self.hostile),
            None => Vec::new(),
        };
        node.applied_last = node.snapshot.as_ref().map_or(LogId::ZERO, |s| s.0.last_log_id);
        node.max_term = init.hard_state.term;
        node.vote_seen = init.hard_state.vote;
        let core = RaftCore::new(node.cfg.clone(), init, now).expect("restart from durable state");
        node.core = Some(core);
        self.drain(n);
    }

    /// Completes the node's next storage operation.
    fn complete(&mut self, n: usize) {
        let now = self.now;
        let node = &mut self.nodes[n];
        let id = node.id;
        let Some(op) = node.pending.pop_front() else { return };
        match op {
            StoreOp::Write(wid, w) => {
                node.store.apply(id, &w);
                if let Some(core) = node.core.as_mut() {
                    core.handle_persisted(now, wid);
                }
            }
            StoreOp::Purge(up_to) => node.store.purge(id, up_to),
            StoreOp::Install(from, meta, data) => {
                let restored = restore(&data, self.hostile);
                node.store.install(meta.last_log_id);
                node.applied = restored.clone();
                node.applied_last = meta.last_log_id;
                node.snapshot = Some((meta.clone(), data));
                if let Some(core) = node.core.as_mut() {
                    core.handle_snapshot_received(now, from, meta.clone(), meta.size, true);
                }
                if !self.hostile {
                    for e in restored {
                        self.check_applied(id, e);
                    }
                }
            }
        }
        self.drain(n);
    }

    /// Carries out every action the node has.
    fn drain(&mut self, n: usize) {
        let id = self.nodes[n].id;
        loop {
            let now = self.now;
            let node = &mut self.nodes[n];
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
                    node.pending.push_back(StoreOp::Write(req.id, req.write));
                }
                Action::PurgeLog(up_to) => node.pending.push_back(StoreOp::Purge(up_to)),
                Action::BuildSnapshot => {
                    let data = codec::encode(&node.applied).expect("encode");
                    let last = node.applied_last;
                    let meta = SnapshotMeta {
                        last_log_id: last,
                        membership: core.membership_at(last.index).clone(),
                        size: data.len() as u64,
                        checksum: checksum(&data),
                    };
                    node.snapshot = Some((meta.clone(), data));
                    core.handle_snapshot_built(now, meta);
                }
                Action::SendSnapshot(req) => {
                    let chunk = match &node.snapshot {
                        Some((meta, data)) if *meta == req.meta => {
                            let end = req.offset.checked_add(req.len);
                            end.and_then(|e| data.get(req.offset as usize..e as usize))
                                .map(<[u8]>::to_vec)
                        }
                        _ => None,
                    };
                    match chunk {
                        Some(data) => {
                            let done = req.offset + req.len == req.meta.size;
                            let body = MessageBody::InstallSnapshot(InstallSnapshot {
                                meta: req.meta,
                                offset: req.offset,
                                data: data.into(),
                                done,
                            });
                            self.send(id, req.to, Message { term: req.term, body });
                        }
                        None => core.handle_snapshot_send_failed(req.to),
                    }
                }
                Action::ReceiveSnapshot(r) => {
                    let c = r.chunk;
                    if node.incoming.as_ref().is_none_or(|(m, _)| *m != c.meta) {
                        node.incoming = Some((c.meta.clone(), Vec::new()));
                    }
                    let (meta, buf) = node.incoming.as_mut().expect("just set");
                    let meta = meta.clone();
                    if c.offset == buf.len() as u64 {
                        buf.extend_from_slice(&c.data);
                    }
                    let received = buf.len() as u64;
                    if c.done && received == meta.size {
                        let data = std::mem::take(buf);
                        node.incoming = None;
                        // Like the engine, check the checksum only: the content is the state
                        // machine's business (in hostile mode it may be anything).
                        let ok = checksum(&data) == meta.checksum;
                        assert!(
                            self.hostile
                                || ok
                                    && codec::decode::<Vec<Entry>>(&data).is_ok_and(|es| {
                                        es.len() as u64 == meta.last_log_id.index.0
                                            && es.last().map_or(LogId::ZERO, |e| e.log_id)
                                                == meta.last_log_id
                                    }),
                            "{id}: a snapshot from an honest leader is bad"
                        );
                        if ok {
                            node.pending.push_back(StoreOp::Install(r.from, meta, data));
                        } else {
                            core.handle_snapshot_received(now, r.from, meta, 0, false);
                        }
                    } else {
                        core.handle_snapshot_received(now, r.from, meta, received, false);
                    }
                }
                Action::Send(out) => self.send(id, out.to, out.message),
                Action::SendFromLog(req) => {
                    let entries = node.store.read(req.prev_log_id.index.next(), req.last.index);
                    if let Some(mut entries) =
                        entries.filter(|es| es.last().map(|e| e.log_id) == Some(req.last))
                    {
                        // The longest prefix within `max_bytes`, at least one entry.
                        let mut total = 0;
                        let keep = entries
                            .iter()
                            .take_while(|e| {
                                total += e.size_hint();
                                total <= req.max_bytes
                            })
                            .count()
                            .max(1);
                        entries.truncate(keep);
                        let body = MessageBody::AppendEntries(AppendEntries {
                            prev_log_id: req.prev_log_id,
                            entries,
                            leader_commit: req.leader_commit,
                        });
                        self.send(id, req.to, Message { term: req.term, body });
                    }
                }
                Action::Apply(req) => {
                    let entries = match req.entries {
                        Some(e) => e,
                        None => node
                            .store
                            .read(req.first, req.last.index)
                            .expect("the apply range is durable"),
                    };
                    assert_eq!(entries.first().map(|e| e.index()), Some(req.first));
                    assert_eq!(entries.last().map(|e| e.log_id), Some(req.last));
                    for e in &entries {
                        assert_eq!(
                            e.index(),
                            node.applied_last.index.next(),
                            "{id}: applied out of order"
                        );
                        node.applied_last = e.log_id;
                        node.applied.push(e.clone());
                    }
                    core.handle_applied(req.last.index);
                    if !self.hostile {
                        for e in entries {
                            self.check_applied(id, e);
                        }
                    }
                }
                Action::ReadIndex(r) => {
                    let floor = self.read_floors.remove(&(n, r.id.0));
                    if !self.hostile {
                        let floor = floor.expect("a read answered twice, or never asked");
                        if let Ok(index) = r.result {
                            assert!(
                                index >= floor,
                                "{id}: stale read: index {index}, but {floor} was committed when it was asked"
                            );
                        }
                    }
                }
                Action::Forwarded(_) => {}
            }
        }
    }

    /// State-machine safety: every node applies the same entry at each index.
    fn check_applied(&mut self, id: NodeId, e: Entry) {
        let prev = self.applied_at.entry(e.index()).or_insert_with(|| e.clone());
        assert_eq!(*prev, e, "state machine safety violated: {id} applied another entry");
    }

    fn check_node(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        let id = node.id;
        let Some(core) = node.core.as_ref() else { return };
        assert!(core.term() >= node.max_term, "{id}: term went backwards");
        if core.term() == node.max_term && node.vote_seen.is_some() {
            assert_eq!(core.vote(), node.vote_seen, "{id}: vote changed within {}", core.term());
        }
        node.max_term = core.term();
        node.vote_seen = core.vote();
        assert!(core.durable_hard_state().term <= core.term(), "{id}: durable term ahead");
        let commit = core.commit_index();
        assert!(commit >= node.commit_seen, "{id}: commit index went backwards");
        if self.hostile {
            node.commit_seen = commit;
            return;
        }
        // Commit agreement: whatever any node considers committed is the same everywhere and
        // never changes. Below the purged prefix entries live on in the snapshot.
        let mut i = node.commit_seen.next().max(core.purged_log_id().index.next());
        while i <= commit {
            let log_id = core.log_id_at(i).expect("a committed entry is in the log");
            let prev = *self.committed.entry(i).or_insert(log_id);
            assert_eq!(prev, log_id, "two entries committed at {i}: {prev} and {log_id} ({id})");
            i = i.next();
        }
        node.commit_seen = commit;
        if core.role() == Role::Leader && node.leader_in != Some(core.term()) {
            let term = core.term();
            node.leader_in = Some(term);
            let other = *self.leader_of_term.entry(term).or_insert(id);
            assert_eq!(other, id, "two leaders in {term}: {other} and {id}");
            // Leader completeness: a new leader has every committed entry.
            for (index, log_id) in self.committed.range(core.purged_log_id().index.next()..) {
                assert_eq!(
                    core.log_id_at(*index),
                    Some(*log_id),
                    "leader completeness violated: {id} (leader of {term}) lacks {log_id}"
                );
            }
        }
    }

    /// Log matching over the durable logs: two logs with the same id at an index are identical
    /// up to it.
    fn check_log_matching(&self) {
        for (i, a) in self.nodes.iter().enumerate() {
            for b in &self.nodes[i + 1..] {
                let (a_s, b_s) = (&a.store, &b.store);
                let lo = a_s.purged.index.max(b_s.purged.index).next();
                let hi = a_s.last().index.min(b_s.last().index);
                let mut k = hi;
                while k >= lo && a_s.get(k).map(|e| e.log_id) != b_s.get(k).map(|e| e.log_id) {
                    k = k.prev();
                }
                let mut j = lo;
                while j <= k && k >= lo {
                    assert_eq!(
                        a_s.get(j),
                        b_s.get(j),
                        "log matching violated between {} and {}: same entry at {k}, differ at {j}",
                        a.id,
                        b.id
                    );
                    j = j.next();
                }
            }
        }
    }
}

/// A value a hostile peer might send in place of `v`: nearby, at or past the protocol's limits,
/// or anything.
fn wild(u: &mut Unstructured<'_>, v: u64, max: u64) -> Result<u64> {
    Ok(match u.arbitrary::<u8>()? % 8 {
        0 => 0,
        1 => v.saturating_add(u.int_in_range(1..=3)?),
        2 => v.saturating_sub(u.int_in_range(1..=3)?),
        3 => max,
        4 => max.saturating_add(1),
        5 => u64::MAX,
        6 => u64::from(u.arbitrary::<u8>()?),
        _ => u.arbitrary()?,
    })
}

fn wild_id(u: &mut Unstructured<'_>, id: &mut LogId) -> Result<()> {
    if u.arbitrary()? {
        id.term = Term(wild(u, id.term.0, MAX_TERM)?);
    }
    if u.arbitrary()? {
        id.index = LogIndex(wild(u, id.index.0, MAX_INDEX)?);
    }
    Ok(())
}

/// Rewrites fields of a message in flight.
fn mutate(u: &mut Unstructured<'_>, msg: &mut Message) -> Result<()> {
    if u.arbitrary()? {
        msg.term = Term(wild(u, msg.term.0, MAX_TERM)?);
    }
    match &mut msg.body {
        MessageBody::RequestVote(r) => {
            r.pre_vote ^= u.arbitrary::<bool>()?;
            wild_id(u, &mut r.last_log_id)?;
        }
        MessageBody::VoteResponse(v) => {
            v.pre_vote ^= u.arbitrary::<bool>()?;
            v.granted ^= u.arbitrary::<bool>()?;
        }
        MessageBody::AppendEntries(a) => {
            wild_id(u, &mut a.prev_log_id)?;
            if u.arbitrary()? {
                a.leader_commit = LogIndex(wild(u, a.leader_commit.0, MAX_INDEX)?);
            }
            match u.arbitrary::<u8>()? % 4 {
                0 if !a.entries.is_empty() => {
                    let i = u.choose_index(a.entries.len())?;
                    wild_id(u, &mut a.entries[i].log_id)?;
                }
                1 if !a.entries.is_empty() => {
                    let keep = u.choose_index(a.entries.len())?;
                    a.entries.truncate(keep);
                }
                2 if a.entries.len() > 1 => {
                    let last = a.entries.len() - 1;
                    a.entries.swap(0, last);
                }
                _ => {}
            }
        }
        MessageBody::AppendResponse(AppendResponse::Success { match_index }) => {
            *match_index = LogIndex(wild(u, match_index.0, MAX_INDEX)?);
        }
        MessageBody::AppendResponse(AppendResponse::Reject { rejected, hint }) => {
            *rejected = LogIndex(wild(u, rejected.0, MAX_INDEX)?);
            wild_id(u, hint)?;
        }
        MessageBody::Heartbeat(h) => {
            h.commit = LogIndex(wild(u, h.commit.0, MAX_INDEX)?);
            h.round = wild(u, h.round, u64::MAX)?;
        }
        MessageBody::HeartbeatResponse(a) => a.round = wild(u, a.round, u64::MAX)?,
        MessageBody::ReadIndexResponse(r) => r.index = LogIndex(wild(u, r.index.0, MAX_INDEX)?),
        MessageBody::InstallSnapshot(s) => {
            wild_id(u, &mut s.meta.last_log_id)?;
            if u.arbitrary()? {
                s.offset = wild(u, s.offset, s.meta.size)?;
            }
            if u.arbitrary()? {
                s.meta.size = wild(u, s.meta.size, u64::from(u32::MAX))?;
            }
            s.done ^= u.arbitrary::<bool>()?;
        }
        MessageBody::SnapshotResponse(r) => {
            wild_id(u, &mut r.snapshot)?;
            r.next_offset = wild(u, r.next_offset, u64::from(u32::MAX))?;
            r.installed ^= u.arbitrary::<bool>()?;
        }
        _ => {}
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(mut cluster) = Cluster::new(&mut u) else { return };
    for _ in 0..MAX_OPS {
        if u.is_empty() || cluster.op(&mut u).is_err() {
            break;
        }
    }
});
