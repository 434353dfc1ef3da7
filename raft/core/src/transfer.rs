//! Leadership transfer (Raft thesis §3.10; etcd's MsgTransferLeader/MsgTimeoutNow): the leader
//! stops taking proposals, brings the target up to date, and tells it to campaign at once.

use crate::message::{Message, MessageBody};
use crate::raft::RaftCore;
use crate::time::Instant;
use crate::types::{NodeId, Role};

/// A transfer in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Transfer {
    pub(crate) to: NodeId,
    /// The transfer is given up (and the leader takes proposals again) at this time.
    pub(crate) deadline: Instant,
    /// TimeoutNow went out.
    pub(crate) sent: bool,
}

/// Why a leadership transfer was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// Only the leader can hand leadership over.
    #[error("not the leader; {}", match leader {
        Some(l) => format!("the leader is node {}", l.0),
        None => "no leader known".to_string(),
    })]
    NotLeader {
        /// The leader this node knows of, if any.
        leader: Option<NodeId>,
    },
    /// The target is not a voter of the configuration in force (a learner, a node being
    /// removed, or a stranger).
    #[error("node {} is not a voter of the configuration in force", .0.0)]
    NotAVoter(NodeId),
    /// The target is this node, which already leads.
    #[error("node {} is already the leader", .0.0)]
    AlreadyLeader(NodeId),
    /// Another transfer is in progress.
    #[error("a transfer to node {} is in progress", to.0)]
    InProgress {
        /// Its target.
        to: NodeId,
    },
    /// No other voter exists to hand leadership to.
    #[error("no other voter to transfer leadership to")]
    NoTarget,
}

impl TransferError {
    /// Whether the same request may succeed later (or on the node a hint names).
    pub fn is_retryable(&self) -> bool {
        matches!(self, TransferError::NotLeader { .. } | TransferError::InProgress { .. })
    }
}

impl RaftCore {
    /// Hands leadership to `to`, or with `None` to the most up-to-date other voter. Until the
    /// target wins or the transfer is given up (after `election_timeout_max`), the leader
    /// refuses new proposals and membership changes
    /// ([`ProposeError::TransferInProgress`](crate::ProposeError::TransferInProgress)) and
    /// serves no lease reads. Once the target has every entry, it gets a TimeoutNow and
    /// campaigns at once, without a pre-election, and voters answer it even though they still
    /// hear from this leader. Returns the target.
    ///
    /// # Errors
    /// See [`TransferError`].
    pub fn transfer_leadership(
        &mut self,
        now: Instant,
        to: Option<NodeId>,
    ) -> Result<NodeId, TransferError> {
        self.clock = self.clock.max(now);
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader { leader: self.leader });
        }
        if let Some(t) = &self.transfer {
            return Err(TransferError::InProgress { to: t.to });
        }
        // The voters that stay voters after a joint configuration is left.
        let stays =
            |m: &crate::Membership, n: NodeId| m.configs().last().is_some_and(|c| c.contains(&n));
        let target = match to {
            Some(t) if t == self.id => return Err(TransferError::AlreadyLeader(t)),
            Some(t) if !stays(&self.membership, t) => return Err(TransferError::NotAVoter(t)),
            Some(t) => t,
            None => {
                let membership = &self.membership;
                self.progress
                    .iter()
                    .filter(|(n, _)| stays(membership, **n))
                    .max_by_key(|(n, p)| (p.match_index, std::cmp::Reverse(**n)))
                    .map(|(n, _)| *n)
                    .ok_or(TransferError::NoTarget)?
            }
        };
        tracing::info!(node = %self.id, term = %self.term, to = %target, "transferring leadership");
        self.transfer = Some(Transfer {
            to: target,
            deadline: now + self.cfg.election_timeout_max,
            sent: false,
        });
        self.dirty = true;
        self.maybe_send_timeout_now();
        Ok(target)
    }

    /// The target of the leadership transfer in progress, if any.
    pub fn transfer_target(&self) -> Option<NodeId> {
        self.transfer.map(|t| t.to)
    }

    /// Sends TimeoutNow once the target has every entry of the leader's log.
    pub(crate) fn maybe_send_timeout_now(&mut self) {
        let Some(t) = self.transfer else { return };
        if t.sent {
            return;
        }
        let last = self.log.last().index;
        if self.progress.get(&t.to).is_some_and(|p| p.match_index >= last) {
            tracing::debug!(node = %self.id, to = %t.to, "target caught up; sending TimeoutNow");
            let go = crate::message::TimeoutNow { last: self.log.last() };
            self.send_now(t.to, self.term, crate::raft::Ungated::TimeoutNow(go));
            if let Some(t) = &mut self.transfer {
                t.sent = true;
            }
        }
    }

    /// Gives the transfer up once its deadline passed. A TimeoutNow already sent may still
    /// arrive (late, or duplicated) and start a campaign that voters answer despite their
    /// stickiness: the leader appends a blank entry, which a TimeoutNow sent before it does
    /// not name (the target ignores it once it has the entry), and serves no lease read until
    /// that entry is committed (a target without it cannot win the votes of the quorum that
    /// has it).
    pub(crate) fn check_transfer_deadline(&mut self, now: Instant) {
        let Some(t) = self.transfer else { return };
        if now < t.deadline {
            return;
        }
        tracing::info!(node = %self.id, term = %self.term, "leadership transfer timed out; leading on");
        self.transfer = None;
        if t.sent {
            let log_id =
                crate::types::LogId { term: self.term, index: self.log.last().index.next() };
            self.append_local(vec![crate::types::Entry::blank(log_id)]);
            self.block_lease_until_committed(log_id.index);
        }
    }

    /// TimeoutNow from the leader: campaign now (a voter only, holding exactly the log the
    /// leader had when it sent it).
    pub(crate) fn handle_timeout_now(
        &mut self,
        now: Instant,
        from: NodeId,
        go: crate::message::TimeoutNow,
    ) {
        if self.role == Role::Leader
            || self.leader != Some(from)
            || !self.membership.is_voter(self.id)
            || self.log.last() != go.last
        {
            tracing::debug!(node = %self.id, %from, "ignoring TimeoutNow");
            return;
        }
        tracing::info!(node = %self.id, term = %self.term, %from, "leadership handed over; campaigning");
        if mutant!(self, TimeoutNowKeepsPreVote) && self.cfg.pre_vote {
            self.campaign(now);
            return;
        }
        self.start_transfer_campaign(now);
    }

    /// A vote request that may pass the voters' stickiness: only a campaign the leader asked
    /// for.
    pub(crate) fn is_transfer_vote(msg: &Message) -> bool {
        matches!(&msg.body, MessageBody::RequestVote(rv) if rv.transfer && !rv.pre_vote)
    }
}
