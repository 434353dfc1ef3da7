//! The engine with snapshots on in-memory adapters, on tokio's paused clock: what a client of
//! a deposed leader is told when its command reaches that node only inside a snapshot; manual
//! and size-based snapshots; and a long transfer that neither stalls the other followers nor
//! restarts while the leader keeps taking new snapshots.

mod common;

use std::time::Duration;

use common::Cluster;
use raftkit::{LogIndex, NodeId, WriteError};
use raftkit_mem::{Faults, KvCommand};

/// Regression (found by the cluster suite, seed 528 on 3 nodes): a leader appends a command and
/// replicates it, but never hears back; a new leader commits it, snapshots and purges its log;
/// the old leader then catches up from a snapshot. The command was applied (inside the
/// snapshot), so the old leader must not tell its client it was overwritten: the outcome is
/// unknown to it.
#[tokio::test(start_paused = true)]
async fn a_command_that_reaches_its_node_inside_a_snapshot_has_an_unknown_outcome() {
    let c = Cluster::start_with(3, 5, |cfg| {
        cfg.snapshot_every = 10;
        cfg.snapshot_keep = 0;
    })
    .await;
    let old = c.leader().await;
    let others: Vec<NodeId> = c.members.iter().copied().filter(|id| *id != old).collect();
    // The leader can still send, but hears nothing back.
    for o in &others {
        c.router.block(*o, old);
    }
    let node = c.node(old).unwrap();
    let pending =
        tokio::spawn(async move { node.client_write(KvCommand::put("lost-ack", "v")).await });
    // The others elect a new leader, which commits the command and moves well past it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for i in 0..40 {
        c.write(KvCommand::put(format!("k{i}"), "x")).await;
    }
    let new = c.leader().await;
    assert_ne!(new, old);
    assert!(c.kv(new).data.contains_key("lost-ack"), "the new leader did not commit the command");
    let purged = c.node(new).unwrap().metrics().borrow().purged;
    assert!(purged.index.0 > 10, "the new leader did not purge its log ({purged})");
    // Heal: the old leader catches up from a snapshot that contains the command.
    for o in &others {
        c.router.unblock(*o, old);
    }
    let answer = tokio::time::timeout(Duration::from_secs(30), pending)
        .await
        .expect("the client got no answer")
        .unwrap();
    match answer {
        Err(WriteError::OutcomeUnknown { .. }) => {}
        other => panic!("the client was told {other:?}, but the command was applied"),
    }
    let restored = c.node(old).unwrap().metrics().borrow().snapshot;
    assert!(restored.is_some(), "the old leader did not install a snapshot");
    c.converge().await;
    assert!(c.kv(old).data.contains_key("lost-ack"));
    c.shutdown().await;
}

/// `trigger_snapshot` builds a snapshot regardless of the policy and the log is purged up to it
/// (minus the kept tail); with nothing applied since, a second request does nothing.
#[tokio::test(start_paused = true)]
async fn a_snapshot_can_be_requested_by_hand() {
    let c = Cluster::start_with(3, 9, |cfg| {
        cfg.snapshot_every = 0;
        cfg.snapshot_log_bytes = 0;
        cfg.snapshot_keep = 10;
    })
    .await;
    for i in 0..50 {
        c.write(KvCommand::put(format!("k{i}"), "x")).await;
    }
    let leader = c.leader().await;
    let node = c.node(leader).unwrap();
    assert!(
        node.metrics().borrow().snapshot.is_none(),
        "the policy is off, yet a snapshot was built"
    );
    assert!(node.trigger_snapshot().await.unwrap());
    let m = node
        .wait_for(Duration::from_secs(10), |m| m.snapshot.is_some())
        .await
        .expect("the snapshot was not built");
    let snap = m.snapshot.unwrap();
    assert_eq!(snap.index, m.applied, "the snapshot is not at the applied index");
    let purged =
        node.wait_for(Duration::from_secs(10), |m| m.purged.index.0 > 0).await.unwrap().purged;
    assert_eq!(purged.index.0, snap.index.0 - 10, "the log was not purged up to the kept tail");
    assert!(!node.trigger_snapshot().await.unwrap(), "a second snapshot with nothing new applied");
    c.shutdown().await;
    assert!(matches!(node.trigger_snapshot().await, Err(raftkit::Fatal::DriverStopped)));
}

