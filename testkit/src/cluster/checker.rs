//! The invariant checker. It sees every node's protocol state after each driver turn (an
//! [`Observer`]), every message a node sends (through the fault-injecting network), every entry
//! applied (through the state machine), what each node's store acknowledged and when it failed
//! (through the tracking store wrapper), and the logs in the stores at checkpoints. Violations
//! are recorded, not panicked on, so the run can finish and print a full report. Each violation
//! starts with the name of the check that fired, in plain words ("election safety: …").
//!
//! Checked: election safety (one leader per term, elected by a quorum of votes granted in that
//! term, as seen on the wire, counted in the configuration the leader was elected under);
//! membership (a node that is not a voter of its configuration never becomes leader; learners
//! never grant votes or pre-votes; at most one uncommitted configuration entry in a leader's
//! log, appended only once an entry of its term is committed; a leader steps down once a
//! configuration without it commits); commit quorum (a leader's commit is acknowledged on the
//! wire by a quorum of its configuration, and its latest configuration's entry by a quorum of
//! that configuration); leader append-only (within its term a leader never changes or
//! removes an entry it has: as seen in every AppendEntries it sends, and in its last log index
//! between driver turns); one vote per node per term; term, commit and applied never go
//! backwards; the durable term, vote and commit never go backwards, across restarts; a leader
//! advances its commit index only to entries of its own term (Raft §5.4.2); all nodes agree on
//! what is committed; state-machine safety (the same entry at every index, applied in order
//! without gaps, and the same whole state after the same entry, snapshots included); persist
//! before send (nothing that depends on durable state is sent before it is durable, by the
//! store's durable view); a failed store (after a node's store failed, it acknowledges, votes
//! and applies nothing beyond what the store had acknowledged); store reads (a checkpoint's
//! read of a store returns exactly the entries asked for, checked before anything is judged
//! from it); log matching; leader completeness; durability (every committed entry is held
//! durably on a quorum of the configuration in force at it, or of a later one); no livelock (messages sent without end while a paused clock stands
//! still: reported, then the network drops everything so the run can end).

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use raftkit::store::LogShape;
use raftkit::{
    AppendResponse, Entry, EntryPayload, HardState, LogId, LogIndex, Membership, Message,
    MessageBody, NodeId, NodeStatus, Observer, Role, Term,
};

pub use super::store_read::{NodeLog, StoreRead};
use crate::harness::DurableView;
use crate::kv::{ApplyRecorder, Fnv};

/// What a node's store has acknowledged: by the `LogStore` contract, a write, purge or install
/// that returned `Ok` is durable, so this is what the store holds durably, at the least.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acknowledged {
    /// The last hard state a write that returned `Ok` carried.
    pub hard_state: HardState,
    /// The shape of the log those writes, purges and installs left (the term of every index).
    pub shape: LogShape,
}

impl DurableView for Acknowledged {
    fn hard_state(&self) -> HardState {
        self.hard_state
    }

    fn last(&self) -> LogId {
        self.shape.last()
    }

    fn term_at(&self, index: LogIndex) -> Option<Term> {
        self.shape.term_at(index)
    }
}

#[derive(Default)]
struct Track {
    incarnation: u32,
    last: Option<NodeStatus>,
    /// (term, commit) when this node last became leader.
    leader_since: Option<(Term, LogIndex)>,
    /// The highest durable hard state ever seen (across incarnations).
    max_durable: HardState,
    /// The next index this incarnation must apply.
    next_apply: Option<u64>,
    /// In this incarnation the store failed, having acknowledged this much: from then on the
    /// node may rely on nothing more.
    failed: Option<Acknowledged>,
}

#[derive(Default)]
struct State {
    violations: Vec<String>,
    trace: Vec<String>,
    leaders: BTreeMap<Term, NodeId>,
    votes: BTreeMap<(NodeId, Term), NodeId>,
    committed: BTreeMap<LogIndex, LogId>,
    /// The highest commit index any node reported while in each term: everything up to it was
    /// committed by that term at the latest.
    commit_by_term: BTreeMap<Term, LogIndex>,
    applied: BTreeMap<u64, (LogId, u64)>,
    nodes: BTreeMap<NodeId, Track>,
    durable: BTreeMap<NodeId, Arc<dyn DurableView>>,
    chunks: Vec<ChunkSent>,
    restores: BTreeMap<NodeId, Vec<LogId>>,
    /// The state-machine digest first reported at each applied index, and by whom.
    states: BTreeMap<u64, (LogId, u64, NodeId)>,
    /// Every entry each leader sent in its term, by index: (entry id, payload digest). A leader
    /// never changes what it holds at an index during its term.
    leader_logs: BTreeMap<(NodeId, Term), BTreeMap<u64, (LogId, u64)>>,
    /// The instant of the last message sent, and how many were sent at it.
    instant: Option<tokio::time::Instant>,
    at_instant: u64,
    /// Set once the nodes livelocked: from then on every message is dropped.
    livelocked: bool,
    /// Every configuration entry seen on the wire (in AppendEntries, or as a snapshot's
    /// configuration, keyed by the snapshot's last id), by (index, term).
    configs: BTreeMap<(LogIndex, Term), Membership>,
    /// Vote grants (voter -> [(candidate, term, pre-vote)]) a node sent while its last status
    /// said it was no voter: a violation if its next status says so too (a node may become a
    /// voter and vote within one driver turn, before its status is published).
    suspect_votes: BTreeMap<NodeId, Vec<(NodeId, Term, bool)>>,
    /// The highest index each node acknowledged to each leader in its term (an append's match
    /// index, or an installed snapshot's last index), by (leader, term): what a leader may
    /// count toward a commit, at most (not every acknowledgement sent is received).
    acks: BTreeMap<(NodeId, Term), BTreeMap<NodeId, LogIndex>>,
}

impl State {
    /// The configuration a status's `membership` id names, if known: the configuration entry
    /// seen on the wire with that id; for [`LogId::ZERO`] the initial one; for a snapshot's id
    /// (a log holding no configuration entry after its snapshot), the latest configuration
    /// committed (applied anywhere) at or before it, or the initial one.
    fn config_of(&self, initial: &Membership, id: LogId) -> Option<Membership> {
        if let Some(m) = self.configs.get(&(id.index, id.term)) {
            return Some(m.clone());
        }
        if id == LogId::ZERO {
            return Some(initial.clone());
        }
        if self.applied.get(&id.index.0).is_none_or(|(applied, _)| *applied != id) {
            // Neither a configuration entry seen nor a committed entry (a snapshot's last id
            // is committed): unknown.
            return None;
        }
        Some(self.committed_config_at(initial, id.index))
    }

    /// The configuration in force at `index` of the committed log: the latest configuration
    /// entry at or before it that was applied somewhere, else the initial one.
    fn committed_config_at(&self, initial: &Membership, index: LogIndex) -> Membership {
        self.configs
            .range(..=(index, Term(u64::MAX)))
            .rev()
            .find(|((i, t), _)| {
                self.applied.get(&i.0).is_some_and(|(id, _)| id.index == *i && id.term == *t)
            })
            .map_or_else(|| initial.clone(), |(_, m)| m.clone())
    }

    /// Whether any configuration other than the initial one was seen.
    fn membership_changed(&self, initial: &Membership) -> bool {
        self.configs.values().any(|m| m != initial)
    }
}

/// The voters of `m`, in words ("n1, n2, n3", or "n1, n2, n3 and n3, n4, n5" when joint).
fn voters_in_words(m: &Membership) -> String {
    m.configs()
        .iter()
        .map(|c| c.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", "))
        .collect::<Vec<_>>()
        .join(" and ")
}

/// How many messages sent at one instant of a paused clock make a livelock: fifty times the most
/// seen in passing runs of the suite (about 2,000, a burst of catch-up traffic); a livelock
/// sends them without end.
pub const LIVELOCK_MESSAGES: u64 = 100_000;

/// A digest of an entry's payload, cheap for application data.
fn payload_digest(e: &Entry) -> u64 {
    let mut h = Fnv::default();
    match &e.payload {
        raftkit::EntryPayload::Normal(data) => {
            1u8.hash(&mut h);
            data.hash(&mut h);
        }
        other => format!("{other:?}").hash(&mut h),
    }
    h.finish()
}

