//! The three adapter traits: where the log lives ([`LogStore`]), what the log drives
//! ([`StateMachine`]), and how nodes talk ([`Network`]).

use std::io::Read;
use std::sync::Arc;

use async_trait::async_trait;
use raftkit_core::{
    Entry, HardState, LogId, LogIndex, LogWrite, Membership, Message, NodeId, SnapshotMeta,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::error::{NetworkError, NetworkErrorKind, StorageError};
use crate::snapshot_store::SnapshotStore;

/// What a log store holds when a node starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogState {
    /// The durable hard state (term, vote, commit); default for a new store.
    pub hard_state: HardState,
    /// The last purged entry (`LogId::ZERO` if none). Purges survive restarts.
    pub purged: LogId,
    /// The last entry (`purged` if the log is empty).
    pub last: LogId,
}

/// Durable storage of the Raft log and hard state.
///
/// The engine calls `write` from one task at a time, in order, and calls `read` concurrently
/// from other tasks (replication to lagging followers, apply), so implementations must allow
/// reads while a write is in progress. Implementations are shared (`&self`) and synchronize
/// internally.
#[async_trait]
pub trait LogStore: Send + Sync + 'static {
    /// Loads the state to start from.
    ///
    /// # Correctness
    /// Returns exactly what earlier acknowledged calls left: the last hard state written, the
    /// last purge, and the last entry.
    ///
    /// # Durability
    /// Reads only.
    ///
    /// # Cancel safety
    /// Cancel safe.
    ///
    /// # Errors
    /// [`Io`](crate::StorageErrorKind::Io) or
    /// [`Corruption`](crate::StorageErrorKind::Corruption) if the stored data cannot be read or
    /// fails its checksums.
    async fn load(&self) -> Result<LogState, StorageError>;

    /// Applies a [`LogWrite`] atomically: replace the hard state if given, remove entries at and
    /// after `truncate_from` if given, then append `entries`.
    ///
    /// # Correctness
    /// `truncate_from`, when given, is at most the last index plus one and above the purged
    /// index; `entries` start at `truncate_from` if given, else at the last index plus one, are
    /// contiguous, and their terms never decrease (nor fall below the entry before them).
    /// Anything else is refused with `InvalidInput` and changes nothing.
    /// [`store::LogShape`](crate::store::LogShape) implements these rules.
    ///
    /// # Durability
    /// When this returns `Ok`, the whole write is durable (fsynced): it survives a crash or
    /// power loss. After a crash mid-call, either all of it or none of it is present.
    /// Concurrent callers may share one fsync (group commit).
    ///
    /// # Cancel safety
    /// Not cancel safe: if the future is dropped, the write may or may not have happened (but
    /// is still all-or-nothing). The engine never drops it except when the process stops.
    ///
    /// # Errors
    /// `InvalidInput` for a gap or bad truncation; `Io` on device failure, after which the
    /// store returns `Poisoned` for every later write until it is reopened.
    async fn write(&self, write: LogWrite) -> Result<(), StorageError>;

    /// Reads the entries `first ..= last`.
    ///
    /// # Correctness
    /// Returns exactly `last - first + 1` entries, in order, as written; never data that fails
    /// its checksum.
    ///
    /// # Durability
    /// Reads only; sees every write that has returned.
    ///
    /// # Cancel safety
    /// Cancel safe.
    ///
    /// # Errors
    /// `Purged` if `first` is at or below the purged index; `OutOfRange` if `last` is past the
    /// last entry; `InvalidInput` if `first > last`; `Corruption` if an entry fails its checksum.
    async fn read(&self, first: LogIndex, last: LogIndex) -> Result<Vec<Entry>, StorageError>;

    /// Removes every entry up to and including `up_to` (which must be in the log), and records
    /// `up_to` as the last purged id.
    ///
    /// # Correctness
    /// Entries after `up_to` are untouched. Purging at or below the current purged index is a
    /// no-op.
    ///
    /// # Durability
    /// Atomic; durable when it returns.
    ///
    /// # Cancel safety
    /// Not cancel safe (as `write`).
    ///
    /// # Errors
    /// `InvalidInput` if `up_to` is past the last entry or its term does not match the log.
    async fn purge(&self, up_to: LogId) -> Result<(), StorageError>;

    /// Replaces the log's prefix with an installed snapshot that ends at `snapshot`: if the log
    /// holds that very entry, the entries after it stay (they follow from it) and the prefix is
    /// purged; otherwise every entry is removed. Either way the purged id becomes `snapshot`.
    ///
    /// # Correctness
    /// Afterwards `load` reports `purged == snapshot`.
    ///
    /// # Durability
    /// Atomic; durable when it returns.
    ///
    /// # Cancel safety
    /// Not cancel safe (as `write`).
    ///
    /// # Errors
    /// `Io`, after which the store is poisoned.
    async fn install_snapshot(&self, snapshot: LogId) -> Result<(), StorageError>;

    /// Whether `write` usually finishes on its first poll, with little work (an in-memory
    /// store). The engine then calls `write` from its driver task and hands it to its writer
    /// task only if it did not finish at once, which saves two task switches per write on the
    /// way to every acknowledgement. A store that waits for a disk says `false` (the default):
    /// its writes go through the writer task, which merges those queued behind a slow one.
    ///
    /// # Correctness
    /// Either way the engine keeps its contract: one write (or purge or install) at a time, in
    /// order. A `write` that does not finish on its first poll must carry on correctly when
    /// polled again from another task (as every well-behaved future does), and its first poll
    /// must never block the thread: it runs on the driver.
    ///
    /// # Durability
    /// Not applicable: `write` keeps its durability contract whoever calls it.
    ///
    /// # Cancel safety
    /// Not applicable (not async).
    ///
    /// # Errors
    /// None.
    fn inline_write(&self) -> bool {
        false
    }

    /// Where the snapshots that compact this log are kept: in the same durability domain as
    /// the log (a durable log needs durable snapshots, or a restart after a purge cannot
    /// rebuild the state). [`FileSnapshotStore`](crate::FileSnapshotStore) suits file-based
    /// stores; [`MemSnapshotStore`](crate::MemSnapshotStore) in-memory ones.
    fn snapshot_store(&self) -> Arc<dyn SnapshotStore>;
}

