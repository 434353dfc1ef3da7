//! Membership changes through the engine: what a caller asks for ([`ChangeMembers`]), how it
//! becomes a target configuration for the core, and the errors a caller sees.
//!
//! A change resolves when the configuration it leads to is committed — for a change through a
//! joint configuration, when the new configuration the leader appends after it is — and
//! returns that configuration.

use std::collections::{BTreeMap, BTreeSet};

use raftkit_core::{
    ChangeError, JointPolicy, LogId, LogIndex, Membership, MembershipChange, NodeId, ProposeError,
};

use crate::error::Fatal;

/// A membership change, relative to the configuration in force.
///
/// Node information is an opaque string carried in the log with the membership — typically
/// the address a [`Network`](crate::Network) adapter dials (the QUIC adapter takes
/// `host:port`); an empty string means none (an in-memory network needs none).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChangeMembers {
    /// Adds voters: new nodes, or learners to promote (their node information is kept if the
    /// string given is empty).
    AddVoters(BTreeMap<NodeId, String>),
    /// Adds learners (non-voting members that receive the log).
    AddLearners(BTreeMap<NodeId, String>),
    /// Removes voters from the cluster.
    RemoveVoters(BTreeSet<NodeId>),
    /// Removes learners from the cluster.
    RemoveLearners(BTreeSet<NodeId>),
    /// Makes learners voters.
    PromoteLearners(BTreeSet<NodeId>),
    /// Makes voters learners.
    DemoteVoters(BTreeSet<NodeId>),
    /// Replaces the whole configuration.
    ReplaceAll {
        /// The voters wanted, with their node information.
        voters: BTreeMap<NodeId, String>,
        /// The learners wanted, with their node information.
        learners: BTreeMap<NodeId, String>,
    },
}

/// How a change is carried out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChangeOptions {
    /// Whether a change of voters goes through a joint configuration. The default,
    /// [`JointPolicy::Auto`], changes a single voter directly and more through a joint
    /// configuration that the leader leaves by itself.
    pub joint: JointPolicy,
    /// Promote learners even if they are far behind the leader's log (they then delay
    /// commits until they catch up).
    pub force: bool,
}

/// Why a membership change did not complete.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChangeMembershipError {
    /// This node is not the leader; ask `leader` if known. Nothing was proposed.
    #[error("not the leader; {}", match leader {
        Some(l) => format!("the leader is node {}", l.0),
        None => "no leader known".to_string(),
    })]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<NodeId>,
    },
    /// Another change is not committed yet (or a joint configuration not left); retry once
    /// it is. Nothing was proposed.
    #[error("a membership change is in progress (configuration entry {index})")]
    InProgress {
        /// The index of the configuration entry in progress.
        index: LogIndex,
    },
    /// The leader was elected moments ago and has not committed an entry of its term yet;
    /// retry shortly. Nothing was proposed.
    #[error("the leader has not committed an entry of its term yet; retry shortly")]
    LeaderNotReady,
    /// The change would leave the cluster without voters. Nothing was proposed.
    #[error("the change would leave no voters")]
    WouldLeaveNoVoters,
    /// The change names a node that is not in the role it needs (removing or demoting a node
    /// that is not a voter, promoting or removing one that is not a learner, adding a voter as
    /// a learner). Nothing was proposed.
    #[error("node {node} {why}")]
    UnknownNode {
        /// The node.
        node: NodeId,
        /// What it is not.
        why: &'static str,
    },
    /// A learner to promote is behind the leader's log; wait for it to catch up (see
    /// [`Raft::add_learner`](crate::Raft::add_learner)'s `blocking`) or force it. Nothing was
    /// proposed.
    #[error("learner {node} is behind: it has the log up to {matched}, the leader up to {last}")]
    LearnerLagging {
        /// The learner.
        node: NodeId,
        /// Its match index.
        matched: LogIndex,
        /// The leader's last index.
        last: LogIndex,
    },
    /// The configuration asked for is the one in force. Nothing was proposed.
    #[error("the configuration is already the one asked for")]
    NoChange,
    /// The configuration asked for is not valid. Nothing was proposed.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// The configuration entry was appended at `log_id` but a new leader replaced it: the
    /// change did not happen. Retry on the new leader.
    #[error(
        "the configuration entry {log_id} was replaced by a new leader; the change did not happen"
    )]
    Overwritten {
        /// Where the entry had been appended.
        log_id: LogId,
    },
    /// The node is shutting down; the change may or may not complete.
    #[error("the node is shutting down; the outcome is unknown")]
    Shutdown,
    /// The node stopped because of a fatal error; the change may or may not complete.
    #[error("the node has failed: {0}")]
    Fatal(Fatal),
}

impl ChangeMembershipError {
    /// Whether the same change may be asked again with a chance of success:
    /// [`NotLeader`](Self::NotLeader) (on the leader), [`InProgress`](Self::InProgress),
    /// [`LeaderNotReady`](Self::LeaderNotReady), [`LearnerLagging`](Self::LearnerLagging) (once
    /// it caught up) and [`Overwritten`](Self::Overwritten). The rest fail the same way every
    /// time or leave the outcome unknown.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ChangeMembershipError::NotLeader { .. }
                | ChangeMembershipError::InProgress { .. }
                | ChangeMembershipError::LeaderNotReady
                | ChangeMembershipError::LearnerLagging { .. }
                | ChangeMembershipError::Overwritten { .. }
        )
    }
}