/// What is wrong with `m`, sent by `from` after its store failed having acknowledged `acked`:
/// anything that relies on more than that (an acknowledgement of entries past it, a vote it
/// does not hold durably).
fn failed_store_sent(
    from: NodeId,
    to: NodeId,
    m: &Message,
    acked: &Acknowledged,
) -> Option<String> {
    let hs = acked.hard_state;
    match &m.body {
        MessageBody::AppendResponse(AppendResponse::Success { match_index })
            if m.term > hs.term || *match_index > acked.shape.last().index =>
        {
            Some(format!(
                "failed store: {from} acknowledged entries up to {match_index} to {to} in {} after \
                 its store failed, but the store had acknowledged only up to {} in {}",
                m.term,
                acked.shape.last(),
                hs.term
            ))
        }
        MessageBody::VoteResponse(vr)
            if vr.granted && !vr.pre_vote && (hs.term != m.term || hs.vote != Some(to)) =>
        {
            Some(format!(
                "failed store: {from} granted its vote to {to} in {} after its store failed, but \
                 the store had acknowledged {hs:?}",
                m.term
            ))
        }
        MessageBody::RequestVote(rv)
            if !rv.pre_vote && (hs.term != m.term || hs.vote != Some(from)) =>
        {
            Some(format!(
                "failed store: {from} asked for votes in {} after its store failed, but the store \
                 had acknowledged {hs:?}",
                m.term
            ))
        }
        _ => None,
    }
}

/// A snapshot chunk a node sent (recorded before any network fault applies).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkSent {
    /// Milliseconds since the run started.
    pub at_ms: u128,
    /// The sender.
    pub from: NodeId,
    /// The receiver.
    pub to: NodeId,
    /// The snapshot's last entry.
    pub snapshot: LogId,
    /// Where the chunk starts in the snapshot.
    pub offset: u64,
    /// Its length in bytes.
    pub len: usize,
    /// Whether it is the last chunk.
    pub done: bool,
    /// The snapshot's size.
    pub size: u64,
}

/// Collects observations and checks the invariants.
pub struct Checker {
    state: Mutex<State>,
    chunk_sent: tokio::sync::Notify,
    epoch: tokio::time::Instant,
    /// The initial configuration (nodes `1..=nodes`, all voters).
    initial: Membership,
    max_violations: usize,
}

impl Checker {
    /// A checker for a cluster whose initial configuration is `nodes` voters, `n1..=n{nodes}`
    /// (nodes with higher ids may join later; configuration changes are learned from the
    /// configuration entries and snapshots the nodes send).
    pub fn new(nodes: usize) -> Checker {
        let initial = Membership::new((1..=nodes as u64).map(NodeId)).expect("at least one voter");
        Checker {
            state: Mutex::new(State::default()),
            chunk_sent: tokio::sync::Notify::new(),
            epoch: tokio::time::Instant::now(),
            initial,
            max_violations: 50,
        }
    }

