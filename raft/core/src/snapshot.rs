//! Snapshots: when to take one, purging the log after it, streaming it to followers in chunks
//! (resuming an interrupted transfer from the receiver's offset), and installing one.

use crate::action::{Action, ReceiveSnapshot, SendSnapshot};
use crate::message::{InstallSnapshot, Message, MessageBody, SnapshotResponse};
use crate::progress::ProgressState;
use crate::raft::RaftCore;
use crate::time::Instant;
use crate::types::{LogId, LogIndex, NodeId, Role, SnapshotMeta};

impl RaftCore {
    /// The latest snapshot this node has (built or installed).
    pub fn snapshot(&self) -> Option<&SnapshotMeta> {
        self.snapshot.as_ref()
    }

    pub(crate) fn snapshot_index(&self) -> LogIndex {
        self.snapshot.as_ref().map_or(LogIndex(0), |s| s.last_log_id.index)
    }

    /// Asks for a snapshot now (if one is not already being built and something was applied
    /// since the last one). Returns whether a snapshot was requested.
    pub fn trigger_snapshot(&mut self) -> bool {
        if self.building_snapshot || self.applied <= self.snapshot_index() {
            return false;
        }
        self.building_snapshot = true;
        self.actions.push_back(Action::BuildSnapshot);
        true
    }

    /// Requests a snapshot when the policy says so.
    pub(crate) fn maybe_build_snapshot(&mut self) {
        if self.installing.is_none() {
            self.maybe_purge();
        }
        if self.building_snapshot || self.installing.is_some() || self.build_would_cut_a_transfer()
        {
            return;
        }
        let since = self.applied.0.saturating_sub(self.snapshot_index().0);
        let by_count = self.cfg.snapshot_every > 0 && since >= self.cfg.snapshot_every;
        let by_bytes = self.cfg.snapshot_log_bytes > 0
            && self.bytes_since_snapshot >= self.cfg.snapshot_log_bytes;
        if since > 0 && (by_count || by_bytes) {
            self.trigger_snapshot();
        }
    }

