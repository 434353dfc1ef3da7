//! [`MemKv`]: an in-memory key-value state machine for tests, examples and benchmarks.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use raftkit::{
    ApplyEntry, ApplyPayload, EncodedSnapshot, LogId, SnapshotMeta, SnapshotSource, StateMachine,
    StorageError, StorageErrorKind, decode_snapshot,
};
use serde::{Deserialize, Serialize};

/// A key-value command.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvCommand {
    /// Sets `key` to `value`; outputs the previous value.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: String,
    },
    /// Reads `key` through the log, so the read is linearizable (at the price of a log
    /// write); [`KvQuery::Get`] reads it without one.
    Get {
        /// The key.
        key: String,
    },
    /// Removes `key`; outputs the previous value.
    Delete {
        /// The key.
        key: String,
    },
    /// Sets `key` to `new` (or removes it if `None`) only if its current value is `expected`.
    Cas {
        /// The key.
        key: String,
        /// The value the key must have (`None`: absent).
        expected: Option<String>,
        /// The value to store (`None`: remove).
        new: Option<String>,
    },
}

impl KvCommand {
    /// A `Put`.
    pub fn put(key: impl Into<String>, value: impl Into<String>) -> KvCommand {
        KvCommand::Put { key: key.into(), value: value.into() }
    }

    /// A `Get`.
    pub fn get(key: impl Into<String>) -> KvCommand {
        KvCommand::Get { key: key.into() }
    }

    /// A `Delete`.
    pub fn delete(key: impl Into<String>) -> KvCommand {
        KvCommand::Delete { key: key.into() }
    }

    /// A `Cas`.
    pub fn cas(key: impl Into<String>, expected: Option<String>, new: Option<String>) -> KvCommand {
        KvCommand::Cas { key: key.into(), expected, new }
    }

    /// The key the command touches.
    pub fn key(&self) -> &str {
        match self {
            KvCommand::Put { key, .. }
            | KvCommand::Get { key }
            | KvCommand::Delete { key }
            | KvCommand::Cas { key, .. } => key,
        }
    }
}

/// A read of a [`MemKv`] that does not go through the log: what `Raft::client_read` takes
/// (see [`MemKv`] for which reads are linearizable). Answered with a [`KvOutput`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvQuery {
    /// Reads `key`; answers [`KvOutput::Value`].
    Get {
        /// The key.
        key: String,
    },
}

impl KvQuery {
    /// A `Get`.
    pub fn get(key: impl Into<String>) -> KvQuery {
        KvQuery::Get { key: key.into() }
    }

    /// The key the query reads.
    pub fn key(&self) -> &str {
        match self {
            KvQuery::Get { key } => key,
        }
    }
}

/// The result of a [`KvCommand`] or a [`KvQuery`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOutput {
    /// `Put` and `Delete`: the value before.
    Prev(Option<String>),
    /// `Get` (command or query): the value.
    Value(Option<String>),
    /// `Cas`: whether the swap happened, and the value after.
    Cas {
        /// The expected value matched and the new one is stored.
        swapped: bool,
        /// The key's value after the command.
        current: Option<String>,
    },
}

/// The state behind a [`MemKv`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvState {
    /// The data.
    pub data: BTreeMap<String, String>,
    /// The last applied entry.
    pub applied: Option<LogId>,
    /// How many commands were applied.
    pub commands: u64,
    /// A digest of every entry applied, in order: two nodes with equal digests applied the same
    /// sequence.
    pub digest: u64,
}

/// FNV-1a: deterministic across processes and platforms, unlike the std hasher's keys.
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
}

/// An in-memory key-value state machine.
///
/// Clones share the state: keep a clone to inspect it from a test, or to restart a node on the
/// same state (modelling a durable state machine: the applied index and the data change under
/// one lock, atomically). A fresh `MemKv` starts empty and is rebuilt from the log.
///
/// # Which reads are linearizable
/// - [`get_local`](MemKv::get_local) and [`state`](MemKv::state) read this node's copy, as of
///   whatever it has applied: not linearizable. On a follower, or on a leader deposed without
///   knowing it yet, they can miss writes that have completed.
/// - A [`KvCommand::Get`] through `Raft::client_write` is linearizable: it is ordered in the
///   log with the writes, at the price of a log write.
/// - A [`KvQuery::Get`] through `Raft::client_read` with the `Linearizable`, `Lease` or
///   `Follower` read policy is linearizable without a log write: the engine answers it
///   ([`StateMachine::query`]) once this node has applied everything up to an index the leader
///   has confirmed. (A lease read also relies on the nodes' clocks running at about the same
///   rate.)
/// - A [`KvQuery::Get`] through `Raft::client_read` with `ReadPolicy::Stale` is not
///   linearizable: it reads this node's copy, like `get_local`.
#[derive(Clone, Debug, Default)]
pub struct MemKv {
    state: Arc<Mutex<KvState>>,
    /// What [`StateMachine::inline_apply`] answers.
    inline: bool,
}

impl MemKv {
    /// An empty state machine, applied by the engine's apply task.
    pub fn new() -> MemKv {
        MemKv::default()
    }

    /// Lets the engine apply this machine on its driver task ([`StateMachine::inline_apply`]:
    /// applying a map in memory finishes at once, so this saves two task switches per batch).
    /// Off by default: on tokio's paused clock, clients writing in a closed loop to such a
    /// node on a network without latency can keep the runtime from ever going idle, and the
    /// paused clock then never moves.
    pub fn with_inline_apply(mut self, inline: bool) -> MemKv {
        self.inline = inline;
        self
    }