/// The size policy: with the count policy off, a snapshot is taken once the entries appended
/// since the last one pass `snapshot_log_bytes`, and the log is purged after it.
#[tokio::test(start_paused = true)]
async fn a_snapshot_is_taken_when_the_log_outgrows_its_byte_budget() {
    let c = Cluster::start_with(3, 21, |cfg| {
        cfg.snapshot_every = 0;
        cfg.snapshot_log_bytes = 16 << 10;
        cfg.snapshot_keep = 0;
    })
    .await;
    let value = "v".repeat(200);
    for i in 0..20 {
        c.write(KvCommand::put(format!("k{i}"), value.clone())).await;
    }
    let leader = c.leader().await;
    let node = c.node(leader).unwrap();
    assert!(node.metrics().borrow().snapshot.is_none(), "a snapshot before 16 KiB were logged");
    for i in 20..200 {
        c.write(KvCommand::put(format!("k{i}"), value.clone())).await;
    }
    let m = node
        .wait_for(Duration::from_secs(10), |m| m.snapshot.is_some() && m.purged.index.0 > 0)
        .await
        .expect("no snapshot after 40 KiB of entries");
    // 200 entries of ~230 bytes: two or three budgets' worth, so two or three snapshots, the
    // latest well past the first budget.
    let snap = m.snapshot.unwrap();
    assert!(snap.index.0 > 60, "the latest snapshot is at {snap}");
    c.converge().await;
    c.shutdown().await;
}

/// A follower that was away while the leader compacted its log catches up by a snapshot sent
/// in many small chunks over a link with latency. Meanwhile the leader keeps committing with
/// the other follower (the transfer stalls nothing) and keeps taking snapshots under its
/// count policy — which must not restart the transfer from zero each time, or it would never
/// finish.
#[tokio::test(start_paused = true)]
async fn a_long_snapshot_transfer_finishes_while_the_leader_keeps_committing() {
    let c = Cluster::start_with(3, 23, |cfg| {
        cfg.snapshot_every = 40;
        cfg.snapshot_keep = 0;
        cfg.snapshot_chunk_bytes = 512;
    })
    .await;
    let leader = c.leader().await;
    let away = c.members.iter().copied().find(|id| *id != leader).unwrap();
    c.router.isolate(away);
    let value = "x".repeat(1000);
    for i in 0..150 {
        c.write(KvCommand::put(format!("k{i}"), value.clone())).await;
    }
    let purged = c.node(leader).unwrap().metrics().borrow().purged.index;
    let behind = c.node(away).unwrap().metrics().borrow().last_log.index;
    assert!(purged > behind, "the leader did not purge past the follower ({purged} vs {behind})");
    // About 150 KB of state in 512-byte chunks, one round trip (2-4 ms) each: ~300 round trips.
    c.router.heal();
    c.router.set_faults(Faults {
        delay: Some((Duration::from_millis(1), Duration::from_millis(2))),
        ..Faults::default()
    });
    let follower = c.node(away).unwrap();
    let installed = |m: &raftkit::RaftMetrics| m.snapshot.is_some_and(|s| s.index >= purged);
    let mut during = 0u64;
    for i in 150..20_000 {
        if installed(&follower.metrics().borrow()) {
            break;
        }
        c.write(KvCommand::put(format!("w{i}"), "y")).await;
        during += 1;
    }
    assert!(installed(&follower.metrics().borrow()), "the transfer never finished");
    assert!(
        during >= 40,
        "only {during} writes committed during the transfer: the leader stalled on it"
    );
    let leader_snap = c.node(leader).unwrap().metrics().borrow().snapshot.unwrap();
    assert!(leader_snap.index > purged, "no newer snapshot was built during the transfer");
    c.router.heal();
    c.converge().await;
    let caught_up = follower.metrics().borrow().applied;
    assert!(caught_up > LogIndex(150), "the follower applied only up to {caught_up}");
    c.shutdown().await;
}
