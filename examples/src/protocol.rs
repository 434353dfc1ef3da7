//! The client protocol of the `kv` service: HTTP/1.1 with JSON bodies.
//!
//! | request | body | success reply (200) |
//! |---|---|---|
//! | `POST /v1/put` | [`PutRequest`] `{"key": "k", "value": "v"}` | [`PrevReply`] `{"prev": "old" or null}` |
//! | `POST /v1/get` (`?read=linearizable`, `lease`, `follower` or `stale`; see [`ReadLevel`]) | [`KeyRequest`] `{"key": "k"}` | [`GetReply`] `{"value": "v" or null}` |
//! | `POST /v1/delete` | [`KeyRequest`] | [`PrevReply`] |
//! | `POST /v1/cas` | [`CasRequest`] `{"key": "k", "expected": "a" or null, "new": "b" or null}` | [`CasReply`] `{"swapped": true, "current": "b"}` |
//! | `GET /v1/status` | — | [`StatusReply`] `{"nodes": [...]}` |
//! | `GET /metrics` | — | the engine's metrics, Prometheus text format |
//! | `GET /v1/members` | — | [`MembersReply`]: the configuration this node sees |
//! | `POST /v1/members/add-learner` | [`AddLearnerRequest`] `{"id": 4, "addr": "127.0.0.1:7004"}` | [`MembersReply`], once node 4 is a learner and has caught up |
//! | `POST /v1/members/promote` | [`MemberRequest`] `{"id": 4}` | [`MembersReply`], once learner 4 votes |
//! | `POST /v1/members/remove` | [`MemberRequest`] `{"id": 2}` | [`MembersReply`], once voter or learner 2 is out |
//! | `POST /v1/transfer-leader` | [`TransferRequest`] `{"to": 2 or null}` | [`TransferReply`] `{"from": 1, "leader": 2, "leader_api": …}`, once node 2 leads |
//!
//! The membership requests and the leadership transfer take an optional `"timeout_ms"` (default
//! [`DEFAULT_CHANGE_TIMEOUT_MS`], at most [`MAX_CHANGE_TIMEOUT_MS`]): how long the server waits
//! for the change to commit (and, for add-learner, for the learner to catch up with the
//! leader's commit index as of the request) before it answers `timeout`. A change is made by
//! the leader, one at a time; a voter change adds or removes one voter directly, without a
//! joint configuration.
//!
//! Writes (put, delete, cas) go through the Raft log. A get does not: it is answered from a
//! node's key-value state once the read is confirmed under its [`ReadLevel`] (default
//! `linearizable`: on the leader, after one heartbeat round confirms it still leads). Errors
//! carry an [`ErrorReply`] `{"kind": ..., "error": "...", "leader": 2 or null, "leader_api":
//! "127.0.0.1:8002" or null}`:
//!
//! | status | kind | meaning | safe to retry elsewhere |
//! |---|---|---|---|
//! | 400 | `bad_request` | malformed JSON, empty or oversized key or value, an unknown `read` level, a lease read on a node whose configuration turns `check_quorum` off | no: fix the request |
//! | 421 | `not_leader` | this node is not the leader (or, for a `follower` read, knows no leader); `leader` names it when known, and `leader_api` gives its API address (same scheme) when the node was told it (`kv node --peer-apis`) | yes: nothing was appended |
//! | 503 | `unavailable` | the node is stopping or failed; for a read also: it was not confirmed in time (a node cut off from the leader) | only reads (a write may have been appended) |
//! | 500 | `outcome_unknown` | the command was appended but its result is not known | only reads |
//! | 409 | `not_applied` | the command was appended, then replaced by a new leader: not applied | yes: it never took effect |
//! | 409 | `retry_later` | nothing was done, and the same request may succeed in a moment: a write or a membership change while the leader hands leadership over; a read whose leader changed before it was confirmed, or with too many reads waiting; membership requests: another change is in progress, the leader was elected moments ago, or the learner to promote is still catching up; a leadership transfer: another is in progress, or the target did not take over in time | yes, after a moment (to the same node) |
//! | 504 | `timeout` | membership requests and transfers only: the change did not finish within `timeout_ms`; the error says what is known (for add-learner: whether the node is a learner already) | check `GET /v1/members` first |
//!
//! A membership request that names a node in the wrong role (promoting a node that is not a
//! learner, removing one that is not a member, adding a voter as a learner), that would leave
//! no voters, or whose `id` or `addr` is malformed is a 400 `bad_request`.

use serde::{Deserialize, Serialize};

