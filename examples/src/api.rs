//! The `kv` service's HTTP server (the protocol is in [`crate::protocol`]), over plain HTTP or
//! HTTPS with client certificates ([`ApiServer::bind_tls`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use raftkit::{NodeId, NodeState, Role, WriteError};
use raftkit_mem::{KvCommand, KvOutput};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;

use crate::node::KvNode;
use crate::protocol::{
    CasReply, CasRequest, ErrorKind, ErrorReply, GetReply, KeyRequest, MAX_VALUE_BYTES, NodeStatus,
    PeerLag, PrevReply, PutRequest, StateDigest, StatusReply, validate,
};

/// What an API server serves: one node, or a whole in-process cluster.
#[async_trait]
pub trait Service: Send + Sync + 'static {
    /// Runs `cmd` through Raft.
    async fn execute(&self, cmd: KvCommand) -> Result<KvOutput, WriteError>;
    /// The status of the nodes served.
    fn status(&self) -> Vec<NodeStatus>;
    /// The API address (`host:port`) of node `id`, if this service knows it; a `not_leader`
    /// reply carries the leader's.
    fn api_of(&self, id: NodeId) -> Option<SocketAddr> {
        let _ = id;
        None
    }
}

/// Serves one node: a follower answers `not_leader`, with the leader's API address when it is
/// in `peer_apis`, and the client goes there.
pub struct SingleNode {
    /// The node.
    pub node: KvNode,
    /// The API address of each member (from `kv node --peer-apis`; may be empty).
    pub peer_apis: BTreeMap<NodeId, SocketAddr>,
}

#[async_trait]
impl Service for SingleNode {
    async fn execute(&self, cmd: KvCommand) -> Result<KvOutput, WriteError> {
        self.node.client_write(cmd).await
    }

    fn status(&self) -> Vec<NodeStatus> {
        let mut s = node_status(&self.node);
        s.leader_api = s.leader.and_then(|l| self.api_of(NodeId(l))).map(|a| a.to_string());
        vec![s]
    }

    fn api_of(&self, id: NodeId) -> Option<SocketAddr> {
        self.peer_apis.get(&id).copied()
    }
}

/// Serves every node of an in-process cluster (the in-memory network) behind one address:
/// commands go to whichever node leads.
pub struct LocalCluster(pub Vec<KvNode>);

