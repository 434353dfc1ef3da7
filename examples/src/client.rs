//! A client of the `kv` service: finds the leader among the nodes it is given, follows
//! `not_leader` replies, and retries only what is safe to retry. Over plain HTTP, or HTTPS with a
//! client certificate ([`KvClient::with_client_certs`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftkit_quic::CertError;
use raftkit_quic::certs::ClientCerts;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;

use crate::protocol::{
    CasReply, CasRequest, ErrorKind, ErrorReply, GetReply, KeyRequest, PrevReply, PutRequest,
    StatusReply,
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

/// One HTTP/1.1 exchange on a fresh connection (`Connection: close`), over TLS with `tls`,
/// returning the status and the body.
async fn http(
    addr: SocketAddr,
    tls: Option<&TlsConnector>,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), HttpError> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| HttpError::Connect(format!("connecting to {addr} timed out")))?
        .map_err(|e| HttpError::Connect(format!("connecting to {addr}: {e}")))?;
    let Some(connector) = tls else {
        return exchange(tcp, addr, method, path, body, timeout).await;
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
    exchange(stream, addr, method, path, body, timeout).await
}

/// Whether `e` is a TLS alert from the server. In TLS 1.3 the server checks the client's
/// certificate after the client has finished its side of the handshake, so a refusal arrives
/// as an alert when the client reads; the request was never handed to the API.
fn refused_by_server(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| matches!(e, rustls::Error::AlertReceived(_)))
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), HttpError> {
    let exchange = async {
        let body = body.unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut reply = Vec::new();
        (&mut stream).take(MAX_REPLY_BYTES as u64 + 64 * 1024).read_to_end(&mut reply).await?;
        Ok::<_, std::io::Error>(reply)
    };
    let reply = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| HttpError::AfterSend(format!("{addr} did not answer within {timeout:?}")))?
        .map_err(|e| match refused_by_server(&e) {
            true => HttpError::Refused(format!(
                "{addr} refused this client's certificate ({e}): pass --client-certs with a \
                 client certificate of the cluster (made by `kv certs`)"
            )),
            false => HttpError::AfterSend(format!("talking to {addr}: {e}")),
        })?;
    // A TLS alert record (content type 21, version 3.x): an HTTPS server refusing plain text.
    if reply.starts_with(&[0x15, 0x03]) {
        return Err(HttpError::Refused(format!(
            "{addr} speaks HTTPS: pass --client-certs (a client certificate made by `kv certs`)"
        )));
    }
    parse_response(&reply).map_err(|e| HttpError::AfterSend(format!("reply from {addr}: {e}")))
}

/// Parses an HTTP/1.1 response: status line, headers, and a body framed by `Content-Length`,
/// chunked encoding, or the end of the connection.
fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("incomplete header")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "header is not UTF-8")?;
    let body = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or_else(|| format!("bad header {line:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| "bad Content-Length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    let body = if chunked {
        dechunk(body)?
    } else if let Some(n) = length {
        if body.len() < n {
            return Err(format!("body cut short: {} of {n} bytes", body.len()));
        }
        body[..n].to_vec()
    } else {
        body.to_vec()
    };
    if body.len() > MAX_REPLY_BYTES {
        return Err(format!("body over {MAX_REPLY_BYTES} bytes"));
    }
    Ok((status, body))
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n").ok_or("bad chunk header")?;
        let size_text = std::str::from_utf8(&rest[..eol]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if rest.len() < size + 2 || out.len() + size > MAX_REPLY_BYTES {
            return Err("chunk cut short or too large".into());
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// Whether a request may be sent again after an unclear failure.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads: repeat freely.
    Always,
    /// Writes: repeat only when the command certainly was not appended.
    WhenNotAppended,
}

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

    /// `get`: reads `key` through the log (linearizable).
    pub async fn get(&mut self, key: &str) -> Result<Option<String>, ClientError> {
        let reply: GetReply =
            self.call("/v1/get", &KeyRequest { key: key.into() }, Retry::Always).await?;
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

    /// Asks every node for its status; unreachable nodes are reported as errors.
    pub async fn status(&mut self) -> Vec<(SocketAddr, Result<StatusReply, String>)> {
        let mut out = Vec::new();
        for addr in self.nodes.clone() {
            let tls = self.tls.as_ref();
            let reply =
                match http(addr, tls, "GET", "/v1/status", None, self.exchange_timeout).await {
                    Ok((200, body)) => serde_json::from_slice::<StatusReply>(&body)
                        .map_err(|e| format!("bad status reply: {e}")),
                    Ok((code, _)) => Err(format!("HTTP {code}")),
                    Err(
                        HttpError::Connect(e) | HttpError::AfterSend(e) | HttpError::Refused(e),
                    ) => Err(e),
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
        if self.nodes.is_empty() {
            return Err(ClientError::Unavailable("no node addresses given".into()));
        }
        let body = serde_json::to_vec(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let start = Instant::now();
        let mut last_error = String::from("no attempt made");
        let mut attempt = 0;
        while start.elapsed() < self.deadline {
            let addr = self.next_target(attempt);
            attempt += 1;
            let backoff = Duration::from_millis(50 * (attempt as u64).min(4));
            match http(addr, self.tls.as_ref(), "POST", path, Some(&body), self.exchange_timeout)
                .await
            {
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
                            if let Some(leader) = err.leader {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_with_length_chunks_or_eof() {
        let r = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nabcdXX";
        assert_eq!(parse_response(r).unwrap(), (200, b"abcd".to_vec()));
        let r = b"HTTP/1.1 421 Misdirected\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(r).unwrap(), (421, b"abcde".to_vec()));
        let r = b"HTTP/1.1 500 Oops\r\n\r\nrest";
        assert_eq!(parse_response(r).unwrap(), (500, b"rest".to_vec()));
    }

    #[test]
    fn malformed_responses_are_errors() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 4"[..],
            b"HTTP/1.1 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n9\r\nabc",
            b"\xff\xfe\r\n\r\n",
        ] {
            assert!(parse_response(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
