//! [`QuicConfig`]: what a [`QuicNetwork`](crate::QuicNetwork) needs, validated field by field,
//! and the [`AddressBook`] it dials from.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use raftkit::NodeId;

use crate::certs::NodeCerts;

/// Node id → socket address of every peer, shared and updatable at runtime: clones share one
/// table, and every dial reads the current entry (a connection to an address that is no longer
/// the peer's is replaced on the next send; a peer removed from the book is cut off, its open
/// connection closed on the next send to it or message from it).
#[derive(Clone, Debug, Default)]
pub struct AddressBook {
    inner: Arc<RwLock<BTreeMap<NodeId, SocketAddr>>>,
}

impl AddressBook {
    /// An empty book.
    pub fn new() -> AddressBook {
        AddressBook::default()
    }

    /// Sets `node`'s address, returning the previous one.
    pub fn insert(&self, node: NodeId, addr: SocketAddr) -> Option<SocketAddr> {
        self.inner.write().unwrap_or_else(|p| p.into_inner()).insert(node, addr)
    }

    /// Forgets `node`, returning its address.
    pub fn remove(&self, node: NodeId) -> Option<SocketAddr> {
        self.inner.write().unwrap_or_else(|p| p.into_inner()).remove(&node)
    }

    /// `node`'s address, if known.
    pub fn get(&self, node: NodeId) -> Option<SocketAddr> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).get(&node).copied()
    }

    /// Whether `node` is in the book. Connections from nodes not in the book are refused.
    pub fn contains(&self, node: NodeId) -> bool {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).contains_key(&node)
    }

    /// A copy of every entry, in node order.
    pub fn entries(&self) -> Vec<(NodeId, SocketAddr)> {
        let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
        g.iter().map(|(k, v)| (*k, *v)).collect()
    }
}

impl FromIterator<(NodeId, SocketAddr)> for AddressBook {
    fn from_iter<T: IntoIterator<Item = (NodeId, SocketAddr)>>(iter: T) -> Self {
        let book = AddressBook::new();
        for (n, a) in iter {
            book.insert(n, a);
        }
        book
    }
}

/// The default frame limit: 64 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 << 20;
/// The default size above which a message gets a stream of its own: 4 MiB, above what the
/// engine's default `max_bytes_per_message` (1 MiB of entries) produces, so ordinary
/// AppendEntries stay on the ordered replication stream.
pub const DEFAULT_LARGE_MESSAGE_BYTES: usize = 4 << 20;
/// The default budget of frame bytes being read per connection: 128 MiB, two frames of the
/// default largest size.
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 128 << 20;
/// The default share of each peer in the node's inbound queue, per class of message: 1024
/// messages.
pub const DEFAULT_PEER_QUEUE_MESSAGES: usize = 1024;
/// The default share of each peer in the node's inbound queue, per class of message: 64 MiB.
pub const DEFAULT_PEER_QUEUE_BYTES: usize = 64 << 20;

/// Settings of a [`QuicNetwork`](crate::QuicNetwork). Build with [`QuicConfig::new`], adjust the
/// public fields, and [`QuicNetwork::bind`](crate::QuicNetwork::bind) validates them.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct QuicConfig {
    /// This node's id. Must be the identity in `certs`.
    pub node_id: NodeId,
    /// The UDP address to listen on (and dial from). Port 0 picks a free port; read it back with
    /// [`QuicNetwork::local_addr`](crate::QuicNetwork::local_addr).
    pub listen: SocketAddr,
    /// Where the peers are. Only nodes in the book may connect to this one.
    pub addresses: AddressBook,
    /// The cluster CA, this node's certificate and its key.
    pub certs: NodeCerts,
    /// The largest frame (encoded message) sent or accepted. A peer's larger frame closes its
    /// stream and is counted. At most 4 GiB − 1 (the length prefix is 32 bits). Keep it above
    /// the engine's `Config::snapshot_chunk_bytes` and `max_append_bytes` (plus a little for the
    /// message header): a message over the limit is refused at the sender, never sent.
    pub max_frame_bytes: usize,
    /// Messages whose encoding is larger than this travel on a stream of their own, so that
    /// they never hold up other traffic (at the cost of ordering relative to it).
    pub large_message_bytes: usize,
    /// How long a connection attempt (QUIC and TLS handshake) may take. A send that has to
    /// connect fails after this; later sends fail at once until the backoff has passed.
    pub connect_timeout: Duration,
    /// A connection that hears nothing for this long is closed (QUIC idle timeout; the smaller
    /// of the two peers' values applies).
    pub idle_timeout: Duration,
    /// How often a connection is pinged when otherwise silent, so that it stays open and a dead
    /// peer is noticed within `idle_timeout`. Must be below `idle_timeout`.
    pub keep_alive: Duration,
    /// The wait before retrying a peer after its first failed connection attempt; it doubles
    /// with each further failure up to `backoff_max`, and each wait is drawn at random from its
    /// upper half (jitter, so that peers do not retry in lockstep).
    pub backoff_min: Duration,
    /// The longest wait between connection attempts to a peer.
    pub backoff_max: Duration,
    /// How long the body of a frame may take to arrive once its length prefix has been read.
    /// A slower frame stops its stream (code 4), so a peer cannot keep partial frames buffered
    /// forever. Keep it above `max_frame_bytes` divided by the slowest link's bandwidth.
    pub frame_read_timeout: Duration,
    /// The most frame bytes a connection may have buffered at once (frames being read and not
    /// yet handed to the node's queue). A frame reserves its whole length, from its prefix,
    /// before its body is read; a frame that does not fit stops its stream (code 5). At least
    /// `max_frame_bytes`; keep room for the large messages a peer sends at once.
    pub max_buffered_bytes: usize,
    /// Each peer's share of the node's inbound queue, in messages, per class (votes, heartbeats
    /// and responses; everything else). A peer whose share is full is not read until the node
    /// has taken some of its messages (QUIC flow control then holds that peer back).
    pub peer_queue_messages: usize,
    /// Each peer's share of the node's inbound queue, in bytes of frames, per class. A single
    /// larger message is admitted alone.
    pub peer_queue_bytes: usize,
    /// The most incoming connection attempts handled at once (handshake, authentication and
    /// the first stream header); attempts beyond it are refused at once.
    pub max_concurrent_handshakes: usize,
}

