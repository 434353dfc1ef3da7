//! What a leader knows about each follower's log, and the flow control of replication.

use std::collections::VecDeque;

use crate::time::Instant;
use crate::types::LogIndex;

/// How the leader replicates to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// The leader does not know where the follower's log matches; it sends one message at a
    /// time and waits for the answer (fast backtracking moves `next` a whole term per reply).
    Probe,
    /// The follower's log matches; the leader streams entries optimistically, bounded by the
    /// in-flight window.
    Replicate,
    /// The follower needs entries the leader has purged: the leader streams a snapshot to it,
    /// one chunk at a time.
    Snapshot,
}

/// The in-flight window: AppendEntries messages sent but not yet acknowledged, bounded by count
/// and bytes.
#[derive(Clone, Debug)]
pub(crate) struct Inflights {
    /// (last index carried, bytes carried) of each message, oldest first.
    queue: VecDeque<(LogIndex, usize)>,
    bytes: usize,
    max_count: usize,
    max_bytes: usize,
}

impl Inflights {
    pub(crate) fn new(max_count: usize, max_bytes: usize) -> Inflights {
        Inflights { queue: VecDeque::new(), bytes: 0, max_count, max_bytes }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.queue.len() >= self.max_count || self.bytes >= self.max_bytes
    }

    pub(crate) fn add(&mut self, last: LogIndex, bytes: usize) {
        self.queue.push_back((last, bytes));
        self.bytes += bytes;
    }

    /// Frees every message whose entries are all acknowledged.
    pub(crate) fn free_to(&mut self, acked: LogIndex) {
        while let Some(&(last, bytes)) = self.queue.front() {
            if last > acked {
                break;
            }
            self.bytes -= bytes;
            self.queue.pop_front();
        }
    }

    pub(crate) fn clear(&mut self) {
        self.queue.clear();
        self.bytes = 0;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// The leader's view of one follower.
#[derive(Clone, Debug)]
pub(crate) struct Progress {
    /// The highest index known to be durably replicated on the follower.
    pub(crate) match_index: LogIndex,
    /// The next index to send.
    pub(crate) next: LogIndex,
    pub(crate) state: ProgressState,
    /// In `Probe`, a message is outstanding: wait for its answer (or a heartbeat answer).
    pub(crate) probe_sent: bool,
    pub(crate) inflights: Inflights,
    /// When the follower was last heard from (any answer); CheckQuorum counts it as reachable
    /// for `election_timeout_min` after that.
    pub(crate) last_heard: Instant,
    /// When the follower last answered an AppendEntries; with messages in flight and no answer
    /// for an election timeout, the leader assumes they were lost and probes again.
    pub(crate) last_answer: Instant,
    /// In `Snapshot`: the snapshot being sent and the offset to send next.
    pub(crate) snapshot: Option<(crate::types::SnapshotMeta, u64)>,
    /// In `Snapshot`: a chunk is outstanding.
    pub(crate) chunk_in_flight: bool,
    /// In `Snapshot`: when the follower last confirmed receiving more of the snapshot (`None`
    /// until it first does).
    pub(crate) snapshot_advanced: Option<Instant>,
    /// The highest heartbeat round the follower has echoed (ReadIndex confirmation).
    pub(crate) read_acked: u64,
}

impl Progress {
    pub(crate) fn new(
        next: LogIndex,
        max_count: usize,
        max_bytes: usize,
        now: Instant,
    ) -> Progress {
        Progress {
            match_index: LogIndex(0),
            next,
            state: ProgressState::Probe,
            probe_sent: false,
            inflights: Inflights::new(max_count, max_bytes),
            // A new leader gives every follower one election timeout before CheckQuorum counts
            // it as silent.
            last_heard: now,
            last_answer: now,
            snapshot: None,
            chunk_in_flight: false,
            snapshot_advanced: None,
            read_acked: 0,
        }
    }

    /// Whether the leader must wait before sending more entries.
    pub(crate) fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.is_full(),
            ProgressState::Snapshot => self.chunk_in_flight,
        }
    }

