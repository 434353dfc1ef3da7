//! Message dispatch by term, timeouts, and elections: PreVote, votes, CheckQuorum and leader
//! stickiness.

use std::collections::BTreeMap;

use crate::message::{HeartbeatAck, Message, MessageBody, RequestVote, VoteResponse};
use crate::progress::Progress;
use crate::quorum::VoteResult;
use crate::raft::{RaftCore, Ungated};
use crate::time::Instant;
use crate::types::{Entry, LogId, NodeId, Role, Term};

impl RaftCore {
    /// Routes a validated message: first by term (Raft §5.1), then by kind and role.
    pub(crate) fn step(&mut self, now: Instant, from: NodeId, msg: Message) {
        if msg.term > self.term {
            match &msg.body {
                MessageBody::RequestVote(rv) => {
                    let quiet = self.restart_quiet_until.is_some_and(|t| now < t);
                    if (self.in_lease(now) || quiet) && !Self::is_transfer_vote(&msg) {
                        // Leader stickiness: a live leader exists, so this candidate is
                        // disruptive (e.g. it was partitioned away). Not even the term moves.
                        tracing::debug!(node = %self.id, %from, term = %msg.term, "ignoring vote request: leader is live");
                        return;
                    }
                    if !rv.pre_vote {
                        self.become_follower(now, msg.term, None);
                    }
                }
                // A granted pre-vote echoes the term we asked about; it is not a newer term.
                MessageBody::VoteResponse(vr) if vr.pre_vote && vr.granted => {}
                MessageBody::AppendEntries(_)
                | MessageBody::Heartbeat(_)
                | MessageBody::InstallSnapshot(_) => {
                    self.become_follower(now, msg.term, Some(from));
                }
                _ => self.become_follower(now, msg.term, None),
            }
        } else if msg.term < self.term {
            match &msg.body {
                MessageBody::ReadIndexRequest(_) | MessageBody::Propose(_) => {
                    // A follower of an old leader: tell it the term, so it finds the new one.
                    let reply = Message {
                        term: self.term,
                        body: MessageBody::HeartbeatResponse(HeartbeatAck { round: 0 }),
                    };
                    self.send_after_term_durable(from, reply);
                }
                MessageBody::AppendEntries(_)
                | MessageBody::Heartbeat(_)
                | MessageBody::InstallSnapshot(_) => {
                    // A stale leader, or this node raised its term while partitioned. Tell the
                    // leader directly: with CheckQuorum/PreVote our vote requests would not
                    // reach it, and even without them they are dropped when this node is no
                    // longer a voter (demoted while it campaigned): without an answer, the
                    // leader would replicate to this node for ever in vain. It steps down and
                    // a fresh election includes us.
                    let reply = Message {
                        term: self.term,
                        body: MessageBody::HeartbeatResponse(HeartbeatAck { round: 0 }),
                    };
                    self.send_after_term_durable(from, reply);
                }
                #[cfg(feature = "mutants")]
                MessageBody::VoteResponse(vr) if mutant!(self, CountStaleTermVotes) => {
                    let vr = vr.clone();
                    self.handle_vote_response(now, from, msg.term, vr);
                }
                MessageBody::RequestVote(rv) if rv.pre_vote => {
                    // Answer so a pre-candidate behind in term learns the current one.
                    let body =
                        MessageBody::VoteResponse(VoteResponse { pre_vote: true, granted: false });
                    self.send_after_persist(from, Message { term: self.term, body });
                }
                _ => {
                    tracing::trace!(node = %self.id, %from, kind = msg.kind(), "ignoring stale-term message");
                }
            }
            return;
        }

        match msg.body {
            MessageBody::RequestVote(rv) => self.handle_vote_request(now, from, msg.term, rv),
            MessageBody::VoteResponse(vr) => self.handle_vote_response(now, from, msg.term, vr),
            MessageBody::AppendEntries(ae) => {
                if self.accept_leader(now, from) {
                    self.handle_append(from, ae);
                }
            }
            MessageBody::Heartbeat(hb) => {
                if self.accept_leader(now, from) {
                    self.handle_heartbeat(from, hb);
                }
            }
            MessageBody::AppendResponse(resp) => {
                if self.role == Role::Leader {
                    self.handle_append_response(now, from, resp);
                }
            }
            MessageBody::HeartbeatResponse(ack) => {
                if self.role == Role::Leader {
                    self.handle_heartbeat_response(now, from);
                    self.on_round_ack(from, ack.round);
                }
            }
            MessageBody::ReadIndexRequest(req) => self.handle_read_index_request(now, from, req),
            MessageBody::ReadIndexResponse(resp) => {
                if self.role != Role::Leader && self.leader == Some(from) {
                    self.handle_read_index_response(from, resp);
                }
            }
            MessageBody::TimeoutNow(t) => self.handle_timeout_now(now, from, t),
            MessageBody::Propose(p) => self.handle_propose(now, from, p),
            MessageBody::ProposeResponse(resp) => {
                if self.role != Role::Leader && self.leader == Some(from) {
                    self.handle_propose_response(from, resp);
                }
            }
            MessageBody::InstallSnapshot(chunk) => {
                if self.accept_leader(now, from) {
                    self.handle_install_snapshot(from, chunk);
                }
            }
            MessageBody::SnapshotResponse(resp) => {
                if self.role == Role::Leader {
                    self.handle_snapshot_response(now, from, resp);
                }
            }
        }
    }

