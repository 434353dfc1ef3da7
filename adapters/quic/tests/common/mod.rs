//! Helpers shared by the integration tests: endpoints on 127.0.0.1 with fresh certificates,
//! and a bare quinn client for playing a misbehaving peer.

#![allow(dead_code)] // Each test file uses a different subset.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use raftkit::{Heartbeat, Inbound, Inbox, LogIndex, Message, MessageBody, Network, NodeId, Term};
use raftkit_quic::{AddressBook, CertAuthority, QuicConfig, QuicNetwork};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::mpsc;

/// A started endpoint and what it received.
pub struct Node {
    pub net: QuicNetwork,
    pub rx: mpsc::Receiver<Inbound>,
}

pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Binds and starts node `id` with a certificate from `ca`, publishing its address in `book`.
pub async fn node(ca: &CertAuthority, id: NodeId, book: &AddressBook) -> Node {
    node_with(ca, id, book, |_| {}).await
}

/// As [`node`], with the configuration adjusted by `f`.
pub async fn node_with(
    ca: &CertAuthority,
    id: NodeId,
    book: &AddressBook,
    f: impl FnOnce(&mut QuicConfig),
) -> Node {
    let mut config =
        QuicConfig::new(id, loopback(), ca.node_certs(id).unwrap()).with_addresses(book.clone());
    f(&mut config);
    let net = QuicNetwork::bind(config).expect("bind");
    book.insert(id, net.local_addr());
    let (inbox, rx) = Inbox::channel(65_536);
    net.start(inbox).await.expect("start");
    Node { net, rx }
}

/// A heartbeat numbered `n` (in its commit index).
pub fn numbered(n: u64) -> Message {
    Message {
        term: Term(1),
        body: MessageBody::Heartbeat(Heartbeat { commit: LogIndex(n), round: 0 }),
    }
}

pub fn number(m: &Message) -> Option<u64> {
    match &m.body {
        MessageBody::Heartbeat(h) => Some(h.commit.0),
        _ => None,
    }
}

pub async fn recv(rx: &mut mpsc::Receiver<Inbound>, within: Duration) -> Option<Inbound> {
    tokio::time::timeout(within, rx.recv()).await.ok().flatten()
}

/// Sends numbered heartbeats from `from` until one of them reaches `rx` (connections take a
/// handshake to form).
pub async fn until_delivered(
    from: &QuicNetwork,
    to: NodeId,
    rx: &mut mpsc::Receiver<Inbound>,
) -> Inbound {
    for i in 0..100 {
        let _ = from.send(to, vec![numbered(1_000_000 + i)]).await;
        while let Some(m) = recv(rx, Duration::from_millis(200)).await {
            // Anything else queued before (other senders, earlier messages) is skipped.
            if m.from == from.node_id() && number(&m.message).is_some_and(|n| n >= 1_000_000) {
                return m;
            }
        }
    }
    panic!("nothing from {} reached {to}", from.node_id());
}

/// Waits up to `within` for `cond`, polling.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// A bare quinn client presenting `cert_pem`/`key_pem` and trusting `ca_pem`, speaking the
/// adapter's ALPN: a peer that can be made to misbehave.
pub fn raw_client(ca_pem: &str, cert_pem: &str, key_pem: &str) -> quinn::Endpoint {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem.as_bytes()).map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    tls.alpn_protocols = vec![b"raftkit/1".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client(loopback()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

/// A stream header as the crate docs specify it: magic, sender id, incarnation.
pub fn header(from: NodeId, incarnation: u64) -> Vec<u8> {
    let mut h = b"RKQ\x01".to_vec();
    h.extend_from_slice(&from.0.to_be_bytes());
    h.extend_from_slice(&incarnation.to_be_bytes());
    h
}

/// A frame as the crate docs specify it: a 32-bit big-endian length, then the codec's bytes.
pub fn frame(msg: &Message) -> Vec<u8> {
    let body = raftkit::codec::encode_message(msg).unwrap();
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(&body);
    f
}
