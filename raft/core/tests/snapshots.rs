//! Snapshots and log compaction in the simulated cluster: logs are purged after snapshots, a
//! follower that was down for longer than the log keeps catches up from a snapshot streamed in
//! chunks, an interrupted transfer resumes where it stopped, a stale snapshot is refused, and
//! restarted nodes rebuild their state from their latest snapshot. The simulator checks every
//! safety invariant throughout, including that installed snapshot contents agree with what
//! every other node applied.

#![allow(clippy::print_stderr)]

mod sim;

use std::time::Duration;

use raftkit_core::{
    Action, Config, InitialState, InstallSnapshot, Instant, LogId, LogIndex, Membership, Message,
    MessageBody, NodeId, RaftCore, SnapshotMeta, Term,
};
use sim::Sim;

fn snapshotting(c: &mut Config) {
    c.snapshot_every = 500;
    c.snapshot_keep = 50;
    c.snapshot_chunk_bytes = 4096;
}

fn propose_many(sim: &mut Sim, leader: u64, n: usize, tag: &str) {
    for i in 0..n {
        sim.propose(leader, format!("{tag}-{i:06}").as_bytes()).unwrap();
        if i % 200 == 0 {
            sim.run_for(Duration::from_millis(5));
        }
    }
}

#[test]
fn logs_are_purged_after_snapshots() {
    let mut sim = Sim::with_config(3, 31, snapshotting);
    let leader = sim.wait_leader().0;
    propose_many(&mut sim, leader, 3000, "a");
    sim.assert_converged(Duration::from_secs(20));
    // Purges are store operations queued behind the writes: let the last ones complete.
    sim.run_for(Duration::from_millis(100));
    // Entries are applied in batches, so the every-500 policy fires at batch boundaries.
    assert!(sim.snapshots_built >= 3 * 2, "too few snapshots: {}", sim.snapshots_built);
    for id in 1..=3 {
        let node = sim.node(id);
        let purged = node.store.purged.index.0;
        assert!(
            purged >= 2500 - 50,
            "n{id}'s log was not purged (purged up to {purged}; core {}, {:?}, snapshot {:?}, applied {})",
            node.core().purged_log_id(),
            node.core().role(),
            node.core().snapshot().map(|s| s.last_log_id),
            node.core().applied_index()
        );
        assert!(node.store.entries.len() < 600, "n{id} keeps {} entries", node.store.entries.len());
        let snap = node.core().snapshot().expect("a snapshot").last_log_id.index;
        assert!(purged <= snap.0, "purged past the snapshot");
    }
}

#[test]
fn a_node_down_for_ten_thousand_entries_catches_up_from_a_snapshot() {
    let mut sim = Sim::with_config(3, 37, snapshotting);
    let leader = sim.wait_leader().0;
    let lagger = (1..=3).find(|n| *n != leader).unwrap();
    sim.crash(lagger);
    propose_many(&mut sim, leader, 10_500, "b");
    sim.run_for(Duration::from_millis(500));
    assert!(
        sim.node(leader).store.purged.index.0 > 10_000,
        "the leader should have compacted its log"
    );
    sim.restart(lagger);
    sim.assert_converged(Duration::from_secs(60));
    assert!(sim.snapshots_installed >= 1, "the lagging node must install a snapshot");
    assert!(sim.chunks_sent.iter().filter(|(to, _)| to.0 == lagger).count() > 1, "sent in chunks");
    assert_eq!(sim.node(lagger).applied.len(), 10_501);
    // It rebuilt its state from the snapshot, then the log: a restart does the same.
    sim.crash(lagger);
    sim.restart(lagger);
    sim.assert_converged(Duration::from_secs(20));
}

