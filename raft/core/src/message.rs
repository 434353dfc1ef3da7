//! The messages nodes exchange.
//!
//! Sender and receiver ids travel in the transport's envelope, not in the message: a transport
//! authenticates the sender (QUIC with mutual TLS does), and the receiver passes that id to
//! [`RaftCore::handle_message`](crate::RaftCore::handle_message).

use serde::{Deserialize, Serialize};

use bytes::Bytes;

use crate::types::{Entry, EntryPayload, LogId, LogIndex, SnapshotMeta, Term};

/// A Raft message: the sender's term and the body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The sender's term (for a granted pre-vote, the term the pre-candidate asked about).
    pub term: Term,
    /// What the message says.
    pub body: MessageBody,
}

/// The message kinds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MessageBody {
    /// A (pre-)candidate asks for a vote.
    RequestVote(RequestVote),
    /// The answer to a [`RequestVote`].
    VoteResponse(VoteResponse),
    /// The leader replicates entries (possibly none) after `prev_log_id`.
    AppendEntries(AppendEntries),
    /// The answer to an [`AppendEntries`].
    AppendResponse(AppendResponse),
    /// The leader's periodic liveness signal, carrying a commit index the follower may apply.
    Heartbeat(Heartbeat),
    /// The answer to a [`Heartbeat`] (also a stale leader's cue that its term is over).
    HeartbeatResponse(HeartbeatAck),
    /// A follower asks the leader for a read index, on behalf of reads it will serve itself.
    ReadIndexRequest(ReadIndexRequest),
    /// The leader's answer to a [`ReadIndexRequest`], once it has confirmed its leadership.
    ReadIndexResponse(ReadIndexResponse),
    /// The leader tells the target of a leadership transfer to campaign now, skipping PreVote.
    TimeoutNow(TimeoutNow),
    /// A follower forwards client commands to the leader.
    Propose(Propose),
    /// The leader's answer to a [`Propose`].
    ProposeResponse(ProposeResponse),
    /// The leader sends one chunk of a snapshot to a follower that needs purged entries.
    InstallSnapshot(InstallSnapshot),
    /// The answer to an [`InstallSnapshot`] chunk.
    SnapshotResponse(SnapshotResponse),
}

/// One chunk of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallSnapshot {
    /// Which snapshot (its last entry, membership, size and checksum).
    pub meta: SnapshotMeta,
    /// Where this chunk starts in the snapshot's bytes.
    pub offset: u64,
    /// The chunk.
    pub data: Bytes,
    /// This chunk ends the snapshot.
    pub done: bool,
}

/// The answer to an [`InstallSnapshot`] chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotResponse {
    /// The snapshot answered about (its last log id).
    pub snapshot: LogId,
    /// The offset the follower expects next (resume from here).
    pub next_offset: u64,
    /// The follower has installed the snapshot (or already had everything it covers).
    pub installed: bool,
}

/// A request for a vote (or, with `pre_vote`, a question whether a vote would be granted).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestVote {
    /// A pre-vote: the receiver answers without changing its term or vote.
    pub pre_vote: bool,
    /// The campaign was started by the leader's [`MessageBody::TimeoutNow`] (a leadership
    /// transfer): voters answer even while they still hear from that leader, which would
    /// otherwise make them ignore the request (leader stickiness).
    pub transfer: bool,
    /// The id of the candidate's last entry, for the election restriction (Raft §5.4.1).
    pub last_log_id: LogId,
}

/// An answer to a [`RequestVote`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteResponse {
    /// Answers a pre-vote.
    pub pre_vote: bool,
    /// The vote was granted.
    pub granted: bool,
}

/// Entries to append after `prev_log_id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendEntries {
    /// The id of the entry just before `entries`; the follower accepts only if it has it.
    pub prev_log_id: LogId,
    /// The entries, contiguous from `prev_log_id.index + 1`. At most
    /// [`MAX_ENTRIES_PER_MESSAGE`]: decoding refuses more.
    #[serde(deserialize_with = "bounded_seq")]
    pub entries: Vec<Entry>,
    /// The leader's commit index.
    pub leader_commit: LogIndex,
}

/// The most entries one AppendEntries may carry on the wire. Decoding a message that claims
/// more is an error before any entry is read, so a frame full of empty entries cannot make a
/// receiver build millions of them; [`Config::max_entries_per_message`](crate::Config) may not
/// exceed it.
pub const MAX_ENTRIES_PER_MESSAGE: usize = 1 << 16;

