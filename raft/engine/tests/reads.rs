//! Reads that do not write the log (every policy), leadership transfer (also on shutdown) and
//! proposal forwarding, through the engine's API on an in-memory cluster.

mod common;

use std::time::Duration;

use common::Cluster;
use raftkit::{NodeId, ReadError, ReadPolicy, Role, TransferError, WriteError};
use raftkit_mem::{KvCommand, KvOutput, KvQuery};

fn value(v: &str) -> KvOutput {
    KvOutput::Value(Some(v.to_string()))
}

async fn leader_and_followers(c: &Cluster) -> (NodeId, Vec<NodeId>) {
    let leader = c.leader().await;
    (leader, c.live().into_iter().filter(|n| *n != leader).collect())
}

/// Every linearizable policy sees a write acknowledged before the read started, and none of
/// them appends to the log.
#[tokio::test(start_paused = true)]
async fn reads_see_every_acknowledged_write_and_write_nothing() {
    let c = Cluster::start(3, 11).await;
    let (leader, followers) = leader_and_followers(&c).await;
    c.write(KvCommand::put("k", "v1")).await;
    let node = c.node(leader).unwrap();
    let last = node.metrics().borrow().last_log.index;
    for policy in [ReadPolicy::Linearizable, ReadPolicy::Lease, ReadPolicy::Follower] {
        let out = node.client_read(KvQuery::get("k"), policy).await.unwrap();
        assert_eq!(out, value("v1"), "{policy:?} on the leader");
    }
    for f in &followers {
        let out = c.node(*f).unwrap().client_read(KvQuery::get("k"), ReadPolicy::Follower).await;
        assert_eq!(out.unwrap(), value("v1"), "follower read on {f}");
    }
    // A second write, then reads again: each must see it at once.
    c.write(KvCommand::put("k", "v2")).await;
    for f in &followers {
        let out = c.node(*f).unwrap().client_read(KvQuery::get("k"), ReadPolicy::Follower).await;
        assert_eq!(out.unwrap(), value("v2"), "follower read on {f} after the second write");
    }
    let index = node.read_barrier(ReadPolicy::Linearizable).await.unwrap();
    assert!(index.0 >= 3, "the barrier's index {index} is below the acknowledged writes");
    assert_eq!(
        node.metrics().borrow().last_log.index.0,
        last.0 + 1,
        "reads appended to the log (only the second write may have)"
    );
}

/// Leader-only policies on a follower say who leads; a stale read answers locally.
#[tokio::test(start_paused = true)]
async fn leader_policies_on_a_follower_name_the_leader() {
    let c = Cluster::start(3, 12).await;
    let (leader, followers) = leader_and_followers(&c).await;
    c.write(KvCommand::put("a", "1")).await;
    let f = c.node(followers[0]).unwrap();
    for policy in [ReadPolicy::Linearizable, ReadPolicy::Lease] {
        let e = f.client_read(KvQuery::get("a"), policy).await.unwrap_err();
        assert!(matches!(e, ReadError::NotLeader { leader: Some(l) } if l == leader), "{e}");
        assert!(e.is_retryable());
    }
    // Stale: whatever this follower has applied (possibly nothing yet, never something else).
    let out = f.client_read(KvQuery::get("a"), ReadPolicy::Stale).await.unwrap();
    assert!(out == value("1") || out == KvOutput::Value(None), "{out:?}");
}

/// Lease reads are refused without CheckQuorum (no lease exists then).
#[tokio::test(start_paused = true)]
async fn lease_reads_need_check_quorum() {
    let c = Cluster::start_with(3, 13, |cfg| cfg.check_quorum = false).await;
    let leader = c.leader().await;
    let e = c.node(leader).unwrap().client_read(KvQuery::get("a"), ReadPolicy::Lease).await;
    assert!(matches!(e, Err(ReadError::LeaseNeedsCheckQuorum)), "{e:?}");
    // ReadIndex works without it.
    let node = c.node(leader).unwrap();
    let ok = node.client_read(KvQuery::get("a"), ReadPolicy::Linearizable).await;
    assert_eq!(ok.unwrap(), KvOutput::Value(None));
}

/// A leader cut off from the others never answers a linearizable read with old data: the
/// read fails (leadership lost, or timed out), while the majority moves on.
#[tokio::test(start_paused = true)]
async fn an_isolated_leader_serves_no_read() {
    let c = Cluster::start(3, 14).await;
    let old = c.leader().await;
    c.write(KvCommand::put("k", "old")).await;
    c.router.isolate(old);
    let node = c.node(old).unwrap();
    let read = tokio::spawn({
        let node = node.clone();
        async move { node.client_read(KvQuery::get("k"), ReadPolicy::Linearizable).await }
    });
    // The majority elects a new leader and writes.
    let others: Vec<NodeId> = c.live().into_iter().filter(|n| *n != old).collect();
    let mut new = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        new = others
            .iter()
            .copied()
            .find(|n| c.node(*n).is_some_and(|r| r.metrics().borrow().role == Role::Leader));
        if new.is_some() {
            break;
        }
    }
    let new = new.expect("the majority elected a leader");
    c.node(new).unwrap().client_write(KvCommand::put("k", "new")).await.unwrap();
    let r = read.await.unwrap();
    assert!(
        matches!(r, Err(ReadError::LeadershipLost) | Err(ReadError::Timeout(_))),
        "an isolated leader answered a read: {r:?}"
    );
    c.router.heal();
}