/// A point-in-time copy of a state machine's state, detached from the machine, so that applying
/// entries can go on while the copy is written out.
pub trait SnapshotSource: Send + 'static {
    /// Appends the next part of the snapshot (about `max` bytes) to `out`. Returns `Ok(false)`
    /// once the whole snapshot has been produced.
    fn next_chunk(&mut self, out: &mut Vec<u8>, max: usize) -> Result<bool, StorageError>;
}

/// One entry handed to the state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyEntry<C> {
    /// The entry's id.
    pub log_id: LogId,
    /// What it carries.
    pub payload: ApplyPayload<C>,
}

/// What an [`ApplyEntry`] carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyPayload<C> {
    /// An application command, decoded.
    Command(C),
    /// A leader's no-op. Produces no output.
    Blank,
    /// A configuration change. Produces no output.
    Membership(Membership),
}

/// The application state that the log drives.
#[async_trait]
pub trait StateMachine: Send + 'static {
    /// A command clients submit. It travels in the log encoded by the engine's codec.
    type Command: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// What applying a command returns to the client that wrote it.
    type Output: Send + 'static;
    /// A read clients submit through `Raft::client_read`: answered by [`query`](Self::query)
    /// on the node that serves the read, never written to the log (so, unlike a command, it
    /// needs no codec).
    type Query: Send + 'static;
    /// What [`query`](Self::query) returns to the client that asked.
    type QueryOutput: Send + 'static;

    /// The id of the last entry this state machine has applied, or `None` if none.
    ///
    /// # Correctness
    /// Must be consistent with the state: if the state machine is durable, the applied id is
    /// stored atomically with the data it describes, so after a restart the engine resumes at
    /// the next entry (re-applying or skipping an entry would diverge from other nodes). An
    /// in-memory state machine starts from `None` and is rebuilt from the log.
    ///
    /// # Durability
    /// Reads only.
    ///
    /// # Cancel safety
    /// Cancel safe.
    ///
    /// # Errors
    /// Any error stops the node from starting.
    async fn applied(&mut self) -> Result<Option<LogId>, StorageError>;

    /// Applies committed entries, in log order, and returns one output per `Command` entry (in
    /// order; `Blank` and `Membership` entries produce none).
    ///
    /// # Correctness
    /// Deterministic: the same entries applied to the same state give the same state and
    /// outputs on every node. Each entry is applied exactly once per node.
    ///
    /// # Durability
    /// A durable state machine may persist lazily; what it reports from `applied` after a
    /// restart must match its data.
    ///
    /// # Cancel safety
    /// Not cancel safe; the engine never drops this future while the node runs.
    ///
    /// # Errors
    /// An error is fatal: the node stops serving.
    async fn apply(
        &mut self,
        entries: Vec<ApplyEntry<Self::Command>>,
    ) -> Result<Vec<Self::Output>, StorageError>;

    /// Whether `apply` usually finishes on its first poll, with little work (an in-memory
    /// state machine). The engine then applies from its driver task while nothing else is
    /// queued for the state machine, and answers the clients from there, instead of handing
    /// every batch to its apply task: two task switches fewer on the way to every answer. An
    /// `apply` that does not finish on its first poll is handed to the apply task, which
    /// finishes it. A state machine that waits for a disk or does heavy work says `false`
    /// (the default). Read once, when the node starts.
    ///
    /// Tests on tokio's paused clock: a cluster on a network without latency whose clients
    /// write in a closed loop may then never leave the runtime idle, and the paused clock
    /// moves only when it is idle; let such clients sleep between writes.
    ///
    /// # Correctness
    /// Either way the engine keeps its contract: one call at a time, in log order. An `apply`
    /// that does not finish on its first poll must carry on correctly when polled again from
    /// another task, and its first poll must never block the thread: it runs on the driver.
    ///
    /// # Durability
    /// Not applicable.
    ///
    /// # Cancel safety
    /// Not applicable (not async).
    ///
    /// # Errors
    /// None.
    fn inline_apply(&self) -> bool {
        false
    }

    /// Answers a query from the current state, without changing it: a read that does not go
    /// through the log.
    ///
    /// The engine calls it only once the state machine has applied every entry up to the
    /// read's index (for a linearizable read, the leader's commit index when the read arrived,
    /// once a ReadIndex round or the leader's lease has confirmed it still leads), and only
    /// between calls to [`apply`](Self::apply), never concurrently with one (`query` borrows
    /// the state machine, which `apply` borrows mutably). The answer therefore reflects at
    /// least every write that completed before the read started (it may reflect later ones
    /// too, which linearizability allows). A stale read skips the confirmation: its index is
    /// whatever this node has applied, and its answer may miss completed writes.
    ///
    /// It runs where `apply` runs (the apply task, or the driver task when
    /// [`inline_apply`](Self::inline_apply) says so), so it must not block or take long:
    /// applying waits for it, and on the driver so does the whole node. A state machine with
    /// expensive reads can answer with something cheap to produce (a handle on shared,
    /// immutable data) and let the caller do the work.
    ///
    /// # Correctness
    /// Deterministic with respect to the state: the answer depends only on the query and on
    /// the state as of the last applied entry, never on clocks, randomness or which node
    /// answers, so every node that has applied the same entries gives the same answer (reads
    /// may be served by followers). It must not change anything that
    /// [`applied`](Self::applied), [`apply`](Self::apply), [`snapshot`](Self::snapshot) or
    /// later queries can observe: queries run on one node only and are not in the log, so a
    /// side effect would make the nodes diverge.
    ///
    /// # Durability
    /// Reads only; writes nothing, durable or not.
    ///
    /// # Cancel safety
    /// Not applicable (not async).
    ///
    /// # Errors
    /// None: the engine does not interpret the answer. A state machine whose reads can fail (a
    /// durable one reading its disk) says so in its `QueryOutput`, for instance a `Result`.
    fn query(&self, query: Self::Query) -> Self::QueryOutput;

    /// Captures the state as of the last applied entry (what [`applied`](Self::applied) reports
    /// now) in a [`SnapshotSource`] the engine writes out while applying continues.
    ///
    /// # Correctness
    /// The source must describe exactly the state at the applied entry, however many entries
    /// are applied while it is being read: copy, or share immutable structures.
    ///
    /// # Durability
    /// Not applicable; the engine stores the snapshot.
    ///
    /// # Cancel safety
    /// Not cancel safe.
    ///
    /// # Errors
    /// An error is fatal.
    async fn snapshot(&mut self) -> Result<Box<dyn SnapshotSource>, StorageError>;

    /// Replaces the whole state with a snapshot's, read from `data` (which fails with an error
    /// if the snapshot is damaged). Afterwards `applied` reports `meta.last_log_id`.
    ///
    /// `data` is a blocking reader (often a file). The engine therefore runs this method on
    /// Tokio's blocking pool, driving its future there, so reading `data` (and any other
    /// blocking work here) never holds a runtime worker; the future may still await.
    ///
    /// # Correctness
    /// Atomic for a durable state machine: a crash midway leaves the old state (with its
    /// applied id) or the new one, never a mix.
    ///
    /// # Durability
    /// Durable (for durable state machines) when it returns.
    ///
    /// # Cancel safety
    /// Not cancel safe.
    ///
    /// # Errors
    /// On an error the state must be left as it was (decode fully, then swap). For a snapshot
    /// received from a leader, the engine then removes the snapshot again
    /// ([`SnapshotStore::discard`](crate::SnapshotStore::discard)) and the node goes on with its
    /// previous state, logging why; at startup, a latest snapshot that fails to restore and
    /// whose install never reached the log is removed the same way and the previous one used.
    /// Otherwise (the log already relies on the snapshot) an error is fatal.
    async fn restore(
        &mut self,
        meta: &SnapshotMeta,
        data: Box<dyn Read + Send>,
    ) -> Result<(), StorageError>;
}