    /// A message from the leader of the current term: follow it. Returns false if this node is
    /// itself the leader of this term, which would mean two leaders in one term.
    fn accept_leader(&mut self, now: Instant, from: NodeId) -> bool {
        if self.role == Role::Leader {
            tracing::error!(node = %self.id, %from, term = %self.term, "two leaders in one term; ignoring");
            return false;
        }
        if self.role != Role::Follower && self.role != Role::Learner || self.leader != Some(from) {
            // A (pre-)candidate that hears from the term's leader steps down, keeping its vote.
            self.become_follower(now, self.term, Some(from));
        }
        self.leader_heard_at = Some(now);
        self.reset_election_deadline(now);
        true
    }

    /// Whether this node heard from a live leader recently enough to refuse vote requests.
    pub(crate) fn in_lease(&self, now: Instant) -> bool {
        if !self.cfg.check_quorum || self.leader.is_none() {
            return false;
        }
        if self.role == Role::Leader {
            // CheckQuorum makes a leader step down when it loses its quorum.
            return true;
        }
        self.leader_heard_at.is_some_and(|t| now < t + self.cfg.election_timeout_min)
    }

    pub(crate) fn tick(&mut self, now: Instant) {
        match self.role {
            Role::Leader => {
                if now >= self.heartbeat_deadline {
                    self.heartbeat_deadline = now + self.cfg.heartbeat_interval;
                    self.broadcast_heartbeat(now);
                }
                if self.cfg.check_quorum && now >= self.quorum_deadline {
                    self.check_quorum(now);
                }
                if self.role == Role::Leader {
                    self.check_transfer_deadline(now);
                }
            }
            Role::Learner => {}
            Role::Follower | Role::PreCandidate | Role::Candidate => {
                if now >= self.election_deadline {
                    if self.cfg.pre_vote {
                        self.become_pre_candidate(now);
                    } else {
                        self.become_candidate(now);
                    }
                }
            }
        }
    }

    /// CheckQuorum: step down once a quorum has not been heard from for `election_timeout_min`
    /// (each follower counts as reachable for that long after its last answer). The next check
    /// is due when the first follower heard from so far would lapse, so a leader steps down
    /// within `election_timeout_min` of last hearing from a quorum, not a whole check period
    /// later.
    fn check_quorum(&mut self, now: Instant) {
        let (id, window) = (self.id, self.cfg.election_timeout_min);
        let progress = &self.progress;
        let fresh =
            |n: NodeId| n == id || progress.get(&n).is_some_and(|p| now < p.last_heard + window);
        if !self.membership.has_quorum(fresh) {
            tracing::info!(node = %self.id, term = %self.term, "lost contact with a quorum; stepping down");
            self.become_follower(now, self.term, None);
            return;
        }
        self.quorum_deadline = self
            .progress
            .values()
            .map(|p| p.last_heard + window)
            .filter(|lapse| *lapse > now)
            .min()
            .unwrap_or(now + window);
    }