/// Deserializes `AppendEntries::entries` and `Propose::commands`, refusing more than
/// [`MAX_ENTRIES_PER_MESSAGE`] items and reserving room only for what has been read (plus a
/// little), whatever length is claimed.
fn bounded_seq<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Bounded<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Bounded<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "at most {MAX_ENTRIES_PER_MESSAGE} log entries or commands")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let claimed = seq.size_hint().unwrap_or(0);
            if claimed > MAX_ENTRIES_PER_MESSAGE {
                return Err(serde::de::Error::invalid_length(claimed, &self));
            }
            let mut out = Vec::with_capacity(claimed.min(256));
            while let Some(e) = seq.next_element()? {
                if out.len() == MAX_ENTRIES_PER_MESSAGE {
                    return Err(serde::de::Error::invalid_length(out.len() + 1, &self));
                }
                out.push(e);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Bounded(std::marker::PhantomData))
}

/// An answer to an [`AppendEntries`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppendResponse {
    /// The follower's log now matches the leader's up to `match_index`, durably.
    Success {
        /// The last index the follower has durably in common with the leader.
        match_index: LogIndex,
    },
    /// The follower does not have `prev_log_id`.
    Reject {
        /// The `prev_log_id.index` of the rejected request.
        rejected: LogIndex,
        /// The follower's last entry at or below `rejected` whose term is at most the request's
        /// `prev_log_id.term`, so the leader can skip a whole term per round trip.
        hint: LogId,
    },
}

/// The leader's heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// A commit index the follower may adopt: the leader's commit capped at what it knows the
    /// follower has, so a follower never commits entries that may still diverge.
    pub commit: LogIndex,
    /// The leader's confirmation round this heartbeat belongs to (increasing per leader); the
    /// follower echoes it, and a quorum of echoes of round `r` proves the leader was still
    /// leader when it sent round `r` (ReadIndex, leases).
    pub round: u64,
}

/// The answer to a [`Heartbeat`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// The round of the heartbeat answered (0 when answering something else).
    pub round: u64,
}

/// The leader's go-ahead to the target of a leadership transfer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeoutNow {
    /// The leader's last log id when it sent this (the target had it all). The target obeys
    /// only while its own last log id is exactly this: a leader that gave the transfer up
    /// appends an entry, so a TimeoutNow that arrives late is ignored.
    pub last: LogId,
}

/// A follower's request for a read index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadIndexRequest {
    /// The follower's id for this batch of reads, echoed in the answer.
    pub batch: u64,
}

/// The leader's answer to a [`ReadIndexRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadIndexResponse {
    /// The batch answered.
    pub batch: u64,
    /// The leader's commit index when the request arrived (after its leadership was
    /// confirmed): the follower serves the reads once it has applied up to here.
    pub index: LogIndex,
}

/// Client commands a follower forwards to the leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Propose {
    /// The follower's id for this batch, echoed in the answer.
    pub batch: u64,
    /// The commands, in order. At most [`MAX_ENTRIES_PER_MESSAGE`]: decoding refuses more.
    #[serde(deserialize_with = "bounded_seq")]
    pub commands: Vec<Bytes>,
}

/// The leader's answer to a [`Propose`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposeResponse {
    /// The batch answered.
    pub batch: u64,
    /// What became of it.
    pub outcome: ProposeOutcome,
}

/// What a leader did with forwarded commands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProposeOutcome {
    /// Appended to the leader's log; the first command has this id, the next ones follow.
    Appended(LogId),
    /// The receiver is not the leader.
    NotLeader,
    /// The leader is handing leadership over and takes no new commands meanwhile.
    TransferInProgress,
    /// The batch exceeds the leader's message bounds.
    TooLarge,
}

/// Why a message from a peer was refused before it reached the protocol.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidMessage {
    /// Entries do not follow `prev_log_id` one index at a time.
    #[error("entry {position} has index {found}, expected {expected}")]
    NotContiguous {
        /// Position in the message.
        position: usize,
        /// The index found.
        found: LogIndex,
        /// The index expected.
        expected: LogIndex,
    },
    /// An entry's term is below its predecessor's or above the message's term.
    #[error("entry {index} has term {term}, outside [{min}, {max}]")]
    BadEntryTerm {
        /// The entry's index.
        index: LogIndex,
        /// Its term.
        term: Term,
        /// The lowest term allowed.
        min: Term,
        /// The highest term allowed.
        max: Term,
    },
    /// A membership entry is not a valid configuration.
    #[error("membership entry {index} is invalid: {reason}")]
    BadMembership {
        /// The entry's index.
        index: LogIndex,
        /// What is wrong.
        reason: crate::MembershipError,
    },
    /// A rejection hint points above the rejected index.
    #[error("reject hint {hint} is above the rejected index {rejected}")]
    BadHint {
        /// The rejected index.
        rejected: LogIndex,
        /// The hint.
        hint: LogId,
    },
    /// A message of a kind that needs a term carries term 0.
    #[error("message has term 0")]
    ZeroTerm,
    /// A snapshot chunk is inconsistent with its snapshot's metadata.
    #[error("bad snapshot chunk: {0}")]
    BadSnapshot(String),
    /// A leader's answer to forwarded commands names an entry of another term than its own.
    #[error("forwarded commands appended at {first}, not in the answer's term {term}")]
    BadAppendedId {
        /// The id the answer names.
        first: LogId,
        /// The answer's term.
        term: Term,
    },
    /// The previous log id is above the message's term.
    #[error("prev_log_id {prev} is from a term above the message's {term}")]
    BadPrev {
        /// The previous log id.
        prev: LogId,
        /// The message's term.
        term: Term,
    },
    /// A candidate's last log entry is from a term above the one it campaigns in.
    #[error("candidate's last log id {last} is from a term above the message's {term}")]
    BadCandidateLog {
        /// The candidate's last log id.
        last: LogId,
        /// The message's term.
        term: Term,
    },
    /// A term or an index is beyond [`MAX_TERM`] / [`MAX_INDEX`]: no real cluster gets there,
    /// and arithmetic on it could overflow.
    #[error("{what} {value} is out of range")]
    OutOfRange {
        /// Which field.
        what: &'static str,
        /// Its value.
        value: u64,
    },
}

