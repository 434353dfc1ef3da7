//! The tasks of one connection: a writer per ordered lane, one writer per large message, a loop
//! accepting the peer's streams, and a reader per stream.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use raftkit::{MessageBody, NodeId};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::network::Inner;
use crate::stats::{Counters, add, bump};
use crate::wire::{self, Budget, FrameError, close};

/// What the connection's tasks share (not the queues, so that dropping the [`Conn`] ends the
/// writers).
pub(crate) struct ConnInfo {
    pub(crate) conn: quinn::Connection,
    /// The authenticated peer.
    pub(crate) peer: NodeId,
    pub(crate) dialed_by_us: bool,
    pub(crate) remote: SocketAddr,
    /// From the peer's stream headers.
    pub(crate) peer_incarnation: Mutex<Option<u64>>,
    /// Permits for large messages in flight.
    pub(crate) large: Arc<Semaphore>,
    /// Bytes of the peer's frames being read (and waiting for room in its inbound share).
    pub(crate) budget: Budget,
}

impl ConnInfo {
    pub(crate) fn alive(&self) -> bool {
        self.conn.close_reason().is_none()
    }

    pub(crate) fn same(&self, other: &ConnInfo) -> bool {
        self.conn.stable_id() == other.conn.stable_id()
    }

    pub(crate) fn peer_incarnation(&self) -> Option<u64> {
        *self.peer_incarnation.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The ordered streams of a connection, one per class of message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Votes, heartbeats and every response: small, latency-sensitive, and never behind bulk
    /// data.
    Control,
    /// AppendEntries and every other kind (snapshot chunks): bulk data, in order.
    Replication,
}

impl Lane {
    /// The lane of a message that is not large.
    pub(crate) fn of(body: &MessageBody) -> Lane {
        match body {
            MessageBody::RequestVote(_)
            | MessageBody::VoteResponse(_)
            | MessageBody::AppendResponse(_)
            | MessageBody::Heartbeat(_)
            | MessageBody::HeartbeatResponse(_)
            | MessageBody::TimeoutNow(_)
            | MessageBody::ReadIndexRequest(_)
            | MessageBody::ReadIndexResponse(_)
            | MessageBody::ProposeResponse(_)
            | MessageBody::SnapshotResponse(_) => Lane::Control,
            // Kinds added later default to the bulk lane: the control lane must stay small.
            _ => Lane::Replication,
        }
    }

