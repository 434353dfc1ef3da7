//! Guards the durability rules at the level of single cores: nothing that depends on durable
//! state leaves the core before `handle_persisted` acknowledges it (etcd #14370, Raft Figure 2),
//! and term and vote travel as one record.

use raftkit_core::{
    Action, AppendEntries, AppendResponse, Config, Entry, HeartbeatAck, InitialState, Instant,
    LogId, LogIndex, Message, MessageBody, NodeId, RaftCore, RequestVote, Role, Term, WriteId,
};

fn core(id: u64, members: &[u64]) -> RaftCore {
    let mut cfg = Config::new(NodeId(id), members.iter().map(|m| NodeId(*m)));
    cfg.pre_vote = false;
    cfg.check_quorum = false;
    RaftCore::new(cfg, InitialState::default(), Instant::ZERO).unwrap()
}

fn drain(c: &mut RaftCore) -> Vec<Action> {
    std::iter::from_fn(|| c.poll_action()).collect()
}

fn persists(actions: &[Action]) -> Vec<WriteId> {
    actions
        .iter()
        .filter_map(|a| if let Action::Persist(p) = a { Some(p.id) } else { None })
        .collect()
}

fn sends(actions: &[Action]) -> Vec<&Message> {
    actions
        .iter()
        .filter_map(|a| if let Action::Send(o) = a { Some(&o.message) } else { None })
        .collect()
}

#[test]
fn vote_grant_waits_for_the_durable_vote_and_term_and_vote_are_one_record() {
    let mut c = core(2, &[1, 2, 3]);
    drain(&mut c);
    let rv = Message {
        term: Term(5),
        body: MessageBody::RequestVote(RequestVote {
            pre_vote: false,
            transfer: false,
            last_log_id: LogId::ZERO,
        }),
    };
    c.handle_message(Instant::ZERO, NodeId(1), rv);
    let actions = drain(&mut c);
    assert!(sends(&actions).is_empty(), "vote granted before it was durable: {actions:?}");
    let Some(Action::Persist(p)) = actions.first() else { panic!("expected a write: {actions:?}") };
    let hs = p.write.hard_state.expect("the write carries the hard state");
    assert_eq!((hs.term, hs.vote), (Term(5), Some(NodeId(1))), "term and vote in one record");
    c.handle_persisted(Instant::ZERO, p.id);
    let actions = drain(&mut c);
    let granted = sends(&actions)
        .iter()
        .any(|m| matches!(m.body, MessageBody::VoteResponse(ref v) if v.granted));
    assert!(granted, "grant released after persist: {actions:?}");
}

#[test]
fn append_ack_waits_for_the_entries_to_be_durable() {
    let mut c = core(2, &[1, 2, 3]);
    drain(&mut c);
    let ae = Message {
        term: Term(1),
        body: MessageBody::AppendEntries(AppendEntries {
            prev_log_id: LogId::ZERO,
            entries: vec![
                Entry::normal(LogId::new(1, 1), &b"a"[..]),
                Entry::blank(LogId::new(1, 2)),
            ],
            leader_commit: LogIndex(0),
        }),
    };
    c.handle_message(Instant::ZERO, NodeId(1), ae);
    let actions = drain(&mut c);
    assert!(sends(&actions).is_empty(), "acknowledged before durable: {actions:?}");
    let ids = persists(&actions);
    assert_eq!(ids.len(), 1);
    c.handle_persisted(Instant::ZERO, ids[0]);
    let actions = drain(&mut c);
    let acks: Vec<_> = sends(&actions)
        .into_iter()
        .filter_map(|m| match &m.body {
            MessageBody::AppendResponse(AppendResponse::Success { match_index }) => {
                Some(*match_index)
            }
            _ => None,
        })
        .collect();
    assert_eq!(acks, vec![LogIndex(2)]);
}