    pub(crate) fn become_probe(&mut self) {
        self.snapshot = None;
        self.chunk_in_flight = false;
        if self.state != ProgressState::Probe {
            // Resume from the last known match; fast backtracking takes it further if needed.
            self.next = self.match_index.next();
        }
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflights.clear();
    }

    pub(crate) fn become_replicate(&mut self) {
        self.snapshot = None;
        self.chunk_in_flight = false;
        self.state = ProgressState::Replicate;
        self.next = self.match_index.next();
        self.probe_sent = false;
        self.inflights.clear();
    }

    /// Records a successful append up to `index`. Returns whether `match_index` advanced.
    pub(crate) fn update_match(&mut self, index: LogIndex) -> bool {
        let advanced = index > self.match_index;
        if advanced {
            self.match_index = index;
        }
        if self.next <= index {
            self.next = index.next();
        }
        self.probe_sent = false;
        self.inflights.free_to(index);
        advanced
    }

    /// Records that a message carrying entries up to `last` (and `bytes` bytes) was sent.
    pub(crate) fn sent(&mut self, last: LogIndex, bytes: usize, carried_entries: bool) {
        match self.state {
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot => self.chunk_in_flight = true,
            ProgressState::Replicate => {
                if carried_entries {
                    self.next = last.next();
                    self.inflights.add(last, bytes);
                }
            }
        }
    }

    /// Handles a rejection of the message whose `prev_log_id.index` was `rejected`, given the
    /// index the leader should probe next (from the follower's hint). Returns false if the
    /// rejection is stale (an answer to an older message) and was ignored.
    pub(crate) fn reject(&mut self, rejected: LogIndex, probe_from: LogIndex) -> bool {
        match self.state {
            ProgressState::Replicate => {
                if rejected <= self.match_index {
                    return false;
                }
                self.become_probe();
                // Entries up to `match_index` are known to match; never go below them.
                self.next = probe_from.max(self.match_index.next()).min(self.next);
                true
            }
            ProgressState::Snapshot => false,
            ProgressState::Probe => {
                if rejected.next() != self.next {
                    return false;
                }
                self.next = probe_from.max(self.match_index.next()).min(rejected).max(LogIndex(1));
                self.probe_sent = false;
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_bounds_count_and_bytes() {
        let mut f = Inflights::new(2, 100);
        f.add(LogIndex(5), 10);
        assert!(!f.is_full());
        f.add(LogIndex(9), 10);
        assert!(f.is_full());
        f.free_to(LogIndex(5));
        assert!(!f.is_full());
        f.add(LogIndex(12), 95);
        assert!(f.is_full(), "byte limit");
        f.free_to(LogIndex(12));
        assert!(f.is_empty());
        assert!(!f.is_full());
    }

    #[test]
    fn stale_rejections_are_ignored() {
        let mut p = Progress::new(LogIndex(11), 4, 1 << 20, Instant::ZERO);
        // Probe: only a rejection of the outstanding probe (prev = next - 1) counts.
        assert!(!p.reject(LogIndex(7), LogIndex(3)));
        assert!(p.reject(LogIndex(10), LogIndex(4)));
        assert_eq!(p.next, LogIndex(4));
        p.update_match(LogIndex(6));
        p.become_replicate();
        p.sent(LogIndex(20), 10, true);
        assert_eq!(p.next, LogIndex(21));
        // A late rejection of something below the match is stale.
        assert!(!p.reject(LogIndex(5), LogIndex(1)));
        assert!(p.reject(LogIndex(15), LogIndex(9)));
        assert_eq!(p.state, ProgressState::Probe);
        assert_eq!(p.next, LogIndex(7), "never below match + 1, and the hint said 9 > 7");
    }
}