    pub(crate) fn priority(self) -> i32 {
        match self {
            Lane::Control => 2,
            Lane::Replication => 1,
        }
    }
}

/// Priority of a large message's stream: after both lanes.
pub(crate) const LARGE_PRIORITY: i32 = 0;

pub(crate) async fn open_stream(
    info: &ConnInfo,
    priority: i32,
    header: &[u8; wire::HEADER_LEN],
) -> Result<quinn::SendStream, quinn::WriteError> {
    let mut s = info.conn.open_uni().await.map_err(quinn::WriteError::ConnectionLost)?;
    let _ = s.set_priority(priority);
    s.write_all(header).await?;
    Ok(s)
}

/// Writes one lane's batches, in order, on one stream. The control lane opens its stream at
/// once: its header tells the peer that we use this connection (see `link`).
pub(crate) async fn write_lane(
    info: Arc<ConnInfo>,
    lane: Lane,
    mut rx: mpsc::Receiver<Vec<Bytes>>,
    header: [u8; wire::HEADER_LEN],
    stats: Arc<Counters>,
) {
    let mut stream = None;
    if lane == Lane::Control {
        match open_stream(&info, lane.priority(), &header).await {
            Ok(s) => stream = Some(s),
            Err(e) => {
                tracing::debug!(peer = %info.peer, error = %e, "cannot open the control stream");
                return;
            }
        }
    }
    while let Some(mut batch) = rx.recv().await {
        let s = match &mut stream {
            Some(s) => s,
            None => match open_stream(&info, lane.priority(), &header).await {
                Ok(s) => stream.insert(s),
                Err(e) => {
                    tracing::debug!(peer = %info.peer, ?lane, error = %e, "cannot open a stream");
                    return;
                }
            },
        };
        let (frames, bytes) = (batch.len() as u64, batch.iter().map(|b| b.len() as u64).sum());
        match s.write_all_chunks(&mut batch).await {
            Ok(()) => {
                add(&stats.frames_sent, frames);
                add(&stats.bytes_sent, bytes);
            }
            Err(quinn::WriteError::Stopped(code)) => {
                // The peer refused something on this stream (it thought a frame malformed or
                // too large); the stream is gone but the connection is fine.
                tracing::warn!(peer = %info.peer, ?lane, %code, "the peer stopped a stream; reopening");
                stream = None;
            }
            Err(e) => {
                tracing::debug!(peer = %info.peer, ?lane, error = %e, "write failed");
                return;
            }
        }
    }
    if let Some(mut s) = stream {
        let _ = s.finish();
    }
}

/// Sends one large message on a stream of its own, at a lower priority than the lanes.
pub(crate) async fn write_large(
    info: Arc<ConnInfo>,
    frame: Bytes,
    header: [u8; wire::HEADER_LEN],
    stats: Arc<Counters>,
    _permit: OwnedSemaphorePermit,
) {
    let len = frame.len() as u64;
    let result = match open_stream(&info, LARGE_PRIORITY, &header).await {
        Ok(mut s) => s.write_chunk(frame).await.map(|()| {
            let _ = s.finish();
        }),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => {
            bump(&stats.frames_sent);
            add(&stats.bytes_sent, len);
        }
        Err(e) => tracing::debug!(peer = %info.peer, error = %e, "large message not sent"),
    }
}

/// Accepts the peer's streams until the connection ends, then reports the end.
pub(crate) async fn accept_streams(weak: Weak<Inner>, info: Arc<ConnInfo>) {
    let err = loop {
        match info.conn.accept_uni().await {
            Ok(stream) => {
                tokio::spawn(read_stream(weak.clone(), info.clone(), stream, false));
            }
            Err(e) => break e,
        }
    };
    if let Some(inner) = weak.upgrade() {
        inner.on_closed(&info, &err);
    }
}

/// Reads one stream: its header (unless already read), then frames until it ends. A refused
/// frame stops the stream (with a code the sender sees) and is counted; the connection and the
/// other streams carry on.
pub(crate) async fn read_stream(
    weak: Weak<Inner>,
    info: Arc<ConnInfo>,
    mut recv: quinn::RecvStream,
    header_read: bool,
) {
    let Some((max_frame, header_timeout, read_timeout, delivery, stats)) =
        weak.upgrade().map(|i| {
            (
                i.max_frame,
                i.connect_timeout,
                i.frame_read_timeout,
                i.delivery.clone(),
                i.stats.clone(),
            )
        })
    else {
        return;
    };
    let refuse = |recv: &mut quinn::RecvStream, e: &FrameError| {
        match e {
            FrameError::TooLarge { .. } => bump(&stats.frames_oversized),
            FrameError::TooSlow { .. } => bump(&stats.frames_too_slow),
            FrameError::OverBudget { .. } => bump(&stats.frames_over_budget),
            _ => bump(&stats.frames_malformed),
        }
        tracing::warn!(peer = %info.peer, error = %e, "refusing a frame; stopping its stream");
        if let Some(code) = e.stop_code() {
            let _ = recv.stop(code);
        }
    };
    if !header_read {
        let header = match tokio::time::timeout(header_timeout, wire::read_header(&mut recv)).await
        {
            Ok(Ok(h)) => h,
            Ok(Err(FrameError::Read(_))) => return,
            Ok(Err(e)) => return refuse(&mut recv, &e),
            Err(_) => {
                return refuse(&mut recv, &FrameError::BadHeader("none within the timeout".into()));
            }
        };
        if header.from != info.peer {
            bump(&stats.handshake_rejections);
            tracing::warn!(peer = %info.peer, claimed = %header.from, "a stream claims another sender; closing the connection");
            info.conn.close(close::UNAUTHENTICATED, b"claimed identity differs from certificate");
            return;
        }
        let mut seen = info.peer_incarnation.lock().unwrap_or_else(|p| p.into_inner());
        match *seen {
            None => *seen = Some(header.incarnation),
            Some(i) if i != header.incarnation => {
                drop(seen);
                bump(&stats.frames_malformed);
                tracing::warn!(peer = %info.peer, "two incarnations on one connection; closing it");
                info.conn.close(close::PROTOCOL, b"incarnation changed");
                return;
            }
            Some(_) => {}
        }
    }
    loop {
        match wire::read_frame(&mut recv, max_frame, &info.budget, read_timeout).await {
            Ok(None) => return,
            Ok(Some((body, reserved))) => match wire::decode_frame(&body) {
                Ok(msg) => {
                    let Some(inner) = weak.upgrade() else { return };
                    if !inner.addresses.contains(info.peer) {
                        // Removed from the book after it connected: it is no longer a member
                        // this node talks to, so nothing more it sends reaches the engine.
                        tracing::info!(peer = %info.peer, "message from a peer no longer in the address book; closing its connection");
                        info.conn.close(close::REMOVED, b"removed from the address book");
                        return;
                    }
                    drop(inner);
                    let size = body.len();
                    drop(body);
                    // Waits while this peer's share is full; the reservation is kept until
                    // then, so frames waiting here count against the connection's budget.
                    if delivery.push(info.peer, msg, size).await.is_err() {
                        return;
                    }
                    drop(reserved);
                    bump(&stats.frames_received);
                    add(&stats.bytes_received, (size + wire::PREFIX_LEN) as u64);
                }
                Err(e) => return refuse(&mut recv, &e),
            },
            Err(FrameError::Read(e)) => {
                tracing::trace!(peer = %info.peer, error = %e, "stream ended");
                return;
            }
            Err(e) => return refuse(&mut recv, &e),
        }
    }
}

/// Closes the connection (code 6) once the peer's certificate has expired, unless it ends
/// first. The TLS handshake checked the certificate only when the connection was made.
pub(crate) async fn close_at_expiry(
    info: Arc<ConnInfo>,
    not_after: SystemTime,
    stats: Arc<Counters>,
) {
    // X.509 validity includes its last second; the certificate is expired once it has passed.
    let expired_at = not_after + Duration::from_secs(1);
    let expired = async {
        // Timers follow a monotonic clock and the expiry is wall-clock time: sleep in steps of
        // at most an hour and look at the wall clock again after each.
        while let Ok(left) = expired_at.duration_since(SystemTime::now()) {
            tokio::time::sleep(left.min(Duration::from_secs(3600))).await;
        }
    };
    tokio::select! {
        _ = info.conn.closed() => {}
        () = expired => {
            bump(&stats.certificates_expired);
            tracing::warn!(peer = %info.peer, ?not_after, "the peer's certificate expired; closing its connection");
            info.conn.close(close::CERT_EXPIRED, b"certificate expired");
        }
    }
}
