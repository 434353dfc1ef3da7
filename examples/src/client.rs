//! A client of the `kv` service: finds the leader among the nodes it is given, follows
//! `not_leader` replies, and retries only what is safe to retry. Over plain HTTP, or HTTPS with a
//! client certificate ([`KvClient::with_client_certs`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, header};
use hyper_util::rt::TokioIo;
use raftkit_quic::CertError;
use raftkit_quic::certs::ClientCerts;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;

use crate::protocol::{
    AddLearnerRequest, CasReply, CasRequest, ErrorKind, ErrorReply, GetReply, KeyRequest,
    MAX_CHANGE_TIMEOUT_MS, MemberRequest, MembersReply, PrevReply, PutRequest, ReadLevel,
    StatusReply, TransferReply, TransferRequest,
};

/// The largest reply body the client reads.
const MAX_REPLY_BYTES: usize = 8 << 20;

/// Why a request failed.
#[derive(Debug)]
pub enum ClientError {
    /// The server refused the request as malformed.
    BadRequest(String),
    /// The write may or may not have taken effect (the connection failed after it was sent, or
    /// the node could not tell). Read the key back to find out.
    OutcomeUnknown(String),
    /// No node accepted the request before the deadline.
    Unavailable(String),
    /// A reply could not be understood.
    Protocol(String),
    /// The node refused this client's credentials (no client certificate, or one the cluster
    /// CA did not issue), or speaks HTTPS to a plain-HTTP client. Nothing was executed.
    Refused(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::BadRequest(e) => write!(f, "bad request: {e}"),
            ClientError::OutcomeUnknown(e) => write!(f, "outcome unknown: {e}"),
            ClientError::Unavailable(e) => write!(f, "no node could serve the request: {e}"),
            ClientError::Protocol(e) => write!(f, "protocol error: {e}"),
            ClientError::Refused(e) => write!(f, "refused: {e}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// How one HTTP exchange failed.
#[derive(Debug)]
enum HttpError {
    /// Nothing was sent: the connection could not be made.
    Connect(String),
    /// The request may have reached the server.
    AfterSend(String),
    /// The server refused the connection's credentials before reading the request.
    Refused(String),
}

/// One HTTP/1.1 exchange (hyper) on a fresh connection, over TLS with `tls`, returning the
/// status and the body. Connecting (and the TLS handshake) may take `timeout`, the exchange
/// itself `answer_timeout`.
async fn http(
    addr: SocketAddr,
    tls: Option<&TlsConnector>,
    method: Method,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
    answer_timeout: Duration,
) -> Result<(u16, Vec<u8>), HttpError> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| HttpError::Connect(format!("connecting to {addr} timed out")))?
        .map_err(|e| HttpError::Connect(format!("connecting to {addr}: {e}")))?;
    let Some(connector) = tls else {
        return exchange(tcp, false, addr, method, path, body, answer_timeout).await;
    };
    // The name is not what is checked: the verifier accepts any node of the cluster, by the
    // identity in its certificate (the client knows addresses, not node ids).
    let name = ServerName::IpAddress(addr.ip().into());
    let stream = tokio::time::timeout(timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| HttpError::Connect(format!("the TLS handshake with {addr} timed out")))?
        .map_err(|e| {
            HttpError::Connect(format!("TLS with {addr}: {e} (is the node serving HTTPS?)"))
        })?;
    exchange(stream, true, addr, method, path, body, answer_timeout).await
}

/// Whether `e` (or one of its causes) is a TLS alert from the server. In TLS 1.3 the server
/// checks the client's certificate after the client has finished its side of the handshake, so
/// a refusal arrives as an alert when the client reads; the request was never handed to the API.
fn refused_by_server(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(e) = cause {
        let alert = |e: &rustls::Error| matches!(e, rustls::Error::AlertReceived(_));
        if e.downcast_ref::<rustls::Error>().is_some_and(alert)
            || e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(alert)
        {
            return true;
        }
        cause = e.source();
    }
    false
}

async fn exchange<S: AsyncRead + AsyncWrite + Send + Unpin + 'static>(
    stream: S,
    is_tls: bool,
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), HttpError> {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr.to_string())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::copy_from_slice(body.unwrap_or_default())))
        .map_err(|e| HttpError::Connect(format!("building the request: {e}")))?;
    let exchange = async {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| (false, e))?;
        // Drives the connection until the exchange ends (the task ends with it).
        let driver = tokio::spawn(connection);
        let result = async {
            let reply = sender.send_request(request).await?;
            let status = reply.status().as_u16();
            let body = Limited::new(reply.into_body(), MAX_REPLY_BYTES).collect().await;
            Ok((status, body))
        }
        .await;
        driver.abort();
        result.map_err(|e| (true, e))
    };
    let (status, body) = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| HttpError::AfterSend(format!("{addr} did not answer within {timeout:?}")))?
        .map_err(|(sent, e): (bool, hyper::Error)| {
            if refused_by_server(&e) {
                HttpError::Refused(format!(
                    "{addr} refused this client's certificate ({e}): pass --client-certs with a \
                     client certificate of the cluster (made by `kv certs`)"
                ))
            } else if e.is_parse() && !is_tls {
                // An HTTPS server answers plain text with a TLS alert, which is no HTTP reply;
                // it never reads the request.
                HttpError::Refused(format!(
                    "{addr} did not answer in HTTP; if it speaks HTTPS, pass --client-certs (a \
                     client certificate made by `kv certs`)"
                ))
            } else if sent {
                HttpError::AfterSend(format!("talking to {addr}: {e}"))
            } else {
                HttpError::Connect(format!("talking to {addr}: {e}"))
            }
        })?;
    let body = body
        .map_err(|e| HttpError::AfterSend(format!("reading the reply from {addr}: {e}")))?
        .to_bytes();
    Ok((status, body.to_vec()))
}