#[test]
fn single_node_commits_only_after_its_own_write_is_durable() {
    let mut c = core(1, &[1]);
    drain(&mut c);
    c.campaign(Instant::ZERO);
    let actions = drain(&mut c);
    assert_eq!(c.role(), Role::Candidate, "own vote not durable yet");
    for id in persists(&actions) {
        c.handle_persisted(Instant::ZERO, id);
    }
    assert_eq!(c.role(), Role::Leader);
    let actions = drain(&mut c);
    c.propose(Instant::ZERO, "x".into()).unwrap();
    let more = drain(&mut c);
    assert_eq!(c.commit_index(), LogIndex(0), "committed before anything was durable");
    assert!(!more.iter().chain(actions.iter()).any(|a| matches!(a, Action::Apply(_))));
    for id in persists(&actions).into_iter().chain(persists(&more)) {
        c.handle_persisted(Instant::ZERO, id);
    }
    assert_eq!(c.commit_index(), LogIndex(2));
    let applied: Vec<_> = drain(&mut c)
        .into_iter()
        .filter_map(|a| if let Action::Apply(r) = a { Some(r.last.index) } else { None })
        .collect();
    assert_eq!(applied.last(), Some(&LogIndex(2)));
}

#[test]
fn stale_term_vote_responses_are_not_counted() {
    let mut c = core(1, &[1, 2, 3]);
    drain(&mut c);
    c.campaign(Instant::ZERO); // term 1
    for id in persists(&drain(&mut c)) {
        c.handle_persisted(Instant::ZERO, id);
    }
    drain(&mut c);
    c.campaign(Instant::from_nanos(1)); // term 2
    for id in persists(&drain(&mut c)) {
        c.handle_persisted(Instant::from_nanos(1), id);
    }
    drain(&mut c);
    assert_eq!(c.term(), Term(2));
    // A grant for term 1 arrives late.
    let stale = Message {
        term: Term(1),
        body: MessageBody::VoteResponse(raftkit_core::VoteResponse {
            pre_vote: false,
            granted: true,
        }),
    };
    c.handle_message(Instant::from_nanos(2), NodeId(2), stale);
    drain(&mut c);
    assert_eq!(c.role(), Role::Candidate, "a term-1 vote elected a term-2 candidate");
}

#[test]
fn malformed_and_foreign_messages_are_dropped() {
    let mut c = core(2, &[1, 2, 3]);
    drain(&mut c);
    let gap = Message {
        term: Term(1),
        body: MessageBody::AppendEntries(AppendEntries {
            prev_log_id: LogId::ZERO,
            entries: vec![Entry::blank(LogId::new(1, 5))],
            leader_commit: LogIndex(0),
        }),
    };
    c.handle_message(Instant::ZERO, NodeId(1), gap);
    assert!(drain(&mut c).is_empty());
    assert_eq!(c.term(), Term(0), "an invalid message must not change state");
    let hb =
        Message { term: Term(9), body: MessageBody::HeartbeatResponse(HeartbeatAck { round: 0 }) };
    c.handle_message(Instant::ZERO, NodeId(42), hb);
    assert_eq!(c.term(), Term(0), "a non-member must not change state");
}

/// A heartbeat response depends on the durable term, not on the log: a follower whose entries
/// are still being written answers heartbeats at once (a slow disk under heavy appends must not
/// make the leader's CheckQuorum step it down), but one whose term the heartbeat itself raised
/// answers only once that term is durable.
#[test]
fn heartbeat_responses_wait_for_the_term_not_for_entries() {
    let heartbeat = |term: u64| Message {
        term: Term(term),
        body: MessageBody::Heartbeat(raftkit_core::Heartbeat { commit: LogIndex(0), round: 0 }),
    };
    let is_hb_response = |actions: &[Action]| {
        sends(actions).iter().any(|m| matches!(m.body, MessageBody::HeartbeatResponse(_)))
    };
    let mut c = core(2, &[1, 2, 3]);
    drain(&mut c);
    // Term 1 becomes durable through the first heartbeat.
    c.handle_message(Instant::ZERO, NodeId(1), heartbeat(1));
    let actions = drain(&mut c);
    assert!(!is_hb_response(&actions), "answered before term 1 was durable: {actions:?}");
    let ids = persists(&actions);
    assert_eq!(ids.len(), 1, "the new term is written: {actions:?}");
    // A second heartbeat while that write is in flight waits for it too.
    c.handle_message(Instant::ZERO, NodeId(1), heartbeat(1));
    let actions = drain(&mut c);
    assert!(!is_hb_response(&actions), "answered while term 1 was being written: {actions:?}");
    c.handle_persisted(Instant::ZERO, ids[0]);
    let released = drain(&mut c);
    let answers = sends(&released)
        .iter()
        .filter(|m| matches!(m.body, MessageBody::HeartbeatResponse(_)) && m.term == Term(1))
        .count();
    assert_eq!(answers, 2, "both answers once the term was durable: {released:?}");
    // Entries arrive and their write stays in flight.
    let ae = Message {
        term: Term(1),
        body: MessageBody::AppendEntries(AppendEntries {
            prev_log_id: LogId::ZERO,
            entries: vec![Entry::normal(LogId::new(1, 1), &b"a"[..])],
            leader_commit: LogIndex(0),
        }),
    };
    c.handle_message(Instant::ZERO, NodeId(1), ae);
    let pending = persists(&drain(&mut c));
    assert_eq!(pending.len(), 1);
    c.handle_message(Instant::ZERO, NodeId(1), heartbeat(1));
    let actions = drain(&mut c);
    assert!(is_hb_response(&actions), "a heartbeat waited for an entry write: {actions:?}");
    // The append acknowledgement still waits for its write.
    let acked = sends(&actions).iter().any(|m| matches!(m.body, MessageBody::AppendResponse(_)));
    assert!(!acked, "acknowledged before durable: {actions:?}");
}

