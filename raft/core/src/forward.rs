//! Proposal forwarding: a follower hands client commands to the leader, which appends them and
//! says where; the follower's driver then waits for them to be applied locally.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::action::{Action, Forwarded};
use crate::message::{Propose, ProposeOutcome, ProposeResponse};
use crate::raft::{ProposeError, RaftCore, Ungated};
use crate::time::Instant;
use crate::types::{NodeId, Role, Term};

/// What [`Entry::size_hint`](crate::Entry::size_hint) adds to a command's length.
const ENTRY_OVERHEAD: usize = 24;

/// Why forwarded commands were not appended.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    /// The node they were sent to is not the leader (any more).
    #[error("the node forwarded to is not the leader")]
    NotLeader,
    /// The leader is handing leadership over and takes no new commands meanwhile.
    #[error("the leader is transferring leadership")]
    TransferInProgress,
    /// The batch exceeds the leader's message bounds.
    #[error("the batch exceeds the leader's message bounds")]
    TooLarge,
    /// This node's leader changed before the answer came: the commands may or may not have
    /// been appended.
    #[error("the leader changed before answering; the commands may or may not be appended")]
    LeaderChanged,
}

/// Batches forwarded and not answered: (leader, term) by batch id.
pub(crate) type Forwards = BTreeMap<u64, (NodeId, Term)>;

/// The most forwarded batches waiting for an answer.
const MAX_FORWARDED_BATCHES: usize = 1024;

impl RaftCore {
    /// Sends client commands to the leader this node follows, as batch `batch`: a driver's
    /// name, increasing from call to call and across restarts of this node (the engine starts
    /// from the wall clock), since the leader drops a batch whose id is not above the last it
    /// took from this node (a duplicate). The leader appends them (in order, at
    /// consecutive indexes) and the answer comes as an [`Action::Forwarded`] naming `batch`;
    /// if this node's leader changes first, the action says
    /// [`ForwardError::LeaderChanged`]. Returns the leader forwarded to.
    ///
    /// # Errors
    /// [`ProposeError::NotLeader`] if this node knows no leader, or is the leader itself (it
    /// proposes directly); [`ProposeError::TooManyForwarded`] if too many batches wait.
    pub fn forward(
        &mut self,
        now: Instant,
        batch: u64,
        commands: Vec<Bytes>,
    ) -> Result<NodeId, ProposeError> {
        self.clock = self.clock.max(now);
        let leader = match self.leader {
            Some(l) if l != self.id && self.role != Role::Leader => l,
            _ => return Err(ProposeError::NotLeader { leader: self.leader }),
        };
        if self.forwards.len() >= MAX_FORWARDED_BATCHES {
            return Err(ProposeError::TooManyForwarded);
        }
        self.forwards.insert(batch, (leader, self.term));
        self.send_now(leader, self.term, Ungated::Propose(Propose { batch, commands }));
        Ok(leader)
    }

    /// A follower's forwarded commands reached this node.
    ///
    /// A follower's batch ids increase, so a batch at or below the highest seen from it this
    /// leadership is a duplicate (the network may deliver a message twice) or overtaken by a
    /// later one: it is dropped unanswered (its sender times out), never appended twice.
    pub(crate) fn handle_propose(&mut self, now: Instant, from: NodeId, p: Propose) {
        if self.role == Role::Leader {
            let seen = self.forwards_seen.entry(from).or_insert(0);
            if p.batch <= *seen {
                tracing::debug!(node = %self.id, %from, batch = p.batch, "dropping a duplicate or overtaken forwarded batch");
                return;
            }
            *seen = p.batch;
        }
        let bytes: usize = p.commands.iter().map(|c| ENTRY_OVERHEAD + c.len()).sum();
        let outcome = if self.role != Role::Leader {
            ProposeOutcome::NotLeader
        } else if self.transfer.is_some() {
            ProposeOutcome::TransferInProgress
        } else if p.commands.len() > self.cfg.max_proposal_batch
            || (p.commands.len() > 1 && bytes > self.cfg.max_bytes_per_message)
        {
            ProposeOutcome::TooLarge
        } else {
            match self.propose_batch(now, p.commands.into_iter()) {
                Ok(first) => ProposeOutcome::Appended(first),
                Err(ProposeError::TransferInProgress { .. }) => ProposeOutcome::TransferInProgress,
                Err(_) => ProposeOutcome::NotLeader,
            }
        };
        let resp = ProposeResponse { batch: p.batch, outcome };
        self.send_now(from, self.term, Ungated::ProposeResponse(resp));
    }

    /// The leader answered forwarded commands.
    pub(crate) fn handle_propose_response(&mut self, from: NodeId, resp: ProposeResponse) {
        if self.forwards.get(&resp.batch) != Some(&(from, self.term)) {
            return;
        }
        self.forwards.remove(&resp.batch);
        let result = match resp.outcome {
            ProposeOutcome::Appended(first) => Ok(first),
            ProposeOutcome::NotLeader => Err(ForwardError::NotLeader),
            ProposeOutcome::TransferInProgress => Err(ForwardError::TransferInProgress),
            ProposeOutcome::TooLarge => Err(ForwardError::TooLarge),
        };
        self.actions.push_back(Action::Forwarded(Forwarded { batch: resp.batch, result }));
    }

    /// This node's leader changed: answers for batches forwarded to the old one will not come.
    pub(crate) fn forwards_leader_changed(&mut self) {
        let (leader, term) = (self.leader, self.term);
        let lost: Vec<u64> = self
            .forwards
            .iter()
            .filter(|(_, (l, t))| Some(*l) != leader || *t != term)
            .map(|(b, _)| *b)
            .collect();
        for batch in lost {
            self.forwards.remove(&batch);
            self.actions.push_back(Action::Forwarded(Forwarded {
                batch,
                result: Err(ForwardError::LeaderChanged),
            }));
        }
    }
}
