//! Node configuration and its validation.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// The configuration of one node. Protocol options live here, never in cargo features.
///
/// Build one with [`Config::new`] and adjust the public fields; [`Config::validate`] runs when a
/// node starts and names the field at fault.
///
/// # In a file
/// `Config` implements serde, so it can be loaded from TOML (or any serde format). Durations
/// are human-readable (`heartbeat_interval = "50ms"`, `election_timeout_max = "1s"`); unknown
/// fields are refused, so a misspelt option is an error, not a silent default. Fields left out
/// take [`Config::new`]'s defaults, except `id` and `members`, which default to `0` and empty:
/// set them in the file or afterwards (a program may take them from its command line).
/// Deserializing does not validate: call [`validate`](Config::validate) after loading for an
/// early error (starting a node validates again).
///
/// ```
/// # use raftkit_core::{Config, NodeId};
/// # use std::time::Duration;
/// let config: Config = toml::from_str(r#"
///     id = 1
///     members = [1, 2, 3]
///     heartbeat_interval = "100ms"
///     election_timeout_min = "1s"
///     election_timeout_max = "2s"
/// "#).unwrap();
/// config.validate().unwrap();
/// assert_eq!(config.id, NodeId(1));
/// assert_eq!(config.heartbeat_interval, Duration::from_millis(100));
/// assert_eq!(config.snapshot_every, Config::new(NodeId(1), [NodeId(1)]).snapshot_every);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default = "Config::unset", deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// This node's id (not 0). Must be one of `members` unless that is empty.
    pub id: NodeId,
    /// The voters of the initial configuration. Every node of a new cluster must be started with
    /// the same list (bootstrap). Empty for a node that joins an existing cluster: it starts
    /// with no configuration and waits until a leader adds it. A node restarted from its store
    /// uses the configuration in its log or snapshot; this list only matters while the log
    /// holds none.
    pub members: Vec<NodeId>,
    /// How often a leader sends heartbeats.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// The lower bound of the randomized election timeout. Must exceed `heartbeat_interval`
    /// (a few heartbeats per timeout is typical). With `check_quorum`, it is also how long a
    /// leader may go without hearing from a quorum before it steps down, and how long a follower
    /// ignores vote requests after hearing from a live leader.
    #[serde(with = "humantime_serde")]
    pub election_timeout_min: Duration,
    /// The upper bound (exclusive) of the randomized election timeout.
    #[serde(with = "humantime_serde")]
    pub election_timeout_max: Duration,
    /// Run a pre-election before a real one, so a node that cannot win (for example one cut off
    /// by a partition) never raises the cluster's term (Raft thesis §9.6).
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum within `election_timeout_min` steps down, and a
    /// follower that heard from a live leader within that time ignores vote requests ("leader
    /// stickiness").
    pub check_quorum: bool,
    /// How far apart the clocks of two nodes may run over an `election_timeout_min` (rate
    /// drift, timer lateness, pauses). A leader serves lease reads until
    /// `election_timeout_min - clock_drift_bound` after it sent the heartbeat round a quorum
    /// last confirmed; must be below `election_timeout_min`. Lease reads are only as safe as
    /// this bound: a node whose clock runs faster than it allows could elect a new leader
    /// while the old one still believes its lease holds.
    #[serde(with = "humantime_serde")]
    pub clock_drift_bound: Duration,
    /// A follower forwards client commands to the leader (and answers with the output once it
    /// applied them) instead of refusing them with "not the leader". Off: etcd's
    /// `DisableProposalForwarding`.
    pub forward_proposals: bool,
    /// A leader shut down gracefully hands leadership to the most up-to-date voter first, so a
    /// rolling restart costs no election timeout.
    pub transfer_on_shutdown: bool,
    /// The most entries one AppendEntries message carries, at most
    /// [`MAX_ENTRIES_PER_MESSAGE`](crate::MAX_ENTRIES_PER_MESSAGE). Also enforced on receipt: a
    /// follower refuses (logs and drops) an AppendEntries with more, so every node of a cluster
    /// should use the same value (a receiver's may be larger, never smaller).
    pub max_entries_per_message: usize,
    /// The most payload bytes one AppendEntries message carries (at least one entry is always
    /// sent, however large). Also enforced on receipt, like `max_entries_per_message`: a
    /// message of more than one entry whose entries exceed it is refused.
    pub max_bytes_per_message: usize,
    /// The most AppendEntries messages in flight to one follower.
    pub max_inflight_messages: usize,
    /// The most entry bytes in flight to one follower.
    pub max_inflight_bytes: usize,
    /// Recent log entries kept in memory so replication and apply rarely read the log store.
    /// Entries not yet durable are always kept, whatever this says.
    pub entry_cache_bytes: usize,
    /// The most client proposals the engine gathers into one log write.
    pub max_proposal_batch: usize,
    /// The most entries handed to the state machine in one `apply` call.
    pub max_apply_batch: usize,
    /// The most messages queued for one peer before the engine drops new ones for it (Raft
    /// tolerates loss; a slow peer must never stall the others).
    pub peer_queue_capacity: usize,
    /// Take a snapshot once this many entries have been applied since the last one (0: never
    /// automatically; [`RaftCore::trigger_snapshot`](crate::RaftCore::trigger_snapshot) still
    /// works).
    pub snapshot_every: u64,
    /// Also take a snapshot once the entries appended since the last one add up to about this
    /// many bytes (0: no limit).
    pub snapshot_log_bytes: u64,
    /// After a snapshot, keep this many entries before its last entry in the log, so followers
    /// slightly behind catch up from the log instead of a whole snapshot.
    pub snapshot_keep: u64,
    /// The size of the chunks a snapshot is sent in; the memory a transfer needs is bounded by
    /// it, not by the snapshot's size.
    pub snapshot_chunk_bytes: usize,
    /// Seed of the core's PRNG (election jitter). Mixed with `id`, so nodes sharing a seed still
    /// draw different timeouts. The same seed and inputs replay the same run.
    pub seed: u64,
    /// A deliberately broken behaviour to activate on this node. Exists only with the `mutants`
    /// feature, which is for raftkit's own mutant tests and which no normal build enables.
    #[cfg(feature = "mutants")]
    #[serde(skip)]
    pub mutant: Option<crate::Mutant>,
}

