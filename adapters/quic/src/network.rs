//! [`QuicNetwork`]: the endpoint, dialing and accepting, and the per-peer links. The tasks of a
//! connection live in `streams`. Long-lived tasks hold only a weak reference to the network, so
//! dropping every handle closes the endpoint.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use raftkit::core::Rng;
use raftkit::{Inbox, Message, MessageBody, Network, NetworkError, NetworkErrorKind, NodeId};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::certs::{self, CertError, NodeCerts};
use crate::config::{AddressBook, ConfigError, QuicConfig};
use crate::inbound::{self, Delivery};
use crate::link::{self, Existing, Verdict};
use crate::stats::{Counters, QuicStats, bump};
use crate::streams::{
    ConnInfo, Lane, accept_streams, close_at_expiry, read_stream, write_lane, write_large,
};
use crate::tls;
use crate::wire::{self, Budget, FrameError, Header, close};

/// Batches queued per lane of a connection before sends to that peer are refused.
const LANE_QUEUE: usize = 1024;
/// Large messages written at once per connection.
const LARGE_IN_FLIGHT: usize = 8;
/// How long `shutdown` lets the endpoint flush its close frames.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(100);

/// Why a [`QuicNetwork`] could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuicError {
    /// The configuration is invalid (the message names the field).
    #[error("invalid QUIC configuration: {0}")]
    Config(#[from] ConfigError),
    /// The certificates cannot be used.
    #[error("unusable certificates: {0}")]
    Certs(#[from] CertError),
    /// Not called from within a Tokio runtime.
    #[error("QuicNetwork::bind must be called within a Tokio runtime (with IO enabled)")]
    NoRuntime,
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A [`Network`] over QUIC with mutual TLS: one connection per pair of nodes, messages framed on
/// ordered streams, large messages on streams of their own. See the crate docs for the wire
/// format and the security model. Cheap to clone (clones share the endpoint).
#[derive(Clone)]
pub struct QuicNetwork {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for QuicNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicNetwork")
            .field("node", &self.inner.id)
            .field("local_addr", &self.inner.local_addr)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    id: NodeId,
    /// Drawn at bind; peers see a new value after a restart.
    incarnation: u64,
    endpoint: quinn::Endpoint,
    /// The TLS side of dials; replaced by `reload_certs`.
    client: RwLock<quinn::ClientConfig>,
    /// What the TLS configurations are built from (the certificates change on reload).
    tls_base: Mutex<QuicConfig>,
    local_addr: SocketAddr,
    pub(crate) addresses: AddressBook,
    pub(crate) max_frame: usize,
    large_message: usize,
    pub(crate) connect_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    pub(crate) frame_read_timeout: Duration,
    max_buffered: usize,
    links: Mutex<HashMap<NodeId, Arc<Link>>>,
    /// Every peer's share of the inbound queue; emptied by the pump from `start` on.
    pub(crate) delivery: Arc<Delivery>,
    /// The task handing queued messages to the engine, once started.
    pump: Mutex<Option<JoinHandle<()>>>,
    /// One permit per incoming connection attempt being handled.
    handshakes: Arc<Semaphore>,
    max_handshakes: usize,
    started: AtomicBool,
    closed: AtomicBool,
    /// Backoff jitter, seeded from the system RNG.
    jitter: Mutex<Rng>,
    pub(crate) stats: Arc<Counters>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Every handle is gone: close the endpoint so its tasks and socket go away too.
        self.endpoint.close(close::SHUTDOWN, b"dropped");
        self.stop_delivery();
    }
}

/// Everything about one peer.
struct Link {
    peer: NodeId,
    state: Mutex<LinkState>,
}

type DialOutcome = Option<Result<(), NetworkError>>;

#[derive(Default)]
struct LinkState {
    /// The one connection used with this peer, both ways.
    active: Option<Arc<Conn>>,
    /// A dial in progress; its outcome is published when it ends.
    dialing: Option<watch::Receiver<DialOutcome>>,
    /// Consecutive failed dials.
    failures: u32,
    /// No dial before this (unless the peer's address changed since `failed_addr`).
    retry_at: Option<Instant>,
    failed_addr: Option<SocketAddr>,
    /// Whether a connection ever existed (to count reconnections).
    connected_before: bool,
}

impl Link {
    fn lock(&self) -> MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An active connection and the queues of its ordered lanes.
struct Conn {
    info: Arc<ConnInfo>,
    control: mpsc::Sender<Vec<Bytes>>,
    replication: mpsc::Sender<Vec<Bytes>>,
}

fn unreachable(msg: impl Into<String>) -> NetworkError {
    NetworkError::new(NetworkErrorKind::Unreachable, msg)
}

/// Whether a failed handshake was an authentication failure (a TLS alert either way).
fn is_auth_failure(e: &quinn::ConnectionError) -> bool {
    let crypto = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
    match e {
        quinn::ConnectionError::TransportError(t) => crypto(t.code),
        quinn::ConnectionError::ConnectionClosed(c) => crypto(c.error_code),
        quinn::ConnectionError::ApplicationClosed(c) => c.error_code == close::UNAUTHENTICATED,
        _ => false,
    }
}

impl QuicNetwork {
    /// Validates `config`, loads the TLS settings and binds the UDP socket. Must be called within
    /// a Tokio runtime with IO enabled. Peers can connect once [`start`](Network::start) has
    /// been called; sends work from now on.
    pub fn bind(config: QuicConfig) -> Result<QuicNetwork, QuicError> {
        config.validate()?;
        tokio::runtime::Handle::try_current().map_err(|_| QuicError::NoRuntime)?;
        let server = tls::server_config(&config)?;
        let client = tls::client_config(&config)?;
        let bind_err = |source| QuicError::Bind { addr: config.listen, source };
        let socket = std::net::UdpSocket::bind(config.listen).map_err(bind_err)?;
        let endpoint = quinn::Endpoint::new(
            tls::endpoint_config(&config.certs),
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind_err)?;
        let local_addr = endpoint.local_addr().map_err(bind_err)?;
        let incarnation = random_u64();
        tracing::info!(node = %config.node_id, %local_addr, incarnation, "QUIC endpoint bound");
        Ok(QuicNetwork {
            inner: Arc::new(Inner {
                id: config.node_id,
                incarnation,
                endpoint,
                client: RwLock::new(client),
                local_addr,
                addresses: config.addresses.clone(),
                max_frame: config.max_frame_bytes,
                large_message: config.large_message_bytes,
                connect_timeout: config.connect_timeout,
                backoff_min: config.backoff_min,
                backoff_max: config.backoff_max,
                frame_read_timeout: config.frame_read_timeout,
                max_buffered: config.max_buffered_bytes,
                links: Mutex::new(HashMap::new()),
                delivery: Arc::new(Delivery::new(
                    config.peer_queue_messages,
                    config.peer_queue_bytes,
                )),
                pump: Mutex::new(None),
                handshakes: Arc::new(Semaphore::new(config.max_concurrent_handshakes)),
                max_handshakes: config.max_concurrent_handshakes,
                tls_base: Mutex::new(config),
                started: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                jitter: Mutex::new(Rng::new(random_u64())),
                stats: Arc::new(Counters::default()),
            }),
        })
    }

    /// The address the endpoint is bound to (with the port the OS picked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.id
    }

    /// The address book this network dials from. Changes take effect on the next send.
    pub fn addresses(&self) -> &AddressBook {
        &self.inner.addresses
    }

    /// The counters so far.
    pub fn stats(&self) -> QuicStats {
        let inner = &self.inner;
        let mut s = inner.stats.snapshot();
        s.connections_open = inner.endpoint.open_connections() as u64;
        s.handshakes_in_progress =
            inner.max_handshakes.saturating_sub(inner.handshakes.available_permits()) as u64;
        s
    }

    /// Replaces this node's certificates (CA, certificate and key) without a restart: every
    /// connection made from now on, dialed or accepted, uses them; open connections keep the
    /// certificates they were made with (a peer closes one when its certificate expires, and
    /// the next send reconnects). The stateless-reset key stays the one derived at bind.
    ///
    /// # Errors
    /// [`QuicError::Config`] if `certs` are for another node; [`QuicError::Certs`] if they
    /// cannot be used for TLS. On error nothing changes.
    pub fn reload_certs(&self, certs: NodeCerts) -> Result<(), QuicError> {
        let inner = &self.inner;
        if certs.node_id() != inner.id {
            return Err(QuicError::Config(ConfigError::Invalid {
                field: "certs",
                reason: format!(
                    "the certificate is for node {}, but this node is {}",
                    certs.node_id(),
                    inner.id
                ),
            }));
        }
        let mut base = inner.tls_base.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = base.clone();
        next.certs = certs;
        let server = tls::server_config(&next)?;
        let client = tls::client_config(&next)?;
        inner.endpoint.set_server_config(Some(server));
        *inner.client.write().unwrap_or_else(|p| p.into_inner()) = client;
        tracing::info!(node = %inner.id, not_after = ?next.certs.not_after(), "certificates reloaded");
        *base = next;
        Ok(())
    }

    /// Whether a live connection to `peer` exists right now.
    pub fn is_connected(&self, peer: NodeId) -> bool {
        let link = self.inner.links().get(&peer).cloned();
        link.is_some_and(|l| l.lock().active.as_ref().is_some_and(|c| c.info.alive()))
    }

    /// Sends `bytes` to `to` as one frame, unencoded and unchecked, on a stream of its own, and
    /// waits until the peer's transport has acknowledged it. A testing tool (the testkit's
    /// hostile-frame cases use it): it plays a buggy peer.
    ///
    /// # Errors
    /// `InvalidFrame` if the peer stopped the stream before acknowledging every byte (it
    /// refused the frame). A refusal is not always visible here, since the transport may
    /// acknowledge bytes before the node reads them; the receiver's [`QuicStats`] always count
    /// it. Connection failures as for [`send`](Network::send).
    #[cfg(feature = "test-util")]
    pub async fn send_raw_frame(&self, to: NodeId, bytes: &[u8]) -> Result<(), NetworkError> {
        let inner = &self.inner;
        let frame = wire::frame_raw(bytes).ok_or_else(|| {
            NetworkError::new(NetworkErrorKind::InvalidFrame, "frames are at most 4 GiB")
        })?;
        let conn = inner.connection(to).await?;
        let header = inner.header();
        let lost = |e: &dyn std::fmt::Display| unreachable(format!("stream to {to} failed: {e}"));
        let mut stream =
            crate::streams::open_stream(&conn.info, crate::streams::LARGE_PRIORITY, &header)
                .await
                .map_err(|e| lost(&e))?;
        let refused = |code| {
            NetworkError::new(
                NetworkErrorKind::InvalidFrame,
                format!("{to} refused the frame (stream stopped with code {code})"),
            )
        };
        match stream.write_chunk(frame).await {
            Ok(()) => {}
            Err(quinn::WriteError::Stopped(code)) => return Err(refused(code)),
            Err(e) => return Err(lost(&e)),
        }
        let _ = stream.finish();
        match tokio::time::timeout(inner.connect_timeout, stream.stopped()).await {
            Ok(Ok(None)) => Ok(()),
            Ok(Ok(Some(code))) => Err(refused(code)),
            Ok(Err(e)) => Err(lost(&e)),
            Err(_) => Err(NetworkError::new(
                NetworkErrorKind::Timeout,
                format!("{to} did not acknowledge the frame"),
            )),
        }
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        // Only distinctness across restarts matters; the clock is a fine fallback.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        return nanos ^ u64::from(std::process::id()).rotate_left(32);
    }
    u64::from_be_bytes(b)
}

impl Inner {
    fn links(&self) -> MutexGuard<'_, HashMap<NodeId, Arc<Link>>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn link(&self, peer: NodeId) -> Arc<Link> {
        self.links()
            .entry(peer)
            .or_insert_with(|| Arc::new(Link { peer, state: Mutex::default() }))
            .clone()
    }

    fn header(&self) -> [u8; wire::HEADER_LEN] {
        Header { from: self.id, incarnation: self.incarnation }.encode()
    }

    fn backoff(&self, failures: u32) -> Duration {
        let r = self.jitter.lock().unwrap_or_else(|p| p.into_inner()).next_u64();
        link::backoff(failures, self.backoff_min, self.backoff_max, r)
    }

    fn refuse(&self, msg: String) -> NetworkError {
        bump(&self.stats.sends_refused);
        unreachable(msg)
    }

    /// Stops handing messages to the node: queued ones are dropped, readers waiting for room
    /// give up.
    fn stop_delivery(&self) {
        self.delivery.close();
        if let Some(pump) = self.pump.lock().unwrap_or_else(|p| p.into_inner()).take() {
            pump.abort();
        }
    }

    /// The active connection to `to`, dialing it if needed. Fails at once while the peer is
    /// unknown or in backoff; a dial is bounded by the connect timeout.
    async fn connection(self: &Arc<Self>, to: NodeId) -> Result<Arc<Conn>, NetworkError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(NetworkError::new(NetworkErrorKind::Closed, "the network is shut down"));
        }
        if to == self.id {
            return Err(self.refuse(format!("{to} is this node")));
        }
        let link = self.link(to);
        let addr = self.addresses.get(to);
        let mut rx = {
            let mut st = link.lock();
            if let Some(c) = st.active.clone() {
                let moved = c.info.dialed_by_us && addr.is_some_and(|a| a != c.info.remote);
                if c.info.alive() && !moved && addr.is_some() {
                    return Ok(c);
                }
                if addr.is_none() {
                    tracing::info!(peer = %to, "peer removed from the address book; closing its connection");
                    c.info.conn.close(close::REMOVED, b"removed from the address book");
                } else if moved {
                    tracing::info!(peer = %to, old = %c.info.remote, new = ?addr, "peer moved; reconnecting");
                    c.info.conn.close(close::MOVED, b"address changed");
                }
                st.active = None;
            }
            match st.dialing.as_ref().filter(|rx| rx.has_changed().is_ok()) {
                Some(rx) => rx.clone(),
                None => {
                    let Some(addr) = addr else {
                        return Err(self.refuse(format!("no address for {to}")));
                    };
                    let now = Instant::now();
                    if let Some(at) = st.retry_at.filter(|at| *at > now) {
                        if st.failed_addr == Some(addr) {
                            return Err(self.refuse(format!(
                                "{to} is unreachable ({} failed attempts); next attempt in {:?}",
                                st.failures,
                                at - now
                            )));
                        }
                    }
                    let (tx, rx) = watch::channel(None);
                    st.dialing = Some(rx.clone());
                    // The dial runs on its own task: a caller that gives up (the engine's send
                    // timeout) does not abandon it, and its outcome still sets the backoff.
                    tokio::spawn(self.clone().dial(link.clone(), addr, tx));
                    rx
                }
            }
        };
        let outcome = match rx.wait_for(Option::is_some).await {
            Ok(o) => o.clone().unwrap_or_else(|| Err(unreachable("dial ended without outcome"))),
            Err(_) => Err(unreachable(format!("the connection attempt to {to} was abandoned"))),
        };
        outcome?;
        let st = link.lock();
        match &st.active {
            Some(c) if c.info.alive() => Ok(c.clone()),
            _ => Err(unreachable(format!("the connection to {to} closed as it opened"))),
        }
    }

    /// Dials `link`'s peer at `addr`, adopts the connection or records the failure, and
    /// publishes the outcome.
    async fn dial(
        self: Arc<Self>,
        link: Arc<Link>,
        addr: SocketAddr,
        done: watch::Sender<DialOutcome>,
    ) {
        let to = link.peer;
        let result = self.handshake(to, addr).await;
        let outcome = {
            let mut st = link.lock();
            st.dialing = None;
            match result {
                Ok(conn) if self.closed.load(Ordering::Acquire) => {
                    conn.close(close::SHUTDOWN, b"shutdown");
                    Err(NetworkError::new(NetworkErrorKind::Closed, "the network is shut down"))
                }
                Ok(conn) => {
                    st.failures = 0;
                    st.retry_at = None;
                    st.failed_addr = None;
                    bump(&self.stats.connections_dialed);
                    if st.connected_before {
                        bump(&self.stats.reconnects);
                    }
                    let existing = existing(&st);
                    match link::on_dialed(self.id, to, existing) {
                        Verdict::Adopt => {
                            tracing::debug!(peer = %to, %addr, "connected");
                            let info = self.conn_info(conn, to, true, addr);
                            self.install(&mut st, info, None);
                        }
                        Verdict::Refuse => {
                            tracing::debug!(peer = %to, "crossed dials; keeping the peer's connection");
                            bump(&self.stats.duplicate_connections);
                            conn.close(close::DUPLICATE, b"crossed dials");
                        }
                    }
                    Ok(())
                }
                Err(e) => {
                    bump(&self.stats.dial_failures);
                    st.failures = st.failures.saturating_add(1);
                    let wait = self.backoff(st.failures);
                    st.retry_at = Some(Instant::now() + wait);
                    st.failed_addr = Some(addr);
                    tracing::debug!(peer = %to, %addr, error = %e, failures = st.failures, ?wait, "dial failed");
                    Err(e)
                }
            }
        };
        done.send_replace(Some(outcome));
    }

    /// The QUIC and TLS handshake with `to` at `addr`, bounded by the connect timeout, and a
    /// check that the peer is who we dialed.
    async fn handshake(
        &self,
        to: NodeId,
        addr: SocketAddr,
    ) -> Result<quinn::Connection, NetworkError> {
        let name = certs::identity_name(to);
        let client = self.client.read().unwrap_or_else(|p| p.into_inner()).clone();
        let connecting = self.endpoint.connect_with(client, addr, &name).map_err(|e| {
            NetworkError::with_source(
                NetworkErrorKind::Unreachable,
                format!("cannot dial {to} at {addr}"),
                e,
            )
        })?;
        let conn = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) if is_auth_failure(&e) => {
                bump(&self.stats.handshake_rejections);
                tracing::warn!(peer = %to, %addr, error = %e, "TLS handshake refused");
                return Err(NetworkError::with_source(
                    NetworkErrorKind::Unauthenticated,
                    format!("handshake with {to} at {addr} refused"),
                    e,
                ));
            }
            Ok(Err(e)) => {
                return Err(NetworkError::with_source(
                    NetworkErrorKind::Unreachable,
                    format!("cannot connect to {to} at {addr}"),
                    e,
                ));
            }
            Err(_) => {
                return Err(NetworkError::new(
                    NetworkErrorKind::Timeout,
                    format!("no handshake with {to} at {addr} within {:?}", self.connect_timeout),
                ));
            }
        };
        // The TLS server-name check already bound the certificate to `to`; checking the
        // identity we derive everywhere else keeps one definition of "who is this".
        match tls::peer_node(&conn) {
            Ok(id) if id == to => Ok(conn),
            other => {
                bump(&self.stats.handshake_rejections);
                let found = match other {
                    Ok(id) => id.to_string(),
                    Err(e) => e,
                };
                tracing::warn!(peer = %to, %addr, %found, "the peer's certificate is not the expected node's");
                conn.close(close::UNAUTHENTICATED, b"unexpected identity");
                Err(NetworkError::new(
                    NetworkErrorKind::Unauthenticated,
                    format!("{addr} answered as {found}, not {to}"),
                ))
            }
        }
    }

    fn conn_info(
        &self,
        conn: quinn::Connection,
        peer: NodeId,
        dialed_by_us: bool,
        remote: SocketAddr,
    ) -> Arc<ConnInfo> {
        Arc::new(ConnInfo {
            conn,
            peer,
            dialed_by_us,
            remote,
            peer_incarnation: Mutex::new(None),
            large: Arc::new(Semaphore::new(LARGE_IN_FLIGHT)),
            budget: Budget::new(self.max_buffered, self.stats.clone()),
        })
    }

    /// Makes `info` the link's active connection (closing the previous one) and starts its
    /// tasks. `first` is a stream of the peer whose header has already been read.
    fn install(
        self: &Arc<Self>,
        st: &mut LinkState,
        info: Arc<ConnInfo>,
        first: Option<quinn::RecvStream>,
    ) {
        if let Some(old) = st.active.take() {
            if old.info.alive() {
                bump(&self.stats.duplicate_connections);
                old.info.conn.close(close::DUPLICATE, b"superseded");
            }
        }
        st.connected_before = true;
        let (ctx, crx) = mpsc::channel(LANE_QUEUE);
        let (rtx, rrx) = mpsc::channel(LANE_QUEUE);
        st.active = Some(Arc::new(Conn { info: info.clone(), control: ctx, replication: rtx }));
        let weak = Arc::downgrade(self);
        let header = self.header();
        let stats = self.stats.clone();
        tokio::spawn(write_lane(info.clone(), Lane::Control, crx, header, stats.clone()));
        tokio::spawn(write_lane(info.clone(), Lane::Replication, rrx, header, stats));
        if let Some(stream) = first {
            tokio::spawn(read_stream(weak.clone(), info.clone(), stream, true));
        }
        // The handshake checked the peer's certificate; it must not outlive it either.
        match tls::peer_not_after(&info.conn) {
            Some(not_after) => {
                tokio::spawn(close_at_expiry(info.clone(), not_after, self.stats.clone()));
            }
            None => {
                tracing::warn!(peer = %info.peer, "cannot read the peer certificate's expiry; closing");
                info.conn.close(close::CERT_EXPIRED, b"certificate expiry unknown");
            }
        }
        tokio::spawn(accept_streams(weak, info));
    }

    /// A connection from a peer: authenticate, read its first stream header, then keep it or
    /// refuse it as a duplicate. `_slot` is held until then, bounding attempts in progress.
    async fn handle_incoming(
        self: Arc<Self>,
        incoming: quinn::Incoming,
        _slot: OwnedSemaphorePermit,
    ) {
        let remote = incoming.remote_address();
        let conn = match tokio::time::timeout(self.connect_timeout, incoming).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                if is_auth_failure(&e) {
                    bump(&self.stats.handshake_rejections);
                    tracing::warn!(%remote, error = %e, "refused a connection: TLS authentication failed");
                } else {
                    tracing::debug!(%remote, error = %e, "incoming handshake failed");
                }
                return;
            }
            Err(_) => {
                tracing::debug!(%remote, "incoming handshake timed out");
                return;
            }
        };
        let reject = |code, why: &str| {
            bump(&self.stats.handshake_rejections);
            tracing::warn!(%remote, "refused a connection: {why}");
            conn.close(code, why.as_bytes());
        };
        let peer = match tls::peer_node(&conn) {
            Ok(peer) => peer,
            Err(e) => return reject(close::UNAUTHENTICATED, &format!("no node identity: {e}")),
        };
        if peer == self.id || !self.addresses.contains(peer) {
            return reject(close::UNAUTHENTICATED, &format!("{peer} is not a known peer"));
        }
        // The dialer opens its control stream right away; its header says who it claims to be
        // and which incarnation it is.
        let first = tokio::time::timeout(self.connect_timeout, async {
            let mut s = conn
                .accept_uni()
                .await
                .map_err(|e| FrameError::Read(quinn::ReadError::ConnectionLost(e)))?;
            let h = wire::read_header(&mut s).await?;
            Ok::<_, FrameError>((s, h))
        })
        .await;
        let (stream, header) = match first {
            Ok(Ok(x)) => x,
            Ok(Err(FrameError::Read(e))) => {
                tracing::debug!(%remote, %peer, error = %e, "connection closed before its first stream");
                return;
            }
            Ok(Err(e)) => {
                bump(&self.stats.frames_malformed);
                return reject(close::PROTOCOL, &format!("{peer}: {e}"));
            }
            Err(_) => return reject(close::PROTOCOL, &format!("{peer} opened no stream")),
        };
        if header.from != peer {
            return reject(
                close::UNAUTHENTICATED,
                &format!("authenticated as {peer} but claims to be {}", header.from),
            );
        }
        if self.closed.load(Ordering::Acquire) {
            conn.close(close::SHUTDOWN, b"shutdown");
            return;
        }
        let link = self.link(peer);
        let mut st = link.lock();
        match link::on_incoming(self.id, peer, existing(&st), header.incarnation) {
            Verdict::Adopt => {
                tracing::debug!(%peer, %remote, "accepted a connection");
                bump(&self.stats.connections_accepted);
                let info = self.conn_info(conn, peer, false, remote);
                *info.peer_incarnation.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(header.incarnation);
                // The peer is up: forget the backoff.
                st.failures = 0;
                st.retry_at = None;
                self.install(&mut st, info, Some(stream));
            }
            Verdict::Refuse => {
                tracing::debug!(%peer, "crossed dials; keeping our connection");
                bump(&self.stats.duplicate_connections);
                conn.close(close::DUPLICATE, b"crossed dials");
            }
        }
    }

    /// A connection ended: forget it if it was the active one.
    pub(crate) fn on_closed(&self, info: &ConnInfo, err: &quinn::ConnectionError) {
        let Some(link) = self.links().get(&info.peer).cloned() else { return };
        let mut st = link.lock();
        let was_active = st.active.as_ref().is_some_and(|c| c.info.same(info));
        if !was_active {
            return;
        }
        st.active = None;
        match err {
            quinn::ConnectionError::ApplicationClosed(c) if c.error_code == close::SHUTDOWN => {
                // The peer is going away: fail sends fast for a moment instead of dialing a
                // closed port and waiting out the connect timeout.
                tracing::info!(peer = %info.peer, "peer shut down");
                st.failures = st.failures.max(1);
                st.retry_at = Some(Instant::now() + self.backoff(1));
                st.failed_addr = self.addresses.get(info.peer);
            }
            quinn::ConnectionError::ApplicationClosed(c)
                if c.error_code == close::UNAUTHENTICATED || c.error_code == close::PROTOCOL =>
            {
                // The peer refused us after the handshake (it does not know us, say). Back off
                // as for a failed dial, or every send would dial it again.
                bump(&self.stats.handshake_rejections);
                tracing::warn!(peer = %info.peer, reason = %c, "the peer refused this node");
                st.failures = st.failures.saturating_add(1);
                st.retry_at = Some(Instant::now() + self.backoff(st.failures));
                st.failed_addr = self.addresses.get(info.peer);
            }
            quinn::ConnectionError::ApplicationClosed(c) if c.error_code == close::REMOVED => {
                // The peer no longer counts this node as a member: back off, as for a refusal.
                tracing::info!(peer = %info.peer, "the peer removed this node from its address book");
                st.failures = st.failures.saturating_add(1);
                st.retry_at = Some(Instant::now() + self.backoff(st.failures));
                st.failed_addr = self.addresses.get(info.peer);
            }
            quinn::ConnectionError::LocallyClosed => {}
            e => tracing::info!(peer = %info.peer, error = %e, "connection lost"),
        }
    }

    async fn send(
        self: &Arc<Self>,
        to: NodeId,
        messages: Vec<Message>,
    ) -> Result<(), NetworkError> {
        let (mut control, mut replication, mut large) = (Vec::new(), Vec::new(), Vec::new());
        let mut unsendable = None;
        for m in &messages {
            match wire::encode_frame(m) {
                Ok(f) if f.len() - wire::PREFIX_LEN > self.max_frame => {
                    bump(&self.stats.frames_unsendable);
                    let e = NetworkError::new(
                        NetworkErrorKind::InvalidFrame,
                        format!(
                            "a {} message of {} bytes exceeds the {} byte frame limit",
                            m.kind(),
                            f.len() - wire::PREFIX_LEN,
                            self.max_frame
                        ),
                    );
                    tracing::warn!(peer = %to, error = %e, "not sending");
                    unsendable = Some(e);
                }
                // Snapshot chunks always get a stream of their own, whatever their size, so a
                // transfer never delays AppendEntries to the same peer.
                Ok(f)
                    if matches!(m.body, MessageBody::InstallSnapshot(_))
                        || f.len() - wire::PREFIX_LEN > self.large_message =>
                {
                    large.push(f)
                }
                Ok(f) => match Lane::of(&m.body) {
                    Lane::Control => control.push(f),
                    Lane::Replication => replication.push(f),
                },
                Err(e) => {
                    bump(&self.stats.frames_unsendable);
                    tracing::warn!(peer = %to, error = %e, "cannot encode a message");
                    unsendable = Some(NetworkError::with_source(
                        NetworkErrorKind::InvalidFrame,
                        "cannot encode a message",
                        e,
                    ));
                }
            }
        }
        if !(control.is_empty() && replication.is_empty() && large.is_empty()) {
            let conn = self.connection(to).await?;
            for (lane, frames) in [(&conn.control, control), (&conn.replication, replication)] {
                if frames.is_empty() {
                    continue;
                }
                match lane.try_send(frames) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        return Err(self.refuse(format!("{to} is not keeping up; send queue full")));
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        return Err(unreachable(format!("the connection to {to} was lost")));
                    }
                }
            }
            for frame in large {
                // Bounded per connection: a peer that does not take large messages must not
                // make us hold an unbounded number of them.
                let Ok(permit) = conn.info.large.clone().try_acquire_owned() else {
                    return Err(self.refuse(format!("{to} is not keeping up with large messages")));
                };
                let (info, header, stats) = (conn.info.clone(), self.header(), self.stats.clone());
                tokio::spawn(write_large(info, frame, header, stats, permit));
            }
        }
        match unsendable {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn shutdown(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.stop_delivery();
        tracing::info!(node = %self.id, "QUIC network shutting down");
        self.endpoint.close(close::SHUTDOWN, b"shutdown");
        let links: Vec<Arc<Link>> = self.links().drain().map(|(_, l)| l).collect();
        for l in links {
            l.lock().active = None;
        }
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.endpoint.wait_idle()).await;
        self.release_port();
    }

    /// Frees the listen port now, as a process exit would. quinn keeps the UDP socket until
    /// every handle to the endpoint is gone, and handles to this network may outlive the node
    /// (an engine handle held elsewhere), so a node restarted in this process could not bind
    /// its port again. Rebinding to a throwaway socket releases it; twice, because quinn keeps
    /// the previous socket of a rebind alive until traffic arrives on the new one (migration).
    fn release_port(&self) {
        let throwaway: SocketAddr = match self.local_addr {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::LOCALHOST, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::LOCALHOST, 0).into(),
        };
        for _ in 0..2 {
            let rebound =
                std::net::UdpSocket::bind(throwaway).and_then(|s| self.endpoint.rebind(s));
            if let Err(e) = rebound {
                tracing::warn!(node = %self.id, "cannot release the QUIC port at shutdown: {e}");
                return;
            }
        }
    }
}

