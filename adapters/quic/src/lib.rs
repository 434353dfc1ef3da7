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
//! // Once, offline: a CA and a certificate per node (`kv certs` in the examples does this).
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
//! let certs = NodeCerts::load_from_dir("certs", NodeId(1))?; // missing/expired/mismatched: an error
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
//! Connection close codes: 0 shutdown, 1 duplicate connection, 2 identity refused,
//! 3 protocol violation, 4 peer moved (new address in the book), 5 peer removed from the book.
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
//! Received messages go to the engine's inbox without waiting: if the node is overloaded they
//! are dropped (Raft tolerates loss), so no peer can hold up another, or shutdown. A peer that
//! does not keep up (1024 batches queued on a stream, or 8 large messages in flight) makes
//! sends to it fail with `Unreachable`, and the engine backs off.
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
//!
//! Everything else is quinn's default: Cubic congestion control, its flow-control windows
//! (about 1.25 MB per stream, 10 MB of unacknowledged data per connection), path MTU
//! discovery. 64 concurrent unidirectional streams per direction; no bidirectional streams and
//! no datagrams.
//!
//! # Metrics
//!
//! [`QuicNetwork::stats`] returns [`QuicStats`]: frames and bytes sent and received, refused
//! frames by reason, connections dialed, accepted and reconnected, dial failures, handshake
//! rejections, duplicate connections closed, sends refused, and open connections.
//!
//! # Layout
//!
//! - `config`: [`QuicConfig`], [`AddressBook`], validation.
//! - [`certs`]: CA and node certificates — generation (rcgen), PEM files, load-time checks.
//! - `tls`: rustls and quinn configuration, peer identity.
//! - `wire`: stream header, frames, error codes.
//! - `link`: the one-connection-per-pair rules and the backoff, as pure functions.
//! - `network`: [`QuicNetwork`]: the endpoint, dialing and accepting, the per-peer links.
//! - `streams`: the tasks of a connection: lane writers, large-message writers, stream readers.
//! - `stats`: counters.

pub mod certs;
mod config;
mod link;
mod network;
mod stats;
mod streams;
mod tls;
mod wire;

pub use certs::{CertAuthority, CertError, NodeCerts, generate_cluster};
pub use config::{
    AddressBook, ConfigError, DEFAULT_LARGE_MESSAGE_BYTES, DEFAULT_MAX_FRAME_BYTES, QuicConfig,
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
