//! Reads that do not write the log (Raft thesis §6.4) on the simulated cluster: ReadIndex with
//! heartbeat rounds, leader leases, and follower reads. After every event the simulator checks
//! that no read is answered with an index below what any node had committed when the read was
//! asked for (a stale read), and that no leader of a later term exists while a leader's lease
//! holds. Each test builds the situation in which a broken rule shows, and asserts what the
//! simulator cannot see by itself: that a read is *not* answered yet, or answered without a
//! message, or fails.

#![allow(clippy::print_stderr)] // seeds are printed for replay

mod sim;

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::Duration;

use raftkit_core::{Config, LogIndex, Message, MessageBody, NodeId, ReadError, ReadMode, Role};
use sim::Sim;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn seeds(n: u64) -> impl Iterator<Item = u64> {
    let base = std::env::var("RAFTKIT_SEED").ok().and_then(|s| s.parse().ok());
    match base {
        Some(s) => s..s + 1,
        None => 1..n + 1,
    }
}

/// Every node but `not`, by id.
fn others(sim: &Sim, not: u64) -> Vec<u64> {
    sim.ids().into_iter().map(|n| n.0).filter(|n| *n != not).collect()
}

/// Proposes `count` commands on the leader and waits until every live node applied them;
/// returns the index of the last.
fn write_and_apply(sim: &mut Sim, count: usize) -> LogIndex {
    let mut last = LogIndex(0);
    for i in 0..count {
        last = sim.propose_on_leader(format!("w{i}").as_bytes()).index;
    }
    assert!(sim.wait_applied(last, Duration::from_secs(5)), "writes not applied everywhere");
    last
}

/// Caps the commit index a message from the leader announces (in appends and heartbeats) at
/// `cap`: its receiver gets the entries but does not learn that they are committed.
fn cap_commit(m: &mut Message, cap: LogIndex) {
    match &mut m.body {
        MessageBody::AppendEntries(a) => a.leader_commit = a.leader_commit.min(cap),
        MessageBody::Heartbeat(h) => h.commit = h.commit.min(cap),
        _ => {}
    }
}

// ----- ReadIndex ------------------------------------------------------------------------------

/// §6.4 ReadIndex: the leader answers a read only once a *quorum* acknowledged a heartbeat
/// round sent after the read arrived, with its commit index at that time; and the read writes
/// nothing to the log (that is the point of ReadIndex over a log read). Pitfall: one follower's
/// answer (or none) is no proof of leadership in a cluster of five.
#[test]
fn read_index_is_answered_only_after_a_quorum_round_and_appends_nothing() {
    let mut sim = Sim::new(5, 3);
    let l = sim.wait_leader().0;
    write_and_apply(&mut sim, 5);
    let committed = sim.core(l).commit_index();
    let logs: Vec<_> = sim.ids().iter().map(|n| sim.core(n.0).last_log_id()).collect();
    let fs = others(&sim, l);
    // Heartbeat answers reach the leader only from the followers in `answering`.
    let answering = Rc::new(RefCell::new(BTreeSet::from([NodeId(fs[0])])));
    let a = answering.clone();
    sim.set_filter(move |from, _, m| {
        !matches!(m.body, MessageBody::HeartbeatResponse(_)) || a.borrow().contains(&from)
    });
    let id = sim.read(l, ReadMode::ReadIndex).expect("the leader takes reads");
    assert_eq!(sim.read_result(l, id), None, "a ReadIndex read was answered without a round");
    sim.run_for(ms(60));
    assert_eq!(sim.core(l).role(), Role::Leader);
    assert_eq!(sim.read_result(l, id), None, "answered with two of five nodes confirming");
    answering.borrow_mut().insert(NodeId(fs[1]));
    assert!(sim.run_until(ms(30), |s| s.read_result(l, id).is_some()), "a quorum confirmed");
    assert_eq!(sim.read_result(l, id), Some(Ok(committed)));
    let after: Vec<_> = sim.ids().iter().map(|n| sim.core(n.0).last_log_id()).collect();
    assert_eq!(after, logs, "a read appended to the log");
}