/// The largest term a message may carry (2^62): a cluster electing a leader every
/// microsecond would need 146,000 years to get there, and the core can add to any term or
/// index it accepts without overflowing.
pub const MAX_TERM: u64 = 1 << 62;
/// The largest log index a message may carry (2^62).
pub const MAX_INDEX: u64 = 1 << 62;

fn check_term(what: &'static str, t: Term) -> Result<(), InvalidMessage> {
    if t.0 > MAX_TERM { Err(InvalidMessage::OutOfRange { what, value: t.0 }) } else { Ok(()) }
}

fn check_index(what: &'static str, i: LogIndex) -> Result<(), InvalidMessage> {
    if i.0 > MAX_INDEX { Err(InvalidMessage::OutOfRange { what, value: i.0 }) } else { Ok(()) }
}

fn check_id(what: &'static str, id: LogId) -> Result<(), InvalidMessage> {
    check_term(what, id.term)?;
    check_index(what, id.index)
}

impl Message {
    /// Checks the structural rules a correct peer always follows. The core refuses messages
    /// that break them instead of acting on them.
    pub fn validate(&self) -> Result<(), InvalidMessage> {
        if self.term == Term(0) {
            return Err(InvalidMessage::ZeroTerm);
        }
        check_term("term", self.term)?;
        match &self.body {
            MessageBody::RequestVote(r) => {
                check_id("last_log_id", r.last_log_id)?;
                if r.last_log_id.term > self.term {
                    return Err(InvalidMessage::BadCandidateLog {
                        last: r.last_log_id,
                        term: self.term,
                    });
                }
                Ok(())
            }
            MessageBody::Heartbeat(h) => check_index("commit", h.commit),
            MessageBody::ReadIndexResponse(r) => check_index("read index", r.index),
            MessageBody::TimeoutNow(t) => check_id("last", t.last),
            MessageBody::ProposeResponse(ProposeResponse {
                outcome: ProposeOutcome::Appended(first),
                ..
            }) => {
                check_id("first appended", *first)?;
                if first.term != self.term {
                    return Err(InvalidMessage::BadAppendedId { first: *first, term: self.term });
                }
                Ok(())
            }
            MessageBody::SnapshotResponse(r) => check_id("snapshot", r.snapshot),
            MessageBody::AppendResponse(AppendResponse::Success { match_index }) => {
                check_index("match_index", *match_index)
            }
            MessageBody::AppendEntries(a) => {
                check_id("prev_log_id", a.prev_log_id)?;
                check_index("leader_commit", a.leader_commit)?;
                // Entries are contiguous from prev (checked below), so the last one's index is
                // prev + len; keep that in range too.
                check_index("last entry index", a.prev_log_id.index.plus(a.entries.len() as u64))?;
                if a.prev_log_id.term > self.term {
                    return Err(InvalidMessage::BadPrev { prev: a.prev_log_id, term: self.term });
                }
                let mut expected = a.prev_log_id.index.next();
                let mut min = a.prev_log_id.term;
                for (position, e) in a.entries.iter().enumerate() {
                    if e.index() != expected {
                        return Err(InvalidMessage::NotContiguous {
                            position,
                            found: e.index(),
                            expected,
                        });
                    }
                    if e.term() < min || e.term() > self.term {
                        return Err(InvalidMessage::BadEntryTerm {
                            index: e.index(),
                            term: e.term(),
                            min,
                            max: self.term,
                        });
                    }
                    if let EntryPayload::Membership(m) = &e.payload {
                        m.validate().map_err(|reason| InvalidMessage::BadMembership {
                            index: e.index(),
                            reason,
                        })?;
                    }
                    min = e.term();
                    expected = expected.next();
                }
                Ok(())
            }
            MessageBody::AppendResponse(AppendResponse::Reject { rejected, hint }) => {
                check_index("rejected", *rejected)?;
                check_id("hint", *hint)?;
                if hint.index > *rejected {
                    return Err(InvalidMessage::BadHint { rejected: *rejected, hint: *hint });
                }
                Ok(())
            }
            MessageBody::InstallSnapshot(s) => {
                check_id("snapshot", s.meta.last_log_id)?;
                s.meta
                    .membership
                    .validate()
                    .map_err(|reason| InvalidMessage::BadSnapshot(reason.to_string()))?;
                let end = s.offset.checked_add(s.data.len() as u64);
                if end.is_none_or(|e| e > s.meta.size) || (s.done && end != Some(s.meta.size)) {
                    return Err(InvalidMessage::BadSnapshot(format!(
                        "chunk at {} of {} bytes does not fit a snapshot of {} bytes (done: {})",
                        s.offset,
                        s.data.len(),
                        s.meta.size,
                        s.done
                    )));
                }
                if s.meta.last_log_id.term > self.term {
                    return Err(InvalidMessage::BadSnapshot("snapshot from a future term".into()));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// A short name of the message kind, for logs and traces.
    pub fn kind(&self) -> &'static str {
        match &self.body {
            MessageBody::RequestVote(r) if r.pre_vote => "PreVote",
            MessageBody::RequestVote(_) => "RequestVote",
            MessageBody::VoteResponse(r) if r.pre_vote => "PreVoteResponse",
            MessageBody::VoteResponse(_) => "VoteResponse",
            MessageBody::AppendEntries(_) => "AppendEntries",
            MessageBody::AppendResponse(_) => "AppendResponse",
            MessageBody::Heartbeat(_) => "Heartbeat",
            MessageBody::HeartbeatResponse(_) => "HeartbeatResponse",
            MessageBody::ReadIndexRequest(_) => "ReadIndexRequest",
            MessageBody::ReadIndexResponse(_) => "ReadIndexResponse",
            MessageBody::TimeoutNow(_) => "TimeoutNow",
            MessageBody::Propose(_) => "Propose",
            MessageBody::ProposeResponse(_) => "ProposeResponse",
            MessageBody::InstallSnapshot(_) => "InstallSnapshot",
            MessageBody::SnapshotResponse(_) => "SnapshotResponse",
        }
    }

    /// An estimate of the message's encoded size.
    pub fn size_hint(&self) -> usize {
        match &self.body {
            MessageBody::AppendEntries(a) => {
                48 + a.entries.iter().map(Entry::size_hint).sum::<usize>()
            }
            MessageBody::InstallSnapshot(s) => 96 + s.data.len(),
            MessageBody::Propose(p) => 48 + p.commands.iter().map(|c| 8 + c.len()).sum::<usize>(),
            _ => 48,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(term: u64, prev: LogId, entries: Vec<Entry>) -> Message {
        Message {
            term: Term(term),
            body: MessageBody::AppendEntries(AppendEntries {
                prev_log_id: prev,
                entries,
                leader_commit: LogIndex(0),
            }),
        }
    }

    #[test]
    fn accepts_well_formed_append() {
        let m = append(
            3,
            LogId::new(1, 4),
            vec![Entry::blank(LogId::new(2, 5)), Entry::blank(LogId::new(3, 6))],
        );
        assert_eq!(m.validate(), Ok(()));
    }

    #[test]
    fn rejects_gaps_and_bad_terms() {
        let gap = append(3, LogId::new(1, 4), vec![Entry::blank(LogId::new(2, 6))]);
        assert!(matches!(gap.validate(), Err(InvalidMessage::NotContiguous { .. })));
        let future = append(3, LogId::new(1, 4), vec![Entry::blank(LogId::new(4, 5))]);
        assert!(matches!(future.validate(), Err(InvalidMessage::BadEntryTerm { .. })));
        let backwards = append(3, LogId::new(2, 4), vec![Entry::blank(LogId::new(1, 5))]);
        assert!(matches!(backwards.validate(), Err(InvalidMessage::BadEntryTerm { .. })));
        let prev = append(3, LogId::new(5, 4), vec![]);
        assert!(matches!(prev.validate(), Err(InvalidMessage::BadPrev { .. })));
        let zero = Message {
            term: Term(0),
            body: MessageBody::HeartbeatResponse(HeartbeatAck { round: 0 }),
        };
        assert_eq!(zero.validate(), Err(InvalidMessage::ZeroTerm));
        let hint = Message {
            term: Term(1),
            body: MessageBody::AppendResponse(AppendResponse::Reject {
                rejected: LogIndex(3),
                hint: LogId::new(1, 4),
            }),
        };
        assert!(matches!(hint.validate(), Err(InvalidMessage::BadHint { .. })));
    }
}
