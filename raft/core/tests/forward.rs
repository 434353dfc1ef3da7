//! Proposal forwarding on the simulated cluster: a follower hands client commands to the
//! leader, which appends them and answers where; the follower's driver then waits for them to
//! be applied locally. The answer must name the entries of *these* commands, and a follower
//! whose leader changes before the answer must say the outcome is unknown.

mod sim;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use raftkit_core::{
    EntryPayload, ForwardError, Forwarded, LogId, LogIndex, Message, MessageBody, NodeId,
    ProposeError, Role,
};
use sim::Sim;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Every node but `not`, by id.
fn others(sim: &Sim, not: u64) -> Vec<u64> {
    sim.ids().into_iter().map(|n| n.0).filter(|n| *n != not).collect()
}

/// Proposes `count` commands on the leader and waits until every live node applied them.
fn write_and_apply(sim: &mut Sim, count: usize) {
    let mut last = LogIndex(0);
    for i in 0..count {
        last = sim.propose_on_leader(format!("w{i}").as_bytes()).index;
    }
    assert!(sim.wait_applied(last, Duration::from_secs(5)), "writes not applied everywhere");
}

/// The answers `node` got for forwarded batch `batch`.
fn answers(sim: &Sim, node: u64, batch: u64) -> Vec<Forwarded> {
    sim.forwarded
        .iter()
        .filter(|(n, f)| *n == NodeId(node) && f.batch == batch)
        .map(|(_, f)| f.clone())
        .collect()
}

/// Runs until `node` has an answer for `batch`; returns the first.
fn wait_answer(sim: &mut Sim, node: u64, batch: u64) -> Result<LogId, ForwardError> {
    let ok = sim.run_until(ms(200), |s| !answers(s, node, batch).is_empty());
    assert!(ok, "no answer for batch {batch} on node {node}");
    answers(sim, node, batch)[0].result.clone()
}

/// The command node `node` applied at `index`, if it applied a command there.
fn applied_command(sim: &Sim, node: u64, index: LogIndex) -> Option<(LogId, Bytes)> {
    let e = sim.node(node).applied.get(index.0 as usize - 1)?;
    match &e.payload {
        EntryPayload::Normal(d) => Some((e.log_id, d.clone())),
        _ => None,
    }
}

/// A follower's forwarded commands are appended by the leader, in order, at consecutive
/// indexes; the answer names the first one's id (of the leader's term), and the follower
/// applies exactly these commands at exactly these ids.
#[test]
fn forwarded_commands_are_appended_by_the_leader_and_applied_with_the_id_it_answered() {
    let mut sim = Sim::new(3, 31);
    let l = sim.wait_leader().0;
    let f = others(&sim, l)[0];
    write_and_apply(&mut sim, 2);
    let commands: [&[u8]; 3] = [b"alpha", b"beta", b"gamma"];
    assert_eq!(sim.forward(f, 7, &commands), Ok(NodeId(l)));
    let first = wait_answer(&mut sim, f, 7).expect("appended");
    assert_eq!(first.term, sim.core(l).term(), "appended in the leader's term");
    let last = first.index.plus(2);
    assert!(sim.wait_applied(last, ms(200)), "the forwarded commands were not applied");
    for (k, cmd) in commands.iter().enumerate() {
        let index = first.index.plus(k as u64);
        let (id, data) = applied_command(&sim, f, index).expect("a command at the index");
        assert_eq!(id, LogId { term: first.term, index }, "applied with another id");
        assert_eq!(&data[..], *cmd, "another command applied at {index}");
    }
    assert_eq!(answers(&sim, f, 7).len(), 1, "one answer per batch");
}

/// Forwarding needs a leader other than this node: a node that knows no leader, and the
/// leader itself (it proposes directly), refuse with `NotLeader`, naming the leader if known.
#[test]
fn forwarding_needs_a_leader_other_than_this_node() {
    let mut sim = Sim::new(3, 32);
    assert_eq!(sim.forward(1, 1, &[b"x"]), Err(ProposeError::NotLeader { leader: None }));
    let l = sim.wait_leader().0;
    assert_eq!(
        sim.forward(l, 1, &[b"x"]),
        Err(ProposeError::NotLeader { leader: Some(NodeId(l)) })
    );
    assert!(sim.forwarded.is_empty());
}

/// While the leader hands leadership over it takes no new commands, forwarded ones included:
/// they are answered `TransferInProgress` (retry on the new leader), and nothing is appended.
#[test]
fn forwarding_during_a_transfer_is_answered_transfer_in_progress() {
    let mut sim = Sim::new(3, 33);
    let l = sim.wait_leader().0;
    let fs = others(&sim, l);
    let (target, f) = (fs[0], fs[1]);
    write_and_apply(&mut sim, 1);
    sim.isolate(target);
    sim.transfer(l, Some(target)).expect("transfer started");
    let last = sim.core(l).last_log_id();
    assert_eq!(sim.forward(f, 1, &[b"during"]), Ok(NodeId(l)));
    assert_eq!(wait_answer(&mut sim, f, 1), Err(ForwardError::TransferInProgress));
    assert_eq!(sim.core(l).last_log_id(), last, "appended during the transfer");
}

