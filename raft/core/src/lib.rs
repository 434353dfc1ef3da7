//! The Raft consensus protocol as a deterministic, sans-IO state machine.
//!
//! `raftkit-core` decides; it never does. It reads no clock, performs no IO, spawns nothing and
//! draws randomness only from a PRNG seeded through [`Config::seed`]. A driver — the async
//! engine in the `raftkit` crate, or a simulation in tests — feeds it inputs and carries out the
//! [`Action`]s it asks for. Given the same inputs, it produces the same outputs, so any run can
//! be replayed.
//!
//! # Using the core
//!
//! [`RaftCore`] has four groups of methods (the shape of quinn-proto's `Connection`):
//!
//! 1. **Inputs** (`handle_*`): something happened outside the core.
//!    - `handle_message(now, from, msg)`: a message arrived from a peer.
//!    - `handle_timeout(now)`: the instant last returned by `poll_timeout` has been reached.
//!    - `handle_persisted(now, id)`: the [`Action::Persist`] write `id` (and every earlier one)
//!      is durable.
//!    - `handle_applied(index)`: the state machine applied every entry up to `index`
//!      (after [`Action::Apply`]).
//!    - `handle_unreachable(peer)`: the transport gave up delivering a message to `peer`.
//!    - `handle_snapshot_built(now, meta)`: the snapshot asked for by
//!      [`Action::BuildSnapshot`] is stored.
//!    - `handle_snapshot_failed()`: building that snapshot failed.
//!    - `handle_snapshot_send_failed(peer)`: the snapshot an [`Action::SendSnapshot`] names
//!      could not be read (a newer one replaced it).
//!    - `handle_snapshot_received(now, from, meta, next_offset, installed)`: a chunk from an
//!      [`Action::ReceiveSnapshot`] was stored (and, when `installed`, the snapshot restored).
//! 2. **Commands**: `propose`, `propose_batch` (application commands, leader only),
//!    `forward` (a follower hands commands to the leader), `read_index` (a read that does not
//!    write the log), `transfer_leadership`, `campaign` (start an election now),
//!    `trigger_snapshot` (build a snapshot now).
//! 3. **Outputs**: `poll_action` until it returns `None`, then `poll_timeout`. Both are
//!    `#[must_use]`: every [`Action`] must be carried out, and every input may change the
//!    next timeout.
//! 4. **Getters**: role, term, vote, leader, commit and applied indexes, last log id,
//!    membership, snapshot, match indexes.
//!
//! The calling order: after each input or command (one or several), drain `poll_action`,
//! carrying out each action (asynchronous work reports back later through the input that
//! [`Action`]'s docs name), then read `poll_timeout` and arm a timer for it. Inputs take the
//! current `now`, which never goes backwards. Writes complete in id order (`handle_persisted`
//! acknowledges a write and every earlier one) and `handle_applied` reports a growing index;
//! the driver may interleave inputs of different kinds freely. A driver matches [`Action`] exhaustively,
//! so a new action is a compile error in every driver rather than a silently ignored output.
//!
//! A driver loop:
//!
//! ```
//! use raftkit_core::{Action, Config, InitialState, Instant, NodeId, RaftCore};
//!
//! let cfg = Config::new(NodeId(1), [NodeId(1)]);
//! let mut core = RaftCore::new(cfg, InitialState::default(), Instant::ZERO).unwrap();
//! let mut now = Instant::ZERO;
//! let mut applied = Vec::new();
//! for _ in 0..10 {
//!     while let Some(action) = core.poll_action() {
//!         match action {
//!             // Write durably, then acknowledge (a real driver does this asynchronously).
//!             Action::Persist(req) => core.handle_persisted(now, req.id),
//!             Action::Apply(req) => {
//!                 applied.extend(req.entries.unwrap());
//!                 core.handle_applied(req.last.index);
//!             }
//!             // Single node: nothing to send, and no snapshot policy reached here.
//!             Action::Send(_)
//!             | Action::SendFromLog(_)
//!             | Action::BuildSnapshot
//!             | Action::PurgeLog(_)
//!             | Action::SendSnapshot(_)
//!             | Action::ReceiveSnapshot(_)
//!             | Action::ReadIndex(_)
//!             | Action::Forwarded(_) => {}
//!         }
//!     }
//!     now = core.poll_timeout().unwrap();
//!     core.handle_timeout(now);
//! }
//! assert!(core.role() == raftkit_core::Role::Leader);
//! core.propose(now, "hello".into()).unwrap();
//! while let Some(action) = core.poll_action() {
//!     if let Action::Persist(req) = action {
//!         core.handle_persisted(now, req.id);
//!     }
//! }
//! assert_eq!(core.commit_index().0, 2); // the leader's no-op, then "hello"
//! ```
//!
//! # Safety rules the types enforce
//!
//! - **Persist before send.** Vote grants, a candidate's vote requests and append
//!   acknowledgements leave the core only after [`RaftCore::handle_persisted`] covers the write
//!   they depend on; the leader counts itself toward a quorum only for durable entries, and a
//!   candidate counts its own vote only once it is durable.
//! - **Term and vote are one record** ([`HardState`]), written atomically.
//! - **Commit by counting only current-term entries** (Raft §5.4.2); a new leader appends a
//!   no-op so earlier entries commit through it.
//! - **Quorums come from a [`Membership`]**, so joint configurations and learners reuse the same
//!   replication and election code.