/// What the link holds, in the terms of the connection rules.
fn existing(st: &LinkState) -> Existing {
    match &st.active {
        Some(c) if c.info.alive() && c.info.dialed_by_us => {
            Existing::DialedByUs { peer_incarnation: c.info.peer_incarnation() }
        }
        Some(c) if c.info.alive() => Existing::DialedByPeer,
        _ => Existing::Nothing,
    }
}

/// Accepts connections until the endpoint closes. A client must first prove it receives at its
/// address (QUIC Retry), so a spoofed source cannot make this node work or send; at most
/// `max_concurrent_handshakes` attempts are handled at once, and any beyond are refused.
async fn accept_loop(weak: Weak<Inner>, endpoint: quinn::Endpoint) {
    while let Some(mut incoming) = endpoint.accept().await {
        let Some(inner) = weak.upgrade() else { break };
        if inner.closed.load(Ordering::Acquire) {
            incoming.refuse();
            continue;
        }
        if !incoming.remote_address_validated() {
            match incoming.retry() {
                Ok(()) => {
                    bump(&inner.stats.address_validations);
                    continue;
                }
                // Already retried once (quinn checked its token): go on.
                Err(e) => incoming = e.into_incoming(),
            }
        }
        let Ok(slot) = inner.handshakes.clone().try_acquire_owned() else {
            bump(&inner.stats.handshakes_refused);
            tracing::debug!(remote = %incoming.remote_address(), "too many handshakes in progress; refusing");
            incoming.refuse();
            continue;
        };
        tokio::spawn(inner.handle_incoming(incoming, slot));
    }
}