/// The longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// The longest value accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// `POST /v1/put`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    /// The key.
    pub key: String,
    /// The new value.
    pub value: String,
}

/// `POST /v1/get` and `POST /v1/delete`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRequest {
    /// The key.
    pub key: String,
}

/// `POST /v1/cas`: set `key` to `new` (remove it if null) if its value is `expected` (absent if
/// null).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CasRequest {
    /// The key.
    pub key: String,
    /// The value the key must have; null: the key must be absent.
    pub expected: Option<String>,
    /// The value to store; null: remove the key.
    pub new: Option<String>,
}

/// The reply to a put or a delete: the value before.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrevReply {
    /// The key's previous value.
    pub prev: Option<String>,
}

/// The reply to a get.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetReply {
    /// The key's value.
    pub value: Option<String>,
}

/// The reply to a compare-and-swap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CasReply {
    /// Whether the expected value matched and the new one was stored.
    pub swapped: bool,
    /// The key's value afterwards.
    pub current: Option<String>,
}

/// One node in a [`StatusReply`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's id.
    pub id: u64,
    /// `leader`, `follower`, `candidate` or `pre-candidate`.
    pub role: String,
    /// Its current term.
    pub term: u64,
    /// The leader it knows of.
    pub leader: Option<u64>,
    /// The leader's API address (`host:port`, same scheme as this one), when known.
    #[serde(default)]
    pub leader_api: Option<String>,
    /// Its commit index.
    pub commit: u64,
    /// The last index applied to its key-value state.
    pub applied: u64,
    /// The index of its last log entry.
    pub last_log: u64,
    /// The index its latest snapshot covers, if any.
    pub snapshot: Option<u64>,
    /// The voting members as it sees them.
    pub voters: Vec<u64>,
    /// When it leads: how far behind each other node is (empty otherwise).
    #[serde(default)]
    pub replication: Vec<PeerLag>,
    /// Why the node stopped serving, if it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// The most recent error the node recovered from (a peer it could not reach, say).
    #[serde(default)]
    pub last_error: Option<String>,
    /// A digest of the key-value state: two nodes that applied the same index and show the
    /// same digest applied the same sequence of entries.
    #[serde(default)]
    pub digest: Option<StateDigest>,
}

/// A follower's replication progress as its leader sees it, in a [`NodeStatus`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerLag {
    /// The follower's id.
    pub id: u64,
    /// The highest index known durable in its log.
    pub matched: u64,
    /// The leader's last log index minus `matched`.
    pub lag: u64,
}

/// The digest of a node's key-value state, in a [`NodeStatus`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateDigest {
    /// The last index applied to the state (0: nothing yet).
    pub applied: u64,
    /// The digest of every entry applied up to it, 16 hex digits.
    pub digest: String,
}

/// `GET /v1/status`: the nodes this address serves (one, or every node of an in-process
/// cluster).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    /// The nodes.
    pub nodes: Vec<NodeStatus>,
}

/// The reply to `GET /v1/members` and to every membership change: a node's view of the
/// cluster configuration (after a change: the configuration the change led to).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersReply {
    /// The node whose view this is.
    pub id: u64,
    /// Its role (`leader`, `follower`, `learner`, …; see [`NodeStatus::role`]).
    pub role: String,
    /// The leader it knows of.
    pub leader: Option<u64>,
    /// The leader's API address (`host:port`, same scheme as this one), when known.
    #[serde(default)]
    pub leader_api: Option<String>,
    /// The voter sets: one, or two during a joint change (the old set, then the new one; a
    /// decision then needs a majority of each). Empty on a node that joined and was not added
    /// yet.
    pub voters: Vec<Vec<u64>>,
    /// The learners: members that receive the log but do not vote.
    pub learners: Vec<u64>,
    /// Whether the configuration is joint (two voter sets).
    pub joint: bool,
    /// Whether the configuration is committed; if not, a change is in progress.
    pub committed: bool,
    /// Every member (voters, then learners, each in id order).
    pub nodes: Vec<MemberStatus>,
}

/// One member in a [`MembersReply`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// The node's id.
    pub id: u64,
    /// `voter` or `learner`.
    pub role: String,
    /// The node information the membership carries for it: the Raft (QUIC) address it was
    /// added with. Null for the nodes the cluster was started with (their addresses come from
    /// each node's `--peers`).
    pub addr: Option<String>,
    /// When the answering node leads: the highest index known durable in this member's log
    /// (null for the leader itself, and on other nodes).
    pub matched: Option<u64>,
    /// When the answering node leads: its last log index minus `matched`.
    pub lag: Option<u64>,
}

