//! Guards the promise of `Config::check_quorum`: a leader that stops hearing from a quorum steps
//! down within `election_timeout_min` of the last answer it had from one — not up to a whole
//! extra check period later (it used to check on a fixed period and step down only when a whole
//! period had passed in silence, 500 ms after the last answer with a 300 ms minimum).

use std::time::Duration;

use raftkit_core::{
    Action, Config, HeartbeatAck, InitialState, Instant, Message, MessageBody, NodeId, RaftCore,
    Role, VoteResponse,
};

const MIN: Duration = Duration::from_millis(300);

fn settle(c: &mut RaftCore, now: Instant) {
    while let Some(a) = c.poll_action() {
        match a {
            Action::Persist(p) => c.handle_persisted(now, p.id),
            Action::Apply(req) => c.handle_applied(req.last.index),
            _ => {}
        }
    }
}

/// Node 1, leader of {1, 2, 3} at time zero.
fn leader() -> RaftCore {
    let mut cfg = Config::new(NodeId(1), [NodeId(1), NodeId(2), NodeId(3)]);
    cfg.pre_vote = false;
    cfg.check_quorum = true;
    cfg.heartbeat_interval = Duration::from_millis(50);
    cfg.election_timeout_min = MIN;
    cfg.election_timeout_max = Duration::from_millis(600);
    let mut c = RaftCore::new(cfg, InitialState::default(), Instant::ZERO).unwrap();
    let now = Instant::ZERO;
    c.campaign(now);
    settle(&mut c, now);
    let granted = MessageBody::VoteResponse(VoteResponse { pre_vote: false, granted: true });
    c.handle_message(now, NodeId(2), Message { term: c.term(), body: granted });
    settle(&mut c, now);
    assert_eq!(c.role(), Role::Leader);
    c
}

/// Runs the leader's timers until `until`, answering its heartbeats from `answering` peers only
/// while `now < answers_until`. Returns when it stopped leading, if it did.
fn run(c: &mut RaftCore, until: Instant, answers_until: Instant) -> Option<Instant> {
    loop {
        let next = c.poll_timeout().expect("a leader has timers");
        if next > until {
            return None;
        }
        c.handle_timeout(next);
        let mut heartbeats = Vec::new();
        while let Some(a) = c.poll_action() {
            match a {
                Action::Persist(p) => c.handle_persisted(next, p.id),
                Action::Apply(req) => c.handle_applied(req.last.index),
                Action::Send(o) if matches!(o.message.body, MessageBody::Heartbeat(_)) => {
                    heartbeats.push(o)
                }
                _ => {}
            }
        }
        if c.role() != Role::Leader {
            return Some(next);
        }
        if next < answers_until {
            for o in heartbeats {
                let answer = Message {
                    term: c.term(),
                    body: MessageBody::HeartbeatResponse(HeartbeatAck { round: 0 }),
                };
                c.handle_message(next, o.to, answer);
            }
            settle(c, next);
        }
    }
}

#[test]
fn a_leader_steps_down_within_the_minimum_election_timeout_of_its_last_quorum() {
    for silent_from_ms in [0u64, 10, 120, 250, 290, 310, 449, 600, 777] {
        let mut c = leader();
        let silent_from = Instant::ZERO + Duration::from_millis(silent_from_ms);
        let stepped = run(&mut c, Instant::ZERO + Duration::from_secs(5), silent_from)
            .expect("a leader that hears from nobody must step down");
        // The last answers came with the last heartbeat before `silent_from`.
        let deadline = silent_from + MIN;
        assert!(
            stepped <= deadline,
            "silent from {silent_from_ms} ms: stepped down at {stepped:?}, after {deadline:?}"
        );
    }
}

#[test]
fn a_leader_that_keeps_hearing_from_a_quorum_keeps_leading() {
    let mut c = leader();
    let end = Instant::ZERO + Duration::from_secs(10);
    assert_eq!(run(&mut c, end, end), None, "stepped down while a quorum answered");
}
