//! End-to-end tests of the engine on in-memory adapters, on tokio's paused clock: elections,
//! concurrent writes, leader failure, partitions, restarts. Each test checks that nothing
//! acknowledged is lost and that all nodes applied the same sequence of entries.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Cluster;
use raftkit::{NodeId, Role};
use raftkit_mem::{KvCommand, KvOutput};

/// Spawns `clients` tasks that together write `total` unique keys; returns every acknowledged
/// key.
async fn write_concurrently(
    c: &Arc<Cluster>,
    clients: usize,
    total: usize,
    prefix: &str,
) -> Vec<String> {
    let mut tasks = Vec::new();
    for client in 0..clients {
        let c = c.clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = client;
            while i < total {
                let key = format!("{prefix}-{i:06}");
                let out = c.write(KvCommand::put(key.clone(), format!("v{i}"))).await;
                // A retried write may have been applied by an attempt whose answer was lost;
                // then the retry sees its own value as the previous one.
                assert!(
                    out == KvOutput::Prev(None) || out == KvOutput::Prev(Some(format!("v{i}"))),
                    "{key}: unexpected previous value {out:?}"
                );
                acked.push(key);
                i += clients;
            }
            acked
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

async fn ten_thousand_writes(n: u64) {
    let c = Arc::new(Cluster::start(n, 42 + n).await);
    c.leader().await;
    let keys = write_concurrently(&c, 64, 10_000, "k").await;
    assert_eq!(keys.len(), 10_000);
    c.converge().await;
    c.assert_all_present(&keys);
    for id in c.live() {
        assert_eq!(c.kv(id).data.len(), 10_000);
        assert_eq!(c.kv(id).commands, 10_000, "{id} applied a command twice or skipped one");
    }
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn three_nodes_apply_10k_concurrent_writes_identically() {
    ten_thousand_writes(3).await;
}

#[tokio::test(start_paused = true)]
async fn five_nodes_apply_10k_concurrent_writes_identically() {
    ten_thousand_writes(5).await;
}

#[tokio::test(start_paused = true)]
async fn leader_crash_elects_a_new_leader_and_loses_nothing_acknowledged() {
    for n in [3, 5] {
        let c = Arc::new(Cluster::start(n, 7).await);
        let first = c.leader().await;
        let writers = {
            let c = c.clone();
            tokio::spawn(async move { write_concurrently(&c, 16, 2_000, "during").await })
        };
        // Crash the leader while writes are in flight (no draining, unsynced writes lost); the
        // writers retry on the new leader.
        tokio::time::sleep(Duration::from_millis(30)).await;
        c.crash(first).await;
        let second = c.leader().await;
        assert_ne!(second, first);
        let during = writers.await.unwrap();
        let after = write_concurrently(&c, 16, 500, "after").await;
        c.converge().await;
        c.assert_all_present(&during);
        c.assert_all_present(&after);
        // The old leader comes back on its store and catches up.
        c.restart(first).await;
        c.converge().await;
        c.assert_all_present(&during);
        c.assert_all_present(&after);
        c.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn minority_partition_heals_and_catches_up() {
    let c = Arc::new(Cluster::start(5, 11).await);
    let leader = c.leader().await;
    let minority: Vec<NodeId> =
        c.members.iter().copied().filter(|n| *n != leader).take(2).collect();
    let majority: Vec<NodeId> =
        c.members.iter().copied().filter(|n| !minority.contains(n)).collect();
    c.router.partition(&[&minority, &majority]);
    let keys = write_concurrently(&c, 8, 1_000, "p").await;
    for id in &minority {
        let m = c.node(*id).unwrap().metrics().borrow().clone();
        assert!(m.applied.0 < 1_000, "{id} applied writes while partitioned");
        assert_ne!(m.role, Role::Leader);
    }
    c.router.heal();
    c.converge().await;
    c.assert_all_present(&keys);
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn partitioned_leader_steps_down_and_the_majority_continues() {
    let c = Arc::new(Cluster::start(3, 13).await);
    let old = c.leader().await;
    c.router.isolate(old);
    let stepped_down =
        c.node(old).unwrap().wait_for(Duration::from_secs(5), |m| m.role != Role::Leader).await;
    assert!(stepped_down.is_some(), "an isolated leader kept its role (CheckQuorum)");
    let keys = write_concurrently(&c, 4, 200, "q").await;
    assert_ne!(c.leader().await, old);
    c.router.heal();
    c.converge().await;
    c.assert_all_present(&keys);
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn restarted_node_rejoins_from_its_log_store() {
    let c = Arc::new(Cluster::start(3, 17).await);
    let leader = c.leader().await;
    let follower = c.members.iter().copied().find(|n| *n != leader).unwrap();
    let before = write_concurrently(&c, 4, 300, "a").await;
    c.kill(follower).await;
    let during = write_concurrently(&c, 4, 300, "b").await;
    c.restart(follower).await;
    c.converge().await;
    c.assert_all_present(&before);
    c.assert_all_present(&during);
    // A fresh state machine was rebuilt from the log: every command once.
    assert_eq!(c.kv(follower).commands, 600);
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn restart_with_a_durable_state_machine_applies_only_what_is_missing() {
    let c = Arc::new(Cluster::start(3, 19).await);
    let leader = c.leader().await;
    let follower = c.members.iter().copied().find(|n| *n != leader).unwrap();
    write_concurrently(&c, 4, 200, "a").await;
    c.converge().await;
    let applied_before = c.kv(follower).applied.unwrap();
    c.kill(follower).await;
    write_concurrently(&c, 4, 100, "b").await;
    c.restart_keeping_state(follower).await;
    c.converge().await;
    // Re-applying the first 200 would make the count 500.
    assert_eq!(c.kv(follower).commands, 300);
    assert!(c.kv(follower).applied.unwrap() > applied_before);
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn cluster_works_through_the_wire_codec_with_loss_and_reordering() {
    let c = Arc::new(Cluster::start(3, 23).await);
    c.router.set_through_codec(true);
    c.leader().await;
    c.router.set_faults(raftkit_mem::Faults {
        drop_rate: 0.05,
        duplicate_rate: 0.05,
        delay: Some((Duration::from_millis(1), Duration::from_millis(15))),
    });
    let keys = write_concurrently(&c, 8, 500, "f").await;
    c.router.heal();
    c.converge().await;
    c.assert_all_present(&keys);
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn reads_and_compare_and_swap_go_through_the_log() {
    let c = Arc::new(Cluster::start(3, 29).await);
    c.leader().await;
    assert_eq!(c.write(KvCommand::put("x", "1")).await, KvOutput::Prev(None));
    assert_eq!(c.write(KvCommand::get("x")).await, KvOutput::Value(Some("1".into())));
    let cas = c.write(KvCommand::cas("x", Some("1".into()), Some("2".into()))).await;
    assert_eq!(cas, KvOutput::Cas { swapped: true, current: Some("2".into()) });
    let cas = c.write(KvCommand::cas("x", Some("1".into()), Some("3".into()))).await;
    assert_eq!(cas, KvOutput::Cas { swapped: false, current: Some("2".into()) });
    assert_eq!(c.write(KvCommand::delete("x")).await, KvOutput::Prev(Some("2".into())));
    assert_eq!(c.write(KvCommand::get("x")).await, KvOutput::Value(None));
    c.shutdown().await;
}

/// A follower that fell behind the entry cache is caught up from the log store, and the
/// catch-up messages respect `max_bytes_per_message` even when the old entries are much larger
/// than the recent ones the core estimates sizes from: otherwise the first catch-up message
/// would be ~60 MiB, over the transport's frame limit, and be refused again and again.
#[tokio::test(start_paused = true)]
async fn catch_up_from_the_log_store_keeps_messages_within_the_byte_limit() {
    let c = Arc::new(
        Cluster::start_with(3, 31, |cfg| {
            cfg.snapshot_every = 0;
            cfg.snapshot_log_bytes = 0;
            cfg.entry_cache_bytes = 64 << 10;
            cfg.max_bytes_per_message = 64 << 10;
        })
        .await,
    );
    c.router.set_through_codec(true);
    c.router.set_max_frame(1 << 20);
    let leader = c.leader().await;
    let behind = c.members.iter().copied().find(|n| *n != leader).unwrap();
    c.router.isolate(behind);
    let big = "B".repeat(32 << 10);
    for i in 0..200 {
        c.write(KvCommand::put(format!("big-{i}"), big.clone())).await;
    }
    // Recent small entries fill the cache, so the core's average entry size is small.
    let small = write_concurrently(&c, 8, 2000, "small").await;
    c.router.heal();
    c.converge().await;
    c.assert_all_present(&small);
    assert!(c.kv(behind).data.contains_key("big-199"));
    let (_, _, refused) = c.router.stats();
    assert_eq!(refused, 0, "{refused} messages were over the frame limit");
    c.shutdown().await;
}