/// `transfer_leadership` hands over within a few heartbeats (no election timeout), writes on
/// the old leader are refused meanwhile or after, and nothing acknowledged is lost.
#[tokio::test(start_paused = true)]
async fn transfer_moves_leadership_quickly_and_keeps_every_write() {
    let c = Cluster::start(3, 15).await;
    let (leader, followers) = leader_and_followers(&c).await;
    for i in 0..20 {
        c.write(KvCommand::put(format!("k{i}"), "v")).await;
    }
    let target = followers[1];
    let node = c.node(leader).unwrap();
    let started = tokio::time::Instant::now();
    let to = node.transfer_leadership(Some(target)).await.unwrap();
    let took = started.elapsed();
    assert_eq!(to, target);
    assert!(took < Duration::from_millis(300), "the transfer took {took:?}");
    assert_eq!(c.node(target).unwrap().metrics().borrow().role, Role::Leader);
    // The old leader now forwards writes to the new one; every earlier write is there.
    let out = node.client_write(KvCommand::put("after", "x")).await.unwrap();
    assert_eq!(out, KvOutput::Prev(None));
    let all = c.node(target).unwrap();
    for i in 0..20 {
        let v = all.client_read(KvQuery::get(format!("k{i}")), ReadPolicy::Linearizable).await;
        assert_eq!(v.unwrap(), value("v"), "k{i} lost in the transfer");
    }
    // Refusals: to itself, to a stranger, from a follower.
    let e = all.transfer_leadership(Some(target)).await.unwrap_err();
    assert!(matches!(e, TransferError::Refused(_)), "{e}");
    let e = all.transfer_leadership(Some(NodeId(9))).await.unwrap_err();
    assert!(matches!(e, TransferError::Refused(_)), "{e}");
    let e = node.transfer_leadership(None).await.unwrap_err();
    assert!(matches!(e, TransferError::Refused(_)), "{e}");
}

/// A transfer to an unreachable target is given up after an election timeout; the leader
/// leads on and takes writes again.
#[tokio::test(start_paused = true)]
async fn a_transfer_to_an_unreachable_node_is_given_up() {
    let c = Cluster::start(3, 16).await;
    let (leader, followers) = leader_and_followers(&c).await;
    c.router.block(leader, followers[0]);
    c.write(KvCommand::put("x", "1")).await;
    let node = c.node(leader).unwrap();
    let e = node.transfer_leadership(Some(followers[0])).await.unwrap_err();
    assert!(matches!(e, TransferError::TimedOut(t) if t == followers[0]), "{e}");
    assert_eq!(node.metrics().borrow().role, Role::Leader);
    node.client_write(KvCommand::put("x", "2")).await.unwrap();
    c.router.heal();
}

/// Shutting a leader down hands leadership over first: the others have a leader at once,
/// without waiting for an election timeout.
#[tokio::test(start_paused = true)]
async fn shutting_down_a_leader_hands_leadership_over() {
    let c = Cluster::start(3, 17).await;
    let (leader, followers) = leader_and_followers(&c).await;
    c.write(KvCommand::put("x", "1")).await;
    c.node(leader).unwrap().shutdown().await.unwrap();
    let f = c.node(followers[0]).unwrap();
    let m = f.metrics().borrow().clone();
    assert!(
        m.leader.is_some_and(|l| l != leader),
        "no new leader right after the old one shut down: {m:?}"
    );
}

/// A write on a follower is forwarded to the leader and answered with the output computed
/// when the follower applied it; with forwarding off, it is refused with the leader's id.
#[tokio::test(start_paused = true)]
async fn writes_on_a_follower_are_forwarded() {
    let c = Cluster::start(3, 18).await;
    let (leader, followers) = leader_and_followers(&c).await;
    let f = c.node(followers[0]).unwrap();
    assert_eq!(f.client_write(KvCommand::put("f", "1")).await.unwrap(), KvOutput::Prev(None));
    assert_eq!(
        f.client_write(KvCommand::put("f", "2")).await.unwrap(),
        KvOutput::Prev(Some("1".into()))
    );
    let l = c.node(leader).unwrap();
    let read = l.client_read(KvQuery::get("f"), ReadPolicy::Linearizable).await;
    assert_eq!(read.unwrap(), value("2"));

    let c = Cluster::start_with(3, 19, |cfg| cfg.forward_proposals = false).await;
    let (leader, followers) = leader_and_followers(&c).await;
    let e = c.node(followers[0]).unwrap().client_write(KvCommand::put("f", "1")).await;
    assert!(matches!(e, Err(WriteError::NotLeader { leader: Some(l) }) if l == leader), "{e:?}");
}

/// A follower cut off from its leader answers a follower read with a clear, retryable error
/// (within twice `election_timeout_max` of virtual time), never with its possibly old data.
#[tokio::test(start_paused = true)]
async fn a_follower_cut_off_from_the_leader_fails_its_reads() {
    let c = Cluster::start(3, 20).await;
    let (_, followers) = leader_and_followers(&c).await;
    c.write(KvCommand::put("k", "v1")).await;
    let f = followers[0];
    c.router.isolate(f);
    let node = c.node(f).unwrap();
    let started = tokio::time::Instant::now();
    let e = node.client_read(KvQuery::get("k"), ReadPolicy::Follower).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(
        matches!(
            e,
            ReadError::Timeout(_) | ReadError::LeadershipLost | ReadError::NotLeader { .. }
        ),
        "{e}"
    );
    // The bound is the engine's read timeout (virtual time: the clock is paused).
    assert!(started.elapsed() <= Duration::from_millis(1200) + Duration::from_millis(50));
    c.router.heal();
}
