//! A node's observable state, published through a `tokio::sync::watch`.

use std::collections::BTreeMap;

use raftkit_core::{HardState, LogId, LogIndex, Membership, NodeId, RaftCore, Role, Term};
use serde::{Deserialize, Serialize};

use crate::error::Fatal;

/// Whether the node is serving.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum NodeState {
    /// Running normally.
    Running,
    /// Stopped by [`Raft::shutdown`](crate::Raft::shutdown).
    Shutdown,
    /// Stopped by a fatal error: the error itself, as client writes receive it in
    /// [`WriteError::Fatal`](crate::WriteError::Fatal). A failed node has stepped down: the
    /// metrics show it as a follower with no leader known and no replication progress.
    Failed(Fatal),
}

/// A snapshot of a node's state. Published whenever it changes; read it with
/// [`Raft::metrics`](crate::Raft::metrics). Serializable (for a status endpoint, say); new
/// fields may be added, so it is built only by the engine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RaftMetrics {
    /// This node.
    pub id: NodeId,
    /// Serving, shut down or failed.
    pub state: NodeState,
    /// The protocol role ([`Role::Follower`] once the node has [failed](NodeState::Failed)).
    pub role: Role,
    /// The current term.
    pub term: Term,
    /// The leader of the current term, if known (`None` once the node has failed).
    pub leader: Option<NodeId>,
    /// The highest index known committed.
    pub commit: LogIndex,
    /// The highest index applied to the state machine.
    pub applied: LogIndex,
    /// The last log entry (durable or not).
    pub last_log: LogId,
    /// The highest index durable in the local log.
    pub stable: LogIndex,
    /// The last purged entry (the log starts after it).
    pub purged: LogId,
    /// The last entry covered by the latest snapshot, if any.
    pub snapshot: Option<LogId>,
    /// When leader: each other node's durable match index.
    pub replication: BTreeMap<NodeId, LogIndex>,
    /// The voters of the current configuration.
    pub voters: Vec<NodeId>,
    /// The configuration in force: its voter set (two during a joint change), learners and
    /// node information. `replication` shows each learner's progress on the leader.
    pub membership: Membership,
    /// Whether the configuration in force is committed (a change is in progress if not).
    pub membership_committed: bool,
    /// The most recent error this node recovered from (a send to a peer that failed or timed
    /// out, a snapshot it could not store), with what it concerned; `None` until there is one.
    /// An error that stopped the node is in `state` instead.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// A node's protocol state after one turn of its driver, for [`Observer`]s. Cheap to copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// This node.
    pub id: NodeId,
    /// The protocol role.
    pub role: Role,
    /// The current term.
    pub term: Term,
    /// The vote cast in the current term (possibly not yet durable).
    pub vote: Option<NodeId>,
    /// The leader of the current term, if known.
    pub leader: Option<NodeId>,
    /// The commit index.
    pub commit: LogIndex,
    /// The term of the entry at the commit index.
    pub commit_term: Option<Term>,
    /// The applied index.
    pub applied: LogIndex,
    /// The last log entry (durable or not).
    pub last_log: LogId,
    /// The highest index durable in the local log.
    pub stable: LogIndex,
    /// The hard state known durable.
    pub durable: HardState,
    /// The last purged entry.
    pub purged: LogId,
    /// The last entry covered by the latest snapshot.
    pub snapshot: Option<LogId>,
    /// The id of the entry of the latest configuration in the local log (the configuration in
    /// force): the snapshot's last id when the log holds no configuration entry after it, and
    /// [`LogId::ZERO`] for the initial configuration (or none, on a node waiting to join).
    pub membership: LogId,
    /// Whether this node is a voter of the configuration in force (of either half during a
    /// joint change). False on a learner, a removed node and a node waiting to join.
    pub voter: bool,
}

