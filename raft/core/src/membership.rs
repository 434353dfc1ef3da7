//! Cluster configurations: the voters (one set, or two during joint consensus) and the learners.

use std::collections::{BTreeMap, BTreeSet};

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
    /// Opaque information about nodes (an address a network adapter can dial), for the nodes
    /// that have some. Carried in the log so that every node, and every future leader, learns
    /// how to reach a node that joined after it started.
    node_info: BTreeMap<NodeId, String>,
    /// For a joint configuration: whether the leader proposes the new configuration alone as
    /// soon as the joint one commits (the default), or waits to be asked.
    auto_leave: bool,
    /// For a joint configuration: voters of the old set that become learners when it is left.
    learners_next: BTreeSet<NodeId>,
}

/// The most nodes a membership may name (voters and learners).
pub const MAX_MEMBERS: usize = 1024;

/// The longest node information (an address) a membership may carry, in bytes.
pub const MAX_NODE_INFO_BYTES: usize = 512;

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
    /// A node to demote when leaving a joint configuration is not a voter of its old set
    /// only (or the configuration is not joint).
    #[error("node {0} cannot become a learner on leaving: it is not an outgoing voter")]
    BadLearnerNext(NodeId),
    /// More nodes than [`MAX_MEMBERS`].
    #[error("a membership names at most {MAX_MEMBERS} nodes; got {0}")]
    TooManyNodes(usize),
    /// Node information for a node that is not a member, or longer than
    /// [`MAX_NODE_INFO_BYTES`].
    #[error("bad node information for node {0}: {1}")]
    BadNodeInfo(NodeId, &'static str),
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
            node_info: BTreeMap::new(),
            auto_leave: true,
            learners_next: BTreeSet::new(),
        };
        m.validate()?;
        Ok(m)
    }

    /// A joint configuration: decisions need a majority of `old` and of `new`. With
    /// `auto_leave`, the leader proposes `new` alone as soon as this commits.
    pub fn joint(
        old: impl IntoIterator<Item = NodeId>,
        new: impl IntoIterator<Item = NodeId>,
        learners: impl IntoIterator<Item = NodeId>,
        auto_leave: bool,
    ) -> Result<Membership, MembershipError> {
        let m = Membership {
            configs: vec![old.into_iter().collect(), new.into_iter().collect()],
            learners: learners.into_iter().collect(),
            node_info: BTreeMap::new(),
            auto_leave,
            learners_next: BTreeSet::new(),
        };
        m.validate()?;
        Ok(m)
    }

    /// No membership at all: a node that waits to be added to an existing cluster starts
    /// with it. It has no voters, so nothing can be decided under it; it is never valid in a
    /// log entry or a snapshot.
    pub fn uninitialized() -> Membership {
        Membership {
            configs: Vec::new(),
            learners: BTreeSet::new(),
            node_info: BTreeMap::new(),
            auto_leave: true,
            learners_next: BTreeSet::new(),
        }
    }

    /// Whether this is [`Membership::uninitialized`].
    pub fn is_uninitialized(&self) -> bool {
        self.configs.is_empty()
    }

    /// The same membership with node information `info` for `node` (replacing any). The
    /// caller validates the result ([`validate`](Self::validate)).
    pub fn with_node_info(mut self, node: NodeId, info: impl Into<String>) -> Membership {
        self.node_info.insert(node, info.into());
        self
    }

    /// The node information (an address) carried for `node`, if any.
    pub fn node_info(&self, node: NodeId) -> Option<&str> {
        self.node_info.get(&node).map(String::as_str)
    }

    /// Every node's information.
    pub fn all_node_info(&self) -> &BTreeMap<NodeId, String> {
        &self.node_info
    }

    /// For a joint configuration: whether the leader leaves it by itself once it commits.
    pub fn auto_leave(&self) -> bool {
        self.auto_leave
    }

    /// For a joint configuration: the voters of the old set that become learners when it is
    /// left (voters being demoted).
    pub fn learners_next(&self) -> &BTreeSet<NodeId> {
        &self.learners_next
    }

    /// The same joint configuration with `nodes` (voters of the old set only) becoming learners
    /// when it is left. The caller validates the result.
    pub fn with_learners_next(mut self, nodes: impl IntoIterator<Item = NodeId>) -> Membership {
        self.learners_next.extend(nodes);
        self
    }

    /// The configuration that leaving this joint one leads to: the new voter set alone, with
    /// the same learners and the node information of the nodes that remain. For a
    /// configuration that is not joint, itself.
    pub fn leave_joint(&self) -> Membership {
        let mut m = self.clone();
        if m.configs.len() == 2 {
            m.configs.remove(0);
        }
        let demoted = std::mem::take(&mut m.learners_next);
        m.learners.extend(demoted.into_iter().filter(|n| !m.configs[0].contains(n)));
        m.auto_leave = true;
        let nodes = m.nodes();
        m.node_info.retain(|n, _| nodes.contains(n));
        m
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
        if let Some(n) = self.learners_next.iter().find(|n| {
            self.configs.len() != 2 || !self.configs[0].contains(n) || self.configs[1].contains(n)
        }) {
            return Err(MembershipError::BadLearnerNext(*n));
        }
        let count = self.configs.iter().map(BTreeSet::len).sum::<usize>() + self.learners.len();
        if count > MAX_MEMBERS {
            return Err(MembershipError::TooManyNodes(count));
        }
        for (n, info) in &self.node_info {
            if !self.contains(*n) && !self.learners_next.contains(n) {
                return Err(MembershipError::BadNodeInfo(*n, "not a member"));
            }
            if info.len() > MAX_NODE_INFO_BYTES {
                return Err(MembershipError::BadNodeInfo(*n, "too long"));
            }
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
        let m = Membership::joint(ids(&[1, 2, 3]), ids(&[3, 4, 5]), [], true).unwrap();
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