/// The deposed leader of [`a_deposed_leader_never_answers_a_read_and_fails_it_when_it_steps_down`].
fn deposed_leader_scenario(tweak: impl Fn(&mut Config)) {
    // Without CheckQuorum the isolated leader does not step down by itself: it goes on
    // believing it leads while the others elect a new leader.
    let mut sim = Sim::with_config(5, 4, |c| {
        c.check_quorum = false;
        tweak(c);
    });
    let old = sim.wait_leader().0;
    write_and_apply(&mut sim, 3);
    sim.isolate(old);
    let early = sim.read(old, ReadMode::ReadIndex).expect("it still thinks it leads");
    let ok = sim.run_until(Duration::from_secs(5), |s| {
        s.stable_leader().is_some_and(|n| n.0 != old && s.core(n.0).term() > s.core(old).term())
    });
    assert!(ok, "the majority elected no leader");
    let new = sim.stable_leader().unwrap().0;
    let mut last = LogIndex(0);
    for i in 0..5 {
        last = sim.propose(new, format!("new-{i}").as_bytes()).unwrap().index;
    }
    assert!(sim.run_until(ms(500), |s| s.core(new).commit_index() >= last));
    assert_eq!(sim.core(old).role(), Role::Leader, "the old leader does not know it is deposed");
    // Asked after the new leader committed more: an answer now would be stale.
    let late = sim.read(old, ReadMode::ReadIndex).unwrap();
    let via_follower_mode = sim.read(old, ReadMode::Follower).unwrap();
    sim.run_for(ms(300));
    for id in [early, late, via_follower_mode] {
        assert_eq!(sim.read_result(old, id), None, "a deposed leader answered read {id:?}");
    }
    sim.heal();
    assert!(sim.run_until(ms(500), |s| s.core(old).role() != Role::Leader), "never stepped down");
    for id in [early, late, via_follower_mode] {
        assert_eq!(sim.read_result(old, id), Some(Err(ReadError::LeadershipLost)));
    }
}

/// §6.4 (pitfall P11): a leader cut off from the others, which a new leader has replaced and
/// overtaken, never answers a read: no quorum confirms its rounds. Its reads fail with
/// `LeadershipLost` once it learns of the new term. Pitfall: a leader serving reads from its
/// commit index without confirming its leadership serves stale data.
#[test]
fn a_deposed_leader_never_answers_a_read_and_fails_it_when_it_steps_down() {
    deposed_leader_scenario(|_| {});
}

/// With CheckQuorum an isolated leader steps down by itself (within `election_timeout_min`),
/// failing the reads it had waiting, before anyone else can be elected.
#[test]
fn an_isolated_leader_fails_its_waiting_reads_when_check_quorum_deposes_it() {
    let mut sim = Sim::new(3, 5);
    let l = sim.wait_leader().0;
    write_and_apply(&mut sim, 1);
    sim.isolate(l);
    let id = sim.read(l, ReadMode::ReadIndex).unwrap();
    assert!(sim.run_until(ms(150), |s| s.core(l).role() != Role::Leader), "still leading");
    assert_eq!(sim.read_result(l, id), Some(Err(ReadError::LeadershipLost)));
}

/// The new leader of [`a_new_leaders_reads_wait_for_its_noop_to_commit`]. `next` has every entry
/// of the old leader but learned of fewer commits; it wins, and its no-op cannot commit until
/// the filter lifts.
fn new_leader_scenario(tweak: impl Fn(&mut Config)) {
    let mut sim = Sim::with_config(3, 5, tweak);
    let old = sim.wait_leader().0;
    let fs = others(&sim, old);
    let (next, other) = (fs[0], fs[1]);
    let before = write_and_apply(&mut sim, 1);
    // 0: `next` learns no commit past `before`. 1: `other` cannot campaign, and `next`'s
    // appends (its no-op) reach nobody. 2: no filter.
    let phase = Rc::new(Cell::new(0u8));
    let p = phase.clone();
    sim.set_filter(move |from, to, m| match p.get() {
        0 => {
            if from == NodeId(old) && to == NodeId(next) {
                cap_commit(m, before);
            }
            true
        }
        1 => {
            let vote = matches!(m.body, MessageBody::RequestVote(_)) && from == NodeId(other);
            let append = matches!(m.body, MessageBody::AppendEntries(_)) && from == NodeId(next);
            !vote && !append
        }
        _ => true,
    });
    let mut last = LogIndex(0);
    for i in 0..5 {
        last = sim.propose(old, format!("old-{i}").as_bytes()).unwrap().index;
    }
    let ok = sim.run_until(ms(500), |s| {
        s.core(old).commit_index() >= last && s.core(next).last_log_id().index >= last
    });
    assert!(ok);
    let floor = sim.core(old).commit_index();
    assert!(sim.core(next).commit_index() < floor, "`next` must lag in what it knows committed");
    sim.crash(old);
    phase.set(1);
    assert!(sim.run_until(Duration::from_secs(5), |s| s.core(next).role() == Role::Leader));
    assert!(sim.run_until(ms(100), |s| s.core(other).leader() == Some(NodeId(next))));
    assert!(sim.core(next).commit_index() < floor, "the new leader's commit index lags");
    let local = sim.read(next, ReadMode::ReadIndex).unwrap();
    let lease = sim.read(next, ReadMode::Lease).unwrap();
    let remote = sim.read(other, ReadMode::Follower).unwrap();
    sim.run_for(ms(150));
    assert_eq!(sim.core(next).role(), Role::Leader);
    assert_eq!(sim.read_result(next, local), None, "a read answered before the no-op committed");
    assert_eq!(sim.read_result(next, lease), None, "a lease read before the no-op committed");
    assert_eq!(sim.read_result(other, remote), None, "a follower read before the no-op committed");
    phase.set(2);
    let ok = sim.run_until(ms(200), |s| {
        s.read_result(next, local).is_some()
            && s.read_result(next, lease).is_some()
            && s.read_result(other, remote).is_some()
    });
    assert!(ok, "reads not answered once the no-op could commit");
    let term = sim.core(next).term();
    for (node, id) in [(next, local), (next, lease), (other, remote)] {
        let index = sim.read_result(node, id).unwrap().expect("answered");
        assert!(index >= floor, "read index {index} below {floor}, committed before the read");
        assert_eq!(sim.core(next).term_at(index), Some(term), "read index below the no-op");
    }
}

