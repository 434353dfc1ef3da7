//! Guards the core against peers that send well-formed but hostile values: terms and indexes at
//! or near `u64::MAX`, hints past the rejected index, a candidate claiming a log from a future
//! term. Such a message is refused (never acted on), never panics the core, and never moves its
//! term; random messages with edge values, fed to followers, candidates and leaders alike, never
//! panic it or send its term backwards.

#![allow(clippy::print_stderr)] // the seed, for replay

use bytes::Bytes;
use raftkit_core::{
    Action, AppendEntries, AppendResponse, Config, Entry, Heartbeat, HeartbeatAck, InitialState,
    Instant, LogId, LogIndex, MAX_TERM, Membership, Message, MessageBody, NodeId, RaftCore,
    RequestVote, Role, SnapshotMeta, SnapshotResponse, Term, VoteResponse,
};

fn core(id: u64, pre_vote: bool) -> RaftCore {
    let mut cfg = Config::new(NodeId(id), [NodeId(1), NodeId(2), NodeId(3)]);
    cfg.pre_vote = pre_vote;
    cfg.seed = id;
    RaftCore::new(cfg, InitialState::default(), Instant::ZERO).unwrap()
}

/// Carries out every action the way a driver with instant storage would (sends are dropped).
fn settle(c: &mut RaftCore, now: Instant) {
    for _ in 0..100 {
        let Some(a) = c.poll_action() else { return };
        match a {
            Action::Persist(p) => c.handle_persisted(now, p.id),
            Action::Apply(req) => c.handle_applied(req.last.index),
            _ => {}
        }
    }
}

/// A leader of term 1 in a 3-node cluster (its peers' answers are simulated).
fn leader() -> RaftCore {
    let mut c = core(1, false);
    let now = Instant::ZERO;
    c.campaign(now);
    settle(&mut c, now);
    let granted = MessageBody::VoteResponse(VoteResponse { pre_vote: false, granted: true });
    c.handle_message(now, NodeId(2), Message { term: c.term(), body: granted });
    settle(&mut c, now);
    assert_eq!(c.role(), Role::Leader);
    c
}

fn hostile() -> Vec<Message> {
    let max = LogId { term: Term(u64::MAX), index: LogIndex(u64::MAX) };
    let huge = Term(u64::MAX);
    let append = |term, prev, commit| Message {
        term,
        body: MessageBody::AppendEntries(AppendEntries {
            prev_log_id: prev,
            entries: vec![],
            leader_commit: commit,
        }),
    };
    vec![
        Message {
            term: huge,
            body: MessageBody::RequestVote(RequestVote {
                pre_vote: false,
                transfer: false,
                last_log_id: max,
            }),
        },
        Message {
            term: huge,
            body: MessageBody::RequestVote(RequestVote {
                pre_vote: true,
                transfer: false,
                last_log_id: max,
            }),
        },
        // A candidate in term 2 whose log claims a term-9 entry: it would win every vote.
        Message {
            term: Term(2),
            body: MessageBody::RequestVote(RequestVote {
                pre_vote: false,
                transfer: false,
                last_log_id: LogId::new(9, 100),
            }),
        },
        append(Term(2), LogId { term: Term(1), index: LogIndex(u64::MAX) }, LogIndex(0)),
        append(Term(2), LogId::new(1, 1), LogIndex(u64::MAX)),
        append(huge, LogId::ZERO, LogIndex(0)),
        Message {
            term: Term(2),
            body: MessageBody::AppendEntries(AppendEntries {
                prev_log_id: LogId { term: Term(1), index: LogIndex(u64::MAX - 1) },
                entries: vec![Entry::normal(
                    LogId { term: Term(2), index: LogIndex(u64::MAX) },
                    Bytes::from_static(b"x"),
                )],
                leader_commit: LogIndex(0),
            }),
        },
        Message {
            term: Term(1),
            body: MessageBody::AppendResponse(AppendResponse::Reject {
                rejected: LogIndex(u64::MAX),
                hint: LogId { term: Term(0), index: LogIndex(u64::MAX) },
            }),
        },
        Message {
            term: Term(1),
            body: MessageBody::AppendResponse(AppendResponse::Success {
                match_index: LogIndex(u64::MAX),
            }),
        },
        Message {
            term: huge,
            body: MessageBody::Heartbeat(Heartbeat { commit: LogIndex(1), round: 0 }),
        },
        Message {
            term: Term(2),
            body: MessageBody::Heartbeat(Heartbeat { commit: LogIndex(u64::MAX), round: 0 }),
        },
        Message {
            term: Term(1),
            body: MessageBody::SnapshotResponse(SnapshotResponse {
                snapshot: max,
                next_offset: u64::MAX,
                installed: true,
            }),
        },
        Message {
            term: Term(2),
            body: MessageBody::InstallSnapshot(raftkit_core::InstallSnapshot {
                meta: SnapshotMeta {
                    last_log_id: LogId { term: Term(1), index: LogIndex(u64::MAX) },
                    membership: Membership::new([NodeId(1), NodeId(2), NodeId(3)]).unwrap(),
                    size: 1,
                    checksum: 0,
                },
                offset: 0,
                data: Bytes::from_static(b"x"),
                done: true,
            }),
        },
    ]
}

