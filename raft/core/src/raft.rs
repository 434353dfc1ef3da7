//! [`RaftCore`]: state shared by all roles, the input and output methods, and the write
//! pipeline that enforces persist-before-send.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use crate::action::{Action, ApplyRequest, LogWrite, Outgoing, PersistRequest, WriteId};
use crate::confchange::ConfLog;
use crate::config::{Config, ConfigError};
use crate::log::{LogStateError, RaftLog};
use crate::membership::{Membership, MembershipError};
use crate::message::{AppendEntries, Heartbeat, Message, MessageBody, RequestVote};
use crate::progress::Progress;
use crate::rng::Rng;
use crate::time::Instant;
use crate::types::{
    Entry, EntryPayload, HardState, LogId, LogIndex, NodeId, Role, SnapshotMeta, Term,
};

/// What a node loaded from its storage when it starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InitialState {
    /// The durable hard state (default for a new node).
    pub hard_state: HardState,
    /// The id of the last purged entry (`LogId::ZERO` if none).
    pub purged: LogId,
    /// The first log id of every run of equal terms after `purged`, ascending (empty for an
    /// empty log). The engine finds them by binary search over the log store.
    pub term_runs: Vec<LogId>,
    /// The id of the last entry in the log (`purged` if the log is empty).
    pub last: LogId,
    /// The last index the state machine has applied (it survives restarts with the state
    /// machine's data, so the core does not hand those entries out again). At least the
    /// snapshot's last index: the driver restores the state machine from the snapshot first.
    pub applied: LogIndex,
    /// The latest snapshot in the snapshot store, if any.
    pub snapshot: Option<SnapshotMeta>,
    /// The configuration entries of the log after the snapshot (or after `purged` without
    /// one), with their ids, ascending. The engine finds them by reading the log at startup.
    /// The configuration in force is the latest of them; without any, the snapshot's; without
    /// a snapshot, [`Config::members`](crate::Config::members) (a new cluster), or none at all
    /// when that is empty (a node waiting to be added to an existing cluster).
    pub memberships: Vec<(LogId, Membership)>,
}

/// Why a core could not start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The initial membership is invalid.
    #[error(transparent)]
    Membership(#[from] MembershipError),
    /// The loaded log is inconsistent.
    #[error(transparent)]
    Log(#[from] LogStateError),
    /// The state machine or hard state is ahead of the log: committed entries are missing.
    #[error(
        "storage lost committed entries: commit/applied index {committed} is beyond the last log entry {last}"
    )]
    MissingCommitted {
        /// The highest index known committed.
        committed: LogIndex,
        /// The last index in the log.
        last: LogIndex,
    },
    /// The log was purged past the latest snapshot, or the state machine was not restored
    /// from it.
    #[error(
        "the snapshot (at {snapshot}) does not cover the purged log ({purged}) or the applied index ({applied})"
    )]
    SnapshotMismatch {
        /// The snapshot's last index (0 if none).
        snapshot: LogIndex,
        /// The purged index.
        purged: LogIndex,
        /// The applied index.
        applied: LogIndex,
    },
    /// An entry's term is above the durable current term.
    #[error("the log's last term {log_term} is above the durable current term {term}")]
    TermBehindLog {
        /// The durable current term.
        term: Term,
        /// The last log term.
        log_term: Term,
    },
    /// A configuration entry given at startup lies beyond the end of the log.
    #[error("configuration entry {entry} is beyond the last log entry {last}")]
    MembershipBeyondLog {
        /// The configuration entry's id.
        entry: LogId,
        /// The last log id.
        last: LogId,
    },
}

/// Why a proposal was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProposeError {
    /// Only the leader accepts proposals.
    #[error("not the leader; {}", match leader {
        Some(l) => format!("the leader is node {}", l.0),
        None => "no leader known".to_string(),
    })]
    NotLeader {
        /// The leader this node knows of, if any.
        leader: Option<NodeId>,
    },
    /// The leader is handing leadership over (see
    /// [`RaftCore::transfer_leadership`]); retry once the new leader is known.
    #[error("leadership is being transferred to node {}", to.0)]
    TransferInProgress {
        /// The transfer's target.
        to: NodeId,
    },
    /// Too many forwarded batches wait for the leader's answer.
    #[error("too many forwarded proposals waiting for the leader")]
    TooManyForwarded,
    /// A configuration change was refused; the reason says why.
    #[error(transparent)]
    Membership(#[from] crate::confchange::ChangeError),
}