    /// Whether a configuration other than the initial one was seen (the run changed
    /// membership).
    pub fn membership_changed(&self) -> bool {
        self.lock().membership_changed(&self.initial)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn millis(&self) -> u128 {
        tokio::time::Instant::now().saturating_duration_since(self.epoch).as_millis()
    }

    /// Adds a line to the event trace.
    pub fn note(&self, line: impl AsRef<str>) {
        let t = self.millis();
        self.lock().trace.push(format!("{t:>7}ms {}", line.as_ref()));
    }

    /// Records a violation.
    pub fn violation(&self, what: impl Into<String>) {
        let what = what.into();
        let t = self.millis();
        let mut s = self.lock();
        s.trace.push(format!("{t:>7}ms VIOLATION {what}"));
        if s.violations.len() < self.max_violations {
            s.violations.push(format!("at {t}ms: {what}"));
        }
    }

    /// The violations found so far.
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// The event trace so far.
    pub fn trace(&self) -> Vec<String> {
        self.lock().trace.clone()
    }

    /// The highest committed index seen, with its id.
    pub fn committed(&self) -> BTreeMap<LogIndex, LogId> {
        self.lock().committed.clone()
    }

    /// How many distinct entries were applied.
    pub fn applied_count(&self) -> usize {
        self.lock().applied.len()
    }

    /// Starts a new incarnation of `id` (first start or restart) and returns its number.
    /// `durable` is what the node's store holds durably now; `loaded` is its hard state at start.
    pub fn start_incarnation(
        &self,
        id: NodeId,
        loaded: HardState,
        durable: Option<Arc<dyn DurableView>>,
    ) -> u32 {
        let mut s = self.lock();
        match durable {
            Some(d) => {
                s.durable.insert(id, d);
            }
            None => {
                s.durable.remove(&id);
            }
        }
        s.suspect_votes.remove(&id);
        let t = s.nodes.entry(id).or_default();
        t.incarnation += 1;
        t.last = None;
        t.leader_since = None;
        t.next_apply = None;
        t.failed = None;
        let prev = t.max_durable;
        let inc = t.incarnation;
        drop(s);
        self.check_durable_monotonic(id, prev, loaded, "restart");
        inc
    }

    fn check_durable_monotonic(&self, id: NodeId, prev: HardState, now: HardState, when: &str) {
        if now.term < prev.term {
            self.violation(format!(
                "durable state: {id}'s durable term went back from {} to {} ({when})",
                prev.term, now.term
            ));
        } else if now.term == prev.term && prev.vote.is_some() && now.vote != prev.vote {
            self.violation(format!(
                "durable state: {id}'s durable vote in {} changed from {:?} to {:?} ({when})",
                now.term, prev.vote, now.vote
            ));
        }
        if now.commit < prev.commit {
            self.violation(format!(
                "durable state: {id}'s durable commit went back from {} to {} ({when})",
                prev.commit, now.commit
            ));
        }
        let mut s = self.lock();
        let t = s.nodes.entry(id).or_default();
        let max = &mut t.max_durable;
        if now.term > max.term {
            *max = now;
        } else if now.term == max.term {
            max.vote = max.vote.or(now.vote);
            max.commit = max.commit.max(now.commit);
        }
    }

    /// An observer for one incarnation of a node.
    pub fn observer(self: &Arc<Self>, id: NodeId, incarnation: u32) -> Arc<dyn Observer> {
        Arc::new(NodeWatch { checker: self.clone(), id, incarnation })
    }

    /// An apply recorder for one incarnation of a node.
    pub fn recorder(self: &Arc<Self>, id: NodeId, incarnation: u32) -> Arc<dyn ApplyRecorder> {
        Arc::new(NodeWatch { checker: self.clone(), id, incarnation })
    }

    /// The store of `id` (in `incarnation`) failed: its next write will not be acknowledged,
    /// and it had acknowledged `acked`. From now on, until the node restarts, it must not
    /// acknowledge entries, grant or ask for votes, or apply entries beyond `acked`.
    pub fn on_store_failed(&self, id: NodeId, incarnation: u32, acked: Acknowledged) {
        {
            let mut s = self.lock();
            let t = s.nodes.entry(id).or_default();
            if t.incarnation != incarnation || t.failed.is_some() {
                return;
            }
            t.failed = Some(acked.clone());
        }
        self.note(format!(
            "{id}: its store failed, having acknowledged {:?} and the log up to {}",
            acked.hard_state,
            acked.shape.last()
        ));
    }

    /// Whether the store of `id` failed in its current incarnation.
    pub fn store_failed(&self, id: NodeId) -> bool {
        self.lock().nodes.get(&id).is_some_and(|t| t.failed.is_some())
    }

    fn on_status(&self, id: NodeId, incarnation: u32, st: &NodeStatus) {
        let mut problems = Vec::new();
        let mut notes = Vec::new();
        let prev_durable;
        {
            let mut guard = self.lock();
            let s = &mut *guard;
            let t = s.nodes.entry(id).or_default();
            if t.incarnation != incarnation {
                return;
            }
            prev_durable = t.max_durable;
            if let Some(grants) = s.suspect_votes.remove(&id) {
                if !st.voter {
                    for (cand, term, pre) in grants {
                        problems.push(format!(
                            "learners never vote: {id} granted its {}vote to {cand} in {term} \
                             while not a voter of its configuration (entry {})",
                            if pre { "pre-" } else { "" },
                            st.membership
                        ));
                    }
                }
            }
            let t = s.nodes.entry(id).or_default();
            let last_status = t.last;
            // purged <= snapshot <= applied <= commit <= last.
            let snap = st.snapshot.map_or(LogIndex(0), |s| s.index);
            let ordered = (st.snapshot.is_some() || st.purged.index.0 == 0)
                && st.purged.index <= snap.max(st.purged.index)
                && (st.snapshot.is_none() || st.purged.index <= snap)
                && snap <= st.applied
                && st.applied <= st.commit
                && st.commit <= st.last_log.index;
            if !ordered {
                problems.push(format!(
                    "state order: on {id}, purged {} <= snapshot {snap} <= applied {} <= commit {} <= last {} does not hold",
                    st.purged, st.applied, st.commit, st.last_log
                ));
            }
            if let Some(last) = t.last {
                if st.term < last.term {
                    problems.push(format!(
                        "term: {id}'s term went back from {} to {}",
                        last.term, st.term
                    ));
                }
                if st.applied < last.applied {
                    problems.push(format!(
                        "apply order: {id}'s applied index went back from {} to {}",
                        last.applied, st.applied
                    ));
                }
                if st.commit < last.commit {
                    problems.push(format!(
                        "commit: {id}'s commit index went back from {} to {}",
                        last.commit, st.commit
                    ));
                }
                if last.role == Role::Leader
                    && st.role == Role::Leader
                    && last.term == st.term
                    && st.last_log.index < last.last_log.index
                {
                    problems.push(format!(
                        "leader append-only: {id}, leader of {}, shrank its log from {} to {}",
                        st.term, last.last_log, st.last_log
                    ));
                }
                if (last.role, last.term, last.leader) != (st.role, st.term, st.leader) {
                    notes.push(format!(
                        "{id}: {} in {} (leader {:?}) last={} commit={} stable={}",
                        st.role,
                        st.term,
                        st.leader.map(|l| l.0),
                        st.last_log,
                        st.commit,
                        st.stable
                    ));
                }
            } else {
                notes.push(format!(
                    "{id}: started as {} in {}, last {}",
                    st.role, st.term, st.last_log
                ));
            }
            if st.role == Role::Leader {
                match s.leaders.get(&st.term) {
                    Some(other) if *other != id => {
                        problems.push(format!(
                            "election safety: two leaders in {}: {} and {id}",
                            st.term, other
                        ));
                    }
                    Some(_) => {}
                    None => {
                        s.leaders.insert(st.term, id);
                        if !st.voter {
                            problems.push(format!(
                                "removed leader: {id} became leader of {} while not a voter of \
                                 its configuration (entry {})",
                                st.term, st.membership
                            ));
                        }
                        // A leader must hold a quorum, in the configuration it was elected
                        // under, of votes cast *in its term*: its own and grants that voters
                        // actually sent in that term.
                        let granted: Vec<NodeId> = s
                            .votes
                            .iter()
                            .filter(|((_, term), cand)| *term == st.term && **cand == id)
                            .map(|((voter, _), _)| *voter)
                            .chain(std::iter::once(id))
                            .collect();
                        match s.config_of(&self.initial, st.membership) {
                            Some(m) if !m.has_quorum(|n| granted.contains(&n)) => {
                                problems.push(format!(
                                    "election safety: {id} became leader of {} with {} vote(s) \
                                     granted in that term, not a quorum of its configuration \
                                     ({}; entry {}): it counted votes from another term",
                                    st.term,
                                    granted.iter().filter(|n| m.is_voter(**n)).count(),
                                    voters_in_words(&m),
                                    st.membership
                                ));
                            }
                            Some(_) => {}
                            None => notes.push(format!(
                                "election safety: {id}'s votes in {} not counted: its \
                                 configuration (entry {}) was never seen",
                                st.term, st.membership
                            )),
                        }
                    }
                }
                // A leader that is not a voter of its configuration leads only until that
                // configuration commits: it steps down in the same turn.
                if !st.voter && st.membership.index <= st.commit {
                    problems.push(format!(
                        "removed leader: {id}, leader of {}, is not a voter of its committed \
                         configuration (entry {}, commit {}) but did not step down",
                        st.term, st.membership, st.commit
                    ));
                }
                // A leader appends a configuration entry only once an entry of its term is
                // committed (its own configuration entries are those of its term).
                if st.membership.term == st.term
                    && st.membership.index > st.commit
                    && st.commit_term.is_some_and(|t| t != st.term)
                {
                    problems.push(format!(
                        "change before commit: {id}, leader of {}, appended configuration entry \
                         {} while its commit {} is of {:?}: no entry of its term was committed",
                        st.term, st.membership, st.commit, st.commit_term
                    ));
                }
                // A leader advances its commit only to what a quorum of its configuration (in
                // force before or after this turn) acknowledged, itself included.
                if let Some(l) = last_status
                    .filter(|l| l.role == Role::Leader && l.term == st.term && st.commit > l.commit)
                {
                    let acks = s.acks.get(&(id, st.term));
                    let has = |n: NodeId| {
                        if n == id {
                            st.stable >= st.commit
                        } else {
                            acks.and_then(|a| a.get(&n)).is_some_and(|m| *m >= st.commit)
                        }
                    };
                    let now = s.config_of(&self.initial, st.membership);
                    let before = s.config_of(&self.initial, l.membership);
                    // The commit that first reaches the latest configuration's own entry is
                    // computed under that configuration (no other can be appended while it is
                    // uncommitted): a quorum of it acknowledged its entry.
                    let kb = l.membership.index;
                    if let Some(b) = before.as_ref().filter(|_| l.commit < kb && kb <= st.commit) {
                        let has_kb = |n: NodeId| {
                            if n == id {
                                st.stable >= kb
                            } else {
                                acks.and_then(|a| a.get(&n)).is_some_and(|m| *m >= kb)
                            }
                        };
                        if !b.has_quorum(has_kb) {
                            let holders: Vec<String> = b
                                .nodes()
                                .into_iter()
                                .filter(|n| has_kb(*n))
                                .map(|n| n.to_string())
                                .collect();
                            problems.push(format!(
                                "commit quorum: {id}, leader of {}, committed its configuration \
                                 entry {} but only [{}] had acknowledged it: not a quorum of that \
                                 configuration ({})",
                                st.term,
                                l.membership,
                                holders.join(", "),
                                voters_in_words(b)
                            ));
                        }
                    }
                    if let (Some(a), Some(b)) = (now, before) {
                        if !a.has_quorum(has) && !b.has_quorum(has) {
                            let holders: Vec<String> = a
                                .nodes()
                                .into_iter()
                                .filter(|n| has(*n))
                                .map(|n| n.to_string())
                                .collect();
                            problems.push(format!(
                                "commit quorum: {id}, leader of {}, advanced its commit to {} \
                                 but only [{}] had acknowledged it: not a quorum of its \
                                 configuration ({})",
                                st.term,
                                st.commit,
                                holders.join(", "),
                                voters_in_words(&a)
                            ));
                        }
                    }
                }
                // At most one uncommitted configuration entry in a leader's log: those it
                // sent in this term, and its latest.
                let mut pending: Vec<(LogIndex, Term)> = s
                    .leader_logs
                    .get(&(id, st.term))
                    .into_iter()
                    .flat_map(|log| log.range(st.commit.0 + 1..))
                    .map(|(_, (lid, _))| (lid.index, lid.term))
                    .filter(|k| s.configs.contains_key(k))
                    .collect();
                if st.membership.index > st.commit {
                    pending.push((st.membership.index, st.membership.term));
                }
                pending.sort();
                pending.dedup();
                if pending.len() > 1 {
                    problems.push(format!(
                        "one change at a time: {id}, leader of {} with commit {}, has {} \
                         uncommitted configuration entries (at {})",
                        st.term,
                        st.commit,
                        pending.len(),
                        pending.iter().map(|(i, _)| i.to_string()).collect::<Vec<_>>().join(", ")
                    ));
                }
                let t = s.nodes.entry(id).or_default();
                match t.leader_since {
                    Some((term, start)) if term == st.term => {
                        if st.commit > start && st.commit_term != Some(st.term) {
                            problems.push(format!(
                                "commit rule (Raft §5.4.2): {id}, leader of {}, advanced its \
                                 commit to {} whose term is {:?}: an earlier term's entry \
                                 committed by counting (Figure 8)",
                                st.term, st.commit, st.commit_term
                            ));
                        }
                    }
                    _ => t.leader_since = Some((st.term, st.commit)),
                }
            }
            if st.commit.0 > 0 {
                let c = s.commit_by_term.entry(st.term).or_default();
                *c = (*c).max(st.commit);
                if let Some(term) = st.commit_term {
                    let id_here = LogId { term, index: st.commit };
                    match s.committed.get(&st.commit) {
                        Some(prev) if *prev != id_here => problems.push(format!(
                            "commit agreement: {id} committed {id_here} but {prev} was committed \
                             at that index"
                        )),
                        Some(_) => {}
                        None => {
                            s.committed.insert(st.commit, id_here);
                        }
                    }
                }
            }
            let t = s.nodes.entry(id).or_default();
            t.last = Some(*st);
        }
        self.check_durable_monotonic(id, prev_durable, st.durable, "running");
        for n in notes {
            self.note(n);
        }
        for p in problems {
            self.violation(p);
        }
    }

    fn on_apply(&self, id: NodeId, incarnation: u32, log_id: LogId, digest: u64) {
        let mut problems = Vec::new();
        {
            let mut guard = self.lock();
            let s = &mut *guard;
            let t = s.nodes.entry(id).or_default();
            if t.incarnation != incarnation {
                return;
            }
            let i = log_id.index.0;
            if let Some(next) = t.next_apply {
                if i != next {
                    problems.push(format!(
                        "apply order: {id} applied {log_id} but the next index to apply was {next}"
                    ));
                }
            }
            t.next_apply = Some(i + 1);
            if let Some(acked) = &t.failed {
                if i > acked.shape.purged().index.0
                    && acked.shape.term_at(log_id.index) != Some(log_id.term)
                {
                    problems.push(format!(
                        "failed store: {id} applied {log_id} after its store failed, but the \
                         store had acknowledged only up to {} ({} there)",
                        acked.shape.last(),
                        acked
                            .shape
                            .term_at(log_id.index)
                            .map_or("nothing".to_string(), |t| format!("{t}"))
                    ));
                }
            }
            match s.applied.get(&i) {
                Some((other, d)) if (*other, *d) != (log_id, digest) => problems.push(format!(
                    "state machine safety: {id} applied {log_id} at {i}, another node applied {other}{}",
                    if *other == log_id { " with different contents" } else { "" }
                )),
                Some(_) => {}
                None => {
                    s.applied.insert(i, (log_id, digest));
                }
            }
        }
        for p in problems {
            self.violation(p);
        }
    }

    /// Two nodes that applied up to the same entry hold the same state (a snapshot that lost or
    /// garbled data shows up here, even though every entry was applied in the same order).
    fn on_state(&self, id: NodeId, at: LogId, digest: u64) {
        let problem = {
            let mut s = self.lock();
            match s.states.get(&at.index.0) {
                Some((other_at, d, other)) if (*other_at, *d) != (at, digest) => Some(format!(
                    "state machine safety: after {at} {id}'s state digest is {digest:016x}, \
                     but {other}'s after {other_at} was {d:016x}"
                )),
                Some(_) => None,
                None => {
                    s.states.insert(at.index.0, (at, digest, id));
                    None
                }
            }
        };
        if let Some(p) = problem {
            self.violation(p);
        }
    }

    fn on_restore(&self, id: NodeId, incarnation: u32, at: LogId) {
        let mut problems = Vec::new();
        {
            let mut guard = self.lock();
            let s = &mut *guard;
            let t = s.nodes.entry(id).or_default();
            if t.incarnation != incarnation {
                return;
            }
            if let Some(next) = t.next_apply {
                if at.index.0 + 1 < next {
                    problems.push(format!(
                        "apply order: {id} restored a snapshot at {at} after applying up to {}: \
                         its state went back",
                        next - 1
                    ));
                }
            }
            t.next_apply = Some(at.index.0 + 1);
            s.restores.entry(id).or_default().push(at);
            if let Some((other, _)) = s.applied.get(&at.index.0) {
                if *other != at {
                    problems.push(format!(
                        "state machine safety: {id} restored a snapshot at {at} but {other} was \
                         applied there"
                    ));
                }
            }
        }
        for p in problems {
            self.violation(p);
        }
        self.note(format!("{id}: restored a snapshot at {at}"));
    }

    /// Sees a message as its sender emits it.
    pub fn on_send(&self, from: NodeId, to: NodeId, m: &Message) {
        let mut problems = Vec::new();
        {
            let mut s = self.lock();
            if let Some(p) = self.count_at_instant(&mut s) {
                problems.push(p);
            }
            let durable = s.durable.get(&from).cloned();
            if let Some(acked) = s.nodes.get(&from).and_then(|t| t.failed.as_ref()) {
                if let Some(p) = failed_store_sent(from, to, m, acked) {
                    problems.push(p);
                }
            }
            let mut vote = |voter: NodeId, term: Term, cand: NodeId, s: &mut State| match s
                .votes
                .get(&(voter, term))
            {
                Some(prev) if *prev != cand => {
                    problems.push(format!(
                        "one vote per term: {voter} voted for {prev} and for {cand} in {term}"
                    ));
                }
                _ => {
                    s.votes.insert((voter, term), cand);
                }
            };
            let mut configs = Vec::new();
            match &m.body {
                MessageBody::AppendEntries(ae) => {
                    let log = s.leader_logs.entry((from, m.term)).or_default();
                    let prev = ae.prev_log_id;
                    if let Some((had, _)) = log.get(&prev.index.0) {
                        if *had != prev {
                            problems.push(format!(
                                "leader append-only: {from}, leader of {}, sent prev {prev} where it \
                                 had sent {had}",
                                m.term
                            ));
                        }
                    }
                    for e in &ae.entries {
                        if let EntryPayload::Membership(m) = &e.payload {
                            configs.push((e.log_id, m.clone()));
                        }
                        let here = (e.log_id, payload_digest(e));
                        match log.get(&e.index().0) {
                            Some(had) if *had != here => {
                                problems.push(format!(
                                    "leader append-only: {from}, leader of {}, sent {} at {} \
                                     where it had sent {}{}",
                                    m.term,
                                    e.log_id,
                                    e.index(),
                                    had.0,
                                    if had.0 == e.log_id { " with other contents" } else { "" }
                                ));
                                break;
                            }
                            Some(_) => {}
                            None => {
                                log.insert(e.index().0, here);
                            }
                        }
                    }
                }
                MessageBody::RequestVote(rv) if !rv.pre_vote => {
                    vote(from, m.term, from, &mut s);
                    if let Some(d) = &durable {
                        let hs = d.hard_state();
                        if hs.term < m.term || (hs.term == m.term && hs.vote != Some(from)) {
                            problems.push(format!(
                                "persist before send: {from} asked for votes in {} before its own \
                                 vote was durable (durable {hs:?})",
                                m.term
                            ));
                        }
                    }
                }
                MessageBody::VoteResponse(vr) if vr.granted && !vr.pre_vote => {
                    if s.nodes.get(&from).and_then(|t| t.last).is_some_and(|st| !st.voter) {
                        s.suspect_votes.entry(from).or_default().push((to, m.term, false));
                    }
                    vote(from, m.term, to, &mut s);
                    if let Some(d) = &durable {
                        let hs = d.hard_state();
                        if hs.term < m.term || (hs.term == m.term && hs.vote != Some(to)) {
                            problems.push(format!(
                                "persist before send: {from} granted its vote to {to} in {} before \
                                 the vote was durable (durable {hs:?})",
                                m.term
                            ));
                        }
                    }
                }
                MessageBody::VoteResponse(vr)
                    if vr.granted
                        && s.nodes.get(&from).and_then(|t| t.last).is_some_and(|st| !st.voter) =>
                {
                    s.suspect_votes.entry(from).or_default().push((to, m.term, true));
                }
                MessageBody::SnapshotResponse(r) if r.installed => {
                    let ack = s.acks.entry((to, m.term)).or_default().entry(from).or_default();
                    *ack = (*ack).max(r.snapshot.index);
                }
                MessageBody::InstallSnapshot(c) => {
                    configs.push((c.meta.last_log_id, c.meta.membership.clone()));
                    let at_ms = self.millis();
                    s.chunks.push(ChunkSent {
                        at_ms,
                        from,
                        to,
                        snapshot: c.meta.last_log_id,
                        offset: c.offset,
                        len: c.data.len(),
                        done: c.done,
                        size: c.meta.size,
                    });
                }
                MessageBody::AppendResponse(AppendResponse::Success { match_index }) => {
                    let ack = s.acks.entry((to, m.term)).or_default().entry(from).or_default();
                    *ack = (*ack).max(*match_index);
                    if let Some(d) = &durable {
                        let hs = d.hard_state();
                        if hs.term < m.term {
                            problems.push(format!(
                                "persist before send: {from} answered in {} before that term was \
                                 durable (durable {})",
                                m.term, hs.term
                            ));
                        } else if hs.term == m.term && d.last().index < *match_index {
                            problems.push(format!(
                                "persist before send: {from} acknowledged entries up to \
                                 {match_index} to {to} but only {} is durable",
                                d.last()
                            ));
                        }
                    }
                }
                _ => {}
            }
            for (id, m) in configs {
                s.configs.entry((id.index, id.term)).or_insert(m);
            }
        }
        if matches!(m.body, MessageBody::InstallSnapshot(_)) {
            self.chunk_sent.notify_waiters();
        }
        for p in problems {
            self.violation(p);
        }
    }

    /// Counts a message sent now. On a paused clock time moves only when every task waits, so
    /// nodes that keep exchanging messages without end hold it still and the run would never
    /// finish: past [`LIVELOCK_MESSAGES`] messages at one instant, that is reported (once) and
    /// [`livelocked`](Self::livelocked) turns on.
    fn count_at_instant(&self, s: &mut State) -> Option<String> {
        let now = tokio::time::Instant::now();
        if s.instant == Some(now) {
            s.at_instant += 1;
        } else {
            s.instant = Some(now);
            s.at_instant = 1;
        }
        if s.at_instant < LIVELOCK_MESSAGES || s.livelocked {
            return None;
        }
        s.livelocked = true;
        Some(format!(
            "liveness: livelock: {} messages were sent at {}ms while time stood still; from now \
             on every message is dropped so the run can end",
            s.at_instant,
            self.millis()
        ))
    }

    /// Whether the nodes livelocked (see [`LIVELOCK_MESSAGES`]): the network then drops every
    /// message.
    pub fn livelocked(&self) -> bool {
        self.lock().livelocked
    }

    /// Wakes every waiter whenever a snapshot chunk is sent (for scenarios that act at that
    /// moment).
    pub fn chunk_sent(&self) -> &tokio::sync::Notify {
        &self.chunk_sent
    }

    /// The snapshot chunks sent to `to` so far, in order.
    pub fn chunks_sent_to(&self, to: NodeId) -> Vec<ChunkSent> {
        self.lock().chunks.iter().filter(|c| c.to == to).cloned().collect()
    }

    /// The snapshots node `id` restored its state machine from (in every incarnation), in
    /// order.
    pub fn restores(&self, id: NodeId) -> Vec<LogId> {
        self.lock().restores.get(&id).cloned().unwrap_or_default()
    }

    /// What is known committed right now. Take it *before* reading the stores for a
    /// [`checkpoint`](Self::checkpoint): entries committed while the reads run would otherwise
    /// look missing from stores read earlier.
    pub fn begin_checkpoint(&self) -> CheckpointBase {
        let s = self.lock();
        CheckpointBase {
            applied: s.applied.iter().map(|(i, (id, _))| (*i, *id)).collect(),
            commit_by_term: s.commit_by_term.clone(),
            leaders: s
                .nodes
                .iter()
                .filter_map(|(id, t)| {
                    t.last.filter(|st| st.role == Role::Leader).map(|st| (*id, st.term))
                })
                .collect(),
        }
    }

    /// Checks what was read from every store after [`begin_checkpoint`](Self::begin_checkpoint).
    /// First the reads themselves: a store that returned other entries than asked for is a
    /// store fault ("store read: …") and its log is judged no further. Then log matching and
    /// leader completeness on the logs read, and durability: every entry applied (hence
    /// committed) before the reads is held durably by a quorum, by each store's durable view
    /// (or, for a node without one, by its log).
    pub fn checkpoint(&self, base: &CheckpointBase, reads: &BTreeMap<NodeId, StoreRead>) {
        let mut problems = Vec::new();
        let mut logs = BTreeMap::new();
        for (id, read) in reads {
            match read.check() {
                Ok(log) => {
                    logs.insert(*id, log);
                }
                Err(why) => problems.push(format!("store read: {id}'s store: {why}")),
            }
        }
        {
            let s = self.lock();
            // Log matching.
            let ids: Vec<&NodeId> = logs.keys().collect();
            for (i, a) in ids.iter().enumerate() {
                for b in &ids[i + 1..] {
                    let (la, lb) = (&logs[*a], &logs[*b]);
                    let hi = la.last().index.min(lb.last().index);
                    let lo = la.purged.index.max(lb.purged.index);
                    let mut k = hi;
                    while k > lo && la.get(k).map(|e| e.0) != lb.get(k).map(|e| e.0) {
                        k = k.prev();
                    }
                    let mut j = lo.next();
                    while j <= k {
                        if la.get(j) != lb.get(j) {
                            problems.push(format!(
                                "log matching: {a} and {b} share {} at {k} but differ at {j}: {:?} vs {:?}",
                                la.get(k).map(|e| e.0).unwrap_or_default(),
                                la.get(j),
                                lb.get(j)
                            ));
                            break;
                        }
                        j = j.next();
                    }
                }
            }
            // Leader completeness: a leader of term t has every entry committed before t (an
            // entry's commit term is when it became committed, not when it was created).
            for (id, log) in &logs {
                let Some(term) = base.leaders.get(id).copied() else { continue };
                let Some(bound) = base.commit_by_term.range(..term).map(|(_, c)| *c).max() else {
                    continue;
                };
                for (i, lid) in base.applied.range(..=bound.0) {
                    let i = LogIndex(*i);
                    if i > log.purged.index && log.get(i).map(|e| e.0) != Some(*lid) {
                        problems.push(format!(
                            "leader completeness: {id}, leader of {}, lacks committed {lid} (has {:?})",
                            term,
                            log.get(i).map(|e| e.0)
                        ));
                        break;
                    }
                }
            }
            // Durability: committed entries are held durably by a quorum. A store's durable view
            // needs no read; a node without one counts by its log, if that read was sound. A
            // leader commits an entry under its latest configuration, which is the one in force
            // at the entry or one appended after it: so an entry must be held by a quorum (a
            // majority of each half, if joint) of the configuration in force at it in the
            // committed log, or of some configuration seen after it. With no membership change
            // that is the initial configuration alone.
            let later: Vec<(LogIndex, &Membership)> =
                s.configs.iter().map(|((i, _), m)| (*i, m)).collect();
            for (i, lid) in &base.applied {
                let i = LogIndex(*i);
                let holds = |id: &NodeId| {
                    let Some(read) = reads.get(id) else { return false };
                    if i <= read.state.purged.index {
                        // Compacted away: covered by the node's snapshot.
                        return true;
                    }
                    match s.durable.get(id) {
                        Some(d) => d.term_at(i) == Some(lid.term),
                        None => logs.get(id).and_then(|l| l.get(i)).map(|e| e.0) == Some(*lid),
                    }
                };
                let in_force = s.committed_config_at(&self.initial, i);
                let held = in_force.has_quorum(|n| holds(&n))
                    || later
                        .iter()
                        .filter(|(at, _)| *at > i)
                        .any(|(_, m)| m.has_quorum(|n| holds(&n)));
                if !held {
                    let voters = in_force.voters();
                    let holders = voters.iter().filter(|n| holds(n)).count();
                    let quorum = if in_force.is_joint() {
                        "a majority of each half".to_string()
                    } else {
                        format!("quorum {}", voters.len() / 2 + 1)
                    };
                    problems.push(format!(
                        "durability: a committed entry is held durably by fewer than a quorum: \
                         {lid} by {holders} of {} nodes ({quorum}) of its configuration ({}), \
                         and by no quorum of a later one",
                        voters.len(),
                        voters_in_words(&in_force)
                    ));
                    break;
                }
            }
        }
        for p in problems {
            self.violation(p);
        }
    }
}

/// What a [`Checker`] knew committed when a checkpoint began.
#[derive(Clone, Debug, Default)]
pub struct CheckpointBase {
    applied: BTreeMap<u64, LogId>,
    commit_by_term: BTreeMap<Term, LogIndex>,
    leaders: BTreeMap<NodeId, Term>,
}

struct NodeWatch {
    checker: Arc<Checker>,
    id: NodeId,
    incarnation: u32,
}

impl Observer for NodeWatch {
    fn on_status(&self, status: &NodeStatus) {
        self.checker.on_status(self.id, self.incarnation, status);
    }
}

impl ApplyRecorder for NodeWatch {
    fn applied(&self, entry: LogId, digest: u64) {
        self.checker.on_apply(self.id, self.incarnation, entry, digest);
    }