#[test]
fn an_interrupted_snapshot_transfer_resumes_where_it_stopped() {
    let mut sim = Sim::with_config(3, 41, |c| {
        snapshotting(c);
        c.snapshot_chunk_bytes = 1024;
    });
    let leader = sim.wait_leader().0;
    let lagger = (1..=3).find(|n| *n != leader).unwrap();
    sim.crash(lagger);
    propose_many(&mut sim, leader, 3000, "c");
    sim.run_for(Duration::from_millis(200));
    sim.restart(lagger);
    // Let some chunks through, then cut the link in the middle of the transfer.
    let ok = sim.run_until(Duration::from_secs(10), |s| {
        s.chunks_sent.iter().filter(|(to, _)| to.0 == lagger).count() >= 10
    });
    assert!(ok, "the transfer never started");
    sim.isolate(lagger);
    sim.run_for(Duration::from_secs(2));
    let before = sim.chunks_sent.len();
    let reached =
        sim.chunks_sent.iter().filter(|(to, _)| to.0 == lagger).map(|(_, o)| *o).max().unwrap();
    sim.heal();
    sim.assert_converged(Duration::from_secs(30));
    let resumed: Vec<u64> = sim.chunks_sent[before..]
        .iter()
        .filter(|(to, _)| to.0 == lagger)
        .map(|(_, o)| *o)
        .collect();
    assert!(!resumed.is_empty());
    assert!(
        resumed[0] > 0 && resumed[0] >= reached.saturating_sub(4 * 1024),
        "after the partition the transfer restarted at {} instead of resuming near {reached}",
        resumed[0]
    );
    eprintln!(
        "transfer reached offset {reached} before the partition and resumed at {}",
        resumed[0]
    );
}

#[test]
fn snapshots_and_purges_during_random_faults() {
    for seed in 1..=12u64 {
        let n = if seed % 2 == 0 { 5 } else { 3 };
        let mut sim = Sim::with_config(n, seed, |c| {
            c.snapshot_every = 150;
            c.snapshot_keep = 10;
            c.snapshot_chunk_bytes = 512;
        });
        sim.drop_rate = 0.03;
        for round in 0..30 {
            match sim.rng.below(5) {
                0 => {
                    let v = 1 + sim.rng.below(n);
                    if sim.node(v).core.is_some() {
                        sim.crash(v);
                    }
                }
                1 => {
                    let v = 1 + sim.rng.below(n);
                    sim.isolate(v);
                }
                _ => sim.heal(),
            }
            for id in 1..=n {
                if sim.node(id).core.is_none() && sim.rng.chance(0.4) {
                    sim.restart(id);
                }
            }
            if let Some(l) = sim.leader() {
                for k in 0..40 {
                    let _ = sim.propose(l.0, format!("s{seed}-r{round}-{k}").as_bytes());
                }
            }
            let pause = sim.rng.duration(Duration::from_millis(20), Duration::from_millis(500));
            sim.run_for(pause);
        }
        sim.heal();
        sim.drop_rate = 0.0;
        for id in 1..=n {
            if sim.node(id).core.is_none() {
                sim.restart(id);
            }
        }
        sim.propose_on_leader(b"final");
        sim.assert_converged(Duration::from_secs(60));
        eprintln!(
            "seed {seed}: {} snapshots built, {} installed",
            sim.snapshots_built, sim.snapshots_installed
        );
    }
}

