//! Directed scenarios for snapshots, each a fixed script on a real cluster (the same harnesses
//! as the randomized suite, the same invariant checks throughout): a node that fell far behind
//! catches up from a snapshot; an interrupted snapshot transfer resumes where it stopped
//! instead of starting over; a node that crashes while installing a snapshot comes back
//! consistent.

use std::collections::BTreeMap;
use std::time::Duration;

use raftkit::{Config, NodeId};

use super::checker::ChunkSent;
use super::nemesis::cut_between;
use super::run::Run;
use super::{ClusterSuite, RunReport};
use crate::harness::{LogStoreHarness, NetworkHarness};
use crate::kv::{KvCommand, KvOp};

/// A directed snapshot scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// A follower is down while 10,500 entries are committed with `snapshot_every = 500` and
    /// `snapshot_keep = 20`; when it comes back it must catch up by installing a snapshot and
    /// converge.
    SnapshotCatchUp,
    /// A snapshot of several hundred 1 KiB chunks is streamed over a slow link; the receiver is
    /// cut off mid-transfer and reconnected: the transfer must resume from where it stopped
    /// (its first chunk after the cut does not start at offset 0) and complete.
    InterruptedTransfer,
    /// A follower is crashed (losing what was not durable) right after the last chunk of a
    /// snapshot was sent to it — somewhere in verifying, restoring and installing it — and
    /// restarted: it must start from its store and converge. The crash delay varies with the
    /// seed.
    CrashDuringInstall,
}

impl Scenario {
    /// Every scenario.
    pub const ALL: [Scenario; 3] =
        [Scenario::SnapshotCatchUp, Scenario::InterruptedTransfer, Scenario::CrashDuringInstall];

    fn name(self) -> &'static str {
        match self {
            Scenario::SnapshotCatchUp => "snapshot catch-up",
            Scenario::InterruptedTransfer => "interrupted snapshot transfer",
            Scenario::CrashDuringInstall => "crash during snapshot install",
        }
    }
}

impl<NH: NetworkHarness, LH: LogStoreHarness> ClusterSuite<NH, LH> {
    /// Runs `scenario` over the seed budget (`RAFTKIT_SEED` / `RAFTKIT_SEEDS` override it) and
    /// panics with a full report at the first failure.
    pub fn check_scenario(&self, scenario: Scenario) {
        let default = match (self.deterministic(), scenario) {
            (true, Scenario::CrashDuringInstall) => 12,
            (true, _) => 2,
            (false, _) => 1,
        };
        let seeds = super::seeds_from_env(default);
        let mut view = String::new();
        for &seed in &seeds {
            let report = self.run_scenario(scenario, seed);
            // A failure panics below with the seed and the report; passing runs are logged.
            tracing::info!(seed, "{}: {}", scenario.name(), report.summary());
            if tracing::enabled!(tracing::Level::DEBUG) {
                tracing::debug!(seed, "event trace:\n{}", report.trace.join("\n"));
            }
            if !report.passed() {
                panic!("{} ({}): {}", self.name, scenario.name(), report.failure_report());
            }
            view = report.durable_view;
        }
        crate::report_line(&self.passed_line(&super::describe_seeds(&seeds), &view));
    }

    /// Runs `scenario` once with `seed`.
    pub fn run_scenario(&self, scenario: Scenario, seed: u64) -> RunReport {
        let rt = self.runtime();
        rt.block_on(async {
            let nodes = self.opts.nodes.max(3);
            let ids: Vec<NodeId> = (1..=nodes as u64).map(NodeId).collect();
            let configs = ids
                .iter()
                .map(|id| (*id, self.scenario_config(*id, &ids, scenario, seed)))
                .collect::<BTreeMap<_, _>>();
            let mut run = Run::start(
                self.net.clone(),
                self.logs.clone(),
                configs,
                seed,
                seed,
                self.opts.liveness_bound,
            )
            .await;
            run.checker.note(format!("{} (seed {seed}, {nodes} nodes)", scenario.name()));
            let deadline = tokio::time::Instant::now() + self.opts.liveness_bound * 4;
            match scenario {
                Scenario::SnapshotCatchUp => catch_up(&mut run, deadline).await,
                Scenario::InterruptedTransfer => interrupted_transfer(&mut run, deadline).await,
                Scenario::CrashDuringInstall => {
                    crash_during_install(&mut run, seed, deadline).await;
                }
            }
            run.finish_directed(seed, nodes, self.logs.crash_model()).await
        })
    }