/// §6.4 step 1 (pitfall P11): a new leader serves no read before an entry of its own term (its
/// no-op) commits: until then its commit index may lag what its predecessor committed. Here
/// the new leader has all the entries but knows fewer of them committed; its reads (local,
/// lease, and a follower's) wait, and are answered at or above the old commit index once the
/// no-op commits.
#[test]
fn a_new_leaders_reads_wait_for_its_noop_to_commit() {
    new_leader_scenario(|_| {});
}

/// The situation of [`an_answer_to_an_earlier_round_never_confirms_a_later_read`].
fn earlier_round_scenario(tweak: impl Fn(&mut Config)) {
    let mut sim = Sim::with_config(3, 6, tweak);
    let l = sim.wait_leader().0;
    write_and_apply(&mut sim, 1);
    // 0: heartbeat answers to the leader are held back. 1: the leader's heartbeats reach nobody
    // (everything else, including the answers replayed, goes through).
    let phase = Rc::new(Cell::new(0u8));
    let held: Rc<RefCell<Vec<(NodeId, NodeId, Message)>>> = Rc::default();
    let later_rounds: Rc<RefCell<Vec<u64>>> = Rc::default();
    let (p, h, r) = (phase.clone(), held.clone(), later_rounds.clone());
    sim.set_filter(move |from, to, m| match (p.get(), &m.body) {
        (0, MessageBody::HeartbeatResponse(_)) if to == NodeId(l) => {
            h.borrow_mut().push((from, to, m.clone()));
            false
        }
        (1, MessageBody::Heartbeat(hb)) if from == NodeId(l) => {
            r.borrow_mut().push(hb.round);
            false
        }
        _ => true,
    });
    let both = |_: &Sim| {
        let senders: BTreeSet<NodeId> = held.borrow().iter().map(|(f, _, _)| *f).collect();
        senders.len() == 2
    };
    assert!(sim.run_until(ms(50), both), "both followers answered a round");
    let id = sim.read(l, ReadMode::ReadIndex).unwrap();
    phase.set(1);
    let old_rounds: Vec<u64> = held
        .borrow()
        .iter()
        .map(|(_, _, m)| match &m.body {
            MessageBody::HeartbeatResponse(ack) => ack.round,
            _ => unreachable!(),
        })
        .collect();
    for (from, to, m) in held.borrow_mut().drain(..) {
        sim.inject(from.0, to.0, m);
    }
    sim.run_for(ms(15));
    let read_round = *later_rounds.borrow().iter().min().expect("the read's round was sent");
    assert!(old_rounds.iter().all(|r| *r < read_round), "the replayed answers are older");
    assert_eq!(sim.core(l).role(), Role::Leader);
    assert_eq!(
        sim.read_result(l, id),
        None,
        "a read was answered by answers to an earlier round (rounds {old_rounds:?}, read in \
         round {read_round})"
    );
    sim.clear_filter();
    assert!(sim.run_until(ms(50), |s| s.read_result(l, id).is_some()), "never answered");
    assert!(matches!(sim.read_result(l, id), Some(Ok(_))));
}