#[async_trait]
impl Service for LocalCluster {
    async fn execute(&self, cmd: KvCommand) -> Result<KvOutput, WriteError> {
        let mut last = WriteError::NotLeader { leader: None };
        // Elections take a few hundred milliseconds; wait up to five seconds for a leader.
        for _ in 0..50 {
            if let Some(node) = self.0.iter().find(|n| n.metrics().borrow().role == Role::Leader) {
                match node.client_write(cmd.clone()).await {
                    Err(e @ WriteError::NotLeader { .. }) => last = e,
                    other => return other,
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last)
    }

    fn status(&self) -> Vec<NodeStatus> {
        self.0.iter().map(node_status).collect()
    }
}

/// A node's status as the protocol reports it.
pub fn node_status(node: &KvNode) -> NodeStatus {
    let m = node.metrics().borrow().clone();
    let replication = if m.role == Role::Leader {
        let last = m.last_log.index.0;
        let peers = m.replication.iter().filter(|(id, _)| **id != m.id);
        peers
            .map(|(id, at)| PeerLag { id: id.0, matched: at.0, lag: last.saturating_sub(at.0) })
            .collect()
    } else {
        Vec::new()
    };
    let error = match &m.state {
        NodeState::Failed(e) => Some(e.to_string()),
        _ => None,
    };
    let (applied, digest) = node.digest();
    NodeStatus {
        id: m.id.0,
        role: match m.role {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::PreCandidate => "pre-candidate",
            _ => "unknown",
        }
        .to_string(),
        term: m.term.0,
        leader: m.leader.map(|l| l.0),
        leader_api: None,
        commit: m.commit.0,
        applied: m.applied.0,
        last_log: m.last_log.index.0,
        snapshot: m.snapshot.map(|s| s.index.0),
        voters: m.voters.iter().map(|v| v.0).collect(),
        replication,
        error,
        last_error: m.last_error.clone(),
        digest: Some(StateDigest { applied: applied.0, digest: format!("{digest:016x}") }),
    }
}

/// An error reply.
struct ApiError(StatusCode, ErrorReply);

impl ApiError {
    fn bad_request(error: impl Into<String>) -> ApiError {
        ApiError(
            StatusCode::BAD_REQUEST,
            ErrorReply {
                kind: ErrorKind::BadRequest,
                error: error.into(),
                leader: None,
                leader_api: None,
            },
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        ApiError::bad_request(r.body_text())
    }
}

impl ApiError {
    /// The reply to a failed command; a `not_leader` reply names the leader and, when `svc`
    /// knows it, the leader's API address.
    fn from_write(e: WriteError, svc: &dyn Service) -> ApiError {
        let mut error = e.to_string();
        let mut leader_api = None;
        let (status, kind, leader) = match e {
            WriteError::NotLeader { leader } => {
                leader_api = leader.and_then(|l| svc.api_of(l)).map(|a| a.to_string());
                // Written here rather than taken from the engine, so the reply names the
                // leader's address as well as its id.
                error = match (leader, &leader_api) {
                    (Some(l), Some(api)) => {
                        format!("not the leader; the leader is node {} at {api}", l.0)
                    }
                    (Some(l), None) => format!("not the leader; the leader is node {}", l.0),
                    (None, _) => "not the leader, and no leader is known yet".to_string(),
                };
                (StatusCode::MISDIRECTED_REQUEST, ErrorKind::NotLeader, leader.map(|l| l.0))
            }
            WriteError::Encode(_) => (StatusCode::BAD_REQUEST, ErrorKind::BadRequest, None),
            WriteError::Shutdown | WriteError::Fatal(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorKind::Unavailable, None)
            }
            WriteError::Overwritten { .. } => (StatusCode::CONFLICT, ErrorKind::NotApplied, None),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::OutcomeUnknown, None),
        };
        ApiError(status, ErrorReply { kind, error, leader, leader_api })
    }
}

type Svc = State<Arc<dyn Service>>;

async fn run(svc: &dyn Service, cmd: KvCommand) -> Result<KvOutput, ApiError> {
    svc.execute(cmd).await.map_err(|e| ApiError::from_write(e, svc))
}

fn unexpected(out: KvOutput) -> ApiError {
    ApiError(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorReply {
            kind: ErrorKind::OutcomeUnknown,
            error: format!("the state machine answered {out:?}"),
            leader: None,
            leader_api: None,
        },
    )
}

async fn put(
    State(svc): Svc,
    req: Result<Json<PutRequest>, JsonRejection>,
) -> Result<Json<PrevReply>, ApiError> {
    let Json(req) = req?;
    validate(&req.key, &[Some(&req.value)]).map_err(ApiError::bad_request)?;
    match run(&*svc, KvCommand::put(req.key, req.value)).await? {
        KvOutput::Prev(prev) => Ok(Json(PrevReply { prev })),
        other => Err(unexpected(other)),
    }
}

async fn get_key(
    State(svc): Svc,
    req: Result<Json<KeyRequest>, JsonRejection>,
) -> Result<Json<GetReply>, ApiError> {
    let Json(req) = req?;
    validate(&req.key, &[]).map_err(ApiError::bad_request)?;
    match run(&*svc, KvCommand::get(req.key)).await? {
        KvOutput::Value(value) => Ok(Json(GetReply { value })),
        other => Err(unexpected(other)),
    }
}

async fn delete(
    State(svc): Svc,
    req: Result<Json<KeyRequest>, JsonRejection>,
) -> Result<Json<PrevReply>, ApiError> {
    let Json(req) = req?;
    validate(&req.key, &[]).map_err(ApiError::bad_request)?;
    match run(&*svc, KvCommand::delete(req.key)).await? {
        KvOutput::Prev(prev) => Ok(Json(PrevReply { prev })),
        other => Err(unexpected(other)),
    }
}

async fn cas(
    State(svc): Svc,
    req: Result<Json<CasRequest>, JsonRejection>,
) -> Result<Json<CasReply>, ApiError> {
    let Json(req) = req?;
    validate(&req.key, &[req.expected.as_deref(), req.new.as_deref()])
        .map_err(ApiError::bad_request)?;
    match run(&*svc, KvCommand::cas(req.key, req.expected, req.new)).await? {
        KvOutput::Cas { swapped, current } => Ok(Json(CasReply { swapped, current })),
        other => Err(unexpected(other)),
    }
}

async fn status(State(svc): Svc) -> Json<StatusReply> {
    Json(StatusReply { nodes: svc.status() })
}

/// `GET /metrics`, from the process's recorder (see [`crate::prometheus`]).
async fn metrics() -> Response {
    match crate::prometheus::render() {
        Some(text) => ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no metrics recorder is installed").into_response(),
    }
}

/// The API's routes over `service`.
pub fn router(service: Arc<dyn Service>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .route("/v1/put", post(put))
        .route("/v1/get", post(get_key))
        .route("/v1/delete", post(delete))
        .route("/v1/cas", post(cas))
        // A value at the limit, JSON-escaped, plus the key and the framing.
        .layer(DefaultBodyLimit::max(2 * MAX_VALUE_BYTES + 64 * 1024))
        .with_state(service)
}

/// A bound API server; [`ApiServer::run`] serves until `shutdown` resolves.
pub struct ApiServer {
    listener: ApiListener,
    service: Arc<dyn Service>,
}

enum ApiListener {
    Plain(TcpListener),
    Tls(TlsListener),
}

impl ApiServer {
    /// Binds `addr` for plain HTTP (port 0 picks a free port: see [`ApiServer::local_addr`]).
    /// Anyone who can reach the address can use the API: [`crate::serve`] allows this on
    /// loopback only, unless told otherwise.
    pub async fn bind(addr: SocketAddr, service: Arc<dyn Service>) -> Result<ApiServer> {
        let listener = bind(addr).await?;
        Ok(ApiServer { listener: ApiListener::Plain(listener), service })
    }

