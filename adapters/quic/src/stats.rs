//! Counters of a [`QuicNetwork`](crate::QuicNetwork), readable as a plain [`QuicStats`].

use std::sync::atomic::{AtomicU64, Ordering};

/// What a [`QuicNetwork`](crate::QuicNetwork) has done since it was bound. Counters only grow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QuicStats {
    /// Frames written to a stream.
    pub frames_sent: u64,
    /// Bytes of those frames (length prefixes included).
    pub bytes_sent: u64,
    /// Frames received, decoded and queued for the node (in their peer's share of the inbound
    /// queue; see the crate docs).
    pub frames_received: u64,
    /// Bytes of those frames (length prefixes included).
    pub bytes_received: u64,
    /// Received frames refused because their length prefix exceeded the frame limit.
    pub frames_oversized: u64,
    /// Received frames refused because they were empty, truncated or did not decode, and
    /// streams refused for a bad header.
    pub frames_malformed: u64,
    /// Messages not sent because they could not be encoded or exceeded the frame limit.
    pub frames_unsendable: u64,
    /// Connections this node dialed that completed their handshake.
    pub connections_dialed: u64,
    /// Connections from peers that were authenticated and kept.
    pub connections_accepted: u64,
    /// Dialed connections to a peer this node had been connected to before.
    pub reconnects: u64,
    /// Connection attempts that failed (unreachable, timed out, or refused).
    pub dial_failures: u64,
    /// Handshakes refused: a peer whose certificate does not chain to the CA, whose identity is
    /// unknown or differs from the one it claims, or that failed our certificate check when we
    /// dialed it; and connections a peer refused (it did not accept our identity).
    pub handshake_rejections: u64,
    /// Connections closed because another connection between the same two nodes was kept.
    pub duplicate_connections: u64,
    /// Sends that failed at once: the peer was unknown, in backoff, or not keeping up.
    pub sends_refused: u64,
    /// QUIC connections open right now (a gauge; closing ones count until they have drained).
    pub connections_open: u64,
    /// Received frames refused because their body did not arrive within
    /// [`QuicConfig::frame_read_timeout`](crate::QuicConfig::frame_read_timeout).
    pub frames_too_slow: u64,
    /// Received frames refused because their connection already had
    /// [`QuicConfig::max_buffered_bytes`](crate::QuicConfig::max_buffered_bytes) buffered.
    pub frames_over_budget: u64,
    /// Bytes reserved right now by frames being read, over all connections (a gauge).
    pub bytes_buffered: u64,
    /// Incoming connection attempts being handled right now (a gauge, at most
    /// [`QuicConfig::max_concurrent_handshakes`](crate::QuicConfig::max_concurrent_handshakes)).
    pub handshakes_in_progress: u64,
    /// Incoming connection attempts refused because too many were already being handled.
    pub handshakes_refused: u64,
    /// Incoming connection attempts asked to prove their address (QUIC Retry) first.
    pub address_validations: u64,
    /// Connections closed because the peer's certificate expired while they were open.
    pub certificates_expired: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) frames_sent: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) frames_received: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) frames_oversized: AtomicU64,
    pub(crate) frames_malformed: AtomicU64,
    pub(crate) frames_unsendable: AtomicU64,
    pub(crate) connections_dialed: AtomicU64,
    pub(crate) connections_accepted: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) dial_failures: AtomicU64,
    pub(crate) handshake_rejections: AtomicU64,
    pub(crate) duplicate_connections: AtomicU64,
    pub(crate) sends_refused: AtomicU64,
    pub(crate) frames_too_slow: AtomicU64,
    pub(crate) frames_over_budget: AtomicU64,
    pub(crate) bytes_buffered: AtomicU64,
    pub(crate) handshakes_refused: AtomicU64,
    pub(crate) address_validations: AtomicU64,
    pub(crate) certificates_expired: AtomicU64,
}

/// Adds `n` to a counter.
pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Subtracts `n` from a gauge.
pub(crate) fn sub(c: &AtomicU64, n: u64) {
    c.fetch_sub(n, Ordering::Relaxed);
}

/// Adds one to a counter.
pub(crate) fn bump(c: &AtomicU64) {
    add(c, 1);
}

impl Counters {
    pub(crate) fn snapshot(&self) -> QuicStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        QuicStats {
            frames_sent: g(&self.frames_sent),
            bytes_sent: g(&self.bytes_sent),
            frames_received: g(&self.frames_received),
            bytes_received: g(&self.bytes_received),
            frames_oversized: g(&self.frames_oversized),
            frames_malformed: g(&self.frames_malformed),
            frames_unsendable: g(&self.frames_unsendable),
            connections_dialed: g(&self.connections_dialed),
            connections_accepted: g(&self.connections_accepted),
            reconnects: g(&self.reconnects),
            dial_failures: g(&self.dial_failures),
            handshake_rejections: g(&self.handshake_rejections),
            duplicate_connections: g(&self.duplicate_connections),
            sends_refused: g(&self.sends_refused),
            connections_open: 0,
            frames_too_slow: g(&self.frames_too_slow),
            frames_over_budget: g(&self.frames_over_budget),
            bytes_buffered: g(&self.bytes_buffered),
            handshakes_in_progress: 0,
            handshakes_refused: g(&self.handshakes_refused),
            address_validations: g(&self.address_validations),
            certificates_expired: g(&self.certificates_expired),
        }
    }
}