/// A message released to the driver only after a write is durable.
#[derive(Debug)]
struct Gated {
    after: WriteId,
    out: Outgoing,
}

/// A message that never depends on this node's durable state, so it may be sent at once: a
/// leader's replication traffic (the leader counts itself only after its own write, but may
/// ship entries to followers in parallel) and pre-vote requests (which change nothing).
///
/// Every other message goes through [`RaftCore::send_after_persist`]: the only way to emit a
/// vote, a vote grant, or an append acknowledgement is after the write it depends on.
pub(crate) enum Ungated {
    Append(AppendEntries),
    Heartbeat(Heartbeat),
    PreVote(RequestVote),
    /// Answers about reads and forwarded commands, and a transfer's TimeoutNow: none of them
    /// vouches for this node's log or vote.
    ReadIndexRequest(crate::message::ReadIndexRequest),
    ReadIndexResponse(crate::message::ReadIndexResponse),
    Propose(crate::message::Propose),
    ProposeResponse(crate::message::ProposeResponse),
    TimeoutNow(crate::message::TimeoutNow),
}

/// The Raft protocol for one node, as a deterministic state machine without IO.
///
/// # Method groups
///
/// - **Inputs** (`handle_*`): [`handle_message`](Self::handle_message),
///   [`handle_timeout`](Self::handle_timeout), [`handle_persisted`](Self::handle_persisted),
///   [`handle_applied`](Self::handle_applied), [`handle_unreachable`](Self::handle_unreachable).
///   Each takes `now` where time matters; the core never reads a clock.
/// - **Commands**: [`propose`](Self::propose) (more come with later features).
/// - **Outputs** (`poll_*`): [`poll_action`](Self::poll_action) and
///   [`poll_timeout`](Self::poll_timeout).
/// - **Getters**: role, term, leader, commit index, last log id, membership, …
///
/// # Calling order
///
/// After any input or command, call `poll_action` until it returns `None`, carrying out each
/// action, then `poll_timeout` and call `handle_timeout` once that instant has passed. Several
/// inputs may be given before polling (that is how proposals are batched into one write).
///
/// A write handed to the driver and not yet acknowledged.
#[derive(Clone, Copy, Debug)]
struct InflightWrite {
    id: WriteId,
    /// The highest index whose entry this write's completion proves durable *as the in-memory
    /// log has it now*: the log's last index when the write was issued, lowered by every later
    /// truncation or install that replaced entries it wrote. Durability is tracked per write, not
    /// by matching (term, index): a suffix truncated and appended again with the same ids while
    /// the first write is in flight must not count as durable until the rewrite is.
    vouches_to: LogIndex,
    hard_state: Option<HardState>,
}

/// Actions come out in the order the core decided them: a `Persist` is emitted before anything
/// that depends on it, and messages that depend on durable state (vote grants, the candidate's
/// own vote requests, append acknowledgements) are emitted only after `handle_persisted`
/// acknowledges the write they depend on. `Persist` writes must be made durable in id order.
/// `Apply` requests cover consecutive index ranges and must be applied in order.
pub struct RaftCore {
    pub(crate) cfg: Config,
    pub(crate) id: NodeId,
    pub(crate) rng: Rng,
    pub(crate) role: Role,
    pub(crate) term: Term,
    pub(crate) vote: Option<NodeId>,
    pub(crate) leader: Option<NodeId>,
    pub(crate) membership: Membership,
    /// The configurations of the log; `membership` is the latest.
    pub(crate) confs: ConfLog,
    pub(crate) log: RaftLog,
    pub(crate) commit: LogIndex,
    pub(crate) applied: LogIndex,
    /// The next index to hand out in an `Apply` action.
    pub(crate) apply_next: LogIndex,

    pub(crate) election_deadline: Instant,
    pub(crate) heartbeat_deadline: Instant,
    pub(crate) quorum_deadline: Instant,
    /// The latest `now` an input carried (for decisions made while flushing, which has none).
    pub(crate) clock: Instant,
    /// When a follower last heard from its leader (for leader stickiness).
    pub(crate) leader_heard_at: Option<Instant>,