/// A snapshot older than what the follower has committed is refused: answered as installed,
/// with nothing written.
#[test]
fn a_stale_snapshot_is_refused() {
    let mut cfg = Config::new(NodeId(2), [NodeId(1), NodeId(2), NodeId(3)]);
    cfg.pre_vote = false;
    let init = InitialState {
        hard_state: raftkit_core::HardState { term: Term(3), vote: None, commit: LogIndex(100) },
        term_runs: vec![LogId::new(3, 1)],
        last: LogId::new(3, 100),
        ..InitialState::default()
    };
    let mut core = RaftCore::new(cfg, init, Instant::ZERO).unwrap();
    while core.poll_action().is_some() {}
    let meta = SnapshotMeta {
        last_log_id: LogId::new(3, 50),
        membership: Membership::new([NodeId(1), NodeId(2), NodeId(3)]).unwrap(),
        size: 10,
        checksum: 7,
    };
    let chunk = Message {
        term: Term(3),
        body: MessageBody::InstallSnapshot(InstallSnapshot {
            meta,
            offset: 0,
            data: vec![0u8; 10].into(),
            done: true,
        }),
    };
    core.handle_message(Instant::ZERO, NodeId(1), chunk);
    let actions: Vec<Action> = std::iter::from_fn(|| core.poll_action()).collect();
    assert!(
        !actions.iter().any(|a| matches!(a, Action::ReceiveSnapshot(_))),
        "a stale snapshot must not be written: {actions:?}"
    );
    let answered = actions.iter().any(|a| {
        matches!(a, Action::Send(o) if matches!(&o.message.body, MessageBody::SnapshotResponse(r) if r.installed))
    });
    assert!(answered, "the leader must learn the follower already has it: {actions:?}");
    assert_eq!(core.last_log_id(), LogId::new(3, 100));
    assert_eq!(core.commit_index(), LogIndex(100));
}

/// Regression: while a snapshot is being installed, nothing is handed out to apply (it would
/// be applied after the restore, out of order), even when a heartbeat advances the commit.
#[test]
fn nothing_is_applied_while_a_snapshot_installs() {
    let members = [NodeId(1), NodeId(2), NodeId(3)];
    let mut cfg = Config::new(NodeId(2), members);
    cfg.pre_vote = false;
    let init = InitialState {
        hard_state: raftkit_core::HardState { term: Term(2), vote: None, commit: LogIndex(10) },
        term_runs: vec![LogId::new(2, 1)],
        last: LogId::new(2, 20),
        ..InitialState::default()
    };
    let mut core = RaftCore::new(cfg, init, Instant::ZERO).unwrap();
    // Apply what is committed so far.
    for a in std::iter::from_fn(|| core.poll_action()).collect::<Vec<_>>() {
        if let Action::Apply(r) = a {
            core.handle_applied(r.last.index);
        }
    }
    let meta = SnapshotMeta {
        last_log_id: LogId::new(2, 50),
        membership: Membership::new(members).unwrap(),
        size: 4,
        checksum: 1,
    };
    let last_chunk = Message {
        term: Term(2),
        body: MessageBody::InstallSnapshot(InstallSnapshot {
            meta: meta.clone(),
            offset: 0,
            data: vec![1u8, 2, 3, 4].into(),
            done: true,
        }),
    };
    core.handle_message(Instant::ZERO, NodeId(1), last_chunk);
    let actions: Vec<Action> = std::iter::from_fn(|| core.poll_action()).collect();
    assert!(actions.iter().any(|a| matches!(a, Action::ReceiveSnapshot(_))));
    // The leader's heartbeat says entries up to 20 are committed.
    let hb = Message {
        term: Term(2),
        body: MessageBody::Heartbeat(raftkit_core::Heartbeat { commit: LogIndex(20), round: 0 }),
    };
    core.handle_message(Instant::ZERO, NodeId(1), hb);
    let actions: Vec<Action> = std::iter::from_fn(|| core.poll_action()).collect();
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Apply(_))),
        "handed out entries to apply during an install: {actions:?}"
    );
    // Once installed, applying resumes after the snapshot.
    core.handle_snapshot_received(Instant::ZERO, NodeId(1), meta, 4, true);
    assert_eq!(core.applied_index(), LogIndex(50));
    assert_eq!(core.purged_log_id(), LogId::new(2, 50));
    let actions: Vec<Action> = std::iter::from_fn(|| core.poll_action()).collect();
    assert!(!actions.iter().any(|a| matches!(a, Action::Apply(r) if r.first <= LogIndex(50))));
}

