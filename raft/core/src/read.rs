//! Reads that do not write the log (Raft thesis §6.4): ReadIndex, leader leases, and read
//! indexes a leader hands to followers.
//!
//! A read asks for a *read index*: an index such that every write committed before the read
//! was asked for is at or below it. Serving the read from a state machine that has applied up
//! to that index is linearizable. The leader takes its commit index, then proves it is still
//! the leader by a heartbeat *round* acknowledged by a quorum of the configuration in force:
//!
//! - Rounds have ids that increase over the life of the core; a follower echoes the id of the
//!   heartbeat it answers, and a read waits for a quorum of echoes of *its* round or a later
//!   one. An answer to an earlier round — sent before the read arrived — never confirms it.
//! - Every read that arrives before a round is sent joins that round; the periodic heartbeat is
//!   a round too, so an idle leader's heartbeats confirm the reads waiting at that moment. One
//!   round at a time carries reads: reads that arrive while it is out go in the next one, sent
//!   as soon as it is confirmed (or with the next heartbeat), so under load a round trip
//!   confirms every read that arrived during the previous one.
//! - No read is served before the leader has committed an entry of its own term (its no-op):
//!   until then its commit index may lag what earlier leaders committed. Reads wait for it.
//! - A lease: once a quorum confirmed a round the leader sent at `t`, no other leader can be
//!   elected before `t + election_timeout_min` on the followers' clocks (with CheckQuorum they
//!   ignore vote requests that long after hearing from the leader, and they heard after `t`).
//!   The leader serves lease reads without a round until `t + election_timeout_min -
//!   clock_drift_bound` by its own clock. Not during a leadership transfer (the target
//!   campaigns past the followers' stickiness), not for an election timeout after an aborted
//!   one, and only with CheckQuorum.
//! - A follower sends its reads to the leader in batches ([`ReadIndexRequest`]); the leader
//!   treats the batch as one read and answers with the read index once its round is
//!   confirmed. The follower fails the batch if its leader changes before the answer.

use std::collections::{BTreeMap, VecDeque};

use crate::action::{Action, ReadReady};
use crate::message::{ReadIndexRequest, ReadIndexResponse};
use crate::raft::{RaftCore, Ungated};
use crate::time::Instant;
use crate::types::{LogIndex, NodeId, Role, Term};

/// A driver's name for one read (unique among the reads it has outstanding).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReadId(pub u64);

/// How a read gets its read index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadMode {
    /// On the leader: its commit index, confirmed by a heartbeat round.
    ReadIndex,
    /// On the leader: its commit index, without a round while its lease holds (falls back to
    /// a round when it does not). Needs CheckQuorum.
    Lease,
    /// On any node that knows the leader: the leader's confirmed read index, asked for in a
    /// message (on the leader itself this is [`ReadMode::ReadIndex`]).
    Follower,
}

/// Why a read failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// This node cannot serve the read: it is not the leader (or, for a follower read, knows
    /// no leader).
    #[error("not the leader; {}", match leader {
        Some(l) => format!("the leader is node {}", l.0),
        None => "no leader known".to_string(),
    })]
    NotLeader {
        /// The leader this node knows of, if any.
        leader: Option<NodeId>,
    },
    /// Lease reads need CheckQuorum (without it, followers do not stay loyal to a leader for an
    /// election timeout, and no lease exists).
    #[error("lease reads need check_quorum")]
    LeaseNeedsCheckQuorum,
    /// The leader lost its leadership (or the follower its leader) before the read's index was
    /// confirmed. Retry on the new leader.
    #[error("leadership changed before the read was confirmed")]
    LeadershipLost,
    /// Too many reads are waiting for confirmation on this node.
    #[error("too many reads in progress")]
    TooManyReads,
}

impl ReadError {
    /// Whether retrying (after a while, or on the node a `NotLeader` hint names) may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, ReadError::LeaseNeedsCheckQuorum)
    }
}

/// The most reads waiting on one leader (local and follower batches), and the most heartbeat
/// rounds remembered for the lease.
const MAX_PENDING_READS: usize = 1 << 16;
const MAX_ROUNDS: usize = 256;
/// The most follower read batches waiting for the leader's answer.
const MAX_BATCHES: usize = 1024;