#![cfg_attr(test, allow(clippy::unwrap_used))]

/// Whether the named mutant (a `Mutant` variant) is active on this core. Without the `mutants`
/// feature this is the literal `false`: the variant is never named and no mutant code is compiled.
#[cfg(feature = "mutants")]
macro_rules! mutant {
    ($core:expr, $m:ident) => {
        $core.cfg.mutant == Some(crate::Mutant::$m)
    };
}
#[cfg(not(feature = "mutants"))]
macro_rules! mutant {
    ($core:expr, $m:ident) => {
        false
    };
}

mod action;
pub mod codec;
mod confchange;
mod config;
mod election;
mod forward;
mod log;
mod membership;
mod message;
#[cfg(feature = "mutants")]
mod mutants;
mod progress;
pub mod quorum;
mod raft;
mod read;
mod replication;
mod rng;
mod snapshot;
mod time;
mod transfer;
mod types;

pub use action::{
    Action, ApplyRequest, Forwarded, LogWrite, Outgoing, PersistRequest, ReadReady,
    ReceiveSnapshot, SendFromLog, SendSnapshot, WriteId,
};
pub use confchange::{ChangeError, JointPolicy, MembershipChange};
pub use config::{Config, ConfigError};
pub use forward::ForwardError;
pub use log::LogStateError;
pub use membership::{MAX_MEMBERS, MAX_NODE_INFO_BYTES, Membership, MembershipError};
pub use message::{
    AppendEntries, AppendResponse, Heartbeat, HeartbeatAck, InstallSnapshot, InvalidMessage,
    MAX_ENTRIES_PER_MESSAGE, MAX_INDEX, MAX_TERM, Message, MessageBody, Propose, ProposeOutcome,
    ProposeResponse, ReadIndexRequest, ReadIndexResponse, RequestVote, SnapshotResponse,
    TimeoutNow, VoteResponse,
};
#[cfg(feature = "mutants")]
pub use mutants::Mutant;
pub use progress::ProgressState;
pub use raft::{InitialState, ProposeError, RaftCore, StartError};
pub use read::{ReadError, ReadId, ReadMode};
pub use rng::Rng;
pub use time::Instant;
pub use transfer::TransferError;
pub use types::{
    Entry, EntryPayload, HardState, LogId, LogIndex, NodeId, Role, SnapshotMeta, Term,
};
