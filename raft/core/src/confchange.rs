//! Membership changes: which configuration is in force, and the rules for changing it.
//!
//! A node uses the latest configuration in its log, committed or not (Raft thesis §4.1). The
//! core keeps every configuration entry of its log after the latest snapshot (there are few),
//! plus the configuration in force at the snapshot, so that a truncation that removes a
//! configuration entry falls back to the one before it, and a snapshot can record the
//! configuration in force at its own last index.
//!
//! The rules a leader enforces when proposing a change (PITFALLS P2, P16):
//! - only after an entry of its own term is committed (its no-op), so that a change proposed
//!   across a leader change can never overlap one the previous leader had in flight (the 2015
//!   single-server bug);
//! - at most one uncommitted configuration entry at a time; a second request is refused;
//! - a change of more than one voter goes through a joint configuration (C_old,new), where
//!   elections and commits need a majority of each; the leader appends C_new once the joint one
//!   commits (unless asked to stay joint);
//! - a leader that is not a voter of the configuration in force leads until that
//!   configuration commits (counting itself in no quorum it is not part of), then steps down.
//!
//! Invariants (checked by the simulation tests): at most one configuration entry in a leader's
//! log is uncommitted; consecutive configurations in a log differ by at most one voter unless
//! one of them is joint; a joint configuration is only ever followed (in a log) by its own new
//! configuration.

use std::collections::{BTreeMap, BTreeSet};

use crate::membership::{Membership, MembershipError};
use crate::progress::Progress;
use crate::raft::{ProposeError, RaftCore};
use crate::types::{Entry, EntryPayload, LogId, LogIndex, NodeId, Role};

/// The configurations of the local log.
#[derive(Clone, Debug)]
pub(crate) struct ConfLog {
    /// The configuration in force at `base.0` (the snapshot's last entry, or index 0).
    base: (LogId, Membership),
    /// Configuration entries after `base.0`, ascending by index.
    entries: Vec<(LogId, Membership)>,
}

impl ConfLog {
    pub(crate) fn new(base: (LogId, Membership), entries: Vec<(LogId, Membership)>) -> ConfLog {
        let floor = base.0.index;
        let mut entries: Vec<_> = entries.into_iter().filter(|(id, _)| id.index > floor).collect();
        entries.sort_by_key(|(id, _)| id.index);
        ConfLog { base, entries }
    }

    /// The latest configuration and the id of its entry (`base`'s id if none is in the log).
    pub(crate) fn latest(&self) -> &(LogId, Membership) {
        self.entries.last().unwrap_or(&self.base)
    }

    /// The configuration in force at `index` (the latest at or below it).
    pub(crate) fn at(&self, index: LogIndex) -> &Membership {
        self.entries.iter().rev().find(|(id, _)| id.index <= index).map_or(&self.base.1, |e| &e.1)
    }

    /// Records the configuration entries among `entries` (appended at the end of the log).
    /// Returns whether any was.
    pub(crate) fn appended(&mut self, entries: &[Entry]) -> bool {
        let mut any = false;
        for e in entries {
            if let EntryPayload::Membership(m) = &e.payload {
                self.entries.push((e.log_id, m.clone()));
                any = true;
            }
        }
        any
    }

    /// Forgets configuration entries at and after `from` (a truncation). Returns whether any
    /// was removed.
    pub(crate) fn truncated(&mut self, from: LogIndex) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(id, _)| id.index < from);
        before != self.entries.len()
    }

    /// The log was replaced up to `snapshot` by a snapshot whose configuration is `m`; `kept`
    /// says whether the entries after it were kept.
    pub(crate) fn installed(&mut self, snapshot: LogId, m: Membership, kept: bool) {
        if kept {
            self.entries.retain(|(id, _)| id.index > snapshot.index);
        } else {
            self.entries.clear();
        }
        self.base = (snapshot, m);
    }

    /// Every configuration this log knows, oldest first: the base, then the entries.
    pub(crate) fn history(&self) -> Vec<(LogId, Membership)> {
        std::iter::once(self.base.clone()).chain(self.entries.iter().cloned()).collect()
    }
}

/// How a change of voters may be carried out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum JointPolicy {
    /// Directly when at most one voter changes, else through a joint configuration that the
    /// leader leaves by itself as soon as it commits.
    #[default]
    Auto,
    /// Always through a joint configuration, which the leader leaves by itself once committed.
    JointAutoLeave,
    /// Through a joint configuration that stays until [`RaftCore::leave_joint`] is called.
    JointExplicitLeave,
}

/// A configuration change, as the leader's core is asked for it: the configuration wanted in
/// the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipChange {
    /// The voters wanted.
    pub voters: BTreeSet<NodeId>,
    /// The learners wanted.
    pub learners: BTreeSet<NodeId>,
    /// Node information (addresses) to record, for nodes of the new configuration; kept as is
    /// for nodes not named here.
    pub node_info: BTreeMap<NodeId, String>,
    /// Whether and how to go through a joint configuration.
    pub joint: JointPolicy,
    /// Promote learners even if they are far behind the leader's log.
    pub force: bool,
}