/// `POST /v1/members/add-learner`: add node `id` as a learner and wait until it has caught
/// up with the leader's commit index (as of the request).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddLearnerRequest {
    /// The new node's id (a positive integer).
    pub id: u64,
    /// Its Raft address, `ip:port` (its QUIC endpoint), which every member learns from the
    /// membership. Required on the QUIC network; unused on the in-memory one.
    #[serde(default)]
    pub addr: Option<String>,
    /// How long to wait, in milliseconds (see the module docs).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// `POST /v1/members/promote` (make learner `id` a voter) and `POST /v1/members/remove`
/// (remove voter or learner `id`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberRequest {
    /// The node's id.
    pub id: u64,
    /// How long to wait, in milliseconds (see the module docs).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// `POST /v1/transfer-leader`: hand leadership to node `to`, or with null to the most
/// up-to-date other voter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    /// The voter to hand leadership to; null: the leader picks the most up-to-date one.
    #[serde(default)]
    pub to: Option<u64>,
    /// How long to wait for the new leader, in milliseconds (as for membership requests; the
    /// engine gives a transfer up after twice `election_timeout_max` anyway).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// The reply to a leadership transfer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferReply {
    /// The node that led when the request arrived.
    pub from: u64,
    /// The node that leads now (equal to `from` if it was the one asked for already).
    pub leader: u64,
    /// The new leader's API address (`host:port`, same scheme as this one), when known.
    #[serde(default)]
    pub leader_api: Option<String>,
}

/// How a get is confirmed: the `read` query parameter of `POST /v1/get`, and `kv get
/// --read`. Each maps to a [`raftkit::ReadPolicy`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum ReadLevel {
    /// On the leader, after one heartbeat round (shared by the reads waiting at that moment)
    /// confirms it still leads. Linearizable whatever the clocks do. The default.
    #[default]
    Linearizable,
    /// On the leader, without the round while its lease holds (a quorum confirmed it within
    /// `election_timeout_min - clock_drift_bound`). Linearizable as long as the nodes' clocks
    /// drift apart by less than `clock_drift_bound`; needs `check_quorum`.
    Lease,
    /// On any node: it asks the leader for the read index, waits until it has applied up to
    /// it, and answers from its own state. Linearizable, and spreads reads over the followers.
    Follower,
    /// On any node, from what it has applied now, asking no one: may be old (a lagging
    /// follower, a deposed leader). Not linearizable.
    Stale,
}

impl ReadLevel {
    /// Every level, in the order the help lists them.
    pub const ALL: [ReadLevel; 4] =
        [ReadLevel::Linearizable, ReadLevel::Lease, ReadLevel::Follower, ReadLevel::Stale];

    /// The name used on the command line and in the query parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadLevel::Linearizable => "linearizable",
            ReadLevel::Lease => "lease",
            ReadLevel::Follower => "follower",
            ReadLevel::Stale => "stale",
        }
    }

    /// The engine's read policy.
    pub fn policy(self) -> raftkit::ReadPolicy {
        match self {
            ReadLevel::Linearizable => raftkit::ReadPolicy::Linearizable,
            ReadLevel::Lease => raftkit::ReadPolicy::Lease,
            ReadLevel::Follower => raftkit::ReadPolicy::Follower,
            ReadLevel::Stale => raftkit::ReadPolicy::Stale,
        }
    }

    /// Whether only the leader serves it (a follower answers `not_leader`).
    pub fn leader_only(self) -> bool {
        matches!(self, ReadLevel::Linearizable | ReadLevel::Lease)
    }
}

impl std::fmt::Display for ReadLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ReadLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<ReadLevel, String> {
        ReadLevel::ALL.into_iter().find(|l| l.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = ReadLevel::ALL.iter().map(|l| l.as_str()).collect();
            format!("unknown read level {s:?}; use one of {}", names.join(", "))
        })
    }
}

/// The read level of a `POST /v1/get` from its query string (`read=lease`; none: the
/// default). Any other parameter, or a repeated one, is refused.
pub fn read_level_from_query(query: Option<&str>) -> Result<ReadLevel, String> {
    let mut level = None;
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("read", value)) if level.is_none() => level = Some(value.parse()?),
            Some(("read", _)) => return Err("the `read` parameter is given twice".into()),
            _ => {
                return Err(format!(
                    "unknown query parameter {pair:?}; a get takes only `read` (e.g. ?read=lease)"
                ));
            }
        }
    }
    Ok(level.unwrap_or_default())
}

