//! Majority arithmetic over one voter set, as pure functions.
//!
//! [`Membership`](crate::Membership) combines these per configuration (joint consensus needs a
//! majority of each).

use std::collections::BTreeSet;

use crate::types::{LogIndex, NodeId};

/// The outcome of counting votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// A majority granted.
    Won,
    /// A majority can no longer grant.
    Lost,
    /// Neither yet.
    Pending,
}

/// The size of a majority of `n` voters.
pub fn majority(n: usize) -> usize {
    n / 2 + 1
}

/// The highest index that a majority of `voters` has reached, given each voter's match index.
///
/// With match indexes sorted in descending order, the answer is the one at position
/// `majority - 1`: that many voters have at least that index.
pub fn majority_index(
    voters: &BTreeSet<NodeId>,
    match_of: impl Fn(NodeId) -> LogIndex,
) -> LogIndex {
    if voters.is_empty() {
        // An empty configuration places no constraint (it only arises transiently in joint
        // configurations that `Membership::validate` would reject anyway).
        return LogIndex(u64::MAX);
    }
    // Small clusters are the norm; a stack array avoids an allocation on every commit check.
    let mut buf = [LogIndex(0); 16];
    let mut heap;
    let matches: &mut [LogIndex] = if voters.len() <= buf.len() {
        for (slot, id) in buf.iter_mut().zip(voters.iter()) {
            *slot = match_of(*id);
        }
        &mut buf[..voters.len()]
    } else {
        heap = voters.iter().map(|id| match_of(*id)).collect::<Vec<_>>();
        &mut heap
    };
    matches.sort_unstable_by(|a, b| b.cmp(a));
    matches[majority(matches.len()) - 1]
}

/// Counts votes of `voters`: `Some(true)` granted, `Some(false)` rejected, `None` not heard.
pub fn majority_vote(
    voters: &BTreeSet<NodeId>,
    vote_of: impl Fn(NodeId) -> Option<bool>,
) -> VoteResult {
    if voters.is_empty() {
        return VoteResult::Won;
    }
    let (mut granted, mut missing) = (0, 0);
    for id in voters {
        match vote_of(*id) {
            Some(true) => granted += 1,
            Some(false) => {}
            None => missing += 1,
        }
    }
    let need = majority(voters.len());
    if granted >= need {
        VoteResult::Won
    } else if granted + missing >= need {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: u64) -> BTreeSet<NodeId> {
        (1..=n).map(NodeId).collect()
    }

    #[test]
    fn majority_sizes() {
        assert_eq!([1, 2, 3, 4, 5, 6, 7].map(majority), [1, 2, 2, 3, 3, 4, 4]);
    }

    #[test]
    fn majority_index_is_the_quorum_minimum() {
        let m = [0, 5, 3, 9];
        assert_eq!(majority_index(&set(3), |n| LogIndex(m[n.0 as usize])), LogIndex(5));
        let m = [0, 5, 3, 9, 1];
        // sorted 9,5,3,1 -> majority of 4 is 3 voters -> 3
        assert_eq!(majority_index(&set(4), |n| LogIndex(m[n.0 as usize])), LogIndex(3));
        assert_eq!(majority_index(&set(1), |_| LogIndex(7)), LogIndex(7));
        let big = set(40);
        assert_eq!(majority_index(&big, |n| LogIndex(n.0)), LogIndex(20));
    }

    #[test]
    fn votes() {
        let s = set(5);
        assert_eq!(majority_vote(&s, |n| (n.0 <= 3).then_some(true)), VoteResult::Won);
        assert_eq!(majority_vote(&s, |n| (n.0 <= 2).then_some(true)), VoteResult::Pending);
        assert_eq!(majority_vote(&s, |n| Some(n.0 <= 2)), VoteResult::Lost);
    }
}