impl From<ProposeError> for ChangeMembershipError {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::NotLeader { leader } => ChangeMembershipError::NotLeader { leader },
            ProposeError::Membership(c) => match c {
                ChangeError::LeaderNotReady => ChangeMembershipError::LeaderNotReady,
                ChangeError::InProgress { index } => ChangeMembershipError::InProgress { index },
                ChangeError::LearnerLagging { node, matched, last } => {
                    ChangeMembershipError::LearnerLagging { node, matched, last }
                }
                ChangeError::NoChange => ChangeMembershipError::NoChange,
                ChangeError::Invalid(raftkit_core::MembershipError::NoVoters) => {
                    ChangeMembershipError::WouldLeaveNoVoters
                }
                other => ChangeMembershipError::Invalid(other.to_string()),
            },
            other => ChangeMembershipError::Invalid(other.to_string()),
        }
    }
}

fn info_map(m: &BTreeMap<NodeId, String>, current: &Membership) -> BTreeMap<NodeId, String> {
    m.iter()
        .filter_map(|(n, info)| {
            let info = if info.is_empty() { current.node_info(*n)? } else { info.as_str() };
            Some((*n, info.to_string()))
        })
        .collect()
}

/// The configuration `change` asks for, from `current` (not joint).
pub(crate) fn target(
    current: &Membership,
    change: &ChangeMembers,
    options: ChangeOptions,
) -> Result<MembershipChange, ChangeMembershipError> {
    if current.is_uninitialized() {
        return Err(ChangeMembershipError::Invalid("this node has no configuration yet".into()));
    }
    let mut voters: BTreeSet<NodeId> = current.configs().last().cloned().unwrap_or_default();
    let mut learners = current.learners().clone();
    let mut node_info = BTreeMap::new();
    let voter = |n: &NodeId| current.is_voter(*n);
    let learner = |n: &NodeId| current.learners().contains(n);
    let unknown =
        |node: NodeId, why: &'static str| ChangeMembershipError::UnknownNode { node, why };
    match change {
        ChangeMembers::AddVoters(add) => {
            for n in add.keys() {
                learners.remove(n);
                voters.insert(*n);
            }
            node_info = info_map(add, current);
        }
        ChangeMembers::AddLearners(add) => {
            for n in add.keys() {
                if voter(n) {
                    return Err(unknown(*n, "is a voter (demote it instead)"));
                }
                learners.insert(*n);
            }
            node_info = info_map(add, current);
        }
        ChangeMembers::RemoveVoters(rm) => {
            for n in rm {
                if !voter(n) {
                    return Err(unknown(*n, "is not a voter"));
                }
                voters.remove(n);
            }
        }
        ChangeMembers::RemoveLearners(rm) => {
            for n in rm {
                if !learner(n) {
                    return Err(unknown(*n, "is not a learner"));
                }
                learners.remove(n);
            }
        }
        ChangeMembers::PromoteLearners(p) => {
            for n in p {
                if !learner(n) {
                    return Err(unknown(*n, "is not a learner"));
                }
                learners.remove(n);
                voters.insert(*n);
            }
        }
        ChangeMembers::DemoteVoters(d) => {
            for n in d {
                if !voter(n) {
                    return Err(unknown(*n, "is not a voter"));
                }
                voters.remove(n);
                learners.insert(*n);
            }
        }
        ChangeMembers::ReplaceAll { voters: v, learners: l } => {
            voters = v.keys().copied().collect();
            learners = l.keys().copied().collect();
            if let Some(n) = voters.intersection(&learners).next() {
                return Err(unknown(*n, "cannot be both a voter and a learner"));
            }
            node_info = info_map(v, current);
            node_info.extend(info_map(l, current));
        }
    }
    if voters.is_empty() {
        return Err(ChangeMembershipError::WouldLeaveNoVoters);
    }
    Ok(MembershipChange { voters, learners, node_info, joint: options.joint, force: options.force })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u64]) -> BTreeSet<NodeId> {
        v.iter().map(|n| NodeId(*n)).collect()
    }

    #[test]
    fn targets_follow_the_change_and_refuse_unknown_nodes() {
        let m = Membership::with_learners(ids(&[1, 2, 3]), ids(&[4])).unwrap();
        let o = ChangeOptions::default();
        let t = target(&m, &ChangeMembers::PromoteLearners(ids(&[4])), o).unwrap();
        assert_eq!((t.voters, t.learners), (ids(&[1, 2, 3, 4]), ids(&[])));
        let t = target(&m, &ChangeMembers::DemoteVoters(ids(&[3])), o).unwrap();
        assert_eq!((t.voters, t.learners), (ids(&[1, 2]), ids(&[3, 4])));
        let add = BTreeMap::from([(NodeId(5), "h:1".to_string())]);
        let t = target(&m, &ChangeMembers::AddLearners(add), o).unwrap();
        assert_eq!(t.learners, ids(&[4, 5]));
        assert_eq!(t.node_info.get(&NodeId(5)).map(String::as_str), Some("h:1"));
        assert!(matches!(
            target(&m, &ChangeMembers::PromoteLearners(ids(&[9])), o),
            Err(ChangeMembershipError::UnknownNode { .. })
        ));
        assert!(matches!(
            target(&m, &ChangeMembers::RemoveVoters(ids(&[1, 2, 3])), o),
            Err(ChangeMembershipError::WouldLeaveNoVoters)
        ));
        assert!(matches!(
            target(&m, &ChangeMembers::RemoveLearners(ids(&[1])), o),
            Err(ChangeMembershipError::UnknownNode { .. })
        ));
    }
}
