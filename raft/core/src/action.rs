//! What the core asks its driver to do.

use crate::message::{InstallSnapshot, Message};
use crate::types::{Entry, HardState, LogId, LogIndex, NodeId, SnapshotMeta, Term};

/// Identifies a [`LogWrite`] the core asked for. Ids increase by one per write; storage must
/// complete writes in id order, and [`RaftCore::handle_persisted`](crate::RaftCore::handle_persisted)
/// with an id acknowledges that write and every earlier one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WriteId(pub u64);

/// One atomic, durable change to the log store: optionally replace the hard state, optionally
/// remove a suffix, then append entries.
///
/// A store applies all of it or none of it, and returns only once it is durable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogWrite {
    /// The new hard state, if it changed.
    pub hard_state: Option<HardState>,
    /// Remove every entry at or after this index before appending.
    pub truncate_from: Option<LogIndex>,
    /// Entries to append; the first follows the log's last entry (after the truncation).
    pub entries: Vec<Entry>,
}

impl LogWrite {
    /// Whether the write changes nothing.
    pub fn is_empty(&self) -> bool {
        self.hard_state.is_none() && self.truncate_from.is_none() && self.entries.is_empty()
    }

    /// Folds a later write into this one, so that applying the result equals applying `self`
    /// then `later`. This is how a driver turns many writes into one fsync (group commit).
    pub fn merge(&mut self, later: LogWrite) {
        if let Some(hs) = later.hard_state {
            self.hard_state = Some(hs);
        }
        if let Some(t) = later.truncate_from {
            match self.entries.first().map(Entry::index) {
                Some(first) if t > first => {
                    // The truncation only cuts entries this write was going to add.
                    self.entries.retain(|e| e.index() < t);
                }
                _ => {
                    self.entries.clear();
                    self.truncate_from = Some(self.truncate_from.map_or(t, |own| own.min(t)));
                }
            }
        }
        if self.entries.is_empty() {
            self.entries = later.entries;
        } else {
            self.entries.extend(later.entries);
        }
    }
}

/// A request to make a [`LogWrite`] durable, then call
/// [`RaftCore::handle_persisted`](crate::RaftCore::handle_persisted) with its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersistRequest {
    /// The write's id.
    pub id: WriteId,
    /// What to write.
    pub write: LogWrite,
}

/// A message to deliver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// The recipient.
    pub to: NodeId,
    /// The message.
    pub message: Message,
}

/// An AppendEntries whose entries are no longer in the core's cache: the driver reads entries
/// `prev_log_id.index + 1 ..= last.index` from the log store, checks that the last one has id
/// `last` (otherwise the log changed meanwhile and the message is dropped), and sends
/// `AppendEntries { prev_log_id, entries, leader_commit }` at `term` to `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendFromLog {
    /// The recipient.
    pub to: NodeId,
    /// The leader's term.
    pub term: Term,
    /// The entry before the first one to send.
    pub prev_log_id: LogId,
    /// The id of the last entry to send.
    pub last: LogId,
    /// The leader's commit index.
    pub leader_commit: LogIndex,
    /// The most entry bytes (by [`Entry::size_hint`](crate::Entry::size_hint)) the message may
    /// carry: the driver sends the longest prefix of the range within it (at least one entry).
    pub max_bytes: usize,
}

/// Committed entries to apply to the state machine, in order. Indexes are contiguous across
/// consecutive `Apply` actions; each index is handed out exactly once per core instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyRequest {
    /// The first index to apply.
    pub first: LogIndex,
    /// The id of the last entry to apply.
    pub last: LogId,
    /// The entries, when the core still has them in memory. When `None`, the driver reads
    /// `first ..= last.index` from the log store (they are durable) and checks the last id.
    pub entries: Option<Vec<Entry>>,
}

/// A chunk of the local snapshot `meta` to send: the driver reads `len` bytes at `offset` from
/// its snapshot store and sends them as an
/// [`InstallSnapshot`](crate::InstallSnapshot) message at `term`, with `done` set when the chunk
/// reaches the end. If the snapshot can no longer be read, it calls
/// [`RaftCore::handle_snapshot_send_failed`](crate::RaftCore::handle_snapshot_send_failed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendSnapshot {
    /// The recipient.
    pub to: NodeId,
    /// The leader's term.
    pub term: Term,
    /// The snapshot.
    pub meta: SnapshotMeta,
    /// Where the chunk starts.
    pub offset: u64,
    /// How many bytes it holds.
    pub len: u64,
}

/// A snapshot chunk received from the leader `from`: the driver writes it to its snapshot
/// store if it continues what was received so far (resuming an interrupted transfer), and when
/// the chunk completes the snapshot it installs it: makes the snapshot durable and checks its
/// checksum, restores the state machine from it, and replaces the log's prefix
/// ([`LogStore::install_snapshot`]). It then reports with
/// [`RaftCore::handle_snapshot_received`](crate::RaftCore::handle_snapshot_received).
///
/// [`LogStore::install_snapshot`]: https://docs.rs/raftkit
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiveSnapshot {
    /// The leader that sent it.
    pub from: NodeId,
    /// The chunk.
    pub chunk: InstallSnapshot,
}