/// Whether a request may be sent again after an unclear failure.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads: repeat freely.
    Always,
    /// Writes: repeat only when the command certainly was not appended.
    WhenNotAppended,
}

/// What the server is told about how long it may take.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// A command: each exchange gets the client's usual exchange timeout.
    Short,
    /// A membership change, which may wait for a learner to catch up, or a leadership
    /// transfer, which waits for an election: the exchange may take what is left of the
    /// deadline, and the request's `timeout_ms` tells the server to answer `timeout` a little
    /// before that.
    UntilDeadline,
}

/// How much earlier than the client's deadline the server is asked to give up, so that its
/// answer (saying what is known) arrives before the client stops listening.
const SERVER_MARGIN: Duration = Duration::from_millis(500);

/// A client of a `kv` cluster.
pub struct KvClient {
    nodes: Vec<SocketAddr>,
    /// Node ids learnt from status replies.
    ids: BTreeMap<u64, SocketAddr>,
    /// Where the last request succeeded (the leader, usually).
    preferred: Option<SocketAddr>,
    /// How long a request may take, retries included.
    deadline: Duration,
    /// How long one exchange may take.
    exchange_timeout: Duration,
    /// HTTPS with a client certificate, if set.
    tls: Option<TlsConnector>,
}

impl KvClient {
    /// A client of the nodes whose API addresses are `nodes`, giving up on a request after
    /// `deadline` (retries included).
    pub fn new(nodes: Vec<SocketAddr>, deadline: Duration) -> KvClient {
        KvClient {
            nodes,
            ids: BTreeMap::new(),
            preferred: None,
            deadline,
            exchange_timeout: Duration::from_secs(5).min(deadline),
            tls: None,
        }
    }

    /// Talks HTTPS, authenticating with `certs` (a client certificate issued by the cluster
    /// CA), to nodes serving the API with `--api-tls`; a node is accepted if its certificate
    /// chains to the same CA.
    ///
    /// # Errors
    /// The TLS library refuses the certificates.
    pub fn with_client_certs(mut self, certs: &ClientCerts) -> Result<KvClient, CertError> {
        self.tls = Some(TlsConnector::from(Arc::new(certs.https_client_config()?)));
        Ok(self)
    }