    /// Becomes a follower in `term`. A higher term clears the vote; the same term keeps it
    /// (forgetting it would allow a second vote in this term).
    pub(crate) fn become_follower(&mut self, now: Instant, term: Term, leader: Option<NodeId>) {
        #[cfg(feature = "mutants")]
        if term <= self.term && mutant!(self, ForgetVoteOnSameTermStepDown) {
            self.vote = None;
        }
        let term_changed = term > self.term;
        if term_changed {
            self.term = term;
            self.vote = None;
        }
        let was_leader = self.role == Role::Leader;
        self.role = if self.membership.is_voter(self.id) { Role::Follower } else { Role::Learner };
        if self.leader != leader {
            tracing::debug!(node = %self.id, %term, ?leader, "following");
        }
        let leader_changed = self.leader != leader || term_changed;
        self.leader = leader;
        self.transfer = None;
        if was_leader || leader_changed {
            self.reads_role_changed();
        }
        self.forwards_leader_changed();
        self.leader_heard_at = None;
        self.votes.clear();
        self.progress.clear();
        self.reset_election_deadline(now);
    }

    fn become_pre_candidate(&mut self, now: Instant) {
        tracing::debug!(node = %self.id, term = %self.term, "starting pre-election");
        self.role = Role::PreCandidate;
        self.leader = None;
        self.reads_role_changed();
        self.forwards_leader_changed();
        self.leader_heard_at = None;
        self.progress.clear();
        self.votes = BTreeMap::from([(self.id, true)]);
        self.reset_election_deadline(now);
        let rv = RequestVote { pre_vote: true, transfer: false, last_log_id: self.log.last() };
        for to in self.voter_peers() {
            self.send_now(to, self.term.next(), Ungated::PreVote(rv.clone()));
        }
        self.check_votes(now);
    }

    /// Campaigns at once for a leadership transfer: no pre-election, and the vote requests
    /// say so (voters answer them despite their stickiness).
    pub(crate) fn start_transfer_campaign(&mut self, now: Instant) {
        self.campaign_transfer = true;
        self.become_candidate(now);
    }

    fn become_candidate(&mut self, now: Instant) {
        let transfer = std::mem::take(&mut self.campaign_transfer);
        self.term = self.term.next();
        self.vote = Some(self.id);
        tracing::debug!(node = %self.id, term = %self.term, transfer, "starting election");
        self.role = Role::Candidate;
        self.leader = None;
        self.reads_role_changed();
        self.forwards_leader_changed();
        self.leader_heard_at = None;
        self.progress.clear();
        self.votes.clear();
        self.reset_election_deadline(now);
        let msg = Message {
            term: self.term,
            body: MessageBody::RequestVote(RequestVote {
                pre_vote: false,
                transfer,
                last_log_id: self.log.last(),
            }),
        };
        // The request advertises our term and log; it must not outlive a crash that loses them.
        for to in self.voter_peers() {
            self.send_after_persist(to, msg.clone());
        }
        // Our own vote counts once it is durable (see `check_votes`).
        self.check_votes(now);
    }