#[async_trait]
impl Network for QuicNetwork {
    async fn start(&self, inbox: Inbox) -> Result<(), NetworkError> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(NetworkError::new(NetworkErrorKind::Closed, "the network is shut down"));
        }
        if inner.started.swap(true, Ordering::AcqRel) {
            return Err(NetworkError::new(NetworkErrorKind::Other, "already started"));
        }
        let pump = tokio::spawn(inbound::pump(inner.delivery.clone(), inbox));
        *inner.pump.lock().unwrap_or_else(|p| p.into_inner()) = Some(pump);
        tokio::spawn(accept_loop(Arc::downgrade(inner), inner.endpoint.clone()));
        Ok(())
    }

    async fn send(&self, to: NodeId, messages: Vec<Message>) -> Result<(), NetworkError> {
        self.inner.send(to, messages).await
    }

    /// Learns the addresses of members from the membership's node information, which for
    /// this adapter is a socket address (`host:port` with a numeric host, as
    /// `"10.0.0.4:7001"`). New peers are added to the [`AddressBook`] and moved peers updated;
    /// nothing is removed (peers configured at start stay, and a node leaving the membership
    /// is cut off by removing it from the book explicitly). Information that is not a socket
    /// address is logged and ignored.
    fn update_peers(&self, peers: &std::collections::BTreeMap<NodeId, String>) {
        apply_peer_addresses(&self.inner.addresses, self.inner.id, peers);
    }

    async fn shutdown(&self) {
        self.inner.shutdown().await
    }
}