/// §6.4 step 3: a read is confirmed by a quorum of answers to *its* round (or a later one).
/// Answers to a round the leader sent before the read arrived prove nothing about leadership at
/// the time of the read: here they are held back, the read is asked, the leader's new
/// heartbeats are stopped, and the old answers replayed; the read stays unanswered until a
/// later round gets through. Pitfall: counting any heartbeat answer of the term (no round ids),
/// which lets a leader deposed in between confirm the read with answers from before.
#[test]
fn an_answer_to_an_earlier_round_never_confirms_a_later_read() {
    earlier_round_scenario(|_| {});
}

/// §6.4 batching: all the reads asked for before a flush share one heartbeat round — one
/// heartbeat per peer, not one per read.
#[test]
fn reads_asked_in_one_flush_share_one_heartbeat_round() {
    // A longer heartbeat interval keeps the periodic heartbeat out of the measurement.
    let mut sim = Sim::with_config(5, 7, |c| c.heartbeat_interval = ms(50));
    let l = sim.wait_leader().0;
    write_and_apply(&mut sim, 1);
    let seen: Rc<RefCell<Vec<(NodeId, u64)>>> = Rc::default();
    let s2 = seen.clone();
    sim.set_filter(move |from, to, m| {
        if let MessageBody::Heartbeat(hb) = &m.body {
            if from == NodeId(l) {
                s2.borrow_mut().push((to, hb.round));
            }
        }
        true
    });
    // Just after a periodic round, so that the next one is 50 ms away.
    assert!(sim.run_until(ms(60), |_| !seen.borrow().is_empty()));
    sim.run_for(ms(8));
    let before = seen.borrow().iter().map(|(_, r)| *r).max().unwrap();
    seen.borrow_mut().clear();
    let ids = sim.read_many(l, ReadMode::ReadIndex, 100);
    assert_eq!(ids.len(), 100);
    assert!(sim.run_until(ms(20), |s| ids.iter().all(|id| s.read_result(l, *id).is_some())));
    sim.run_for(ms(4));
    let commit = sim.core(l).commit_index();
    for id in &ids {
        assert_eq!(sim.read_result(l, *id), Some(Ok(commit)));
    }
    let seen = seen.borrow();
    let rounds: BTreeSet<u64> = seen.iter().map(|(_, r)| *r).collect();
    let peers: BTreeSet<NodeId> = seen.iter().map(|(p, _)| *p).collect();
    assert_eq!(rounds.len(), 1, "100 reads in one flush took rounds {rounds:?}");
    assert!(rounds.iter().all(|r| *r > before));
    assert_eq!(seen.len(), 4, "one heartbeat per peer, got {seen:?}");
    assert_eq!(peers.len(), 4);
}

// ----- Leases ---------------------------------------------------------------------------------

/// §6.4.1 leases: while the lease from a confirmed round holds, a lease read is answered at
/// once, inside the call, with no message at all; once the lease lapsed
/// (`election_timeout_min - clock_drift_bound` after the round was sent) the same leader,
/// cut off but still leading, no longer answers at once: the read waits for a round (and fails
/// when the leader steps down). The simulator checks meanwhile that no leader of a later term
/// exists while the lease holds.
#[test]
fn a_lease_read_needs_no_message_while_the_lease_holds_and_a_round_once_it_lapsed() {
    let mut sim = Sim::new(3, 8);
    let l = sim.wait_leader().0;
    write_and_apply(&mut sim, 2);
    sim.run_for(ms(30));
    let commit = sim.core(l).commit_index();
    assert!(sim.core(l).lease_valid(sim.now));
    let delivered = sim.messages_delivered;
    let id = sim.read(l, ReadMode::Lease).unwrap();
    assert_eq!(sim.read_result(l, id), Some(Ok(commit)), "a lease read waited");
    assert_eq!(sim.messages_delivered, delivered);
    // A round confirmed just before the leader is cut off: the lease runs from its sending.
    let r = sim.read(l, ReadMode::ReadIndex).unwrap();
    assert!(sim.run_until(ms(20), |s| s.read_result(l, r).is_some()));
    sim.isolate(l);
    let id = sim.read(l, ReadMode::Lease).unwrap();
    assert_eq!(sim.read_result(l, id), Some(Ok(commit)), "the lease still holds");
    // 100 ms - 30 ms of drift bound: the lease is over 70 ms after the round was sent, the
    // leader steps down (CheckQuorum) 100 ms after its last answer.
    sim.run_for(ms(75));
    assert_eq!(sim.core(l).role(), Role::Leader, "still leading, for CheckQuorum");
    assert!(!sim.core(l).lease_valid(sim.now), "the lease outlived election_timeout_min - drift");
    let id = sim.read(l, ReadMode::Lease).unwrap();
    assert_eq!(sim.read_result(l, id), None, "a lease read answered after the lease lapsed");
    assert!(sim.run_until(ms(100), |s| s.core(l).role() != Role::Leader));
    assert_eq!(sim.read_result(l, id), Some(Err(ReadError::LeadershipLost)));
    // The others elect a leader (the simulator checks it is not while the lease held).
    let ok = sim.run_until(Duration::from_secs(2), |s| s.leader().is_some_and(|n| n.0 != l));
    assert!(ok);
}

