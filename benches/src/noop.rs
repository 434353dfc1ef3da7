//! [`NoopSm`]: a state machine whose commands are empty, raftkit's side of the comparison with
//! openraft (whose side, `openraft_baseline::EmptySm`, applies `()` commands).

use std::io::Read;

use async_trait::async_trait;
use raftkit::{
    ApplyEntry, ApplyPayload, EncodedSnapshot, LogId, SnapshotMeta, SnapshotSource, StateMachine,
    StorageError, decode_snapshot,
};

/// Applies empty commands: it only remembers the last applied id and counts commands. A command
/// is `()`, which the engine's codec encodes as a single version byte.
#[derive(Clone, Debug, Default)]
pub struct NoopSm {
    applied: Option<LogId>,
    commands: u64,
}

impl NoopSm {
    /// A state machine that has applied nothing.
    pub fn new() -> NoopSm {
        NoopSm::default()
    }

    /// How many commands were applied.
    pub fn commands(&self) -> u64 {
        self.commands
    }
}

#[async_trait]
impl StateMachine for NoopSm {
    type Command = ();
    type Output = ();
    type Query = ();
    type QueryOutput = ();

    async fn applied(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.applied)
    }

    /// Applying is a counter: it finishes at once, so the driver applies itself.
    fn inline_apply(&self) -> bool {
        true
    }

    async fn apply(&mut self, entries: Vec<ApplyEntry<()>>) -> Result<Vec<()>, StorageError> {
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            if let ApplyPayload::Command(()) = e.payload {
                self.commands += 1;
                out.push(());
            }
            self.applied = Some(e.log_id);
        }
        Ok(out)
    }

    /// There is nothing to read: a query answers `()`.
    fn query(&self, _query: ()) {}

    async fn snapshot(&mut self) -> Result<Box<dyn SnapshotSource>, StorageError> {
        Ok(EncodedSnapshot::boxed((self.applied, self.commands)))
    }

    async fn restore(
        &mut self,
        _meta: &SnapshotMeta,
        data: Box<dyn Read + Send>,
    ) -> Result<(), StorageError> {
        let (applied, commands): (Option<LogId>, u64) = decode_snapshot(data)?;
        self.applied = applied;
        self.commands = commands;
        Ok(())
    }
}