    fn restored(&self, at: LogId) {
        self.checker.on_restore(self.id, self.incarnation, at);
    }

    fn state(&self, at: LogId, digest: u64) {
        self.checker.on_state(self.id, at, digest);
    }
}

#[cfg(test)]
mod tests {
    use raftkit::{MessageBody, RequestVote, VoteResponse};

    use super::*;

    fn status(id: u64, role: Role, term: u64, commit: u64, commit_term: u64) -> NodeStatus {
        NodeStatus {
            id: NodeId(id),
            role,
            term: Term(term),
            vote: None,
            leader: (role == Role::Leader).then_some(NodeId(id)),
            commit: LogIndex(commit),
            commit_term: Some(Term(commit_term)),
            applied: LogIndex(commit),
            last_log: LogId::new(term, commit),
            stable: LogIndex(commit),
            durable: HardState { term: Term(term), vote: None, commit: LogIndex(0) },
            purged: LogId::ZERO,
            snapshot: None,
            membership: LogId::ZERO,
            voter: true,
        }
    }

    fn grant(c: &Checker, voter: u64, cand: u64, term: u64) {
        let m = Message {
            term: Term(term),
            body: MessageBody::VoteResponse(VoteResponse { pre_vote: false, granted: true }),
        };
        c.on_send(NodeId(voter), NodeId(cand), &m);
    }