    /// The snapshots of transfers that are moving: the follower confirmed more bytes within
    /// the last election timeout. A transfer that stalls (a dead follower, chunks that never
    /// arrive) stops counting, and restarting it does not count, so it can never hold up log
    /// compaction for long.
    fn live_transfers(&self) -> impl Iterator<Item = LogId> + '_ {
        let window = self.cfg.election_timeout_min;
        let now = self.clock;
        let leading = self.role == Role::Leader;
        self.progress.values().filter(move |_| leading).filter_map(move |pr| match &pr.snapshot {
            Some((m, _))
                if pr.state == ProgressState::Snapshot
                    && pr.snapshot_advanced.is_some_and(|t| now < t + window) =>
            {
                Some(m.last_log_id)
            }
            _ => None,
        })
    }

    /// Whether a new snapshot now would remove the one a follower is still receiving. The
    /// snapshot store keeps the latest snapshot and the one before it; a transfer that started
    /// before the latest build sends the one before, and the next build would delete it,
    /// restarting the transfer from zero (under steady writes a large transfer would never
    /// finish). So the policy waits while such a transfer is moving.
    fn build_would_cut_a_transfer(&self) -> bool {
        let Some(latest) = self.snapshot.as_ref().map(|s| s.last_log_id) else { return false };
        self.live_transfers().any(|s| s < latest)
    }

    /// The driver stored a snapshot of the state machine. The log is purged up to
    /// [`Config::snapshot_keep`](crate::Config::snapshot_keep) entries before its end.
    pub fn handle_snapshot_built(&mut self, _now: Instant, meta: SnapshotMeta) {
        self.building_snapshot = false;
        self.dirty = true;
        if meta.last_log_id.index <= self.snapshot_index() {
            return;
        }
        if meta.last_log_id.index > self.applied
            || !self.log.has(meta.last_log_id) && meta.last_log_id.index > self.log.purged().index
        {
            tracing::error!(node = %self.id, snapshot = %meta.last_log_id, "snapshot does not match the log; ignoring");
            return;
        }
        tracing::debug!(node = %self.id, snapshot = %meta.last_log_id, size = meta.size, "snapshot built");
        self.snapshot = Some(meta);
        self.bytes_since_snapshot = 0;
        self.maybe_purge();
    }

    /// Purges the log up to [`Config::snapshot_keep`](crate::Config::snapshot_keep) entries
    /// before the latest snapshot's end — but not below the snapshot a moving transfer is
    /// sending: that follower continues from the log after it, and would otherwise need the
    /// next snapshot as soon as it installed this one. Runs after every snapshot and on every
    /// flush, so a purge held back by a transfer happens once the transfer ends or stalls.
    pub(crate) fn maybe_purge(&mut self) {
        let Some(snap) = self.snapshot.as_ref().map(|s| s.last_log_id.index) else { return };
        let mut purge_to = LogIndex(snap.0.saturating_sub(self.cfg.snapshot_keep));
        if let Some(floor) = self.live_transfers().map(|s| s.index).min() {
            purge_to = purge_to.min(floor);
        }
        if purge_to > self.log.purged().index {
            if let Some(id) = self.log.id_at(purge_to) {
                self.log.purge(id);
                self.actions.push_back(Action::PurgeLog(id));
            }
        }
    }

    /// Building the snapshot failed; the next policy check may try again.
    pub fn handle_snapshot_failed(&mut self) {
        self.building_snapshot = false;
        self.dirty = true;
    }

    // ----- leader -----------------------------------------------------------------------------

    /// Sends the next chunk of the current snapshot to `peer`, which needs purged entries.
    pub(crate) fn send_snapshot_chunk(&mut self, peer: NodeId) -> bool {
        let Some(meta) = self.snapshot.clone() else {
            tracing::error!(node = %self.id, %peer, "a follower needs purged entries but there is no snapshot");
            return false;
        };
        let chunk = self.cfg.snapshot_chunk_bytes as u64;
        let term = self.term;
        let Some(pr) = self.progress.get_mut(&peer) else { return false };
        // A transfer under way keeps its snapshot even after a newer one is built: restarting
        // from offset 0 on every new snapshot would never finish a large transfer under steady
        // writes. The store keeps the previous snapshot for this; if it is gone all the same,
        // the read fails and `handle_snapshot_send_failed` starts over with the current one.
        let resume = pr.state == ProgressState::Snapshot
            && pr
                .snapshot
                .as_ref()
                .is_some_and(|(m, offset)| m.last_log_id == meta.last_log_id || *offset > 0);
        if !resume {
            tracing::debug!(node = %self.id, %peer, snapshot = %meta.last_log_id, "sending a snapshot");
            pr.state = ProgressState::Snapshot;
            pr.snapshot = Some((meta.clone(), 0));
            pr.snapshot_advanced = None;
            pr.chunk_in_flight = false;
            pr.inflights.clear();
        }
        if pr.chunk_in_flight {
            return false;
        }
        let Some((meta, offset)) = pr.snapshot.clone() else { return false };
        let offset = offset.min(meta.size);
        let len = chunk.min(meta.size - offset);
        pr.chunk_in_flight = true;
        self.actions.push_back(Action::SendSnapshot(SendSnapshot {
            to: peer,
            term,
            meta,
            offset,
            len,
        }));
        false
    }

    pub(crate) fn handle_snapshot_response(
        &mut self,
        now: Instant,
        from: NodeId,
        resp: SnapshotResponse,
    ) {
        let Some(pr) = self.progress.get_mut(&from) else { return };
        pr.last_heard = now;
        pr.last_answer = now;
        let current = pr.snapshot.as_ref().filter(|(m, _)| m.last_log_id == resp.snapshot).cloned();
        let Some((meta, _)) = current else {
            // An answer about another snapshot (or after we moved on): only its news of an
            // install is still useful.
            if resp.installed
                && resp.snapshot.index > pr.match_index
                && resp.snapshot.index <= self.log.last().index
            {
                pr.update_match(resp.snapshot.index);
                self.maybe_commit();
            }
            return;
        };
        pr.chunk_in_flight = false;
        if resp.installed {
            tracing::debug!(node = %self.id, peer = %from, snapshot = %meta.last_log_id, "snapshot installed");
            pr.update_match(meta.last_log_id.index);
            pr.become_probe();
            self.maybe_commit();
            self.dirty = true;
        } else {
            let offset = resp.next_offset.min(meta.size);
            if pr.snapshot.as_ref().is_some_and(|(_, sent)| offset > *sent) {
                pr.snapshot_advanced = Some(now);
            }
            pr.snapshot = Some((meta.clone(), offset));
            self.send_snapshot_chunk(from);
        }
    }

    /// The driver could not read the snapshot being sent to `peer` (a newer one replaced it):
    /// start over with the current snapshot.
    pub fn handle_snapshot_send_failed(&mut self, peer: NodeId) {
        if let Some(pr) = self.progress.get_mut(&peer) {
            if pr.state == ProgressState::Snapshot {
                pr.become_probe();
                self.dirty = true;
            }
        }
    }

    // ----- follower ---------------------------------------------------------------------------

    pub(crate) fn handle_install_snapshot(&mut self, from: NodeId, chunk: InstallSnapshot) {
        let s = chunk.meta.last_log_id;
        if self.installing.is_some() {
            // An install is completing; the leader will ask again.
            return;
        }
        let have = self.commit.max(self.snapshot_index());
        if s.index <= have && !mutant!(self, InstallStaleSnapshot) {
            // Everything the snapshot covers is already committed here: nothing to install.
            self.reply_snapshot(
                from,
                SnapshotResponse { snapshot: s, next_offset: chunk.meta.size, installed: true },
            );
            return;
        }
        if chunk.done {
            self.installing = Some(s);
        }
        self.chunks_pending += 1;
        self.actions.push_back(Action::ReceiveSnapshot(ReceiveSnapshot { from, chunk }));
    }

    /// The driver handled a snapshot chunk from `from`: `next_offset` is where the received
    /// part of snapshot `meta` now ends; `installed` means the snapshot is complete, verified,
    /// durable, restored into the state machine, and the log's prefix replaced by it.
    pub fn handle_snapshot_received(
        &mut self,
        _now: Instant,
        from: NodeId,
        meta: SnapshotMeta,
        next_offset: u64,
        installed: bool,
    ) {
        self.dirty = true;
        let s = meta.last_log_id;
        self.chunks_pending = self.chunks_pending.saturating_sub(1);
        if self.chunks_pending == 0 {
            // Every chunk handed out, the final one included, has been dealt with.
            self.installing = None;
        }
        if installed {
            // The driver has replaced the state machine and the log's prefix: mirror that, even
            // if the commit index passed the snapshot meanwhile (a heartbeat may raise it while
            // the install runs; nothing was applied past the snapshot, as applying waits).
            tracing::info!(node = %self.id, snapshot = %s, "installed a snapshot");
            let mut kept = true;
            if s.index > self.log.purged().index && !self.log.install(s) {
                // The store replaced the whole log: writes still in flight wrote entries after
                // the snapshot that are gone, whatever is appended there next.
                self.cap_inflight(s.index);
                kept = false;
            }
            self.commit = self.commit.max(s.index);
            self.applied = s.index;
            self.apply_next = s.index.next();
            self.conf_installed(s, meta.membership.clone(), kept);
            if s.index > self.snapshot_index() {
                self.snapshot = Some(meta.clone());
            }
            self.bytes_since_snapshot = 0;
        }
        let resp = SnapshotResponse { snapshot: s, next_offset, installed };
        self.reply_snapshot(from, resp);
    }

    fn reply_snapshot(&mut self, to: NodeId, resp: SnapshotResponse) {
        let msg = Message { term: self.term, body: MessageBody::SnapshotResponse(resp) };
        self.send_after_persist(to, msg);
    }
}
