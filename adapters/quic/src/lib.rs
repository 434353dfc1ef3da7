//! QUIC network adapter for raftkit: [`QuicNetwork`] implements [`raftkit::Network`] over
//! [quinn](https://docs.rs/quinn) with mutual TLS 1.3 ([rustls](https://docs.rs/rustls), ring
//! provider).
//!
//! ```no_run
//! use raftkit::{Config, NodeId, Raft};
//! use raftkit_mem::{MemKv, MemLogStore};
//! use raftkit_quic::{AddressBook, NodeCerts, QuicConfig, QuicNetwork};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // Once, offline: a CA (certs/ca) and a directory per node (certs/node-<id>) holding only what
//! // that node needs, never the CA key (`kv certs` in the examples does this).
//! raftkit_quic::generate_cluster("certs", &[NodeId(1), NodeId(2), NodeId(3)])?;
//!
//! // On node 1:
//! let book: AddressBook = [
//!     (NodeId(1), "10.0.0.1:7001".parse()?),
//!     (NodeId(2), "10.0.0.2:7001".parse()?),
//!     (NodeId(3), "10.0.0.3:7001".parse()?),
//! ]
//! .into_iter()
//! .collect();
//! // Missing, expired, mismatched, or next to the CA key: an error.
//! let certs = NodeCerts::load_from_dir("certs/node-1", NodeId(1))?;
//! let config = QuicConfig::new(NodeId(1), "0.0.0.0:7001".parse()?, certs).with_addresses(book);
//! let network = QuicNetwork::bind(config)?;
//! let members = [NodeId(1), NodeId(2), NodeId(3)];
//! let node =
//!     Raft::start(Config::new(NodeId(1), members), network, MemLogStore::new(), MemKv::new())
//!         .await?;
//! # let _ = node;
//! # Ok(())
//! # }
//! ```
//!
//! # Security model
//!
//! Every node holds a certificate signed by the cluster's CA that carries its identity as a
//! DNS subject alternative name, `node-<id>.raftkit` ([`certs::identity_name`]); exactly one
//! such name is allowed per certificate. Both sides of every connection authenticate:
//!
//! - The dialing node verifies that the server's certificate chains to the CA and carries the
//!   identity of the node it dialed (the TLS server name is that identity), so a node answering
//!   at a wrong address, or a machine outside the cluster, is refused.
//! - The accepting node requires a client certificate that chains to the CA, takes the peer's
//!   node id from it, and refuses the connection if that node is not in its
//!   [`AddressBook`] (or is itself). Every stream then starts with a header naming the sender;
//!   a header naming anyone but the certificate's node closes the connection.
//! - The `from` id handed to the engine is always the certificate's node, never a claim read
//!   from a frame.
//!
//! Refusals are logged (`tracing` at warn) and counted in [`QuicStats::handshake_rejections`];
//! nothing a refused peer sends reaches the engine. Only TLS 1.3 and the ALPN protocol
//! `raftkit/1` are accepted. The CA key is needed only to issue certificates: keep it offline.
//! Revocation is by replacing the CA (there is no CRL support yet).
//!
//! Every connection is a full handshake that checks both certificates, validity dates
//! included: TLS session resumption (tickets, session storage) and 0-RTT are disabled on both
//! sides, since a resumed session would skip the check. A connection does not outlive the
//! certificate it was authenticated with: each side closes it (close code 6, counted in
//! [`QuicStats::certificates_expired`]) when the peer's certificate expires.
//! [`QuicNetwork::reload_certs`] swaps this node's certificates without a restart, for every
//! connection made from then on.
//!
//! Before any handshake work, a client must prove it receives packets at its source address
//! (QUIC Retry, counted in [`QuicStats::address_validations`]), so spoofed packets cannot make
//! a node work or send for them. At most [`QuicConfig::max_concurrent_handshakes`] incoming
//! attempts are handled at once (handshake, authentication and the first stream header, which
//! must come within `connect_timeout`); attempts beyond it are refused at once
//! ([`QuicStats::handshakes_refused`]). Established connections are unaffected by a flood;
//! an attacker holding a valid member certificate can still occupy every slot for
//! `connect_timeout` at a time, delaying new connections (not existing ones).
//!
//! Certificates are checked when loaded ([`NodeCerts`]): a missing file, an unparsable one, a
//! CA that is not a CA, a certificate outside its validity period, one not issued by the CA or
//! not for the configured node, or a key that does not match it is a [`CertError`] that says
//! which file and what is wrong.
//!
//! # Wire format
//!
//! One QUIC connection per pair of nodes, whichever dialed, used in both directions (see
//! "Connections" below). Only unidirectional streams are used. Every stream starts with a
//! 20-byte header:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic and wire version: `R` `K` `Q` `0x01` |
//! | 4..12 | the sender's node id, u64 big endian (must match its certificate) |
//! | 12..20 | the sender's incarnation, u64 big endian: random per endpoint, so a new value means the peer restarted |
//!
//! followed by frames until the stream ends:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | length `n` of what follows, u32 big endian; `0 < n <=` [`QuicConfig::max_frame_bytes`] |
//! | 4..4+n | one message encoded by [`raftkit::codec`]: the codec's version byte, then the message |
//!
//! Streams, in priority order:
//!
//! 1. the **control** stream (one per direction, long-lived): votes, heartbeats and every
//!    response, in order;
//! 2. the **replication** stream (one per direction, long-lived): AppendEntries and other bulk
//!    messages, in order, pipelined (a send returns once the frames are queued, without waiting
//!    for the peer);
//! 3. one stream per **snapshot chunk** and per other **large message** (larger than
//!    [`QuicConfig::large_message_bytes`], such as a huge entry), carrying one frame, so that it
//!    never holds up the other streams.
//!
//! Messages to one peer therefore arrive in the order sent within each class; large messages
//! may overtake or fall behind the rest (the core tolerates reordering). A frame over the limit
//! (judged on its length prefix, before any of it is read) or one that does not decode stops
//! its stream with an application error code (1: too large, 2: malformed, 3: bad header), is
//! logged and counted ([`QuicStats::frames_oversized`], [`QuicStats::frames_malformed`]); the
//! connection, its other streams and other peers are unaffected, and the sender opens a new
//! stream for what follows.
//!
//! A frame's body must arrive within [`QuicConfig::frame_read_timeout`] of its length prefix
//! (stop code 4, [`QuicStats::frames_too_slow`]). Before its body is read, a frame reserves its
//! whole length in its connection's budget, [`QuicConfig::max_buffered_bytes`], and keeps it
//! until the message is in the peer's inbound share (below); a frame that does not fit is
//! refused at once (stop code 5, [`QuicStats::frames_over_budget`]). So a peer sending slowly,
//! on however many streams, holds at most that budget in memory, for a bounded time.
//!
//! Connection close codes: 0 shutdown, 1 duplicate connection, 2 identity refused,
//! 3 protocol violation, 4 peer moved (new address in the book), 5 peer removed from the book,
//! 6 the peer's certificate expired.
//!
//! # Connections
//!
//! A node dials a peer only when it has no connection to it. When both dial at once, both
//! keep the connection dialed by the smaller node id; a connection from a peer whose
//! incarnation changed replaces the old one at once (it leads to a dead process). A dial runs
//! on its own task, bounded by [`QuicConfig::connect_timeout`]; while it runs, sends to that
//! peer wait for it (and only sends to that peer). A failed dial starts a backoff that doubles
//! from [`QuicConfig::backoff_min`] to [`QuicConfig::backoff_max`], each wait drawn at random
//! from its upper half; during it, sends fail at once with `Unreachable` (unless the peer's
//! address changed, which allows an immediate attempt). A peer that shuts down says so (close
//! code 0), which starts a short backoff too. A connection we dialed to an address that is no
//! longer the peer's in the [`AddressBook`] is replaced on the next send. Removing a peer from
//! the book cuts it off: the next send to it fails and closes its connection (close code 5),
//! and a message arriving from it closes the connection instead of reaching the engine; it
//! cannot connect again while it is not in the book.
//!
//! The stateless-reset key is derived from the node's private key, so a node restarted on the
//! same address resets its peers' stale connections as soon as they send to it.
//!
//! # Inbound queue
//!
//! Every peer has its own share of the node's inbound queue, bounded in messages
//! ([`QuicConfig::peer_queue_messages`]) and bytes ([`QuicConfig::peer_queue_bytes`]), for
//! each of two classes: *priority* (votes, heartbeats and every response) and *bulk*
//! (AppendEntries, snapshot chunks, anything else). One task hands the queued messages to the
//! engine's inbox, waiting for room in it: one message per peer in turn (round robin), and
//! within a peer's turn its priority class first, so a peer's votes and heartbeats never wait
//! behind its own bulk traffic and no peer's traffic waits behind more than one message of
//! each other peer's. A peer whose share is full is not read further until the engine has
//! taken some of its messages: QUIC flow control then holds that peer back, and only it.
//! Nothing is dropped for lack of room. A member that floods the node therefore delays only
//! itself; the engine's own inbox (first in, first out) still holds up to its capacity of
//! messages already handed over. Messages that arrive before [`start`](raftkit::Network::start)
//! wait in the queue; `shutdown` drops what is queued.
//!
//! A peer that does not keep up with this node's sends (1024 batches queued on a stream, or
//! 8 large messages in flight) makes sends to it fail with `Unreachable`, and the engine
//! backs off.
//!
//! `shutdown` closes the endpoint and every connection with close code 0, stops delivering at
//! once, and gives the close frames 100 ms to leave.
//!
//! # Configuration
//!
//! | [`QuicConfig`] field | default | |
//! |---|---|---|
//! | `max_frame_bytes` | 64 MiB | largest frame sent or accepted (at most 4 GiB − 1) |
//! | `large_message_bytes` | 4 MiB | above this, a message gets its own stream |
//! | `connect_timeout` | 2 s | QUIC + TLS handshake; a send that must connect fails after this |
//! | `idle_timeout` | 10 s | a silent connection is closed (the smaller of both peers' values applies) |
//! | `keep_alive` | 1 s | pings on a silent connection: it stays open, and a dead peer is noticed within `idle_timeout` |
//! | `backoff_min` / `backoff_max` | 50 ms / 2 s | reconnection backoff, jittered |
//! | `frame_read_timeout` | 30 s | a frame's body must arrive within this of its length prefix |
//! | `max_buffered_bytes` | 128 MiB | frame bytes being read (or waiting for room) per connection; at least `max_frame_bytes` |
//! | `peer_queue_messages` / `peer_queue_bytes` | 1024 / 64 MiB | each peer's share of the inbound queue, per class |
//! | `max_concurrent_handshakes` | 64 | incoming connection attempts handled at once |
//!
//! Everything else is quinn's default: Cubic congestion control, its flow-control windows
//! (about 1.25 MB per stream, 10 MB of unacknowledged data per connection), path MTU
//! discovery. 64 concurrent unidirectional streams per direction; no bidirectional streams and
//! no datagrams.
//!
//! # Metrics
//!
//! [`QuicNetwork::stats`] returns [`QuicStats`]: frames and bytes sent and received, refused
//! frames by reason (too large, malformed, too slow, over budget), bytes being read,
//! connections dialed, accepted and reconnected, dial failures, handshake rejections,
//! duplicate connections closed, sends refused, open connections, handshakes in progress and
//! refused, address validations, and connections closed for an expired certificate.
//!
//! # Layout
//!
//! - `config`: [`QuicConfig`], [`AddressBook`], validation.
//! - [`certs`]: CA and node certificates — generation (rcgen), PEM files, load-time checks.
//! - `tls`: rustls and quinn configuration, peer identity.
//! - `wire`: stream header, frames, error codes.
//! - `link`: the one-connection-per-pair rules and the backoff, as pure functions.
//! - `network`: [`QuicNetwork`]: the endpoint, dialing and accepting, the per-peer links.
//! - `inbound`: the per-peer shares of the inbound queue and the task that empties them fairly.
//! - `streams`: the tasks of a connection: lane writers, large-message writers, stream readers.
//! - `stats`: counters.

