//! raftkit: a Raft consensus engine you plug your own storage and transport into.
//!
//! A node is a [`Raft<N, L, S>`](Raft) built from a [`Config`], a [`Network`] (how nodes talk),
//! a [`LogStore`] (where the log is durable) and a [`StateMachine`] (what the log drives).
//! Adapters for each live in their own crates: `raftkit-mem` (in-memory network, log store and
//! key-value state machine), `raftkit-quic`, `raftkit-redb` and `raftkit-rocksdb`. The
//! `raftkit-testkit` crate checks any adapter against the contracts documented on the traits.
//!
//! # Architecture
//!
//! The protocol itself is the deterministic, sans-IO [`raftkit_core::RaftCore`]. `Raft::start`
//! spawns one driver task that owns the core and feeds it inputs (messages, timer expiries,
//! completed writes, applied entries, client proposals) and carries out its actions. Around the
//! driver:
//!
//! - a **log writer** task makes writes durable in order, merging all writes queued behind the
//!   one in progress into one `LogStore::write` (group commit: many proposals, one fsync);
//! - an **apply worker** task feeds committed entries to the state machine and answers clients;
//! - one **sender** task per peer, behind a bounded queue, so a slow or dead peer delays only
//!   itself. The leader ships entries to followers while its own write is still in flight; it
//!   counts itself toward a quorum only once its write is durable.
//!
//! Adapters whose calls finish at once (in-memory ones) can say so
//! ([`LogStore::inline_write`], [`Network::inline_send`], [`StateMachine::inline_apply`]): the
//! driver then makes the call itself whenever the helper task is idle, and hands it over only if
//! it did not finish, which takes task switches off the path of every commit. Either way calls
//! to the store stay one at a time, sends to a peer stay one at a time, in order, and so do
//! applies. The driver also lets a burst of proposals
//! gather before proposing them together, so one loop turn, one write and one message per peer
//! cover many client writes.
//!
//! Storage errors are fatal: the node stops and every later call reports the error
//! ([`Fatal`]). Network errors are retried by the protocol itself.
//!
//! # Snapshots and log compaction
//!
//! When the policy in [`Config`] says so (`snapshot_every` applied entries, or
//! `snapshot_log_bytes` of log since the last snapshot) or on [`Raft::trigger_snapshot`], the
//! apply worker asks the state machine for a [`SnapshotSource`] — a copy of its state at the
//! last applied entry — and a separate task streams it into the log store's
//! [`SnapshotStore`] while applying goes on. Once the snapshot is stored (checksummed, published
//! atomically), the log is purged up to it, except the last `snapshot_keep` entries, kept for
//! followers that are only a little behind.
//!
//! A follower that needs purged entries gets the snapshot instead, in chunks of
//! `snapshot_chunk_bytes` read from the store one at a time (memory is bounded by the chunk, not
//! the snapshot), while the leader goes on replicating to everyone else. The follower writes each
//! chunk that continues what it has and answers with the offset it holds, so a transfer cut off
//! by a partition resumes from there. On the last chunk it verifies size and checksum, restores
//! the state machine, then replaces the log's prefix ([`LogStore::install_snapshot`]); a
//! snapshot older than what the follower has committed is refused. A crash part-way leaves
//! either the old state (the snapshot was not complete) or a stored snapshot that the next
//! start installs before anything else.
//!
//! # Membership changes
//!
//! A node starts in one of two ways:
//!
//! - **Bootstrap**: every node of a new cluster gets the same [`Config::members`], which is
//!   the cluster's first configuration.
//! - **Join**: a node added to a running cluster starts with empty `members` and an empty
//!   store. It has no configuration, never campaigns, and waits until a leader adds it
//!   ([`Raft::add_learner`]); it learns the configuration from the log it receives.
//!
//! A node restarted from its store uses the configuration in its log or snapshot, whatever
//! `members` says (it logs a warning when they differ): `members` only bootstraps.
//!
//! [`Raft::change_membership`] adds and removes voters and learners, promotes and demotes
//! ([`ChangeMembers`]). Configurations travel in the log: a node uses the latest one in its
//! log, committed or not, and falls back to the previous one if a new leader overwrites it
//! (Raft thesis §4.1). A change of one voter is applied directly; a change of several goes
//! through a joint configuration, in which elections and commits need a majority of the old
//! voters and of the new ones, and which the leader leaves by itself once it is committed
//! (or on request: [`ChangeOptions::joint`]). The core enforces the rules that make this
//! safe, rather than documenting them: one uncommitted change at a time, no change before the
//! leader has committed an entry of its own term, learners far behind are not promoted unless
//! forced, and a leader removed by a change leads until the change commits, then steps down.
//! Learners receive the log and snapshots but never vote, campaign or count toward a quorum.
//! A removed node cannot disturb the cluster: its vote requests are dropped.
//!
//! The configuration also carries opaque node information per node (an address), so that
//! every node — and every future leader — learns how to reach a node added after it started:
//! the engine hands it to [`Network::update_peers`] (the QUIC adapter adds the address to its
//! book). [`RaftMetrics::membership`] shows the configuration in force and, on the leader,
//! `replication` shows each learner's progress.
//!
//! # Reads without the log: which read to use when
//!
//! A write goes through the log: a quorum round trip and an fsync on every node. A read need
//! not. [`Raft::client_read`] answers a [`StateMachine::Query`] with
//! [`StateMachine::query`] once the read is confirmed under a [`ReadPolicy`] and the state
//! machine has applied up to the read index; [`Raft::read_barrier`] only waits (for
//! applications that read their own state). Nothing is written, on any node.
//!
//! | policy | where | costs | linearizable | use it when |
//! |---|---|---|---|---|
//! | [`ReadPolicy::Linearizable`] (default) | leader | one heartbeat round, shared by every read waiting | always | you need correct answers whatever the clocks do |
//! | [`ReadPolicy::Lease`] | leader | nothing while the lease holds | if clocks drift less than `clock_drift_bound` | reads dominate and clocks are sane (needs `check_quorum`) |
//! | [`ReadPolicy::Follower`] | any node | one message to the leader (batched) + local apply | always | read load should spread over the followers |
//! | [`ReadPolicy::Stale`] | any node | nothing | no: may be old | a slightly old answer is fine (dashboards, caches) |
//!
//! The rules behind them (Raft thesis §6.4; PITFALLS P11), enforced by the core: no read is
//! served before the leader has committed an entry of its own term; each confirmation round
//! has its own increasing id, echoed by the followers, and an answer to an earlier round never
//! confirms a later read; a lease runs from when the confirmed round was *sent*, for
//! `election_timeout_min - clock_drift_bound`, and holds neither during a leadership transfer
//! nor after a step-down; a restarted node ignores vote requests for an election timeout, as if
//! it still heard from the leader whose lease it may have confirmed. A read fails with
//! [`ReadError::NotLeader`] (with the leader's id), [`ReadError::LeadershipLost`] or
//! [`ReadError::Timeout`] (twice `election_timeout_max`, e.g. a follower cut off from its
//! leader); reads never change anything, so every failed read may simply be retried.
//!
//! # Leadership transfer and forwarding
//!
//! [`Raft::transfer_leadership`] hands leadership to a voter (or the most up-to-date one):
//! the leader refuses new writes meanwhile ([`WriteError::TransferInProgress`], retryable),
//! brings the target up to date and tells it to campaign at once; voters answer that campaign
//! although they still hear from the leader. The transfer is given up after
//! `election_timeout_max`. A leader's graceful [`Raft::shutdown`] transfers first
//! ([`Config::transfer_on_shutdown`]), so a rolling restart costs no election timeout.
//!
//! [`Raft::client_write`] on a follower forwards the command to the leader
//! ([`Config::forward_proposals`], on by default), waits until it is applied locally and
//! answers with the output computed here; it fails like a write on the leader if the entry is
//! overwritten, and with [`WriteError::ForwardOutcomeUnknown`] if the leader changed before
//! answering. Forwarded writes share the proposal queue's bound.
//!
//! # Logs and spans
//!
//! Every task of a node runs in a `tracing` span `raft{node=…}`; the driver's work runs, within
//! it, in a `state{term=… role=…}` span that is replaced when the term or the role changes. So
//! every line a node logs (the core's included) says which node, and for the driver in which
//! term and role, it was said. At `info`/`warn`: the node starting and stopping, campaigns
//! started, won and lost, a leader stepping down, snapshots sent, installed and refused; fatal
//! errors at `error`. Per-message detail is at `debug` and `trace`.
//!
//! # Metrics
//!
//! A node records through the [`metrics`](https://docs.rs/metrics) facade; raftkit installs no
//! recorder. An application that wants them installs one (for example
//! `metrics-exporter-prometheus`, as the `kv` example does) **before** starting its nodes: a
//! node registers its handles once, when it starts (and once per peer, when it first sends to
//! it), so recording costs an atomic update, no allocation. Every metric has a `node` label (the
//! node id); per-peer ones a `peer` label too.
//!
//! | name | kind | what |
//! |---|---|---|
//! | `raftkit_proposals_total` | counter | commands proposed to this node as leader |
//! | `raftkit_proposals_rejected_total` | counter | commands refused: not the leader |
//! | `raftkit_commits_total` | counter | log entries this node learned to be committed |
//! | `raftkit_applied_total` | counter | log entries applied to the state machine |
//! | `raftkit_log_write_seconds` | histogram | latency of one log store write (append + sync) |
//! | `raftkit_log_write_entries` | histogram | entries per log store write (group commit) |
//! | `raftkit_sent_bytes_total` | counter, `peer` | estimated encoded bytes handed to the network |
//! | `raftkit_sent_messages_total` | counter, `peer` | messages handed to the network |
//! | `raftkit_elections_total` | counter | elections this node started as a candidate |
//! | `raftkit_elections_won_total` | counter | elections this node won |
//! | `raftkit_step_downs_total` | counter | times this node stopped being the leader |
//! | `raftkit_snapshots_sent_total` | counter, `peer` | snapshot transfers whose last chunk was sent |
//! | `raftkit_snapshots_received_total` | counter | snapshots received and installed |
//! | `raftkit_snapshots_refused_total` | counter | received snapshots refused (bad checksum, or the state machine could not restore) |
//! | `raftkit_replication_lag` | gauge, `peer` | on the leader: its last log index minus the peer's match index (0 elsewhere) |
//! | `raftkit_term` | gauge | the current term |
//! | `raftkit_is_leader` | gauge | 1 while this node leads, else 0 |
//!
//! The same figures as plain values (commit, applied, match index per peer, …) are in
//! [`RaftMetrics`], published through [`Raft::metrics`].
//!
//! # Example
//!
//! ```
//! use raftkit::{Config, NodeId, Raft};
//! use raftkit_mem::{KvCommand, KvOutput, MemKv, MemLogStore, MemRouter};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let router = MemRouter::new(7);
//! let members = [NodeId(1), NodeId(2), NodeId(3)];
//! let mut nodes = Vec::new();
//! for id in members {
//!     let config = Config::new(id, members);
//!     let node = Raft::start(config, router.network(id), MemLogStore::new(), MemKv::new())
//!         .await
//!         .unwrap();
//!     nodes.push(node);
//! }
//! // Wait for a leader, then write through it.
//! let leader = nodes[0]
//!     .wait_for(std::time::Duration::from_secs(10), |m| m.leader.is_some())
//!     .await
//!     .unwrap()
//!     .leader
//!     .unwrap();
//! let leader = &nodes[(leader.0 - 1) as usize];
//! let out = leader.client_write(KvCommand::put("greeting", "hello")).await.unwrap();
//! assert_eq!(out, KvOutput::Prev(None));
//! for n in &nodes {
//!     n.shutdown().await.unwrap();
//! }
//! # }
//! ```

