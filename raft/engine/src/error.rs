//! Errors: what adapters return ([`StorageError`], [`NetworkError`]) and what the engine returns
//! to users ([`StartError`], [`WriteError`], [`Fatal`]).

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use raftkit_core::{LogId, NodeId};

type Source = Arc<dyn StdError + Send + Sync + 'static>;

/// What kind of storage failure happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
}

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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
#[derive(Clone, Debug, thiserror::Error)]
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
    /// The stored state is inconsistent.
    #[error("stored state is inconsistent: {0}")]
    Inconsistent(String),
    /// The protocol core refused the loaded state.
    #[error(transparent)]
    Core(#[from] raftkit_core::StartError),
    /// The network could not start.
    #[error("cannot start the network: {0}")]
    Network(NetworkError),
}

/// Why a [`client_write`](crate::Raft::client_write) did not produce an output.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// This node is not the leader. Retry on `leader` if known. The command was not appended.
    #[error("not the leader (leader: {leader:?})")]
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
