//! What the cluster suite reads from a store to judge it ([`StoreRead`]), and the summary of a
//! log it judges from ([`NodeLog`]). A read is verified before anything is judged from it: a
//! store that returns fewer entries than asked for, or other indexes, is reported as a store
//! fault in those words, not as the protocol violation its log would seem to show (a short
//! read looks like missing committed entries).

use std::fmt::Write as _;
use std::hash::{Hash, Hasher};

use raftkit::store::LogShape;
use raftkit::{Entry, LogId, LogIndex, LogState, LogStore, LogWrite, StorageError};

use super::checker::Acknowledged;
use crate::kv::Fnv;

/// What a checkpoint read from one node's store: its state, and the entries it returned when
/// asked for all of them.
#[derive(Clone, Debug)]
pub struct StoreRead {
    /// What `load` returned.
    pub state: LogState,
    /// What `read(purged + 1, last)` returned; `Ok` and empty, without a call, when the log is
    /// empty.
    pub entries: Result<Vec<Entry>, StorageError>,
}

impl StoreRead {
    /// Loads `store` and reads its whole log. Only a failed `load` is an error; a failed read is
    /// kept in [`entries`](Self::entries) for [`check`](Self::check) to report.
    pub async fn of<S: LogStore>(store: &S) -> Result<StoreRead, StorageError> {
        let state = store.load().await?;
        let entries = if state.last.index <= state.purged.index {
            Ok(Vec::new())
        } else {
            store.read(state.purged.index.next(), state.last.index).await
        };
        Ok(StoreRead { state, entries })
    }

    /// The range the read asked for (`None` when the log is empty and nothing was asked).
    pub fn asked(&self) -> Option<(LogIndex, LogIndex)> {
        let (purged, last) = (self.state.purged.index, self.state.last.index);
        (last > purged).then(|| (purged.next(), last))
    }

    /// Checks that the store answered what was asked — exactly one entry per index of the range,
    /// in order — and summarizes the log. The error says what the store did wrong, in plain
    /// words ("the store returned 0 entries for 5..=9").
    pub fn check(&self) -> Result<NodeLog, String> {
        let entries = match &self.entries {
            Ok(e) => e,
            Err(e) => {
                let (first, last) = self.asked().unwrap_or_default();
                return Err(format!("reading {first}..={last} failed: {e}"));
            }
        };
        if self.state.last.index < self.state.purged.index {
            return Err(format!(
                "load reports the last entry {} below the purged id {}",
                self.state.last, self.state.purged
            ));
        }
        let Some((first, last)) = self.asked() else {
            return Ok(NodeLog { purged: self.state.purged, entries: Vec::new() });
        };
        let want = last.0 - first.0 + 1;
        if entries.len() as u64 != want {
            return Err(format!(
                "the store returned {} entries for {first}..={last} ({want} asked for)",
                entries.len()
            ));
        }
        for (k, e) in entries.iter().enumerate() {
            let expected = first.plus(k as u64);
            if e.index() != expected {
                return Err(format!(
                    "the store returned {} where {expected} was asked for (a read of \
                     {first}..={last})",
                    e.log_id
                ));
            }
        }
        Ok(NodeLog::from_entries(self.state.purged, entries))
    }

    /// What this read shows the store holds, as acknowledged state: the starting point of a
    /// tracker after the store was (re)opened. `None` if [`check`](Self::check) fails.
    pub fn acknowledged(&self) -> Option<Acknowledged> {
        self.check().ok()?;
        let mut shape = LogShape::empty(self.state.purged);
        if let Ok(entries) = &self.entries {
            let ids = LogWrite {
                entries: entries.iter().map(|e| Entry::blank(e.log_id)).collect(),
                ..LogWrite::default()
            };
            shape.apply_write(&ids);
        }
        Some(Acknowledged { hard_state: self.state.hard_state, shape })
    }
}

/// The log a checkpoint judges: what a verified [`StoreRead`] returned, summarized.
#[derive(Clone, Debug, Default)]
pub struct NodeLog {
    /// The last purged id.
    pub purged: LogId,
    /// The entries after it, as (id, payload digest).
    pub entries: Vec<(LogId, u64)>,
}

impl NodeLog {
    /// Summarizes entries read from a store (which must be the whole log after `purged`, in
    /// order: see [`StoreRead::check`]).
    pub fn from_entries(purged: LogId, entries: &[Entry]) -> NodeLog {
        let entries = entries
            .iter()
            .map(|e| {
                let mut h = Fnv::default();
                format!("{:?}", e.payload).hash(&mut h);
                (e.log_id, h.finish())
            })
            .collect();
        NodeLog { purged, entries }
    }

    /// The entry at `index` (id, payload digest), if the log holds it.
    pub(crate) fn get(&self, index: LogIndex) -> Option<(LogId, u64)> {
        if index <= self.purged.index {
            return None;
        }
        self.entries.get((index.0 - self.purged.index.0 - 1) as usize).copied()
    }

    /// The last entry's id (the purged id when empty).
    pub(crate) fn last(&self) -> LogId {
        self.entries.last().map_or(self.purged, |e| e.0)
    }

    /// A compact description: term runs with their index ranges.
    pub fn summary(&self) -> String {
        let mut out = format!("purged={} ", self.purged);
        let mut i = 0;
        while i < self.entries.len() {
            let t = self.entries[i].0.term;
            let start = self.entries[i].0.index;
            let mut j = i;
            while j + 1 < self.entries.len() && self.entries[j + 1].0.term == t {
                j += 1;
            }
            let _ = write!(out, "[t{} {}..={}] ", t.0, start.0, self.entries[j].0.index.0);
            i = j + 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use raftkit::HardState;

    use super::*;

    fn read(purged: u64, last: u64, entries: &[(u64, u64)]) -> StoreRead {
        StoreRead {
            state: LogState {
                hard_state: HardState::default(),
                purged: LogId::new(1, purged),
                last: LogId::new(1, last),
            },
            entries: Ok(entries.iter().map(|(t, i)| Entry::blank(LogId::new(*t, *i))).collect()),
        }
    }

    #[test]
    fn a_short_or_wrong_read_is_a_store_fault() {
        let good = read(4, 7, &[(1, 5), (1, 6), (1, 7)]);
        assert_eq!(good.check().expect("a whole read").last(), LogId::new(1, 7));
        let ack = good.acknowledged().expect("a whole read");
        assert_eq!((ack.shape.purged(), ack.shape.last()), (LogId::new(1, 4), LogId::new(1, 7)));

        let short = read(4, 9, &[]);
        assert_eq!(
            short.check().unwrap_err(),
            "the store returned 0 entries for i5..=i9 (5 asked for)"
        );
        assert!(short.acknowledged().is_none());
        let skipped = read(4, 7, &[(1, 5), (1, 7), (1, 8)]);
        let e = skipped.check().unwrap_err();
        assert!(e.contains("returned 1-7 where i6 was asked for"), "{e}");
        let failed = StoreRead {
            entries: Err(StorageError::new(raftkit::StorageErrorKind::Io, "EIO")),
            ..read(4, 7, &[])
        };
        assert!(failed.check().unwrap_err().starts_with("reading i5..=i7 failed"));
        // An empty log asks for nothing.
        assert!(read(4, 4, &[]).check().is_ok());
    }
}