/// Leases rest on followers ignoring vote requests for `election_timeout_min` after hearing
/// from the leader, which only CheckQuorum makes them do: without it a lease read is refused
/// (for good: the error is not retryable), and no lease is ever valid.
#[test]
fn lease_reads_are_refused_without_check_quorum() {
    let mut sim = Sim::with_config(3, 9, |c| c.check_quorum = false);
    let l = sim.wait_leader().0;
    sim.run_for(ms(50));
    assert_eq!(sim.read(l, ReadMode::Lease), Err(ReadError::LeaseNeedsCheckQuorum));
    assert!(!ReadError::LeaseNeedsCheckQuorum.is_retryable());
    assert!(!sim.core(l).lease_valid(sim.now));
    let f = others(&sim, l)[0];
    assert_eq!(sim.read(f, ReadMode::Lease), Err(ReadError::LeaseNeedsCheckQuorum));
    // The other modes still work.
    let id = sim.read(l, ReadMode::ReadIndex).unwrap();
    assert!(sim.run_until(ms(50), |s| s.read_result(l, id).is_some()));
    assert!(matches!(sim.read_result(l, id), Some(Ok(_))));
}

/// The situation of [`a_lease_ends_before_a_follower_with_a_fast_clock_stops_being_loyal`]:
/// node 1 leads with `election_timeout_min` 100 ms and a 30 ms drift bound (a 70 ms lease).
/// Nodes 2 and 3 have clocks that run 1.4 times too fast: they measure their 100 ms in 71 real
/// ms, which the shared simulated clock models by giving them `election_timeout_min` = 71 ms —
/// 29 ms of drift, within the bound. The leader is cut off right after a round is confirmed,
/// and node 2 campaigns as soon as the followers' (fast) stickiness has run out.
fn fast_follower_scenario(tweak: impl Fn(&mut Config)) {
    let mut sim = Sim::with_config(3, 11, |c| {
        if c.id != NodeId(1) {
            c.election_timeout_min = ms(71);
        }
        tweak(c);
    });
    sim.campaign(1);
    assert!(sim.run_until(ms(100), |s| s.stable_leader() == Some(NodeId(1))));
    write_and_apply(&mut sim, 1);
    let r = sim.read(1, ReadMode::ReadIndex).unwrap();
    assert!(sim.run_until(ms(20), |s| s.read_result(1, r).is_some()));
    sim.isolate(1);
    sim.run_for(ms(72));
    sim.campaign(2);
    let ok = sim.run_until(ms(100), |s| s.core(2).role() == Role::Leader);
    assert!(ok, "node 2 was not elected");
    let old = sim.core(1);
    assert!(
        !(old.role() == Role::Leader && old.lease_valid(sim.now)),
        "lease violated: node 1 holds a lease at {:?} while node 2 leads {}",
        sim.now,
        sim.core(2).term()
    );
}

/// §6.4.1: a lease is only as safe as the clock drift bound it subtracts. With followers whose
/// clocks run fast (within the bound), a new leader can be elected `election_timeout_min`
/// *of their clocks* after they last heard from the old leader — earlier in real time; the old
/// leader's lease must have ended by then. Pitfall: a lease of the whole
/// `election_timeout_min`.
#[test]
fn a_lease_ends_before_a_follower_with_a_fast_clock_stops_being_loyal() {
    fast_follower_scenario(|_| {});
}

// ----- Follower reads -------------------------------------------------------------------------