/// Records in `book` the address of every peer in `peers` (node information from the
/// membership) other than `me`; see [`QuicNetwork::update_peers`](raftkit::Network::update_peers).
fn apply_peer_addresses(
    book: &AddressBook,
    me: NodeId,
    peers: &std::collections::BTreeMap<NodeId, String>,
) {
    for (id, info) in peers {
        if *id == me || info.is_empty() {
            continue;
        }
        match info.trim().parse::<SocketAddr>() {
            Ok(addr) => {
                if book.get(*id) != Some(addr) {
                    tracing::info!(peer = %id, %addr, "address learned from the membership");
                    book.insert(*id, addr);
                }
            }
            Err(e) => {
                tracing::warn!(peer = %id, info = %info, error = %e, "node information is not a socket address; ignored");
            }
        }
    }
}

#[cfg(test)]
mod peer_address_tests {
    use super::*;

    #[test]
    fn addresses_from_the_membership_are_learned_and_bad_ones_ignored() {
        let book = AddressBook::new();
        book.insert(NodeId(2), "127.0.0.1:1002".parse().unwrap());
        let peers = std::collections::BTreeMap::from([
            (NodeId(1), "127.0.0.1:1001".to_string()),
            (NodeId(2), "127.0.0.1:2002".to_string()),
            (NodeId(3), "127.0.0.1:1003".to_string()),
            (NodeId(4), "not an address".to_string()),
            (NodeId(5), String::new()),
        ]);
        apply_peer_addresses(&book, NodeId(1), &peers);
        assert_eq!(book.get(NodeId(1)), None, "not itself");
        assert_eq!(book.get(NodeId(2)), Some("127.0.0.1:2002".parse().unwrap()), "moved");
        assert_eq!(book.get(NodeId(3)), Some("127.0.0.1:1003".parse().unwrap()), "new");
        assert_eq!(book.get(NodeId(4)), None);
        assert_eq!(book.get(NodeId(5)), None);
    }
}