    fn scenario_config(&self, id: NodeId, ids: &[NodeId], s: Scenario, seed: u64) -> Config {
        let mut c = Config::new(id, ids.iter().copied());
        c.seed = seed;
        c.heartbeat_interval = Duration::from_millis(50);
        c.election_timeout_min = Duration::from_millis(500);
        c.election_timeout_max = Duration::from_millis(1000);
        c.pre_vote = true;
        c.check_quorum = true;
        (c.snapshot_every, c.snapshot_keep, c.snapshot_chunk_bytes) = match s {
            Scenario::SnapshotCatchUp => (500, 20, 64 << 10),
            Scenario::InterruptedTransfer => (200, 0, 1024),
            Scenario::CrashDuringInstall => (100, 0, 4096),
        };
        if let Some(f) = &self.opts.configure {
            f(&mut c);
        }
        c
    }
}

/// Elects a leader (with a first write) and picks a follower. `None` (with a violation) if no
/// leader came up.
async fn leader_and_follower<NH: NetworkHarness, LH: LogStoreHarness>(
    run: &Run<NH, LH>,
    deadline: tokio::time::Instant,
) -> Option<(NodeId, NodeId)> {
    let first = KvCommand { key: "first".into(), op: KvOp::Put("x".into()) };
    if run.write(&first, deadline).await.is_none() {
        run.checker.violation("liveness: no leader accepted the first write");
        return None;
    }
    let (leader, _) = run.leader()?;
    let follower = *run.ids.iter().find(|id| **id != leader)?;
    run.checker.note(format!("leader {leader}, follower {follower}"));
    Some((leader, follower))
}

/// Writes `count` keys; records a violation unless all were acknowledged.
async fn write_all<NH: NetworkHarness, LH: LogStoreHarness>(
    run: &Run<NH, LH>,
    prefix: &str,
    count: usize,
    value_len: usize,
    deadline: tokio::time::Instant,
) -> bool {
    let acked = run.write_many(prefix, count, value_len, 64, deadline).await;
    run.checker.note(format!("{acked} of {count} writes acknowledged"));
    if acked < count {
        run.checker.violation(format!(
            "liveness: only {acked} of {count} writes were acknowledged in time"
        ));
        return false;
    }
    true
}