/// A follower with entries 1..=20 (10 committed) receives a snapshot at 15 from chunks.
fn follower_receiving_a_snapshot_at_15() -> (RaftCore, SnapshotMeta, Vec<Message>) {
    let members = [NodeId(1), NodeId(2), NodeId(3)];
    let mut cfg = Config::new(NodeId(2), members);
    cfg.pre_vote = false;
    let init = InitialState {
        hard_state: raftkit_core::HardState { term: Term(2), vote: None, commit: LogIndex(10) },
        term_runs: vec![LogId::new(2, 1)],
        last: LogId::new(2, 20),
        ..InitialState::default()
    };
    let mut core = RaftCore::new(cfg, init, Instant::ZERO).unwrap();
    for a in std::iter::from_fn(|| core.poll_action()).collect::<Vec<_>>() {
        if let Action::Apply(r) = a {
            core.handle_applied(r.last.index);
        }
    }
    assert_eq!(core.applied_index(), LogIndex(10));
    let meta = SnapshotMeta {
        last_log_id: LogId::new(2, 15),
        membership: Membership::new(members).unwrap(),
        size: 4,
        checksum: 1,
    };
    let chunks = [(0, false), (2, true)]
        .into_iter()
        .map(|(offset, done)| Message {
            term: Term(2),
            body: MessageBody::InstallSnapshot(InstallSnapshot {
                meta: meta.clone(),
                offset,
                data: vec![offset as u8, 0].into(),
                done,
            }),
        })
        .collect();
    (core, meta, chunks)
}

fn heartbeat(commit: u64) -> Message {
    Message {
        term: Term(2),
        body: MessageBody::Heartbeat(raftkit_core::Heartbeat {
            commit: LogIndex(commit),
            round: 0,
        }),
    }
}

fn applies(core: &mut RaftCore) -> Vec<(LogIndex, LogIndex)> {
    std::iter::from_fn(|| core.poll_action())
        .filter_map(|a| match a {
            Action::Apply(r) => Some((r.first, r.last.index)),
            _ => None,
        })
        .collect()
}

/// Regression (found by the cluster suite, seed 276 on 5 nodes): a heartbeat raised the commit
/// index past the snapshot while it installed, and the install was then taken as stale — the
/// state machine had been restored to the snapshot, but the core handed out the entries it
/// covers again.
#[test]
fn commit_passing_the_snapshot_during_the_install_does_not_reapply() {
    let (mut core, meta, chunks) = follower_receiving_a_snapshot_at_15();
    for c in chunks {
        core.handle_message(Instant::ZERO, NodeId(1), c);
    }
    core.handle_message(Instant::ZERO, NodeId(1), heartbeat(20));
    assert_eq!(core.commit_index(), LogIndex(20));
    assert!(applies(&mut core).is_empty(), "applied during the install");
    core.handle_snapshot_received(Instant::ZERO, NodeId(1), meta.clone(), 2, false);
    core.handle_snapshot_received(Instant::ZERO, NodeId(1), meta, 4, true);
    assert_eq!(core.applied_index(), LogIndex(15));
    assert_eq!(applies(&mut core), vec![(LogIndex(16), LogIndex(20))]);
}

/// The answer to an earlier chunk arriving after the final chunk was handed out does not end
/// the install: applying still waits for it.
#[test]
fn an_earlier_chunks_answer_does_not_end_the_install() {
    let (mut core, meta, chunks) = follower_receiving_a_snapshot_at_15();
    for c in chunks {
        core.handle_message(Instant::ZERO, NodeId(1), c);
    }
    core.handle_snapshot_received(Instant::ZERO, NodeId(1), meta.clone(), 2, false);
    core.handle_message(Instant::ZERO, NodeId(1), heartbeat(12));
    assert!(applies(&mut core).is_empty(), "applied while the final chunk was installing");
    // The final chunk failed its check: the install is over and applying resumes.
    core.handle_snapshot_received(Instant::ZERO, NodeId(1), meta, 0, false);
    assert_eq!(applies(&mut core), vec![(LogIndex(11), LogIndex(12))]);
}
