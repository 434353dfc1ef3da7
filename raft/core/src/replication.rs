//! Log replication: the leader's sending, flow control and commit; the follower's consistency
//! check, conflict repair and acknowledgements.

use crate::action::{Action, SendFromLog};
use crate::message::{
    AppendEntries, AppendResponse, Heartbeat, HeartbeatAck, Message, MessageBody,
};
use crate::progress::ProgressState;
use crate::raft::{RaftCore, Ungated};
use crate::time::Instant;
use crate::types::{LogId, LogIndex, NodeId};

impl RaftCore {
    // ----- leader -----------------------------------------------------------------------------

    /// Sends whatever each follower's window allows.
    pub(crate) fn replicate_all(&mut self) {
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for peer in peers {
            self.replicate_to(peer);
        }
    }

    /// Sends to one follower until its window is full or it has everything.
    fn replicate_to(&mut self, peer: NodeId) {
        while self.send_append(peer, false) {}
    }

    /// Sends one AppendEntries to `peer` if its progress allows. With `allow_empty`, a message is
    /// sent even without new entries (a probe). Returns whether something was sent and more
    /// could follow.
    fn send_append(&mut self, peer: NodeId, allow_empty: bool) -> bool {
        let Some(pr) = self.progress.get(&peer) else { return false };
        if pr.is_paused() {
            return false;
        }
        let next = pr.next;
        let last = self.log.last().index;
        if next > last && !allow_empty {
            return false;
        }
        if pr.state == ProgressState::Snapshot {
            return self.send_snapshot_chunk(peer);
        }
        let Some(prev_log_id) = self.log.id_at(next.prev()) else {
            // The follower needs entries that were purged: it catches up from a snapshot.
            return self.send_snapshot_chunk(peer);
        };
        let leader_commit = self.commit;
        let (max_count, max_bytes) =
            (self.cfg.max_entries_per_message, self.cfg.max_bytes_per_message);
        let (sent_last, bytes, carried) = match self.log.cached(next, max_count, max_bytes) {
            Some((entries, bytes)) => {
                let sent_last = entries.last().map_or(prev_log_id.index, |e| e.index());
                let carried = !entries.is_empty();
                let ae = AppendEntries { prev_log_id, entries, leader_commit };
                self.send_now(peer, self.term, Ungated::Append(ae));
                (sent_last, bytes, carried)
            }
            None => {
                // Below the cache: these entries are durable, so the driver reads them from the
                // store. Stop at the cache so the read never needs a not-yet-durable entry. The
                // sizes are unknown here: ask for as many as fit `max_bytes` at the average
                // size, and let the driver cut the message at `max_bytes` if they are larger.
                let avg = self.log.average_entry_size();
                let fit = (max_bytes / avg.max(1)).clamp(1, max_count) as u64;
                let end = LogIndex((next.0 + fit - 1).min(self.log.cache_first().0 - 1));
                let last_id = self.log.id_at(end).expect("below the cache means in the log");
                let count = (end.0 - next.0 + 1) as usize;
                self.actions.push_back(Action::SendFromLog(SendFromLog {
                    to: peer,
                    term: self.term,
                    prev_log_id,
                    last: last_id,
                    leader_commit,
                    max_bytes,
                }));
                (end, count * avg, true)
            }
        };
        let pr = self.progress.get_mut(&peer).expect("checked above");
        pr.sent(sent_last, bytes, carried);
        carried && pr.state == ProgressState::Replicate
    }

    pub(crate) fn broadcast_heartbeat(&mut self, now: Instant) {
        let stall = self.cfg.election_timeout_min;
        for (peer, pr) in self.progress.iter_mut() {
            if pr.state == ProgressState::Replicate
                && !pr.inflights.is_empty()
                && now >= pr.last_answer + stall
            {
                // Entries in flight and no answer for an election timeout: they were lost (or
                // the follower restarted). Probe from the last known match.
                tracing::debug!(node = %self.id, %peer, "replication stalled; probing");
                pr.become_probe();
            }
            if pr.state == ProgressState::Snapshot
                && pr.chunk_in_flight
                && now >= pr.last_answer + stall
            {
                // A snapshot chunk (or its answer) was lost: send it again; the follower says
                // where to resume.
                tracing::debug!(node = %self.id, %peer, "snapshot transfer stalled; resending");
                pr.chunk_in_flight = false;
                pr.last_answer = now;
            }
        }
        self.send_heartbeat_round();
    }