/// §6.4 follower reads: a follower's reads are answered with the leader's confirmed read index,
/// which covers every write committed when the read was asked even if the follower itself has
/// not yet learned that they are committed (its driver waits to apply up to the index). The
/// reads gathered in one flush go to the leader as one request. A follower that knows no leader
/// refuses, and the leader-only modes are refused on a follower.
#[test]
fn a_follower_read_gets_an_index_covering_every_write_committed_before_it() {
    let mut sim = Sim::new(3, 9);
    assert_eq!(sim.read(1, ReadMode::Follower), Err(ReadError::NotLeader { leader: None }));
    let l = sim.wait_leader().0;
    let f = others(&sim, l)[0];
    let hint = Err(ReadError::NotLeader { leader: Some(NodeId(l)) });
    assert_eq!(sim.read(f, ReadMode::ReadIndex), hint);
    assert_eq!(sim.read(f, ReadMode::Lease), hint);
    let before = write_and_apply(&mut sim, 1);
    let requests = Rc::new(Cell::new(0u32));
    let rq = requests.clone();
    sim.set_filter(move |from, to, m| {
        if from == NodeId(l) && to == NodeId(f) {
            cap_commit(m, before);
        }
        if matches!(m.body, MessageBody::ReadIndexRequest(_)) {
            rq.set(rq.get() + 1);
        }
        true
    });
    let mut last = LogIndex(0);
    for i in 0..5 {
        last = sim.propose(l, format!("x{i}").as_bytes()).unwrap().index;
    }
    assert!(sim.run_until(ms(200), |s| s.core(l).commit_index() >= last));
    let floor = sim.core(l).commit_index();
    let own = sim.core(f).commit_index();
    assert!(own < floor, "the follower must lag in what it knows committed");
    let ids = sim.read_many(f, ReadMode::Follower, 10);
    assert_eq!(ids.len(), 10);
    assert!(sim.run_until(ms(100), |s| ids.iter().all(|id| s.read_result(f, *id).is_some())));
    for id in &ids {
        let index = sim.read_result(f, *id).unwrap().expect("answered");
        assert!(index >= floor, "follower read index {index} below {floor}");
    }
    assert_eq!(sim.core(f).commit_index(), own, "the answer came from the leader");
    assert_eq!(requests.get(), 1, "ten reads in one flush took {} requests", requests.get());
}

/// A follower read waiting for the leader's answer fails with `LeadershipLost` when the
/// follower's leader changes (the answer may never come), and a late answer from the old
/// leader is then ignored (the simulator panics on a second answer to one read).
#[test]
fn a_follower_read_in_flight_when_the_leader_changes_fails_with_leadership_lost() {
    let mut sim = Sim::new(3, 10);
    let l = sim.wait_leader().0;
    let fs = others(&sim, l);
    let (f, m) = (fs[0], fs[1]);
    write_and_apply(&mut sim, 1);
    let held = sim.hold_to(f, |b| matches!(b, MessageBody::ReadIndexResponse(_)));
    let id = sim.read(f, ReadMode::Follower).unwrap();
    assert!(sim.run_until(ms(50), |_| !held.borrow().is_empty()), "the leader answered");
    assert_eq!(sim.transfer(l, Some(m)), Ok(NodeId(m)));
    assert!(sim.run_until(ms(200), |s| s.read_result(f, id).is_some()));
    assert_eq!(sim.read_result(f, id), Some(Err(ReadError::LeadershipLost)));
    assert!(sim.run_until(ms(100), |s| s.core(m).role() == Role::Leader), "the transfer failed");
    sim.clear_filter();
    for msg in held.borrow_mut().drain(..) {
        sim.inject(l, f, msg);
    }
    sim.run_for(ms(20));
    assert_eq!(sim.read_results.iter().filter(|(n, r, _)| *n == NodeId(f) && *r == id).count(), 1);
}

