//! The core's view of the local log.
//!
//! The core cannot read the log store (it does no IO), so it keeps what the protocol needs in
//! memory: the term of every index, as runs (one `LogId` per term change, so its size is the
//! number of terms, not entries); a cache of recent entries bounded by
//! [`Config::entry_cache_bytes`](crate::Config::entry_cache_bytes); and the durable watermark.
//! Entries below the cache are read from the store by the engine when they are needed.

use std::collections::VecDeque;

use crate::types::{Entry, LogId, LogIndex, Term};

/// Why the state loaded from storage cannot be the start of a log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LogStateError {
    /// The term runs are not strictly increasing in both index and term, or fall outside the log.
    #[error("term runs {runs:?} do not describe a log after {purged} ending at {last}")]
    BadRuns {
        /// The runs given.
        runs: Vec<LogId>,
        /// The last purged id.
        purged: LogId,
        /// The last log id.
        last: LogId,
    },
}

#[derive(Debug)]
pub(crate) struct RaftLog {
    /// The last entry removed by a purge (or the snapshot's last id); `ZERO` if none.
    purged: LogId,
    /// The first id of each run of equal terms, ascending; covers `(purged.index, last.index]`.
    runs: Vec<LogId>,
    last: LogId,
    /// A contiguous suffix of the log, ending at `last`.
    cache: VecDeque<Entry>,
    cache_bytes: usize,
    cache_limit: usize,
    /// Every entry at or below `stable` is durable and belongs to this log.
    stable: LogIndex,
}

impl RaftLog {
    /// A log as loaded from storage: everything in it is durable.
    pub(crate) fn restore(
        purged: LogId,
        runs: Vec<LogId>,
        last: LogId,
        cache_limit: usize,
    ) -> Result<RaftLog, LogStateError> {
        let bad = || LogStateError::BadRuns { runs: runs.clone(), purged, last };
        if last.index < purged.index {
            return Err(bad());
        }
        if last.index == purged.index {
            if !runs.is_empty() || last != purged {
                return Err(bad());
            }
        } else {
            let first = runs.first().ok_or_else(bad)?;
            if first.index != purged.index.next() || first.term < purged.term {
                return Err(bad());
            }
            for w in runs.windows(2) {
                if w[1].index <= w[0].index || w[1].term <= w[0].term {
                    return Err(bad());
                }
            }
            let tail = runs[runs.len() - 1];
            if tail.index > last.index || tail.term != last.term {
                return Err(bad());
            }
        }
        Ok(RaftLog {
            purged,
            runs,
            last,
            cache: VecDeque::new(),
            cache_bytes: 0,
            cache_limit,
            stable: last.index,
        })
    }

    pub(crate) fn last(&self) -> LogId {
        self.last
    }

    pub(crate) fn purged(&self) -> LogId {
        self.purged
    }

    pub(crate) fn stable(&self) -> LogIndex {
        self.stable
    }

    /// How many entries are cached.
    pub(crate) fn cached_len(&self) -> usize {
        self.cache.len()
    }

    /// The first index still in the cache (`last + 1` when the cache is empty).
    pub(crate) fn cache_first(&self) -> LogIndex {
        self.cache.front().map_or(self.last.index.next(), Entry::index)
    }