/// A configuration value that cannot work, naming the field at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A field that must be positive is zero.
    #[error("config field `{0}` must be greater than zero")]
    Zero(&'static str),
    /// The election timeout does not exceed the heartbeat interval.
    #[error(
        "config field `election_timeout_min` ({election:?}) must be greater than \
         `heartbeat_interval` ({heartbeat:?})"
    )]
    ElectionNotAboveHeartbeat {
        /// The configured `election_timeout_min`.
        election: Duration,
        /// The configured `heartbeat_interval`.
        heartbeat: Duration,
    },
    /// The election timeout range is inverted.
    #[error(
        "config field `election_timeout_max` ({max:?}) must not be less than \
         `election_timeout_min` ({min:?})"
    )]
    ElectionRange {
        /// The configured `election_timeout_min`.
        min: Duration,
        /// The configured `election_timeout_max`.
        max: Duration,
    },
    /// The clock drift bound leaves no lease.
    #[error(
        "config field `clock_drift_bound` ({drift:?}) must be less than \
         `election_timeout_min` ({election:?})"
    )]
    DriftNotBelowElection {
        /// The configured `clock_drift_bound`.
        drift: Duration,
        /// The configured `election_timeout_min`.
        election: Duration,
    },
    /// `id` is unset (0 is not a node id).
    #[error("config field `id` is unset (node ids start at 1)")]
    NoId,
    /// A field is above the most the protocol allows.
    #[error("config field `{field}` ({value}) must be at most {max}")]
    TooLarge {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The most it may be.
        max: u64,
    },
    /// `members` names a node twice.
    #[error("config field `members` lists node {0} more than once")]
    DuplicateMember(NodeId),
    /// `id` is not one of `members`.
    #[error("config field `id` ({id}) is not one of `members` {members:?}")]
    NotAMember {
        /// The configured id.
        id: NodeId,
        /// The configured members.
        members: Vec<NodeId>,
    },
}

impl Config {
    /// A configuration with sensible defaults for a LAN: 50 ms heartbeats, 300–600 ms election
    /// timeouts, PreVote and CheckQuorum on.
    pub fn new(id: NodeId, members: impl IntoIterator<Item = NodeId>) -> Config {
        Config {
            id,
            members: members.into_iter().collect(),
            heartbeat_interval: Duration::from_millis(50),
            election_timeout_min: Duration::from_millis(300),
            election_timeout_max: Duration::from_millis(600),
            pre_vote: true,
            check_quorum: true,
            clock_drift_bound: Duration::from_millis(30),
            forward_proposals: true,
            transfer_on_shutdown: true,
            max_entries_per_message: 4096,
            max_bytes_per_message: 1 << 20,
            max_inflight_messages: 64,
            max_inflight_bytes: 32 << 20,
            entry_cache_bytes: 64 << 20,
            max_proposal_batch: 4096,
            max_apply_batch: 4096,
            peer_queue_capacity: 1024,
            snapshot_every: 100_000,
            snapshot_log_bytes: 256 << 20,
            snapshot_keep: 1_000,
            snapshot_chunk_bytes: 1 << 20,
            seed: 0,
            #[cfg(feature = "mutants")]
            mutant: None,
        }
    }

    /// What a deserialized field left out takes: [`Config::new`]'s defaults, with no id and
    /// no members.
    fn unset() -> Config {
        Config::new(NodeId(0), [])
    }