    fn start(c: &Checker, id: u64) -> u32 {
        c.start_incarnation(NodeId(id), HardState::default(), None)
    }

    /// A whole read of a log holding (term, index) entries after nothing purged.
    fn read(ids: &[(u64, u64)]) -> StoreRead {
        let last = ids.last().map_or(LogId::ZERO, |(t, i)| LogId::new(*t, *i));
        StoreRead {
            state: raftkit::LogState {
                hard_state: HardState::default(),
                purged: LogId::ZERO,
                last,
            },
            entries: Ok(ids
                .iter()
                .map(|(t, i)| Entry::normal(LogId::new(*t, *i), format!("t{t}")))
                .collect()),
        }
    }

    /// A durable view of a store holding entries `1..=n` of term 1.
    struct Upto(u64);

    impl DurableView for Upto {
        fn hard_state(&self) -> HardState {
            HardState { term: Term(1), vote: Some(NodeId(1)), commit: LogIndex(0) }
        }
        fn last(&self) -> LogId {
            LogId::new(1, self.0)
        }
        fn term_at(&self, index: LogIndex) -> Option<Term> {
            (index.0 <= self.0).then_some(Term(1))
        }
    }

    /// What a store acknowledged: `hs` and entries `1..=last` in term `term`.
    fn acked(hs: HardState, term: u64, last: u64) -> Acknowledged {
        let ids: Vec<(u64, u64)> = (1..=last).map(|i| (term, i)).collect();
        Acknowledged { hard_state: hs, ..read(&ids).acknowledged().expect("a whole read") }
    }