#[test]
fn hostile_values_are_refused_without_moving_the_term() {
    for m in hostile() {
        assert!(m.validate().is_err(), "accepted as valid: {m:?}");
        for mut c in [core(2, true), core(2, false), leader()] {
            let (term, role, commit) = (c.term(), c.role(), c.commit_index());
            c.handle_message(Instant::ZERO, NodeId(3), m.clone());
            settle(&mut c, Instant::ZERO);
            assert_eq!(c.term(), term, "term moved after {m:?}");
            assert_eq!(c.role(), role, "role changed after {m:?}");
            assert_eq!(c.commit_index(), commit, "commit moved after {m:?}");
        }
    }
}

/// SplitMix64, so the test replays from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value that is often at an edge: 0, 1, small, the range limit and around it, the top.
    fn edgy(&mut self) -> u64 {
        match self.next() % 8 {
            0 => 0,
            1 => 1,
            2 => self.next() % 8,
            3 => MAX_TERM,
            4 => MAX_TERM + 1,
            5 => u64::MAX,
            6 => u64::MAX - 1,
            _ => self.next(),
        }
    }

    fn log_id(&mut self) -> LogId {
        LogId { term: Term(self.edgy()), index: LogIndex(self.edgy()) }
    }

    fn message(&mut self) -> Message {
        let term = Term(self.edgy());
        let body = match self.next() % 7 {
            0 => MessageBody::RequestVote(RequestVote {
                pre_vote: self.next() % 2 == 0,
                transfer: false,
                last_log_id: self.log_id(),
            }),
            1 => MessageBody::VoteResponse(VoteResponse {
                pre_vote: self.next() % 2 == 0,
                granted: self.next() % 2 == 0,
            }),
            2 => {
                let prev = self.log_id();
                let n = self.next() % 3;
                let entries = (1..=n)
                    .map(|k| {
                        let id = LogId {
                            term: Term(prev.term.0.saturating_add(self.next() % 2)),
                            index: LogIndex(prev.index.0.saturating_add(k)),
                        };
                        Entry::normal(id, Bytes::from_static(b"e"))
                    })
                    .collect();
                MessageBody::AppendEntries(AppendEntries {
                    prev_log_id: prev,
                    entries,
                    leader_commit: LogIndex(self.edgy()),
                })
            }
            3 => MessageBody::AppendResponse(if self.next() % 2 == 0 {
                AppendResponse::Success { match_index: LogIndex(self.edgy()) }
            } else {
                AppendResponse::Reject { rejected: LogIndex(self.edgy()), hint: self.log_id() }
            }),
            4 => MessageBody::Heartbeat(Heartbeat { commit: LogIndex(self.edgy()), round: 0 }),
            5 => MessageBody::HeartbeatResponse(HeartbeatAck { round: self.next() % 4 }),
            _ => MessageBody::SnapshotResponse(SnapshotResponse {
                snapshot: self.log_id(),
                next_offset: self.edgy(),
                installed: self.next() % 2 == 0,
            }),
        };
        Message { term, body }
    }
}

