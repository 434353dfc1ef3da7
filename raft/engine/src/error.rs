//! Errors: what adapters return ([`StorageError`], [`NetworkError`]) and what the engine returns
//! to users ([`StartError`], [`WriteError`], [`Fatal`]).

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use raftkit_core::{LogId, LogIndex, NodeId};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

type Source = Arc<dyn StdError + Send + Sync + 'static>;

/// What kind of storage failure happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StorageErrorKind {
    /// The underlying device or file system failed.
    Io,
    /// Stored data failed a checksum or could not be decoded.
    Corruption,
    /// The request was not valid for the store's state (a gap in an append, a truncation past
    /// the end, an inverted range).
    InvalidInput,
    /// A read reached below the purged prefix of the log.
    Purged,
    /// A read reached past the last entry.
    OutOfRange,
    /// An earlier failure made the store refuse further writes until it is reopened.
    Poisoned,
    /// The store is closed.
    Closed,
    /// The stored data is in a format this build does not read (a newer version, say).
    Unsupported,
    /// Anything else.
    Other,
}

impl fmt::Display for StorageErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            StorageErrorKind::Io => "I/O error",
            StorageErrorKind::Corruption => "corruption",
            StorageErrorKind::InvalidInput => "invalid input",
            StorageErrorKind::Purged => "purged",
            StorageErrorKind::OutOfRange => "out of range",
            StorageErrorKind::Poisoned => "store poisoned by an earlier failure",
            StorageErrorKind::Closed => "closed",
            StorageErrorKind::Unsupported => "unsupported format",
            StorageErrorKind::Other => "error",
        };
        f.write_str(s)
    }
}

/// A failure of a [`LogStore`](crate::LogStore) or [`StateMachine`](crate::StateMachine): a kind,
/// a message, and optionally the underlying error.
#[derive(Clone, Debug)]
pub struct StorageError {
    kind: StorageErrorKind,
    message: String,
    source: Option<Source>,
}

impl StorageError {
    /// An error of `kind` described by `message`.
    pub fn new(kind: StorageErrorKind, message: impl Into<String>) -> StorageError {
        StorageError { kind, message: message.into(), source: None }
    }

    /// An error of `kind` caused by `source`.
    pub fn with_source(
        kind: StorageErrorKind,
        message: impl Into<String>,
        source: impl StdError + Send + Sync + 'static,
    ) -> StorageError {
        StorageError { kind, message: message.into(), source: Some(Arc::new(source)) }
    }

    /// An I/O error.
    pub fn io(message: impl Into<String>, source: std::io::Error) -> StorageError {
        StorageError::with_source(StorageErrorKind::Io, message, source)
    }

    /// The kind of failure.
    pub fn kind(&self) -> StorageErrorKind {
        self.kind
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Prefixes the message with what the engine was doing.
    pub fn context(mut self, what: impl fmt::Display) -> StorageError {
        self.message = format!("{what}: {}", self.message);
        self
    }

    /// Whether the same operation may succeed if tried again later, with nothing repaired:
    /// only [`Io`](StorageErrorKind::Io) failures (a device or file system that may recover).
    /// Corrupt or unsupported data, invalid requests, reads outside the log, a poisoned or
    /// closed store, and unknown failures are not. The engine itself treats every storage
    /// failure as fatal; this is for code that calls a store directly.
    pub fn is_retryable(&self) -> bool {
        self.kind == StorageErrorKind::Io
    }
}

/// The serialized form of a [`StorageError`] or [`NetworkError`]: the cause as its text.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorRepr<K> {
    kind: K,
    message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<String>,
}

/// A deserialized cause: only its text survives serialization.
#[derive(Debug)]
struct CauseText(String);

impl fmt::Display for CauseText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for CauseText {}

fn source_text(source: &Option<Source>) -> Option<String> {
    source.as_ref().map(ToString::to_string)
}

fn source_from_text(text: Option<String>) -> Option<Source> {
    text.map(|t| Arc::new(CauseText(t)) as Source)
}

/// Equality and serde for an error made of a kind, a message and an optional cause: two errors
/// are equal when they say the same thing (the cause compared by its text, since a cause is any
/// error type), and they serialize as `{ kind, message, source }`, the cause as its text.
macro_rules! kind_message_source {
    ($error:ident, $kind:ident) => {
        impl PartialEq for $error {
            fn eq(&self, other: &$error) -> bool {
                self.kind == other.kind
                    && self.message == other.message
                    && source_text(&self.source) == source_text(&other.source)
            }
        }

        impl Eq for $error {}

        impl Serialize for $error {
            fn serialize<Ser: Serializer>(&self, s: Ser) -> Result<Ser::Ok, Ser::Error> {
                let repr = ErrorRepr {
                    kind: self.kind,
                    message: self.message.clone(),
                    source: source_text(&self.source),
                };
                repr.serialize(s)
            }
        }

        impl<'de> Deserialize<'de> for $error {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$error, D::Error> {
                let r = ErrorRepr::<$kind>::deserialize(d)?;
                Ok($error { kind: r.kind, message: r.message, source: source_from_text(r.source) })
            }
        }
    };
}