    /// Votes received in the current (pre-)election, by voter.
    pub(crate) votes: BTreeMap<NodeId, bool>,
    /// The leader's view of every other node.
    pub(crate) progress: BTreeMap<NodeId, Progress>,

    /// The latest snapshot (built here or installed from a leader).
    pub(crate) snapshot: Option<SnapshotMeta>,
    /// A `BuildSnapshot` action is outstanding.
    pub(crate) building_snapshot: bool,
    /// A complete snapshot from the leader is being installed; appends wait for it.
    pub(crate) installing: Option<LogId>,
    /// Snapshot chunks handed to the driver whose outcome has not come back yet. The outcome of
    /// the final chunk comes back after those of every earlier one, so `installing` ends when
    /// this drops to zero.
    pub(crate) chunks_pending: u64,
    /// Bytes of entries appended since the last snapshot (for the size policy).
    pub(crate) bytes_since_snapshot: u64,

    /// Reads waiting for their read index (see `read.rs`).
    pub(crate) reads: crate::read::Reads,
    /// The index of this leader's no-op (reads wait until it commits).
    pub(crate) leader_noop: LogIndex,
    /// The leadership transfer in progress (leader only).
    pub(crate) transfer: Option<crate::transfer::Transfer>,
    /// The next campaign was asked for by the leader (TimeoutNow).
    pub(crate) campaign_transfer: bool,
    /// Commands forwarded to the leader and not answered.
    pub(crate) forwards: crate::forward::Forwards,
    /// Leader: the highest forwarded batch id taken from each follower this leadership.
    pub(crate) forwards_seen: BTreeMap<NodeId, u64>,
    /// A restarted node ignores vote requests until then, as if it still heard from a leader:
    /// it may have acknowledged a round that a leader's lease counts on just before it went
    /// down.
    pub(crate) restart_quiet_until: Option<Instant>,

    // The write pipeline.
    pending: LogWrite,
    next_write: WriteId,
    /// Writes handed to the driver and not yet durable, in id order.
    inflight: VecDeque<InflightWrite>,
    persisted: WriteId,
    /// The hard state as of the last write handed out.
    submitted_hs: HardState,
    /// The hard state known durable.
    pub(crate) durable_hs: HardState,
    gated: VecDeque<Gated>,
    pub(crate) actions: VecDeque<Action>,
    /// Something changed that may produce actions at the next poll.
    pub(crate) dirty: bool,
}

impl RaftCore {
    /// Makes a core from a validated configuration and the state loaded from storage.
    pub fn new(cfg: Config, init: InitialState, now: Instant) -> Result<RaftCore, StartError> {
        cfg.validate()?;
        let base = match &init.snapshot {
            Some(s) => (s.last_log_id, s.membership.clone()),
            None if cfg.members.is_empty() => (LogId::ZERO, Membership::uninitialized()),
            None => (LogId::ZERO, Membership::new(cfg.members.iter().copied())?),
        };
        for (id, m) in &init.memberships {
            if id.index > init.last.index {
                return Err(StartError::MembershipBeyondLog { entry: *id, last: init.last });
            }
            m.validate()?;
        }
        let confs = ConfLog::new(base, init.memberships.clone());
        let membership = confs.latest().1.clone();
        let snap_index = init.snapshot.as_ref().map_or(LogIndex(0), |s| s.last_log_id.index);
        if init.purged.index > snap_index || init.applied < snap_index {
            return Err(StartError::SnapshotMismatch {
                snapshot: snap_index,
                purged: init.purged.index,
                applied: init.applied,
            });
        }
        let log = RaftLog::restore(init.purged, init.term_runs, init.last, cfg.entry_cache_bytes)?;
        let hs = init.hard_state;
        if log.last().term > hs.term {
            return Err(StartError::TermBehindLog { term: hs.term, log_term: log.last().term });
        }
        let commit = hs.commit.max(init.applied).max(init.purged.index);
        if commit > log.last().index {
            return Err(StartError::MissingCommitted { committed: commit, last: log.last().index });
        }
        let id = cfg.id;
        let rng = Rng::new(cfg.seed ^ id.0.wrapping_mul(0xA076_1D64_78BD_642F));
        let applied = init.applied.max(init.purged.index);
        let role = if membership.is_voter(id) { Role::Follower } else { Role::Learner };
        let mut core = RaftCore {
            id,
            rng,
            role,
            term: hs.term,
            vote: hs.vote,
            leader: None,
            membership,
            confs,
            log,
            commit,
            applied,
            apply_next: applied.next(),
            election_deadline: now,
            heartbeat_deadline: now,
            quorum_deadline: now,
            clock: now,
            leader_heard_at: None,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            snapshot: init.snapshot,
            building_snapshot: false,
            installing: None,
            chunks_pending: 0,
            bytes_since_snapshot: 0,
            reads: Default::default(),
            leader_noop: LogIndex(u64::MAX),
            transfer: None,
            campaign_transfer: false,
            forwards: Default::default(),
            forwards_seen: BTreeMap::new(),
            restart_quiet_until: None,
            pending: LogWrite::default(),
            next_write: WriteId(1),
            inflight: VecDeque::new(),
            persisted: WriteId(0),
            submitted_hs: hs,
            durable_hs: hs,
            gated: VecDeque::new(),
            actions: VecDeque::new(),
            dirty: true,
            cfg,
        };
        core.reset_election_deadline(now);
        if core.cfg.check_quorum && hs.term.0 > 0 {
            core.restart_quiet_until = Some(now + core.cfg.election_timeout_min);
        }
        Ok(core)
    }