impl NodeStatus {
    pub(crate) fn from_core(core: &RaftCore) -> NodeStatus {
        NodeStatus {
            id: core.id(),
            role: core.role(),
            term: core.term(),
            vote: core.vote(),
            leader: core.leader(),
            commit: core.commit_index(),
            commit_term: core.term_at(core.commit_index()),
            applied: core.applied_index(),
            last_log: core.last_log_id(),
            stable: core.stable_index(),
            durable: core.durable_hard_state(),
            purged: core.purged_log_id(),
            snapshot: core.snapshot().map(|s| s.last_log_id),
            membership: core.membership_log_id(),
            voter: core.membership().is_voter(core.id()),
        }
    }
}

/// Sees every change of a node's protocol state, synchronously, from the driver task — unlike
/// [`Raft::metrics`](crate::Raft::metrics), which coalesces changes. Used by the testkit's
/// invariant checkers; keep `on_status` fast, it runs on the driver.
pub trait Observer: Send + Sync + 'static {
    /// Called after each driver turn in which the status changed.
    fn on_status(&self, status: &NodeStatus);
}

impl RaftMetrics {
    /// Brings these metrics up to date with `core` in place (no allocation unless the peers or
    /// the voters changed); returns whether anything changed. `voters_changed` says whether
    /// the membership changed since the last call.
    pub(crate) fn refresh(
        &mut self,
        core: &RaftCore,
        state: &NodeState,
        voters_changed: bool,
    ) -> bool {
        let mut changed = false;
        macro_rules! set {
            ($field:ident, $value:expr) => {{
                let v = $value;
                if self.$field != v {
                    self.$field = v;
                    changed = true;
                }
            }};
        }
        if self.state != *state {
            self.state = state.clone();
            changed = true;
        }
        // A failed node leads nothing any more (it sends no heartbeats and takes no writes),
        // though the core keeps its last role: a client or balancer that routes writes by role
        // must not keep sending them to a dead leader.
        let failed = matches!(state, NodeState::Failed(_));
        set!(role, if failed { Role::Follower } else { core.role() });
        set!(term, core.term());
        set!(leader, if failed { None } else { core.leader() });
        set!(commit, core.commit_index());
        set!(applied, core.applied_index());
        set!(last_log, core.last_log_id());
        set!(stable, core.stable_index());
        set!(purged, core.purged_log_id());
        set!(snapshot, core.snapshot().map(|s| s.last_log_id));
        if failed {
            if !self.replication.is_empty() {
                self.replication.clear();
                changed = true;
            }
        } else if !core.match_index_iter().eq(self.replication.iter().map(|(k, v)| (*k, *v))) {
            if core.match_index_iter().map(|(id, _)| id).eq(self.replication.keys().copied()) {
                for (v, (_, m)) in self.replication.values_mut().zip(core.match_index_iter()) {
                    *v = m;
                }
            } else {
                self.replication = core.match_indexes();
            }
            changed = true;
        }
        if voters_changed {
            let voters: Vec<NodeId> = core.membership().voters().into_iter().collect();
            if voters != self.voters {
                self.voters = voters;
                changed = true;
            }
            if self.membership != *core.membership() {
                self.membership = core.membership().clone();
                changed = true;
            }
        }
        set!(membership_committed, core.membership_committed());
        changed
    }

    pub(crate) fn from_core(core: &RaftCore, state: NodeState) -> RaftMetrics {
        RaftMetrics {
            id: core.id(),
            state,
            role: core.role(),
            term: core.term(),
            leader: core.leader(),
            commit: core.commit_index(),
            applied: core.applied_index(),
            last_log: core.last_log_id(),
            stable: core.stable_index(),
            purged: core.purged_log_id(),
            snapshot: core.snapshot().map(|s| s.last_log_id),
            replication: core.match_indexes(),
            voters: core.membership().voters().into_iter().collect(),
            membership: core.membership().clone(),
            membership_committed: core.membership_committed(),
            last_error: None,
        }
    }
}
