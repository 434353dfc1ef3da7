//! The testkit's own key-value state machine: registers with put, get and compare-and-swap
//! (and reads outside the log, [`KvQuery`]), that reports every applied entry to a recorder so
//! the cluster suite can check state-machine safety. It is deliberately simple and in-memory
//! (rebuilt from the log after a restart).

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use async_trait::async_trait;
use raftkit::{
    ApplyEntry, ApplyPayload, EncodedSnapshot, LogId, SnapshotMeta, SnapshotSource, StateMachine,
    StorageError, StorageErrorKind, decode_snapshot,
};
use serde::{Deserialize, Serialize};

use crate::linearizability::{Input, Output};

/// A command on one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KvCommand {
    /// The key.
    pub key: String,
    /// What to do.
    pub op: KvOp,
}

/// What a [`KvCommand`] does.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvOp {
    /// Set the value; answers the previous one.
    Put(String),
    /// Read the value (through the log; [`KvQuery::Get`] reads it without a log entry).
    Get,
    /// Set `new` if the current value is `expected`.
    Cas {
        /// The value required (`None`: absent).
        expected: Option<String>,
        /// The value to set.
        new: String,
    },
}

/// A read that does not go through the log: what `Raft::client_read` takes, answered by
/// [`StateMachine::query`] with a [`KvOutput`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvQuery {
    /// Read the value; answers [`KvOutput::Get`].
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

    /// The linearizability checker's view of this query: the same as a read through the log.
    pub fn to_input(&self) -> Input {
        match self {
            KvQuery::Get { .. } => Input::Get,
        }
    }
}

/// The answer to a [`KvCommand`] or a [`KvQuery`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvOutput {
    /// `Put`: the previous value.
    Put {
        /// The previous value.
        prev: Option<String>,
    },
    /// `Get` (command or query): the value.
    Get {
        /// The value.
        value: Option<String>,
    },
    /// `Cas`: whether it swapped, and the value after.
    Cas {
        /// The swap happened.
        swapped: bool,
        /// The value after the command.
        current: Option<String>,
    },
}

impl KvOp {
    /// The linearizability checker's view of this operation.
    pub fn to_input(&self) -> Input {
        match self {
            KvOp::Put(v) => Input::Put { value: v.clone() },
            KvOp::Get => Input::Get,
            KvOp::Cas { expected, new } => {
                Input::Cas { expected: expected.clone(), new: new.clone() }
            }
        }
    }
}

impl KvOutput {
    /// The linearizability checker's view of this answer.
    pub fn to_output(&self) -> Output {
        match self {
            KvOutput::Put { prev } => Output::Put { prev: prev.clone() },
            KvOutput::Get { value } => Output::Get { value: value.clone() },
            KvOutput::Cas { swapped, current } => {
                Output::Cas { swapped: *swapped, current: current.clone() }
            }
        }
    }
}

/// Executes one command on a map: the sequential specification of the store.
pub fn execute(data: &mut BTreeMap<String, String>, cmd: &KvCommand) -> KvOutput {
    let current = data.get(&cmd.key).cloned();
    match &cmd.op {
        KvOp::Put(v) => {
            data.insert(cmd.key.clone(), v.clone());
            KvOutput::Put { prev: current }
        }
        KvOp::Get => KvOutput::Get { value: current },
        KvOp::Cas { expected, new } => {
            if current == *expected {
                data.insert(cmd.key.clone(), new.clone());
                KvOutput::Cas { swapped: true, current: Some(new.clone()) }
            } else {
                KvOutput::Cas { swapped: false, current }
            }
        }
    }
}

/// Answers one query from a map, without changing it: the sequential specification of a read
/// outside the log (the same answer as the `Get` command).
pub fn answer(data: &BTreeMap<String, String>, query: &KvQuery) -> KvOutput {
    match query {
        KvQuery::Get { key } => KvOutput::Get { value: data.get(key).cloned() },
    }
}

/// Receives every entry a [`TestKv`] applies.
pub trait ApplyRecorder: Send + Sync + 'static {
    /// `entry` was applied; `digest` identifies its payload (equal payloads, equal digests).
    fn applied(&self, entry: LogId, digest: u64);

    /// The state was replaced by a snapshot's, up to and including `at`.
    fn restored(&self, at: LogId);

    /// After applying up to `at` (or restoring a snapshot of it), the whole state hashes to
    /// `digest` ([`TestKv::state_digest`]): every node must report the same digest for the same
    /// `at`, whether it got there entry by entry or from a snapshot.
    fn state(&self, _at: LogId, _digest: u64) {}
}