/// A message received from a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inbound {
    /// The (authenticated) sender.
    pub from: NodeId,
    /// The message.
    pub message: Message,
}

/// Where a [`Network`] delivers the messages it receives for its node. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Inbox {
    tx: mpsc::Sender<Inbound>,
}

impl Inbox {
    /// Makes an inbox and the receiving end (the engine does this; adapter tests may too).
    pub fn channel(capacity: usize) -> (Inbox, mpsc::Receiver<Inbound>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Inbox { tx }, rx)
    }

    /// Delivers a message without waiting. If the node is overloaded the message is dropped
    /// (Raft tolerates loss) and `Ok` is returned; `Closed` means the node has stopped.
    pub fn deliver(&self, from: NodeId, message: Message) -> Result<(), NetworkError> {
        match self.tx.try_send(Inbound { from, message }) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(m)) => {
                tracing::debug!(from = %m.from, kind = m.message.kind(), "inbox full; dropping message");
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(NetworkError::new(NetworkErrorKind::Closed, "the node has stopped"))
            }
        }
    }

    /// Delivers a message, waiting for room (backpressure toward the sender).
    pub async fn deliver_wait(&self, from: NodeId, message: Message) -> Result<(), NetworkError> {
        self.tx
            .send(Inbound { from, message })
            .await
            .map_err(|_| NetworkError::new(NetworkErrorKind::Closed, "the node has stopped"))
    }

    /// Whether the node behind this inbox has stopped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// How a node exchanges messages with its peers.