/// An answer the leader sent to a follower's previous incarnation, delivered after the
/// restart, must not answer a batch of the new incarnation: its index predates writes committed
/// since (the simulator flags the stale read). Batches are named after their first read's id,
/// which the driver keeps increasing across restarts.
#[test]
fn an_answer_to_a_batch_from_before_a_restart_never_answers_a_new_read() {
    let mut sim = Sim::new(3, 12);
    let l = sim.wait_leader().0;
    let f = others(&sim, l)[0];
    write_and_apply(&mut sim, 1);
    let phase = Rc::new(Cell::new(0u8));
    let held: Rc<RefCell<Vec<Message>>> = Rc::default();
    let (p, h) = (phase.clone(), held.clone());
    sim.set_filter(move |from, to, m| match (p.get(), &m.body) {
        (0, MessageBody::ReadIndexResponse(_)) if to == NodeId(f) => {
            h.borrow_mut().push(m.clone());
            false
        }
        (1, MessageBody::ReadIndexRequest(_)) if from == NodeId(f) => false,
        _ => true,
    });
    let a = sim.read(f, ReadMode::Follower).unwrap();
    assert!(sim.run_until(ms(50), |_| !held.borrow().is_empty()));
    sim.crash(f);
    sim.restart(f);
    assert!(sim.run_until(ms(100), |s| s.core(f).leader() == Some(NodeId(l))));
    let mut last = LogIndex(0);
    for i in 0..3 {
        last = sim.propose(l, format!("later-{i}").as_bytes()).unwrap().index;
    }
    assert!(sim.run_until(ms(100), |s| s.core(l).commit_index() >= last));
    phase.set(1);
    let b = sim.read(f, ReadMode::Follower).unwrap();
    for m in held.borrow_mut().drain(..) {
        sim.inject(l, f, m);
    }
    sim.run_for(ms(20));
    assert_eq!(sim.read_result(f, a), None, "the crashed incarnation's read");
    assert_eq!(sim.read_result(f, b), None, "answered by an answer to another read");
}

// ----- Everything at once ---------------------------------------------------------------------

/// One run of [`reads_of_every_mode_are_never_stale_under_random_faults`]. With `slow`, the
/// network is slower (1–40 ms) and duplicates a fifth of the messages, and a random node is
/// crashed and restarted at once now and then, so answers meant for its previous incarnation
/// reach the new one.
fn random_reads(seed: u64, slow: bool, tweak: impl Fn(&mut Config)) {
    let modes = [ReadMode::ReadIndex, ReadMode::Lease, ReadMode::Follower];
    let n = if seed % 2 == 0 { 5 } else { 3 };
    // A third of the seeds without CheckQuorum: no leases, and deposed leaders linger.
    let mut sim = Sim::with_config(n, seed, |c| {
        c.check_quorum = seed % 3 != 0;
        tweak(c);
    });
    sim.drop_rate = 0.02;
    sim.duplicate_rate = 0.02;
    if slow {
        sim.latency = (ms(1), ms(40));
        sim.duplicate_rate = 0.2;
    }
    let mut asked = 0u32;
    for round in 0..40 {
        match sim.rng.below(8) {
            0 => {
                let victim = 1 + sim.rng.below(n);
                if sim.node(victim).core.is_some() {
                    sim.crash(victim);
                }
            }
            1 => {
                let ids: Vec<u64> = (1..=n).collect();
                let cut = 1 + sim.rng.below(n - 1) as usize;
                let (a, b) = ids.split_at(cut);
                sim.partition(&[a, b]);
            }
            2 => {
                let (a, b) = (1 + sim.rng.below(n), 1 + sim.rng.below(n));
                if a != b {
                    sim.block(a, b);
                }
            }
            3 => {
                if let Some(l) = sim.leader() {
                    let _ = sim.transfer(l.0, None);
                }
            }
            _ => sim.heal(),
        }
        for id in 1..=n {
            if sim.node(id).core.is_none() && sim.rng.chance(0.5) {
                sim.restart(id);
            }
        }
        if slow && sim.rng.chance(0.3) {
            let victim = 1 + sim.rng.below(n);
            if sim.node(victim).core.is_some() {
                sim.crash(victim);
                sim.restart(victim);
            }
        }
        for step in 0..6 {
            if let Some(l) = sim.leader() {
                let _ = sim.propose(l.0, format!("s{seed}-r{round}-{step}").as_bytes());
            }
            // A read on every live node, in a random mode (sometimes several in one flush).
            for node in 1..=n {
                if sim.node(node).core.is_some() {
                    let mode = modes[sim.rng.below(3) as usize];
                    if sim.rng.chance(0.2) {
                        asked += sim.read_many(node, mode, 3).len() as u32;
                    } else if sim.read(node, mode).is_ok() {
                        asked += 1;
                    }
                }
            }
            let pause = sim.rng.duration(ms(1), ms(40));
            sim.run_for(pause);
        }
    }
    sim.heal();
    sim.drop_rate = 0.0;
    sim.duplicate_rate = 0.0;
    for id in 1..=n {
        if sim.node(id).core.is_none() {
            sim.restart(id);
        }
    }
    // A transfer started last may still be in progress (for up to election_timeout_max).
    let idle = |s: &Sim| {
        s.nodes.values().all(|n| n.core.as_ref().is_none_or(|c| c.transfer_target().is_none()))
    };
    assert!(sim.run_until(ms(500), idle));
    sim.propose_on_leader(b"final");
    sim.assert_converged(Duration::from_secs(30));
    let l = sim.wait_leader().0;
    let mut last = Vec::new();
    for node in 1..=n {
        let mode = if node == l { ReadMode::ReadIndex } else { ReadMode::Follower };
        last.push((node, sim.read(node, mode).expect("a healed cluster takes reads")));
    }
    let ok = sim.run_until(ms(500), |s| {
        last.iter().all(|(node, id)| matches!(s.read_result(*node, *id), Some(Ok(_))))
    });
    assert!(ok, "seed {seed}: the healed cluster did not answer reads");
    let served = sim.read_results.iter().filter(|(_, _, r)| r.is_ok()).count();
    assert!(asked > 100 && served > 100, "seed {seed}: too few reads to mean anything");
}

