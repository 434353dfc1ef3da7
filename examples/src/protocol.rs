//! The client protocol of the `kv` service: HTTP/1.1 with JSON bodies.
//!
//! | request | body | success reply (200) |
//! |---|---|---|
//! | `POST /v1/put` | [`PutRequest`] `{"key": "k", "value": "v"}` | [`PrevReply`] `{"prev": "old" or null}` |
//! | `POST /v1/get` | [`KeyRequest`] `{"key": "k"}` | [`GetReply`] `{"value": "v" or null}` |
//! | `POST /v1/delete` | [`KeyRequest`] | [`PrevReply`] |
//! | `POST /v1/cas` | [`CasRequest`] `{"key": "k", "expected": "a" or null, "new": "b" or null}` | [`CasReply`] `{"swapped": true, "current": "b"}` |
//! | `GET /v1/status` | — | [`StatusReply`] `{"nodes": [...]}` |
//! | `GET /metrics` | — | the engine's metrics, Prometheus text format |
//!
//! Every command, reads included, goes through the Raft log, so each is linearizable. Errors
//! carry an [`ErrorReply`] `{"kind": ..., "error": "...", "leader": 2 or null, "leader_api":
//! "127.0.0.1:8002" or null}`:
//!
//! | status | kind | meaning | safe to retry elsewhere |
//! |---|---|---|---|
//! | 400 | `bad_request` | malformed JSON, empty or oversized key or value | no: fix the request |
//! | 421 | `not_leader` | this node is not the leader; `leader` names it when known, and `leader_api` gives its API address (same scheme) when the node was told it (`kv node --peer-apis`) | yes: nothing was appended |
//! | 503 | `unavailable` | the node is stopping or failed | only reads (a write may have been appended) |
//! | 500 | `outcome_unknown` | the command was appended but its result is not known | only reads |
//! | 409 | `not_applied` | the command was appended, then replaced by a new leader: not applied | yes: it never took effect |

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