/// A follower whose leader changes before the answer to its forwarded commands comes fails the
/// batch with `LeaderChanged` (the commands may or may not be appended), and ignores the old
/// leader's answer if it comes after all — exactly one answer per batch.
#[test]
fn a_leader_change_before_the_answer_fails_the_forward_with_leader_changed() {
    let mut sim = Sim::new(3, 34);
    let l = sim.wait_leader().0;
    let fs = others(&sim, l);
    let (f, m) = (fs[0], fs[1]);
    write_and_apply(&mut sim, 1);
    let held = sim.hold_to(f, |b| matches!(b, MessageBody::ProposeResponse(_)));
    assert_eq!(sim.forward(f, 1, &[b"in doubt"]), Ok(NodeId(l)));
    assert!(sim.run_until(ms(50), |_| !held.borrow().is_empty()), "the leader answered");
    assert_eq!(sim.transfer(l, Some(m)), Ok(NodeId(m)));
    assert_eq!(wait_answer(&mut sim, f, 1), Err(ForwardError::LeaderChanged));
    assert!(sim.run_until(ms(100), |s| s.core(m).role() == Role::Leader));
    sim.clear_filter();
    for msg in held.borrow_mut().drain(..) {
        sim.inject(l, f, msg);
    }
    sim.run_for(ms(30));
    assert_eq!(answers(&sim, f, 1).len(), 1, "a batch answered twice: {:?}", answers(&sim, f, 1));
}

/// Batch ids increase across restarts (`forward`'s contract; the engine starts them from the
/// wall clock). An answer the leader sent to the previous incarnation, delivered after the
/// restart, answers nothing: the batch it names is not outstanding, and the new
/// incarnation's batch gets its own answer, naming its own command.
#[test]
fn an_answer_from_before_a_restart_never_answers_a_new_batch() {
    let mut sim = Sim::new(3, 35);
    let l = sim.wait_leader().0;
    let f = others(&sim, l)[0];
    write_and_apply(&mut sim, 1);
    let hold = Rc::new(Cell::new(true));
    let held: Rc<RefCell<Vec<Message>>> = Rc::default();
    let (p, h) = (hold.clone(), held.clone());
    sim.set_filter(move |_, to, m| {
        if p.get() && matches!(m.body, MessageBody::ProposeResponse(_)) && to == NodeId(f) {
            h.borrow_mut().push(m.clone());
            return false;
        }
        true
    });
    assert_eq!(sim.forward(f, 1, &[b"before the crash"]), Ok(NodeId(l)));
    assert!(sim.run_until(ms(50), |_| !held.borrow().is_empty()));
    sim.crash(f);
    sim.restart(f);
    assert!(sim.run_until(ms(100), |s| s.core(f).leader() == Some(NodeId(l))));
    hold.set(false);
    assert_eq!(sim.forward(f, 2, &[b"after the restart"]), Ok(NodeId(l)));
    for m in held.borrow_mut().drain(..) {
        sim.inject(l, f, m);
    }
    let first = wait_answer(&mut sim, f, 2).expect("appended");
    sim.run_for(ms(30));
    assert!(answers(&sim, f, 1).is_empty(), "the previous incarnation's batch was answered");
    assert!(sim.wait_applied(first.index, ms(200)));
    let (_, data) = applied_command(&sim, f, first.index).expect("a command");
    assert_eq!(String::from_utf8_lossy(&data), "after the restart");
}

/// The network may deliver a forwarded batch twice; the leader appends it once (a batch id
/// not above the last one it took from that follower is a duplicate, dropped unanswered), so
/// the command is applied once.
#[test]
fn a_duplicated_forwarded_batch_is_appended_once() {
    let mut sim = Sim::new(3, 36);
    let l = sim.wait_leader().0;
    let f = others(&sim, l)[0];
    write_and_apply(&mut sim, 1);
    let copies: Rc<RefCell<Vec<Message>>> = Rc::default();
    let c = copies.clone();
    sim.set_filter(move |_, _, m| {
        if matches!(m.body, MessageBody::Propose(_)) {
            c.borrow_mut().push(m.clone());
        }
        true
    });
    assert_eq!(sim.forward(f, 5, &[b"once"]), Ok(NodeId(l)));
    let first = wait_answer(&mut sim, f, 5).expect("appended");
    sim.clear_filter();
    for m in copies.borrow_mut().drain(..) {
        sim.inject(f, l, m);
    }
    // An older batch id than the last taken is dropped as well.
    assert_eq!(sim.forward(f, 3, &[b"overtaken"]), Ok(NodeId(l)));
    sim.run_for(ms(50));
    let last = sim.core(l).last_log_id().index;
    assert!(sim.wait_applied(last, ms(200)));
    let applied: Vec<String> = sim
        .node(f)
        .applied
        .iter()
        .filter_map(|e| match &e.payload {
            EntryPayload::Normal(d) => Some(String::from_utf8_lossy(d).into_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(applied.iter().filter(|c| *c == "once").count(), 1, "applied {applied:?}");
    assert!(!applied.iter().any(|c| c == "overtaken"), "an overtaken batch was appended");
    assert_eq!(applied_command(&sim, f, first.index).map(|(_, d)| d), Some(Bytes::from("once")));
    assert_eq!(answers(&sim, f, 5).len(), 1);
}