    /// Checks that the values can work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive: [(&'static str, bool); 10] = [
            ("snapshot_chunk_bytes", self.snapshot_chunk_bytes > 0),
            ("heartbeat_interval", !self.heartbeat_interval.is_zero()),
            ("election_timeout_min", !self.election_timeout_min.is_zero()),
            ("max_entries_per_message", self.max_entries_per_message > 0),
            ("max_bytes_per_message", self.max_bytes_per_message > 0),
            ("max_inflight_messages", self.max_inflight_messages > 0),
            ("max_inflight_bytes", self.max_inflight_bytes > 0),
            ("max_proposal_batch", self.max_proposal_batch > 0),
            ("max_apply_batch", self.max_apply_batch > 0),
            ("peer_queue_capacity", self.peer_queue_capacity > 0),
        ];
        if self.id.0 == 0 {
            return Err(ConfigError::NoId);
        }
        for (field, ok) in positive {
            if !ok {
                return Err(ConfigError::Zero(field));
            }
        }
        if self.max_entries_per_message > crate::MAX_ENTRIES_PER_MESSAGE {
            return Err(ConfigError::TooLarge {
                field: "max_entries_per_message",
                value: self.max_entries_per_message as u64,
                max: crate::MAX_ENTRIES_PER_MESSAGE as u64,
            });
        }
        if self.election_timeout_min <= self.heartbeat_interval {
            return Err(ConfigError::ElectionNotAboveHeartbeat {
                election: self.election_timeout_min,
                heartbeat: self.heartbeat_interval,
            });
        }
        if self.election_timeout_max < self.election_timeout_min {
            return Err(ConfigError::ElectionRange {
                min: self.election_timeout_min,
                max: self.election_timeout_max,
            });
        }
        if self.clock_drift_bound >= self.election_timeout_min {
            return Err(ConfigError::DriftNotBelowElection {
                drift: self.clock_drift_bound,
                election: self.election_timeout_min,
            });
        }
        let mut seen = BTreeSet::new();
        for m in &self.members {
            if !seen.insert(*m) {
                return Err(ConfigError::DuplicateMember(*m));
            }
        }
        // No members: a node that joins an existing cluster and waits to be added.
        if !self.members.is_empty() && !seen.contains(&self.id) {
            return Err(ConfigError::NotAMember { id: self.id, members: self.members.clone() });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Config {
        Config::new(NodeId(1), [NodeId(1), NodeId(2), NodeId(3)])
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(ok().validate(), Ok(()));
    }

    #[test]
    fn round_trips_through_toml_with_readable_durations() {
        let mut c = ok();
        c.heartbeat_interval = Duration::from_millis(75);
        c.election_timeout_max = Duration::from_secs(2);
        let text = toml::to_string(&c).unwrap();
        assert!(text.contains("heartbeat_interval = \"75ms\""), "{text}");
        assert!(text.contains("election_timeout_max = \"2s\""), "{text}");
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn missing_fields_take_the_defaults_and_unknown_ones_are_refused() {
        let c: Config = toml::from_str("id = 2\nmembers = [1, 2, 3]\nsnapshot_every = 7").unwrap();
        let mut want = Config::new(NodeId(2), [NodeId(1), NodeId(2), NodeId(3)]);
        want.snapshot_every = 7;
        assert_eq!(c, want);

        let e = toml::from_str::<Config>("id = 1\nmembers = [1]\nheartbeat = \"1s\"").unwrap_err();
        assert!(e.to_string().contains("unknown field `heartbeat`"), "{e}");
        let e = toml::from_str::<Config>("heartbeat_interval = 50").unwrap_err();
        assert!(e.to_string().contains("heartbeat_interval"), "{e}");

        // Loading does not validate; validate() names the field at fault.
        let c: Config = toml::from_str("heartbeat_interval = \"1s\"").unwrap();
        assert_eq!(c.validate(), Err(ConfigError::NoId));
    }

    #[test]
    fn each_bad_field_is_named() {
        let mut c = ok();
        c.election_timeout_min = c.heartbeat_interval;
        let e = c.validate().unwrap_err();
        assert!(matches!(e, ConfigError::ElectionNotAboveHeartbeat { .. }));
        assert!(e.to_string().contains("election_timeout_min"), "{e}");

        let mut c = ok();
        c.election_timeout_max = c.election_timeout_min - Duration::from_millis(1);
        assert!(c.validate().unwrap_err().to_string().contains("election_timeout_max"));

        // No members: a node that waits to be added to an existing cluster.
        let mut c = ok();
        c.members.clear();
        assert_eq!(c.validate(), Ok(()));

        let mut c = ok();
        c.members.push(NodeId(2));
        assert_eq!(c.validate(), Err(ConfigError::DuplicateMember(NodeId(2))));

        let mut c = ok();
        c.id = NodeId(9);
        assert!(c.validate().unwrap_err().to_string().contains("`id` (n9)"));

        let mut c = ok();
        c.clock_drift_bound = c.election_timeout_min;
        let e = c.validate().unwrap_err();
        assert!(matches!(e, ConfigError::DriftNotBelowElection { .. }));
        assert!(e.to_string().contains("clock_drift_bound"), "{e}");

        let mut c = ok();
        c.max_inflight_messages = 0;
        assert_eq!(c.validate(), Err(ConfigError::Zero("max_inflight_messages")));
        let mut c = ok();
        c.max_inflight_bytes = 0;
        assert_eq!(c.validate(), Err(ConfigError::Zero("max_inflight_bytes")));
        let mut c = ok();
        c.heartbeat_interval = Duration::ZERO;
        assert_eq!(c.validate(), Err(ConfigError::Zero("heartbeat_interval")));
    }
}