    /// An AppendEntries in `term` after `prev` carrying (term, index, data) entries.
    fn append(term: u64, prev: LogId, entries: &[(u64, u64, &'static str)]) -> Message {
        Message {
            term: Term(term),
            body: MessageBody::AppendEntries(raftkit::AppendEntries {
                prev_log_id: prev,
                entries: entries
                    .iter()
                    .map(|(t, i, data)| Entry::normal(LogId::new(*t, *i), *data))
                    .collect(),
                leader_commit: LogIndex(0),
            }),
        }
    }

    #[test]
    fn a_leader_that_rewrites_its_own_entries_is_caught() {
        // Resending the same entries, or sending more after them, is fine.
        let c = Checker::new(3);
        c.on_send(NodeId(1), NodeId(2), &append(2, LogId::ZERO, &[(2, 1, "a"), (2, 2, "b")]));
        c.on_send(NodeId(1), NodeId(3), &append(2, LogId::ZERO, &[(2, 1, "a")]));
        c.on_send(NodeId(1), NodeId(2), &append(2, LogId::new(2, 2), &[(2, 3, "c")]));
        assert!(c.violations().is_empty(), "{:?}", c.violations());
        // Other contents at an index it already sent, in the same term.
        c.on_send(NodeId(1), NodeId(3), &append(2, LogId::new(2, 1), &[(2, 2, "X")]));
        let v = c.violations();
        assert!(
            v.iter().any(|v| v.contains("leader append-only") && v.contains("other contents")),
            "{v:?}"
        );
        // A prev id that contradicts what it sent.
        let c = Checker::new(3);
        c.on_send(NodeId(1), NodeId(2), &append(3, LogId::ZERO, &[(3, 1, "a")]));
        c.on_send(NodeId(1), NodeId(2), &append(3, LogId::new(2, 1), &[]));
        assert!(c.violations().iter().any(|v| v.contains("sent prev")), "{:?}", c.violations());
        // A new term may overwrite what an earlier leader (or term) sent.
        let c = Checker::new(3);
        c.on_send(NodeId(1), NodeId(2), &append(2, LogId::ZERO, &[(2, 1, "a")]));
        c.on_send(NodeId(1), NodeId(2), &append(4, LogId::ZERO, &[(4, 1, "b")]));
        assert!(c.violations().is_empty(), "{:?}", c.violations());
    }

    #[test]
    fn a_leader_whose_log_shrinks_within_its_term_is_caught() {
        let c = Checker::new(3);
        let i = start(&c, 1);
        grant(&c, 2, 1, 2);
        let mut st = status(1, Role::Leader, 2, 0, 0);
        st.last_log = LogId::new(2, 5);
        c.on_status(NodeId(1), i, &st);
        st.last_log = LogId::new(2, 4);
        c.on_status(NodeId(1), i, &st);
        let v = c.violations();
        assert!(v.iter().any(|v| v.contains("shrank its log")), "{v:?}");
    }

    #[test]
    fn two_leaders_in_one_term() {
        let c = Checker::new(3);
        let (a, b) = (start(&c, 1), start(&c, 2));
        grant(&c, 3, 1, 2);
        grant(&c, 3, 2, 2);
        c.on_status(NodeId(1), a, &status(1, Role::Leader, 2, 0, 0));
        c.on_status(NodeId(2), b, &status(2, Role::Leader, 2, 0, 0));
        let v = c.violations();
        assert!(v.iter().any(|v| v.contains("two leaders in t2")), "{v:?}");
        assert!(v.iter().any(|v| v.contains("n3 voted for n1 and for n2 in t2")), "{v:?}");
    }

    #[test]
    fn a_leader_needs_a_quorum_of_votes_from_its_own_term() {
        let c = Checker::new(3);
        let i = start(&c, 1);
        grant(&c, 2, 1, 4); // a vote from an older term
        c.on_status(NodeId(1), i, &status(1, Role::Leader, 5, 0, 0));
        assert!(c.violations().iter().any(|v| v.contains("counted votes from another term")));

        let c = Checker::new(3);
        let i = start(&c, 1);
        grant(&c, 2, 1, 5);
        c.on_status(NodeId(1), i, &status(1, Role::Leader, 5, 0, 0));
        assert!(c.violations().is_empty(), "{:?}", c.violations());
    }

    #[test]
    fn durable_state_must_not_go_backwards_across_restarts() {
        let c = Checker::new(3);
        let i = start(&c, 1);
        let mut s = status(1, Role::Follower, 3, 0, 0);
        s.durable = HardState { term: Term(3), vote: Some(NodeId(2)), commit: LogIndex(4) };
        c.on_status(NodeId(1), i, &s);
        assert!(c.violations().is_empty());
        // The restarted node loaded a state that lost the vote.
        let lost = HardState { term: Term(3), vote: None, commit: LogIndex(4) };
        c.start_incarnation(NodeId(1), lost, None);
        assert!(c.violations().iter().any(|v| v.contains("durable vote in t3 changed")));
        let older = HardState { term: Term(2), vote: None, commit: LogIndex(4) };
        c.start_incarnation(NodeId(1), older, None);
        assert!(c.violations().iter().any(|v| v.contains("durable term went back")));
    }

    #[test]
    fn a_leader_may_not_commit_an_earlier_terms_entry_by_counting() {
        let c = Checker::new(3);
        let i = start(&c, 1);
        grant(&c, 2, 1, 4);
        c.on_status(NodeId(1), i, &status(1, Role::Leader, 4, 10, 3));
        assert!(c.violations().is_empty());
        c.on_status(NodeId(1), i, &status(1, Role::Leader, 4, 12, 3));
        assert!(c.violations().iter().any(|v| v.contains("Figure 8")));
    }

    #[test]
    fn state_machine_safety_and_gapless_apply() {
        let c = Checker::new(3);
        let (a, b) = (start(&c, 1), start(&c, 2));
        c.on_apply(NodeId(1), a, LogId::new(1, 1), 7);
        c.on_apply(NodeId(2), b, LogId::new(1, 1), 8);
        assert!(c.violations().iter().any(|v| v.contains("different contents")));
        c.on_apply(NodeId(1), a, LogId::new(1, 3), 9);
        assert!(c.violations().iter().any(|v| v.contains("next index to apply was 2")));
    }

    /// Regression: an entry created in term 1 but committed in term 3 need not be in the log
    /// of a stale leader of term 2; it must be in a leader of term 4's.
    #[test]
    fn leader_completeness_counts_from_the_commit_term() {
        let c = Checker::new(3);
        let (a, b) = (start(&c, 1), start(&c, 2));
        grant(&c, 3, 2, 2);
        c.on_status(NodeId(2), b, &status(2, Role::Leader, 2, 5, 1));
        grant(&c, 3, 1, 3);
        c.on_status(NodeId(1), a, &status(1, Role::Leader, 3, 6, 3));
        c.on_apply(NodeId(1), a, LogId::new(1, 6), 1);
        // Only n2's log matters here: it is the stale leader of t2 holding its own entry at 6.
        let logs =
            BTreeMap::from([(NodeId(2), read(&[(1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (2, 6)]))]);
        c.checkpoint(&c.begin_checkpoint(), &logs);
        assert!(
            !c.violations().iter().any(|v| v.contains("leader completeness")),
            "{:?}",
            c.violations()
        );
        // A leader of t4 lacking it is a violation.
        let d = start(&c, 3);
        grant(&c, 2, 3, 4);
        c.on_status(NodeId(3), d, &status(3, Role::Leader, 4, 5, 1));
        let logs =
            BTreeMap::from([(NodeId(3), read(&[(1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (4, 6)]))]);
        c.checkpoint(&c.begin_checkpoint(), &logs);
        assert!(
            c.violations().iter().any(|v| v.contains("leader completeness: n3")),
            "{:?}",
            c.violations()
        );
    }

    #[test]
    fn acknowledging_before_durable_is_caught() {
        struct Fixed;
        impl DurableView for Fixed {
            fn hard_state(&self) -> HardState {
                HardState { term: Term(2), vote: Some(NodeId(1)), commit: LogIndex(0) }
            }
            fn last(&self) -> LogId {
                LogId::new(2, 5)
            }
            fn term_at(&self, _: LogIndex) -> Option<Term> {
                Some(Term(2))
            }
        }
        let c = Checker::new(3);
        c.start_incarnation(NodeId(2), HardState::default(), Some(Arc::new(Fixed)));
        let ack = |m: u64| Message {
            term: Term(2),
            body: MessageBody::AppendResponse(AppendResponse::Success { match_index: LogIndex(m) }),
        };
        c.on_send(NodeId(2), NodeId(1), &ack(5));
        assert!(c.violations().is_empty());
        c.on_send(NodeId(2), NodeId(1), &ack(6));
        assert!(c.violations().iter().any(|v| v.contains("only 2-5 is durable")));
        let rv = Message {
            term: Term(3),
            body: MessageBody::RequestVote(RequestVote {
                pre_vote: false,
                transfer: false,
                last_log_id: LogId::ZERO,
            }),
        };
        c.on_send(NodeId(2), NodeId(1), &rv);
        assert!(c.violations().iter().any(|v| v.contains("before its own vote was durable")));
    }

    /// A short read is reported as a store fault, not as lost committed entries, and the
    /// durability check (by the stores' durable views) does not fire for it.
    #[test]
    fn a_short_read_is_a_store_fault_not_a_durability_violation() {
        let c = Checker::new(3);
        let view = || -> Option<Arc<dyn DurableView>> { Some(Arc::new(Upto(9))) };
        let i = c.start_incarnation(NodeId(1), HardState::default(), view());
        for id in 2..=3 {
            c.start_incarnation(NodeId(id), HardState::default(), view());
        }
        for k in 1..=9 {
            c.on_apply(NodeId(1), i, LogId::new(1, k), k);
        }
        let whole: Vec<(u64, u64)> = (1..=9).map(|k| (1, k)).collect();
        let mut short = read(&whole);
        short.entries.as_mut().expect("ok").truncate(4);
        let reads = BTreeMap::from([
            (NodeId(1), read(&whole)),
            (NodeId(2), short.clone()),
            (NodeId(3), short),
        ]);
        c.checkpoint(&c.begin_checkpoint(), &reads);
        let v = c.violations();
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(
            v.iter().all(
                |v| v.contains("store read: n") && v.contains("returned 4 entries for i1..=i9")
            ),
            "{v:?}"
        );
    }

    #[test]
    fn a_committed_entry_held_by_fewer_than_a_quorum_is_caught() {
        let c = Checker::new(3);
        // Only n1's store holds entries 6..=9 durably; the others stopped at 5.
        let i = c.start_incarnation(NodeId(1), HardState::default(), Some(Arc::new(Upto(9))));
        for id in 2..=3 {
            c.start_incarnation(NodeId(id), HardState::default(), Some(Arc::new(Upto(5))));
        }
        for k in 1..=9 {
            c.on_apply(NodeId(1), i, LogId::new(1, k), k);
        }
        let whole: Vec<(u64, u64)> = (1..=9).map(|k| (1, k)).collect();
        // The logs read hold everything (not yet durable elsewhere): the views decide.
        let reads: BTreeMap<_, _> = (1..=3).map(|id| (NodeId(id), read(&whole))).collect();
        c.checkpoint(&c.begin_checkpoint(), &reads);
        let v = c.violations();
        assert!(
            v.iter().any(|v| v.contains(
                "durability: a committed entry is held durably by fewer than a quorum: 1-6 by 1 of 3 nodes"
            )),
            "{v:?}"
        );
    }

    /// After its store failed, a node may send and apply only what the store acknowledged.
    #[test]
    fn a_node_relying_on_its_failed_store_is_caught() {
        let c = Checker::new(3);
        let i = start(&c, 2);
        let hs = HardState { term: Term(2), vote: Some(NodeId(1)), commit: LogIndex(0) };
        c.on_store_failed(NodeId(2), i, acked(hs, 2, 5));
        assert!(c.store_failed(NodeId(2)));
        let ack = |term: u64, m: u64| Message {
            term: Term(term),
            body: MessageBody::AppendResponse(AppendResponse::Success { match_index: LogIndex(m) }),
        };
        let vote = |term: u64, granted: bool| Message {
            term: Term(term),
            body: MessageBody::VoteResponse(VoteResponse { pre_vote: false, granted }),
        };
        // Within what the store acknowledged: a repeated grant, an acknowledgement of 5, an
        // entry applied, a refusal.
        c.on_send(NodeId(2), NodeId(1), &vote(2, true));
        c.on_send(NodeId(2), NodeId(1), &ack(2, 5));
        c.on_send(NodeId(2), NodeId(3), &vote(3, false));
        c.on_apply(NodeId(2), i, LogId::new(2, 5), 5);
        assert!(c.violations().is_empty(), "{:?}", c.violations());
        // Beyond it: entry 6, a term the store never took, a new vote, applying entry 6.
        c.on_send(NodeId(2), NodeId(1), &ack(2, 6));
        c.on_send(NodeId(2), NodeId(1), &ack(3, 5));
        c.on_send(NodeId(2), NodeId(3), &vote(3, true));
        c.on_apply(NodeId(2), i, LogId::new(2, 6), 6);
        let v = c.violations();
        assert_eq!(v.iter().filter(|v| v.contains("failed store: n2")).count(), 4, "{v:?}");
        assert!(v.iter().any(|v| v.contains("acknowledged entries up to i6")), "{v:?}");
        assert!(v.iter().any(|v| v.contains("granted its vote to n3 in t3")), "{v:?}");
        assert!(v.iter().any(|v| v.contains("applied 2-6 after its store failed")), "{v:?}");
        // A restart (a new disk) clears it.
        start(&c, 2);
        assert!(!c.store_failed(NodeId(2)));
    }

    fn members(voters: &[u64]) -> Membership {
        Membership::new(voters.iter().map(|n| NodeId(*n))).expect("voters")
    }

    /// An AppendEntries in `term` from nothing carrying configuration entries (term, index,
    /// voters).
    fn append_configs(term: u64, confs: &[(u64, u64, &[u64])]) -> Message {
        Message {
            term: Term(term),
            body: MessageBody::AppendEntries(raftkit::AppendEntries {
                prev_log_id: LogId::ZERO,
                entries: confs
                    .iter()
                    .map(|(t, i, v)| Entry {
                        log_id: LogId::new(*t, *i),
                        payload: EntryPayload::Membership(members(v)),
                    })
                    .collect(),
                leader_commit: LogIndex(0),
            }),
        }
    }

    /// A leader elected under a configuration of five voters needs three of their votes, not
    /// two (a quorum of the initial three).
    #[test]
    fn a_leader_needs_a_quorum_of_the_configuration_it_was_elected_under() {
        let c = Checker::new(3);
        let i = start(&c, 1);
        c.on_send(NodeId(2), NodeId(1), &append_configs(1, &[(1, 1, &[1, 2, 3, 4, 5])]));
        assert!(c.membership_changed());
        grant(&c, 2, 1, 5);
        let mut st = status(1, Role::Leader, 5, 0, 0);
        st.membership = LogId::new(1, 1);
        c.on_status(NodeId(1), i, &st);
        let v = c.violations();
        assert!(
            v.iter().any(|v| v.contains("election safety: n1 became leader of t5 with 2 vote(s)")
                && v.contains("n1, n2, n3, n4, n5")),
            "{v:?}"
        );
        // Three grants of the five suffice.
        let c = Checker::new(3);
        let i = start(&c, 1);
        c.on_send(NodeId(2), NodeId(1), &append_configs(1, &[(1, 1, &[1, 2, 3, 4, 5])]));
        grant(&c, 2, 1, 5);
        grant(&c, 4, 1, 5);
        c.on_status(NodeId(1), i, &st);
        assert!(c.violations().is_empty(), "{:?}", c.violations());
        assert!(!Checker::new(3).membership_changed());
    }

    #[test]
    fn a_removed_node_that_becomes_leader_is_caught() {
        let c = Checker::new(3);
        let i = start(&c, 1);
        grant(&c, 2, 1, 5);
        let mut st = status(1, Role::Leader, 5, 0, 0);
        st.voter = false;
        c.on_status(NodeId(1), i, &st);
        let v = c.violations();
        assert!(v.iter().any(|v| v.contains("removed leader: n1 became leader of t5")), "{v:?}");
    }

    /// A grant sent by a node whose statuses before and after say it is no voter is caught; one
    /// sent in the turn that made it a voter is not.
    #[test]
    fn a_learner_that_votes_is_caught() {
        let c = Checker::new(3);
        let i = start(&c, 4);
        let mut learner = status(4, Role::Learner, 5, 0, 0);
        learner.voter = false;
        c.on_status(NodeId(4), i, &learner);
        grant(&c, 4, 1, 6);
        let mut promoted = status(4, Role::Follower, 6, 0, 0);
        c.on_status(NodeId(4), i, &promoted);
        assert!(c.violations().is_empty(), "{:?}", c.violations());
        promoted.voter = false;
        promoted.term = Term(7);
        c.on_status(NodeId(4), i, &promoted);
        let pre = Message {
            term: Term(8),
            body: MessageBody::VoteResponse(VoteResponse { pre_vote: true, granted: true }),
        };
        c.on_send(NodeId(4), NodeId(2), &pre);
        promoted.term = Term(8);
        c.on_status(NodeId(4), i, &promoted);
        let v = c.violations();
        assert!(
            v.iter()
                .any(|v| v.contains("learners never vote: n4 granted its pre-vote to n2 in t8")),
            "{v:?}"
        );
    }

    #[test]
    fn a_leader_with_two_uncommitted_configuration_entries_is_caught() {
        let c = Checker::new(3);
        let i = start(&c, 1);
        grant(&c, 2, 1, 2);
        let mut st = status(1, Role::Leader, 2, 1, 2);
        c.on_status(NodeId(1), i, &st);
        c.on_send(NodeId(1), NodeId(2), &append_configs(2, &[(2, 2, &[1, 2, 3, 4])]));
        st.membership = LogId::new(2, 2);
        st.last_log = LogId::new(2, 2);
        c.on_status(NodeId(1), i, &st);
        assert!(c.violations().is_empty(), "{:?}", c.violations());
        c.on_send(
            NodeId(1),
            NodeId(2),
            &append_configs(2, &[(2, 2, &[1, 2, 3, 4]), (2, 3, &[1, 2, 3, 4, 5])]),
        );
        st.membership = LogId::new(2, 3);
        st.last_log = LogId::new(2, 3);
        c.on_status(NodeId(1), i, &st);
        let v = c.violations();
        assert!(
            v.iter().any(|v| v.contains("one change at a time: n1") && v.contains("(at i2, i3)")),
            "{v:?}"
        );
    }

    /// A leader not in its committed configuration must have stepped down; one that proposes
    /// a change before an entry of its term is committed is caught.
    #[test]
    fn a_removed_leader_that_stays_and_an_early_change_are_caught() {
        let c = Checker::new(3);
        let i = start(&c, 1);
        grant(&c, 2, 1, 2);
        let mut st = status(1, Role::Leader, 2, 4, 2);
        c.on_status(NodeId(1), i, &st);
        // Removed (entry 5), not yet committed: it still leads.
        st.voter = false;
        st.membership = LogId::new(2, 5);
        st.last_log = LogId::new(2, 5);
        c.on_status(NodeId(1), i, &st);
        assert!(c.violations().is_empty(), "{:?}", c.violations());
        // Committed, and still leader.
        st.commit = LogIndex(5);
        c.on_send(NodeId(2), NodeId(1), &ack(2, 5));
        c.on_status(NodeId(1), i, &st);
        let v = c.violations();
        assert!(v.iter().any(|v| v.contains("removed leader: n1, leader of t2")), "{v:?}");

        let c = Checker::new(3);
        let i = start(&c, 1);
        grant(&c, 2, 1, 3);
        let mut st = status(1, Role::Leader, 3, 4, 2);
        c.on_status(NodeId(1), i, &st);
        st.membership = LogId::new(3, 6);
        st.last_log = LogId::new(3, 6);
        c.on_status(NodeId(1), i, &st);
        let v = c.violations();
        assert!(v.iter().any(|v| v.contains("change before commit: n1, leader of t3")), "{v:?}");
    }

    fn ack(term: u64, m: u64) -> Message {
        Message {
            term: Term(term),
            body: MessageBody::AppendResponse(AppendResponse::Success { match_index: LogIndex(m) }),
        }
    }

    /// Under a joint configuration a commit needs a majority of each half: acknowledgements
    /// from a majority of the new half alone are not enough.
    #[test]
    fn a_commit_without_a_joint_quorum_is_caught() {
        let joint = Membership::joint([1, 2, 3].map(NodeId), [1, 4, 5].map(NodeId), [], true)
            .expect("joint");
        let setup = || {
            let c = Checker::new(3);
            let i = start(&c, 1);
            grant(&c, 2, 1, 2);
            let mut st = status(1, Role::Leader, 2, 6, 2);
            c.on_status(NodeId(1), i, &st);
            let m = Message {
                term: Term(2),
                body: MessageBody::AppendEntries(raftkit::AppendEntries {
                    prev_log_id: LogId::new(2, 6),
                    entries: vec![Entry {
                        log_id: LogId::new(2, 7),
                        payload: EntryPayload::Membership(joint.clone()),
                    }],
                    leader_commit: LogIndex(6),
                }),
            };
            c.on_send(NodeId(1), NodeId(4), &m);
            st.membership = LogId::new(2, 7);
            st.last_log = LogId::new(2, 8);
            st.stable = LogIndex(8);
            c.on_status(NodeId(1), i, &st);
            (c, i, st)
        };
        let (c, i, mut st) = setup();
        c.on_send(NodeId(4), NodeId(1), &ack(2, 8));
        st.commit = LogIndex(7);
        c.on_status(NodeId(1), i, &st);
        let v = c.violations();
        assert!(
            v.iter().any(|v| v.contains(
                "commit quorum: n1, leader of t2, advanced its commit to i7 but only [n1, n4]"
            )),
            "{v:?}"
        );
        // With n2 too (a majority of n1, n2, n3), it is a quorum of each half.
        let (c, i, mut st) = setup();
        c.on_send(NodeId(4), NodeId(1), &ack(2, 8));
        c.on_send(NodeId(2), NodeId(1), &ack(2, 7));
        st.commit = LogIndex(7);
        c.on_status(NodeId(1), i, &st);
        assert!(c.violations().is_empty(), "{:?}", c.violations());
    }

    /// After n1..n3 are replaced by n4..n6 (a later configuration), an entry is durable if a
    /// quorum of the new configuration holds it, though no quorum of the old one does; if no
    /// configuration's quorum holds it, that is a violation.
    #[test]
    fn durability_counts_the_configurations_that_may_have_committed_an_entry() {
        let check = |new_holders: &[u64]| {
            let c = Checker::new(3);
            let mut inc = BTreeMap::new();
            for id in 1..=6 {
                let upto = if id == 1 || new_holders.contains(&id) { 9 } else { 0 };
                let view: Arc<dyn DurableView> = Arc::new(Upto(upto));
                inc.insert(id, c.start_incarnation(NodeId(id), HardState::default(), Some(view)));
            }
            c.on_send(NodeId(1), NodeId(4), &append_configs(1, &[(1, 9, &[4, 5, 6])]));
            for k in 1..=9 {
                c.on_apply(NodeId(1), inc[&1], LogId::new(1, k), k);
            }
            let whole: Vec<(u64, u64)> = (1..=9).map(|k| (1, k)).collect();
            let reads: BTreeMap<_, _> = (1..=6).map(|id| (NodeId(id), read(&whole))).collect();
            c.checkpoint(&c.begin_checkpoint(), &reads);
            c.violations()
        };
        assert!(check(&[4, 5]).is_empty(), "{:?}", check(&[4, 5]));
        let v = check(&[4]);
        assert!(
            v.iter().any(|v| v.contains(
                "durability: a committed entry is held durably by fewer \
                than a quorum: 1-1 by 1 of 3 nodes (quorum 2) of its configuration (n1, n2, n3)"
            )),
            "{v:?}"
        );
    }

    /// Nodes that exchange messages without end hold a paused clock still: the checker reports
    /// it once and has the network drop everything from then on.
    #[tokio::test(start_paused = true)]
    async fn a_livelock_is_reported_and_stopped() {
        let c = Checker::new(3);
        let heartbeat = append(2, LogId::ZERO, &[]);
        for _ in 1..LIVELOCK_MESSAGES {
            c.on_send(NodeId(1), NodeId(2), &heartbeat);
        }
        assert!(!c.livelocked() && c.violations().is_empty(), "{:?}", c.violations());
        // Time moving on starts the count again.
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        for _ in 0..LIVELOCK_MESSAGES + 10 {
            c.on_send(NodeId(1), NodeId(2), &heartbeat);
        }
        assert!(c.livelocked());
        let v = c.violations();
        assert_eq!(v.len(), 1, "reported once: {v:?}");
        assert!(v[0].contains("liveness: livelock: 100000 messages"), "{v:?}");
    }
}