/// Who asked for a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reader {
    Local(ReadId),
    Remote { from: NodeId, batch: u64 },
}

/// The read state of a core: the leader's rounds and waiting reads, the follower's batches.
#[derive(Debug, Default)]
pub(crate) struct Reads {
    /// The id of the next round (ids are never reused by this core).
    next_round: u64,
    /// Rounds sent and not yet confirmed, with when they were sent (oldest first).
    rounds: VecDeque<(u64, Instant)>,
    /// The highest round a quorum confirmed (this leadership).
    confirmed: u64,
    /// When the newest confirmed round was sent.
    lease_from: Option<Instant>,
    /// No lease until the commit index reaches this (the entry a leader appends when it gives
    /// a transfer up).
    lease_needs_commit: LogIndex,
    /// Reads waiting for the leader's first commit of its term.
    waiting_noop: Vec<Reader>,
    /// Reads with their index, waiting for the next round to be sent.
    unsent: Vec<(Reader, LogIndex)>,
    /// Reads in a round: (round, index, reader), by round.
    in_round: VecDeque<(u64, LogIndex, Reader)>,
    /// Follower side: reads not yet sent to the leader.
    follower_unsent: Vec<ReadId>,
    /// Follower side: batches sent, by batch id: (leader, term, reads).
    batches: BTreeMap<u64, (NodeId, Term, Vec<ReadId>)>,
}

impl Reads {
    fn leader_pending(&self) -> usize {
        self.waiting_noop.len() + self.unsent.len() + self.in_round.len()
    }
}

impl RaftCore {
    /// Asks for a read index for the read `id` (see [`ReadMode`]). Read ids must be unique
    /// and increase from call to call, across restarts of this node too (the engine starts
    /// them from the wall clock): a follower names its batch of reads after the first one, and
    /// an answer meant for an earlier life of this node must not match. The outcome comes as an [`Action::ReadIndex`] naming `id`: at once (a
    /// lease read), after a heartbeat round, or — on a follower — after the leader's answer.
    /// Serve the read once the state machine has applied up to the index.
    ///
    /// # Errors
    /// [`ReadError::NotLeader`] for a leader-only mode elsewhere, or a follower read without a
    /// known leader; [`ReadError::LeaseNeedsCheckQuorum`]; [`ReadError::TooManyReads`].
    pub fn read_index(
        &mut self,
        now: Instant,
        id: ReadId,
        mode: ReadMode,
    ) -> Result<(), ReadError> {
        self.clock = self.clock.max(now);
        if mode == ReadMode::Lease && !self.cfg.check_quorum {
            return Err(ReadError::LeaseNeedsCheckQuorum);
        }
        if self.role == Role::Leader {
            if self.reads.leader_pending() >= MAX_PENDING_READS {
                return Err(ReadError::TooManyReads);
            }
            self.leader_read(now, Reader::Local(id), mode == ReadMode::Lease);
            return Ok(());
        }
        match (mode, self.leader) {
            (ReadMode::Follower, Some(leader)) if leader != self.id => {
                if self.reads.follower_unsent.len() >= MAX_PENDING_READS {
                    return Err(ReadError::TooManyReads);
                }
                self.reads.follower_unsent.push(id);
                self.dirty = true;
                Ok(())
            }
            _ => Err(ReadError::NotLeader { leader: self.leader }),
        }
    }

    /// Whether the leader's lease holds at `now` (reads may skip the round).
    pub fn lease_valid(&self, now: Instant) -> bool {
        if self.role != Role::Leader || !self.cfg.check_quorum || self.transfer.is_some() {
            return false;
        }
        if self.commit < self.reads.lease_needs_commit || !self.own_term_committed() {
            return false;
        }
        let drift = if mutant!(self, LeaseIgnoresDrift) {
            Default::default()
        } else {
            self.cfg.clock_drift_bound
        };
        let length = self.cfg.election_timeout_min.saturating_sub(drift);
        self.reads.lease_from.is_some_and(|t| now < t + length)
    }

    /// Whether this leader has committed an entry of its own term.
    pub(crate) fn own_term_committed(&self) -> bool {
        self.role == Role::Leader && self.commit >= self.leader_noop
    }