    /// Binds `addr` for HTTPS with `tls` (from
    /// [`NodeCerts::https_server_config`](raftkit_quic::NodeCerts::https_server_config): the
    /// node's certificate, and a client certificate from the cluster CA required of every
    /// client). A connection whose handshake fails never reaches the API.
    pub async fn bind_tls(
        addr: SocketAddr,
        service: Arc<dyn Service>,
        tls: Arc<ServerConfig>,
    ) -> Result<ApiServer> {
        let listener = bind(addr).await?;
        let listener = TlsListener::start(listener, TlsAcceptor::from(tls))?;
        Ok(ApiServer { listener: ApiListener::Tls(listener), service })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(match &self.listener {
            ApiListener::Plain(l) => l.local_addr()?,
            ApiListener::Tls(l) => l.local,
        })
    }

    /// Whether the server speaks HTTPS.
    pub fn is_tls(&self) -> bool {
        matches!(self.listener, ApiListener::Tls(_))
    }

    /// Serves requests until `shutdown` resolves, then finishes the requests in flight.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let app = router(self.service);
        match self.listener {
            ApiListener::Plain(l) => axum::serve(l, app).with_graceful_shutdown(shutdown).await,
            ApiListener::Tls(l) => axum::serve(l, app).with_graceful_shutdown(shutdown).await,
        }
        .context("serving the API")
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("binding the API address {addr}"))
}

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; connections beyond are closed at once.
const MAX_HANDSHAKES: usize = 256;

/// Accepts TCP connections and runs their TLS handshakes in their own tasks, so that a slow or
/// failing client delays no one; axum gets only the connections whose handshake succeeded.
struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    fn start(listener: TcpListener, acceptor: TlsAcceptor) -> Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        // Ends when the listener is dropped (the server stopped): `tx.closed()` resolves.
        tokio::spawn(async move {
            let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
            loop {
                let (tcp, peer) = tokio::select! {
                    _ = tx.closed() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of file descriptors and the like: wait, as axum does.
                            tracing::warn!("accepting an API connection: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "too many TLS handshakes in progress; closing");
                    continue;
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::warn!(%peer, "API client refused: {e}"),
                        Err(_) => tracing::warn!(%peer, "API client refused: handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { local, ready })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The acceptor task is gone (only if the runtime is stopping): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}