/// Why a configuration change was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChangeError {
    /// The leader has not committed an entry of its own term yet; retry shortly.
    #[error("the leader has not yet committed an entry of its term; retry shortly")]
    LeaderNotReady,
    /// A configuration change is not committed yet (or a joint configuration not left).
    #[error("a configuration change is in progress (entry {index})")]
    InProgress {
        /// The index of the configuration entry in progress.
        index: LogIndex,
    },
    /// The configuration wanted is not valid (no voters, a voter that is also a learner…).
    #[error("invalid configuration: {0}")]
    Invalid(#[from] MembershipError),
    /// A learner to promote lags the leader's log by more than allowed.
    #[error("learner {node} is behind: it has the log up to {matched}, the leader up to {last}")]
    LearnerLagging {
        /// The learner.
        node: NodeId,
        /// Its match index.
        matched: LogIndex,
        /// The leader's last index.
        last: LogIndex,
    },
    /// There is no joint configuration to leave.
    #[error("the configuration is not joint")]
    NotJoint,
    /// The change asks for the configuration already in force.
    #[error("the configuration is already the one asked for")]
    NoChange,
}

impl RaftCore {
    /// The configuration in force at `index` of the local log (the latest at or below it,
    /// including the snapshot's).
    pub fn membership_at(&self, index: LogIndex) -> &Membership {
        self.confs.at(index)
    }

    /// Every configuration the local log knows, oldest first (the snapshot's, then each
    /// configuration entry), with the id of its entry.
    pub fn membership_history(&self) -> Vec<(LogId, Membership)> {
        self.confs.history()
    }

    /// The id of the entry of the latest configuration (the snapshot's last id, or `ZERO`,
    /// when the log holds none).
    pub fn membership_log_id(&self) -> LogId {
        self.confs.latest().0
    }

    /// Whether the latest configuration is committed (false on a node that has none yet).
    pub fn membership_committed(&self) -> bool {
        !self.membership.is_uninitialized() && self.confs.latest().0.index <= self.commit
    }

    /// Proposes a configuration change (leader only). Returns the id of the configuration
    /// entry appended: the final configuration's, or the joint one's when the change goes
    /// through a joint configuration (the leader appends the final one itself once the joint
    /// one commits, unless [`JointPolicy::JointExplicitLeave`]).
    ///
    /// # Errors
    /// [`ProposeError::NotLeader`]; [`ProposeError::Membership`] with the reason otherwise
    /// (nothing is appended).
    pub fn propose_membership(&mut self, change: MembershipChange) -> Result<LogId, ProposeError> {
        self.check_can_change()?;
        let current = self.membership.clone();
        let old = current.configs()[0].clone();
        if !change.force {
            let last = self.log.last().index;
            let lag = self.cfg.max_entries_per_message as u64;
            for n in change.voters.iter().filter(|n| !old.contains(n) && **n != self.id) {
                let matched = self.progress.get(n).map_or(LogIndex(0), |p| p.match_index);
                if matched.0 + lag < last.0 {
                    return Err(ChangeError::LearnerLagging { node: *n, matched, last }.into());
                }
            }
        }
        let changed = old.symmetric_difference(&change.voters).count();
        let joint = match change.joint {
            JointPolicy::Auto => changed > 1,
            JointPolicy::JointAutoLeave | JointPolicy::JointExplicitLeave => changed > 0,
        };
        let mut next = if joint {
            // Voters being demoted stay voters of the old half until the joint configuration
            // is left; learners that become voters leave the learner set now.
            let learners: BTreeSet<NodeId> =
                change.learners.iter().filter(|n| !old.contains(n)).copied().collect();
            let demoted: BTreeSet<NodeId> =
                change.learners.iter().filter(|n| old.contains(n)).copied().collect();
            Membership::joint(
                old.iter().copied(),
                change.voters.iter().copied(),
                learners,
                change.joint != JointPolicy::JointExplicitLeave,
            )
            .map_err(ChangeError::from)?
            .with_learners_next(demoted)
        } else {
            Membership::with_learners(change.voters.iter().copied(), change.learners.clone())
                .map_err(ChangeError::from)?
        };
        // Node information: what the change names, else what the current configuration had.
        let nodes = next.nodes();
        for n in &nodes {
            if let Some(info) =
                change.node_info.get(n).map(String::as_str).or(current.node_info(*n))
            {
                next = next.with_node_info(*n, info);
            }
        }
        for n in next.learners_next().clone() {
            if let Some(info) =
                change.node_info.get(&n).map(String::as_str).or(current.node_info(n))
            {
                next = next.with_node_info(n, info);
            }
        }
        next.validate().map_err(ChangeError::from)?;
        if next == current {
            return Err(ChangeError::NoChange.into());
        }
        Ok(self.append_membership(next))
    }