    /// Sends a heartbeat of a new confirmation round to every peer; reads waiting for a round
    /// join it. A leader that is the only voter confirms it at once.
    pub(crate) fn send_heartbeat_round(&mut self) {
        let round = self.new_round();
        let peers: Vec<(NodeId, LogIndex)> =
            self.progress.iter().map(|(id, p)| (*id, p.match_index)).collect();
        for (peer, matched) in peers {
            // A follower may only commit what it is known to share with us.
            let commit = self.commit.min(matched);
            self.send_now(peer, self.term, Ungated::Heartbeat(Heartbeat { commit, round }));
        }
        self.confirm_rounds();
    }

    pub(crate) fn handle_append_response(
        &mut self,
        now: Instant,
        from: NodeId,
        resp: AppendResponse,
    ) {
        let Some(pr) = self.progress.get_mut(&from) else { return };
        pr.last_heard = now;
        pr.last_answer = now;
        match resp {
            AppendResponse::Success { match_index } => {
                if match_index > self.log.last().index {
                    tracing::warn!(node = %self.id, %from, %match_index, "ack beyond our log; ignoring");
                    return;
                }
                let advanced = pr.update_match(match_index);
                if pr.state == ProgressState::Probe {
                    pr.become_replicate();
                }
                if advanced {
                    self.maybe_commit();
                }
                self.replicate_to(from);
            }
            AppendResponse::Reject { rejected, hint } => {
                // Skip the follower's whole conflicting term: probe at the last index where our
                // log could agree with its hint.
                let probe_from = if hint.term.0 > 0 {
                    self.log.find_conflict_by_term(hint.index, hint.term).index.next()
                } else {
                    hint.index.next()
                };
                let pr = self.progress.get_mut(&from).expect("checked above");
                if pr.reject(rejected, probe_from) {
                    tracing::debug!(node = %self.id, %from, %rejected, %hint, next = %pr.next, "append rejected; probing");
                    self.send_append(from, true);
                }
            }
        }
    }

    pub(crate) fn handle_heartbeat_response(&mut self, now: Instant, from: NodeId) {
        let last = self.log.last().index;
        let Some(pr) = self.progress.get_mut(&from) else { return };
        pr.last_heard = now;
        pr.probe_sent = false;
        if pr.match_index < last {
            // The follower lags. If everything was already sent, an empty append at `next`
            // reveals a lost message: the follower rejects it and we probe back.
            self.send_append(from, true);
        }
    }

    /// Advances the commit index to the highest index a quorum has durably, if that entry is of
    /// the current term. Entries of earlier terms commit only indirectly (Raft §5.4.2).
    pub(crate) fn maybe_commit(&mut self) {
        let (id, stable, progress) = (self.id, self.log.stable(), &self.progress);
        let quorum_index = self.quorum_membership().committed_index(|n| {
            if n == id { stable } else { progress.get(&n).map_or(LogIndex(0), |p| p.match_index) }
        });
        let current_term = self.log.term_at(quorum_index) == Some(self.term);
        if quorum_index > self.commit
            && (current_term || mutant!(self, CommitPreviousTermByCounting))
        {
            tracing::trace!(node = %self.id, from = %self.commit, to = %quorum_index, "commit");
            self.commit = quorum_index;
            self.dirty = true;
        }
    }

    // ----- follower ---------------------------------------------------------------------------