    /// The term of the entry at `index`, if the log has it (the purged id counts).
    pub(crate) fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == self.purged.index {
            return Some(self.purged.term);
        }
        if index < self.purged.index || index > self.last.index {
            return None;
        }
        let pos = self.runs.partition_point(|r| r.index <= index);
        // `pos >= 1` because runs[0].index == purged.index + 1 <= index.
        Some(self.runs[pos - 1].term)
    }

    /// Whether the log contains `id`.
    pub(crate) fn has(&self, id: LogId) -> bool {
        self.term_at(id.index) == Some(id.term)
    }

    /// The id of the entry at `index`, if the log has it.
    pub(crate) fn id_at(&self, index: LogIndex) -> Option<LogId> {
        self.term_at(index).map(|term| LogId { term, index })
    }

    /// The largest index at or below `index` whose term is at most `term`, with its term; the
    /// purged id if no entry qualifies. Used for fast backtracking on both sides of a rejection.
    pub(crate) fn find_conflict_by_term(&self, index: LogIndex, term: Term) -> LogId {
        let index = index.min(self.last.index);
        if index <= self.purged.index {
            return self.purged;
        }
        // Runs are ascending in term; the last run with term <= `term` that starts at or before
        // `index` holds the answer.
        let by_index = self.runs.partition_point(|r| r.index <= index);
        let by_term = self.runs[..by_index].partition_point(|r| r.term <= term);
        if by_term == 0 {
            return self.purged;
        }
        let run = self.runs[by_term - 1];
        let end = if by_term < self.runs.len() {
            self.runs[by_term].index.prev()
        } else {
            self.last.index
        };
        LogId { term: run.term, index: end.min(index) }
    }

    /// Appends entries that follow `last` directly. Entries are cached until evicted. Returns
    /// their size (the sum of their `size_hint`s).
    pub(crate) fn append(&mut self, entries: &[Entry]) -> usize {
        let mut bytes = 0;
        for e in entries {
            debug_assert_eq!(e.index(), self.last.index.next(), "append must be contiguous");
            if self.runs.last().is_none_or(|r| r.term != e.term()) {
                self.runs.push(e.log_id);
            }
            self.last = e.log_id;
            bytes += e.size_hint();
            self.cache.push_back(e.clone());
        }
        self.cache_bytes += bytes;
        bytes
    }

    /// Removes every entry at or after `from`.
    pub(crate) fn truncate(&mut self, from: LogIndex) {
        if from > self.last.index {
            return;
        }
        debug_assert!(from > self.purged.index, "cannot truncate purged entries");
        let keep = self.runs.partition_point(|r| r.index < from);
        self.runs.truncate(keep);
        let prev = from.prev();
        self.last = self.id_at_unchecked(prev);
        while self.cache.back().is_some_and(|e| e.index() >= from) {
            let e = self.cache.pop_back().expect("checked non-empty");
            self.cache_bytes -= e.size_hint();
        }
        self.stable = self.stable.min(prev);
    }

    fn id_at_unchecked(&self, index: LogIndex) -> LogId {
        if index <= self.purged.index {
            return self.purged;
        }
        let pos = self.runs.partition_point(|r| r.index <= index);
        LogId { term: self.runs[pos - 1].term, index }
    }

    /// Forgets every entry up to and including `up_to` (covered by a snapshot). `up_to` must be
    /// in the log and durable.
    pub(crate) fn purge(&mut self, up_to: LogId) {
        if up_to.index <= self.purged.index {
            return;
        }
        debug_assert!(self.has(up_to) && up_to.index <= self.stable);
        let after = up_to.index.next();
        let keep_term = self.term_at(after);
        self.runs.retain(|r| r.index > after);
        if let Some(term) = keep_term {
            self.runs.insert(0, LogId { term, index: after });
        }
        while self.cache.front().is_some_and(|e| e.index() <= up_to.index) {
            let e = self.cache.pop_front().expect("checked non-empty");
            self.cache_bytes -= e.size_hint();
        }
        self.purged = up_to;
        if self.last.index < after {
            self.last = up_to;
        }
    }

    /// Replaces the log's prefix with a snapshot ending at `snapshot`: entries after it are kept
    /// if the log holds `snapshot` itself (they follow from it), otherwise the log is emptied.
    /// Mirrors what the store's install did durably.
    /// Returns whether the entries after the snapshot were kept.
    pub(crate) fn install(&mut self, snapshot: LogId) -> bool {
        if self.has(snapshot) && snapshot.index <= self.stable {
            self.purge(snapshot);
            return true;
        }
        self.runs.clear();
        self.cache.clear();
        self.cache_bytes = 0;
        self.purged = snapshot;
        self.last = snapshot;
        self.stable = snapshot.index;
        false
    }

    /// Records that every entry up to `up_to` is durable as this log holds it. The caller
    /// (the write tracking in `RaftCore`) has already lowered `up_to` below every truncation
    /// issued after the write that finished.
    pub(crate) fn mark_stable(&mut self, up_to: LogIndex) {
        self.stable = self.stable.max(up_to.min(self.last.index));
        self.evict();
    }

    /// Drops the cached entries up to `up_to` that are durable (the store can serve them).
    pub(crate) fn release(&mut self, up_to: LogIndex) {
        let up_to = up_to.min(self.stable);
        while let Some(e) = self.cache.front() {
            if e.index() > up_to {
                break;
            }
            self.cache_bytes -= e.size_hint();
            self.cache.pop_front();
        }
    }

    /// Removes and returns the cached entries from the front up to `up_to`, which must be
    /// durable (as for [`release`](Self::release), whose effect this has).
    pub(crate) fn take_front(&mut self, up_to: LogIndex) -> Vec<Entry> {
        debug_assert!(up_to <= self.stable, "only durable entries leave the cache");
        let up_to = up_to.min(self.stable);
        let n = self.cache.partition_point(|e| e.index() <= up_to);
        let taken: Vec<Entry> = self.cache.drain(..n).collect();
        self.cache_bytes -= taken.iter().map(Entry::size_hint).sum::<usize>();
        taken
    }

    /// Drops cached entries from the front while over the limit; never drops entries that are
    /// not yet durable (the store could not serve them).
    fn evict(&mut self) {
        while self.cache_bytes > self.cache_limit {
            match self.cache.front() {
                Some(e) if e.index() <= self.stable => {
                    self.cache_bytes -= e.size_hint();
                    self.cache.pop_front();
                }
                _ => break,
            }
        }
    }

    /// Up to `max_count` cached entries from `from`, stopping once `max_bytes` is reached (at
    /// least one entry). `None` if `from` is below the cache.
    pub(crate) fn cached(
        &self,
        from: LogIndex,
        max_count: usize,
        max_bytes: usize,
    ) -> Option<(Vec<Entry>, usize)> {
        let first = self.cache_first();
        if from < first {
            return None;
        }
        let skip = usize::try_from(from.0 - first.0).ok()?.min(self.cache.len());
        let end = skip + (self.cache.len() - skip).min(max_count);
        let mut out = Vec::with_capacity(end - skip);
        let mut bytes = 0;
        for e in self.cache.range(skip..end) {
            let size = e.size_hint();
            if !out.is_empty() && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            out.push(e.clone());
        }
        Some((out, bytes))
    }

    /// An estimate of an average entry's size, for flow control of entries read from storage.
    pub(crate) fn average_entry_size(&self) -> usize {
        if self.cache.is_empty() { 64 } else { (self.cache_bytes / self.cache.len()).max(1) }
    }

    /// Whether a candidate whose last entry is `candidate_last` is at least as up to date as this
    /// log (Raft §5.4.1): a later last term, or the same last term and at least as long.
    pub(crate) fn is_up_to_date(&self, candidate_last: LogId) -> bool {
        candidate_last >= self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with(terms: &[u64]) -> RaftLog {
        let mut log = RaftLog::restore(LogId::ZERO, vec![], LogId::ZERO, usize::MAX).unwrap();
        let entries: Vec<Entry> = terms
            .iter()
            .enumerate()
            .map(|(i, t)| Entry::blank(LogId::new(*t, i as u64 + 1)))
            .collect();
        log.append(&entries);
        log
    }

    #[test]
    fn term_at_uses_runs() {
        let log = log_with(&[1, 1, 2, 2, 2, 5]);
        let terms: Vec<_> = (0..=7).map(|i| log.term_at(LogIndex(i)).map(|t| t.0)).collect();
        assert_eq!(terms, [Some(0), Some(1), Some(1), Some(2), Some(2), Some(2), Some(5), None]);
        assert_eq!(log.runs.len(), 3);
    }

    #[test]
    fn truncate_drops_runs_and_lowers_stable() {
        let mut log = log_with(&[1, 1, 2, 2, 3]);
        log.mark_stable(LogIndex(5));
        assert_eq!(log.stable(), LogIndex(5));
        log.truncate(LogIndex(3));
        assert_eq!(log.last(), LogId::new(1, 2));
        assert_eq!(log.runs, vec![LogId::new(1, 1)]);
        assert_eq!(log.stable(), LogIndex(2));
        assert_eq!(log.cache_first(), LogIndex(1));
        // A write that completes for the old suffix cannot raise `stable` past the log's end.
        log.mark_stable(LogIndex(5));
        assert_eq!(log.stable(), LogIndex(2));
    }

    #[test]
    fn conflict_by_term_skips_whole_terms() {
        let log = log_with(&[1, 1, 1, 4, 4, 5, 5, 6, 6, 6]);
        // Leader's prev at index 10 term 8: the follower's last entry with term <= 8 at or below
        // index 10 is (6, 10).
        assert_eq!(log.find_conflict_by_term(LogIndex(10), Term(8)), LogId::new(6, 10));
        // prev (index 8, term 5): largest index <= 8 with term <= 5 is 7.
        assert_eq!(log.find_conflict_by_term(LogIndex(8), Term(5)), LogId::new(5, 7));
        assert_eq!(log.find_conflict_by_term(LogIndex(8), Term(3)), LogId::new(1, 3));
        assert_eq!(log.find_conflict_by_term(LogIndex(8), Term(0)), LogId::ZERO);
        assert_eq!(log.find_conflict_by_term(LogIndex(50), Term(4)), LogId::new(4, 5));
    }

    #[test]
    fn eviction_keeps_unstable_entries() {
        let mut log = RaftLog::restore(LogId::ZERO, vec![], LogId::ZERO, 0).unwrap();
        log.append(&[Entry::blank(LogId::new(1, 1)), Entry::blank(LogId::new(1, 2))]);
        log.evict();
        assert_eq!(log.cache_first(), LogIndex(1));
        log.mark_stable(LogIndex(1));
        assert_eq!(log.cache_first(), LogIndex(2));
        assert!(log.cached(LogIndex(1), 10, 10).is_none());
        assert_eq!(log.cached(LogIndex(2), 10, 10).unwrap().0.len(), 1);
    }

    #[test]
    fn take_front_hands_over_what_release_would_drop() {
        let mut log = log_with(&[1, 1, 1, 2]);
        log.mark_stable(LogIndex(4));
        let taken = log.take_front(LogIndex(2));
        assert_eq!(taken.iter().map(|e| e.index().0).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(log.cache_first(), LogIndex(3));
        assert_eq!(log.cached_len(), 2);
        // The byte count follows, so eviction and the average size stay right.
        let rest: usize = log.cache.iter().map(Entry::size_hint).sum();
        assert_eq!(log.cache_bytes, rest);
        assert!(log.take_front(LogIndex(2)).is_empty());
        // Everything left.
        let rest = log.take_front(LogIndex(4));
        assert_eq!(rest.iter().map(|e| e.index().0).collect::<Vec<_>>(), [3, 4]);
        assert_eq!((log.cached_len(), log.cache_bytes), (0, 0));
        assert_eq!(log.cache_first(), LogIndex(5));
        log.append(&[Entry::blank(LogId::new(2, 5))]);
        assert_eq!(log.cache_first(), LogIndex(5));
    }

    #[test]
    fn restore_validates_runs() {
        let ok = RaftLog::restore(LogId::new(1, 4), vec![LogId::new(2, 5)], LogId::new(2, 9), 0);
        assert!(ok.is_ok());
        for runs in [vec![], vec![LogId::new(2, 6)], vec![LogId::new(2, 5), LogId::new(2, 7)]] {
            assert!(RaftLog::restore(LogId::new(1, 4), runs, LogId::new(2, 9), 0).is_err());
        }
        assert!(RaftLog::restore(LogId::new(1, 4), vec![], LogId::new(1, 3), 0).is_err());
    }
}