/// An output of the core, polled with [`RaftCore::poll_action`](crate::RaftCore::poll_action).
///
/// Deliberately not `#[non_exhaustive]`: drivers match it exhaustively, so adding an action is
/// a compile error in every driver, not an output silently dropped by a catch-all arm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Make a write durable, in id order, then report it with `handle_persisted`.
    Persist(PersistRequest),
    /// Send a message (best effort: Raft tolerates loss, duplication and reordering).
    Send(Outgoing),
    /// Read entries from the log store and send them (see [`SendFromLog`]).
    SendFromLog(SendFromLog),
    /// Apply committed entries, then report progress with `handle_applied`.
    Apply(ApplyRequest),
    /// Take a snapshot of the state machine at its applied index and store it, then report
    /// with `handle_snapshot_built` (or `handle_snapshot_failed`).
    BuildSnapshot,
    /// Remove log entries up to and including this id (after a snapshot covering them). Must be
    /// ordered with `Persist` writes (the driver sends it through the same writer).
    PurgeLog(LogId),
    /// Send a chunk of a snapshot to a follower (see [`SendSnapshot`]).
    SendSnapshot(SendSnapshot),
    /// Store (and, when complete, install) a snapshot chunk from the leader (see
    /// [`ReceiveSnapshot`]).
    ReceiveSnapshot(ReceiveSnapshot),
    /// A read asked for with [`RaftCore::read_index`](crate::RaftCore::read_index) has its read
    /// index (serve it once the state machine has applied up to it), or failed.
    ReadIndex(ReadReady),
    /// The leader answered commands forwarded with
    /// [`RaftCore::forward`](crate::RaftCore::forward), or the answer will never come.
    Forwarded(Forwarded),
}

/// The outcome of one read (see [`Action::ReadIndex`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadReady {
    /// The read, as the driver named it.
    pub id: crate::ReadId,
    /// The read index: every write committed before the read was asked for is at or below it,
    /// so a state machine that has applied up to it answers linearizably.
    pub result: Result<LogIndex, crate::ReadError>,
}

/// The outcome of a batch of forwarded commands (see [`Action::Forwarded`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forwarded {
    /// The batch, as the driver named it.
    pub batch: u64,
    /// Where the leader appended the first command (the next ones follow it), or why not.
    pub result: Result<LogId, crate::ForwardError>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(term: u64, range: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
        range.map(|i| Entry::blank(LogId::new(term, i))).collect()
    }

    fn apply(log: &mut Vec<Entry>, hs: &mut Option<HardState>, w: &LogWrite) {
        if let Some(h) = w.hard_state {
            *hs = Some(h);
        }
        if let Some(t) = w.truncate_from {
            log.retain(|e| e.index() < t);
        }
        log.extend(w.entries.iter().cloned());
    }

    #[test]
    fn merge_equals_sequential_application() {
        let base = entries(1, 1..=10);
        let cases = vec![
            (
                LogWrite { entries: entries(1, 11..=12), ..Default::default() },
                LogWrite { entries: entries(1, 13..=14), ..Default::default() },
            ),
            (
                LogWrite { entries: entries(1, 11..=15), ..Default::default() },
                LogWrite {
                    truncate_from: Some(LogIndex(13)),
                    entries: entries(2, 13..=13),
                    ..Default::default()
                },
            ),
            (
                LogWrite { entries: entries(1, 11..=15), ..Default::default() },
                LogWrite {
                    truncate_from: Some(LogIndex(7)),
                    entries: entries(3, 7..=8),
                    hard_state: Some(HardState { term: Term(3), ..Default::default() }),
                },
            ),
            (
                LogWrite {
                    truncate_from: Some(LogIndex(9)),
                    entries: entries(2, 9..=12),
                    ..Default::default()
                },
                LogWrite {
                    truncate_from: Some(LogIndex(5)),
                    entries: vec![],
                    ..Default::default()
                },
            ),
            (
                LogWrite {
                    truncate_from: Some(LogIndex(5)),
                    entries: vec![],
                    ..Default::default()
                },
                LogWrite { entries: entries(4, 5..=6), ..Default::default() },
            ),
        ];
        for (a, b) in cases {
            let (mut seq, mut seq_hs) = (base.clone(), None);
            apply(&mut seq, &mut seq_hs, &a);
            apply(&mut seq, &mut seq_hs, &b);
            let mut merged = a.clone();
            merged.merge(b.clone());
            let (mut one, mut one_hs) = (base.clone(), None);
            apply(&mut one, &mut one_hs, &merged);
            assert_eq!(seq, one, "merge of {a:?} and {b:?}");
            assert_eq!(seq_hs, one_hs);
        }
    }
}