/// Random partitions, one-way blocks, crashes and restarts, lost and duplicated messages,
/// proposals, leadership transfers, and reads of every mode on every node, over many seeds.
/// The simulator flags any stale read and any lease overlapping a later leader; at the end the
/// healed cluster must serve reads again.
#[test]
fn reads_of_every_mode_are_never_stale_under_random_faults() {
    for seed in seeds(20) {
        eprintln!("seed {seed} (replay with RAFTKIT_SEED={seed})");
        random_reads(seed, false, |_| {});
    }
}

/// The same with a slow, duplicating network and instant crash-restarts: a follower read must
/// not be answered by an answer meant for the node's previous incarnation.
#[test]
fn reads_are_never_stale_across_restarts_on_a_slow_network() {
    for seed in seeds(20) {
        eprintln!("seed {seed} (replay with RAFTKIT_SEED={seed})");
        random_reads(seed, true, |_| {});
    }
}

// ----- Mutants --------------------------------------------------------------------------------

/// The simulator catches each deliberately broken read rule (`Config::mutant`, on every node).
#[cfg(feature = "mutants")]
mod mutants {
    use raftkit_core::Mutant;

    use super::*;

    /// Serving ReadIndex reads without a round: the deposed leader answers at once, with an
    /// index below what the new leader committed.
    #[test]
    #[should_panic(expected = "stale read")]
    fn read_without_round_is_a_stale_read() {
        deposed_leader_scenario(|c| c.mutant = Some(Mutant::ReadWithoutRound));
    }

    /// Serving reads before the leader's no-op commits: the new leader answers with its lagging
    /// commit index.
    #[test]
    #[should_panic(expected = "stale read")]
    fn read_before_noop_is_a_stale_read() {
        new_leader_scenario(|c| c.mutant = Some(Mutant::ReadBeforeNoop));
    }

    /// Counting any heartbeat answer of the term: the replayed answers confirm the read.
    #[test]
    #[should_panic(expected = "answers to an earlier round")]
    fn read_round_by_term_only_answers_with_earlier_rounds() {
        earlier_round_scenario(|c| c.mutant = Some(Mutant::ReadRoundByTermOnly));
    }

    /// The random workload alone finds `mutant` on some seed, as a stale read.
    fn random_workload_finds(mutant: Mutant) {
        let caught = (1..=20).find(|seed| {
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                random_reads(*seed, false, |c| c.mutant = Some(mutant));
            }));
            match run {
                Ok(()) => false,
                Err(e) => {
                    let msg = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    assert!(msg.contains("stale read"), "{mutant:?} failed otherwise: {msg}");
                    true
                }
            }
        });
        assert!(caught.is_some(), "no seed of the random workload caught {mutant:?}");
    }

    #[test]
    fn the_random_workload_finds_read_without_round() {
        random_workload_finds(Mutant::ReadWithoutRound);
    }

    #[test]
    fn the_random_workload_finds_read_before_noop() {
        random_workload_finds(Mutant::ReadBeforeNoop);
    }

    /// A lease of the whole `election_timeout_min`: it still holds when the fast-clocked
    /// followers elect a new leader.
    #[test]
    #[should_panic(expected = "lease violated")]
    fn lease_ignoring_drift_overlaps_the_next_leader() {
        fast_follower_scenario(|c| c.mutant = Some(Mutant::LeaseIgnoresDrift));
    }
}