    fn lock(&self) -> MutexGuard<'_, KvState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of this node's current state (not linearizable: see [`MemKv`]).
    pub fn state(&self) -> KvState {
        self.lock().clone()
    }

    /// The value of `key` in this node's copy (not linearizable: may be stale on a follower or a
    /// deposed leader; for a linearizable read use a [`KvQuery::Get`] through
    /// `Raft::client_read` or a [`KvCommand::Get`] through `Raft::client_write`, see
    /// [`MemKv`]).
    pub fn get_local(&self, key: &str) -> Option<String> {
        self.lock().data.get(key).cloned()
    }

    /// Answers one query from the data, without changing it.
    pub fn answer(data: &BTreeMap<String, String>, query: &KvQuery) -> KvOutput {
        match query {
            KvQuery::Get { key } => KvOutput::Value(data.get(key).cloned()),
        }
    }

    /// Applies one command to the data and returns its output.
    pub fn execute(data: &mut BTreeMap<String, String>, cmd: &KvCommand) -> KvOutput {
        match cmd {
            KvCommand::Put { key, value } => {
                KvOutput::Prev(data.insert(key.clone(), value.clone()))
            }
            KvCommand::Get { key } => KvOutput::Value(data.get(key).cloned()),
            KvCommand::Delete { key } => KvOutput::Prev(data.remove(key)),
            KvCommand::Cas { key, expected, new } => {
                let current = data.get(key).cloned();
                if current == *expected {
                    match new {
                        Some(v) => data.insert(key.clone(), v.clone()),
                        None => data.remove(key),
                    };
                    KvOutput::Cas { swapped: true, current: new.clone() }
                } else {
                    KvOutput::Cas { swapped: false, current }
                }
            }
        }
    }
}

#[async_trait]
impl StateMachine for MemKv {
    type Command = KvCommand;
    type Output = KvOutput;
    type Query = KvQuery;
    type QueryOutput = KvOutput;

    async fn applied(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.lock().applied)
    }

    /// As set by [`MemKv::with_inline_apply`] (off by default).
    fn inline_apply(&self) -> bool {
        self.inline
    }

    async fn apply(
        &mut self,
        entries: Vec<ApplyEntry<KvCommand>>,
    ) -> Result<Vec<KvOutput>, StorageError> {
        let mut g = self.lock();
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let mut h = Fnv(g.digest ^ 0xCBF2_9CE4_8422_2325);
            e.log_id.index.0.hash(&mut h);
            e.log_id.term.0.hash(&mut h);
            if let ApplyPayload::Command(cmd) = &e.payload {
                cmd.hash(&mut h);
                let o = MemKv::execute(&mut g.data, cmd);
                g.commands += 1;
                out.push(o);
            }
            g.digest = h.finish();
            g.applied = Some(e.log_id);
        }
        Ok(out)
    }

    /// Reads under the state's lock (which clones share): the answer is as of the end of an
    /// `apply` call, never mid-batch.
    fn query(&self, query: KvQuery) -> KvOutput {
        MemKv::answer(&self.lock().data, &query)
    }

    async fn snapshot(&mut self) -> Result<Box<dyn SnapshotSource>, StorageError> {
        // A copy is all that happens on the apply path; encoding happens as it is written out.
        Ok(EncodedSnapshot::boxed(self.lock().clone()))
    }

    async fn restore(
        &mut self,
        meta: &SnapshotMeta,
        data: Box<dyn std::io::Read + Send>,
    ) -> Result<(), StorageError> {
        let state: KvState = decode_snapshot(data)?;
        if state.applied != Some(meta.last_log_id) {
            return Err(StorageError::new(
                StorageErrorKind::Corruption,
                format!(
                    "the snapshot holds state up to {:?}, not {}",
                    state.applied, meta.last_log_id
                ),
            ));
        }
        *self.lock() = state;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(index: u64, cmd: KvCommand) -> ApplyEntry<KvCommand> {
        ApplyEntry { log_id: LogId::new(1, index), payload: ApplyPayload::Command(cmd) }
    }

    #[tokio::test]
    async fn a_query_sees_what_apply_wrote_and_changes_nothing() {
        let mut kv = MemKv::new();
        assert_eq!(kv.query(KvQuery::get("a")), KvOutput::Value(None));
        kv.apply(vec![
            command(1, KvCommand::put("a", "1")),
            command(2, KvCommand::put("b", "2")),
            command(3, KvCommand::put("a", "3")),
        ])
        .await
        .unwrap();
        let before = kv.state();

        assert_eq!(kv.query(KvQuery::get("a")), KvOutput::Value(Some("3".into())));
        assert_eq!(kv.query(KvQuery::get("b")), KvOutput::Value(Some("2".into())));
        assert_eq!(kv.query(KvQuery::get("c")), KvOutput::Value(None));

        // Nothing changed: not the data, the applied id, the command count nor the digest.
        assert_eq!(kv.state(), before);
        assert_eq!(kv.applied().await.unwrap(), Some(LogId::new(1, 3)));

        // It answers as a `Get` command through the log does, which is an entry in the digest.
        let out = kv.apply(vec![command(4, KvCommand::get("a"))]).await.unwrap();
        assert_eq!(out, vec![KvOutput::Value(Some("3".into()))]);
        assert_ne!(kv.state().digest, before.digest);
    }
}