kind_message_source!(StorageError, StorageErrorKind);
kind_message_source!(NetworkError, NetworkErrorKind);

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "storage {}: {}", self.kind, self.message)?;
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl StdError for StorageError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|s| s as &(dyn StdError + 'static))
    }
}

/// What kind of network failure happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum NetworkErrorKind {
    /// The peer is unknown, down or cannot be reached.
    Unreachable,
    /// The peer did not answer in time.
    Timeout,
    /// The peer failed authentication, or we failed its.
    Unauthenticated,
    /// A frame was malformed or too large.
    InvalidFrame,
    /// The network has been shut down.
    Closed,
    /// An I/O error.
    Io,
    /// Anything else.
    Other,
}

impl fmt::Display for NetworkErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            NetworkErrorKind::Unreachable => "unreachable",
            NetworkErrorKind::Timeout => "timeout",
            NetworkErrorKind::Unauthenticated => "unauthenticated",
            NetworkErrorKind::InvalidFrame => "invalid frame",
            NetworkErrorKind::Closed => "closed",
            NetworkErrorKind::Io => "I/O error",
            NetworkErrorKind::Other => "error",
        };
        f.write_str(s)
    }
}

/// A failure of a [`Network`](crate::Network).
#[derive(Clone, Debug)]
pub struct NetworkError {
    kind: NetworkErrorKind,
    message: String,
    source: Option<Source>,
}

impl NetworkError {
    /// An error of `kind` described by `message`.
    pub fn new(kind: NetworkErrorKind, message: impl Into<String>) -> NetworkError {
        NetworkError { kind, message: message.into(), source: None }
    }

    /// An error of `kind` caused by `source`.
    pub fn with_source(
        kind: NetworkErrorKind,
        message: impl Into<String>,
        source: impl StdError + Send + Sync + 'static,
    ) -> NetworkError {
        NetworkError { kind, message: message.into(), source: Some(Arc::new(source)) }
    }

    /// The kind of failure.
    pub fn kind(&self) -> NetworkErrorKind {
        self.kind
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether trying again later may succeed: [`Unreachable`](NetworkErrorKind::Unreachable),
    /// [`Timeout`](NetworkErrorKind::Timeout) and [`Io`](NetworkErrorKind::Io) (the peer or the
    /// path may come back). A failed authentication, an invalid frame, a closed network and
    /// unknown failures are not.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            NetworkErrorKind::Unreachable | NetworkErrorKind::Timeout | NetworkErrorKind::Io
        )
    }
}

impl fmt::Display for NetworkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "network {}: {}", self.kind, self.message)?;
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl StdError for NetworkError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|s| s as &(dyn StdError + 'static))
    }
}

/// Why a node stopped serving for good. Storage failures are fatal: a node that cannot trust its
/// disk must not vote or acknowledge anything (redb's `PreviousIo`, etcd's "inoperable").
///
/// Carried by [`NodeState::Failed`](crate::NodeState::Failed) in the metrics, hence `Clone`,
/// `Eq` and serde.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Fatal {
    /// The log store failed.
    #[error("log store failed: {0}")]
    LogStore(StorageError),
    /// The state machine failed.
    #[error("state machine failed: {0}")]
    StateMachine(StorageError),
    /// An entry in the log could not be decoded as a command.
    #[error("entry {log_id} does not decode as a command: {reason}")]
    BadCommand {
        /// The entry.
        log_id: LogId,
        /// The decoder's complaint.
        reason: String,
    },
    /// The state machine broke its contract.
    #[error("state machine returned {got} outputs for {expected} commands")]
    OutputCount {
        /// Commands in the batch.
        expected: usize,
        /// Outputs returned.
        got: usize,
    },
    /// The driver task panicked or was aborted.
    #[error("raft driver stopped unexpectedly")]
    DriverStopped,
}

