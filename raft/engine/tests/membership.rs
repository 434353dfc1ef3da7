//! Membership changes through the engine on in-memory adapters (tokio's paused clock): a fresh
//! node joins as a learner, catches up, is promoted and replaces a dead voter while clients
//! keep writing; the leader removes itself; every refusal names its reason; a restarted node
//! takes its configuration from its log, not its command line.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::Cluster;
use raftkit::{ChangeMembers, ChangeMembershipError, ChangeOptions, NodeId, Role};
use raftkit_mem::KvCommand;

fn ids(v: &[u64]) -> std::collections::BTreeSet<NodeId> {
    v.iter().map(|n| NodeId(*n)).collect()
}

/// Clients writing unique keys until `stop`, one write per millisecond each at most; returns the
/// acknowledged keys.
fn writers(
    c: &Arc<Cluster>,
    n: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    (0..n)
        .map(|w| {
            let (c, stop) = (c.clone(), stop.clone());
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let key = format!("w{w}-{i}");
                    c.write(KvCommand::put(key.clone(), "v")).await;
                    acked.push(key);
                    i += 1;
                    // Under the paused clock, time moves only while every task waits: closed-loop
                    // writers on a network without latency (and a state machine applied on the
                    // driver) would keep the runtime busy and the clock still for ever.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                acked
            })
        })
        .collect()
}

/// Asks the current leader for `change`, retrying while it is retryable.
async fn change_on_leader(c: &Cluster, change: ChangeMembers) -> raftkit::Membership {
    for _ in 0..100 {
        let l = c.leader().await;
        match c.node(l).unwrap().change_membership(change.clone(), ChangeOptions::default()).await {
            Ok(m) => return m,
            Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("{change:?} refused: {e}"),
        }
    }
    panic!("{change:?} never succeeded")
}