    /// Leaves the joint configuration in force (leader only), when it was entered with
    /// [`JointPolicy::JointExplicitLeave`]. Returns the id of the new configuration's entry.
    ///
    /// # Errors
    /// [`ProposeError::NotLeader`], or [`ProposeError::Membership`] (not joint, the joint
    /// configuration not committed yet, no entry of the leader's term committed yet).
    pub fn leave_joint(&mut self) -> Result<LogId, ProposeError> {
        self.check_can_change()?;
        if !self.membership.is_joint() {
            return Err(ChangeError::NotJoint.into());
        }
        let next = self.membership.leave_joint();
        Ok(self.append_membership(next))
    }

    /// The configuration commits and elections are counted in: the one in force (with the
    /// `JointQuorumNewOnly` mutant, only the new half of a joint one).
    pub(crate) fn quorum_membership(&self) -> std::borrow::Cow<'_, Membership> {
        if mutant!(self, JointQuorumNewOnly) && self.membership.is_joint() {
            if let Ok(m) = Membership::new(self.membership.configs()[1].iter().copied()) {
                return std::borrow::Cow::Owned(m);
            }
        }
        std::borrow::Cow::Borrowed(&self.membership)
    }

    fn check_can_change(&self) -> Result<(), ProposeError> {
        self.check_can_propose()?;
        if self.log.term_at(self.commit) != Some(self.term)
            && !mutant!(self, ChangeBeforeOwnTermCommit)
        {
            return Err(ChangeError::LeaderNotReady.into());
        }
        let latest = self.confs.latest().0.index;
        if latest > self.commit && !mutant!(self, TwoUncommittedChanges) {
            return Err(ChangeError::InProgress { index: latest }.into());
        }
        Ok(())
    }

    fn append_membership(&mut self, m: Membership) -> LogId {
        let log_id = LogId { term: self.term, index: self.log.last().index.next() };
        tracing::info!(node = %self.id, %log_id, configs = ?m.configs(), learners = ?m.learners(), "proposing a configuration");
        self.append_local(vec![Entry { log_id, payload: EntryPayload::Membership(m) }]);
        log_id
    }

    /// The latest configuration changed (appended, truncated away or installed): update the
    /// role and, on a leader, the set of nodes it replicates to.
    pub(crate) fn membership_changed(&mut self) {
        let latest = self.confs.latest().1.clone();
        if latest == self.membership {
            return;
        }
        tracing::info!(node = %self.id, configs = ?latest.configs(), learners = ?latest.learners(), "configuration in force");
        self.membership = latest;
        self.dirty = true;
        let voter = self.membership.is_voter(self.id);
        match self.role {
            Role::Leader => {
                let next = self.log.last().index.next();
                let (count, bytes, now) =
                    (self.cfg.max_inflight_messages, self.cfg.max_inflight_bytes, self.clock);
                let nodes = self.membership.nodes();
                self.progress.retain(|n, _| nodes.contains(n));
                for n in nodes.into_iter().filter(|n| *n != self.id) {
                    self.progress
                        .entry(n)
                        .or_insert_with(|| Progress::new(next, count, bytes, now));
                }
            }
            Role::Follower if !voter => self.role = Role::Learner,
            Role::Learner if voter => {
                self.role = Role::Follower;
                let now = self.clock;
                self.reset_election_deadline(now);
            }
            Role::Candidate | Role::PreCandidate if !voter => {
                let (now, term) = (self.clock, self.term);
                self.become_follower(now, term, None);
            }
            _ => {}
        }
    }

    /// On a leader, once the latest configuration is committed: leave a joint configuration
    /// that auto-leaves, or step down if this node is not one of its voters.
    pub(crate) fn after_commit_membership(&mut self) {
        if self.role != Role::Leader || !self.membership_committed() {
            return;
        }
        if !self.membership.is_voter(self.id) && !mutant!(self, RemovedLeaderStays) {
            tracing::info!(node = %self.id, term = %self.term, "removed from the configuration; stepping down");
            let (now, term) = (self.clock, self.term);
            self.become_follower(now, term, None);
            return;
        }
        if self.membership.is_joint() && self.membership.auto_leave() {
            let next = self.membership.leave_joint();
            self.append_membership(next);
        }
    }

    /// Records configuration entries among `entries` appended to the log.
    pub(crate) fn conf_appended(&mut self, entries: &[Entry]) {
        if self.confs.appended(entries) {
            self.membership_changed();
        }
    }

    /// Forgets configuration entries removed by a truncation at `from`.
    pub(crate) fn conf_truncated(&mut self, from: LogIndex) {
        if self.confs.truncated(from) {
            self.membership_changed();
        }
    }

    /// The log's prefix was replaced by a snapshot carrying `m`.
    pub(crate) fn conf_installed(&mut self, snapshot: LogId, m: Membership, kept: bool) {
        self.confs.installed(snapshot, m, kept);
        self.membership_changed();
    }
}