    pub(crate) fn handle_append(&mut self, from: NodeId, mut ae: AppendEntries) {
        if self.installing.is_some() {
            // The log is being replaced by a snapshot; the leader resends after it.
            return;
        }
        // Entries up to our commit index are committed, hence identical to the leader's: skip
        // them (and never consider truncating them).
        if ae.prev_log_id.index < self.commit {
            let skip = (self.commit.0 - ae.prev_log_id.index.0) as usize;
            if skip >= ae.entries.len() {
                let match_index =
                    self.commit.max(ae.prev_log_id.index.plus(ae.entries.len() as u64));
                self.ack(from, match_index.min(self.log.last().index));
                return;
            }
            ae.prev_log_id = ae.entries[skip - 1].log_id;
            ae.entries.drain(..skip);
        }
        let skip_check =
            mutant!(self, SkipLogConsistencyCheck) && ae.prev_log_id.index <= self.log.last().index;
        if !self.log.has(ae.prev_log_id) && !skip_check {
            let hint = self.log.find_conflict_by_term(ae.prev_log_id.index, ae.prev_log_id.term);
            tracing::debug!(node = %self.id, %from, prev = %ae.prev_log_id, %hint, "rejecting append");
            let body = MessageBody::AppendResponse(AppendResponse::Reject {
                rejected: ae.prev_log_id.index,
                hint,
            });
            self.send_after_persist(from, Message { term: self.term, body });
            return;
        }
        let last_new = ae.prev_log_id.index.plus(ae.entries.len() as u64);
        #[cfg(feature = "mutants")]
        if mutant!(self, TruncateMatchingSuffix) && ae.prev_log_id.index < self.log.last().index {
            self.truncate_local(ae.prev_log_id.index.next());
        }
        // The first entry our log does not already have decides where ours ends and theirs
        // begins; everything after a conflict is removed (Raft §5.3).
        // Entries are contiguous from `prev_log_id` (`Message::validate`), which the log has:
        // when it is our last entry, every entry lies past our log (the common case) and no
        // entry needs looking up.
        let first_new = if ae.prev_log_id.index >= self.log.last().index {
            (!ae.entries.is_empty()).then_some(0)
        } else {
            ae.entries.iter().position(|e| !self.log.has(e.log_id))
        };
        if let Some(pos) = first_new {
            let first_new = ae.entries[pos].index();
            if first_new <= self.log.last().index {
                if first_new <= self.commit {
                    tracing::error!(node = %self.id, %from, %first_new, commit = %self.commit, "append conflicts with committed entries; ignoring");
                    return;
                }
                self.truncate_local(first_new);
            }
            // All of them, usually: the message's own vector then goes on to the log.
            let new =
                if pos == 0 { std::mem::take(&mut ae.entries) } else { ae.entries.split_off(pos) };
            self.append_local(new);
        }
        let commit = ae.leader_commit.min(last_new);
        if commit > self.commit {
            self.commit = commit;
        }
        self.ack(from, last_new);
    }

    /// Acknowledges that our log matches the leader's up to `match_index`, once durable.
    fn ack(&mut self, to: NodeId, match_index: LogIndex) {
        let body = MessageBody::AppendResponse(AppendResponse::Success { match_index });
        let msg = Message { term: self.term, body };
        #[cfg(feature = "mutants")]
        if mutant!(self, AckAppendBeforePersist) {
            self.send_unsafe_mutant(to, msg);
            return;
        }
        self.send_after_persist(to, msg);
    }

    pub(crate) fn handle_heartbeat(&mut self, from: NodeId, hb: Heartbeat) {
        let commit = hb.commit.min(self.log.last().index);
        if commit > self.commit {
            self.commit = commit;
        }
        let body = MessageBody::HeartbeatResponse(HeartbeatAck { round: hb.round });
        self.send_after_term_durable(from, Message { term: self.term, body });
    }

    /// The id of the entry at `index` in our log (for tests and the engine).
    pub fn log_id_at(&self, index: LogIndex) -> Option<LogId> {
        self.log.id_at(index)
    }
}