impl Fatal {
    /// Always `false`: a fatal error stops the node for good, and nothing sent to it again
    /// can succeed. Restart the node (after repairing its storage) instead.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// What is inconsistent in the stored state a node was started on
/// ([`StartError::Inconsistent`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Inconsistency {
    /// A read of one index returned another number of entries, or the wrong entry.
    #[error("a read of index {index} returned {returned} entries, not the one asked for")]
    BadRead {
        /// The index read.
        index: LogIndex,
        /// How many entries came back (1 if the one entry had another index).
        returned: usize,
    },
    /// The store's last entry is below its purged prefix.
    #[error("the last entry {last} is below the purged id {purged}")]
    LastBelowPurged {
        /// The last entry the store reports.
        last: LogId,
        /// The last purged entry it reports.
        purged: LogId,
    },
    /// The store reports one last entry but holds another at that index.
    #[error("the store reports last entry {reported} but holds {held} at that index")]
    LastMismatch {
        /// The last entry the store reports.
        reported: LogId,
        /// The entry it holds at that index.
        held: LogId,
    },
    /// Terms decrease along the log.
    #[error("the term decreases between {earlier} and {later}")]
    TermDecreases {
        /// The earlier entry.
        earlier: LogId,
        /// A later entry with a lower term.
        later: LogId,
    },
    /// The state machine applied an entry the log does not hold.
    #[error("the state machine applied {applied} but the log holds {in_log} at that index")]
    AppliedNotInLog {
        /// The state machine's last applied entry.
        applied: LogId,
        /// The log's entry at that index.
        in_log: LogId,
    },
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid (the message names the field).
    #[error("invalid configuration: {0}")]
    Config(#[from] raftkit_core::ConfigError),
    /// Loading state from the log store or state machine failed.
    #[error("cannot load state: {0}")]
    Storage(StorageError),
    /// The stored state is inconsistent (the log store and state machine disagree, or the log
    /// with itself).
    #[error("stored state is inconsistent: {0}")]
    Inconsistent(Inconsistency),
    /// The protocol core refused the loaded state.
    #[error(transparent)]
    Core(#[from] raftkit_core::StartError),
    /// The network could not start.
    #[error("cannot start the network: {0}")]
    Network(NetworkError),
}

impl StartError {
    /// Whether starting again later, with nothing changed, may succeed: storage and network
    /// failures that are themselves retryable ([`StorageError::is_retryable`],
    /// [`NetworkError::is_retryable`]). An invalid configuration, inconsistent stored state
    /// and a state the core refuses are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            StartError::Storage(e) => e.is_retryable(),
            StartError::Network(e) => e.is_retryable(),
            StartError::Config(_) | StartError::Inconsistent(_) | StartError::Core(_) => false,
        }
    }
}

/// "the leader is node 2" or "no leader known", for [`WriteError::NotLeader`].
fn leader_text(leader: &Option<NodeId>) -> String {
    match leader {
        Some(l) => format!("the leader is node {}", l.0),
        None => "no leader known".to_string(),
    }
}

/// Why a [`client_write`](crate::Raft::client_write) did not produce an output.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// This node is not the leader. Retry on `leader` if known. The command was not appended.
    #[error("not the leader; {}", leader_text(leader))]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<NodeId>,
    },
    /// The command was appended at `log_id`, but a new leader replaced that entry: it was not
    /// applied and never will be.
    #[error("the entry {log_id} was replaced by a new leader; the command was not applied")]
    Overwritten {
        /// Where the command had been appended.
        log_id: LogId,
    },
    /// The command was appended at `log_id`, but before this node applied it, it installed a
    /// snapshot from the leader that covers that index: the command may be in the snapshot or
    /// may have been replaced, and its output is not available here. Read back (or make the
    /// command idempotent) to find out.
    #[error("the entry {log_id} was covered by a snapshot from the leader; the outcome is unknown")]
    OutcomeUnknown {
        /// Where the command had been appended.
        log_id: LogId,
    },
    /// The leader is handing leadership over and takes no commands meanwhile. The command was
    /// not appended; retry once the new leader is known (usually within a few round trips).
    #[error("leadership is being transferred ({}); retry on the new leader", match to {
        Some(t) => format!("to node {}", t.0),
        None => "target unknown here".to_string(),
    })]
    TransferInProgress {
        /// The transfer's target, when this node knows it (it is the leader).
        to: Option<NodeId>,
    },
    /// The command was forwarded to the leader `leader`, but this node's leader changed before
    /// the answer came: it may or may not be appended (and applied).
    #[error("forwarded to node {}, which stopped leading before answering; the outcome is unknown", leader.0)]
    ForwardOutcomeUnknown {
        /// The node the command was forwarded to.
        leader: NodeId,
    },
    /// The leader refused the forwarded command (it exceeds the leader's message bounds).
    /// Not appended.
    #[error("the leader refused the forwarded command: {0}")]
    ForwardRefused(String),
    /// The command could not be encoded.
    #[error("cannot encode the command: {0}")]
    Encode(raftkit_core::codec::CodecError),
    /// The node is shutting down. The command may or may not be applied.
    #[error("the node is shutting down; the outcome is unknown")]
    Shutdown,
    /// The node stopped because of a fatal error. The command may or may not be applied.
    #[error("the node has failed: {0}")]
    Fatal(Fatal),
}