#[test]
fn random_edge_values_never_panic_or_send_the_term_backwards() {
    let seed: u64 = std::env::var("RAFTKIT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(7);
    eprintln!("seed {seed} (replay with RAFTKIT_SEED={seed})");
    let mut rng = Rng(seed);
    for round in 0..300 {
        let mut c = match round % 3 {
            0 => core(2, true),
            1 => core(2, false),
            _ => leader(),
        };
        let mut now = Instant::ZERO;
        for _ in 0..100 {
            let before = c.term();
            let from = NodeId(1 + rng.next() % 3);
            c.handle_message(now, from, rng.message());
            settle(&mut c, now);
            if rng.next() % 4 == 0 {
                if let Some(t) = c.poll_timeout() {
                    now = t;
                    c.handle_timeout(now);
                    settle(&mut c, now);
                }
            }
            assert!(c.term() >= before, "seed {seed}: term went back from {before}");
            // A node may campaign past the largest term it accepts from peers, one term per
            // election, but nothing ever jumps or wraps.
            assert!(c.term().0 <= MAX_TERM + 1_000, "seed {seed}: term {} out of range", c.term());
            assert!(c.commit_index() <= c.last_log_id().index, "seed {seed}: commit past the log");
        }
    }
}

#[test]
fn the_range_limits_are_exact() {
    let hb = |term: u64, commit: u64| Message {
        term: Term(term),
        body: MessageBody::Heartbeat(Heartbeat { commit: LogIndex(commit), round: 0 }),
    };
    assert!(hb(MAX_TERM, raftkit_core::MAX_INDEX).validate().is_ok());
    assert!(hb(MAX_TERM + 1, 0).validate().is_err());
    assert!(hb(1, raftkit_core::MAX_INDEX + 1).validate().is_err());
    // A pre-vote asks about the term after the candidate's; its log is from its own term.
    let pre_vote = Message {
        term: Term(5),
        body: MessageBody::RequestVote(RequestVote {
            pre_vote: true,
            transfer: false,
            last_log_id: LogId::new(4, 9),
        }),
    };
    assert!(pre_vote.validate().is_ok());
}

/// An AppendEntries of `count` blank entries from a leader of term 1.
fn append_of(count: u64) -> Message {
    Message {
        term: Term(1),
        body: MessageBody::AppendEntries(AppendEntries {
            prev_log_id: LogId::ZERO,
            entries: (1..=count).map(|i| Entry::blank(LogId::new(1, i))).collect(),
            leader_commit: LogIndex(0),
        }),
    }
}

/// What a sender with the same `Config` would never send is refused on receipt: more entries
/// than `max_entries_per_message`, or more entry bytes than `max_bytes_per_message` in a message
/// of several entries (a single entry may be larger). Nothing of it is written.
#[test]
fn appends_over_the_configured_bounds_are_refused_on_receipt() {
    let mut cfg = Config::new(NodeId(2), [NodeId(1), NodeId(2), NodeId(3)]);
    cfg.max_entries_per_message = 100;
    cfg.max_bytes_per_message = 4096;
    let mut c = RaftCore::new(cfg, InitialState::default(), Instant::ZERO).unwrap();
    settle(&mut c, Instant::ZERO);

    c.handle_message(Instant::ZERO, NodeId(1), append_of(101));
    settle(&mut c, Instant::ZERO);
    assert_eq!(c.last_log_id(), LogId::ZERO, "101 entries over a bound of 100 were appended");

    let big = |i: u64| Entry::normal(LogId::new(1, i), vec![7u8; 3000]);
    let over_bytes = Message {
        term: Term(1),
        body: MessageBody::AppendEntries(AppendEntries {
            prev_log_id: LogId::ZERO,
            entries: vec![big(1), big(2)],
            leader_commit: LogIndex(0),
        }),
    };
    c.handle_message(Instant::ZERO, NodeId(1), over_bytes);
    settle(&mut c, Instant::ZERO);
    assert_eq!(c.last_log_id(), LogId::ZERO, "6,000 entry bytes over a bound of 4,096 appended");

    // Within the bounds (and one entry over the byte bound on its own) is accepted.
    let single = Message {
        term: Term(1),
        body: MessageBody::AppendEntries(AppendEntries {
            prev_log_id: LogId::ZERO,
            entries: vec![Entry::normal(LogId::new(1, 1), vec![7u8; 10_000])],
            leader_commit: LogIndex(0),
        }),
    };
    c.handle_message(Instant::ZERO, NodeId(1), single);
    settle(&mut c, Instant::ZERO);
    assert_eq!(c.last_log_id(), LogId::new(1, 1));
    let mut within = append_of(101);
    if let MessageBody::AppendEntries(a) = &mut within.body {
        a.entries.truncate(100);
        a.entries.remove(0);
        a.prev_log_id = LogId::new(1, 1);
    }
    c.handle_message(Instant::ZERO, NodeId(1), within);
    settle(&mut c, Instant::ZERO);
    assert_eq!(c.last_log_id(), LogId::new(1, 100));
}

/// A frame of empty entries just under a transport's size limit used to decode to millions of
/// entries (about 30 times the frame in memory) before anything looked at it. The decoder now
/// refuses a claimed count above `MAX_ENTRIES_PER_MESSAGE` before reading any entry.
#[test]
fn a_frame_claiming_more_entries_than_the_protocol_allows_does_not_decode() {
    use raftkit_core::{MAX_ENTRIES_PER_MESSAGE, codec};
    let at_limit = append_of(MAX_ENTRIES_PER_MESSAGE as u64);
    let bytes = codec::encode_message(&at_limit).unwrap();
    assert_eq!(codec::decode_message(&bytes).unwrap(), at_limit);

    let over = append_of(MAX_ENTRIES_PER_MESSAGE as u64 + 1);
    let bytes = codec::encode_message(&over).unwrap();
    let err = codec::decode_message(&bytes).expect_err("over the protocol's entry count");
    assert!(err.to_string().contains("entries"), "{err}");

    // Config cannot ask for more than the decoder accepts.
    let mut cfg = Config::new(NodeId(1), [NodeId(1)]);
    cfg.max_entries_per_message = MAX_ENTRIES_PER_MESSAGE + 1;
    assert!(cfg.validate().is_err());
}
