//! Cluster configurations: the voters (one set, or two during joint consensus) and the learners.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::quorum::{self, VoteResult};
use crate::types::{LogIndex, NodeId};

/// A cluster configuration.
///
/// Normally one set of voters; during a joint-consensus change, two (the old and the new), and a
/// decision needs a majority of each. Learners receive the log but neither vote nor count toward
/// any quorum. Every quorum question in raftkit goes through this type, so joint configurations
/// and learners change no replication or election code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    configs: Vec<BTreeSet<NodeId>>,
    learners: BTreeSet<NodeId>,
}

/// Why a membership value is not usable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// A configuration has no voters.
    #[error("a configuration must have at least one voter")]
    NoVoters,
    /// More than two voter sets (joint consensus uses exactly two).
    #[error("a membership has one voter set, or two during a joint change; got {0}")]
    TooManyConfigs(usize),
    /// A node is both a voter and a learner.
    #[error("node {0} is both a voter and a learner")]
    VoterIsLearner(NodeId),
}

impl Membership {
    /// A single configuration with the given voters and no learners.
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Result<Membership, MembershipError> {
        Membership::with_learners(voters, [])
    }

    /// A single configuration with voters and learners.
    pub fn with_learners(
        voters: impl IntoIterator<Item = NodeId>,
        learners: impl IntoIterator<Item = NodeId>,
    ) -> Result<Membership, MembershipError> {
        let m = Membership {
            configs: vec![voters.into_iter().collect()],
            learners: learners.into_iter().collect(),
        };
        m.validate()?;
        Ok(m)
    }

    /// Checks the invariants of a membership; used for values that arrive from peers or disk.
    pub fn validate(&self) -> Result<(), MembershipError> {
        if self.configs.is_empty() || self.configs.iter().any(|c| c.is_empty()) {
            return Err(MembershipError::NoVoters);
        }
        if self.configs.len() > 2 {
            return Err(MembershipError::TooManyConfigs(self.configs.len()));
        }
        if let Some(n) = self.learners.iter().find(|n| self.is_voter(**n)) {
            return Err(MembershipError::VoterIsLearner(*n));
        }
        Ok(())
    }

    /// The voter sets: one normally, two (old, new) during a joint change.
    pub fn configs(&self) -> &[BTreeSet<NodeId>] {
        &self.configs
    }

    /// The learners.
    pub fn learners(&self) -> &BTreeSet<NodeId> {
        &self.learners
    }

    /// Whether this is a joint configuration.
    pub fn is_joint(&self) -> bool {
        self.configs.len() > 1
    }

    /// Whether `id` votes in any of the configurations.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.configs.iter().any(|c| c.contains(&id))
    }

    /// Whether `id` is a voter or a learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.learners.contains(&id)
    }

    /// Every voter of every configuration, in id order, without repeats.
    pub fn voters(&self) -> BTreeSet<NodeId> {
        self.configs.iter().flatten().copied().collect()
    }

    /// Every node (voters and learners), in id order.
    pub fn nodes(&self) -> BTreeSet<NodeId> {
        let mut all = self.voters();
        all.extend(self.learners.iter().copied());
        all
    }

    /// How many distinct nodes the membership names.
    pub fn node_count(&self) -> usize {
        self.nodes().len()
    }

    /// The highest index that a quorum of every configuration has, given each voter's match
    /// index.
    pub fn committed_index(&self, match_of: impl Fn(NodeId) -> LogIndex) -> LogIndex {
        self.configs
            .iter()
            .map(|c| quorum::majority_index(c, &match_of))
            .min()
            .unwrap_or(LogIndex(0))
    }

    /// The outcome of an election given the votes received so far (`Some(true)` granted,
    /// `Some(false)` rejected, `None` no answer yet).
    pub fn vote_result(&self, vote_of: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
        let mut result = VoteResult::Won;
        for c in &self.configs {
            match quorum::majority_vote(c, &vote_of) {
                VoteResult::Lost => return VoteResult::Lost,
                VoteResult::Pending => result = VoteResult::Pending,
                VoteResult::Won => {}
            }
        }
        result
    }

    /// Whether the nodes for which `active` holds form a quorum of every configuration.
    pub fn has_quorum(&self, active: impl Fn(NodeId) -> bool) -> bool {
        self.vote_result(|n| Some(active(n))) == VoteResult::Won
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u64]) -> Vec<NodeId> {
        v.iter().map(|n| NodeId(*n)).collect()
    }

    #[test]
    fn rejects_empty_and_overlapping() {
        assert_eq!(Membership::new([]), Err(MembershipError::NoVoters));
        assert_eq!(
            Membership::with_learners(ids(&[1, 2]), ids(&[2])),
            Err(MembershipError::VoterIsLearner(NodeId(2)))
        );
    }

    #[test]
    fn joint_needs_both_majorities() {
        let m = Membership {
            configs: vec![
                ids(&[1, 2, 3]).into_iter().collect(),
                ids(&[3, 4, 5]).into_iter().collect(),
            ],
            learners: BTreeSet::new(),
        };
        // 1 and 2 are a majority of the old set but not of the new one.
        assert!(!m.has_quorum(|n| n.0 <= 2));
        assert!(m.has_quorum(|n| [1, 2, 4, 5].contains(&n.0)));
        let matches = [0, 10, 9, 8, 7, 6];
        // old {1,2,3}: sorted 10,9,8 -> 9; new {3,4,5}: 8,7,6 -> 7
        assert_eq!(m.committed_index(|n| LogIndex(matches[n.0 as usize])), LogIndex(7));
    }

    #[test]
    fn learners_never_count() {
        let m = Membership::with_learners(ids(&[1, 2, 3]), ids(&[4, 5])).unwrap();
        assert!(!m.has_quorum(|n| n.0 == 1 || n.0 >= 4));
        assert_eq!(m.committed_index(|n| LogIndex(if n.0 >= 4 { 100 } else { n.0 })), LogIndex(2));
    }
}