/// Waits until the leader's log no longer holds what `follower` needs next: it can only catch
/// up from a snapshot.
async fn wait_until_purged_past<NH: NetworkHarness, LH: LogStoreHarness>(
    run: &Run<NH, LH>,
    leader: NodeId,
    follower_last: u64,
    deadline: tokio::time::Instant,
) -> bool {
    while tokio::time::Instant::now() < deadline {
        if let Some(node) = run.node(leader) {
            let m = node.metrics().borrow().clone();
            if m.purged.index.0 > follower_last + 1 {
                run.checker.note(format!("{leader} purged its log up to {}", m.purged));
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    run.checker.violation(format!("snapshot policy: {leader} never purged past {follower_last}"));
    false
}

async fn catch_up<NH: NetworkHarness, LH: LogStoreHarness>(
    run: &mut Run<NH, LH>,
    deadline: tokio::time::Instant,
) {
    let Some((leader, follower)) = leader_and_follower(run, deadline).await else { return };
    let behind = run.node(follower).map_or(0, |n| n.metrics().borrow().last_log.index.0);
    run.crash_node(follower, None).await;
    if !write_all(run, "catch-up", 10_500, 16, deadline).await
        || !wait_until_purged_past(run, leader, behind, deadline).await
    {
        return;
    }
    run.restart_node(follower).await;
    if run.converge(deadline).await && run.checker.restores(follower).is_empty() {
        run.checker.violation(format!(
            "snapshot catch-up: {follower} caught up without installing a snapshot"
        ));
    }
}

async fn interrupted_transfer<NH: NetworkHarness, LH: LogStoreHarness>(
    run: &mut Run<NH, LH>,
    deadline: tokio::time::Instant,
) {
    let Some((leader, follower)) = leader_and_follower(run, deadline).await else { return };
    let behind = run.node(follower).map_or(0, |n| n.metrics().borrow().last_log.index.0);
    let others: Vec<NodeId> = run.ids.iter().copied().filter(|id| *id != follower).collect();
    run.faults.set_blocked(cut_between(&[follower], &others));
    run.checker.note(format!("isolate {follower}"));
    // About 400 KiB of state: some 400 chunks of 1 KiB.
    if !write_all(run, "big", 400, 1000, deadline).await
        || !wait_until_purged_past(run, leader, behind, deadline).await
    {
        return;
    }
    // Reconnect over a slow link, so the transfer takes a while; cut it off part-way.
    run.faults.heal();
    run.faults.slow_link(leader, follower, Duration::from_millis(5));
    run.checker.note(format!("reconnect {follower} over a slow link"));
    let started = loop {
        let sent = run.checker.chunks_sent_to(follower);
        if sent.iter().filter(|c| c.offset > 0).count() >= 10 {
            break true;
        }
        if tokio::time::Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    if !started {
        run.checker
            .violation(format!("snapshot transfer: the transfer to {follower} never got going"));
        return;
    }
    run.faults.set_blocked(cut_between(&[follower], &others));
    let cut_at = run.checker.chunks_sent_to(follower).len();
    run.checker.note(format!("cut {follower} off mid-transfer"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    run.faults.heal();
    run.checker.note(format!("reconnect {follower}"));
    if !run.converge(deadline).await {
        return;
    }
    let sent = run.checker.chunks_sent_to(follower);
    check_resumed(run, follower, &sent[..cut_at], &sent[cut_at..]);
}

/// The chunks sent after the cut (those sent during it were lost) must continue the transfer:
/// the first one that reached the follower after the reconnect does not start over, and the
/// snapshot was installed.
fn check_resumed<NH: NetworkHarness, LH: LogStoreHarness>(
    run: &Run<NH, LH>,
    follower: NodeId,
    before: &[ChunkSent],
    after: &[ChunkSent],
) {
    let Some(last_before) = before.last() else { return };
    let reconnect_ms = last_before.at_ms + 2000;
    let resumed =
        after.iter().find(|c| c.at_ms >= reconnect_ms && c.snapshot == last_before.snapshot);
    match resumed {
        Some(c) if c.offset == 0 => run.checker.violation(format!(
            "snapshot transfer: the transfer to {follower} started over after the reconnect \
             (first chunk: {c:?})"
        )),
        Some(c) => run.checker.note(format!("the transfer resumed at offset {}", c.offset)),
        None => {
            // A newer snapshot replaced the interrupted one; nothing to compare.
            run.checker.note("the transfer continued with another snapshot");
        }
    }
    if !run.checker.restores(follower).contains(&last_before.snapshot)
        && after.iter().all(|c| c.snapshot == last_before.snapshot)
    {
        run.checker.violation(format!(
            "snapshot transfer: {follower} never installed {}",
            last_before.snapshot
        ));
    }
}

async fn crash_during_install<NH: NetworkHarness, LH: LogStoreHarness>(
    run: &mut Run<NH, LH>,
    seed: u64,
    deadline: tokio::time::Instant,
) {
    let Some((leader, follower)) = leader_and_follower(run, deadline).await else { return };
    let behind = run.node(follower).map_or(0, |n| n.metrics().borrow().last_log.index.0);
    run.crash_node(follower, None).await;
    if !write_all(run, "install", 300, 200, deadline).await
        || !wait_until_purged_past(run, leader, behind, deadline).await
    {
        return;
    }
    run.faults.hold_final_chunk_to(follower);
    run.restart_node(follower).await;
    let checker = run.checker.clone();
    let done = tokio::time::timeout_at(deadline, async {
        loop {
            let sent = checker.chunk_sent().notified();
            tokio::pin!(sent);
            sent.as_mut().enable();
            if checker.chunks_sent_to(follower).iter().any(|c| c.done) {
                return;
            }
            sent.await;
        }
    })
    .await;
    if done.is_err() {
        run.checker.violation(format!("snapshot transfer: no snapshot was sent to {follower}"));
        return;
    }
    // The final chunk was held back: deliver it now and crash the follower 0 to 3.5 ms later
    // (by the seed) — on the in-memory store, whose writes take 2 ms to become durable, that
    // is before the snapshot is stored, after it is stored and restored but while the log's
    // install is not yet durable, or after the install.
    run.faults.deliver_held().await;
    let delay = Duration::from_micros(seed % 8 * 500);
    tokio::time::sleep(delay).await;
    let restored = !run.checker.restores(follower).is_empty();
    run.checker.note(format!(
        "crash {follower} {}µs after the last chunk arrived ({})",
        delay.as_micros(),
        if restored { "its state machine was restored" } else { "nothing restored yet" },
    ));
    run.crash_node(follower, None).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    run.restart_node(follower).await;
    run.converge(deadline).await;
}