#[tokio::test(start_paused = true)]
async fn a_fresh_node_replaces_a_dead_voter_while_clients_write() {
    let c = Arc::new(Cluster::start(3, 11).await);
    let leader = c.leader().await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = writers(&c, 4, &stop);
    tokio::time::sleep(Duration::from_millis(500)).await;

    c.join(NodeId(4)).await;
    let m = c.node(leader).unwrap().add_learner(NodeId(4), "", true).await.expect("add learner");
    assert!(m.learners().contains(&NodeId(4)));
    let m4 = c.node(NodeId(4)).unwrap().metrics().borrow().clone();
    assert_eq!(m4.role, Role::Learner, "a learner does not vote or campaign");

    let dead = c.members.iter().copied().find(|n| *n != leader).unwrap();
    c.crash(dead).await;
    let m = change_on_leader(&c, ChangeMembers::PromoteLearners(ids(&[4]))).await;
    assert!(m.is_voter(NodeId(4)));
    let m = change_on_leader(&c, ChangeMembers::RemoveVoters([dead].into())).await;
    assert!(!m.contains(dead) && m.is_voter(NodeId(4)) && !m.is_joint());
    tokio::time::sleep(Duration::from_millis(500)).await;

    stop.store(true, Ordering::SeqCst);
    let mut keys = Vec::new();
    for t in tasks {
        keys.extend(t.await.unwrap());
    }
    assert!(!keys.is_empty());
    c.converge().await;
    c.assert_all_present(&keys);
    let l = c.leader().await;
    let metrics = c.node(l).unwrap().metrics().borrow().clone();
    assert_eq!(
        metrics.membership.configs()[0],
        ids(&[1, 2, 3, 4]).into_iter().filter(|n| *n != dead).collect()
    );
    assert!(metrics.membership_committed);
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_leader_that_removes_itself_steps_down_and_the_rest_go_on() {
    let c = Cluster::start(3, 12).await;
    let leader = c.leader().await;
    c.write(KvCommand::put("before", "1")).await;
    let m = c
        .node(leader)
        .unwrap()
        .change_membership(ChangeMembers::RemoveVoters([leader].into()), ChangeOptions::default())
        .await
        .expect("the leader removes itself");
    assert!(!m.contains(leader));
    let stepped =
        c.node(leader).unwrap().wait_for(Duration::from_secs(5), |m| m.role != Role::Leader).await;
    assert!(stepped.is_some(), "the removed leader steps down");
    // The two remaining voters elect a leader and take writes.
    let mut new = None;
    for _ in 0..100 {
        for id in c.live().into_iter().filter(|id| *id != leader) {
            if c.node(id).unwrap().metrics().borrow().role == Role::Leader {
                new = Some(id);
            }
        }
        if new.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let new = new.expect("a remaining voter leads");
    c.node(new).unwrap().client_write(KvCommand::put("after", "2")).await.expect("write");
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn refused_changes_say_why() {
    let c = Cluster::start(3, 13).await;
    let leader = c.leader().await;
    let node = c.node(leader).unwrap();
    let o = ChangeOptions::default();
    let follower = c.members.iter().copied().find(|n| *n != leader).unwrap();
    match c
        .node(follower)
        .unwrap()
        .change_membership(ChangeMembers::RemoveVoters([leader].into()), o)
        .await
    {
        Err(ChangeMembershipError::NotLeader { leader: Some(l) }) => assert_eq!(l, leader),
        other => panic!("a follower must refuse with the leader's id, got {other:?}"),
    }
    assert!(matches!(
        node.change_membership(ChangeMembers::PromoteLearners(ids(&[9])), o).await,
        Err(ChangeMembershipError::UnknownNode { node: NodeId(9), .. })
    ));
    assert!(matches!(
        node.change_membership(ChangeMembers::RemoveVoters(ids(&[1, 2, 3])), o).await,
        Err(ChangeMembershipError::WouldLeaveNoVoters)
    ));
    // Two changes at once: the second is refused, not queued.
    c.join(NodeId(4)).await;
    c.join(NodeId(5)).await;
    let (a, b) = tokio::join!(
        node.change_membership(ChangeMembers::AddLearners([(NodeId(4), String::new())].into()), o),
        node.change_membership(ChangeMembers::AddLearners([(NodeId(5), String::new())].into()), o),
    );
    assert!(a.is_ok(), "{a:?}");
    match b {
        Err(e @ ChangeMembershipError::InProgress { .. }) => assert!(e.is_retryable()),
        other => panic!("a second change in flight must be refused, got {other:?}"),
    }
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_restarted_node_takes_its_configuration_from_its_log() {
    let c = Cluster::start(3, 14).await;
    c.leader().await;
    c.join(NodeId(4)).await;
    let l = c.leader().await;
    c.node(l).unwrap().add_learner(NodeId(4), "", true).await.expect("add");
    change_on_leader(&c, ChangeMembers::PromoteLearners(ids(&[4]))).await;
    c.converge().await;
    // Node 1 restarts with its original command line (members 1, 2, 3).
    c.kill(NodeId(1)).await;
    c.restart_keeping_state(NodeId(1)).await;
    let m = c.node(NodeId(1)).unwrap().metrics().borrow().clone();
    assert!(m.membership.is_voter(NodeId(4)), "the log's configuration wins: {:?}", m.membership);
    // So does node 4, restarted with no members at all.
    c.kill(NodeId(4)).await;
    c.boot_with(NodeId(4), &[]).await;
    let m = c.node(NodeId(4)).unwrap().metrics().borrow().clone();
    assert!(m.membership.is_voter(NodeId(4)), "{:?}", m.membership);
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_blocking_add_learner_returns_when_the_leader_loses_its_leadership() {
    let c = Cluster::start(3, 15).await;
    let leader = c.leader().await;
    let node = c.node(leader).unwrap();
    // Node 4 is never started: it never catches up. The leader then stalls and loses its
    // leadership; the call must not wait forever.
    let add = tokio::spawn({
        let node = node.clone();
        async move { node.add_learner(NodeId(4), "", true).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.pause(Duration::from_secs(3)).await;
    let r = tokio::time::timeout(Duration::from_secs(30), add).await;
    match r {
        Ok(Ok(Err(ChangeMembershipError::NotLeader { .. }))) => {}
        other => panic!("expected NotLeader once the leader stepped down, got {other:?}"),
    }
    c.shutdown().await;
}