/// The README's examples, compiled as doc tests so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

mod driver;
mod error;
pub mod fs;
mod membership;
mod metrics;
mod proposals;
mod raft;
mod reads;
mod snapshot_store;
mod startup;
pub mod store;
mod telemetry;
mod traits;
mod workers;

pub use error::{
    Fatal, Inconsistency, NetworkError, NetworkErrorKind, ReadError, StartError, StorageError,
    StorageErrorKind, TransferError, WriteError,
};
pub use membership::{ChangeMembers, ChangeMembershipError, ChangeOptions};
pub use metrics::{NodeState, NodeStatus, Observer, RaftMetrics};
pub use raft::{Raft, RaftHandle};
pub use reads::ReadPolicy;
pub use snapshot_store::{
    EncodedSnapshot, Expected, FileSnapshotStore, MemSnapshotStore, SnapshotStore, SnapshotWriter,
    decode_snapshot,
};
pub use traits::{
    ApplyEntry, ApplyPayload, Inbound, Inbox, LogState, LogStore, Network, SnapshotSource,
    StateMachine,
};

/// The protocol core and its types, re-exported so users depend on `raftkit` alone.
pub use raftkit_core as core;
#[cfg(feature = "mutants")]
pub use raftkit_core::Mutant;
pub use raftkit_core::{
    AppendEntries, AppendResponse, Config, ConfigError, Entry, EntryPayload, HardState, Heartbeat,
    InstallSnapshot, JointPolicy, LogId, LogIndex, LogWrite, Membership, Message, MessageBody,
    NodeId, RequestVote, Role, SnapshotMeta, SnapshotResponse, Term, VoteResponse, codec,
};