impl WriteError {
    /// Whether the command may be submitted again without risk of applying it twice, with a
    /// chance of success: [`NotLeader`](WriteError::NotLeader) (it was not appended; retry on
    /// the leader), [`TransferInProgress`](WriteError::TransferInProgress) (not appended) and
    /// [`Overwritten`](WriteError::Overwritten) (it was never applied).
    ///
    /// Not retryable: [`OutcomeUnknown`](WriteError::OutcomeUnknown),
    /// [`Shutdown`](WriteError::Shutdown) and [`Fatal`](WriteError::Fatal), where the command
    /// may have been applied (read back first, or make the command idempotent), and
    /// [`Encode`](WriteError::Encode), which fails the same way every time.
    pub fn is_retryable(&self) -> bool {
        match self {
            WriteError::NotLeader { .. }
            | WriteError::Overwritten { .. }
            | WriteError::TransferInProgress { .. } => true,
            WriteError::OutcomeUnknown { .. }
            | WriteError::ForwardOutcomeUnknown { .. }
            | WriteError::ForwardRefused(_)
            | WriteError::Encode(_)
            | WriteError::Shutdown
            | WriteError::Fatal(_) => false,
        }
    }
}

/// Why a read ([`client_read`](crate::RaftHandle::client_read),
/// [`read_barrier`](crate::RaftHandle::read_barrier)) did not complete. Nothing was written;
/// every read may be retried.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// This node cannot serve the read with this policy: it is not the leader (Linearizable,
    /// Lease), or it knows no leader (Follower). Retry on `leader` if known.
    #[error("not the leader; {}", leader_text(leader))]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<NodeId>,
    },
    /// Lease reads need `check_quorum` in the [`Config`](crate::Config).
    #[error("lease reads need check_quorum")]
    LeaseNeedsCheckQuorum,
    /// The leader lost its leadership (or the follower its leader) before the read was
    /// confirmed. Retry, on the new leader for a leader read.
    #[error("leadership changed before the read was confirmed")]
    LeadershipLost,
    /// Too many reads are waiting on this node.
    #[error("too many reads in progress")]
    TooManyReads,
    /// The read was not confirmed in time (for example a follower cut off from the leader).
    #[error("the read was not confirmed within {0:?}")]
    Timeout(std::time::Duration),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    Shutdown,
    /// The node stopped because of a fatal error.
    #[error("the node has failed: {0}")]
    Fatal(Fatal),
}

impl ReadError {
    /// Whether the read may succeed if tried again (here after a while, or on the node a
    /// [`NotLeader`](ReadError::NotLeader) hint names).
    pub fn is_retryable(&self) -> bool {
        match self {
            ReadError::NotLeader { .. }
            | ReadError::LeadershipLost
            | ReadError::TooManyReads
            | ReadError::Timeout(_) => true,
            ReadError::LeaseNeedsCheckQuorum | ReadError::Shutdown | ReadError::Fatal(_) => false,
        }
    }
}

impl From<raftkit_core::ReadError> for ReadError {
    fn from(e: raftkit_core::ReadError) -> ReadError {
        match e {
            raftkit_core::ReadError::NotLeader { leader } => ReadError::NotLeader { leader },
            raftkit_core::ReadError::LeaseNeedsCheckQuorum => ReadError::LeaseNeedsCheckQuorum,
            raftkit_core::ReadError::TooManyReads => ReadError::TooManyReads,
            _ => ReadError::LeadershipLost,
        }
    }
}

/// Why a [`transfer_leadership`](crate::RaftHandle::transfer_leadership) did not hand
/// leadership over.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// The core refused the transfer (not the leader, target not a voter, one in progress, …).
    #[error(transparent)]
    Refused(#[from] raftkit_core::TransferError),
    /// The target did not win within `election_timeout_max`; this node leads on.
    #[error("node {} did not take over in time; the leader leads on", .0.0)]
    TimedOut(NodeId),
    /// Another node than the target became leader (or this node stepped down some other way).
    #[error("leadership went elsewhere: {}", leader_text(leader))]
    LeadershipLost {
        /// The leader known now.
        leader: Option<NodeId>,
    },
    /// The node is shutting down.
    #[error("the node is shutting down")]
    Shutdown,
    /// The node stopped because of a fatal error.
    #[error("the node has failed: {0}")]
    Fatal(Fatal),
}

impl TransferError {
    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            TransferError::Refused(e) => e.is_retryable(),
            TransferError::TimedOut(_) | TransferError::LeadershipLost { .. } => true,
            TransferError::Shutdown | TransferError::Fatal(_) => false,
        }
    }
}