    /// `put`: sets `key`, returning the previous value.
    pub async fn put(&mut self, key: &str, value: &str) -> Result<Option<String>, ClientError> {
        let req = PutRequest { key: key.into(), value: value.into() };
        let reply: PrevReply = self.call("/v1/put", &req, Retry::WhenNotAppended).await?;
        Ok(reply.prev)
    }

    /// `get`: reads `key` on the leader, linearizably ([`ReadLevel::Linearizable`]).
    pub async fn get(&mut self, key: &str) -> Result<Option<String>, ClientError> {
        self.get_with(key, ReadLevel::Linearizable).await
    }

    /// `get` with a chosen [`ReadLevel`]. `linearizable` and `lease` reads go to the leader
    /// (following `not_leader` replies); `follower` and `stale` reads are served by the node
    /// the request reaches: the one this client last talked to, else the first address given
    /// that answers.
    pub async fn get_with(
        &mut self,
        key: &str,
        level: ReadLevel,
    ) -> Result<Option<String>, ClientError> {
        let path = match level {
            ReadLevel::Linearizable => "/v1/get".to_string(),
            level => format!("/v1/get?read={level}"),
        };
        let reply: GetReply =
            self.call(&path, &KeyRequest { key: key.into() }, Retry::Always).await?;
        Ok(reply.value)
    }

    /// `delete`: removes `key`, returning the previous value.
    pub async fn delete(&mut self, key: &str) -> Result<Option<String>, ClientError> {
        let req = KeyRequest { key: key.into() };
        let reply: PrevReply = self.call("/v1/delete", &req, Retry::WhenNotAppended).await?;
        Ok(reply.prev)
    }

    /// `cas`: sets `key` to `new` if its value is `expected` (`None`: absent / remove).
    pub async fn cas(
        &mut self,
        key: &str,
        expected: Option<&str>,
        new: Option<&str>,
    ) -> Result<CasReply, ClientError> {
        let req = CasRequest {
            key: key.into(),
            expected: expected.map(str::to_string),
            new: new.map(str::to_string),
        };
        self.call("/v1/cas", &req, Retry::WhenNotAppended).await
    }

    /// The cluster configuration, as the leader sees it (with each member's replication
    /// progress) when a node names the leader, else as the first node that answers sees it.
    pub async fn members(&mut self) -> Result<MembersReply, ClientError> {
        let mut last_error = String::from("no node addresses given");
        let mut first = None;
        let mut targets = self.nodes.clone();
        if let Some(p) = self.preferred {
            targets.insert(0, p);
        }
        let mut i = 0;
        while i < targets.len() && i < self.nodes.len() + 2 {
            let addr = targets[i];
            i += 1;
            let tls = self.tls.as_ref();
            let reply = match http(
                addr,
                tls,
                Method::GET,
                "/v1/members",
                None,
                self.exchange_timeout,
                self.exchange_timeout,
            )
            .await
            {
                Ok((200, body)) => serde_json::from_slice::<MembersReply>(&body).map_err(|e| {
                    ClientError::Protocol(format!("bad members reply from {addr}: {e}"))
                }),
                Ok((code, body)) => Err(ClientError::Protocol(format!(
                    "{addr} answered HTTP {code}: {}",
                    String::from_utf8_lossy(&body)
                ))),
                Err(HttpError::Refused(e)) => Err(ClientError::Refused(e)),
                Err(HttpError::Connect(e) | HttpError::AfterSend(e)) => {
                    last_error = e;
                    continue;
                }
            }?;
            if reply.role == "leader" {
                self.preferred = Some(addr);
                return Ok(reply);
            }
            // Ask the leader next, if this node says where it is.
            let leader_api = reply.leader_api.as_deref().and_then(|a| a.parse().ok());
            let leader_api = leader_api.or_else(|| self.ids.get(&reply.leader?).copied());
            if let Some(api) = leader_api.filter(|a| !targets[..i].contains(a)) {
                targets.insert(i, api);
            }
            first.get_or_insert(reply);
        }
        first.ok_or(ClientError::Unavailable(last_error))
    }