///
/// The transport authenticates peers: the `from` id it passes to the [`Inbox`] must be the
/// verified identity of the sender, not a claim read from the message.
#[async_trait]
pub trait Network: Send + Sync + 'static {
    /// Starts delivering this node's inbound messages into `inbox`. Called once, when the node
    /// starts.
    ///
    /// # Correctness
    /// Every message received for this node afterwards goes to `inbox` (or is dropped); none is
    /// delivered to another node.
    ///
    /// # Durability
    /// Not applicable.
    ///
    /// # Cancel safety
    /// Cancel safe.
    ///
    /// # Errors
    /// Any error stops the node from starting.
    async fn start(&self, inbox: Inbox) -> Result<(), NetworkError>;

    /// Sends messages to `to`, in order.
    ///
    /// # Correctness
    /// Best effort: messages may be lost, but a message that arrives is intact, from this node,
    /// and (for one peer) arrives after those sent before it in the same or an earlier call, if
    /// the transport preserves order (the core tolerates reordering, at some cost in
    /// throughput). The engine calls `send` for one peer at a time.
    ///
    /// # Durability
    /// Not applicable.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future may lose messages, nothing else.
    ///
    /// # Errors
    /// `Unreachable` or `Timeout` when the peer cannot be reached; the engine backs off that
    /// peer (the core probes it again after a heartbeat answer). Must fail within a bounded
    /// time rather than block.
    async fn send(&self, to: NodeId, messages: Vec<Message>) -> Result<(), NetworkError>;

    /// The configuration in force changed: `peers` maps every member that has node
    /// information to it (the opaque string given when the node was added — for the QUIC
    /// adapter, its address). A transport that dials peers by address learns here how to
    /// reach nodes added after it started; the default ignores it (an in-process network
    /// routes by id).
    ///
    /// # Correctness
    /// Called from the driver whenever the membership changes; must not block (record the
    /// addresses and return). Malformed information is the transport's to report (log it) and
    /// ignore; it must not panic.
    fn update_peers(&self, peers: &std::collections::BTreeMap<NodeId, String>) {
        let _ = peers;
    }

    /// Whether `send` usually finishes on its first poll, with little work (an in-process
    /// channel). The engine then calls `send` from its driver task, handing the call to the
    /// peer's sender task only if it did not finish at once: a message reaches the peer without
    /// a task switch on the way. A transport that encodes, encrypts or waits for flow control
    /// says `false` (the default), and that work stays off the driver.
    ///
    /// # Correctness
    /// Either way the engine keeps its contract: one `send` per peer at a time, in order. A
    /// `send` that does not finish on its first poll must carry on correctly when polled again
    /// from another task (as every well-behaved future does), and must never block the thread:
    /// it runs on the driver.
    ///
    /// # Durability
    /// Not applicable.
    ///
    /// # Cancel safety
    /// Not applicable (not async).
    ///
    /// # Errors
    /// None.
    fn inline_send(&self) -> bool {
        false
    }

    /// Stops the network: closes connections and stops delivering to the inbox.
    ///
    /// # Correctness
    /// After it returns, no more messages reach the inbox.
    ///
    /// # Durability
    /// Not applicable.
    ///
    /// # Cancel safety
    /// Cancel safe.
    ///
    /// # Errors
    /// None; problems while closing are logged.
    async fn shutdown(&self) {}
}