    fn leader_read(&mut self, now: Instant, reader: Reader, lease: bool) {
        if !self.own_term_committed() && !mutant!(self, ReadBeforeNoop) {
            self.reads.waiting_noop.push(reader);
            return;
        }
        if (lease && self.lease_valid(now)) || mutant!(self, ReadWithoutRound) {
            self.read_ready(reader, self.commit);
            return;
        }
        self.reads.unsent.push((reader, self.commit));
        self.dirty = true;
    }

    /// The read index of `reader` is confirmed.
    fn read_ready(&mut self, reader: Reader, index: LogIndex) {
        match reader {
            Reader::Local(id) => {
                self.actions.push_back(Action::ReadIndex(ReadReady { id, result: Ok(index) }));
            }
            Reader::Remote { from, batch } => {
                let body = Ungated::ReadIndexResponse(ReadIndexResponse { batch, index });
                self.send_now(from, self.term, body);
            }
        }
    }

    /// A new round id, remembered with its send time for the lease. Reads waiting for a round
    /// join it. The caller sends the heartbeats.
    pub(crate) fn new_round(&mut self) -> u64 {
        self.reads.next_round += 1;
        let round = self.reads.next_round;
        if self.reads.rounds.len() == MAX_ROUNDS {
            // Only the lease looks these up; a later round's confirmation confirms the reads of
            // a forgotten one all the same.
            self.reads.rounds.pop_front();
        }
        self.reads.rounds.push_back((round, self.clock));
        for (reader, index) in std::mem::take(&mut self.reads.unsent) {
            self.reads.in_round.push_back((round, index, reader));
        }
        round
    }

    /// Leader, while flushing: reads whose no-op is now committed get their index; reads
    /// waiting for a round get one (a heartbeat to every peer, sent now).
    pub(crate) fn flush_reads(&mut self) {
        if !self.reads.waiting_noop.is_empty() && self.own_term_committed() {
            let commit = self.commit;
            let waiting = std::mem::take(&mut self.reads.waiting_noop);
            self.reads.unsent.extend(waiting.into_iter().map(|r| (r, commit)));
        }
        // One round at a time carries reads: the reads that arrive while it is out wait for
        // it, and all of them go in the next round, sent when it is confirmed. Under load this
        // is what batches reads (one round per round trip, not one per loop turn); a lone read
        // still goes at once. (A lost round is made good by the next heartbeat, a round too.)
        if !self.reads.unsent.is_empty() && self.reads.in_round.is_empty() {
            self.send_heartbeat_round();
        }
    }

    /// Follower, while flushing: sends the reads gathered since the last flush to the leader as
    /// one batch.
    pub(crate) fn flush_follower_reads(&mut self) {
        if self.reads.follower_unsent.is_empty() {
            return;
        }
        let Some(leader) = self.leader.filter(|l| *l != self.id) else {
            self.fail_follower_reads();
            return;
        };
        let reads = std::mem::take(&mut self.reads.follower_unsent);
        // The batch is named by its first read's id: the driver's read ids increase across
        // restarts too, so an answer meant for a batch of an earlier life of this node (same
        // term, same leader) can never answer a batch of this one.
        let batch = reads[0].0;
        if self.reads.batches.len() >= MAX_BATCHES {
            // Answers lost on the way: give the oldest batch up rather than grow for ever.
            if let Some((_, (_, _, lost))) = self.reads.batches.pop_first() {
                for id in lost {
                    let result = Err(ReadError::LeadershipLost);
                    self.actions.push_back(Action::ReadIndex(ReadReady { id, result }));
                }
            }
        }
        self.reads.batches.insert(batch, (leader, self.term, reads));
        self.send_now(leader, self.term, Ungated::ReadIndexRequest(ReadIndexRequest { batch }));
    }

    /// A heartbeat answer echoing `round` came from `from`.
    pub(crate) fn on_round_ack(&mut self, from: NodeId, round: u64) {
        let newest = self.reads.next_round;
        let Some(pr) = self.progress.get_mut(&from) else { return };
        let round = if mutant!(self, ReadRoundByTermOnly) { newest } else { round };
        // A round this leadership never sent is a lie (or a bug): ignore it.
        if round > newest || round <= pr.read_acked {
            return;
        }
        pr.read_acked = round;
        self.confirm_rounds();
    }