/// How long a membership request waits when it names no `timeout_ms`.
pub const DEFAULT_CHANGE_TIMEOUT_MS: u64 = 60_000;
/// The longest `timeout_ms` accepted (one hour).
pub const MAX_CHANGE_TIMEOUT_MS: u64 = 3_600_000;

/// Checks a membership request's node id, address and timeout; returns the timeout to use.
pub fn validate_change(
    id: u64,
    addr: Option<&str>,
    timeout_ms: Option<u64>,
) -> Result<u64, String> {
    if id == 0 {
        return Err("node ids start at 1".into());
    }
    if let Some(addr) = addr {
        addr.trim().parse::<std::net::SocketAddr>().map_err(|e| {
            format!("the address {addr:?} is not an ip:port socket address (the node's QUIC endpoint): {e}")
        })?;
    }
    validate_timeout(timeout_ms)
}

/// Checks a request's `timeout_ms`; returns the timeout to use.
pub fn validate_timeout(timeout_ms: Option<u64>) -> Result<u64, String> {
    match timeout_ms.unwrap_or(DEFAULT_CHANGE_TIMEOUT_MS) {
        0 => Err("timeout_ms must be positive".into()),
        t if t > MAX_CHANGE_TIMEOUT_MS => {
            Err(format!("timeout_ms is {t}; the limit is {MAX_CHANGE_TIMEOUT_MS} (one hour)"))
        }
        t => Ok(t),
    }
}

/// What went wrong, in an [`ErrorReply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request is malformed (HTTP 400).
    BadRequest,
    /// The node is not the leader (HTTP 421).
    NotLeader,
    /// The node is stopping or has failed (HTTP 503).
    Unavailable,
    /// The command was appended, but whether it took effect is unknown (HTTP 500).
    OutcomeUnknown,
    /// The command was appended but a new leader replaced it: it was not applied and never
    /// will be, so it is safe to send again (HTTP 409).
    NotApplied,
    /// Nothing was done, and the same request may succeed shortly (HTTP 409): a membership
    /// change while another one is in progress, before the leader committed an entry of its
    /// term, or with the learner to promote behind; a write or a change while the leader hands
    /// leadership over; a read whose leader changed before it was confirmed, or with too many
    /// reads waiting; a leadership transfer while another one runs, or whose target did not
    /// take over in time.
    RetryLater,
    /// A membership change did not finish within the request's timeout; the message says what
    /// is known. It may still complete: look at `GET /v1/members` (HTTP 504).
    Timeout,
}

/// The body of every error reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// The kind of error.
    pub kind: ErrorKind,
    /// A human-readable description.
    pub error: String,
    /// The leader, when the kind is `not_leader` and it is known.
    pub leader: Option<u64>,
    /// The leader's API address (`host:port`, same scheme as this one), when the kind is
    /// `not_leader` and the address is known: send the request there.
    #[serde(default)]
    pub leader_api: Option<String>,
}

/// Checks a key and optional values against the protocol's limits.
pub fn validate(key: &str, values: &[Option<&str>]) -> Result<(), String> {
    if key.is_empty() {
        return Err("the key is empty".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!("the key is {} bytes; the limit is {MAX_KEY_BYTES}", key.len()));
    }
    for v in values.iter().flatten() {
        if v.len() > MAX_VALUE_BYTES {
            return Err(format!("a value is {} bytes; the limit is {MAX_VALUE_BYTES}", v.len()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_levels_parse_from_the_query_string() {
        assert_eq!(read_level_from_query(None), Ok(ReadLevel::Linearizable));
        assert_eq!(read_level_from_query(Some("")), Ok(ReadLevel::Linearizable));
        for level in ReadLevel::ALL {
            let query = format!("read={level}");
            assert_eq!(read_level_from_query(Some(&query)), Ok(level));
            assert_eq!(level.as_str().parse::<ReadLevel>(), Ok(level));
        }
        for (query, says) in [
            (
                "read=fast",
                "unknown read level \"fast\"; use one of linearizable, lease, follower, stale",
            ),
            ("read=", "unknown read level \"\""),
            ("read=Lease", "unknown read level"),
            ("reed=lease", "unknown query parameter \"reed=lease\""),
            ("read", "unknown query parameter"),
            ("read=lease&read=stale", "given twice"),
        ] {
            let e = read_level_from_query(Some(query)).unwrap_err();
            assert!(e.contains(says), "{query}: {e}");
        }
    }
}