pub mod certs;
mod config;
mod inbound;
mod link;
mod network;
mod stats;
mod streams;
mod tls;
mod wire;

pub use certs::{CertAuthority, CertError, NodeCerts, generate_cluster};
pub use config::{
    AddressBook, ConfigError, DEFAULT_LARGE_MESSAGE_BYTES, DEFAULT_MAX_BUFFERED_BYTES,
    DEFAULT_MAX_FRAME_BYTES, DEFAULT_PEER_QUEUE_BYTES, DEFAULT_PEER_QUEUE_MESSAGES, QuicConfig,
};
pub use network::{QuicError, QuicNetwork};
pub use stats::QuicStats;

/// The stream parser over in-memory bytes, for the fuzz targets only: compiled under
/// `--cfg fuzzing` (which cargo-fuzz sets), never in a normal build. It makes the same calls as
/// the stream reader (`streams`), with the input standing in for a QUIC stream.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing {
    use crate::wire::{self, FrameError, HEADER_LEN, PREFIX_LEN};

    /// Parses `bytes` as one stream — header, then frames of at most `limit` bytes, each decoded
    /// — until its end or the first refused frame. Returns the messages read (not yet validated:
    /// the core does that), or the error that would stop the stream.
    pub fn read_stream(bytes: &[u8], limit: usize) -> Result<Vec<raftkit::Message>, String> {
        let err = |e: FrameError| e.to_string();
        let header = bytes.first_chunk::<HEADER_LEN>().ok_or("stream ended inside the header")?;
        wire::Header::decode(header).map_err(err)?;
        let (mut rest, mut out) = (&bytes[HEADER_LEN..], Vec::new());
        while let Some((prefix, body)) = rest.split_first_chunk::<PREFIX_LEN>() {
            let len = wire::check_len(*prefix, limit).map_err(err)?;
            let frame = body.get(..len).ok_or("stream ended inside a frame")?;
            out.push(wire::decode_frame(frame).map_err(err)?);
            rest = &body[len..];
        }
        if rest.is_empty() { Ok(out) } else { Err("stream ended inside a length prefix".into()) }
    }
}