/// An AppendEntries from `leader` at `term`.
fn append(term: u64, prev: LogId, entries: &[(u64, u64)], commit: u64) -> Message {
    Message {
        term: Term(term),
        body: MessageBody::AppendEntries(AppendEntries {
            prev_log_id: prev,
            entries: entries.iter().map(|&(t, i)| Entry::blank(LogId::new(t, i))).collect(),
            leader_commit: LogIndex(commit),
        }),
    }
}

fn applies(actions: &[Action]) -> Vec<LogId> {
    actions
        .iter()
        .filter_map(|a| if let Action::Apply(r) = a { Some(r.last) } else { None })
        .collect()
}

/// Durability is tracked per write, not by matching (term, index): a follower that sees leaders
/// of terms 2, 3 and 4 in quick succession writes (2,1),(2,2), then truncates them for (3,1),
/// then truncates that and writes (2,1),(2,2) again. When the *first* write finishes, the log
/// holds the same ids again, but the second write will still remove them from the store: they
/// are durable only once the third write is. Treating them as durable earlier hands them to the
/// state machine (and drops them from the cache) while a pending write deletes them, so the
/// apply worker reads the wrong entry, and a crash leaves a committed entry missing.
#[test]
fn a_suffix_rewritten_with_the_same_ids_is_durable_only_when_the_rewrite_is() {
    let mut c = core(2, &[1, 2, 3]);
    drain(&mut c);
    let t = Instant::ZERO;

    c.handle_message(t, NodeId(1), append(2, LogId::ZERO, &[(2, 1), (2, 2)], 0));
    let w1 = persists(&drain(&mut c));
    c.handle_message(t, NodeId(3), append(3, LogId::ZERO, &[(3, 1)], 0));
    let w2 = persists(&drain(&mut c));
    c.handle_message(t, NodeId(1), append(4, LogId::ZERO, &[(2, 1), (2, 2)], 2));
    let w3 = persists(&drain(&mut c));
    assert_eq!((w1.len(), w2.len(), w3.len()), (1, 1, 1), "one write per message");
    assert_eq!(c.last_log_id(), LogId::new(2, 2));

    c.handle_persisted(t, w1[0]);
    let after_w1 = drain(&mut c);
    assert!(
        applies(&after_w1).is_empty(),
        "entries handed to apply while a pending write removes them: {after_w1:?}"
    );
    c.handle_persisted(t, w2[0]);
    let after_w2 = drain(&mut c);
    assert!(applies(&after_w2).is_empty(), "applied before the rewrite is durable: {after_w2:?}");
    assert!(
        !sends(&after_w2).iter().any(|m| matches!(
            &m.body,
            MessageBody::AppendResponse(AppendResponse::Success { match_index })
                if m.term == Term(4) && *match_index >= LogIndex(1)
        )),
        "the term-4 leader's entries acknowledged before they are durable: {after_w2:?}"
    );

    c.handle_persisted(t, w3[0]);
    let after_w3 = drain(&mut c);
    assert_eq!(applies(&after_w3), vec![LogId::new(2, 2)], "{after_w3:?}");
}