    /// Adds node `id` as a learner with `addr` (its Raft address; `None` on an in-process
    /// cluster) and waits until it has caught up with the leader. Sending it again for a node
    /// that is a learner already with the same address waits again.
    pub async fn add_learner(
        &mut self,
        id: u64,
        addr: Option<&str>,
    ) -> Result<MembersReply, ClientError> {
        let req = AddLearnerRequest { id, addr: addr.map(str::to_string), timeout_ms: None };
        self.change("/v1/members/add-learner", &req).await
    }

    /// Makes learner `id` a voter.
    pub async fn promote(&mut self, id: u64) -> Result<MembersReply, ClientError> {
        self.change("/v1/members/promote", &MemberRequest { id, timeout_ms: None }).await
    }

    /// Removes voter or learner `id` from the cluster.
    pub async fn remove(&mut self, id: u64) -> Result<MembersReply, ClientError> {
        self.change("/v1/members/remove", &MemberRequest { id, timeout_ms: None }).await
    }

    /// Hands leadership to node `to`, or with `None` to the most up-to-date other voter, and
    /// waits until the new leader leads. Asking for the node that leads already succeeds
    /// with nothing moved (`from == leader`).
    pub async fn transfer_leader(&mut self, to: Option<u64>) -> Result<TransferReply, ClientError> {
        let req = TransferRequest { to, timeout_ms: None };
        let reply: TransferReply = self
            .call_with("/v1/transfer-leader", &req, Retry::WhenNotAppended, Wait::UntilDeadline)
            .await?;
        // The next request goes to the new leader.
        self.preferred = reply.leader_api.as_deref().and_then(|a| a.parse().ok());
        Ok(reply)
    }

    async fn change<Req: Serialize>(
        &mut self,
        path: &str,
        req: &Req,
    ) -> Result<MembersReply, ClientError> {
        self.call_with(path, req, Retry::WhenNotAppended, Wait::UntilDeadline).await
    }

    /// Asks every node for its status; unreachable nodes are reported as errors.
    pub async fn status(&mut self) -> Vec<(SocketAddr, Result<StatusReply, String>)> {
        let mut out = Vec::new();
        for addr in self.nodes.clone() {
            let tls = self.tls.as_ref();
            let reply = match http(
                addr,
                tls,
                Method::GET,
                "/v1/status",
                None,
                self.exchange_timeout,
                self.exchange_timeout,
            )
            .await
            {
                Ok((200, body)) => serde_json::from_slice::<StatusReply>(&body)
                    .map_err(|e| format!("bad status reply: {e}")),
                Ok((code, _)) => Err(format!("HTTP {code}")),
                Err(HttpError::Connect(e) | HttpError::AfterSend(e) | HttpError::Refused(e)) => {
                    Err(e)
                }
            };
            if let Ok(s) = &reply {
                for n in &s.nodes {
                    self.ids.insert(n.id, addr);
                }
            }
            out.push((addr, reply));
        }
        out
    }

    /// The address to try next: the preferred one, else the nodes in turn.
    fn next_target(&self, attempt: usize) -> SocketAddr {
        match self.preferred {
            Some(addr) => addr,
            None => self.nodes[attempt % self.nodes.len()],
        }
    }

    async fn call<Req: Serialize, Rep: DeserializeOwned>(
        &mut self,
        path: &str,
        req: &Req,
        retry: Retry,
    ) -> Result<Rep, ClientError> {
        self.call_with(path, req, retry, Wait::Short).await
    }

