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
    /// Reads `key` (through the log, so the read is linearizable).
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

/// The result of a [`KvCommand`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOutput {
    /// `Put` and `Delete`: the value before.
    Prev(Option<String>),
    /// `Get`: the value.
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

    /// A copy of the current state.
    pub fn state(&self) -> KvState {
        self.lock().clone()
    }

    /// The value of `key`, read locally (not linearizable: use a `Get` command for that).
    pub fn get_local(&self, key: &str) -> Option<String> {
        self.lock().data.get(key).cloned()
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