    /// Serves the reads of every round a quorum has confirmed, and extends the lease.
    pub(crate) fn confirm_rounds(&mut self) {
        let (id, newest, progress) = (self.id, self.reads.next_round, &self.progress);
        let confirmed = self
            .quorum_membership()
            .committed_index(|n| {
                LogIndex(if n == id {
                    newest
                } else {
                    progress.get(&n).map_or(0, |p| p.read_acked)
                })
            })
            .0;
        if confirmed <= self.reads.confirmed {
            return;
        }
        self.reads.confirmed = confirmed;
        while let Some(&(round, sent)) = self.reads.rounds.front() {
            if round > confirmed {
                break;
            }
            self.reads.rounds.pop_front();
            self.reads.lease_from = Some(self.reads.lease_from.map_or(sent, |t| t.max(sent)));
        }
        while self.reads.in_round.front().is_some_and(|(r, _, _)| *r <= confirmed) {
            let (_, index, reader) = self.reads.in_round.pop_front().expect("checked");
            self.read_ready(reader, index);
        }
        self.dirty = true;
    }

    /// A follower's batch of reads reached this node.
    pub(crate) fn handle_read_index_request(
        &mut self,
        now: Instant,
        from: NodeId,
        req: ReadIndexRequest,
    ) {
        if self.role != Role::Leader {
            // The follower fails the batch when it learns of the new leader (or times out).
            return;
        }
        if self.reads.leader_pending() >= MAX_PENDING_READS {
            tracing::debug!(node = %self.id, %from, "too many reads waiting; dropping a follower's batch");
            return;
        }
        self.leader_read(now, Reader::Remote { from, batch: req.batch }, false);
    }

    /// The leader answered a batch of this follower's reads.
    pub(crate) fn handle_read_index_response(&mut self, from: NodeId, resp: ReadIndexResponse) {
        let matches = self
            .reads
            .batches
            .get(&resp.batch)
            .is_some_and(|(leader, term, _)| *leader == from && *term == self.term);
        if !matches {
            return;
        }
        let (_, _, reads) = self.reads.batches.remove(&resp.batch).expect("checked");
        for id in reads {
            self.actions.push_back(Action::ReadIndex(ReadReady { id, result: Ok(resp.index) }));
        }
    }

    /// Fails every read this node has waiting (as leader or as follower): its role or its
    /// leader changed.
    pub(crate) fn reads_role_changed(&mut self) {
        let r = &mut self.reads;
        let mut failed: Vec<ReadId> = Vec::new();
        let locals = r
            .waiting_noop
            .drain(..)
            .chain(r.unsent.drain(..).map(|(x, _)| x))
            .chain(r.in_round.drain(..).map(|(_, _, x)| x));
        failed.extend(locals.filter_map(|x| match x {
            Reader::Local(id) => Some(id),
            Reader::Remote { .. } => None,
        }));
        r.rounds.clear();
        r.confirmed = 0;
        r.lease_from = None;
        for id in failed {
            self.actions.push_back(Action::ReadIndex(ReadReady {
                id,
                result: Err(ReadError::LeadershipLost),
            }));
        }
        self.fail_follower_reads();
    }

    fn fail_follower_reads(&mut self) {
        let r = &mut self.reads;
        let ids: Vec<ReadId> = r
            .follower_unsent
            .drain(..)
            .chain(std::mem::take(&mut r.batches).into_values().flat_map(|(_, _, v)| v))
            .collect();
        for id in ids {
            self.actions.push_back(Action::ReadIndex(ReadReady {
                id,
                result: Err(ReadError::LeadershipLost),
            }));
        }
    }

    /// No lease until `index` is committed (after an aborted leadership transfer), and none
    /// from rounds confirmed before.
    pub(crate) fn block_lease_until_committed(&mut self, index: LogIndex) {
        self.reads.lease_needs_commit = self.reads.lease_needs_commit.max(index);
        self.reads.lease_from = None;
    }
}