    pub(crate) fn become_leader(&mut self, now: Instant) {
        tracing::info!(node = %self.id, term = %self.term, "became leader");
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.votes.clear();
        let next = self.log.last().index.next();
        let (count, bytes) = (self.cfg.max_inflight_messages, self.cfg.max_inflight_bytes);
        self.progress = self
            .membership
            .nodes()
            .into_iter()
            .filter(|n| *n != self.id)
            .map(|n| (n, Progress::new(next, count, bytes, now)))
            .collect();
        self.heartbeat_deadline = now + self.cfg.heartbeat_interval;
        self.quorum_deadline = now + self.cfg.election_timeout_min;
        // A no-op of the new term lets entries of earlier terms commit (Raft §5.4.2, Figure 8).
        let log_id = LogId { term: self.term, index: next };
        self.leader_noop = next;
        self.transfer = None;
        self.forwards_seen.clear();
        self.append_local(vec![Entry::blank(log_id)]);
        self.maybe_commit();
    }

    fn voter_peers(&self) -> Vec<NodeId> {
        self.membership.voters().into_iter().filter(|n| *n != self.id).collect()
    }

    fn handle_vote_request(&mut self, now: Instant, from: NodeId, term: Term, rv: RequestVote) {
        // A pre-vote for a future term is granted without a vote of ours being at stake.
        let free_to_vote = self.vote == Some(from)
            || (self.vote.is_none() && self.leader.is_none())
            || (rv.pre_vote && term > self.term);
        let grant = free_to_vote
            && self.membership.is_voter(from)
            && self.membership.is_voter(self.id)
            && self.log.is_up_to_date(rv.last_log_id);
        tracing::debug!(
            node = %self.id, %from, %term, pre_vote = rv.pre_vote, grant,
            candidate_last = %rv.last_log_id, our_last = %self.log.last(), "vote request"
        );
        let reply_term = if grant {
            if !rv.pre_vote {
                self.vote = Some(from);
                self.reset_election_deadline(now);
            }
            // A granted pre-vote echoes the asked-for term; a real vote is in our (equal) term.
            term
        } else {
            self.term
        };
        let body =
            MessageBody::VoteResponse(VoteResponse { pre_vote: rv.pre_vote, granted: grant });
        let msg = Message { term: reply_term, body };
        #[cfg(feature = "mutants")]
        if grant && !rv.pre_vote && mutant!(self, GrantVoteBeforePersist) {
            self.send_unsafe_mutant(from, msg);
            return;
        }
        // The grant is released only once the vote is durable (and with it, our term).
        self.send_after_persist(from, msg);
    }

    fn handle_vote_response(&mut self, now: Instant, from: NodeId, term: Term, vr: VoteResponse) {
        let expected = match self.role {
            Role::PreCandidate if vr.pre_vote => self.term.next(),
            Role::Candidate if !vr.pre_vote => self.term,
            _ => return,
        };
        // A pre-vote rejection arrives in the responder's (our) term; grants in the asked one.
        let stale_ok = mutant!(self, CountStaleTermVotes) && term < expected;
        if term != expected && !(vr.pre_vote && !vr.granted && term == self.term) && !stale_ok {
            return;
        }
        self.votes.insert(from, vr.granted);
        self.check_votes(now);
    }

    /// Counts the votes of the current (pre-)election and acts on the outcome.
    pub(crate) fn check_votes(&mut self, now: Instant) {
        let (id, votes) = (self.id, &self.votes);
        // A candidate's own vote counts only once it is durable: otherwise a crash could let
        // it vote for someone else in the same term after winning with its own vote.
        let self_vote = match self.role {
            Role::PreCandidate => Some(true),
            Role::Candidate => {
                let d = self.durable_hs;
                (d.term == self.term && d.vote == Some(id)).then_some(true)
            }
            _ => return,
        };
        let result = self
            .quorum_membership()
            .vote_result(|n| if n == id { self_vote } else { votes.get(&n).copied() });
        match (result, self.role) {
            (VoteResult::Won, Role::PreCandidate) => self.become_candidate(now),
            (VoteResult::Won, Role::Candidate) => self.become_leader(now),
            (VoteResult::Lost, _) => {
                tracing::debug!(node = %self.id, term = %self.term, "election lost");
                self.become_follower(now, self.term, None);
            }
            _ => {}
        }
    }
}