    async fn call_with<Req: Serialize, Rep: DeserializeOwned>(
        &mut self,
        path: &str,
        req: &Req,
        retry: Retry,
        wait: Wait,
    ) -> Result<Rep, ClientError> {
        if self.nodes.is_empty() {
            return Err(ClientError::Unavailable("no node addresses given".into()));
        }
        let encode = |v: &serde_json::Value| {
            serde_json::to_vec(v).map_err(|e| ClientError::Protocol(e.to_string()))
        };
        let mut req =
            serde_json::to_value(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let start = Instant::now();
        let mut last_error = String::from("no attempt made");
        let mut attempt = 0;
        while start.elapsed() < self.deadline {
            let addr = self.next_target(attempt);
            attempt += 1;
            let backoff = Duration::from_millis(50 * (attempt as u64).min(4));
            let left = self.deadline.saturating_sub(start.elapsed());
            let answer_timeout = match wait {
                Wait::Short => self.exchange_timeout,
                Wait::UntilDeadline => {
                    let server = left.saturating_sub(SERVER_MARGIN).max(Duration::from_millis(1));
                    let ms = (server.as_millis() as u64).min(MAX_CHANGE_TIMEOUT_MS);
                    if let Some(obj) = req.as_object_mut() {
                        obj.insert("timeout_ms".into(), ms.into());
                    }
                    left
                }
            };
            let body = encode(&req)?;
            let tls = self.tls.as_ref();
            let timeout = self.exchange_timeout;
            match http(addr, tls, Method::POST, path, Some(&body), timeout, answer_timeout).await {
                Ok((200, reply)) => {
                    self.preferred = Some(addr);
                    return serde_json::from_slice(&reply).map_err(|e| {
                        ClientError::Protocol(format!("unexpected reply from {addr}: {e}"))
                    });
                }
                Ok((code, reply)) => {
                    let err: ErrorReply = serde_json::from_slice(&reply).map_err(|_| {
                        ClientError::Protocol(format!(
                            "{addr} answered HTTP {code}: {}",
                            String::from_utf8_lossy(&reply)
                        ))
                    })?;
                    last_error = format!("{addr}: {}", err.error);
                    match err.kind {
                        ErrorKind::BadRequest => return Err(ClientError::BadRequest(err.error)),
                        ErrorKind::NotLeader => {
                            self.preferred = None;
                            // Go straight to the leader's API when the reply says where it is,
                            // else look its id up among the nodes this client knows.
                            let api = err.leader_api.as_deref().and_then(|a| a.parse().ok());
                            if let Some(api) = api {
                                self.preferred = Some(api);
                            } else if let Some(leader) = err.leader {
                                if !self.ids.contains_key(&leader) {
                                    self.status().await;
                                }
                                self.preferred = self.ids.get(&leader).copied();
                            }
                            if self.preferred.is_none() {
                                tokio::time::sleep(backoff).await;
                            }
                        }
                        ErrorKind::NotApplied => {
                            // Certainly not applied: sending it again cannot apply it twice.
                            self.preferred = None;
                            tokio::time::sleep(backoff).await;
                        }
                        ErrorKind::RetryLater => {
                            // Nothing changed; the same leader will take it in a moment.
                            self.preferred = Some(addr);
                            tokio::time::sleep(backoff).await;
                        }
                        ErrorKind::Timeout => return Err(ClientError::OutcomeUnknown(err.error)),
                        ErrorKind::Unavailable | ErrorKind::OutcomeUnknown
                            if retry == Retry::WhenNotAppended =>
                        {
                            return Err(ClientError::OutcomeUnknown(last_error));
                        }
                        ErrorKind::Unavailable | ErrorKind::OutcomeUnknown => {
                            self.preferred = None;
                            tokio::time::sleep(backoff).await;
                        }
                    }
                }
                Err(HttpError::Refused(e)) => return Err(ClientError::Refused(e)),
                Err(HttpError::Connect(e)) => {
                    last_error = e;
                    self.preferred = None;
                    tokio::time::sleep(backoff).await;
                }
                Err(HttpError::AfterSend(e)) if retry == Retry::WhenNotAppended => {
                    return Err(ClientError::OutcomeUnknown(e));
                }
                Err(HttpError::AfterSend(e)) => {
                    last_error = e;
                    self.preferred = None;
                    tokio::time::sleep(backoff).await;
                }
            }
        }
        Err(ClientError::Unavailable(last_error))
    }
}
