//! The protocol core alone: three [`RaftCore`]s wired together with no IO at all.
//!
//! Messages are delivered at once, in order; every write is acknowledged as soon as the core
//! asks for it; committed entries are "applied" by acknowledging them. What remains is the
//! core's own work (log bookkeeping, the entry cache, progress tracking, quorum counting) plus
//! moving values between the cores, so the figure is an upper bound on what any driver can get
//! out of the core. Snapshots are off (there is no state to snapshot).

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{Result, bail};
use bytes::Bytes;
use raftkit_core::{Action, Config, InitialState, Instant, Message, NodeId, RaftCore, Role};

/// Three cores and the messages in flight between them.
pub struct CoreCluster {
    cores: Vec<RaftCore>,
    queue: VecDeque<(NodeId, NodeId, Message)>,
    clock: std::time::Instant,
    leader: usize,
    payload: Bytes,
    /// `SendFromLog` requests dropped because this driver keeps no log store (entries are
    /// always in the core's cache while followers keep up, so this stays zero).
    pub dropped_from_log: u64,
}

fn idx(id: NodeId) -> usize {
    (id.0 - 1) as usize
}

impl CoreCluster {
    /// Three nodes (ids 1–3) with entries of `payload` bytes; node 1 is elected leader.
    pub fn new(payload: usize) -> Result<CoreCluster> {
        let members = [NodeId(1), NodeId(2), NodeId(3)];
        let mut cores = Vec::new();
        for id in members {
            let mut cfg = Config::new(id, members);
            cfg.snapshot_every = 0;
            cfg.snapshot_log_bytes = 0;
            cores.push(RaftCore::new(cfg, InitialState::default(), Instant::ZERO)?);
        }
        let mut c = CoreCluster {
            cores,
            queue: VecDeque::new(),
            clock: std::time::Instant::now(),
            leader: 0,
            payload: Bytes::from(vec![0x5a; payload]),
            dropped_from_log: 0,
        };
        let now = c.now();
        c.cores[0].campaign(now);
        c.run_until_quiet();
        if c.cores[0].role() != Role::Leader {
            bail!("node 1 did not become leader (role {})", c.cores[0].role());
        }
        // Commit the leader's no-op so measurements start from a settled cluster.
        c.run_until_quiet();
        Ok(c)
    }

    /// The core's clock: real time since the cluster was made, so heartbeats and timeouts
    /// behave as in a real deployment.
    fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.clock.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    /// The leader's commit index.
    pub fn commit_index(&self) -> u64 {
        self.cores[self.leader].commit_index().0
    }

    /// Proposes `n` entries on the leader and runs the cluster until nothing is left to do.
    /// Returns how many entries were committed meanwhile.
    pub fn propose_and_commit(&mut self, n: usize) -> Result<u64> {
        let before = self.commit_index();
        let now = self.now();
        let leader = &mut self.cores[self.leader];
        for _ in 0..n {
            if let Err(e) = leader.propose(now, self.payload.clone()) {
                bail!("proposal refused: {e}");
            }
        }
        self.run_until_quiet();
        Ok(self.commit_index() - before)
    }

    /// Carries out every action and delivers every message until all three cores are idle.
    /// Timers that are due fire too.
    pub fn run_until_quiet(&mut self) {
        loop {
            let now = self.now();
            let mut busy = false;
            for i in 0..self.cores.len() {
                if self.cores[i].poll_timeout().is_some_and(|t| t <= now) {
                    self.cores[i].handle_timeout(now);
                }
                while let Some(action) = self.cores[i].poll_action() {
                    busy = true;
                    self.carry_out(i, now, action);
                }
            }
            while let Some((from, to, msg)) = self.queue.pop_front() {
                busy = true;
                self.cores[idx(to)].handle_message(now, from, msg);
            }
            if !busy {
                break;
            }
        }
        if let Some(l) = self.cores.iter().position(|c| c.role() == Role::Leader) {
            self.leader = l;
        }
    }

    fn carry_out(&mut self, i: usize, now: Instant, action: Action) {
        let core = &mut self.cores[i];
        match action {
            Action::Persist(req) => core.handle_persisted(now, req.id),
            Action::Send(out) => self.queue.push_back((core.id(), out.to, out.message)),
            Action::Apply(req) => core.handle_applied(req.last.index),
            Action::SendFromLog(_) => self.dropped_from_log += 1,
            Action::BuildSnapshot => core.handle_snapshot_failed(),
            Action::SendSnapshot(req) => core.handle_snapshot_send_failed(req.to),
            _ => {}
        }
    }

    /// Proposes batches of `batch` entries for about `duration`; returns (commits, elapsed).
    pub fn run_for(&mut self, batch: usize, duration: Duration) -> Result<(u64, Duration)> {
        let start = std::time::Instant::now();
        let mut commits = 0;
        while start.elapsed() < duration {
            // Several batches per clock read keep the clock out of the measurement.
            for _ in 0..8 {
                commits += self.propose_and_commit(batch)?;
            }
        }
        Ok((commits, start.elapsed()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_every_proposal() {
        let mut c = CoreCluster::new(256).unwrap();
        for batch in [1, 7, 256] {
            assert_eq!(c.propose_and_commit(batch).unwrap(), batch as u64);
        }
        assert_eq!(c.dropped_from_log, 0);
    }
}