    // ----- inputs -----------------------------------------------------------------------------

    /// A message arrived from `from`. Malformed messages, and messages from nodes outside the
    /// membership, are logged and dropped.
    pub fn handle_message(&mut self, now: Instant, from: NodeId, msg: Message) {
        if let Err(e) = msg.validate() {
            tracing::warn!(node = %self.id, %from, kind = msg.kind(), error = %e, "dropping invalid message");
            return;
        }
        if let MessageBody::AppendEntries(a) = &msg.body {
            if let Err(why) = self.check_append_bounds(a) {
                tracing::warn!(node = %self.id, %from, entries = a.entries.len(), "dropping an AppendEntries over this node's bounds: {why}");
                return;
            }
        }
        if from == self.id {
            tracing::warn!(node = %self.id, %from, kind = msg.kind(), "dropping a message from this node's own id");
            return;
        }
        // A node outside the configuration — removed, or never added — can neither be elected
        // nor answer for anything: its vote requests and its answers are dropped, so a removed
        // node with a higher term changes nothing (PITFALLS P15). What only a leader sends
        // (appends, heartbeats, snapshots) is handled on its merits: a leader in a
        // configuration this node does not know yet must still reach it, and a node waiting to
        // be added hears from the leader that adds it.
        let from_leader_role = matches!(
            msg.body,
            MessageBody::AppendEntries(_)
                | MessageBody::Heartbeat(_)
                | MessageBody::InstallSnapshot(_)
        );
        let known = self.membership.contains(from)
            && !matches!(msg.body, MessageBody::RequestVote(_))
            || self.membership.is_voter(from);
        if !from_leader_role && !known && !self.membership.is_uninitialized() {
            tracing::debug!(node = %self.id, %from, kind = msg.kind(), "dropping a message from a node outside the configuration");
            return;
        }
        self.dirty = true;
        self.clock = self.clock.max(now);
        self.step(now, from, msg);
    }