/// A [`QuicConfig`] value that cannot work, naming the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A field that must be positive is zero.
    #[error("QuicConfig field `{0}` must be greater than zero")]
    Zero(&'static str),
    /// A field is out of its range.
    #[error("QuicConfig field `{field}` is invalid: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

impl QuicConfig {
    /// A configuration with defaults: 64 MiB frames, a separate stream above 4 MiB, 2 s connect
    /// timeout, 10 s idle timeout, 1 s keep-alive, backoff from 50 ms to 2 s, 30 s to read a
    /// frame body, 128 MiB buffered per connection, a share of 1024 messages and 64 MiB per
    /// peer and class, 64 concurrent incoming handshakes. The address book starts empty.
    pub fn new(node_id: NodeId, listen: SocketAddr, certs: NodeCerts) -> QuicConfig {
        QuicConfig {
            node_id,
            listen,
            addresses: AddressBook::new(),
            certs,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            large_message_bytes: DEFAULT_LARGE_MESSAGE_BYTES,
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(1),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            frame_read_timeout: Duration::from_secs(30),
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES,
            peer_queue_messages: DEFAULT_PEER_QUEUE_MESSAGES,
            peer_queue_bytes: DEFAULT_PEER_QUEUE_BYTES,
            max_concurrent_handshakes: 64,
        }
    }

    /// Sets the address book (builder style).
    pub fn with_addresses(mut self, addresses: AddressBook) -> QuicConfig {
        self.addresses = addresses;
        self
    }

    /// Checks that the values can work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("max_frame_bytes", self.max_frame_bytes > 0),
            ("large_message_bytes", self.large_message_bytes > 0),
            ("connect_timeout", !self.connect_timeout.is_zero()),
            ("idle_timeout", !self.idle_timeout.is_zero()),
            ("keep_alive", !self.keep_alive.is_zero()),
            ("backoff_min", !self.backoff_min.is_zero()),
            ("backoff_max", !self.backoff_max.is_zero()),
            ("frame_read_timeout", !self.frame_read_timeout.is_zero()),
            ("max_buffered_bytes", self.max_buffered_bytes > 0),
            ("peer_queue_messages", self.peer_queue_messages > 0),
            ("peer_queue_bytes", self.peer_queue_bytes > 0),
            ("max_concurrent_handshakes", self.max_concurrent_handshakes > 0),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, ok)| !ok) {
            return Err(ConfigError::Zero(field));
        }
        let invalid = |field, reason: String| Err(ConfigError::Invalid { field, reason });
        let frame_cap = (u32::MAX as usize).min(raftkit::codec::MAX_DECODE_BYTES);
        if self.max_frame_bytes > frame_cap {
            return invalid(
                "max_frame_bytes",
                format!("{} exceeds the largest frame, {frame_cap}", self.max_frame_bytes),
            );
        }
        if self.large_message_bytes > self.max_frame_bytes {
            return invalid(
                "large_message_bytes",
                format!(
                    "{} exceeds max_frame_bytes ({})",
                    self.large_message_bytes, self.max_frame_bytes
                ),
            );
        }
        if self.max_buffered_bytes < self.max_frame_bytes {
            return invalid(
                "max_buffered_bytes",
                format!(
                    "{} is below max_frame_bytes ({})",
                    self.max_buffered_bytes, self.max_frame_bytes
                ),
            );
        }
        // Budgets are semaphores; keep them within what one can count.
        let permit_cap = tokio::sync::Semaphore::MAX_PERMITS;
        for (field, v) in [
            ("max_buffered_bytes", self.max_buffered_bytes),
            ("peer_queue_messages", self.peer_queue_messages),
            ("peer_queue_bytes", self.peer_queue_bytes),
            ("max_concurrent_handshakes", self.max_concurrent_handshakes),
        ] {
            if v > permit_cap {
                return invalid(field, format!("{v} exceeds {permit_cap}"));
            }
        }
        if Instant::now().checked_add(self.frame_read_timeout).is_none() {
            return invalid(
                "frame_read_timeout",
                format!("{:?} is too long", self.frame_read_timeout),
            );
        }
        if quinn::IdleTimeout::try_from(self.idle_timeout).is_err() {
            return invalid(
                "idle_timeout",
                format!("{:?} is too long for QUIC", self.idle_timeout),
            );
        }
        if self.keep_alive >= self.idle_timeout {
            return invalid(
                "keep_alive",
                format!(
                    "{:?} must be below idle_timeout ({:?})",
                    self.keep_alive, self.idle_timeout
                ),
            );
        }
        if self.backoff_max < self.backoff_min {
            return invalid(
                "backoff_max",
                format!("{:?} is below backoff_min ({:?})", self.backoff_max, self.backoff_min),
            );
        }
        if self.certs.node_id() != self.node_id {
            return invalid(
                "certs",
                format!(
                    "the certificate is for node {}, but node_id is {}",
                    self.certs.node_id(),
                    self.node_id
                ),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::CertAuthority;

    fn config() -> QuicConfig {
        let ca = CertAuthority::generate().unwrap();
        QuicConfig::new(
            NodeId(1),
            "127.0.0.1:0".parse().unwrap(),
            ca.node_certs(NodeId(1)).unwrap(),
        )
    }

    #[test]
    fn defaults_are_valid() {
        config().validate().unwrap();
    }

    #[test]
    fn each_bad_field_is_named() {
        type Change = Box<dyn Fn(&mut QuicConfig)>;
        let cases: Vec<(&str, Change)> = vec![
            ("max_frame_bytes", Box::new(|c| c.max_frame_bytes = 0)),
            ("max_frame_bytes", Box::new(|c| c.max_frame_bytes = usize::MAX)),
            ("large_message_bytes", Box::new(|c| c.large_message_bytes = 0)),
            ("large_message_bytes", Box::new(|c| c.large_message_bytes = c.max_frame_bytes + 1)),
            ("connect_timeout", Box::new(|c| c.connect_timeout = Duration::ZERO)),
            ("idle_timeout", Box::new(|c| c.idle_timeout = Duration::ZERO)),
            ("idle_timeout", Box::new(|c| c.idle_timeout = Duration::from_secs(u64::MAX / 4))),
            ("keep_alive", Box::new(|c| c.keep_alive = c.idle_timeout)),
            ("backoff_min", Box::new(|c| c.backoff_min = Duration::ZERO)),
            ("backoff_max", Box::new(|c| c.backoff_max = c.backoff_min / 2)),
            ("certs", Box::new(|c| c.node_id = NodeId(2))),
            ("frame_read_timeout", Box::new(|c| c.frame_read_timeout = Duration::ZERO)),
            ("frame_read_timeout", Box::new(|c| c.frame_read_timeout = Duration::MAX)),
            ("max_buffered_bytes", Box::new(|c| c.max_buffered_bytes = 0)),
            ("max_buffered_bytes", Box::new(|c| c.max_buffered_bytes = c.max_frame_bytes - 1)),
            ("max_buffered_bytes", Box::new(|c| c.max_buffered_bytes = usize::MAX)),
            ("peer_queue_messages", Box::new(|c| c.peer_queue_messages = 0)),
            ("peer_queue_bytes", Box::new(|c| c.peer_queue_bytes = 0)),
            ("peer_queue_bytes", Box::new(|c| c.peer_queue_bytes = usize::MAX)),
            ("max_concurrent_handshakes", Box::new(|c| c.max_concurrent_handshakes = 0)),
        ];
        for (field, change) in cases {
            let mut c = config();
            change(&mut c);
            let err = c.validate().unwrap_err();
            assert!(err.to_string().contains(&format!("`{field}`")), "{field}: {err}");
        }
    }

    #[test]
    fn the_address_book_is_shared_between_clones() {
        let a = AddressBook::new();
        let b = a.clone();
        let addr: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(a.insert(NodeId(1), addr), None);
        assert_eq!(b.get(NodeId(1)), Some(addr));
        assert!(b.contains(NodeId(1)));
        assert_eq!(b.entries(), vec![(NodeId(1), addr)]);
        assert_eq!(b.remove(NodeId(1)), Some(addr));
        assert!(!a.contains(NodeId(1)));
    }
}