/// The hash of one key's value, as it enters a [`TestKv::state_digest`].
fn pair_hash(key: &str, value: &str) -> u64 {
    let mut h = Fnv::default();
    key.hash(&mut h);
    value.hash(&mut h);
    h.finish()
}

/// A deterministic 64-bit FNV-1a hasher (the std hasher's keys vary between processes).
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xCBF2_9CE4_8422_2325)
    }
}

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

/// The testkit's key-value state machine.
pub struct TestKv {
    data: BTreeMap<String, String>,
    applied: Option<LogId>,
    recorder: Option<Arc<dyn ApplyRecorder>>,
    /// XOR of [`pair_hash`] over every key: kept up to date in O(1) per command.
    digest: u64,
    /// What [`StateMachine::inline_apply`] answers.
    inline: bool,
}

impl TestKv {
    /// An empty machine that reports applied entries to `recorder`.
    pub fn new(recorder: Option<Arc<dyn ApplyRecorder>>) -> TestKv {
        TestKv { data: BTreeMap::new(), applied: None, recorder, digest: 0, inline: false }
    }

    /// Whether the engine may apply this machine on its driver task
    /// ([`StateMachine::inline_apply`]; off by default). The cluster suite turns it on for about
    /// half of the nodes, so both apply paths of the engine run under faults.
    pub fn with_inline_apply(mut self, inline: bool) -> TestKv {
        self.inline = inline;
        self
    }

    /// The current data.
    pub fn data(&self) -> &BTreeMap<String, String> {
        &self.data
    }

    /// A digest of the whole state (the XOR of a hash of every key and its value), equal on two
    /// machines holding the same data.
    pub fn state_digest(&self) -> u64 {
        self.digest
    }

    fn digest_of(data: &BTreeMap<String, String>) -> u64 {
        data.iter().fold(0, |d, (k, v)| d ^ pair_hash(k, v))
    }
}

#[async_trait]
impl StateMachine for TestKv {
    type Command = KvCommand;
    type Output = KvOutput;
    type Query = KvQuery;
    type QueryOutput = KvOutput;

    async fn applied(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.applied)
    }

    fn inline_apply(&self) -> bool {
        self.inline
    }

    async fn apply(
        &mut self,
        entries: Vec<ApplyEntry<KvCommand>>,
    ) -> Result<Vec<KvOutput>, StorageError> {
        let mut out = Vec::new();
        for e in entries {
            let mut h = Fnv::default();
            match &e.payload {
                ApplyPayload::Command(cmd) => {
                    cmd.hash(&mut h);
                    let before = self.data.get(&cmd.key).map(|v| pair_hash(&cmd.key, v));
                    out.push(execute(&mut self.data, cmd));
                    let after = self.data.get(&cmd.key).map(|v| pair_hash(&cmd.key, v));
                    self.digest ^= before.unwrap_or(0) ^ after.unwrap_or(0);
                }
                ApplyPayload::Blank => 0u8.hash(&mut h),
                ApplyPayload::Membership(m) => format!("{m:?}").hash(&mut h),
            }
            if let Some(r) = &self.recorder {
                r.applied(e.log_id, h.finish());
            }
            self.applied = Some(e.log_id);
        }
        if let (Some(r), Some(at)) = (&self.recorder, self.applied) {
            r.state(at, self.digest);
        }
        Ok(out)
    }

    fn query(&self, query: KvQuery) -> KvOutput {
        answer(&self.data, &query)
    }

    async fn snapshot(&mut self) -> Result<Box<dyn SnapshotSource>, StorageError> {
        Ok(EncodedSnapshot::boxed((self.applied, self.data.clone())))
    }

    async fn restore(
        &mut self,
        meta: &SnapshotMeta,
        data: Box<dyn std::io::Read + Send>,
    ) -> Result<(), StorageError> {
        let (applied, data): (Option<LogId>, BTreeMap<String, String>) = decode_snapshot(data)?;
        if applied != Some(meta.last_log_id) {
            return Err(StorageError::new(
                StorageErrorKind::Corruption,
                format!("the snapshot holds state up to {applied:?}, not {}", meta.last_log_id),
            ));
        }
        self.applied = applied;
        self.digest = TestKv::digest_of(&data);
        self.data = data;
        if let Some(r) = &self.recorder {
            r.restored(meta.last_log_id);
            r.state(meta.last_log_id, self.digest);
        }
        Ok(())
    }
}