    /// Time has reached the instant last returned by [`poll_timeout`](Self::poll_timeout)
    /// (calling it early or late is harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.dirty = true;
        self.clock = self.clock.max(now);
        self.tick(now);
    }

    /// The write `id`, and every earlier one, is durable.
    pub fn handle_persisted(&mut self, now: Instant, id: WriteId) {
        if id <= self.persisted {
            return;
        }
        if id >= self.next_write {
            tracing::error!(node = %self.id, ?id, "persisted a write that was never requested");
            return;
        }
        self.dirty = true;
        self.clock = self.clock.max(now);
        // A truncation not yet handed out also changes entries a finished write put there.
        let pending_cut = self.pending.truncate_from.map(LogIndex::prev);
        while let Some(&w) = self.inflight.front() {
            if w.id > id {
                break;
            }
            self.inflight.pop_front();
            let vouches = pending_cut.map_or(w.vouches_to, |c| c.min(w.vouches_to));
            self.log.mark_stable(vouches);
            if let Some(hs) = w.hard_state {
                self.durable_hs = hs;
            }
        }
        self.persisted = id;
        while self.gated.front().is_some_and(|g| g.after <= id) {
            let g = self.gated.pop_front().expect("checked non-empty");
            if self.withdrawn_grant(&g.out.message) {
                continue;
            }
            self.actions.push_back(Action::Send(g.out));
        }
        self.on_persisted(now);
    }

    /// The state machine has applied every entry up to `index`.
    pub fn handle_applied(&mut self, index: LogIndex) {
        if index > self.applied && index < self.apply_next {
            self.applied = index;
            self.dirty = true;
        }
    }

    /// A message to `peer` could not be delivered (the transport gave up). A leader stops
    /// streaming to it and probes instead, so nothing waits for answers that will not come.
    pub fn handle_unreachable(&mut self, peer: NodeId) {
        if let Some(pr) = self.progress.get_mut(&peer) {
            if pr.state == crate::progress::ProgressState::Snapshot {
                // Keep the transfer's offset; the stall check resends the chunk later.
                pr.chunk_in_flight = true;
                return;
            }
            pr.become_probe();
            // Wait for a heartbeat answer before probing again, instead of hammering a peer
            // that the transport just failed to reach.
            pr.probe_sent = true;
            self.dirty = true;
        }
    }

    // ----- commands ---------------------------------------------------------------------------

    /// Appends an application command to the log, if this node is the leader. Returns the id
    /// the entry will have; it is committed once a quorum has it durably.
    pub fn propose(&mut self, _now: Instant, data: Bytes) -> Result<LogId, ProposeError> {
        self.propose_payload(EntryPayload::Normal(data))
    }

    /// Starts an election now, as if the election timeout had fired (with PreVote, a
    /// pre-election first). Leaders and learners ignore it.
    pub fn campaign(&mut self, now: Instant) {
        if matches!(self.role, Role::Leader | Role::Learner) {
            return;
        }
        self.dirty = true;
        self.election_deadline = now;
        self.tick(now);
    }

    /// Proposes several commands at once (a batch gathered from many clients), as if
    /// [`propose`](Self::propose) were called for each in order, but with one allocation for
    /// the batch. Returns the log id of the first; the `i`-th command gets
    /// `LogId { term: first.term, index: first.index + i }`. An empty batch appends nothing
    /// and returns the id the next entry would get.
    ///
    /// # Errors
    /// [`ProposeError::NotLeader`] if this node is not the leader (nothing is appended).
    pub fn propose_batch(
        &mut self,
        _now: Instant,
        commands: impl ExactSizeIterator<Item = Bytes>,
    ) -> Result<LogId, ProposeError> {
        self.check_can_propose()?;
        let first = LogId { term: self.term, index: self.log.last().index.next() };
        if commands.len() == 0 {
            return Ok(first);
        }
        let mut entries = Vec::with_capacity(commands.len());
        for (i, data) in commands.enumerate() {
            let log_id = LogId { term: first.term, index: first.index.plus(i as u64) };
            entries.push(Entry { log_id, payload: EntryPayload::Normal(data) });
        }
        self.append_local(entries);
        Ok(first)
    }

    /// Whether this node takes proposals now: the leader, not handing leadership over.
    pub(crate) fn check_can_propose(&self) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader: self.leader });
        }
        if let Some(t) = &self.transfer {
            return Err(ProposeError::TransferInProgress { to: t.to });
        }
        Ok(())
    }

    pub(crate) fn propose_payload(&mut self, payload: EntryPayload) -> Result<LogId, ProposeError> {
        self.check_can_propose()?;
        let log_id = LogId { term: self.term, index: self.log.last().index.next() };
        self.append_local(vec![Entry { log_id, payload }]);
        Ok(log_id)
    }

    // ----- outputs ----------------------------------------------------------------------------

    /// The next thing the driver must do, or `None` when there is nothing until the next input.
    #[must_use = "every action the core asks for must be carried out"]
    pub fn poll_action(&mut self) -> Option<Action> {
        if self.actions.is_empty() && self.dirty {
            self.dirty = false;
            self.flush();
        }
        self.actions.pop_front()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next.
    #[must_use = "the driver must arm a timer for the returned instant"]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.role {
            Role::Leader => {
                let mut t = self.heartbeat_deadline;
                if self.cfg.check_quorum {
                    t = t.min(self.quorum_deadline);
                }
                if let Some(tr) = &self.transfer {
                    t = t.min(tr.deadline);
                }
                Some(t)
            }
            Role::Learner => None,
            _ => Some(self.election_deadline),
        }
    }

    // ----- getters ----------------------------------------------------------------------------

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// The vote cast in the current term.
    pub fn vote(&self) -> Option<NodeId> {
        self.vote
    }

    /// The leader of the current term, if known.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// The highest index known committed.
    pub fn commit_index(&self) -> LogIndex {
        self.commit
    }

    /// The highest index the state machine reported applied.
    pub fn applied_index(&self) -> LogIndex {
        self.applied
    }

    /// The id of the last log entry (durable or not).
    pub fn last_log_id(&self) -> LogId {
        self.log.last()
    }

    /// The highest index known durable in the local log.
    pub fn stable_index(&self) -> LogIndex {
        self.log.stable()
    }

    /// How many entries the in-memory entry cache holds (for monitoring: the cache keeps what
    /// is not yet applied here or, on a leader, not yet acknowledged by every node).
    pub fn cached_entries(&self) -> usize {
        self.log.cached_len()
    }

    /// The last purged entry.
    pub fn purged_log_id(&self) -> LogId {
        self.log.purged()
    }

    /// The term of the entry at `index`, if the log has it.
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        self.log.term_at(index)
    }

    /// The hard state known durable.
    pub fn durable_hard_state(&self) -> HardState {
        self.durable_hs
    }

    /// The current membership.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// A leader's match index for each other node (empty unless leader).
    pub fn match_indexes(&self) -> BTreeMap<NodeId, LogIndex> {
        self.match_index_iter().collect()
    }

    /// The same as [`match_indexes`](Self::match_indexes), in node order, without
    /// allocating.
    pub fn match_index_iter(&self) -> impl Iterator<Item = (NodeId, LogIndex)> + '_ {
        self.progress.iter().map(|(id, p)| (*id, p.match_index))
    }

    // ----- shared machinery -------------------------------------------------------------------

    pub(crate) fn hard_state(&self) -> HardState {
        HardState { term: self.term, vote: self.vote, commit: self.commit }
    }

    pub(crate) fn reset_election_deadline(&mut self, now: Instant) {
        let min = self.cfg.election_timeout_min.as_nanos() as u64;
        let max = self.cfg.election_timeout_max.as_nanos() as u64;
        self.election_deadline = now + std::time::Duration::from_nanos(self.rng.range(min, max));
    }

    /// Appends entries to the in-memory log and the pending write.
    pub(crate) fn append_local(&mut self, entries: Vec<Entry>) {
        self.bytes_since_snapshot += self.log.append(&entries) as u64;
        self.conf_appended(&entries);
        self.pending.merge(LogWrite { entries, ..LogWrite::default() });
        self.dirty = true;
    }

    /// Removes entries at and after `from` from the in-memory log and the pending write.
    pub(crate) fn truncate_local(&mut self, from: LogIndex) {
        self.log.truncate(from);
        self.conf_truncated(from);
        self.pending.merge(LogWrite { truncate_from: Some(from), ..LogWrite::default() });
        self.dirty = true;
    }

    /// Emits a message that does not depend on local durable state.
    pub(crate) fn send_now(&mut self, to: NodeId, term: Term, body: Ungated) {
        let body = match body {
            Ungated::Append(a) => MessageBody::AppendEntries(a),
            Ungated::Heartbeat(h) => MessageBody::Heartbeat(h),
            Ungated::PreVote(r) => MessageBody::RequestVote(r),
            Ungated::ReadIndexRequest(r) => MessageBody::ReadIndexRequest(r),
            Ungated::ReadIndexResponse(r) => MessageBody::ReadIndexResponse(r),
            Ungated::Propose(p) => MessageBody::Propose(p),
            Ungated::ProposeResponse(p) => MessageBody::ProposeResponse(p),
            Ungated::TimeoutNow(t) => MessageBody::TimeoutNow(t),
        };
        self.actions.push_back(Action::Send(Outgoing { to, message: Message { term, body } }));
    }

    /// Emits a message at once, bypassing the persist gate: only mutants do this.
    #[cfg(feature = "mutants")]
    pub(crate) fn send_unsafe_mutant(&mut self, to: NodeId, message: Message) {
        self.actions.push_back(Action::Send(Outgoing { to, message }));
    }

    /// Emits a message once everything this node has written so far (including the pending
    /// write) is durable.
    pub(crate) fn send_after_persist(&mut self, to: NodeId, message: Message) {
        let out = Outgoing { to, message };
        let hs_changed = self.hard_state_needs_write();
        let after = if !self.pending.is_empty() || hs_changed {
            self.next_write
        } else {
            self.inflight.back().map_or(self.persisted, |w| w.id)
        };
        if after <= self.persisted {
            self.actions.push_back(Action::Send(out));
        } else {
            self.gated.push_back(Gated { after, out });
        }
    }

    /// Sends a message that depends on this node's term (and vote) being durable, but not on
    /// its log: a heartbeat response. It waits for the write that carries the current term and
    /// vote, not for entries in flight, so a slow disk under heavy appends never delays the
    /// answers CheckQuorum counts (etcd sends heartbeat responses at once for the same reason).
    pub(crate) fn send_after_term_durable(&mut self, to: NodeId, message: Message) {
        let out = Outgoing { to, message };
        let current = (self.term, self.vote);
        let after = if self.hard_state_needs_write() {
            Some(self.next_write)
        } else if (self.durable_hs.term, self.durable_hs.vote) != current {
            // Handed to storage but not durable yet: wait for the write that carries it.
            // (If none did, which the write rules rule out, the last write in flight is a
            // safe bound: everything submitted is durable once it is.)
            self.inflight
                .iter()
                .find(|w| w.hard_state.is_some_and(|h| (h.term, h.vote) == current))
                .or(self.inflight.back())
                .map(|w| w.id)
        } else {
            None
        };
        match after {
            Some(after) if after > self.persisted => self.gated.push_back(Gated { after, out }),
            _ => self.actions.push_back(Action::Send(out)),
        }
    }

    /// Whether an AppendEntries stays within the bounds a sender with this node's `Config`
    /// keeps to: at most `max_entries_per_message` entries, and at most `max_bytes_per_message`
    /// entry bytes unless it carries a single entry.
    fn check_append_bounds(&self, a: &crate::message::AppendEntries) -> Result<(), String> {
        let max_count = self.cfg.max_entries_per_message;
        if a.entries.len() > max_count {
            return Err(format!(
                "{} entries, max_entries_per_message is {max_count}",
                a.entries.len()
            ));
        }
        let max_bytes = self.cfg.max_bytes_per_message;
        if a.entries.len() > 1 {
            let bytes: usize = a.entries.iter().map(Entry::size_hint).sum();
            if bytes > max_bytes {
                return Err(format!("{bytes} entry bytes, max_bytes_per_message is {max_bytes}"));
            }
        }
        Ok(())
    }

    /// Lowers what every write in flight vouches for to at most `up_to`: a later change (a
    /// truncation, a snapshot install) replaces what they wrote after it.
    pub(crate) fn cap_inflight(&mut self, up_to: LogIndex) {
        for w in &mut self.inflight {
            w.vouches_to = w.vouches_to.min(up_to);
        }
    }

    /// A vote or pre-vote grant decided while this node was a voter, released after it became
    /// a learner (a configuration entry appended while the grant waited for its write): a
    /// learner never votes, so the grant is withdrawn. Dropping a grant is always safe.
    fn withdrawn_grant(&self, m: &Message) -> bool {
        matches!(&m.body, MessageBody::VoteResponse(v) if v.granted)
            && !self.membership.is_voter(self.id)
    }

    /// Whether term or vote differ from what was last handed to storage.
    fn hard_state_needs_write(&self) -> bool {
        self.term != self.submitted_hs.term || self.vote != self.submitted_hs.vote
    }

    /// Turns accumulated changes into actions: the pending write, then replication, then apply.
    fn flush(&mut self) {
        self.after_commit_membership();
        let hs = self.hard_state();
        let term_or_vote = self.hard_state_needs_write();
        if term_or_vote || !self.pending.is_empty() {
            let mut write = std::mem::take(&mut self.pending);
            // The commit index rides along when there is a write anyway; term and vote force one.
            if term_or_vote || hs.commit != self.submitted_hs.commit {
                write.hard_state = Some(hs);
                self.submitted_hs = hs;
            }
            let id = self.next_write;
            self.next_write = WriteId(id.0 + 1);
            if let Some(from) = write.truncate_from {
                // Earlier writes still in flight put entries there that this one removes: their
                // completion no longer vouches for anything from `from` on, even if the same
                // (term, index) is appended again (it is durable only once this write is).
                self.cap_inflight(from.prev());
            }
            self.inflight.push_back(InflightWrite {
                id,
                vouches_to: self.log.last().index,
                hard_state: write.hard_state,
            });
            self.actions.push_back(Action::Persist(PersistRequest { id, write }));
        }
        if self.role == Role::Leader {
            self.replicate_all();
            self.maybe_send_timeout_now();
            self.flush_reads();
        } else {
            self.flush_follower_reads();
        }
        self.emit_apply();
        self.release_cache();
        self.maybe_build_snapshot();
    }

    /// Drops the cached entries nothing will take from the cache again: handed to the state
    /// machine and (on a leader) acknowledged by every other node. Dropping them now, while
    /// they are still in the CPU's caches, costs less than dropping a whole log's worth at the
    /// next purge, and keeps memory small. A node that falls behind keeps the entries after its
    /// match index cached (up to the cache limit); what is dropped stays in the store.
    fn release_cache(&mut self) {
        let done = self.apply_next.prev();
        self.log.release(self.releasable(done));
    }

    /// Up to where cached entries may be dropped once everything up to `applied` is handed to
    /// the state machine: every other node has acknowledged them (on a leader; a follower has
    /// no one to send them to).
    fn releasable(&self, applied: LogIndex) -> LogIndex {
        let lowest_match = self.progress.values().map(|p| p.match_index).min();
        lowest_match.map_or(applied, |m| m.min(applied))
    }

    fn emit_apply(&mut self) {
        if self.installing.is_some() {
            // A snapshot is being installed: the state machine is about to be replaced, and
            // anything handed out now would be applied after the restore, out of order. The
            // install moves `apply_next` past the snapshot.
            return;
        }
        let ready = self.commit.min(self.log.stable());
        // Bound what is handed out but not yet applied, so a slow state machine cannot make
        // memory grow with the commit rate.
        let max_outstanding = 4 * self.cfg.max_apply_batch as u64;
        while self.apply_next <= ready && self.apply_next.0 - self.applied.0 <= max_outstanding {
            let first = self.apply_next;
            let max = self.cfg.max_apply_batch as u64;
            let mut last_index = LogIndex(ready.0.min(first.0 + max - 1));
            let entries =
                if first == self.log.cache_first() && self.releasable(last_index) >= last_index {
                    // `release_cache` would drop these right after this (nothing else will read
                    // them from the cache): hand them over instead of copies. Handed-out entries
                    // are committed and durable (`ready` is at most `stable`), as released ones
                    // must be.
                    Some(self.log.take_front(last_index))
                } else if first >= self.log.cache_first() {
                    let (entries, _) = self
                        .log
                        .cached(first, (last_index.0 - first.0 + 1) as usize, usize::MAX)
                        .expect("range is in the cache");
                    Some(entries)
                } else {
                    // Read the part below the cache from storage; the rest comes in the next batch.
                    last_index = last_index.min(self.log.cache_first().prev());
                    None
                };
            let last = self.log.id_at(last_index).expect("committed entries are in the log");
            self.actions.push_back(Action::Apply(ApplyRequest { first, last, entries }));
            self.apply_next = last_index.next();
        }
    }

    fn on_persisted(&mut self, now: Instant) {
        match self.role {
            Role::Leader => self.maybe_commit(),
            Role::Candidate => self.check_votes(now),
            _ => {}
        }
    }
}
