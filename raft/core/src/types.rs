//! Identifiers and log records shared by every part of raftkit.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::membership::Membership;

/// The id of a node in a cluster. Ids are chosen by the user and must be unique per cluster.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct NodeId(pub u64);

/// A Raft term: a logical clock that increases with every election.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Term(pub u64);

/// The position of an entry in the log. Index 0 is the empty position before the first entry.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct LogIndex(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}", self.0)
    }
}

impl fmt::Display for LogIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "i{}", self.0)
    }
}

impl Term {
    /// The term after this one.
    pub fn next(self) -> Term {
        // Terms from peers are bounded by `MAX_TERM`, so this never saturates in practice;
        // saturating keeps a bug from wrapping a term back to 0.
        Term(self.0.saturating_add(1))
    }
}

impl LogIndex {
    /// The index after this one.
    pub fn next(self) -> LogIndex {
        LogIndex(self.0.saturating_add(1))
    }

    /// The index before this one, saturating at 0.
    pub fn prev(self) -> LogIndex {
        LogIndex(self.0.saturating_sub(1))
    }

    /// This index plus `n`.
    pub fn plus(self, n: u64) -> LogIndex {
        LogIndex(self.0.saturating_add(n))
    }
}

/// The identity of a log entry: the term it was created in and its index.
///
/// By the Log Matching property, two logs that contain an entry with the same `LogId` are
/// identical up to and including that entry.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct LogId {
    /// The term of the leader that created the entry.
    pub term: Term,
    /// The entry's position in the log.
    pub index: LogIndex,
}

impl LogId {
    /// The id before the first entry of every log: term 0, index 0.
    pub const ZERO: LogId = LogId { term: Term(0), index: LogIndex(0) };

    /// Makes a log id from raw numbers.
    pub fn new(term: u64, index: u64) -> LogId {
        LogId { term: Term(term), index: LogIndex(index) }
    }
}

impl fmt::Display for LogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.term.0, self.index.0)
    }
}

/// What a log entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryPayload {
    /// An empty entry. A new leader appends one to commit entries of earlier terms (Raft §5.4.2).
    Blank,
    /// An application command, opaque to Raft.
    Normal(Bytes),
    /// A cluster configuration.
    Membership(Membership),
}

/// One record of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The entry's term and index.
    pub log_id: LogId,
    /// What the entry carries.
    pub payload: EntryPayload,
}

impl Entry {
    /// Makes an entry carrying an application command.
    pub fn normal(log_id: LogId, data: impl Into<Bytes>) -> Entry {
        Entry { log_id, payload: EntryPayload::Normal(data.into()) }
    }

    /// Makes a blank entry.
    pub fn blank(log_id: LogId) -> Entry {
        Entry { log_id, payload: EntryPayload::Blank }
    }

    /// The entry's index.
    pub fn index(&self) -> LogIndex {
        self.log_id.index
    }

    /// The entry's term.
    pub fn term(&self) -> Term {
        self.log_id.term
    }

    /// An estimate of the entry's size in memory and on the wire, used for flow control and the
    /// entry cache. It counts the payload plus a fixed overhead per entry.
    pub fn size_hint(&self) -> usize {
        const OVERHEAD: usize = 24;
        OVERHEAD
            + match &self.payload {
                EntryPayload::Blank => 0,
                EntryPayload::Normal(data) => data.len(),
                EntryPayload::Membership(m) => 16 * (m.node_count() + 1),
            }
    }
}

/// The state a node must make durable before it answers a vote or an append: its current term
/// and the candidate it voted for in that term, as one atomic record, plus the highest index it
/// knew to be committed.
///
/// `term` and `vote` are what Raft's safety depends on; `commit` is written along when there is a
/// write anyway, so that a restarted node knows a lower bound of its commit index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: Term,
    /// The candidate this node voted for in `term`, if any.
    pub vote: Option<NodeId>,
    /// A commit index this node knew of when the record was written.
    pub commit: LogIndex,
}

/// Describes a snapshot: the state machine's state after applying every entry up to
/// `last_log_id`, with the membership at that point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The last entry the snapshot covers.
    pub last_log_id: LogId,
    /// The configuration as of `last_log_id`.
    pub membership: Membership,
    /// The snapshot's size in bytes.
    pub size: u64,
    /// CRC-32 of the snapshot's bytes.
    pub checksum: u32,
}

impl SnapshotMeta {
    /// A name unique to this snapshot's contents: two snapshots at the same log id hold the
    /// same state, so the id and checksum identify it.
    pub fn name(&self) -> String {
        format!(
            "snapshot-{:020}-{:020}-{:08x}",
            self.last_log_id.term.0, self.last_log_id.index.0, self.checksum
        )
    }
}

/// A node's role in the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asks the other voters whether it could win an election, without changing its term
    /// (PreVote, Raft thesis §9.6).
    PreCandidate,
    /// Campaigns for leadership in a new term.
    Candidate,
    /// Leads the cluster for its term.
    Leader,
    /// Receives the log but does not vote; learners never campaign.
    Learner,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
            Role::Learner => "learner",
        };
        f.write_str(s)
    }
}
